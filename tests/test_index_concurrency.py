"""The index across processes: readers while one process adds (WAL), and a killed add."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import tlsh

import corpus
from telfhash_core.store.index import Index

REPO = Path(__file__).resolve().parent.parent

WRITER = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    from telfhash_core.store.index import Index

    db, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = np.random.default_rng(7)
    packed = rng.integers(0, 256, (n, 35), dtype=np.uint8)
    packed[:, 1] = 0x51  # one length code: many pairs within reach of each other

    def rows():
        for i in range(n):
            if i % batch == 0:
                time.sleep(0.02)  # let the readers in between commits
            yield {"file": f"/s/{i}", "telfhash": "t1" + packed[i].tobytes().hex(), "sha256": f"{i:064x}", "arch": "x64"}

    with Index(db) as ix:
        st = ix.add_results(rows(), source="writer", batch_size=batch)
    print(json.dumps(st.to_dict()))
    """
)

READER = textwrap.dedent(
    """
    import json, sys, time
    from telfhash_core.store.index import Index

    db, query, until = sys.argv[1], sys.argv[2], int(sys.argv[3])
    seen, errors = [], []
    deadline = time.time() + 60
    with Index(db, create=False) as ix:
        while time.time() < deadline:
            try:
                n = len(ix)
                hits = ix.search(query, max_distance=400)
            except Exception as exc:
                errors.append(repr(exc))
                continue
            seen.append((n, len(hits)))
            if n >= until:
                break
    print(json.dumps({"seen": seen, "errors": errors}))
    """
)


def _env():
    return dict(os.environ, TELFHASH_NO_ENTRY_POINTS="1", PYTHONPATH=str(REPO))


def test_two_readers_while_one_process_adds(tmp_path):
    db = tmp_path / "wal.sqlite"
    n, batch = 6000, 200
    with Index(db) as ix:  # create it, so that the readers can open it
        assert ix._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rng = np.random.default_rng(7)
    packed = rng.integers(0, 256, (n, 35), dtype=np.uint8)
    packed[:, 1] = 0x51
    query = "t1" + packed[5].tobytes().hex()
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), str(n), str(batch)], stdout=subprocess.PIPE, text=True, env=_env()
    )
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(db), query, str(n)], stdout=subprocess.PIPE, text=True, env=_env()
    )
    # this process is the second reader
    mine = []
    with Index(db, create=False) as ix:
        deadline = time.time() + 60
        while time.time() < deadline:
            hits = [(m.sha256, m.distance) for m in ix.search(query, max_distance=400)]
            count = len(ix._matrices["digest"].ids)  # the snapshot that search used
            mine.append((count, hits))
            if count >= n:
                break
            time.sleep(0.01)
    out_w, _ = writer.communicate(timeout=90)
    out_r, _ = reader.communicate(timeout=90)
    assert writer.returncode == 0 and reader.returncode == 0
    assert json.loads(out_w)["added"] == n
    other = json.loads(out_r)
    assert other["errors"] == []
    counts = [c for c, _ in other["seen"]]
    assert counts == sorted(counts) and counts[-1] == n
    # every snapshot is a whole number of batches: a reader never sees half a commit
    assert all(c % batch == 0 for c in counts + [c for c, _ in mine])
    assert len({c for c, _ in mine}) > 2, "the reader should have seen the index grow"
    # each search this process made equals a py-tlsh scan over the entries committed at that moment
    q = "T1" + query[2:].upper()
    digs = ["T1" + r.tobytes().hex().upper() for r in packed]
    dist = np.array([tlsh.diff(q, d) for d in digs])
    for count, hits in mine[:: max(1, len(mine) // 8)] + mine[-1:]:
        expect = sorted((int(dist[i]), f"{i:064x}") for i in range(count) if dist[i] <= 400)
        assert sorted((d, s) for s, d in hits) == expect


ADDER = textwrap.dedent(
    """
    import sys, time, json
    from telfhash_core.store.index import Index

    db = sys.argv[1]
    paths = json.load(open(sys.argv[2]))
    with Index(db) as ix:
        # slowed down so that the kill lands in the middle of the add
        ix.add_files(paths, jobs=1, batch_size=10, progress=lambda done, total: time.sleep(0.02))
    print("finished")
    """
)


def test_killed_add_keeps_committed_batches_and_rerun_completes(tmp_path):
    files = corpus.files()[::6]
    paths = [f["abspath"] for f in files]
    by_sha = {f["sha256"]: f for f in files}
    listing = tmp_path / "paths.json"
    listing.write_text(json.dumps(paths))
    db = tmp_path / "kill.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-c", ADDER, str(db), str(listing)], stdout=subprocess.PIPE, text=True, env=_env()
    )
    committed = 0
    deadline = time.time() + 60
    try:
        while time.time() < deadline and proc.poll() is None:
            if db.exists():
                try:
                    con = sqlite3.connect(db, timeout=5)
                    committed = con.execute("SELECT count(*) FROM entries").fetchone()[0]
                    con.close()
                except sqlite3.Error:
                    committed = 0
                if committed >= 30:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, "the add finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    with Index(db) as ix:
        before = {e["sha256"]: e for e in ix.entries()}
        assert 30 <= len(before) < len(by_sha)
        for sha, e in before.items():  # what was committed is intact and right
            ref = by_sha[sha]["reference"]["telfhash"]
            assert e["telfhash"] == (ref if ref.startswith("t1") else None)
            assert e["size"] == by_sha[sha]["size"]
        st = ix.add_files(paths, jobs=1)
        after = {e["sha256"]: e for e in ix.entries()}
    assert st.added == len(by_sha) - len(before)
    assert set(after) == set(by_sha)
    for sha, e in before.items():  # the first add's entries are kept as they were
        assert after[sha]["added"] == e["added"] and after[sha]["path"] == e["path"]
    for sha, e in after.items():
        ref = by_sha[sha]["reference"]["telfhash"]
        assert e["telfhash"] == (ref if ref.startswith("t1") else None)
