"""telfhash-cape install / uninstall / status against a folder shaped like a CAPE checkout,
offline reprocessing of a report.json, the per-file time budget, settings parsing and the
old Cuckoo 3 import path.  Expected digests are the reference tool's (corpus manifest)."""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import corpus
from telfhash_plugins.cape import install as inst
from telfhash_plugins.cape.cli import main
from telfhash_plugins.cape.enrich import Settings
from telfhash_plugins.cape.worker import Hasher


def cape_tree(tmp: Path) -> Path:
    root = tmp / "CAPEv2"
    for d in ("modules/processing", "lib/cuckoo/common", "conf", "custom/conf"):
        (root / d).mkdir(parents=True)
    (root / "modules/processing/behavior.py").write_text("# CAPE's own\n")
    (root / "conf/processing.conf").write_text("[behavior]\nenabled = yes\n")
    return root


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- install


def test_install_writes_both_files_marked_and_parsable(tmp_path, capsys):
    root = cape_tree(tmp_path)
    assert (
        main(
            [
                "install",
                "--cape-root",
                str(root),
                "--index",
                "/srv/known.db",
                "--threshold",
                "70",
                "--max-file-size",
                "8M",
                "--timeout",
                "12",
            ]
        )
        == 0
    )
    mod, conf = root / inst.MODULE_REL, root / inst.CONFIG_REL
    assert mod.read_text().startswith(inst.MARKER) and conf.read_text().startswith(inst.MARKER)
    text = mod.read_text()
    assert "class Telfhash(Processing):" in text and "from lib.cuckoo.common.abstracts import Processing" in text
    compile(text, str(mod), "exec")
    cp = configparser.ConfigParser()
    cp.read(conf)
    sec = cp["telfhash"]
    assert sec.getboolean("enabled") is True
    assert (sec["index"], sec.getint("threshold"), sec.getint("max_file_size"), sec.getfloat("timeout")) == (
        "/srv/known.db",
        70,
        8 << 20,
        12.0,
    )
    # the rest of the tree is untouched
    assert (root / "conf/processing.conf").read_text() == "[behavior]\nenabled = yes\n"
    assert main(["status", "--cape-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "installed (as written)" in out and "threshold=70" in out and "index='/srv/known.db'" in out


def test_reinstall_keeps_edited_settings_and_updates_the_module(tmp_path):
    root = cape_tree(tmp_path)
    assert main(["install", "--cape-root", str(root)]) == 0
    conf, mod = root / inst.CONFIG_REL, root / inst.MODULE_REL
    conf.write_text(conf.read_text().replace("threshold = 50", "threshold = 33"))
    mod.write_text(mod.read_text() + "# stale\n")
    assert main(["status", "--cape-root", str(root)]) == 0
    assert main(["install", "--cape-root", str(root)]) == 0
    assert "threshold = 33" in conf.read_text()
    assert mod.read_text() == inst.MODULE_TEXT
    assert main(["install", "--cape-root", str(root), "--overwrite-config"]) == 0
    assert "threshold = 50" in conf.read_text()


@pytest.mark.parametrize("which", ["module", "config"])
def test_install_refuses_foreign_files_and_writes_nothing(tmp_path, which, capsys):
    root = cape_tree(tmp_path)
    foreign = root / (inst.MODULE_REL if which == "module" else inst.CONFIG_REL)
    other = root / (inst.CONFIG_REL if which == "module" else inst.MODULE_REL)
    foreign.parent.mkdir(parents=True, exist_ok=True)
    foreign.write_text("# someone else's telfhash\n")
    assert main(["install", "--cape-root", str(root)]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert foreign.read_text() == "# someone else's telfhash\n"
    assert not other.exists()
    assert main(["uninstall", "--cape-root", str(root)]) == 1
    assert foreign.read_text() == "# someone else's telfhash\n"
    assert main(["status", "--cape-root", str(root)]) == 1
    assert "NOT OURS" in capsys.readouterr().out


def test_uninstall_removes_only_ours(tmp_path):
    root = cape_tree(tmp_path)
    before = {p: _digest(p) for p in root.rglob("*") if p.is_file()}
    assert main(["install", "--cape-root", str(root)]) == 0
    pyc = root / "modules/processing/__pycache__/telfhash.cpython-311.pyc"
    pyc.parent.mkdir()
    pyc.write_bytes(b"cache")
    keep = root / "modules/processing/__pycache__/behavior.cpython-311.pyc"
    keep.write_bytes(b"cache")
    assert main(["uninstall", "--cape-root", str(root)]) == 0
    after = {p: _digest(p) for p in root.rglob("*") if p.is_file()}
    assert after == {**before, keep: _digest(keep)}
    assert main(["uninstall", "--cape-root", str(root)]) == 0  # nothing left to remove: fine


def test_symlink_in_the_way_is_foreign(tmp_path):
    root = cape_tree(tmp_path)
    target = tmp_path / "elsewhere.py"
    target.write_text(inst.MARKER + "\n")
    (root / inst.MODULE_REL).symlink_to(target)
    assert main(["install", "--cape-root", str(root)]) == 1
    assert main(["uninstall", "--cape-root", str(root)]) == 1
    assert target.exists() and (root / inst.MODULE_REL).is_symlink()


def test_not_a_cape_checkout(tmp_path, capsys):
    assert main(["install", "--cape-root", str(tmp_path)]) == 1
    assert "does not look like a CAPEv2 checkout" in capsys.readouterr().err
    assert main(["status", "--cape-root", str(tmp_path / "missing")]) == 1
    assert list(tmp_path.iterdir()) == []


def test_console_script_runs():
    exe = Path(sys.executable).with_name("telfhash-cape")
    if not exe.exists():
        pytest.skip("telfhash-cape console script not installed (pip install -e .)")
    p = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "reprocess" in p.stdout


# ----------------------------------------------------------------------------- reprocess


@pytest.fixture()
def old_report(tmp_path):
    """A report written on another CAPE host: its paths point at /opt/CAPEv2/storage/... ."""
    files = [f for f in corpus.files() if f["arch"] in ("armel", "i386") and f["label"].startswith("iot-fam-a:")]
    files = files[:3]
    if len(files) < 3:
        pytest.skip("corpus lacks iot-fam-a files")
    an = tmp_path / "analyses" / "9"
    (an / "files").mkdir(parents=True)
    (an / "reports").mkdir()
    shutil.copyfile(files[0]["abspath"], an / "binary")
    for f in files[1:]:
        shutil.copyfile(f["abspath"], an / "files" / f["sha256"])

    def fd(f, rel):
        return {
            "name": Path(f["path"]).name,
            "path": f"/opt/CAPEv2/storage/analyses/9/{rel}",
            "sha256": f["sha256"],
            "size": f["size"],
            "type": "ELF 32-bit LSB executable",
        }

    report = {
        "info": {"id": 9},
        "target": {"category": "file", "file": fd(files[0], "binary")},
        "dropped": [fd(f, f"files/{f['sha256']}") for f in files[1:]] + [{"name": "a", "path": "/x", "type": "data"}],
        "telfhash": {"stale": True},
    }
    path = an / "reports" / "report.json"
    path.write_text(json.dumps(report))
    return {"dir": an, "report": path, "files": files, "data": report}


def test_reprocess_writes_a_new_report(old_report, capsys):
    original = old_report["report"].read_bytes()
    assert main(["reprocess", "--analysis", str(old_report["dir"]), "--timeout", "60"]) == 0
    assert old_report["report"].read_bytes() == original
    new = json.loads((old_report["dir"] / "reports" / "report.telfhash.json").read_text())
    refs = [f["reference"]["telfhash"] for f in old_report["files"]]
    assert new["target"]["file"]["telfhash"] == refs[0]
    assert [d.get("telfhash") for d in new["dropped"]] == refs[1:] + [None]
    assert new["telfhash"]["elf_files"] == 3 and "stale" not in new["telfhash"]
    # the recorded paths are kept as they were
    assert new["target"]["file"]["path"] == "/opt/CAPEv2/storage/analyses/9/binary"
    assert "3 ELF files" in capsys.readouterr().err
    # an existing output is not overwritten without --force
    assert main(["reprocess", "--analysis", str(old_report["dir"])]) == 1
    assert main(["reprocess", "--analysis", str(old_report["dir"]), "--force"]) == 0


def test_reprocess_in_place_needs_the_flag(old_report, tmp_path):
    rep = old_report["report"]
    assert main(["reprocess", "--analysis", str(old_report["dir"]), "-o", str(rep)]) == 1
    assert json.loads(rep.read_text()) == old_report["data"]
    out = tmp_path / "out" / "r.json"
    assert main(["reprocess", "--analysis", str(old_report["dir"]), "-o", str(out)]) == 0
    assert json.loads(rep.read_text()) == old_report["data"]
    assert main(["reprocess", "--analysis", str(old_report["dir"]), "--in-place"]) == 0
    data = json.loads(rep.read_text())
    assert data["target"]["file"]["telfhash"] == old_report["files"][0]["reference"]["telfhash"]
    assert data == json.loads(out.read_text()) | {"telfhash": data["telfhash"]}


def test_reprocess_bad_inputs(tmp_path, capsys):
    assert main(["reprocess", "--analysis", str(tmp_path / "nope")]) == 1
    (tmp_path / "reports").mkdir()
    assert main(["reprocess", "--analysis", str(tmp_path)]) == 1
    (tmp_path / "reports" / "report.json").write_text("{not json")
    assert main(["reprocess", "--analysis", str(tmp_path)]) == 1
    (tmp_path / "reports" / "report.json").write_text("[1, 2]")
    assert main(["reprocess", "--analysis", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "cannot read the report" in err and "not a CAPE report" in err


def test_reprocess_settings_from_the_cape_drop_in(old_report, tmp_path):
    root = cape_tree(tmp_path)
    assert main(["install", "--cape-root", str(root), "--max-file-size", "100"]) == 0
    out = tmp_path / "r.json"
    assert main(["reprocess", "--analysis", str(old_report["dir"]), "--cape-root", str(root), "-o", str(out)]) == 0
    new = json.loads(out.read_text())
    assert new["target"]["file"]["telfhash_error"] == "too_large"
    assert (
        main(
            [
                "reprocess",
                "--analysis",
                str(old_report["dir"]),
                "--cape-root",
                str(root),
                "-o",
                str(out),
                "--force",
                "--max-file-size",
                "64M",
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())["target"]["file"]["telfhash"] == old_report["files"][0]["reference"]["telfhash"]


# ----------------------------------------------------------------------------- time budget


def _small_and_slow():
    files = corpus.files()
    small = next(f for f in files if f["label"] == "coreutils:/usr/sbin/chroot" and f["arch"] == "amd64")
    slow = max((f for f in files if f["size"] > 500_000), key=lambda f: f["size"])
    return small, slow


def test_timeout_stops_one_file_and_the_next_is_hashed():
    small, slow = _small_and_slow()
    with Hasher(timeout=30) as h:
        h.hash(small["abspath"])  # worker started and warm
        h.timeout = 0.001
        r = h.hash(slow["abspath"])
        assert r["reason"] == "timeout" and r["telfhash"] is None
        h.timeout = 60
        r = h.hash(small["abspath"])
        assert r["reference_telfhash"] == small["reference"]["telfhash"]
        assert h.restarts == 1 and h.mode == "worker"


def test_a_worker_that_dies_costs_only_its_file(monkeypatch):
    import threading

    small, _ = _small_and_slow()
    monkeypatch.setenv("TELFHASH_CAPE_TEST_DELAY", "3")  # every file takes 3 s in the worker
    with Hasher(timeout=60) as h:
        assert h.hash(small["abspath"])["reference_telfhash"] == small["reference"]["telfhash"]
        os.kill(h.proc.pid, signal.SIGKILL)
        h.proc.wait()
        r = h.hash(small["abspath"])  # a worker that died between files: a new one takes the file
        assert r["reference_telfhash"] == small["reference"]["telfhash"] and h.restarts == 0
        # the worker dies while on a file: that file fails, the next one gets a new worker
        pid = h.proc.pid
        threading.Timer(0.5, os.kill, (pid, signal.SIGKILL)).start()
        r = h.hash(small["abspath"])
        assert r["reason"] == "worker_failed"
        assert h.hash(small["abspath"])["reference_telfhash"] == small["reference"]["telfhash"]
        assert h.proc.pid != pid


def test_no_worker_python_falls_back_in_process():
    small, _ = _small_and_slow()
    with Hasher(timeout=5, python="/nonexistent/python") as h:
        r = h.hash(small["abspath"])
        assert h.mode == "in-process" and any("cannot start" in n for n in h.notes)
        assert r["reference_telfhash"] == small["reference"]["telfhash"]


def test_worker_leaves_no_process_behind():
    small, _ = _small_and_slow()
    h = Hasher(timeout=30)
    h.hash(small["abspath"])
    proc = h.proc
    h.close()
    assert proc.poll() is not None and h.proc is None


# ----------------------------------------------------------------------------- settings


def test_settings_from_cape_style_options():
    s = Settings.from_options(
        {
            "enabled": True,
            "max_file_size": "2M",
            "timeout": 5,
            "threshold": 0,
            "index": "",
            "index_add": "yes",
            "max_files": 1,
            "max_neighbours": 3,
        }
    )
    assert (s.max_file_size, s.timeout, s.threshold, s.index, s.index_add, s.max_files, s.max_neighbours, s.errors) == (
        2 << 20,
        5.0,
        0,
        "",
        True,
        1,
        3,
        [],
    )
    bad = Settings.from_options({"max_file_size": "lots", "threshold": -1, "timeout": "nan", "index_add": "perhaps"})
    assert bad.to_dict() == Settings().to_dict() and len(bad.errors) == 4
    assert Settings.from_options(None).to_dict() == Settings().to_dict()


# ----------------------------------------------------------------------------- Cuckoo 3


def test_cuckoo3_old_import_path_is_an_alias(tmp_path, monkeypatch):
    """The Cuckoo 3 adapter moved to telfhash_plugins.cuckoo3 (tests/test_cuckoo3.py); the old
    module still imports, warns, and reads the YAML settings of the Cuckoo working directory."""
    import importlib
    import sys

    from telfhash_plugins.cuckoo3 import processor

    sys.modules.pop("telfhash_plugins.cape.cuckoo3", None)
    with pytest.warns(DeprecationWarning):
        cuckoo3 = importlib.import_module("telfhash_plugins.cape.cuckoo3")
    assert cuckoo3.TelfhashProcessor is processor.TelfhashPre
    assert cuckoo3.HAVE_CUCKOO3 == (importlib.util.find_spec("cuckoo") is not None)  # true where Cuckoo 3 is installed
    conf = tmp_path / "telfhash.yaml"
    conf.write_text("max_file_size: 10\nthreshold: -1\n")
    s = cuckoo3.load_settings(str(conf))
    assert s.max_file_size == 10 and s.threshold == Settings().threshold and len(s.errors) == 1


def test_index_add_records_the_analysis_and_a_later_one_finds_it(tmp_path):
    from telfhash_plugins.cape.enrich import enrich

    fam = [
        f for f in corpus.files() if f["label"] == "iot-fam-b:v1_dyn" and f["reference"]["telfhash"].startswith("t1")
    ]
    if len(fam) < 2:
        pytest.skip("corpus lacks iot-fam-b:v1_dyn files")
    a, b = fam[0], fam[1]
    db = tmp_path / "idx.db"

    def results(f):
        return {"target": {"category": "file", "file": {"path": f["abspath"], "sha256": f["sha256"], "type": "ELF"}}}

    s1 = enrich(results(a), Settings(index=str(db), index_add=True, timeout=0))
    assert s1["index"]["added"] == 1 and s1["files"][0]["known"] == []
    s2 = enrich(results(b), Settings(index=str(db), threshold=1000, timeout=0))
    import tlsh

    expect = tlsh.diff("T1" + a["reference"]["telfhash"][2:].upper(), "T1" + b["reference"]["telfhash"][2:].upper())
    assert [(m["sha256"], m["distance"], m["source"]) for m in s2["files"][0]["known"]] == [
        (a["sha256"], expect, "cape")
    ]
    assert "added" not in s2["index"]
