"""Output people read: the progress bar and its summary line, plurals, absolute index paths, and
`batch` inputs that cannot be read (reported, counted, non-zero exit when nothing was read)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

import telfhash_core as tc
from telfhash_core.progress import Progress, plural, reason_words, summary_line

FIX = Path(__file__).parent / "fixtures"
ENTRIES = json.loads((FIX / "fixtures.json").read_text())["files"]
PATHS = [str(FIX / e["fixture"]) for e in ENTRIES]


def test_plurals():
    assert plural(1, "group") == "1 group"
    assert plural(0, "group") == "0 groups"
    assert plural(2, "group") == "2 groups"
    assert plural(1234, "file") == "1,234 files"


def test_the_bar_counts_the_walk_then_ends_with_one_summary_line():
    out = io.StringIO()
    bar = Progress(None, enabled=True, stream=out)
    files = tc.expand_paths([str(FIX)], recursive=True, on_file=bar.found)
    assert bar.seen == len(files) > 0
    bar.set_total(len(files))
    with bar:
        for r in tc.hash_paths(files):
            bar.update(1, r)
    last = out.getvalue().replace("\r", "\n").strip().splitlines()[-1]
    results = list(tc.hash_paths(files))
    hashed = sum(r.ok for r in results)
    assert last.startswith(f"telfhash: {len(files)} files, {hashed} hashed, {len(files) - hashed} without telfhash (")
    # each reason is counted: e.g. "2 not ELF"
    for reason in {r.reason.value for r in results if not r.ok}:
        n = sum(1 for r in results if r.reason is not None and r.reason.value == reason)
        assert f"{n} {reason_words(reason)}" in last


def test_no_bar_and_no_summary_when_not_asked_on_a_pipe():
    out = io.StringIO()  # not a terminal
    with Progress(1000, stream=out) as bar:
        bar.update(1000)
    assert out.getvalue() == "" and not bar.enabled


def test_summary_line_words():
    assert summary_line(3, 1, {"not_elf": 1, "not_found": 1}, 1.0) == (
        "telfhash: 3 files, 1 hashed, 2 without telfhash (1 not ELF, 1 not found) in 1.0 s"
    )


def test_the_index_stores_absolute_paths(tmp_path, monkeypatch):
    from telfhash_core.store.index import Index

    monkeypatch.chdir(FIX)
    rel = [os.path.relpath(p, FIX) for p in PATHS[:3]]
    with Index(tmp_path / "i.sqlite") as ix:
        ix.add_files(rel, jobs=1, progress=False)
        stored = sorted(e["path"] for e in ix.entries())
    assert stored == sorted(str(FIX / r) for r in rel)


def _batch(argv, capsys):
    from telfhash_core.cli import main

    code = main(["batch", *argv])
    return code, capsys.readouterr().err


def test_batch_reports_inputs_that_cannot_be_read(tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    code, err = _batch([str(tmp_path / "no_such_dir"), "-o", str(out), "--no-progress"], capsys)
    assert code == 1, err
    assert "no_such_dir: not read (not_found" in err and "1 could not be read" in err
    assert "no input could be read" in err
    row = json.loads(out.read_text())
    assert row["reason"] == "not_found"  # the row says why, as for any per-file error

    out2 = tmp_path / "o2.jsonl"  # options before the inputs, one good input and one missing
    code, err = _batch(["-o", str(out2), "--no-progress", PATHS[0], str(tmp_path / "missing")], capsys)
    assert code == 0, err
    assert "2 files: 2 written (1 with a telfhash, 1 could not be read" in err
    assert "without telfhash: 1 not found" in err
    assert "%|" not in err  # --no-progress before the inputs holds (no bar)


def test_batch_url_without_its_backend_is_reported(tmp_path, capsys):
    pytest.importorskip("fsspec")
    try:
        import s3fs  # noqa: F401

        pytest.skip("s3fs is installed: the URL would be tried for real")
    except ImportError:
        pass
    code, err = _batch(["s3://bucket/sample.elf", "-o", str(tmp_path / "s.jsonl"), "--no-progress"], capsys)
    assert code == 1 and "could not be read" in err and "no input could be read" in err


def test_batch_subcommands_are_real(tmp_path, capsys):
    out = tmp_path / "h.jsonl"
    code, err = _batch(["hash", PATHS[0], "-o", str(out), "-q", "--no-progress"], capsys)
    assert code == 0, err
    assert json.loads(out.read_text())["path"] == PATHS[0]
    code, err = _batch(["cluster", str(out), "-o", str(tmp_path / "c.jsonl"), "-q"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "c.jsonl").read_text())["cluster_size"] == 1


def test_a_pool_hands_results_over_as_they_finish_and_the_output_keeps_input_order(capsys):
    from telfhash_core.cli import main

    many = PATHS * 3  # repeated paths too
    assert main(["-j", "1", *many]) == 0
    one = capsys.readouterr().out
    assert main(["-j", "2", *many]) == 0
    two = capsys.readouterr().out
    assert two == one and one.count("\n") == len(many) + 1
