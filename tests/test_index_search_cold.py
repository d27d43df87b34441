"""The first search of an Index (a one-off ``telfhash index search``) reads only the header classes
that can match from the by-header snapshot: its results equal a brute-force py-tlsh scan and the
whole-matrix search, and a missing, stale or damaged by-header snapshot is never trusted."""

from __future__ import annotations

import dataclasses
import json
import sqlite3

import numpy as np
import pytest
import tlsh

from telfhash_core.similarity import tlshdist
from telfhash_core.store.index import Index


def family_rows(n: int, seed: int) -> list[dict]:
    """Result dicts whose digests come in families (a few changed bytes, sometimes a changed header)."""
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, 256, (40, 35), dtype=np.uint8)
    seeds[:, 1] = rng.integers(0x10, 0x40, 40)  # a handful of length codes, as real corpora have
    packed = seeds[rng.integers(0, len(seeds), n)].copy()
    for _ in range(4):
        rows = np.flatnonzero(rng.random(n) < 0.7)
        packed[rows, rng.integers(3, 35, rows.size)] ^= rng.integers(1, 256, rows.size).astype(np.uint8)
    rows = np.flatnonzero(rng.random(n) < 0.2)
    packed[rows, 2] ^= rng.integers(1, 256, rows.size).astype(np.uint8)  # quartile ratios
    rows = np.flatnonzero(rng.random(n) < 0.1)
    packed[rows, 1] = (packed[rows, 1].astype(np.int32) + 16).astype(np.uint8)  # length code + 1
    shas = rng.bytes(32 * n)
    return [
        {"file": f"/s/{i}", "telfhash": "t1" + packed[i].tobytes().hex(), "sha256": shas[32 * i : 32 * i + 32].hex()}
        for i in range(n)
    ]


def brute_force(query: str, rows: list[dict], threshold: int) -> list[tuple[int, str]]:
    q = "T1" + query[2:].upper()
    out = [(tlsh.diff(q, "T1" + r["telfhash"][2:].upper()), r["sha256"]) for r in rows]
    return sorted(p for p in out if p[0] <= threshold)


ROWS = family_rows(3000, 7)
QUERIES = [ROWS[5]["telfhash"], ROWS[2999]["telfhash"], family_rows(3, 8)[0]["telfhash"]]


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("cold") / "c.sqlite"
    with Index(path) as ix:
        ix.add_results(ROWS[:2500])
        assert ix.save_snapshot(min_rows=1)
        ix.add_results(ROWS[2500:])  # rows after the snapshot: read from the entries themselves
    return path


@pytest.mark.parametrize("threshold", [0, 30, 50, 120, 400])
def test_first_search_equals_brute_force_and_the_whole_matrix(db, threshold):
    for q in QUERIES:
        expect = brute_force(q, ROWS, threshold)
        with Index(db) as ix:
            assert ix._search_by_header("digest", q, threshold) is not None
            first = ix.search(q, threshold)
            assert "digest" not in ix._matrices  # the first search loaded no matrix
            again = ix.search(q, threshold)
            assert "digest" in ix._matrices
            limited = ix.search(q, threshold, limit=3)
        with Index(db) as ix:
            first_limited = ix.search(q, threshold, limit=3)
        assert sorted((m.distance, m.sha256) for m in first) == expect
        assert [m.to_dict() for m in first] == [m.to_dict() for m in again]
        assert [m.to_dict() for m in first_limited] == [m.to_dict() for m in limited]
        assert [m.to_dict() for m in first] == [dataclasses.asdict(m) for m in first]


def test_by_header_reads_fewer_rows(db):
    with Index(db) as ix:
        ids, packed = ix._search_by_header("digest", QUERIES[0], 50)
        assert 0 < len(ids) < len(ROWS) and len(set(ids.tolist())) == len(ids)
        assert set(range(2501, 3001)) <= set(ids.tolist())  # every row after the snapshot


def test_packed_distances_equal_py_tlsh():
    rng = np.random.default_rng(11)
    packed = rng.integers(0, 256, (2000, 35), dtype=np.uint8)
    for q in ("t1" + packed[3].tobytes().hex(), QUERIES[0], QUERIES[2].upper().replace("T1", "")):
        got = tlshdist.packed_distances(packed, q)
        want = [tlsh.diff("T1" + q[-70:].upper(), "T1" + r.tobytes().hex().upper()) for r in packed]
        assert got.tolist() == want


def test_missing_stale_or_damaged_by_header_snapshot_is_not_trusted(tmp_path):
    path = tmp_path / "d.sqlite"
    rows = ROWS[:1200]
    q = QUERIES[0]
    expect = brute_force(q, rows, 60)
    with Index(path) as ix:
        ix.add_results(rows)
        assert ix.save_snapshot(min_rows=1)
    # an index whose snapshot was stored by an earlier version: no by-header rows yet
    con = sqlite3.connect(path)
    info = json.loads(con.execute("SELECT value FROM meta WHERE key = 'snapshot:digest'").fetchone()[0])
    del info["by_header"]
    con.execute("UPDATE meta SET value = ? WHERE key = 'snapshot:digest'", (json.dumps(info),))
    con.commit()
    with Index(path) as ix:
        assert ix._search_by_header("digest", q, 60) is None
        assert sorted((m.distance, m.sha256) for m in ix.search(q, 60)) == expect
        assert ix.save_snapshot(min_rows=1)  # gains them on the next save
    with Index(path) as ix:
        assert ix._search_by_header("digest", q, 60) is not None
    # damaged rows
    con.execute(
        "UPDATE snapshot_by_header SET packed = x'00ff' WHERE rowid = (SELECT min(rowid) FROM snapshot_by_header)"
    )
    con.commit()
    with Index(path) as ix:
        assert ix._search_by_header("digest", q, 60) is None
        assert sorted((m.distance, m.sha256) for m in ix.search(q, 60)) == expect
    con.close()
    # a rewrite (a digest filled in for a known sample) makes the snapshot stale
    extra = family_rows(2, 99)
    with Index(path) as ix:
        ix.add_results([dict(extra[0], telfhash="-")])
        ix.add_results([extra[0]])
    with Index(path) as ix:
        assert ix._search_by_header("digest", q, 60) is None
        assert sorted((m.distance, m.sha256) for m in ix.search(q, 60)) == brute_force(q, rows + extra[:1], 60)
