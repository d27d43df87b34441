"""Exact grouping of telfhashes: connected components of "TLSH distance <= T".

Two samples belong to one group when a chain of samples links them, each step within the
threshold (A~B and B~C put A, B and C together).  That is what the reference tool's
documentation promises; its implementation can return overlapping groups instead, and its cost
grows faster than n³.  Here identical digests collapse first, every pair of distinct digests
whose length codes allow a distance <= T is compared exactly (:mod:`telfhash_core.similarity.tlshdist`),
and the components come from a union-find: 10⁵ digests take seconds.

    >>> from telfhash_core.similarity.cluster import cluster, group, components
    >>> components(["t1…", "T1…", "tnull"], threshold=50)     # labels; -1 for a non-digest
    >>> clusters, ungroupable = cluster(results)              # Results, dicts or digest strings
    >>> group(results)                                        # the reference's return shape

``telfhash -g`` prints these groups in the reference's layout and ``telfhash cluster`` groups
results computed earlier (JSON / JSONL / text).  See ``docs/clustering.md``.
"""

from __future__ import annotations

import html
import math
import os
import sys
from array import array
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence, TextIO

from ..digest import DEFAULT_THRESHOLD, spell, tagged_body
from ..progress import plural
from ..readers import read_items
from ..result import Result

# Statistics (representative, largest internal distance) need every pair inside a cluster.
# Above this many distinct digests in one cluster they are computed for a sample of candidate
# representatives only (each still against the whole cluster); the cluster says so.
EXACT_STATS_LIMIT = 50_000
STATS_SAMPLE = 2_000

__all__ = ["Cluster", "components", "cluster", "group", "print_groups", "read_items", "EXACT_STATS_LIMIT"]


# ----------------------------------------------------------------------------- items


@dataclass
class Item:
    """One input to grouping: a name, its digest (70 hex, upper case) or None, and its CPU."""

    name: str
    digest: str | None
    arch: str | None = None
    version: str | None = None  # a companion value's rule set ("tx1", "tx2"); never compared across


def _version_part(value: Any) -> str | None:
    """The rule-set tag of a companion value (``tx2:strings:t1…`` -> ``tx2``), else None."""
    if isinstance(value, str) and ":" in value:
        return value.strip().split(":", 1)[0]
    return None


_digest_part = tagged_body  # the 70 hex of a digest in any spelling, also ``tag:t1…``


def _field(obj: Any, key: str) -> Any:
    if isinstance(obj, Result):
        if key == "telfhash":
            return obj.telfhash
        if key in obj.extra:
            return obj.extra[key]
        return getattr(obj, key, None) if key in Result.__dataclass_fields__ else None
    if isinstance(obj, dict):
        value = obj.get(key)
        if value is None and isinstance(obj.get("extra"), dict):
            value = obj["extra"].get(key)
        return value
    return None


def to_items(items: Iterable[Any], key: str = "telfhash") -> list[Item]:
    """Normalise Results, result dicts (``telfhash -f json/jsonl``, the reference's 3-key dicts)
    or plain digest strings into :class:`Item` s.  Names: ``file`` (else ``sha256``, else
    ``#N``) for results, the string itself for plain digests."""
    out: list[Item] = []
    for k, obj in enumerate(items):
        if isinstance(obj, Item):
            out.append(obj)
        elif isinstance(obj, str):
            out.append(Item(obj.strip(), _digest_part(obj), None, _version_part(obj)))
        elif isinstance(obj, (Result, dict)):
            if isinstance(obj, Result):
                name, arch = obj.file, obj.arch
            else:
                name = obj.get("file") or obj.get("path") or obj.get("sha256") or f"#{k}"
                arch = obj.get("arch")
            value = _field(obj, key)
            out.append(
                Item(str(name), _digest_part(value), arch if isinstance(arch, str) else None, _version_part(value))
            )
        else:
            out.append(Item(f"#{k}", None))
    return out


# ----------------------------------------------------------------------------- components


def _unique(bodies: Sequence[str | None]) -> tuple[list[str], list[int]]:
    """Distinct digests (first-seen order) and, per input, its index among them (-1: none)."""
    index: dict[str, int] = {}
    inverse = []
    for b in bodies:
        if b is None:
            inverse.append(-1)
        else:
            inverse.append(index.setdefault(b, len(index)))
    return list(index), inverse


def components(digests: Iterable[Any], threshold: int = DEFAULT_THRESHOLD, *, threads: int | None = None):
    """Connected components of "distance <= threshold" (py-tlsh ``diff``, length term included).

    ``digests``: strings in any spelling (``t1…``, ``T1…``, 70 hex, or ``tag:t1…``).  Returns a
    NumPy int64 array with one label per input, numbered 0, 1, ... in order of first appearance;
    values that are not digests (``None``, ``-``, ``tnull``, ...) get -1.  Identical digests
    collapse before any distance is computed.
    """
    import numpy as np

    from .tlshdist import components_within, encode

    bodies = [_digest_part(d) for d in digests]
    uniq, inverse = _unique(bodies)
    inv = np.asarray(inverse, dtype=np.int64)
    if not uniq:
        return np.full(len(bodies), -1, dtype=np.int64)
    labels_u = components_within(encode(uniq), threshold, threads=threads)
    labels = np.where(inv >= 0, labels_u[np.maximum(inv, 0)], -1)
    # renumber in order of first appearance in the input (not of the distinct digests)
    seen: dict[int, int] = {}
    out = np.array([-1 if x < 0 else seen.setdefault(x, len(seen)) for x in labels.tolist()], dtype=np.int64)
    return out


# ----------------------------------------------------------------------------- clusters


@dataclass
class Cluster:
    """One group: its members (input order), their digests (``t1…``), the representative (the
    member whose largest distance to the others is smallest; ties: smallest total distance to
    the others, then the earliest member), and the largest distance between two members.

    ``exact`` is False only for clusters of more than ``EXACT_STATS_LIMIT`` distinct digests,
    where the representative is the best of a sample and ``max_distance`` a lower bound.
    """

    members: list[str]
    digests: list[str]
    representative: str
    max_distance: int
    arches: list[str | None] = field(default_factory=list)
    exact: bool = True

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def representative_digest(self) -> str:
        return self.digests[self.members.index(self.representative)]

    def to_dict(self) -> dict[str, Any]:
        d = {
            "size": self.size,
            "representative": self.representative,
            "representative_telfhash": self.representative_digest,
            "max_distance": self.max_distance,
            "members": list(self.members),
            "telfhashes": list(self.digests),
        }
        if any(a is not None for a in self.arches):
            d["arches"] = list(self.arches)
        if not self.exact:
            d["exact"] = False
        return d


def cluster(
    items: Iterable[Any], threshold: int = DEFAULT_THRESHOLD, key: str = "telfhash", *, threads: int | None = None
) -> tuple[list[Cluster], list[str]]:
    """Group ``items`` (Results, result dicts, or digest strings) into clusters.

    ``key`` picks the field holding the digest (e.g. ``"telfhash_x"``; a value such as
    ``"tx1:t1…"`` is read after its last ``:``).  Returns ``(clusters, ungroupable)``:

    * ``clusters`` -- every connected component, singletons included (size 1, distance 0),
      largest first, then by first appearance; every usable item is in exactly one cluster;
    * ``ungroupable`` -- names of the items without a usable digest (``-``, ``tnull``, missing).
    """
    its = to_items(items, key)
    versions = {it.version for it in its if it.digest is not None}
    if len(versions) > 1:  # companion values of different rule sets (tx1, tx2): each grouped on its own
        first: dict[str, int] = {}
        for k, it in enumerate(its):
            first.setdefault(it.name, k)
        out: list[Cluster] = []
        for v in sorted(versions, key=lambda x: (x is None, x or "")):
            out += cluster(
                [it for it in its if it.digest is not None and it.version == v], threshold, key, threads=threads
            )[0]
        out.sort(key=lambda c: (-c.size, first.get(c.members[0], 0)))
        return out, [it.name for it in its if it.digest is None]
    cols = Columns()
    for it in its:
        cols.add(it.name, it.digest, it.arch)
    grouping = group_columns(cols, threshold, threads=threads)
    return list(grouping.clusters()), grouping.ungroupable


class Columns:
    """Inputs to grouping held compactly: names, each distinct digest once, CPU names shared.

    Filled one item at a time (``add``), so that a million results never exist as objects; the
    per-item numbers are machine integers (``array``), not Python objects.
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self.digest_of = array("q")  # per item: index into ``digests``, -1 for none
        self.digests: list[str] = []  # distinct 70-hex digests, first-seen order
        self._index: dict[str, int] = {}
        self.arch_of = array("q")  # per item: index into ``arches``
        self.arches: list[str | None] = [None]
        self._arch_index: dict[str | None, int] = {None: 0}
        self._add = self._bound_add()

    def __len__(self) -> int:
        return len(self.names)

    def add(self, name: str, digest: str | None, arch: str | None = None) -> None:
        """One item; ``digest``: its 70 hex characters, upper case, or None."""
        self._add(name, digest, arch)

    def adder(self) -> Callable[[str, str | None, str | None], None]:
        """:meth:`add` as a plain function, for a loop that adds a million items."""
        return self._add

    def _bound_add(self) -> Callable[[str, str | None, str | None], None]:
        names_append, digest_of_append, arch_of_append = self.names.append, self.digest_of.append, self.arch_of.append
        index, index_get, digests = self._index, self._index.get, self.digests
        arch_index, arches = self._arch_index, self.arches

        def add(name: str, digest: str | None, arch: str | None = None) -> None:
            names_append(name)
            if digest is None:
                digest_of_append(-1)
            else:
                k = index_get(digest)
                if k is None:
                    k = index[digest] = len(digests)
                    digests.append(digest)
                digest_of_append(k)
            a = arch_index.get(arch)
            if a is None:
                a = arch_index[arch] = len(arches)
                arches.append(arch)
            arch_of_append(a)

        return add


@dataclass
class Grouping:
    """The components of :class:`Columns`, turned into :class:`Cluster` objects on demand."""

    cols: Columns
    order: Any  # item positions (usable items only), cluster after cluster, in output order
    bounds: Any  # cluster k is order[bounds[k]:bounds[k + 1]]
    best: Any  # per cluster: the position of its representative
    maxdist: Any  # per cluster: its largest internal distance
    inexact: Any  # per cluster: True where the statistics come from a sample
    ungroupable: list[str]
    hex: Any = None  # per distinct digest: its 70 hex characters, upper case (NumPy S70)

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def sizes(self):
        import numpy as np

        return np.diff(self.bounds)

    def clusters(self) -> Iterator[Cluster]:
        """Every cluster, largest first (then by first appearance), built one at a time."""
        for k in range(len(self)):
            yield self.cluster(k)

    def cluster(self, k: int) -> Cluster:
        """Cluster ``k`` (0: the largest) as a :class:`Cluster`."""
        c = self.cols
        positions = self.order[self.bounds[k] : self.bounds[k + 1]].tolist()
        return Cluster(
            members=[c.names[p] for p in positions],
            digests=[spell(c.digests[c.digest_of[p]]) for p in positions],
            representative=c.names[int(self.best[k])],
            max_distance=int(self.maxdist[k]),
            arches=[c.arches[c.arch_of[p]] for p in positions],
            exact=not bool(self.inexact[k]),
        )


def group_columns(cols: Columns, threshold: int = DEFAULT_THRESHOLD, *, threads: int | None = None) -> Grouping:
    """Connected components of the digests in ``cols`` with each one's representative and
    largest internal distance (see :func:`cluster`), all as arrays."""
    import numpy as np

    from .tlshdist import components_within, encode_bodies, group_stats

    inv_all = np.frombuffer(cols.digest_of, dtype=np.int64) if len(cols) else np.zeros(0, dtype=np.int64)
    ungroupable = [cols.names[p] for p in np.flatnonzero(inv_all < 0).tolist()]
    usable = np.flatnonzero(inv_all >= 0)
    if not usable.size:
        e = np.zeros(0, dtype=np.int64)
        return Grouping(cols, e, np.zeros(1, dtype=np.int64), e, e, np.zeros(0, dtype=bool), ungroupable)
    inv = inv_all[usable]
    nuniq = len(cols.digests)
    enc = encode_bodies(cols.digests)
    labels_u = components_within(enc, threshold, threads=threads)
    counts = np.bincount(inv, minlength=nuniq).astype(np.int64)

    # every pair inside each component once; oversized components: sampled candidates only
    nlab = int(labels_u.max()) + 1
    sizes_u = np.bincount(labels_u, minlength=nlab)
    inexact_lab = sizes_u > EXACT_STATS_LIMIT
    if not inexact_lab.any():
        maxd, sumd = group_stats(enc, labels_u, counts, threads=threads)
    else:
        big = inexact_lab[labels_u]
        alone = np.where(big, nlab + np.arange(nuniq), labels_u)  # rows of big components: no work here
        maxd, sumd = group_stats(enc, alone, counts, threads=threads)
        sampled = []
        for lab in np.flatnonzero(inexact_lab).tolist():
            members = np.flatnonzero(labels_u == lab)
            step = max(1, members.size // STATS_SAMPLE)
            sampled.append(members[::step][:STATS_SAMPLE])
        mb, sb = group_stats(enc, labels_u, counts, rows=np.concatenate(sampled), threads=threads)
        maxd[big], sumd[big] = mb[big], sb[big]  # -1 where not sampled

    # Labels are numbered in order of first appearance (distinct digests are in first-seen
    # order), so sorting positions by label keeps each cluster's members in input order.
    lab_pos = labels_u[inv]
    size_lab = np.bincount(lab_pos, minlength=nlab)
    out_labels = np.lexsort((np.arange(nlab), -size_lab))  # largest first, then first appearance
    rank_of = np.empty(nlab, dtype=np.int64)
    rank_of[out_labels] = np.arange(nlab)
    cl = rank_of[lab_pos]  # output cluster number per usable position
    m, sm = maxd[inv], sumd[inv]
    valid = m >= 0
    # representative: smallest (largest distance, total distance, position) among candidates
    key = np.lexsort((usable, sm, m, ~valid, cl))
    sorted_cl = cl[key]
    first = np.flatnonzero(np.r_[True, sorted_cl[1:] != sorted_cl[:-1]])
    best = usable[key[first]]
    # members in input order
    order = usable[np.argsort(cl, kind="stable")]
    bounds = np.r_[0, np.cumsum(size_lab[out_labels])].astype(np.int64)
    # largest internal distance: over the component's distinct digests (0 for a single one)
    mx_lab = np.full(nlab, -1, dtype=np.int64)
    np.maximum.at(mx_lab, labels_u, np.where(maxd >= 0, maxd, -1))
    mx_lab = np.where(sizes_u > 1, np.maximum(mx_lab, 0), 0)
    return Grouping(cols, order, bounds, best, mx_lab[out_labels], inexact_lab[out_labels], ungroupable, enc.hex)


# ----------------------------------------------------------------------------- reference shape


def _reference_items(results: Iterable[Any]) -> list[Item]:
    """Like the reference: keyed by file name (a later duplicate name wins), digests only."""
    by_name: dict[str, Item] = {}
    for it in to_items(results):
        by_name[it.name] = it
    return [it for it in by_name.values() if it.digest is not None]


def group(results: Iterable[Any], threshold: int = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """The reference's ``group()`` return shape: ``{"grouped": tuple of sorted tuples of file
    names, "nogroup": [file names]}``.

    Groups are transitive components (never overlapping); they are listed smallest first, as
    the reference does (ties by their sorted names).  ``nogroup`` holds, in input order, the
    files that have a digest and no partner; files without a digest are in neither list, as in
    the reference.  Fewer than two digests give no group (the reference raises IndexError).
    """
    its = _reference_items(results)
    if not its:
        return {"grouped": (), "nogroup": []}
    labels = components([it.digest for it in its], threshold).tolist()
    members: dict[int, list[str]] = {}
    for it, lab in zip(its, labels):
        members.setdefault(lab, []).append(it.name)
    grouped = sorted((tuple(sorted(m)) for m in members.values() if len(m) > 1), key=lambda g: (len(g), g))
    nogroup = [m[0] for m in members.values() if len(m) == 1]
    return {"grouped": tuple(grouped), "nogroup": nogroup}


def print_groups(results: Iterable[Any], threshold: int = DEFAULT_THRESHOLD, out: TextIO | None = None) -> None:
    """What ``telfhash -g`` prints after the hashes, in the reference's layout: an empty line,
    ``Group N:`` headers with members indented by four spaces, then ``Ungrouped:``."""
    out = sys.stdout if out is None else out
    groups = group(results, threshold)
    out.write("\n")
    for i, members in enumerate(groups["grouped"]):
        out.write(f"Group {i + 1}:\n")
        for m in members:
            out.write(f"    {m}\n")
    if groups["nogroup"]:
        out.write("Ungrouped:\n")
        for m in groups["nogroup"]:
            out.write(f"    {m}\n")


# ----------------------------------------------------------------------------- pictures

_PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#393b79",
    "#ad494a",
    "#637939",
    "#8c6d31",
    "#7b4173",
    "#3182bd",
]


def _layout(clusters: list[Cluster], edges_by_cluster: list[list[tuple[int, int, int]]]):
    """Positions: each cluster laid out on its own (a short force-directed run from a
    sunflower start), clusters packed in rows, largest first."""
    import numpy as np

    placed = []
    golden = math.pi * (3 - math.sqrt(5))
    for c, edges in zip(clusters, edges_by_cluster):
        k = c.size
        idx = np.arange(k)
        r = np.sqrt((idx + 0.5) / k)
        pos = np.c_[r * np.cos(idx * golden), r * np.sin(idx * golden)]
        if 2 < k <= 300 and edges:
            e = np.array([(a, b) for a, b, _ in edges], dtype=np.int64)
            opt = 1.0 / math.sqrt(k)
            temp = 0.1
            for _ in range(60):
                delta = pos[:, None, :] - pos[None, :, :]
                dist = np.sqrt((delta**2).sum(-1)) + 1e-9
                disp = (delta / dist[..., None] * (opt**2 / dist)[..., None]).sum(1)
                dv = pos[e[:, 0]] - pos[e[:, 1]]
                dl = np.sqrt((dv**2).sum(-1)) + 1e-9
                f = dv / dl[:, None] * (dl**2 / opt)[:, None]
                np.add.at(disp, e[:, 0], -f)
                np.add.at(disp, e[:, 1], f)
                ln = np.sqrt((disp**2).sum(-1)) + 1e-9
                pos += disp / ln[:, None] * np.minimum(ln, temp)[:, None]
                temp *= 0.95
            pos -= pos.mean(0)
            pos /= max(np.abs(pos).max(), 1e-9)
        radius = math.sqrt(k) * 0.6 + 0.4
        placed.append(pos * radius)
    # shelf packing
    total = sum((2 * (math.sqrt(c.size) * 0.6 + 0.4) + 1) ** 2 for c in clusters)
    width = max(math.sqrt(total) * 1.3, 4.0)
    x = y = row_h = 0.0
    out = []
    for pos, c in zip(placed, clusters):
        d = 2 * (math.sqrt(c.size) * 0.6 + 0.4) + 1
        if x + d > width and x > 0:
            x, y, row_h = 0.0, y + row_h, 0.0
        out.append(pos + np.array([x + d / 2, -(y + d / 2)]))
        x += d
        row_h = max(row_h, d)
    return out


def _plot_edges(clusters: list[Cluster], threshold: int, max_edges: int):
    """Edges (member a, member b, distance <= T) inside each cluster, shortest kept first."""
    from .tlshdist import encode, pairs_within

    result: list[list[tuple[int, int, int]]] = []
    budget = max_edges
    for c in clusters:
        if c.size < 2:
            result.append([])
            continue
        i, j, d = pairs_within(encode(c.digests), threshold)
        order = d.argsort(kind="stable")[: max(budget, c.size - 1)]
        edges = [(int(i[k]), int(j[k]), int(d[k])) for k in order]
        budget -= len(edges)
        result.append(edges)
    return result


def plot(
    clusters: list[Cluster],
    path: str,
    threshold: int = DEFAULT_THRESHOLD,
    *,
    max_nodes: int = 3000,
    max_edges: int = 30000,
    total: int | None = None,
) -> str:
    """Draw clusters to ``path``: ``.png`` (matplotlib) or ``.html`` (self-contained SVG).

    Nodes are samples coloured by architecture, edges join members within the threshold.
    Clusters are drawn largest first until ``max_nodes``; returns a one-line summary.
    ``total``: how many groups there are, when ``clusters`` holds only the first of them."""
    shown: list[Cluster] = []
    nodes = 0
    for c in clusters:
        if nodes + c.size > max_nodes and shown:
            break
        shown.append(c)
        nodes += c.size
    edges = _plot_edges(shown, threshold, max_edges)
    positions = _layout(shown, edges)
    arches = sorted({a or "unknown" for c in shown for a in (c.arches or [None] * c.size)})
    colour = {a: _PALETTE[k % len(_PALETTE)] for k, a in enumerate(arches)}
    nedges = sum(len(e) for e in edges)
    summary = (
        f"{plural(nodes, 'sample')} in {len(shown):,} of {plural(total or len(clusters), 'group')} drawn, "
        f"{plural(nedges, 'edge')} (distance <= {threshold})"
    )
    if path.lower().endswith((".html", ".htm")):
        _plot_html(shown, edges, positions, colour, path, threshold, summary)
    elif path.lower().endswith(".png"):
        _plot_png(shown, edges, positions, colour, path, threshold, summary)
    else:
        raise ValueError(f"--plot: use a .png or .html file name, not {path!r}")
    return summary


def _arch_of(c: Cluster, k: int) -> str:
    return (c.arches[k] if c.arches and k < len(c.arches) else None) or "unknown"


# Groups labelled in the PNG (the largest first; the rest stay unlabelled to keep the picture readable).
MAX_GROUP_LABELS = 60


def group_labels(shown: list[Cluster], positions) -> list[tuple[str, tuple[float, float]]]:
    """``("group N: REPRESENTATIVE (SIZE)", (x, y))`` above each drawn group of two or more."""
    out: list[tuple[str, tuple[float, float]]] = []
    for k, (c, pos) in enumerate(zip(shown, positions), 1):
        if c.size < 2 or len(out) >= MAX_GROUP_LABELS:
            continue
        name = os.path.basename(c.representative) or c.representative
        if len(name) > 40:
            name = name[:37] + "..."
        x = float(sum(p[0] for p in pos) / len(pos))
        y = float(max(p[1] for p in pos)) + 0.35
        out.append((f"group {k}: {name} ({c.size})", (x, y)))
    return out


def _plot_png(shown, edges, positions, colour, path, threshold, summary) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    nodes = sum(c.size for c in shown)
    side = min(30.0, max(6.0, math.sqrt(nodes) * 0.9))
    fig, ax = plt.subplots(figsize=(side, side * 0.8), dpi=100)
    segs = [(pos[a], pos[b]) for pos, es in zip(positions, edges) for a, b, _ in es]
    if segs:
        ax.add_collection(LineCollection(segs, colors="#999999", linewidths=0.5, alpha=0.6, zorder=1))
    size = 40 if nodes < 500 else 12
    for arch, col in colour.items():
        xs, ys = [], []
        for c, pos in zip(shown, positions):
            for k in range(c.size):
                if _arch_of(c, k) == arch:
                    xs.append(pos[k][0])
                    ys.append(pos[k][1])
        ax.scatter(xs, ys, s=size, c=col, label=f"{arch} ({len(xs)})", zorder=2, edgecolors="white", linewidths=0.3)
    reps = [pos[c.members.index(c.representative)] for c, pos in zip(shown, positions) if c.size > 1]
    if reps:
        ax.scatter(
            [p[0] for p in reps],
            [p[1] for p in reps],
            s=size * 2.2,
            facecolors="none",
            edgecolors="black",
            linewidths=0.8,
            zorder=3,
            label="representative",
        )
    if nodes <= 80:
        for c, pos in zip(shown, positions):
            for k, m in enumerate(c.members):
                ax.annotate(os.path.basename(m) or m, pos[k], fontsize=6, xytext=(3, 3), textcoords="offset points")
    for text, (x, y) in group_labels(shown, positions):
        ax.text(
            x,
            y,
            text,
            fontsize=7,
            ha="center",
            va="bottom",
            zorder=4,
            bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "#bbbbbb", "alpha": 0.85},
        )
    ax.set_title(f"telfhash groups, TLSH distance <= {threshold}: {summary}", fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, title="architecture")
    ax.set_aspect("equal")
    ax.autoscale()
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>telfhash groups</title>
<style>
body{{font-family:sans-serif;margin:1em}} svg{{border:1px solid #ddd;max-width:100%;height:auto}}
line{{stroke:#999;stroke-opacity:.6}} circle{{stroke:#fff;stroke-width:.04}} circle.rep{{stroke:#000;stroke-width:.07}}
.dim{{opacity:.12}} #info{{font-family:monospace;white-space:pre;min-height:3em}}
.legend span{{display:inline-block;width:.9em;height:.9em;margin:0 .3em 0 1em;vertical-align:middle}}
</style></head><body>
<h1>telfhash groups</h1>
<p>TLSH distance &le; {threshold}. {summary}. Hover a sample for details; click it to highlight its group (click the background to reset). Outlined in black: each group's representative.</p>
<p class="legend">{legend}</p>
<div id="info"></div>
<svg xmlns="http://www.w3.org/2000/svg" viewBox="{vb}" width="{w}" height="{h}" id="plot">
<rect x="{x0}" y="{y0}" width="{vw}" height="{vh}" fill="white" id="bg"/>
{body}
</svg>
<script>
(function(){{
var svg=document.getElementById('plot'),info=document.getElementById('info');
function show(e){{var t=e.target;if(t.tagName!=='circle')return;
info.textContent=t.dataset.name+'\\n'+t.dataset.arch+'  group '+t.dataset.g+'\\n'+t.dataset.d;}}
svg.addEventListener('mouseover',show);
svg.addEventListener('click',function(e){{var g=e.target.dataset?e.target.dataset.g:null;
svg.querySelectorAll('[data-g]').forEach(function(n){{n.classList.toggle('dim',g!=null&&n.dataset.g!==g);}});}});
}})();
</script></body></html>
"""


def _plot_html(shown, edges, positions, colour, path, threshold, summary) -> None:
    import numpy as np

    allpos = np.vstack(positions) if positions else np.zeros((1, 2))
    (x0, y0), (x1, y1) = allpos.min(0) - 1, allpos.max(0) + 1
    scale = 1.0  # SVG user units = layout units; y is flipped
    parts = []
    for g, (c, pos, es) in enumerate(zip(shown, positions, edges), 1):
        for a, b, d in es:
            parts.append(
                f'<line data-g="{g}" x1="{pos[a][0]:.3f}" y1="{-pos[a][1]:.3f}" x2="{pos[b][0]:.3f}" '
                f'y2="{-pos[b][1]:.3f}" stroke-width="0.03"><title>{d}</title></line>'
            )
        for k, m in enumerate(c.members):
            arch = _arch_of(c, k)
            rep = " (representative)" if m == c.representative else ""
            rep_class = ' class="rep"' if rep else ""
            parts.append(
                f'<circle data-g="{g}" data-name="{html.escape(m + rep)}" data-arch="{html.escape(arch)}" '
                f'data-d="{html.escape(c.digests[k])}" cx="{pos[k][0]:.3f}" cy="{-pos[k][1]:.3f}" r="0.18" '
                f'fill="{colour[arch]}"{rep_class}><title>{html.escape(m)}</title></circle>'
            )
    legend = "".join(f'<span style="background:{col}"></span>{html.escape(arch)}' for arch, col in colour.items())
    vw, vh = (x1 - x0) * scale, (y1 - y0) * scale
    px = 1000
    doc = _HTML.format(
        threshold=threshold,
        summary=html.escape(summary),
        legend=legend,
        vb=f"{x0:.3f} {-y1:.3f} {vw:.3f} {vh:.3f}",
        x0=f"{x0:.3f}",
        y0=f"{-y1:.3f}",
        vw=f"{vw:.3f}",
        vh=f"{vh:.3f}",
        w=px,
        h=int(px * vh / max(vw, 1e-9)),
        body="\n".join(parts),
    )
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(doc)
