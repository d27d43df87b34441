"""Partitioned clustering: the plan covers every pair that can be within T, and the groups equal
brute force (py-tlsh diff) and the single-machine grouping."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tlsh

import corpus
from telfhash_core.commands import batch
from telfhash_core.similarity.partitioned import cluster_digests, plan, relabel


def synthetic(n: int, centres: int, seed: int) -> list[str]:
    """Digests around random centres: a few body bytes changed, length code moved by up to 3
    (some across the 255 -> 0 wrap), and centres placed at the ends of the length range."""
    rng = np.random.default_rng(seed)
    cent = rng.integers(0, 256, size=(centres, 35), dtype=np.uint8)
    cent[:4, 1] = [0xF0, 0xF0, 0x00, 0x10]  # length codes 15, 15, 0 and 1 (nibble-swapped)
    cent[4:8, 1] = [0xEF, 0xFF, 0xEF, 0xFF]  # 254, 255, ...
    b = cent[rng.integers(0, centres, size=n)].copy()
    for _ in range(3):
        rows = np.flatnonzero(rng.random(n) < 0.6)
        b[rows, rng.integers(3, 35, size=rows.size)] = rng.integers(0, 256, size=rows.size, dtype=np.uint8)
    lv = (((b[:, 1] & 15).astype(int) << 4) | (b[:, 1] >> 4)) + rng.integers(-3, 4, size=n)
    lv %= 256
    b[:, 1] = (((lv & 15) << 4) | (lv >> 4)).astype(np.uint8)
    return ["t1" + row.tobytes().hex() for row in b]


def brute_force(digests: list[str], threshold: int) -> np.ndarray:
    n = len(digests)
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    spelled = ["T1" + d[2:].upper() for d in digests]
    for i in range(n):
        for j in range(i + 1, n):
            if tlsh.diff(spelled[i], spelled[j]) <= threshold:
                a, b = find(i), find(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    return relabel(np.array([find(i) for i in range(n)]))


def lcode(d: str) -> int:
    return int(d[5] + d[4], 16)


@pytest.mark.parametrize("threshold", [0, 1, 23, 24, 50, 100])
def test_plan_covers_every_pair_whose_length_codes_allow_it(threshold):
    rng = np.random.default_rng(threshold)
    for L in (
        np.sort(rng.integers(0, 256, size=300)),
        np.sort(np.r_[np.zeros(50, int), np.full(50, 255), rng.integers(0, 256, 60)]),
    ):
        tasks = plan(L, threshold, 7)
        covered = set()
        for lo, hi, fwd, wrap in tasks:
            rows = list(range(lo, fwd)) + list(range(0, wrap))
            for a in range(lo, hi):
                covered.update((min(a, b), max(a, b)) for b in rows if b != a)
        # a pair can be within T only if the length term alone (12 d, or d when d <= 1) is <= T
        for i in range(len(L)):
            for j in range(i + 1, len(L)):
                d = abs(int(L[i]) - int(L[j]))
                d = min(d, 256 - d)
                if (d if d <= 1 else 12 * d) <= threshold:
                    assert (i, j) in covered, (threshold, L[i], L[j])


@pytest.mark.parametrize("kernel", ["auto", "cells"])
@pytest.mark.parametrize("threshold", [30, 50, 150])
def test_groups_equal_brute_force(threshold, kernel):
    digests = synthetic(350, 40, threshold)
    assert any(lcode(d) >= 253 for d in digests) and any(lcode(d) <= 2 for d in digests)
    labels, info = cluster_digests(digests, threshold, jobs=2, ntasks=6, kernel=kernel)
    assert info["tasks"] >= 2
    expected = brute_force(digests, threshold)
    assert 1 < expected.max() and (np.bincount(expected) > 1).sum() > 10  # real groups, not one blob
    assert (labels == expected).all()


def test_groups_across_the_length_code_wrap():
    base = bytes.fromhex(synthetic(10, 10, 3)[0][2:])
    near_end = bytearray(base)
    near_end[1] = 0xFF  # length code 255
    near_start = bytearray(base)
    near_start[1] = 0x10  # length code 1: circular difference 2, length term 24
    digests = ["t1" + bytes(near_end).hex(), "t1" + bytes(near_start).hex()]
    assert tlsh.diff("T1" + digests[0][2:].upper(), "T1" + digests[1][2:].upper()) <= 30
    for kernel in ("auto", "cells"):
        labels, _ = cluster_digests(digests * 3, 30, jobs=1, ntasks=3, kernel=kernel)
        assert labels.tolist() == [0] * 6


def test_equals_single_machine_on_many_digests():
    from test_batch import single_machine

    digests = synthetic(20000, 1500, 7)
    expected = single_machine(digests, 50)
    for kernel in ("auto", "cells"):
        labels, info = cluster_digests(digests, 50, jobs=2, kernel=kernel)
        assert info["tasks"] > 1
        assert (labels == expected).all()


def test_cluster_command_on_corpus_results(tmp_path):
    entries = corpus.manifest()["files"]
    results = tmp_path / "results.jsonl"
    with open(results, "w") as fh:
        for e in entries:  # the reference's values, as a batch run would have written them
            t = e["reference"]["telfhash"]
            fh.write(
                json.dumps({"path": e["path"], "sha256": e["sha256"], "telfhash": t if t.startswith("t1") else None})
                + "\n"
            )
    out = tmp_path / "clusters.parquet"
    assert batch.main(["cluster", str(results), "-o", str(out), "-t", "50", "-j", "2"]) == 0
    pq = pytest.importorskip("pyarrow.parquet")
    rows = pq.read_table(out).to_pylist()
    with_digest = [e for e in entries if e["reference"]["telfhash"].startswith("t1")]
    assert [r["path"] for r in rows] == [e["path"] for e in with_digest]
    distinct = sorted({e["reference"]["telfhash"] for e in with_digest})
    group_of = dict(zip(distinct, brute_force(distinct, 50).tolist()))
    expected = relabel(np.array([group_of[e["reference"]["telfhash"]] for e in with_digest]))
    assert [r["cluster"] for r in rows] == expected.tolist()
    sizes = np.bincount(expected)
    assert [r["cluster_size"] for r in rows] == sizes[expected].tolist()


def _lterm(d):
    return d if d <= 1 else 12 * d


def _qterm(d):
    return d if d <= 1 else 12 * (d - 1)


def test_header_terms_are_a_lower_bound_of_tlsh_diff():
    """The bound the partitions rely on, checked against py-tlsh itself."""
    rng = np.random.default_rng(11)
    raw = rng.integers(0, 256, size=(400, 35), dtype=np.uint8)
    raw[200:, 2:] = raw[:200, 2:]  # pairs with equal bodies: the header terms are then the whole distance
    digests = ["T1" + r.tobytes().hex().upper() for r in raw]

    def header(x, y):
        la, lb = int(x[4:6][::-1], 16), int(y[4:6][::-1], 16)
        dl = abs(la - lb)
        qa, qb = int(x[6:8], 16), int(y[6:8], 16)
        d1, d2 = abs((qa >> 4) - (qb >> 4)), abs((qa & 15) - (qb & 15))
        return _lterm(min(dl, 256 - dl)) + _qterm(min(d1, 16 - d1)) + _qterm(min(d2, 16 - d2))

    for k in range(len(digests) - 1):
        x, y = digests[k], digests[k + 1]
        assert tlsh.diff(x, y) >= header(x, y)
    for k in range(200):
        x, y = digests[k], digests[k + 200]
        assert header(x, y) <= tlsh.diff(x, y) <= header(x, y) + 1  # + 1 when the checksums differ


@pytest.mark.parametrize("threshold", [0, 1, 11, 12, 23, 24, 35, 50, 100, 200])
def test_cells_cover_every_header_offset_within_t(threshold):
    from telfhash_core.similarity.partitioned import cell_offsets

    visited = set()
    for dl, dq1, r in cell_offsets(threshold).tolist():
        visited.update((dl, dq1, dq2) for dq2 in range(16) if min(dq2, 16 - dq2) <= r)
    for x in range(256):
        for a in range(16):
            for b in range(16):
                cost = _lterm(min(x, 256 - x)) + _qterm(min(a, 16 - a)) + _qterm(min(b, 16 - b))
                if cost <= threshold:  # reachable from one of the two rows of such a pair
                    assert (x, a, b) in visited or ((-x) % 256, (-a) % 16, (-b) % 16) in visited


def test_numpy_path_without_numba_gives_the_same_groups(tmp_path):
    import subprocess
    import sys

    digests = synthetic(250, 25, 4)
    src = tmp_path / "d.json"
    src.write_text(json.dumps(digests))
    code = (
        "import json,sys; from telfhash_core.similarity import partitioned as bc; assert not bc.HAVE_NUMBA;"
        f"l,_=bc.cluster_digests(json.load(open({str(src)!r})), 50, ntasks=4, jobs=2); print(json.dumps(l.tolist()))"
    )
    import os

    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, TELFHASH_NO_NUMBA="1"),
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == brute_force(digests, 50).tolist()


def test_threshold_where_every_length_code_can_pair():
    digests = synthetic(120, 30, 2)
    labels, info = cluster_digests(digests, 1600, jobs=2)  # length term can never exceed 1536
    assert info["tasks"] == 1
    assert (labels == brute_force(digests, 1600)).all()
