"""``telfhash index``: add to, search and summarise the local similarity index (SQLite)."""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from typing import TYPE_CHECKING, Callable

from ..hookspecs import hookimpl
from ..progress import plural
from ..store import SEARCH_KEYS

if TYPE_CHECKING:  # the index (NumPy, SQLite) is loaded when a command runs, not when it is registered
    from ..store.index import AddStats, Index
from .args import add_progress, add_threshold, non_negative_int


@hookimpl
def telfhash_commands(subparsers):
    p = subparsers.add_parser(
        "index",
        help="a local similarity index (SQLite): add, search, clusters, stats",
        description="A local similarity index of telfhashes in one SQLite file "
        "(default $TELFHASH_INDEX or ~/.local/share/telfhash-core/index.sqlite).",
    )
    db_help = "the index file (default: $TELFHASH_INDEX or ~/.local/share/telfhash-core/index.sqlite)"
    p.add_argument("--db", default=None, metavar="FILE", help=db_help)
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), 2)[1])
    actions = p.add_subparsers(dest="action", metavar="ACTION")

    def common(sp):
        sp.add_argument("--db", default=argparse.SUPPRESS, metavar="FILE", help=db_help)

    a = actions.add_parser("add", help="hash files (or read earlier results) and add them")
    common(a)
    a.add_argument("paths", nargs="*", metavar="PATH", help="ELF files (wildcards accepted) or, with -r, folders")
    a.add_argument(
        "--jsonl",
        action="append",
        default=[],
        metavar="FILE",
        help="add results from `telfhash -f jsonl --sha256` ('-' = stdin)",
    )
    a.add_argument("-r", "--recursive", action="store_true", help="walk folders")
    a.add_argument("-j", "--jobs", type=non_negative_int, default=0, help="processes for hashing (default: all cores)")
    a.add_argument("--source", default=None, help='where the samples come from (default "local", or "jsonl:<name>")')
    a.add_argument("--batch-size", type=non_negative_int, default=None, help="results per committed transaction")
    a.add_argument(
        "--field",
        dest="fields",
        action="append",
        default=[],
        metavar="NAME",
        help="also compute and keep an opt-in field, e.g. --field telfhash_x (searchable with --key telfhash_x)",
    )
    a.add_argument(
        "--skip-known-paths", action="store_true", help="do not hash again paths already indexed with the same size"
    )
    add_progress(a)
    a.add_argument("-f", "--format", choices=("table", "json"), default="table", help="summary format")
    a.set_defaults(func=_cmd_add)

    s = actions.add_parser("search", help="entries within a distance of a digest or a file, nearest first")
    common(s)
    s.add_argument("query", metavar="DIGEST|FILE", help="a telfhash (t1…, T1… or 70 hex) or an ELF file to hash")
    add_threshold(s, "largest TLSH distance")
    s.add_argument("--limit", type=non_negative_int, default=None, metavar="K", help="at most K matches")
    s.add_argument(
        "--key",
        choices=sorted(SEARCH_KEYS),
        default="telfhash",
        help="search telfhash (default) or the companion telfhash_x",
    )
    s.add_argument("-f", "--format", choices=("table", "json"), default="table")
    s.set_defaults(func=_cmd_search)

    c = actions.add_parser("clusters", help="groups of entries within the threshold (connected components)")
    common(c)
    add_threshold(c)
    c.add_argument("--min-size", type=non_negative_int, default=2, help="smallest cluster listed (default 2)")
    c.add_argument("--key", choices=sorted(SEARCH_KEYS), default="telfhash")
    c.add_argument("-f", "--format", choices=("table", "json"), default="table")
    c.set_defaults(func=_cmd_clusters)

    lb = actions.add_parser("label", help="set (or --clear) the family label of a known sample")
    common(lb)
    lb.add_argument("sha256", metavar="SHA256", help="the sample, by its SHA-256")
    lb.add_argument("label", nargs="?", default=None, metavar="LABEL", help="family label, e.g. mirai")
    lb.add_argument("--clear", action="store_true", help="remove the label")
    lb.set_defaults(func=_cmd_label)

    rx = actions.add_parser("recompute-x", help="recompute stored tx1 companion values as tx2 (files that still exist)")
    common(rx)
    rx.add_argument("-f", "--format", choices=("table", "json"), default="table")
    rx.add_argument(
        "--all",
        action="store_true",
        help="also recompute tx2 values (after an update that changed tx2's rules or derived data)",
    )
    rx.set_defaults(func=_cmd_recompute_x)

    st = actions.add_parser("stats", help="what the index holds")
    common(st)
    st.add_argument("-f", "--format", choices=("table", "json"), default="table")
    st.set_defaults(func=_cmd_stats)


def _fail(message: str) -> int:
    print(f"telfhash index: error: {message}", file=sys.stderr)
    return 2


def _open(args, create: bool) -> Index:
    from ..store.index import Index

    return Index(args.db, create=create)


def _guard(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except KeyboardInterrupt:
            print("telfhash index: interrupted (committed batches are kept)", file=sys.stderr)
            return 130
        except BrokenPipeError:
            try:
                sys.stdout = open(os.devnull, "w")
            except OSError:
                pass
            return 0
        except (ValueError, OSError, sqlite3.Error) as exc:
            return _fail(str(exc) or type(exc).__name__)

    return run


@_guard
def _cmd_add(args) -> int:
    if not args.paths and not args.jsonl:
        return _fail("give PATH... to hash or --jsonl FILE")
    kw = {"batch_size": args.batch_size} if args.batch_size else {}
    with _open(args, create=True) as ix:
        from ..store.index import AddStats

        total = AddStats()
        for name in args.jsonl:
            if name == "-":
                st = ix.add_jsonl(sys.stdin.buffer, source=args.source or "jsonl:stdin", **kw)
            else:
                st = ix.add_jsonl(name, source=args.source, **kw)
            _merge(total, st)
        if args.paths:
            st = ix.add_files(
                args.paths,
                args.recursive,
                args.jobs,
                args.progress,
                source=args.source or "local",
                skip_known_paths=args.skip_known_paths,
                fields=args.fields,
                **kw,
            )
            _merge(total, st)
        for e in total.errors:
            print(f"telfhash index: skipped {e}", file=sys.stderr)
        if total.skipped > len(total.errors):
            print(f"telfhash index: ... and {total.skipped - len(total.errors)} more skipped", file=sys.stderr)
        if args.format == "json":
            print(json.dumps(total.to_dict()))
        else:
            print(f"{total} -> {ix.path} ({plural(len(ix), 'entry', 'entries')})")
    return 0


def _merge(into: AddStats, st: AddStats) -> None:
    for f in ("seen", "added", "updated", "unchanged", "skipped", "with_digest", "without_digest", "seconds"):
        setattr(into, f, getattr(into, f) + getattr(st, f))
    into.errors.extend(st.errors[: st.MAX_ERRORS - len(into.errors)])


@_guard
def _cmd_search(args) -> int:
    with _open(args, create=False) as ix:
        matches = ix.search(args.query, max_distance=args.threshold, limit=args.limit, key=args.key)
    if args.format == "json":
        print(json.dumps([m.to_dict() for m in matches]))
    else:
        if matches:
            width = len(matches[0].telfhash if args.key == "telfhash" else (matches[0].telfhash_x or ""))
            print(f"{'DIST':>4}  {'SHA256':<64}  {'ARCH':<14}  {args.key.upper():<{width}}  PATH")
        for m in matches:
            value = m.telfhash if args.key == "telfhash" else (m.telfhash_x or "")
            print(f"{m.distance:>4}  {m.sha256}  {m.arch or '-':<14}  {value}  {m.path or ''}")
        if not matches:
            print(f"no entry within {args.threshold}", file=sys.stderr)
    return 0 if matches else 1


@_guard
def _cmd_clusters(args) -> int:
    with _open(args, create=False) as ix:
        groups = ix.clusters(args.threshold, key=args.key, min_size=args.min_size)
    if args.format == "json":
        print(json.dumps(groups))
        return 0
    for k, g in enumerate(groups, 1):
        archs = ", ".join(f"{a} {n}" for a, n in g["archs"].items())
        maxd = g["max_distance"] if g["exact"] else f">= {g['max_distance']}"
        print(
            f"Cluster {k}: {plural(g['size'], 'sample')}, {plural(g['digests'], 'digest')}, "
            f"max distance {maxd} ({archs})"
        )
        for mbr in g["members"]:
            star = "*" if mbr is g["representative"] else " "
            print(f"  {star} {mbr['sha256']}  {mbr['arch'] or '-':<14}  {mbr['path'] or ''}")
    if not groups:
        print(f"no cluster of {args.min_size} or more entries at threshold {args.threshold}", file=sys.stderr)
    return 0


@_guard
def _cmd_recompute_x(args) -> int:
    with _open(args, create=False) as ix:
        counts = ix.recompute_x(all_rows=args.all)
    if args.format == "json":
        print(json.dumps(counts))
    else:
        print(
            f"{counts['old']} {'stored' if args.all else 'older'} companion values: {counts['recomputed']} recomputed as tx2, {counts['no_value']} cleared "
            f"(no tx2 value), {counts['missing']} kept (file gone), {counts['changed']} kept (file changed)"
        )
    return 0


@_guard
def _cmd_label(args) -> int:
    if args.clear == (args.label is not None):
        return _fail("give either LABEL or --clear")
    with _open(args, create=False) as ix:
        if not ix.set_label(args.sha256, None if args.clear else args.label):
            return _fail(f"no entry with SHA-256 {args.sha256}")
    print(f"{args.sha256.lower()}: " + ("label cleared" if args.clear else f"labelled {args.label.strip()!r}"))
    return 0


@_guard
def _cmd_stats(args) -> int:
    with _open(args, create=False) as ix:
        s = ix.stats()
    if args.format == "json":
        print(json.dumps(s))
        return 0
    print(f"index:        {s['path']} ({s['bytes'] / 1e6:.1f} MB)")
    print(f"entries:      {s['entries']} ({s['with_telfhash']} with a telfhash, {s['distinct_telfhashes']} distinct)")
    if s["with_telfhash_x"]:
        print(f"telfhash_x:   {s['with_telfhash_x']}")
    if s["reasons"]:
        print("no telfhash:  " + ", ".join(f"{k} {v}" for k, v in s["reasons"].items()))
    print("archs:        " + ", ".join(f"{k} {v}" for k, v in s["archs"].items()))
    print("sources:      " + ", ".join(f"{k} {v}" for k, v in s["sources"].items()))
    if s["entries"]:
        print(f"added:        {s['first_added']} .. {s['last_added']}")
    return 0
