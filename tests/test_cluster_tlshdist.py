"""tlshdist: bulk distances must equal py-tlsh's ``diff`` exactly (length term included).

Expected values come from ``tlsh.Tlsh.diff`` alone.  Digests: real telfhashes from the shared
corpus manifest, uniformly random digests, and near-duplicates built to sit around the
pruning boundaries (length codes and quartile ratios wrapping around, bodies a few buckets apart).
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import tlsh

import corpus
from telfhash_core.similarity import tlshdist as td


@pytest.fixture(autouse=True)
def _compiled_whenever_installed(monkeypatch):
    """Here numba serves every size when installed (by default small jobs take the NumPy path),
    so that these comparisons exercise the compiled kernels; the NumPy path is forced by name."""
    monkeypatch.setattr(td, "COMPILED_MIN_ROWS", 0)
    monkeypatch.setattr(td, "COMPILED_MIN_ONE", 0)


def tl(d: str) -> tlsh.Tlsh:
    t = tlsh.Tlsh()
    t.fromTlshStr("T1" + (d[2:] if len(d) == 72 else d).upper())
    return t


def random_digests(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice("0123456789abcdef") for _ in range(70)) for _ in range(n)]


def near_digests(n: int, seed: int) -> list[str]:
    """Variants of a few bases: header bytes nudged across their wrap-around points, a few body
    buckets changed; many pairs land close to a threshold of 30-100."""
    rng = random.Random(seed)
    out = []
    for _ in range(max(1, n // 40)):
        base = bytearray(rng.randrange(256) for _ in range(35))
        base[1] = rng.choice([0x00, 0xF0, 0x0F, 0xFF, 0x10, 0x01, rng.randrange(256)])  # L, nibble-swapped
        base[2] = rng.choice([0x00, 0xFF, 0xF0, 0x0F, rng.randrange(256)])  # q1/q2
        for _ in range(40):
            v = bytearray(base)
            if rng.random() < 0.5:
                v[0] = rng.randrange(256)
            L = ((v[1] & 15) << 4 | v[1] >> 4) + rng.randint(-5, 5)
            L %= 256
            v[1] = (L & 15) << 4 | L >> 4
            q1, q2 = (v[2] >> 4) + rng.randint(-4, 4), (v[2] & 15) + rng.randint(-4, 4)
            v[2] = (q1 % 16) << 4 | (q2 % 16)
            for _ in range(rng.randint(0, 25)):
                k = rng.randrange(3, 35)
                v[k] ^= 3 << (2 * rng.randrange(4))
            out.append(v.hex())
    return out[:n]


def real_digests() -> list[str]:
    m = corpus.manifest()
    return sorted({f["reference"]["telfhash"] for f in m["files"] if f["reference"]["telfhash"].startswith("t1")})


@pytest.fixture(scope="module")
def mixed():
    return real_digests()[:600] + random_digests(200, 1) + near_digests(400, 2)


def brute_pairs(digests, threshold):
    objs = [tl(d) for d in digests]
    out = []
    for a in range(len(objs)):
        for b in range(a + 1, len(objs)):
            d = objs[a].diff(objs[b])
            if d <= threshold:
                out.append((a, b, d))
    return out


@pytest.mark.parametrize("compiled", [True, False])
def test_one_to_many_equals_tlsh_diff(mixed, compiled, monkeypatch):
    if compiled and not td.HAVE_NUMBA:
        pytest.skip("numba not installed")
    monkeypatch.setattr(td, "HAVE_NUMBA", compiled and td.HAVE_NUMBA)
    enc = td.encode(mixed)
    objs = [tl(d) for d in mixed]
    checked = 0
    for q in range(0, len(mixed), 23):  # ~52 queries x 1200 rows = 62k pairs
        got = td.one_to_many(enc, q)
        want = np.array([objs[q].diff(o) for o in objs])
        assert np.array_equal(got, want), q
        checked += len(want)
    assert checked > 50_000
    # a digest string as query, a subset of rows, other spellings
    rows = np.array([5, 3, 900, 1100])
    q = "T1" + mixed[7][-70:].upper()
    assert td.one_to_many(enc, q, rows).tolist() == [objs[7].diff(objs[r]) for r in rows]


@pytest.mark.parametrize("threshold", [0, 1, 12, 30, 50, 100, 250])
def test_pairs_within_equals_brute_force(mixed, threshold):
    i, j, d = td.pairs_within(td.encode(mixed), threshold)
    got = list(zip(i.tolist(), j.tolist(), d.tolist()))
    assert got == brute_pairs(mixed, threshold)


def test_pairs_within_numpy_path_and_threads(mixed, monkeypatch):
    sub = mixed[::3]
    want = brute_pairs(sub, 60)
    enc = td.encode(sub)
    for threads in (1, 2, 3):
        i, j, d = td.pairs_within(enc, 60, threads=threads)
        assert list(zip(i.tolist(), j.tolist(), d.tolist())) == want
    monkeypatch.setattr(td, "HAVE_NUMBA", False)
    i, j, d = td.pairs_within(enc, 60)
    assert list(zip(i.tolist(), j.tolist(), d.tolist())) == want


def test_large_threshold_visits_every_pair():
    digests = random_digests(120, 7)
    i, j, d = td.pairs_within(td.encode(digests), 10_000)  # no length-code pruning possible
    assert len(i) == 120 * 119 // 2
    assert list(zip(i.tolist(), j.tolist(), d.tolist())) == brute_pairs(digests, 10_000)


def test_duplicates_are_pairs_at_distance_zero():
    d = real_digests()[0]
    i, j, dist = td.pairs_within(td.encode([d, d.upper().replace("T1", "T1"), d[2:]]), 0)
    assert list(zip(i.tolist(), j.tolist(), dist.tolist())) == [(0, 1, 0), (0, 2, 0), (1, 2, 0)]


def test_encode_rejects_non_digests_by_name():
    good = real_digests()[:3]
    for bad in ("tnull", "-", "", None, "t1" + "g" * 70, "t1" + "a" * 69):
        with pytest.raises(ValueError, match="item 2"):
            td.encode(good[:2] + [bad])
    assert len(td.encode([])) == 0
    assert td.pairs_within(td.encode([]), 50)[0].size == 0


def test_encoded_round_trip_and_subsets():
    ds = real_digests()[:10]
    enc = td.encode(ds)
    assert enc.digests() == ds
    sub = enc[[3, 1]]
    assert sub.digests() == [ds[3], ds[1]]
    both = td.Encoded.concat([enc[:2], enc[5:7]])
    assert both.digests() == ds[:2] + ds[5:7]
    assert td.one_to_many(both, 0).tolist() == [tl(ds[0]).diff(tl(x)) for x in both.digests()]


def test_components_within_equals_brute_force(mixed):
    for threshold in (30, 50, 90):
        labels = td.components_within(td.encode(mixed), threshold)
        parent = list(range(len(mixed)))

        def find(x, parent=parent):
            while parent[x] != x:
                x = parent[x]
            return x

        for a, b, _ in brute_pairs(mixed, threshold):
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
        roots = [find(x) for x in range(len(mixed))]
        # same partition: labels equal exactly where roots are equal
        first = {}
        want = [first.setdefault(r, len(first)) for r in roots]
        assert labels.tolist() == want


def test_group_stats_equal_brute_force(mixed):
    sub = mixed[:300]
    enc = td.encode(sub)
    labels = td.components_within(enc, 80)
    w = np.arange(len(sub)) % 4 + 1
    maxd, sumd = td.group_stats(enc, labels, w)
    objs = [tl(d) for d in sub]
    for a in range(len(sub)):
        others = [b for b in range(len(sub)) if b != a and labels[b] == labels[a]]
        ds = [objs[a].diff(objs[b]) for b in others]
        assert maxd[a] == (max(ds) if ds else 0)
        assert sumd[a] == sum(d * w[b] for d, b in zip(ds, others))


def test_small_jobs_take_numpy_without_importing_numba():
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from telfhash_core.similarity import tlshdist as td, cluster\n"
        f"d = {random_digests(60, 11)!r}\n"
        "labels = cluster.components(d, 250)\n"
        "enc = td.encode(d); td.pairs_within(enc, 250); td.one_to_many(enc, 0); td.group_stats(enc, labels)\n"
        "print('numba' in sys.modules)\n"
    )
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "False"


def test_forced_paths_agree_with_tlsh(mixed):
    if not td.HAVE_NUMBA:
        pytest.skip("numba not installed")
    enc = td.encode(mixed[:300])
    want = brute_pairs(mixed[:300], 60)
    for compiled in (True, False):
        i, j, d = td.pairs_within(enc, 60, compiled=compiled)
        assert list(zip(i.tolist(), j.tolist(), d.tolist())) == want
    a = td.components_within(enc, 60, compiled=True)
    assert np.array_equal(a, td.components_within(enc, 60, compiled=False))
    for got, exp in zip(td.group_stats(enc, a, compiled=True), td.group_stats(enc, a, compiled=False)):
        assert np.array_equal(got, exp)


def test_encode_in_chunks_on_threads_is_encode_at_once(monkeypatch):
    """Digests are packed in chunks (two threads when there are several): the same arrays as one
    chunk, whose distances the tests above check against py-tlsh."""
    digests = real_digests()[:200]
    whole = td.encode(digests)
    monkeypatch.setattr(td, "ENCODE_CHUNK", 7)
    parts = td.encode(digests)
    for f in ("hex", "checksum", "lvalue", "q1", "q2", "body", "planes"):
        assert np.array_equal(getattr(whole, f), getattr(parts, f)), f
    assert len(parts) == len(digests) > 7 * 2
