"""Bulk TLSH distances between telfhashes, exactly equal to py-tlsh's ``diff``.

A digest (``T1`` + 70 hex) is 35 bytes: checksum, length code (L), the two quartile ratios
(q1, q2) and a 32-byte body of 128 two-bit buckets.  py-tlsh's ``diff`` (length term included) is

    header(a, b) + body(a, b)

    header = lterm(moddiff(La, Lb, 256)) + qterm(moddiff(q1a, q1b, 16))
             + qterm(moddiff(q2a, q2b, 16)) + (checksums differ)
    lterm(d) = d if d <= 1 else 12 * d          qterm(d) = d if d <= 1 else 12 * (d - 1)
    body = sum over buckets of |x - y|, where a difference of 3 scores 6

where ``moddiff`` is the circular difference.  Every term is >= 0, so the length term alone is a
lower bound of the whole distance: for a threshold T only pairs whose length codes are within
``max {d : lterm(d) <= T}`` of each other (circularly) can be within T.  :func:`pairs_within`
visits only those (grouping rows by L) and skips the body when the header already exceeds T;
this pruning is exact, never an approximation.

The body is stored as three bit planes of 128 bits (bucket value v as the bits v>=1, v>=2,
v>=3): ``|x - y|`` is the number of differing plane bits, and a difference of 3 (all three
differ) gets 3 more, giving TLSH's 6.  With numba installed the kernels are compiled
(popcount instructions, threads without the GIL); without it a NumPy path gives the same
numbers, more slowly.

    >>> enc = encode(["t1...", "T1...", "<70 hex>"])
    >>> one_to_many(enc, 0)                 # distances from row 0 to every row
    >>> i, j, d = pairs_within(enc, 50)     # every pair i < j with distance <= 50
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from ..digest import TLSH_HEX_LEN as DIGEST_HEX
from ..digest import hex_body, spell

# The compiled kernels are optional (the NumPy path gives identical results) and imported only
# when a job needs them; this says whether numba is installed and not switched off.
HAVE_NUMBA = importlib.util.find_spec("numba") is not None and not os.environ.get("TELFHASH_NO_NUMBA")

__all__ = [
    "Encoded",
    "encode",
    "encode_bodies",
    "one_to_many",
    "pairs_within",
    "components_within",
    "max_length_code_diff",
    "header_bounds",
    "packed_distances",
    "group_stats",
    "relabel",
    "HAVE_NUMBA",
]


# ----------------------------------------------------------------------------- tables

_NIBBLE = np.full(256, 255, dtype=np.uint8)
for _c in "0123456789":
    _NIBBLE[ord(_c)] = ord(_c) - 48
for _k, _c in enumerate("abcdef"):
    _NIBBLE[ord(_c)] = 10 + _k
    _NIBBLE[ord(_c.upper())] = 10 + _k


def _lterm(d: int) -> int:
    return d if d <= 1 else 12 * d


def _qterm(d: int) -> int:
    return d if d <= 1 else 12 * (d - 1)


def _moddiff(x: np.ndarray, y, r: int) -> np.ndarray:
    d = np.abs(x.astype(np.int32) - np.int32(y))
    return np.minimum(d, r - d)


# body difference of two body bytes (four buckets each), for the NumPy path
_BUCKET = np.array([[(b >> s) & 3 for s in (6, 4, 2, 0)] for b in range(256)], dtype=np.int16)
_BDIFF = np.abs(_BUCKET[:, None, :] - _BUCKET[None, :, :])
_BYTE_DIFF = np.where(_BDIFF == 3, 6, _BDIFF).sum(axis=2).astype(np.int32)  # (256, 256)
# per body byte (four buckets, the first in the high bits) and plane p: the four bits "bucket > p"
_PLANE_NIBBLE = np.array(
    [[sum(int(v > p) << (3 - k) for k, v in enumerate(_BUCKET[b])) for b in range(256)] for p in range(3)],
    dtype=np.uint8,
)
_LTERM_TABLE = np.array([_lterm(min(d, 256 - d)) for d in range(256)], dtype=np.int32)
_QTERM_TABLE = np.array([_qterm(min(d, 16 - d)) for d in range(16)], dtype=np.int32)


def max_length_code_diff(threshold: int) -> int:
    """The largest circular length-code difference whose length term alone is <= threshold."""
    best = -1
    for d in range(129):
        if _lterm(d) <= threshold:
            best = d
    return best


def header_bounds(headers: np.ndarray, query) -> np.ndarray:
    """For header classes ``(length code << 8) | (q1 << 4) | q2``: the length and quartile-ratio
    terms of the distance to ``query`` (a digest in any spelling).  Every other term is >= 0, so
    no digest of a class whose value exceeds a threshold is within it."""
    q = encode([query])
    h = np.asarray(headers, dtype=np.int64)
    d = _LTERM_TABLE[((h >> 8) - int(q.lvalue[0])) % 256]
    d = d + _QTERM_TABLE[(((h >> 4) & 0x0F) - int(q.q1[0])) % 16]
    return d + _QTERM_TABLE[((h & 0x0F) - int(q.q2[0])) % 16]


def packed_distances(packed: np.ndarray, query) -> np.ndarray:
    """Distances (int32, py-tlsh ``diff``) from ``query`` (a digest in any spelling) to each row
    of an (n, 35) uint8 matrix of packed digests, without building bit planes first.

    The body term is read two body bytes (eight buckets) at a time from a table made for the
    query: 16 look-ups per row.  For one query over rows read just now this is cheaper than
    :func:`one_to_many`, whose planes cost more to build than the pass itself.
    """
    q = encode([query])
    byts = np.ascontiguousarray(packed, dtype=np.uint8).reshape(-1, 35)
    lbyte = byts[:, 1]
    lvalue = ((lbyte & 0x0F) << 4) | (lbyte >> 4)  # stored nibble-swapped
    d = _LTERM_TABLE[(lvalue - q.lvalue[0]).astype(np.uint8)]  # uint8 wrap-around: the difference mod 256
    d += _QTERM_TABLE[((byts[:, 2] >> 4) - q.q1[0]) & 0x0F]
    d += _QTERM_TABLE[((byts[:, 2] & 0x0F) - q.q2[0]) & 0x0F]
    d += byts[:, 0] != q.checksum[0]
    body = byts[:, 3:].copy().view(">u2")  # (n, 16): two body bytes each, first byte high
    qb = q.body[0].astype(np.intp)
    for k in range(16):
        table = (_BYTE_DIFF[qb[2 * k]][:, None] + _BYTE_DIFF[qb[2 * k + 1]][None, :]).ravel()  # 65536 entries
        d += table[body[:, k]]
    return d.astype(np.int32, copy=False)


# ----------------------------------------------------------------------------- encoding


@dataclass(frozen=True)
class Encoded:
    """Digests packed for bulk distances.  ``len(enc)`` is the number of digests.

    ``hex``: the 70 hex characters (upper case) as a NumPy ``S70`` array; ``checksum``,
    ``lvalue``, ``q1``, ``q2``: uint8 header fields (length code and ratios as TLSH reads them);
    ``body``: (n, 32) uint8; ``planes``: (n, 6) uint64 bit planes of the 128 buckets.
    """

    hex: np.ndarray
    checksum: np.ndarray
    lvalue: np.ndarray
    q1: np.ndarray
    q2: np.ndarray
    body: np.ndarray
    planes: np.ndarray

    def __len__(self) -> int:
        return int(self.checksum.shape[0])

    def __getitem__(self, rows) -> "Encoded":
        """A subset (slice, index array or boolean mask), as a new ``Encoded``."""
        if isinstance(rows, (int, np.integer)):
            rows = [int(rows)]
        return Encoded(*(np.ascontiguousarray(getattr(self, f)[rows]) for f in _FIELDS))

    def digest(self, row: int, form: str = "t1") -> str:
        """The digest of one row as ``t1…`` (default), ``T1…`` or ``hex``."""
        return spell(self.hex[row].decode(), form)

    def digests(self, form: str = "t1") -> list[str]:
        return [self.digest(i, form) for i in range(len(self))]

    @staticmethod
    def concat(parts: Sequence["Encoded"]) -> "Encoded":
        parts = [p for p in parts if len(p)] or list(parts[:1]) or [encode([])]
        return Encoded(*(np.ascontiguousarray(np.concatenate([getattr(p, f) for p in parts])) for f in _FIELDS))


_FIELDS = ("hex", "checksum", "lvalue", "q1", "q2", "body", "planes")


def encode(digests: Iterable[str]) -> Encoded:
    """Pack digests (any spelling: ``t1…``, ``T1…`` or 70 hex) for bulk distances.

    Raises ValueError naming the first value that is not a digest (``tnull``, ``-``, ...).
    """
    bodies = []
    for k, d in enumerate(digests):
        b = hex_body(d)
        if b is None:
            raise ValueError(f"not a telfhash digest (item {k}): {d!r}")
        bodies.append(b)
    return encode_bodies(bodies)


# Digests packed this many at a time: the temporary arrays stay small (a few MB).
ENCODE_CHUNK = 1 << 16


def encode_bodies(bodies: Sequence[str]) -> Encoded:
    """Like :func:`encode`, for digests known to be 70 hex characters each (no ``t1``), as
    :func:`~telfhash_core.digest.hex_body` gives them; packed chunk by chunk into the result."""
    n = len(bodies)
    out = Encoded(
        np.empty(n, dtype=f"S{DIGEST_HEX}"),
        np.empty(n, dtype=np.uint8),
        np.empty(n, dtype=np.uint8),
        np.empty(n, dtype=np.uint8),
        np.empty(n, dtype=np.uint8),
        np.empty((n, 32), dtype=np.uint8),
        np.empty((n, 6), dtype=np.uint64),
    )

    def pack(lo: int) -> None:
        hi = min(n, lo + ENCODE_CHUNK)
        raw = np.frombuffer("".join(bodies[lo:hi]).encode("ascii"), dtype=np.uint8).reshape(hi - lo, DIGEST_HEX)
        _encode_rows(raw, out, lo, hi)

    starts = range(0, n, ENCODE_CHUNK)
    if len(starts) < 2:
        for lo in starts:
            pack(lo)
    else:  # NumPy lets go of the GIL in the array work: chunks on two threads
        with ThreadPoolExecutor(min(2, _threads(None))) as ex:
            list(ex.map(pack, starts))
    return out


def _encode_rows(raw: np.ndarray, out: Encoded, lo: int, hi: int) -> None:
    """Rows ``lo:hi`` of ``out`` from their hex characters ``raw`` (an (m, 70) uint8 array)."""
    m = hi - lo
    nib = _NIBBLE[raw]
    byts = (nib[:, 0::2] << 4) | nib[:, 1::2]  # (m, 35) bytes as written in hex
    upper = np.where((raw >= ord("a")) & (raw <= ord("f")), raw - 32, raw).astype(np.uint8)
    out.hex[lo:hi] = np.ascontiguousarray(upper).view(f"S{DIGEST_HEX}").reshape(m)
    out.checksum[lo:hi] = byts[:, 0]
    lbyte = byts[:, 1]
    out.lvalue[lo:hi] = ((lbyte & 0x0F) << 4) | (lbyte >> 4)  # stored nibble-swapped
    out.q1[lo:hi] = byts[:, 2] >> 4
    out.q2[lo:hi] = byts[:, 2] & 0x0F
    body = byts[:, 3:]
    out.body[lo:hi] = body
    for p in range(3):  # plane p of two body bytes (eight buckets) is one byte
        table = _PLANE_NIBBLE[p]
        bits = (table[body[:, 0::2]] << 4) | table[body[:, 1::2]]  # (m, 16)
        out.planes[lo:hi, 2 * p : 2 * p + 2] = bits.view(">u8").astype(np.uint64)


# ----------------------------------------------------------------------------- NumPy path


def _np_one_to_many(enc: Encoded, q: Encoded, rows: np.ndarray) -> np.ndarray:
    n = len(enc)
    whole = rows.size == n and (n == 0 or (rows[0] == 0 and rows[-1] == n - 1 and bool((np.diff(rows) == 1).all())))

    def take(a: np.ndarray) -> np.ndarray:
        return a if whole else a[rows]

    d = _LTERM_TABLE[(take(enc.lvalue).astype(np.int32) - int(q.lvalue[0])) % 256]
    d += _QTERM_TABLE[(take(enc.q1).astype(np.int32) - int(q.q1[0])) % 16]
    d += _QTERM_TABLE[(take(enc.q2).astype(np.int32) - int(q.q2[0])) % 16]
    d += take(enc.checksum) != q.checksum[0]
    if _POPCOUNT is not None:  # NumPy >= 2: popcount over the six bit-plane words, as the kernels do
        x = take(enc.planes) ^ q.planes[0]
        d += _POPCOUNT(x).sum(axis=1, dtype=np.int32)
        d += 3 * (_POPCOUNT(x[:, 0] & x[:, 2] & x[:, 4]).astype(np.int32) + _POPCOUNT(x[:, 1] & x[:, 3] & x[:, 5]))
        return d.astype(np.int32, copy=False)
    body = take(enc.body)
    qb = q.body[0].astype(np.intp)
    for k in range(32):
        d = d + _BYTE_DIFF[qb[k], body[:, k]]
    return d.astype(np.int32)


_POPCOUNT = getattr(np, "bitwise_count", None)


# ----------------------------------------------------------------------------- compiled path
#
# The numba kernels live in ``_compiled`` and are imported on first need: importing numba and
# loading its cached machine code costs about a second, more than the NumPy path takes for a few
# thousand digests.  So the NumPy path serves small jobs (``COMPILED_MIN_ROWS``) unless numba is
# loaded already; ``compiled=True/False`` forces a path (tests compare them).

COMPILED_MIN_ROWS = 2_000
COMPILED_MIN_ONE = 20_000_000  # one query against this many rows (NumPy with popcount is close)

_KERNELS = (
    "_body",
    "_find",
    "_header",
    "_merge_parents",
    "_nb_class_candidates",
    "_nb_class_pass",
    "_nb_group_stats",
    "_nb_group_stats_half",
    "_nb_one_to_many",
    "_nb_project",
    "_nb_qterm",
    "_nb_scan",
    "_njit",
    "_popcount",
    "_union",
)


@functools.lru_cache(maxsize=None)
def _kernels():
    """The ``_compiled`` module, or None when numba cannot be imported."""
    global HAVE_NUMBA
    try:
        from . import _compiled
    except Exception:  # pragma: no cover - a broken numba install: the NumPy path gives the same numbers
        HAVE_NUMBA = False
        return None
    return _compiled


def _compiled_for(size: int, minimum: int, compiled: bool | None):
    """The kernels to use for a job of ``size`` rows, or None for the NumPy path."""
    if compiled is False or not HAVE_NUMBA:
        return None
    if compiled is None and size < minimum and "numba" not in sys.modules:
        return None
    return _kernels()


def __getattr__(name: str):
    # the kernels by their old names (``tlshdist._body``, ``tlshdist._find``, ...), loaded on first use
    if name in _KERNELS and HAVE_NUMBA:
        k = _kernels()
        if k is not None:
            return getattr(k, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------- public API


def _query(enc: Encoded, query) -> Encoded:
    if isinstance(query, (int, np.integer)) and not isinstance(query, bool):
        if not -len(enc) <= int(query) < len(enc):
            raise IndexError(f"row {query} out of range for {len(enc)} digests")
        return enc[int(query)]
    if isinstance(query, Encoded):
        if len(query) != 1:
            raise ValueError("query must hold exactly one digest")
        return query
    return encode([query])


def one_to_many(enc: Encoded, query, idx=None, *, compiled: bool | None = None) -> np.ndarray:
    """Distances (int32, py-tlsh ``diff``, length term included) from ``query`` to rows of ``enc``.

    ``query``: a digest in any spelling, or a row number of ``enc``.  ``idx``: optional row
    numbers (or boolean mask) restricting the rows compared; the result follows its order.
    """
    q = _query(enc, query)
    if idx is None:
        rows = np.arange(len(enc), dtype=np.int64)
    else:
        rows = np.asarray(idx)
        rows = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64, copy=False)
    if rows.size and (rows.min() < 0 or rows.max() >= len(enc)):
        raise IndexError("idx holds row numbers out of range")
    K = _compiled_for(int(rows.size), COMPILED_MIN_ONE, compiled)  # compiled: force a path (default: by size)
    if K is not None:
        return K._nb_one_to_many(
            enc.lvalue,
            enc.q1,
            enc.q2,
            enc.checksum,
            enc.planes,
            rows,
            int(q.lvalue[0]),
            int(q.q1[0]),
            int(q.q2[0]),
            int(q.checksum[0]),
            q.planes,
        )
    return _np_one_to_many(enc, q, rows)


def _threads(threads: int | None) -> int:
    if threads is None:
        threads = int(os.environ.get("TELFHASH_THREADS", 0)) or (os.cpu_count() or 1)
    return max(1, int(threads))


# Rows sampled to choose the projection's signs (its first principal axis).
PROJECTION_SAMPLE = 20_000


def _projection_mask(planes: np.ndarray) -> tuple[int, int]:
    """Signs s (one per bucket) for the projection F = sum of s * bucket value, as two 64-bit
    masks (bit set: +1).  Any signs keep |F(a) - F(b)| <= body(a, b); the first principal axis
    of a sample spreads the rows widest, so the windows of the scan are narrowest."""
    sample = planes[:: max(1, planes.shape[0] // PROJECTION_SAMPLE)]
    raw = np.ascontiguousarray(sample.astype(">u8")).view(np.uint8).reshape(-1, 6, 8)
    bits = np.unpackbits(raw, axis=2).reshape(-1, 3, 128)  # plane p: bucket value > p
    values = bits.sum(axis=1, dtype=np.float64)
    values -= values.mean(axis=0)
    _, vectors = np.linalg.eigh(values.T @ values)
    packed = np.packbits(vectors[:, -1] >= 0).view(">u8")
    return int(packed[0]), int(packed[1])


def _scan(K, enc: Encoded, threshold: int, mode: int, threads: int | None):
    """Run the compiled scan; rows are sorted by header class (L, q1, q2), then by projection."""
    n = len(enc)
    W = [np.ascontiguousarray(enc.planes[:, k]) for k in range(6)]
    m0, m1 = _projection_mask(enc.planes)
    F = K._nb_project(*W, np.uint64(m0), np.uint64(m1))
    order = np.lexsort((F, enc.q2, enc.q1, enc.lvalue))
    L, Q1, Q2 = enc.lvalue[order], enc.q1[order], enc.q2[order]
    key = (L.astype(np.int64) << 8) | (Q1.astype(np.int64) << 4) | Q2.astype(np.int64)
    first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    cstart = np.r_[first, n].astype(np.int64)
    cL, cQ1, cQ2 = L[first], Q1[first], Q2[first]
    lstart = np.searchsorted(cL, np.arange(257), side="left").astype(np.int64)
    lmax = max_length_code_diff(threshold)
    indptr, cand, bound = K._nb_class_candidates(cL, cQ1, cQ2, lstart, int(threshold), int(max(lmax, 0)), lmax >= 128)
    W = [w[order] for w in W]
    C = np.ascontiguousarray(enc.checksum[order])
    F = F[order]
    nt = min(_threads(threads), max(1, n // 256))
    parents = np.tile(np.arange(n, dtype=np.int64), (nt if mode == 1 else 1, 1))

    def work(t: int):
        # interleaved rows give each thread a similar share of every class
        return K._nb_scan(
            *W, C, F, cstart, indptr, cand, bound, t, nt, int(threshold), mode, parents[t if mode == 1 else 0]
        )

    if nt == 1:
        outs = [work(0)]
    else:
        with ThreadPoolExecutor(nt) as ex:
            outs = list(ex.map(work, range(nt)))
    return order, outs, parents


def pairs_within(enc: Encoded, threshold: int, *, threads: int | None = None, compiled: bool | None = None):
    """Every pair of rows within ``threshold`` (py-tlsh ``diff`` <= threshold).

    Returns ``(i, j, d)``: int64 row numbers with ``i < j`` and the int32 distances, sorted by
    ``(i, j)``.  Identical rows are pairs too (distance 0).
    """
    n = len(enc)
    threshold = int(threshold)
    if n < 2 or threshold < 0:
        e = np.zeros(0, dtype=np.int64)
        return e, e.copy(), np.zeros(0, dtype=np.int32)
    K = _compiled_for(n, COMPILED_MIN_ROWS, compiled)  # compiled: force a path (default: by size)
    if K is not None:
        order, outs, _ = _scan(K, enc, threshold, 0, threads)
        a = np.concatenate([o[0] for o in outs])
        b = np.concatenate([o[1] for o in outs])
        d = np.concatenate([o[2] for o in outs])
        a, b = order[a], order[b]
        i, j = np.minimum(a, b), np.maximum(a, b)
    else:
        i, j, d = _np_pairs_within(enc, threshold)
    key = np.lexsort((j, i))
    return i[key].astype(np.int64), j[key].astype(np.int64), d[key].astype(np.int32)


def _np_pairs_within(enc: Encoded, threshold: int):
    n = len(enc)
    lmax = max_length_code_diff(threshold)
    li, lj, ld = [], [], []
    for a in range(n - 1):
        rows = np.arange(a + 1, n, dtype=np.int64)
        if lmax < 128:
            rows = rows[_moddiff(enc.lvalue[rows], int(enc.lvalue[a]), 256) <= lmax]
        if not rows.size:
            continue
        d = _np_one_to_many(enc, enc[a], rows)
        keep = d <= threshold
        li.append(np.full(int(keep.sum()), a, dtype=np.int64))
        lj.append(rows[keep])
        ld.append(d[keep])
    if not li:
        e = np.zeros(0, dtype=np.int64)
        return e, e.copy(), np.zeros(0, dtype=np.int32)
    return np.concatenate(li), np.concatenate(lj), np.concatenate(ld)


def components_within(
    enc: Encoded, threshold: int, *, threads: int | None = None, compiled: bool | None = None
) -> np.ndarray:
    """Connected components of the graph "distance <= threshold" over the rows of ``enc``.

    Returns one label per row, numbered 0, 1, 2, ... in order of each component's first row.
    Pairs are unioned as they are found, never stored, so memory stays O(rows).
    """
    n = len(enc)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    threshold = int(threshold)
    if threshold < 0 or n == 1:
        roots = np.arange(n, dtype=np.int64)
    elif (K := _compiled_for(n, COMPILED_MIN_ROWS, compiled)) is not None:
        order, _, parents = _scan(K, enc, threshold, 1, threads)
        roots_sorted = K._merge_parents(parents)  # component root per L-sorted position
        roots = np.empty(n, dtype=np.int64)
        roots[order] = order[roots_sorted]
    else:
        i, j, _ = _np_pairs_within(enc, threshold)
        roots = _np_components(n, i, j)
    return relabel(roots)


def py_find(parent: np.ndarray, x: int) -> int:
    """The root of ``x`` in a union-find forest (path halving); the NumPy path's ``_find``."""
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


def py_union(parent: np.ndarray, a: int, b: int) -> None:
    """Join the trees of ``a`` and ``b``; the smaller root becomes the root."""
    ra, rb = py_find(parent, a), py_find(parent, b)
    if ra != rb:
        parent[max(ra, rb)] = min(ra, rb)


def _np_components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    parent = np.arange(n, dtype=np.int64)
    for a, b in zip(i.tolist(), j.tolist()):
        py_union(parent, a, b)
    return np.array([py_find(parent, x) for x in range(n)], dtype=np.int64)


def relabel(roots: np.ndarray) -> np.ndarray:
    """Labels 0..k-1 in order of first appearance of each root (a canonical form of a partition)."""
    roots = np.asarray(roots)
    if roots.size == 0:
        return np.zeros(0, dtype=np.int64)
    _, first, inverse = np.unique(roots, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inverse.reshape(-1)]


def group_stats(
    enc: Encoded, labels, weights=None, *, rows=None, threads: int | None = None, compiled: bool | None = None
):
    """Distances inside groups: for each row, the largest distance to another row with the same
    label, and the sum of its distances to them (each weighted by ``weights``, default 1).

    ``rows`` (optional, row numbers) restricts the rows whose statistics are computed (each
    still against its whole group); the others get -1.  Cost: the sum over groups of
    size x size distances.  Returns ``(maxd, sumd)`` as int64 arrays of ``len(enc)``.
    """
    n = len(enc)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (n,):
        raise ValueError("one label per row is needed")
    w = np.ones(n, dtype=np.int64) if weights is None else np.asarray(weights, dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    sl = labels[order]
    first = np.flatnonzero(np.r_[True, sl[1:] != sl[:-1]]) if n else np.zeros(0, dtype=np.int64)
    ptr = np.r_[first, n].astype(np.int64)
    group_of = (np.cumsum(np.r_[True, sl[1:] != sl[:-1]]) - 1).astype(np.int64) if n else np.zeros(0, dtype=np.int64)
    want = np.ones(n, dtype=bool) if rows is None else np.zeros(n, dtype=bool)
    if rows is not None:
        want[np.asarray(rows, dtype=np.int64)] = True
    positions = np.flatnonzero(want[order]).astype(np.int64)
    maxd = np.full(n, -1, dtype=np.int64)
    sumd = np.full(n, -1, dtype=np.int64)
    K = _compiled_for(n, COMPILED_MIN_ROWS, compiled)
    if K is not None:
        # rows gathered group by group; with ``rows`` None each pair once (every thread keeps its
        # own totals), else each chosen row against its whole group
        half = rows is None
        nt = min(_threads(threads), max(1, positions.size // 64))
        planes = enc.planes[order]
        args = (
            np.ascontiguousarray(enc.lvalue[order]),
            np.ascontiguousarray(enc.q1[order]),
            np.ascontiguousarray(enc.q2[order]),
            np.ascontiguousarray(enc.checksum[order]),
            *(np.ascontiguousarray(planes[:, k]) for k in range(6)),
            _LTERM_TABLE.astype(np.int64),
            _QTERM_TABLE.astype(np.int64),
            ptr,
            group_of,
            np.ascontiguousarray(w[order]),
        )
        del planes
        shape = (nt, n) if half else (n,)
        mxs = np.zeros(shape, dtype=np.int64)
        sms = np.zeros(shape, dtype=np.int64)

        def work(t: int):
            if half:
                K._nb_group_stats_half(*args, positions[t::nt].copy(), mxs[t], sms[t])
            else:
                K._nb_group_stats(*args, positions[t::nt].copy(), mxs, sms)

        if nt == 1:
            work(0)
        else:
            with ThreadPoolExecutor(nt) as ex:
                list(ex.map(work, range(nt)))
        if half:
            maxd[order] = mxs.max(axis=0)
            sumd[order] = sms.sum(axis=0)
        else:
            chosen = order[positions]
            maxd[chosen] = mxs[positions]
            sumd[chosen] = sms[positions]
    else:
        for p in positions.tolist():
            a = int(order[p])
            g = int(group_of[p])
            others = order[ptr[g] : ptr[g + 1]]
            others = others[others != a]
            d = _np_one_to_many(enc, enc[a], others).astype(np.int64)
            maxd[a] = int(d.max()) if d.size else 0
            sumd[a] = int((d * w[others]).sum())
    return maxd, sumd


def warm_up() -> None:
    """Compile (or load from numba's on-disk cache) every kernel, on a few digests:
    ``python -m telfhash_core.similarity.tlshdist`` after an install."""
    digests = ["T1" + "".join("0123456789ABCDEF"[(i * 7 + k * 3) % 16] for k in range(70)) for i in range(40)]
    enc = encode(digests)
    one_to_many(enc, 0, compiled=True)
    labels = components_within(enc, 300, compiled=True)
    pairs_within(enc, 300, compiled=True)
    group_stats(enc, labels, compiled=True)
    group_stats(enc, labels, rows=[0, 1], compiled=True)


if __name__ == "__main__":
    warm_up()
