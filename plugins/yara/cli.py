"""``telfhash yara``: the YARA rules of the STIX export's ``pattern_type: yara`` Indicators, as a
``.yar`` file (the same clusters give the same rules, text for text)."""

from __future__ import annotations

import sys

from telfhash_core.hookspecs import hookimpl

IMPORTS = ('import "elf"', 'import "hash"')


def rules_of_bundle(bundle: dict) -> list[str]:
    """The rules (imports left out) of a bundle's YARA Indicators, in bundle order."""
    out = []
    for o in bundle.get("objects", []):
        if isinstance(o, dict) and o.get("type") == "indicator" and o.get("pattern_type") == "yara":
            lines = [ln for ln in str(o.get("pattern", "")).splitlines() if ln.strip() not in IMPORTS]
            out.append("\n".join(lines).strip("\n") + "\n")
    return out


def add_parser(subparsers) -> None:
    y = subparsers.add_parser(
        "yara",
        help="write a YARA rule per cluster (.yar): members by elf.telfhash() and by SHA-256",
        description="Cluster ELF files or results (as 'telfhash stix export' does) and write one YARA rule per "
        "cluster, the rules the STIX export carries as pattern_type 'yara' Indicators.",
    )
    from telfhash_plugins.stix.plugin import add_cluster_input_arguments

    add_cluster_input_arguments(y)
    y.add_argument("-o", "--output", default="-", help=".yar file (default stdout)")
    y.set_defaults(func=cmd_yara)


@hookimpl
def telfhash_commands(subparsers):
    add_parser(subparsers)


def cmd_yara(args) -> int:
    from telfhash_plugins.stix.export import ExportError, ExportReport, export_bundle
    from telfhash_plugins.stix.plugin import _err, _guarded, _write, read_clusters_file, read_inputs

    from .rules import ruleset

    def run(args) -> int:
        problems: list[str] = []
        items = read_inputs(args.inputs, args.recursive, problems)
        for p in problems:
            _err(p)
        report = ExportReport()
        try:
            clusters = read_clusters_file(args.clusters) if args.clusters else None
            bundle = export_bundle(
                items, clusters, threshold=args.threshold, report=report, misp_layout=False, yara=True
            )
        except ExportError as exc:
            _err(str(exc))
            return 1
        for w in report.warnings:
            _err(f"warning: {w}")
        if report.skipped:
            _err(f"{len(report.skipped)} item(s) left out (no telfhash or no SHA-256), e.g. {report.skipped[0]}")
        rules = rules_of_bundle(bundle)
        if not rules:
            _err("no cluster of two or more samples: no rule written")
            return 1
        _write(args.output, ruleset(rules))
        print(f"{len(rules)} rule(s)", file=sys.stderr)
        return 0

    return _guarded(run)(args)


def main(argv: list[str] | None = None) -> int:
    """``python -m telfhash_plugins.yara.cli ...`` (the same as ``telfhash yara ...``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="telfhash")
    sub = parser.add_subparsers(dest="command")
    add_parser(sub)
    args = parser.parse_args(["yara", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
