"""The whole-analysis time budget, worker reuse across analyses, and detections from labelled
neighbours.

Slowness is made with the worker's test hook ``TELFHASH_CAPE_TEST_DELAY`` (every file takes that
many seconds in the worker before hashing), so the tests do not depend on how fast this machine
parses a hostile file; CAPE's processing timeout is scaled down through its own variable
``CAPE_PROCESSING_TIMEOUT``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from telfhash_plugins.cape import worker
from telfhash_plugins.cape.enrich import Settings, enrich, processing_timeout, time_budget

from telfhash_core import hash_file

FIXTURES = Path(__file__).parent / "fixtures"


def _fixture_with_digest() -> tuple[Path, str]:
    entries = json.loads((FIXTURES / "fixtures.json").read_text())["files"]
    e = next(e for e in entries if e["reference"]["telfhash"].startswith("t1"))
    return FIXTURES / e["fixture"], e["reference"]["telfhash"]


def _results(n: int, path: Path) -> dict:
    """An analysis with ``n`` distinct ELF files (distinct SHA-256), all on the same bytes."""
    files = [
        {"type": "ELF 32-bit LSB executable, ARM", "path": str(path), "sha256": f"{i:064x}", "name": f"f{i}"}
        for i in range(n)
    ]
    return {"target": {"file": files[0]}, "dropped": files[1:], "statistics": {"processing": []}}


def test_processing_timeout_is_read_where_cape_takes_it():
    argv = ["/opt/CAPEv2/utils/process.py", "-p", "2", "auto", "-pt", "120"]
    assert processing_timeout(argv, {}) == (120.0, "utils/process.py --processing-timeout")
    assert processing_timeout(["/opt/CAPEv2/utils/process.py", "--processing-timeout=90"], {})[0] == 90.0
    assert processing_timeout(argv[:1], {"CAPE_PROCESSING_TIMEOUT": "900"}) == (900.0, "CAPE_PROCESSING_TIMEOUT")
    assert processing_timeout(["telfhash-cape", "-pt", "5"], {}) == (300.0, "CAPE's default")


def test_budget_leaves_cape_its_time():
    results = {"statistics": {"processing": [{"name": "Behavior", "time": 100.0}, {"name": "x", "time": "bad"}]}}
    env = {"CAPE_PROCESSING_TIMEOUT": "300"}
    assert time_budget(Settings(), {}, [], env)["seconds"] == 75  # a quarter of 300
    assert time_budget(Settings(), results, [], env)["seconds"] == 50  # half of 300 less 100 already used
    assert time_budget(Settings(budget=1000), {}, [], env)["seconds"] == 150  # never more than half
    assert time_budget(Settings(budget=10), {}, [], env)["seconds"] == 10
    late = {"statistics": {"processing": [{"name": "Behavior", "time": 290.0}]}}
    assert time_budget(Settings(), late, [], env)["seconds"] == 1


def test_500_slow_files_finish_inside_the_processing_timeout(monkeypatch):
    """The defaults (30 s per file, 500 files) with every file slow: the analysis still ends in
    time, and every file not reached says so."""
    path, ref = _fixture_with_digest()
    monkeypatch.setenv("CAPE_PROCESSING_TIMEOUT", "12")  # budget: a quarter, 3 s
    monkeypatch.setenv("TELFHASH_CAPE_TEST_DELAY", "1")
    results = _results(500, path)
    t0 = time.monotonic()
    summary = enrich(results, Settings())
    took = time.monotonic() - t0
    assert took < 6, took  # half of CAPE's 12 s, with room for the machine
    dicts = [results["target"]["file"], *results["dropped"]]
    errors = [d.get("telfhash_error") for d in dicts]
    assert errors.count("budget") >= 495
    assert all(d.get("telfhash") == ref for d in dicts if "telfhash_error" not in d)
    assert summary["hashing"]["budget"]["seconds"] == 3 and summary["elf_files"] == 500
    assert {f.get("error") for f in summary["files"]} <= {None, "budget"}


def test_files_over_their_own_limit_and_over_budget(monkeypatch):
    """Each file over its own timeout (worker killed and restarted each time) -- the restarts
    count against the budget too."""
    path, _ = _fixture_with_digest()
    monkeypatch.setenv("CAPE_PROCESSING_TIMEOUT", "16")  # budget 4 s
    monkeypatch.setenv("TELFHASH_CAPE_TEST_DELAY", "30")
    results = _results(50, path)
    t0 = time.monotonic()
    summary = enrich(results, Settings(timeout=1))
    assert time.monotonic() - t0 < 8
    errors = [d.get("telfhash_error") for d in (results["target"]["file"], *results["dropped"])]
    assert errors.count("timeout") >= 1 and errors.count("budget") >= 40
    assert set(errors) <= {"timeout", "budget"}
    assert summary["hashing"]["worker_restarts"] >= 1


def test_one_worker_serves_consecutive_analyses():
    path, ref = _fixture_with_digest()
    for h in worker._SHARED.values():  # one left by an earlier test of this session
        h.close()
    worker._SHARED.clear()
    try:
        s1 = enrich(_results(2, path), Settings(), reuse_worker=True)
        pid = next(iter(worker._SHARED.values())).proc.pid
        r2 = _results(2, path)
        s2 = enrich(r2, Settings(), reuse_worker=True)
        assert s1["hashing"]["workers_started"] == 1 and s2["hashing"]["workers_started"] == 0
        assert next(iter(worker._SHARED.values())).proc.pid == pid
        assert r2["target"]["file"]["telfhash"] == ref
    finally:
        for h in worker._SHARED.values():
            h.close()
        worker._SHARED.clear()


def test_a_callers_hasher_gets_each_analysis_its_own_deadline(monkeypatch):
    path, ref = _fixture_with_digest()
    monkeypatch.setenv("CAPE_PROCESSING_TIMEOUT", "8")  # budget 2 s
    with worker.Hasher(timeout=30) as h:
        enrich(_results(1, path), Settings(), hasher=h)
        time.sleep(2.5)  # the first analysis' deadline has passed
        r = _results(1, path)
        enrich(r, Settings(), hasher=h)
        assert r["target"]["file"].get("telfhash") == ref


def test_an_idle_worker_ends_by_itself(monkeypatch):
    path, ref = _fixture_with_digest()
    monkeypatch.setenv("TELFHASH_CAPE_WORKER_IDLE", "0.5")
    with worker.Hasher(timeout=30) as h:
        assert h.hash(str(path))["reference_telfhash"] == ref
        proc = h.proc
        assert proc is not None
        proc.wait(timeout=10)  # ended on its own
        assert h.hash(str(path))["reference_telfhash"] == ref  # the next file gets a new worker
        assert h.started == 2


def test_missing_tlsh_is_reported_with_the_fix(monkeypatch):
    path, _ = _fixture_with_digest()
    for mod in [m for m in sys.modules if m == "telfhash_core" or m.startswith("telfhash_core.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "tlsh", None)  # the shared tlsh file deleted by an uninstall
    summary = enrich(_results(1, path), Settings(timeout=0))
    assert any("pip install --force-reinstall --no-deps python-tlsh" in e for e in summary["errors"])


def test_labelled_neighbours_become_cape_detections(tmp_path):
    from telfhash_core.store.index import Index

    path, ref = _fixture_with_digest()
    r = hash_file(path)
    known = "b" * 64
    db = tmp_path / "t.db"
    with Index(str(db), create=True) as ix:
        ix.add_results([{"sha256": known, "telfhash": r.telfhash, "file": "known.bin", "arch": r.arch}], source="misp")
        assert ix.set_label(known, "Mirai")
    results = _results(1, path)
    sha = results["target"]["file"]["sha256"]
    summary = enrich(results, Settings(index=str(db), detections=True, timeout=0))
    assert results["target"]["file"]["telfhash"] == ref
    assert results["detections"] == [{"family": "Mirai", "details": [{"telfhash": sha}]}]
    assert summary["files"][0]["detection"] == {"family": "Mirai", "distance": 0, "neighbour": known}
    assert summary["files"][0]["known"][0]["label"] == "Mirai"
    # a file that already has a detection (CAPE's own, e.g. a YARA family) gets none from us
    again = _results(1, path)
    again["detections"] = [{"family": "Gafgyt", "details": [{"Yara": sha}]}]
    enrich(again, Settings(index=str(db), detections=True, timeout=0))
    assert again["detections"] == [{"family": "Gafgyt", "details": [{"Yara": sha}]}]
    # off by default
    plain = _results(1, path)
    enrich(plain, Settings(index=str(db), timeout=0))
    assert "detections" not in plain
