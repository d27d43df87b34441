"""The `telfhash` command: the reference's output formats, plus -j, jsonl and exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path


FIX = Path(__file__).parent / "fixtures"
ENTRIES = json.loads((FIX / "fixtures.json").read_text())["files"]
PATHS = [str(FIX / e["fixture"]) for e in ENTRIES]
REF = {str(FIX / e["fixture"]): e["reference"] for e in ENTRIES}


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "telfhash_core.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_default_output_is_the_references_layout():
    p = run(*PATHS)
    assert p.returncode == 0, p.stderr
    width = max(len(x) for x in PATHS)
    expected = "".join(f"{x:<{width}}  {REF[x]['telfhash']}\n" for x in PATHS) + "\n"
    assert p.stdout == expected


def test_json_and_tsv():
    p = run("-f", "json", *PATHS)
    rows = json.loads(p.stdout)
    assert rows == [{"file": x, "telfhash": REF[x]["telfhash"], "msg": REF[x]["msg"]} for x in PATHS]
    p = run("-f", "tsv", *PATHS[:3])
    assert p.stdout == "".join(f"{x}\t{REF[x]['telfhash']}\n" for x in PATHS[:3]) + "\n"


def test_jsonl_parallel_streams_every_file_once(tmp_path):
    many = PATHS * 3
    out = tmp_path / "out.jsonl"
    p = run("-f", "jsonl", "-j", "2", "--sha256", "-o", str(out), *many)
    assert p.returncode == 0 and p.stdout == ""
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["file"] for r in rows) == sorted(many)
    for r in rows:
        assert r["telfhash"] == REF[r["file"]]["telfhash"]
        assert r["sha256"] == next(e["sha256"] for e in ENTRIES if str(FIX / e["fixture"]) == r["file"])


def test_jobs_do_not_change_results():
    many = PATHS * 2
    one = run("-j", "1", "-f", "json", *many).stdout
    two = run("-j", "2", "-f", "json", *many).stdout
    assert one == two


def test_bad_files_are_results_and_exit_zero(tmp_path):
    (tmp_path / "text").write_text("hello")
    p = run("-d", str(tmp_path / "text"), str(tmp_path / "missing"), str(tmp_path), PATHS[0])
    assert p.returncode == 0
    lines = p.stdout.splitlines()
    assert [line.split()[-1] for line in lines[:4]] == ["-", "-", "-", REF[PATHS[0]]["telfhash"]]
    assert "not an ELF file" in p.stderr and "no such file" in p.stderr and "is a directory" in p.stderr


def test_recursive_walks_folders():
    p = run("-r", "-f", "json", str(FIX / "elf"))
    assert len(json.loads(p.stdout)) == len(ENTRIES)


def test_usage_errors_exit_nonzero():
    assert run().returncode == 2
    assert run("-t", "abc", PATHS[0]).returncode == 2
    assert run("-f", "xml", PATHS[0]).returncode == 2


def test_a_subcommand_wins_over_a_file_of_that_name(tmp_path):
    shutil.copy(PATHS[0], tmp_path / "cluster")
    p = run("cluster", cwd=tmp_path)  # the subcommand, which wants its INPUT
    assert p.returncode == 2 and "telfhash cluster" in p.stderr
    p = run("./cluster", cwd=tmp_path)  # the file
    assert p.returncode == 0
    assert p.stdout.split()[-2:] == ["./cluster", REF[PATHS[0]]["telfhash"]]


def test_a_mistyped_subcommand_gets_did_you_mean(tmp_path):
    p = run("clustr", "x", cwd=tmp_path)
    assert p.returncode == 2 and p.stdout == ""
    assert "did you mean 'telfhash cluster'" in p.stderr
    (tmp_path / "clustr").write_bytes(Path(PATHS[0]).read_bytes())
    p = run("clustr", cwd=tmp_path)  # an existing file of that name is hashed
    assert p.returncode == 0 and p.stdout.split()[1] == REF[PATHS[0]]["telfhash"]
    p = run("zzzzqqq", cwd=tmp_path)  # nothing like a command: a missing file, reported as a result
    assert p.returncode == 0 and p.stdout.split()[:2] == ["zzzzqqq", "-"]


def test_options_without_effect_are_errors():
    for args in (
        ["--sha256"],
        ["--details"],
        ["--field", "telfhash_x"],
        ["-f", "tsv", "--sha256"],
        ["-f", "json", "--sha256"],
    ):
        p = run(*args, PATHS[0])
        assert p.returncode == 2 and "has no effect" in p.stderr and p.stdout == "", args
    p = run("-f", "json", "--details", "--sha256", PATHS[0])
    assert p.returncode == 0 and len(json.loads(p.stdout)[0]["sha256"]) == 64


def test_unknown_field_is_an_error():
    p = run("-f", "jsonl", "--field", "telfhash_y", PATHS[0])
    assert p.returncode == 2 and "unknown --field telfhash_y" in p.stderr and "telfhash_x" in p.stderr
    p = run("-f", "jsonl", "--field", "telfhash_x", PATHS[0])
    assert p.returncode == 0 and json.loads(p.stdout)["telfhash_x"].startswith("tx2:")


def test_exit_status_when_nothing_to_hash(tmp_path):
    p = run("-r", str(tmp_path))
    assert p.returncode == 1 and p.stdout == "" and "No files found" in p.stderr
    p = run(PATHS[0], "-o", str(tmp_path / "no" / "such" / "dir" / "out.txt"))
    assert p.returncode == 1 and "cannot write" in p.stderr


def test_reason_summary_on_stderr_keeps_stdout(tmp_path):
    (tmp_path / "text").write_text("hello")
    (tmp_path / "text2").write_text("hello again")
    args = [str(tmp_path / "text"), str(tmp_path / "text2"), str(tmp_path / "missing"), PATHS[0]]
    quiet = run(*args)  # stderr is a pipe, no -d: nothing on stderr
    assert quiet.returncode == 0 and quiet.stderr == ""
    loud = run("-d", *args)
    assert loud.stdout == quiet.stdout
    assert loud.stderr.splitlines()[-1] == "3 files without telfhash (2 not ELF, 1 not found)"


def test_version():
    p = run("--version")
    assert p.returncode == 0 and "telfhash" in p.stdout
