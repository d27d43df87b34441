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

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from ..digest import TLSH_HEX_LEN as DIGEST_HEX
from ..digest import hex_body, spell

try:  # the compiled kernels are optional: the NumPy path gives identical results
    import numba
    from llvmlite import ir as _llvm_ir
    from numba import types as _nb_types
    from numba.extending import intrinsic as _intrinsic

    HAVE_NUMBA = not os.environ.get("TELFHASH_NO_NUMBA")
except Exception:  # pragma: no cover - depends on the environment
    HAVE_NUMBA = False

__all__ = [
    "Encoded",
    "encode",
    "one_to_many",
    "pairs_within",
    "components_within",
    "max_length_code_diff",
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
_LTERM_TABLE = np.array([_lterm(min(d, 256 - d)) for d in range(256)], dtype=np.int32)
_QTERM_TABLE = np.array([_qterm(min(d, 16 - d)) for d in range(16)], dtype=np.int32)


def max_length_code_diff(threshold: int) -> int:
    """The largest circular length-code difference whose length term alone is <= threshold."""
    best = -1
    for d in range(129):
        if _lterm(d) <= threshold:
            best = d
    return best


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
    n = len(bodies)
    if n == 0:
        raw = np.zeros((0, DIGEST_HEX), dtype=np.uint8)
    else:
        raw = np.frombuffer("".join(bodies).encode("ascii"), dtype=np.uint8).reshape(n, DIGEST_HEX)
    nib = _NIBBLE[raw]
    byts = (nib[:, 0::2] << 4) | nib[:, 1::2]  # (n, 35) bytes as written in hex
    upper = np.where((raw >= ord("a")) & (raw <= ord("f")), raw - 32, raw).astype(np.uint8)
    hexarr = np.ascontiguousarray(upper).view(f"S{DIGEST_HEX}").reshape(n)
    checksum = np.ascontiguousarray(byts[:, 0])
    lbyte = byts[:, 1]
    lvalue = np.ascontiguousarray(((lbyte & 0x0F) << 4) | (lbyte >> 4))  # stored nibble-swapped
    qbyte = byts[:, 2]
    q1 = np.ascontiguousarray(qbyte >> 4)
    q2 = np.ascontiguousarray(qbyte & 0x0F)
    body = np.ascontiguousarray(byts[:, 3:])
    buckets = _BUCKET.astype(np.uint8)[body].reshape(n, 128)
    planes = np.empty((n, 6), dtype=np.uint64)
    for p in range(3):
        bits = np.packbits(buckets > p, axis=1)  # (n, 16)
        planes[:, 2 * p : 2 * p + 2] = bits.view(">u8").astype(np.uint64)
    return Encoded(hexarr, checksum, lvalue.astype(np.uint8), q1.astype(np.uint8), q2.astype(np.uint8), body, planes)


# ----------------------------------------------------------------------------- NumPy path


def _np_one_to_many(enc: Encoded, q: Encoded, rows: np.ndarray) -> np.ndarray:
    d = _LTERM_TABLE[(enc.lvalue[rows].astype(np.int32) - int(q.lvalue[0])) % 256]
    d = d + _QTERM_TABLE[(enc.q1[rows].astype(np.int32) - int(q.q1[0])) % 16]
    d = d + _QTERM_TABLE[(enc.q2[rows].astype(np.int32) - int(q.q2[0])) % 16]
    d = d + (enc.checksum[rows] != q.checksum[0])
    body = enc.body[rows]
    qb = q.body[0].astype(np.intp)
    for k in range(32):
        d = d + _BYTE_DIFF[qb[k], body[:, k]]
    return d.astype(np.int32)


# ----------------------------------------------------------------------------- compiled path

if HAVE_NUMBA:

    @_intrinsic
    def _popcount(typingctx, x):
        sig = _nb_types.int64(_nb_types.uint64)

        def codegen(context, builder, signature, args):
            fn = builder.module.declare_intrinsic("llvm.ctpop", [_llvm_ir.IntType(64)])
            return builder.call(fn, args)

        return sig, codegen

    def _njit(**options):
        """``numba.njit`` with an on-disk cache where one can be written (else compile per run)."""

        def decorate(fn):
            try:
                return numba.njit(cache=True, **options)(fn)
            except RuntimeError:  # numba found no writable cache location
                return numba.njit(cache=False, **options)(fn)

        return decorate

    _jit = _njit(nogil=True)

    @_njit(nogil=True, inline="always")
    def _nb_qterm(qa, qb):
        d = qa - qb
        if d < 0:
            d = -d
        if d > 8:
            d = 16 - d
        return d if d <= 1 else 12 * (d - 1)

    @_njit(nogil=True, inline="always")
    def _header(la, lb, q1a, q1b, q2a, q2b, ca, cb):
        d = la - lb
        if d < 0:
            d = -d
        if d > 128:
            d = 256 - d
        h = d if d <= 1 else 12 * d
        h += _nb_qterm(q1a, q1b) + _nb_qterm(q2a, q2b)
        if ca != cb:
            h += 1
        return h

    @_njit(nogil=True, inline="always")
    def _body(P, i, Q, j):
        x0 = P[i, 0] ^ Q[j, 0]
        x1 = P[i, 1] ^ Q[j, 1]
        x2 = P[i, 2] ^ Q[j, 2]
        x3 = P[i, 3] ^ Q[j, 3]
        x4 = P[i, 4] ^ Q[j, 4]
        x5 = P[i, 5] ^ Q[j, 5]
        s = _popcount(x0) + _popcount(x1) + _popcount(x2) + _popcount(x3) + _popcount(x4) + _popcount(x5)
        return s + 3 * (_popcount(x0 & x2 & x4) + _popcount(x1 & x3 & x5))

    @_jit
    def _nb_one_to_many(L, Q1, Q2, C, P, rows, ql, qq1, qq2, qc, QP):
        n = rows.shape[0]
        out = np.empty(n, dtype=np.int32)
        ql = np.int64(ql)
        qq1 = np.int64(qq1)
        qq2 = np.int64(qq2)
        qc = np.int64(qc)
        for k in range(n):
            j = rows[k]
            h = _header(ql, np.int64(L[j]), qq1, np.int64(Q1[j]), qq2, np.int64(Q2[j]), qc, np.int64(C[j]))
            out[k] = h + _body(QP, 0, P, j)
        return out

    @_jit
    def _nb_class_pass(cL, cQ1, cQ2, lstart, threshold, lmax, allpairs, fill, indptr, cand, bound):
        k = cL.shape[0]
        cnt = 0
        for A in range(k):
            la = np.int64(cL[A])
            noff = 1 if allpairs else lmax + 1
            for off in range(noff):
                if allpairs:
                    lo = A
                    hi = k
                else:
                    bkt = (la + off) % 256
                    lo = lstart[bkt]
                    hi = lstart[bkt + 1]
                    if off == 0:
                        lo = A
                for B in range(lo, hi):
                    h = _header(la, np.int64(cL[B]), np.int64(cQ1[A]), np.int64(cQ1[B]),
                                np.int64(cQ2[A]), np.int64(cQ2[B]), 0, 0)
                    if h <= threshold:
                        if fill:
                            cand[cnt] = B
                            bound[cnt] = h
                        cnt += 1
            indptr[A + 1] = cnt
        return cnt

    def _nb_class_candidates(cL, cQ1, cQ2, lstart, threshold, lmax, allpairs):
        """For every header class A, the classes B >= A whose header lower bound is <= threshold.

        A class is a run of rows with equal (L, q1, q2); the header of any pair between A and B
        is their bound plus at most 1 (checksums).  Returns CSR arrays (indptr, cand, bound).
        """
        indptr = np.zeros(cL.shape[0] + 1, dtype=np.int64)
        empty = np.zeros(0, dtype=np.int64)
        total = _nb_class_pass(cL, cQ1, cQ2, lstart, threshold, lmax, allpairs, False, indptr, empty, empty)
        cand = np.empty(total, dtype=np.int64)
        bound = np.empty(total, dtype=np.int64)
        _nb_class_pass(cL, cQ1, cQ2, lstart, threshold, lmax, allpairs, True, indptr, cand, bound)
        return indptr, cand, bound

    @_jit
    def _nb_scan(W0, W1, W2, W3, W4, W5, C, cls_of, cstart, indptr, cand, bound,
                 positions, threshold, mode, parent):
        """Visit the candidate pairs (a, b), a < b in class-sorted order, for rows ``positions``.

        mode 0: return the pairs within the threshold; mode 1: union them into ``parent``.
        """
        cap = 1024
        oi = np.empty(cap, dtype=np.int64)
        oj = np.empty(cap, dtype=np.int64)
        od = np.empty(cap, dtype=np.int32)
        cnt = 0
        for pk in range(positions.shape[0]):
            a = positions[pk]
            A = cls_of[a]
            a0, a1, a2, a3, a4, a5 = W0[a], W1[a], W2[a], W3[a], W4[a], W5[a]  # the row's planes, held
            ca = C[a]
            for e in range(indptr[A], indptr[A + 1]):
                B = cand[e]
                h = bound[e]
                budget = threshold - h
                lo = cstart[B]
                if B == A:
                    lo = a + 1
                hi = cstart[B + 1]
                for b in range(lo, hi):
                    x2 = a2 ^ W2[b]
                    x3 = a3 ^ W3[b]
                    # the middle plane alone is a lower bound of the body term: most pairs stop here
                    s = _popcount(x2) + _popcount(x3)
                    if s > budget:
                        continue
                    x0 = a0 ^ W0[b]
                    x1 = a1 ^ W1[b]
                    x4 = a4 ^ W4[b]
                    x5 = a5 ^ W5[b]
                    s += (_popcount(x0) + _popcount(x1) + _popcount(x4) + _popcount(x5)
                          + 3 * (_popcount(x0 & x2 & x4) + _popcount(x1 & x3 & x5)))
                    if s > budget:
                        continue
                    if C[b] != ca:
                        s += 1
                        if s > budget:
                            continue
                    if mode == 0:
                        if cnt == cap:
                            cap *= 2
                            ni = np.empty(cap, dtype=np.int64)
                            nj = np.empty(cap, dtype=np.int64)
                            nd = np.empty(cap, dtype=np.int32)
                            ni[:cnt] = oi[:cnt]
                            nj[:cnt] = oj[:cnt]
                            nd[:cnt] = od[:cnt]
                            oi, oj, od = ni, nj, nd
                        oi[cnt] = a
                        oj[cnt] = b
                        od[cnt] = h + s
                        cnt += 1
                    else:
                        _union(parent, a, b)
        return oi[:cnt], oj[:cnt], od[:cnt]

    @_njit(nogil=True)
    def _find(parent, x):
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            nxt = parent[x]
            parent[x] = root
            x = nxt
        return root

    @_njit(nogil=True)
    def _union(parent, a, b):
        ra = _find(parent, a)
        rb = _find(parent, b)
        if ra != rb:
            if ra < rb:
                parent[rb] = ra
            else:
                parent[ra] = rb

    @_jit
    def _merge_parents(parents):
        base = parents[0].copy()
        for t in range(1, parents.shape[0]):
            p = parents[t]
            for x in range(p.shape[0]):
                if p[x] != x:
                    _union(base, x, p[x])
        for x in range(base.shape[0]):
            base[x] = _find(base, x)
        return base


    @_jit
    def _nb_group_stats(L, Q1, Q2, C, P, members, ptr, group_of, weights, positions, maxd, sumd):
        """For each row ``members[p]`` (p in ``positions``): the largest distance to the other rows
        of its group and the sum of distances weighted by ``weights``."""
        for pk in range(positions.shape[0]):
            p = positions[pk]
            a = members[p]
            g = group_of[p]
            la = np.int64(L[a])
            q1a = np.int64(Q1[a])
            q2a = np.int64(Q2[a])
            ca = np.int64(C[a])
            mx = 0
            sm = 0
            for e in range(ptr[g], ptr[g + 1]):
                b = members[e]
                if b == a:
                    continue
                d = _header(la, np.int64(L[b]), q1a, np.int64(Q1[b]), q2a, np.int64(Q2[b]), ca, np.int64(C[b]))
                d += _body(P, a, P, b)
                if d > mx:
                    mx = d
                sm += d * weights[b]
            maxd[p] = mx
            sumd[p] = sm


    @_jit
    def _nb_group_stats_half(L, Q1, Q2, C, W0, W1, W2, W3, W4, W5, LT, QT, ptr, group_of, weights,
                             positions, maxd, sumd):
        """Every pair inside each group once.  Rows are sorted by group (group g is rows
        ptr[g]:ptr[g+1]); row a (in ``positions``) meets the later rows of its group and both
        rows' largest and weighted total distance are updated."""
        for pk in range(positions.shape[0]):
            a = positions[pk]
            g = group_of[a]
            la = np.int64(L[a])
            q1a = np.int64(Q1[a])
            q2a = np.int64(Q2[a])
            ca = C[a]
            a0, a1, a2, a3, a4, a5 = W0[a], W1[a], W2[a], W3[a], W4[a], W5[a]  # the row's planes, held
            wa = weights[a]
            mx = maxd[a]
            sm = sumd[a]
            for b in range(a + 1, ptr[g + 1]):
                x0 = a0 ^ W0[b]
                x1 = a1 ^ W1[b]
                x2 = a2 ^ W2[b]
                x3 = a3 ^ W3[b]
                x4 = a4 ^ W4[b]
                x5 = a5 ^ W5[b]
                d = (_popcount(x0) + _popcount(x1) + _popcount(x2) + _popcount(x3) + _popcount(x4)
                     + _popcount(x5) + 3 * (_popcount(x0 & x2 & x4) + _popcount(x1 & x3 & x5)))
                d += LT[(la - np.int64(L[b])) & 255] + QT[(q1a - np.int64(Q1[b])) & 15]
                d += QT[(q2a - np.int64(Q2[b])) & 15] + (1 if C[b] != ca else 0)
                mx = max(mx, d)
                sm += d * weights[b]
                maxd[b] = max(maxd[b], d)
                sumd[b] += d * wa
            maxd[a] = mx
            sumd[a] = sm


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


def one_to_many(enc: Encoded, query, idx=None) -> np.ndarray:
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
    if HAVE_NUMBA:
        return _nb_one_to_many(
            enc.lvalue, enc.q1, enc.q2, enc.checksum, enc.planes, rows,
            int(q.lvalue[0]), int(q.q1[0]), int(q.q2[0]), int(q.checksum[0]), q.planes,
        )
    return _np_one_to_many(enc, q, rows)


def _threads(threads: int | None) -> int:
    if threads is None:
        threads = int(os.environ.get("TELFHASH_THREADS", 0)) or (os.cpu_count() or 1)
    return max(1, int(threads))


def _scan(enc: Encoded, threshold: int, mode: int, threads: int | None):
    """Run the compiled scan; rows are sorted by header class (L, q1, q2) first."""
    n = len(enc)
    order = np.lexsort((enc.q2, enc.q1, enc.lvalue))
    L, Q1, Q2 = enc.lvalue[order], enc.q1[order], enc.q2[order]
    key = (L.astype(np.int64) << 8) | (Q1.astype(np.int64) << 4) | Q2.astype(np.int64)
    first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    cstart = np.r_[first, n].astype(np.int64)
    cls_of = (np.cumsum(np.r_[True, key[1:] != key[:-1]]) - 1).astype(np.int64)
    cL, cQ1, cQ2 = L[first], Q1[first], Q2[first]
    lstart = np.searchsorted(cL, np.arange(257), side="left").astype(np.int64)
    lmax = max_length_code_diff(threshold)
    indptr, cand, bound = _nb_class_candidates(cL, cQ1, cQ2, lstart, int(threshold), int(max(lmax, 0)), lmax >= 128)
    planes = enc.planes[order]
    W = [np.ascontiguousarray(planes[:, k]) for k in range(6)]
    C = np.ascontiguousarray(enc.checksum[order])
    nt = min(_threads(threads), max(1, n // 256))
    parents = np.tile(np.arange(n, dtype=np.int64), (nt if mode == 1 else 1, 1))

    def work(t: int):
        # interleaved rows give each thread a similar share of every class
        positions = np.arange(t, n, nt, dtype=np.int64)
        return _nb_scan(*W, C, cls_of, cstart, indptr, cand, bound, positions, int(threshold), mode,
                        parents[t if mode == 1 else 0])

    if nt == 1:
        outs = [work(0)]
    else:
        with ThreadPoolExecutor(nt) as ex:
            outs = list(ex.map(work, range(nt)))
    return order, outs, parents


def pairs_within(enc: Encoded, threshold: int, *, threads: int | None = None):
    """Every pair of rows within ``threshold`` (py-tlsh ``diff`` <= threshold).

    Returns ``(i, j, d)``: int64 row numbers with ``i < j`` and the int32 distances, sorted by
    ``(i, j)``.  Identical rows are pairs too (distance 0).
    """
    n = len(enc)
    threshold = int(threshold)
    if n < 2 or threshold < 0:
        e = np.zeros(0, dtype=np.int64)
        return e, e.copy(), np.zeros(0, dtype=np.int32)
    if HAVE_NUMBA:
        order, outs, _ = _scan(enc, threshold, 0, threads)
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


def components_within(enc: Encoded, threshold: int, *, threads: int | None = None) -> np.ndarray:
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
    elif HAVE_NUMBA:
        order, _, parents = _scan(enc, threshold, 1, threads)
        roots_sorted = _merge_parents(parents)  # component root per L-sorted position
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


def group_stats(enc: Encoded, labels, weights=None, *, rows=None, threads: int | None = None):
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
    if HAVE_NUMBA and rows is None:
        # each pair once, over rows gathered group by group; every thread keeps its own totals
        nt = min(_threads(threads), max(1, n // 64))
        planes = enc.planes[order]
        W = [np.ascontiguousarray(planes[:, k]) for k in range(6)]
        mxs = np.zeros((nt, n), dtype=np.int64)
        sms = np.zeros((nt, n), dtype=np.int64)
        args = (
            np.ascontiguousarray(enc.lvalue[order]), np.ascontiguousarray(enc.q1[order]),
            np.ascontiguousarray(enc.q2[order]), np.ascontiguousarray(enc.checksum[order]), *W,
            _LTERM_TABLE.astype(np.int64), _QTERM_TABLE.astype(np.int64), ptr, group_of,
            np.ascontiguousarray(w[order]),
        )

        def work(t: int):
            _nb_group_stats_half(*args, positions[t::nt].copy(), mxs[t], sms[t])

        if nt == 1:
            work(0)
        else:
            with ThreadPoolExecutor(nt) as ex:
                list(ex.map(work, range(nt)))
        maxd[order] = mxs.max(axis=0)
        sumd[order] = sms.sum(axis=0)
    elif HAVE_NUMBA:
        nt = min(_threads(threads), max(1, positions.size // 64))
        mx = np.full(n, -1, dtype=np.int64)
        sm = np.full(n, -1, dtype=np.int64)

        def work(t: int):
            _nb_group_stats(enc.lvalue, enc.q1, enc.q2, enc.checksum, enc.planes, order, ptr, group_of, w,
                            positions[t::nt].copy(), mx, sm)

        if nt == 1:
            work(0)
        else:
            with ThreadPoolExecutor(nt) as ex:
                list(ex.map(work, range(nt)))
        maxd[order] = mx
        sumd[order] = sm
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
