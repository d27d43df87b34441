"""``telfhash cluster``: group results written earlier (JSON, JSONL, TSV, default output or digests)."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING, Any, Iterator, TextIO

from ..hookspecs import hookimpl
from ..progress import plural
from ..readers import Problem, iter_items
from .args import add_threshold, non_negative_int

if TYPE_CHECKING:
    from ..similarity.cluster import Columns, Grouping

PROG = "telfhash cluster"
MAX_SHOWN_ERRORS = 20


_PLAIN_DIGEST = re.compile(r"[tT]1[0-9a-fA-F]{70}")


def _read(sources: list[str], key: str, errors: list[str]) -> Columns:
    """Every input item, line by line, into compact columns (no object kept per item)."""
    from ..similarity.cluster import Columns, tagged_body, to_items

    cols = Columns()
    add, digest_match = cols.adder(), _PLAIN_DIGEST.fullmatch
    for src in sources:
        try:
            fh = sys.stdin.buffer if src == "-" else open(src, "rb")
        except OSError as exc:
            errors.append(f"{src}: {exc.strerror or exc}")
            continue
        try:
            for item in iter_items(fh, text=True, strings=True):
                if isinstance(item, dict):  # the usual row: what to_items does, without an Item per row
                    get = item.get
                    value = get(key)
                    if value is None and isinstance(get("extra"), dict):
                        value = item["extra"].get(key)
                    if isinstance(value, str) and digest_match(value):
                        digest: str | None = value[2:].upper()
                    else:
                        digest = tagged_body(value)
                    arch = get("arch")
                    name = get("file") or get("path") or get("sha256") or f"#{len(cols)}"
                    add(str(name), digest, arch if isinstance(arch, str) else None)
                elif isinstance(item, Problem):
                    errors.append(item.at(src))
                else:
                    it = to_items([item], key)[0]
                    cols.add(it.name, it.digest, it.arch)
        except OSError as exc:  # e.g. a folder given as input
            errors.append(f"{src}: {exc.strerror or exc}")
        finally:
            if fh is not sys.stdin.buffer:
                fh.close()
    return cols


def run_cluster(args: argparse.Namespace) -> int:
    """Inputs are read line by line into compact columns and the JSON is written cluster by
    cluster: the same bytes as ``json.dumps(document, indent=1)``, without the document."""
    from ..similarity.cluster import group_columns, plot

    errors: list[str] = []
    cols = _read(args.inputs, args.key, errors)
    for e in errors[:MAX_SHOWN_ERRORS]:
        print(f"{PROG}: {e}", file=sys.stderr)
    if len(errors) > MAX_SHOWN_ERRORS:
        print(f"{PROG}: ... and {len(errors) - MAX_SHOWN_ERRORS} more problems", file=sys.stderr)
    if not len(cols):
        print(f"{PROG}: no input items", file=sys.stderr)
        return 1
    grouping = group_columns(cols, args.threshold)
    sizes = grouping.sizes()
    ngroups, members = int((sizes > 1).sum()), int(sizes[sizes > 1].sum())
    nsingles = int((sizes == 1).sum())
    drawn: list[Any] = []
    if args.plot:  # the groups drawn: largest first, up to --plot-max-nodes samples
        nodes = 0
        for k, size in enumerate(sizes.tolist()):
            if (size > 1 or not ngroups) and (not drawn or nodes + size <= args.plot_max_nodes):
                drawn.append(grouping.cluster(k))
                nodes += size
    try:
        with _open_text(args.output) as out:
            out.write(f'{{\n "threshold": {json.dumps(args.threshold)},\n "key": {json.dumps(args.key)},\n')
            out.write(f' "items": {len(cols)},\n "clusters": [')
            groups = _GroupText(grouping)
            first = True
            for k in range(ngroups):  # groups of two or more come first (largest first)
                out.write(("\n  " if first else ",\n  ") + groups.text(k))
                first = False
            out.write("],\n" if first else "\n ],\n")
            single = grouping.order[grouping.bounds[ngroups:-1]].tolist()
            _write_list(out, "singletons", [cols.names[p] for p in single], last=False)
            _write_list(out, "ungroupable", grouping.ungroupable, last=True)
    except OSError as exc:
        print(f"{PROG}: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(
        f"{PROG}: {plural(len(cols), 'item')}: {plural(ngroups, 'group')} "
        f"({plural(members, 'member')}), {plural(nsingles, 'singleton')}, "
        f"{len(grouping.ungroupable):,} without a digest",
        file=sys.stderr,
    )
    if args.plot:
        try:
            summary = plot(
                drawn, args.plot, args.threshold, max_nodes=args.plot_max_nodes, total=ngroups or len(grouping)
            )
        except ImportError as exc:
            print(
                f"{PROG}: --plot {args.plot}: {exc} (extra telfhash-core[plot]: pip install -e '.[plot]' in the telfhash-core clone)",
                file=sys.stderr,
            )
            return 1
        except (ValueError, OSError) as exc:
            print(f"{PROG}: --plot: {exc}", file=sys.stderr)
            return 1
        print(f"{PROG}: plot written to {args.plot}: {summary}", file=sys.stderr)
    return 0


_quote = encode_basestring_ascii  # a string as json.dumps writes it (ensure_ascii)
_SEP = ",\n    "  # between two list entries of a group, as json.dumps(indent=1) puts it two levels deep


class _GroupText:
    """The groups of two or more as ``json.dumps(cluster.to_dict(), indent=1)`` lays them out two
    levels deep, written from the columns: names quoted once each, the members' ``"t1…"``
    entries cut from fixed-width lines made for many members at a time (no Cluster object, no
    dict per group).  Groups are asked for in order."""

    CHUNK = 1 << 16  # members whose digest lines are made at once

    def __init__(self, grouping: Grouping) -> None:
        import numpy as np

        g, c = grouping, grouping.cols
        self.grouping = g
        count = int((g.sizes() > 1).sum())  # groups of two or more come first
        self.members = g.order[: g.bounds[count]]
        self.names = list(map(_quote, map(c.names.__getitem__, self.members.tolist())))
        self.digest_of = np.frombuffer(c.digest_of, dtype=np.int64) if len(c) else np.zeros(0, dtype=np.int64)
        self.arch_of = (np.frombuffer(c.arch_of, dtype=np.int64) if len(c) else self.digest_of)[self.members]
        self.arches = [json.dumps(a) for a in c.arches]
        self.lines_at, self.lines = 0, ""

    def _digests(self, lo: int, hi: int) -> str:
        """The ``"t1…"`` entries of members ``lo:hi``, separated as in the document."""
        import numpy as np

        width, size = 80, len(self.members)  # '"t1' + 70 hex (lower case) + '"' + _SEP
        if not (self.lines_at <= lo and hi <= self.lines_at + len(self.lines) // width):
            end = max(hi, min(size, lo + self.CHUNK))
            hexes = self.grouping.hex[self.digest_of[self.members[lo:end]]].tobytes().lower()
            lines = np.empty((end - lo, width), dtype=np.uint8)
            lines[:, :3] = np.frombuffer(b'"t1', dtype=np.uint8)
            lines[:, 3:73] = np.frombuffer(hexes, dtype=np.uint8).reshape(-1, 70)
            lines[:, 73:] = np.frombuffer(('"' + _SEP).encode(), dtype=np.uint8)
            self.lines_at, self.lines = lo, str(lines.data, "ascii")
        return self.lines[width * (lo - self.lines_at) : width * (hi - self.lines_at) - len(_SEP)]

    def text(self, k: int) -> str:
        g, c = self.grouping, self.grouping.cols
        lo, hi = int(g.bounds[k]), int(g.bounds[k + 1])
        best = int(g.best[k])
        parts = [
            f'{{\n   "size": {hi - lo},\n   "representative": {_quote(c.names[best])},\n'
            f'   "representative_telfhash": "t1{c.digests[c.digest_of[best]].lower()}",\n'
            f'   "max_distance": {int(g.maxdist[k])},\n'
            f'   "members": [\n    {_SEP.join(self.names[lo:hi])}\n   ],\n'
            f'   "telfhashes": [\n    {self._digests(lo, hi)}\n   ]'
        ]
        arch_of = self.arch_of[lo:hi]
        if arch_of.any():  # index 0 is "no CPU" (None)
            parts.append(f',\n   "arches": [\n    {_SEP.join([self.arches[a] for a in arch_of.tolist()])}\n   ]')
        if g.inexact[k]:
            parts.append(',\n   "exact": false')
        parts.append("\n  }")
        return "".join(parts)


def _write_list(out: TextIO, name: str, values: list[str], *, last: bool) -> None:
    """`` "name": [...]`` as ``json.dumps(..., indent=1)`` lays it out one level deep."""
    end = "\n}\n" if last else ",\n"
    if not values:
        out.write(f' "{name}": []{end}')
        return
    out.write(f' "{name}": [\n')
    out.write(",\n".join(["  " + _quote(v) for v in values]))
    out.write(f"\n ]{end}")


@contextlib.contextmanager
def _open_text(path: str | None) -> Iterator[TextIO]:
    if path in (None, "-"):
        yield sys.stdout
        return
    with open(path, "w", encoding="utf-8") as fh:
        yield fh


@hookimpl
def telfhash_commands(subparsers):
    p = subparsers.add_parser(
        "cluster",
        help="group telfhash results computed earlier (JSON, JSONL, TSV or digest lists)",
        description=(
            "Group results written by 'telfhash -f json|jsonl|tsv' (or a list of digests, one per "
            "line) into the connected components of 'TLSH distance <= THRESHOLD', and write them "
            "as JSON: members, a representative and the largest internal distance per group."
        ),
    )
    add_threshold(p)
    p.add_argument("--key", default="telfhash", help="field holding the digest (default telfhash; e.g. telfhash_x)")
    p.add_argument("-o", "--output", default=None, help="write the clusters JSON here (default stdout)")
    p.add_argument("--plot", metavar="FILE", help="also draw the groups: FILE.png (matplotlib) or FILE.html")
    p.add_argument(
        "--plot-max-nodes", type=non_negative_int, default=3000, help="draw at most this many samples (default 3000)"
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files written by telfhash ('-' for stdin)")
    p.set_defaults(func=run_cluster)
