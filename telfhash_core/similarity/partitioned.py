"""Partitioned, exact grouping of many telfhashes, locally (threads) or on a Dask cluster.

Two files are in one group when a chain of digests links them, each step at TLSH distance
(py-tlsh ``diff``, length term included) <= T: the connected components of the graph
"distance <= T", the same grouping as :func:`telfhash_core.tlshdist.components_within`.

Why only some pairs need comparing: the distance is a sum of non-negative terms, one of which
is the length term ``lterm(d)`` of the circular difference ``d`` of the two length codes
(``d`` if ``d <= 1``, else ``12 d``).  So ``distance <= T`` implies ``lterm(d) <= T``, i.e.
``d <= D(T) = max {d : lterm(d) <= T}`` (``D(50) = 4``).  Pairs farther apart in length code
are never within T and are never looked at.  See ``docs/batch.md`` for the full argument.

The plan: identical digests are merged first (distance 0); the distinct digests are sorted by
length code L and cut into blocks of consecutive rows.  The task of block ``[lo, hi)`` compares
each of its rows ``a`` with every later row ``b`` whose code is at most ``L(a) + D`` and, across
the 255 -> 0 wrap, with the first rows whose code is at most ``L(a) + D - 256``.  Each pair whose
codes are within D circularly is thereby compared in the task holding the pair's "lower" row.
A task unions its edges into a local forest and returns it as (row, root) pairs; the client
joins the forests with a union-find.  Only edges that exist are ever unioned and every possible
edge is examined, so the components are exactly those of the full graph.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

import numpy as np

from ..digest import DEFAULT_THRESHOLD
from .tlshdist import (
    HAVE_NUMBA,
    Encoded,
    _lterm,
    _qterm,
    components_within,
    encode,
    max_length_code_diff,
    one_to_many,
    py_find,
    py_union,
    relabel,
)

if HAVE_NUMBA:
    import numba

    # the distance terms and the union-find are tlshdist's own compiled functions
    from .tlshdist import _body as _body_pair
    from .tlshdist import _find as _root
    from .tlshdist import _header
    from .tlshdist import _union as _join

__all__ = ["plan", "cluster_task", "cluster_digests", "relabel", "cell_offsets", "HAVE_NUMBA"]

_EMPTY = np.zeros(0, dtype=np.int64)


# ----------------------------------------------------------------------------- kernels

if HAVE_NUMBA:

    @numba.njit(nogil=True, cache=True, inline="always")
    def _head(L, Q1, Q2, C, a, b):
        return _header(
            np.int64(L[a]),
            np.int64(L[b]),
            np.int64(Q1[a]),
            np.int64(Q1[b]),
            np.int64(Q2[a]),
            np.int64(Q2[b]),
            np.int64(C[a]),
            np.int64(C[b]),
        )

    @numba.njit(nogil=True, cache=True, inline="always")
    def _body(P, a, b):
        return _body_pair(P, a, P, b)

    @numba.njit(nogil=True, cache=True, inline="always")
    def _dist(L, Q1, Q2, C, P, a, b):
        return _head(L, Q1, Q2, C, a, b) + _body(P, a, b)

    @numba.njit(nogil=True, cache=True, inline="always")
    def _link_within(L, Q1, Q2, C, P, a, b, threshold, parent):
        """Union a and b when within threshold: header first, the body only when the header fits."""
        h = _head(L, Q1, Q2, C, a, b)
        if h <= threshold and h + _body(P, a, b) <= threshold:
            _join(parent, a, b)

    @numba.njit(nogil=True, cache=True)
    def _scan_block(L, Q1, Q2, C, P, nhome, nfwd, lmax, threshold, parent):
        """Rows [0, nhome) against the later rows [.., nfwd) whose code is at most L + lmax and the
        wrap rows [nfwd, n) whose code + 256 is at most L + lmax."""
        n = L.shape[0]
        for a in range(nhome):
            top = np.int64(L[a]) + lmax
            for b in range(a + 1, nfwd):
                if np.int64(L[b]) > top:
                    break
                _link_within(L, Q1, Q2, C, P, a, b, threshold, parent)
            for b in range(nfwd, n):  # rows across the 255 -> 0 wrap
                if np.int64(L[b]) + 256 > top:
                    break
                _link_within(L, Q1, Q2, C, P, a, b, threshold, parent)

    @numba.njit(nogil=True, cache=True)
    def _scan_cells(L, Q1, Q2, C, P, nhome, fstarts, nfwd, wstarts, offsets, threshold, parent):
        """Like _scan_block, visiting only the (L, q1, q2) cells whose header terms fit in T.

        Rows are sorted by cell key L*256 + q1*16 + q2; ``fstarts``/``wstarts`` index the cells
        of the forward rows [0, nfwd) and of the wrap rows [nfwd, n); ``offsets`` rows are
        (dl, dq1, r): every dq2 with circular |dq2| <= r fits, with dl >= 0.
        """
        for a in range(nhome):
            la = np.int64(L[a])
            q1a = np.int64(Q1[a])
            q2a = np.int64(Q2[a])
            for k in range(offsets.shape[0]):
                dl = offsets[k, 0]
                r = offsets[k, 2]
                lt = la + dl
                base = (lt % 256) * 256 + ((q1a + offsets[k, 1]) % 16) * 16
                # the q2 values q2a - r .. q2a + r (mod 16), as one or two runs of cell keys
                if r >= 8:
                    r1lo, r1hi, r2lo, r2hi = 0, 15, 1, 0
                else:
                    qlo = q2a - r
                    qhi = q2a + r
                    if qlo < 0:
                        r1lo, r1hi, r2lo, r2hi = 0, qhi, qlo + 16, 15
                    elif qhi > 15:
                        r1lo, r1hi, r2lo, r2hi = qlo, 15, 0, qhi - 16
                    else:
                        r1lo, r1hi, r2lo, r2hi = qlo, qhi, 1, 0
                for run in range(2):
                    if run == 0:
                        klo = base + r1lo
                        khi = base + r1hi
                    else:
                        if r2lo > r2hi:
                            break
                        klo = base + r2lo
                        khi = base + r2hi
                    if lt < 256:
                        lo = fstarts[klo]
                        hi = fstarts[khi + 1]
                        if dl == 0 and lo <= a:
                            lo = a + 1
                    else:
                        lo = nfwd + wstarts[klo]
                        hi = nfwd + wstarts[khi + 1]
                    for b in range(lo, hi):
                        if _dist(L, Q1, Q2, C, P, a, b) <= threshold:
                            _join(parent, a, b)

    @numba.njit(nogil=True, cache=True)
    def _merge(parent, a, b):
        for k in range(a.shape[0]):
            _join(parent, a[k], b[k])
        for x in range(parent.shape[0]):
            parent[x] = _root(parent, x)


def _scan_block_numpy(enc: Encoded, nhome: int, nfwd: int, lmax: int, threshold: int, parent: np.ndarray) -> None:
    L = enc.lvalue.astype(np.int64)
    n = len(enc)
    for a in range(nhome):
        top = L[a] + lmax
        hi = a + 1 + int(np.searchsorted(L[a + 1 : nfwd], top, side="right"))
        whi = nfwd + int(np.searchsorted(L[nfwd:n] + 256, top, side="right"))
        rows = np.concatenate([np.arange(a + 1, hi), np.arange(nfwd, whi)]).astype(np.int64)
        if not rows.size:
            continue
        d = one_to_many(enc, a, idx=rows)
        for b in rows[d <= threshold].tolist():
            py_union(parent, a, b)


# ----------------------------------------------------------------------------- plan and tasks


def plan(lsorted: np.ndarray, threshold: int, ntasks: int) -> list[tuple[int, int, int, int]]:
    """Tasks ``(lo, hi, fwd_end, wrap_end)`` over digests sorted by length code ``lsorted``.

    Task rows ``[lo, hi)`` are compared with the later rows up to ``fwd_end`` and with rows
    ``[0, wrap_end)`` (codes reached across the 255 -> 0 wrap).
    """
    m = int(lsorted.shape[0])
    if m < 2 or threshold < 0:
        return []
    lmax = max_length_code_diff(threshold)
    if lmax >= 128:  # every pair can be within T: one all-pairs task
        return [(0, m, m, 0)]
    ntasks = max(1, min(int(ntasks), m))
    bounds = np.linspace(0, m, ntasks + 1).astype(np.int64)
    L = lsorted.astype(np.int64)
    out = []
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        if hi <= lo:
            continue
        top = int(L[hi - 1]) + lmax
        fwd_end = int(np.searchsorted(L, top, side="right"))
        wrap_end = int(np.searchsorted(L, top - 256, side="right")) if top >= 256 else 0
        out.append((lo, hi, fwd_end, wrap_end))
    return out


def cell_offsets(threshold: int) -> np.ndarray:
    """``(dl, dq1, r)`` rows: from a row in cell (L, q1, q2), its partners within ``threshold`` can
    only be in cells (L + dl, q1 + dq1, q2 + dq2) (mod 256, 16, 16) with circular ``|dq2| <= r``,
    because the header terms alone, ``lterm(dl) + qterm(dq1) + qterm(dq2)``, must fit in it."""
    lmax = max_length_code_diff(threshold)
    rows = []
    for dl in range(max(lmax, -1) + 1):
        for dq1 in range(16):
            left = threshold - _lterm(dl) - _qterm(min(dq1, 16 - dq1))  # circular difference of q1
            if left < 0:
                continue
            r = max(d for d in range(9) if _qterm(d) <= left)  # qterm grows with |dq2|
            rows.append((dl, dq1, r))
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def _cell_keys(enc: Encoded) -> np.ndarray:
    return enc.lvalue.astype(np.int64) * 256 + enc.q1.astype(np.int64) * 16 + enc.q2.astype(np.int64)


def cluster_task(
    sorted_enc: Encoded, lo: int, hi: int, fwd_end: int, wrap_end: int, threshold: int, kernel: str = "auto"
):
    """One partition: the local forest of rows ``[lo, hi)`` against their candidates.

    ``sorted_enc``: the distinct digests, encoded and sorted by (length code, q1, q2).
    Returns ``(rows, roots)``: int64 positions in ``sorted_enc``, to be unioned pairwise.
    ``kernel``: ``"auto"``; ``"cells"`` forces the block-only cell scan (tests).
    """
    lmax = max_length_code_diff(threshold)
    allpairs = lmax >= 128
    enc = Encoded.concat([sorted_enc[lo:fwd_end], sorted_enc[0:wrap_end]]) if wrap_end else sorted_enc[lo:fwd_end]
    gid = np.concatenate([np.arange(lo, fwd_end, dtype=np.int64), np.arange(0, wrap_end, dtype=np.int64)])
    n = len(enc)
    parent = np.arange(n, dtype=np.int64)
    nhome, nfwd = hi - lo, fwd_end - lo
    lm = 512 if allpairs else lmax
    if HAVE_NUMBA and not allpairs and n - nhome <= nhome and kernel == "auto":
        # few rows beyond the block: the single-machine kernel on block + window wastes little
        # (pairs among the window rows only, found again by the next block) and is the fastest
        labels = components_within(enc, threshold, threads=1)
        first = np.full(int(labels.max()) + 1, -1, dtype=np.int64)
        first[labels[::-1]] = np.arange(n - 1, -1, -1, dtype=np.int64)  # first row of each label
        roots = first[labels]
        keep = roots != np.arange(n)
        return gid[keep], gid[roots[keep]]
    if HAVE_NUMBA and not allpairs:
        keys = _cell_keys(enc)
        allk = np.arange(65537, dtype=np.int64)
        fstarts = np.searchsorted(keys[:nfwd], allk, side="left").astype(np.int64)
        wstarts = np.searchsorted(keys[nfwd:], allk, side="left").astype(np.int64)
        _scan_cells(
            enc.lvalue,
            enc.q1,
            enc.q2,
            enc.checksum,
            enc.planes,
            nhome,
            fstarts,
            nfwd,
            wstarts,
            cell_offsets(threshold),
            int(threshold),
            parent,
        )
    elif HAVE_NUMBA:
        _scan_block(enc.lvalue, enc.q1, enc.q2, enc.checksum, enc.planes, nhome, nfwd, lm, int(threshold), parent)
    else:
        _scan_block_numpy(enc, nhome, nfwd, lm, int(threshold), parent)
    roots = _roots(parent)
    keep = roots != np.arange(n)
    return gid[keep], gid[roots[keep]]


def _roots(parent: np.ndarray) -> np.ndarray:
    if HAVE_NUMBA:
        _merge(parent, _EMPTY, _EMPTY)  # compresses every path
        return parent
    return np.array([py_find(parent, x) for x in range(parent.shape[0])], dtype=np.int64)


def cluster_digests(
    digests: Sequence[str],
    threshold: int = DEFAULT_THRESHOLD,
    *,
    engine: str = "local",
    client=None,
    jobs: int = 0,
    ntasks: int | None = None,
    kernel: str = "auto",
) -> tuple[np.ndarray, dict]:
    """Group labels (0, 1, ... by first appearance) for ``digests`` (any spelling), and run facts.

    ``engine="local"`` runs the partitions on ``jobs`` threads; ``"dask"`` on ``client``'s workers
    (the sorted distinct digests are scattered to every worker once; tasks get only row ranges).
    """
    threshold = int(threshold)
    t0 = time.perf_counter()
    enc_all = encode(list(digests))  # validates every digest
    hexs = enc_all.hex
    n = hexs.shape[0]
    info = {"files": n, "distinct": 0, "tasks": 0, "engine": engine}
    if n == 0:
        info.update(clusters=0, multi=0, seconds=0.0)
        return np.zeros(0, dtype=np.int64), info
    uniq, first_idx, inverse = np.unique(hexs, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    m = uniq.shape[0]
    info["distinct"] = int(m)
    cell = _cell_keys(enc_all)[first_idx]
    order = np.argsort(cell, kind="stable")  # by length code, then q1, q2 (the kernel's cells)
    sorted_enc = enc_all[first_idx[order]]
    del enc_all
    lsorted = sorted_enc.lvalue.astype(np.int64)
    if engine == "dask":
        if client is None:
            raise ValueError("engine='dask' needs a client")
        nworkers = max(1, len(client.scheduler_info().get("workers", {})))
        tasks = plan(lsorted, threshold, ntasks or max(1, min(nworkers * 8, m // 2000 or 1)))
    else:
        nthreads = jobs or (os.cpu_count() or 1)
        tasks = plan(lsorted, threshold, ntasks or max(1, min(nthreads * 4, m // 2000 or 1)))
    info["tasks"] = len(tasks)
    parent = np.arange(m, dtype=np.int64)
    pieces: list[tuple[np.ndarray, np.ndarray]] = []
    if tasks and engine == "dask":
        from distributed import as_completed

        enc_f = client.scatter(sorted_enc, broadcast=True)
        futs = [client.submit(cluster_task, enc_f, *t, threshold, kernel, pure=False) for t in tasks]
        for fut in as_completed(futs):
            pieces.append(fut.result())
            fut.release()
        client.cancel(enc_f)
    elif tasks:
        from concurrent.futures import ThreadPoolExecutor

        nthreads = jobs or (os.cpu_count() or 1)
        if nthreads == 1 or len(tasks) == 1:
            pieces = [cluster_task(sorted_enc, lo, hi, fe, we, threshold, kernel) for lo, hi, fe, we in tasks]
        else:
            with ThreadPoolExecutor(nthreads) as ex:
                pieces = list(
                    ex.map(lambda t: cluster_task(sorted_enc, t[0], t[1], t[2], t[3], threshold, kernel), tasks)
                )
    a = np.concatenate([p[0] for p in pieces]) if pieces else _EMPTY
    b = np.concatenate([p[1] for p in pieces]) if pieces else _EMPTY
    if HAVE_NUMBA:
        _merge(parent, a, b)
    else:
        for x, y in zip(a.tolist(), b.tolist()):
            py_union(parent, x, y)
        parent = _roots(parent)
    # back to input rows: distinct row -> sorted position -> root
    pos_of_uniq = np.empty(m, dtype=np.int64)
    pos_of_uniq[order] = np.arange(m)
    roots = parent[pos_of_uniq[inverse]]
    labels = relabel(roots)
    counts = np.bincount(labels)
    info.update(clusters=int(counts.size), multi=int((counts > 1).sum()), seconds=time.perf_counter() - t0)
    return labels, info
