"""``telfhash plugins`` (what is loaded, from where, and what failed) and ``telfhash export``
(any plugin's exporter, from results written earlier)."""

from __future__ import annotations

import argparse
import json
import sys

from ..hookspecs import hookimpl
from ..progress import plural
from ..readers import Problem, iter_items
from .args import add_threshold


def run_plugins(args: argparse.Namespace) -> int:
    from ..formats import available_exporters, available_formats
    from ..plugins import DuplicateNameError, field_functions, plugin_infos

    infos = plugin_infos()
    offers: dict[str, list[str]] = {}
    problems: list[str] = []
    try:
        offers["output formats"] = sorted(available_formats())
        offers["fields"] = sorted(field_functions())
        offers["exporters"] = sorted(available_exporters())
    except DuplicateNameError as exc:
        problems.append(str(exc))
    if args.format == "json":
        doc = {
            "plugins": [vars(i) for i in infos],
            "offers": offers,
            "problems": problems,
        }
        print(json.dumps(doc, indent=1))
    else:
        for i in infos:
            state = f"NOT LOADED: {i.error}" if i.error else ", ".join(h.removeprefix("telfhash_") for h in i.hooks)
            print(f"{i.name:<32} {i.origin:<44} {state}")
            print(f"{'':<32} {i.where}")
        for what, names in offers.items():
            print(f"{what}: {', '.join(names) or '-'}")
        for p in problems:
            print(f"error: {p}")
    return 1 if problems or any(i.error for i in infos) else 0


def run_export(args: argparse.Namespace) -> int:
    from ..formats import available_exporters
    from ..result import Result

    exporters = available_exporters()
    exp = exporters.get(args.name)
    if exp is None:
        known = ", ".join(sorted(exporters)) or "none installed"
        print(f"telfhash export: no exporter {args.name!r} (available: {known})", file=sys.stderr)
        return 2
    results: list[Result] = []
    bad = 0
    for src in args.inputs:
        try:
            fh = sys.stdin.buffer if src == "-" else open(src, "rb")
        except OSError as exc:
            print(f"telfhash export: {src}: {exc.strerror or exc}", file=sys.stderr)
            bad += 1
            continue
        with fh:
            for item in iter_items(fh):
                if isinstance(item, Problem):
                    print(f"telfhash export: {item.at(src)}", file=sys.stderr)
                    continue
                try:
                    results.append(Result.from_dict(item))
                except (ValueError, TypeError) as exc:
                    print(f"telfhash export: {src}: not a result ({exc})", file=sys.stderr)
    if not results:
        print("telfhash export: no results to export", file=sys.stderr)
        return 1
    options: dict = {"threshold": args.threshold}
    for kv in args.option:
        key, sep, value = kv.partition("=")
        if not sep:
            print(f"telfhash export: --option {kv!r}: use KEY=VALUE", file=sys.stderr)
            return 2
        options[key] = value
    try:
        if args.output in (None, "-"):
            exp.export(results, None, sys.stdout, options)
        else:
            with open(args.output, "w", encoding="utf-8") as out:
                exp.export(results, None, out, options)
    except (ValueError, OSError) as exc:
        print(f"telfhash export: {args.name}: {exc}", file=sys.stderr)
        return 1
    print(f"telfhash export: {plural(len(results), 'result')} exported with {args.name}", file=sys.stderr)
    return 1 if bad else 0


@hookimpl
def telfhash_commands(subparsers):
    p = subparsers.add_parser(
        "plugins",
        help="list the plugins loaded, where from, what they offer, and those that failed to load",
    )
    p.add_argument("-f", "--format", choices=("table", "json"), default="table")
    p.set_defaults(func=run_plugins)

    e = subparsers.add_parser(
        "export",
        help="write results with a plugin's exporter (e.g. 'telfhash export stix r.jsonl -o bundle.json')",
        description="Export results written by 'telfhash -f json|jsonl' with an exporter offered by a plugin "
        "('telfhash plugins' lists them). The exporter clusters the results at the threshold.",
    )
    e.add_argument("name", metavar="EXPORTER", help="the exporter's name")
    e.add_argument("inputs", nargs="+", metavar="RESULTS", help="telfhash -f json|jsonl output ('-' for stdin)")
    e.add_argument("-o", "--output", default=None, help="write here (default stdout)")
    add_threshold(e)
    e.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="an exporter option (repeatable)")
    e.set_defaults(func=run_export)
