"""``telfhash cluster``: group results written earlier (JSON, JSONL, TSV, default output or digests)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..hookspecs import hookimpl
from ..progress import plural
from ..readers import Problem, iter_items
from .args import add_threshold, non_negative_int

PROG = "telfhash cluster"
MAX_SHOWN_ERRORS = 20


def _read(sources: list[str], errors: list[str]) -> list[Any]:
    items: list[Any] = []
    for src in sources:
        try:
            fh = sys.stdin.buffer if src == "-" else open(src, "rb")
        except OSError as exc:
            errors.append(f"{src}: {exc.strerror or exc}")
            continue
        try:
            for item in iter_items(fh, text=True, strings=True):
                if isinstance(item, Problem):
                    errors.append(item.at(src))
                else:
                    items.append(item)
        except OSError as exc:  # e.g. a folder given as input
            errors.append(f"{src}: {exc.strerror or exc}")
        finally:
            if fh is not sys.stdin.buffer:
                fh.close()
    return items


def run_cluster(args: argparse.Namespace) -> int:
    from ..similarity.cluster import cluster, plot

    errors: list[str] = []
    items = _read(args.inputs, errors)
    for e in errors[:MAX_SHOWN_ERRORS]:
        print(f"{PROG}: {e}", file=sys.stderr)
    if len(errors) > MAX_SHOWN_ERRORS:
        print(f"{PROG}: ... and {len(errors) - MAX_SHOWN_ERRORS} more problems", file=sys.stderr)
    if not items:
        print(f"{PROG}: no input items", file=sys.stderr)
        return 1
    clusters, ungroupable = cluster(items, args.threshold, key=args.key)
    groups = [c for c in clusters if c.size > 1]
    singles = [c.members[0] for c in clusters if c.size == 1]
    doc = {
        "threshold": args.threshold,
        "key": args.key,
        "items": len(items),
        "clusters": [c.to_dict() for c in groups],
        "singletons": singles,
        "ungroupable": ungroupable,
    }
    text = json.dumps(doc, indent=1) + "\n"
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        try:
            with open(args.output, "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as exc:
            print(f"{PROG}: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    print(
        f"{PROG}: {plural(len(items), 'item')}: {plural(len(groups), 'group')} "
        f"({plural(sum(c.size for c in groups), 'member')}), {plural(len(singles), 'singleton')}, "
        f"{len(ungroupable):,} without a digest",
        file=sys.stderr,
    )
    if args.plot:
        try:
            summary = plot(groups or clusters, args.plot, args.threshold, max_nodes=args.plot_max_nodes)
        except ImportError as exc:
            print(f"{PROG}: --plot {args.plot}: {exc} (install telfhash-core[plot])", file=sys.stderr)
            return 1
        except (ValueError, OSError) as exc:
            print(f"{PROG}: --plot: {exc}", file=sys.stderr)
            return 1
        print(f"{PROG}: plot written to {args.plot}: {summary}", file=sys.stderr)
    return 0


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
