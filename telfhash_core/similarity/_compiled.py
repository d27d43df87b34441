"""The compiled TLSH distance kernels (numba), imported only when a job is large enough to pay
for numba's import: :mod:`telfhash_core.similarity.tlshdist` loads this module on demand.

Compiled code is cached on disk (``cache=True``: beside this file where it is writable, else in
numba's per-user cache folder, or ``$NUMBA_CACHE_DIR``), so only the first run after an install
compiles.  ``python -m telfhash_core.similarity.tlshdist`` compiles every kernel ahead of time.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir as _llvm_ir
from numba import types as _nb_types
from numba.extending import intrinsic as _intrinsic


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


@_njit(nogil=True, inline="always")
def _planes(a0, a1, a2, a3, a4, a5, W0, W1, W2, W3, W4, W5, b):
    """The body term between a row held as its six bit planes ``a0..a5`` and row ``b`` of the
    planes ``W0..W5`` (what :func:`_body` computes on packed rows; branch-free, so that the
    block loops calling it vectorise)."""
    x0 = a0 ^ W0[b]
    x1 = a1 ^ W1[b]
    x2 = a2 ^ W2[b]
    x3 = a3 ^ W3[b]
    x4 = a4 ^ W4[b]
    x5 = a5 ^ W5[b]
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
                h = _header(
                    la, np.int64(cL[B]), np.int64(cQ1[A]), np.int64(cQ1[B]), np.int64(cQ2[A]), np.int64(cQ2[B]), 0, 0
                )
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
    total = _nb_class_pass(
        cL, cQ1, cQ2, lstart, threshold, lmax, allpairs, False, indptr, np.zeros(0, np.int32), np.zeros(0, np.int16)
    )
    cand = np.empty(total, dtype=np.int32)  # tens of millions of class pairs at T=50 on 10^6 digests
    bound = np.empty(total, dtype=np.int16)
    _nb_class_pass(cL, cQ1, cQ2, lstart, threshold, lmax, allpairs, True, indptr, cand, bound)
    return indptr, cand, bound


# Candidate rows of one class are compared this many at a time: a branch-free loop the compiler
# vectorises (vector popcounts where the CPU has them), then a short pass over the results.
SCAN_BLOCK = 256


@_njit(nogil=True, inline="always")
def _first_at_least(F, lo, hi, value):
    """The first position in ``lo:hi`` (``F`` ascending there) with ``F >= value``, else ``hi``;
    searched outwards from ``lo`` (steps 1, 2, 4, ...), then halving: cheap for a short way."""
    step = 1
    while lo < hi and F[lo] < value:
        probe = lo + step
        if probe >= hi or F[probe] >= value:
            hi = min(probe, hi)
            lo += 1
            while lo < hi:
                mid = (lo + hi) >> 1
                if F[mid] < value:
                    lo = mid + 1
                else:
                    hi = mid
            return lo
        lo = probe
        step *= 2
    return lo


@_njit(nogil=True, inline="always")
def _least(buf, m):
    low = buf[0]
    for k in range(m):
        low = min(low, buf[k])
    return low


@_jit
def _nb_scan(W0, W1, W2, W3, W4, W5, C, F, cstart, indptr, cand, bound, thread, nthreads, threshold, mode, parent):
    """Visit the candidate pairs (a, b), a < b in class-sorted order, for the rows a with
    ``a % nthreads == thread``, class pair after class pair.

    Inside a class rows are sorted by ``F``, a projection with |F(a) - F(b)| <= body(a, b);
    a pair whose header leaves a budget for the body is only compared when |F(a) - F(b)| is
    within it, so each row meets a window of each candidate class; the windows move forward
    as the rows of a class go up.

    mode 0: return the pairs within the threshold; mode 1: union them into ``parent``.
    """
    cap = 1024
    oi = np.empty(cap, dtype=np.int64)
    oj = np.empty(cap, dtype=np.int64)
    od = np.empty(cap, dtype=np.int32)
    buf = np.empty(SCAN_BLOCK, dtype=np.int64)
    cnt = 0
    for A in range(cstart.shape[0] - 1):
        first = cstart[A] + (thread - cstart[A]) % nthreads
        for e in range(indptr[A], indptr[A + 1]):
            B = np.int64(cand[e])
            h = np.int64(bound[e])
            budget = threshold - h
            lo = cstart[B]
            hi = lo
            end = cstart[B + 1]
            for a in range(first, cstart[A + 1], nthreads):
                fa = F[a]
                lo = _first_at_least(F, lo, end, fa - budget)
                hi = _first_at_least(F, max(lo, hi), end, fa + budget + 1)
                start = lo
                if B == A and start <= a:
                    start = a + 1
                if start >= hi:
                    continue
                a0, a1, a2, a3, a4, a5 = W0[a], W1[a], W2[a], W3[a], W4[a], W5[a]  # the row's planes, held
                ca = C[a]
                for s0 in range(start, hi, SCAN_BLOCK):
                    m = min(SCAN_BLOCK, hi - s0)
                    base = np.uint64(s0)
                    for k in range(np.uint64(m)):  # no branch: vectorised (unsigned: no negative-index check)
                        b = base + k
                        buf[k] = _planes(a0, a1, a2, a3, a4, a5, W0, W1, W2, W3, W4, W5, b) + (C[b] != ca)
                    if _least(buf, m) > budget:  # usually no pair of the block is within
                        continue
                    for k in range(m):
                        if buf[k] > budget:
                            continue
                        b = s0 + k
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
                            od[cnt] = h + buf[k]
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


@_njit(nogil=True, inline="always")
def _block_distances(row, L, Q1, Q2, C, W0, W1, W2, W3, W4, W5, LT, QT, start, m, buf):
    """Distances from ``row`` to rows ``start:start + m`` into ``buf[:m]`` (branch-free: vectorised)."""
    la = np.int64(L[row])
    q1a = np.int64(Q1[row])
    q2a = np.int64(Q2[row])
    ca = C[row]
    a0, a1, a2, a3, a4, a5 = W0[row], W1[row], W2[row], W3[row], W4[row], W5[row]
    base = np.uint64(start)
    for k in range(np.uint64(m)):  # unsigned: no negative-index check, which stops vectorisation
        b = base + k
        buf[k] = (
            _planes(a0, a1, a2, a3, a4, a5, W0, W1, W2, W3, W4, W5, b)
            + _header(la, np.int64(L[b]), q1a, np.int64(Q1[b]), q2a, np.int64(Q2[b]), 0, 0)
            + (C[b] != ca)
        )


@_jit
def _nb_group_stats(L, Q1, Q2, C, W0, W1, W2, W3, W4, W5, LT, QT, ptr, group_of, weights, positions, maxd, sumd):
    """For each row a in ``positions`` (rows sorted by group: group g is rows ptr[g]:ptr[g+1]):
    the largest distance to the rows of its group and the sum of those distances weighted by
    ``weights`` (its distance to itself is 0 and changes neither)."""
    buf = np.empty(SCAN_BLOCK, dtype=np.int64)
    for pk in range(positions.shape[0]):
        a = positions[pk]
        g = group_of[a]
        mx = 0
        sm = 0
        for s0 in range(ptr[g], ptr[g + 1], SCAN_BLOCK):
            m = min(SCAN_BLOCK, ptr[g + 1] - s0)
            _block_distances(a, L, Q1, Q2, C, W0, W1, W2, W3, W4, W5, LT, QT, s0, m, buf)
            for k in range(m):
                mx = max(mx, buf[k])
                sm += buf[k] * weights[s0 + k]
        maxd[a] = mx
        sumd[a] = sm


@_jit
def _nb_group_stats_half(L, Q1, Q2, C, W0, W1, W2, W3, W4, W5, LT, QT, ptr, group_of, weights, positions, maxd, sumd):
    """Every pair inside each group once.  Rows are sorted by group (group g is rows
    ptr[g]:ptr[g+1]); row a (in ``positions``) meets the later rows of its group and both
    rows' largest and weighted total distance are updated."""
    buf = np.empty(SCAN_BLOCK, dtype=np.int64)
    for pk in range(positions.shape[0]):
        a = positions[pk]
        g = group_of[a]
        wa = weights[a]
        mx = maxd[a]
        sm = sumd[a]
        for s0 in range(a + 1, ptr[g + 1], SCAN_BLOCK):
            m = min(SCAN_BLOCK, ptr[g + 1] - s0)
            _block_distances(a, L, Q1, Q2, C, W0, W1, W2, W3, W4, W5, LT, QT, s0, m, buf)
            for k in range(m):
                d = buf[k]
                b = s0 + k
                mx = max(mx, d)
                sm += d * weights[b]
                maxd[b] = max(maxd[b], d)
                sumd[b] += d * wa
        maxd[a] = mx
        sumd[a] = sm


@_jit
def _nb_project(W0, W1, W2, W3, W4, W5, m0, m1):
    """Per row: the bucket values summed with sign +1 where the mask (m0, m1) has a bit, else -1."""
    n = W0.shape[0]
    out = np.empty(n, dtype=np.int64)
    n0 = ~m0
    n1 = ~m1
    for r in range(n):
        pos = _popcount(W0[r] & m0) + _popcount(W2[r] & m0) + _popcount(W4[r] & m0)
        pos += _popcount(W1[r] & m1) + _popcount(W3[r] & m1) + _popcount(W5[r] & m1)
        neg = _popcount(W0[r] & n0) + _popcount(W2[r] & n0) + _popcount(W4[r] & n0)
        neg += _popcount(W1[r] & n1) + _popcount(W3[r] & n1) + _popcount(W5[r] & n1)
        out[r] = pos - neg
    return out
