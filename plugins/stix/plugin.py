"""Hooks: the ``stix`` exporter and ``telfhash stix export|validate|publish|pull|import``."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from typing import Any, Iterable

from telfhash_core import DEFAULT_THRESHOLD
from telfhash_core.commands.args import non_negative_int
from telfhash_core.hookspecs import hookimpl

from .export import TELFHASH_KEYS, ExportError, ExportReport, dumps, export_bundle
from .importer import BundleError, DEFAULT_MAX_BYTES


# ----------------------------------------------------------------------------- exporter hook


def _exporter(results, clusters, out, options: dict | None = None) -> None:
    """``Exporter.export``: write the bundle for ``clusters`` of ``results`` to ``out``."""
    o = dict(options or {})
    bundle = export_bundle(
        results,
        clusters,
        threshold=o.get("threshold", DEFAULT_THRESHOLD),
        linkage=o.get("linkage", "single"),
        telfhash_key=o.get("telfhash_key"),
        identity_name=o.get("identity"),
        timestamp=o.get("timestamp"),
        include_singletons=bool(o.get("singletons")),
    )
    text = dumps(bundle)
    if isinstance(out, (io.RawIOBase, io.BufferedIOBase)) or "b" in getattr(out, "mode", ""):
        out.write(text.encode("utf-8"))
    else:
        out.write(text)


@hookimpl
def telfhash_exporters():
    from telfhash_core.formats import Exporter

    return [
        Exporter(
            name="stix",
            description="STIX 2.1 bundle: per cluster a Grouping (telfhash cluster extension), Malware family, "
            "Indicator and Files with standard hashes",
            export=_exporter,
        )
    ]


# ----------------------------------------------------------------------------- CLI


MAX_PROBLEM_LINES = 50


def add_cluster_input_arguments(parser) -> None:
    """INPUT..., -r, -t and --clusters: what is clustered, for `stix export` and `telfhash yara`."""
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="ELF files/folders (-r), or results from 'telfhash -f json|jsonl --sha256'",
    )
    parser.add_argument("-r", "--recursive", action="store_true", help="walk folders given as INPUT")
    parser.add_argument(
        "-t",
        "--threshold",
        type=non_negative_int,
        default=DEFAULT_THRESHOLD,
        help=f"TLSH distance for clustering (default {DEFAULT_THRESHOLD})",
    )
    parser.add_argument(
        "--clusters",
        metavar="FILE",
        help="use these clusters (JSON, as 'telfhash cluster' writes) instead of clustering",
    )


@hookimpl
def telfhash_commands(subparsers):
    p = subparsers.add_parser(
        "stix",
        help="share clusters as STIX 2.1 (export, validate, publish/pull over TAXII 2.1, import)",
        description="Share telfhash clusters as STIX 2.1 bundles and use bundles from others.",
    )
    sub = p.add_subparsers(dest="stix_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), 2)[1])

    e = sub.add_parser("export", help="cluster ELF files or results and write a STIX 2.1 bundle")
    add_cluster_input_arguments(e)
    e.add_argument(
        "--linkage",
        default="single",
        help="linkage recorded in the extension (default: single, as the core's clustering)",
    )
    e.add_argument(
        "--telfhash-key",
        choices=TELFHASH_KEYS,
        help="also put each telfhash in its File's hashes under this key (custom hash: see docs/stix.md)",
    )
    e.add_argument("--identity", metavar="NAME", help="producer identity (organization) named in created_by_ref")
    e.add_argument("--timestamp", help="created/modified of the objects (ISO 8601; default $SOURCE_DATE_EPOCH or now)")
    e.add_argument("--singletons", action="store_true", help="also add a File for each sample outside every cluster")
    e.add_argument(
        "--no-misp-layout",
        dest="misp_layout",
        action="store_false",
        help="leave out the labels and per-sample Indicators through which MISP gets a telfhash attribute per file",
    )
    e.add_argument("--no-yara", dest="yara", action="store_false", help="leave out the per-cluster YARA Indicators")
    e.add_argument(
        "--previous",
        metavar="BUNDLE",
        help="an earlier export of these clusters: unchanged objects keep its timestamps, changed ones get a new 'modified'",
    )
    e.add_argument("-o", "--output", default="-", help="bundle file (default stdout)")
    e.add_argument(
        "--validate", action="store_true", help="validate the bundle (stix2-validator --strict, stix2.parse)"
    )
    e.set_defaults(func=_guarded(cmd_export))

    v = sub.add_parser("validate", help="stix2-validator --strict and stix2.parse on bundles")
    v.add_argument("bundles", nargs="+", metavar="BUNDLE")
    v.add_argument("--no-strict", dest="strict", action="store_false", help="warnings are not errors")
    v.add_argument(
        "--max-bytes", type=non_negative_int, default=DEFAULT_MAX_BYTES, help="refuse larger bundles (0: no limit)"
    )
    v.set_defaults(func=_guarded(cmd_validate))

    taxii_help = "collection URL, user and password from $TELFHASH_TAXII_* or the config file (never argv)"
    pub = sub.add_parser("publish", help="add a bundle's objects to a TAXII 2.1 collection", description=taxii_help)
    pub.add_argument("bundle", metavar="BUNDLE")
    _taxii_args(pub)
    pub.add_argument(
        "--chunk", type=non_negative_int, default=500, help="objects per request (0: all in one; default 500)"
    )
    pub.add_argument("--timeout", type=non_negative_int, default=60, help="seconds to wait for each request's status")
    pub.add_argument("--resend", action="store_true", help="send every object, even those the collection already holds")
    pub.add_argument(
        "--max-bytes", type=non_negative_int, default=DEFAULT_MAX_BYTES, help="refuse larger bundles (0: no limit)"
    )
    pub.set_defaults(func=_guarded(cmd_publish))

    pl = sub.add_parser("pull", help="read a TAXII 2.1 collection into a bundle file", description=taxii_help)
    _taxii_args(pl)
    pl.add_argument("--added-after", help="only objects added after this time (ISO 8601)")
    pl.add_argument("-o", "--output", default="-", help="bundle file (default stdout)")
    pl.set_defaults(func=_guarded(cmd_pull))

    sv = sub.add_parser(
        "serve",
        help="run a local TAXII 2.1 server (medallion, in memory, 127.0.0.1) to try publish/import",
        description="User and password come from $TELFHASH_TAXII_USER / $TELFHASH_TAXII_PASSWORD.",
    )
    sv.add_argument("--port", type=non_negative_int, default=8000, help="port on 127.0.0.1 (default 8000)")
    sv.set_defaults(func=_guarded(cmd_serve))

    im = sub.add_parser(
        "import",
        help="read telfhashes from a bundle, add them to the local index, list local samples near a shared cluster",
    )
    im.add_argument("bundle", nargs="?", metavar="BUNDLE", help="bundle file ('-' for stdin); or --taxii")
    im.add_argument("--taxii", action="store_true", help="read the bundle from the TAXII collection instead")
    _taxii_args(im)
    im.add_argument("--index", metavar="PATH", help="local index: add the shared telfhashes and search it")
    im.add_argument("--local", nargs="+", default=[], metavar="PATH", help="local ELF files/folders to compare")
    im.add_argument("-r", "--recursive", action="store_true", help="walk folders given to --local")
    im.add_argument(
        "-t",
        "--threshold",
        type=non_negative_int,
        default=DEFAULT_THRESHOLD,
        help=f"report local samples within this distance (default {DEFAULT_THRESHOLD})",
    )
    im.add_argument("-f", "--format", choices=("text", "json"), default="text")
    im.add_argument(
        "--max-bytes", type=non_negative_int, default=DEFAULT_MAX_BYTES, help="refuse larger bundles (0: no limit)"
    )
    im.set_defaults(func=_guarded(cmd_import))


def _taxii_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url", help="collection URL (…/api-root/collections/<id>/); also $TELFHASH_TAXII_URL or url= in the config"
    )
    p.add_argument(
        "--config", metavar="PATH", help="INI file with a [taxii] section (default ~/.config/telfhash/taxii.ini)"
    )


def _guarded(fn):
    """No traceback reaches the user: a closed pipe ends quietly, anything unexpected is one line
    (``TELFHASH_DEBUG=1`` shows the traceback)."""

    def run(args) -> int:
        try:
            return fn(args)
        except BrokenPipeError:
            try:
                sys.stdout = open(os.devnull, "w")
            except OSError:
                pass
            return 1
        except KeyboardInterrupt:
            return 130
        except ImportError as exc:  # stix2, stix2-validator, taxii2-client are the 'stix' extra
            _err(
                f"{exc}: install the STIX dependencies (extra telfhash-core[stix]): pip install -e '.[stix]' in the telfhash-core clone"
            )
            return 1
        except OSError as exc:  # e.g. the output file cannot be written
            _err(f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}")
            return 1
        except Exception as exc:
            if os.environ.get("TELFHASH_DEBUG"):
                raise
            _err(f"unexpected error: {type(exc).__name__}: {exc} (set TELFHASH_DEBUG=1 for details)")
            return 1

    run.__name__ = fn.__name__
    run.__doc__ = fn.__doc__
    return run


def _err(msg: str) -> None:
    print(f"telfhash stix: {msg}", file=sys.stderr)


def _write(path: str, text: str) -> None:
    if path in ("-", None):
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OSError(exc.errno, f"cannot write ({exc.strerror or exc})", path) from None


def read_inputs(inputs: Iterable[str], recursive: bool, problems: list[str]) -> list[Any]:
    """Results files (``-f json``/``jsonl``) are read; anything else is an ELF path to hash."""
    from telfhash_core import expand_paths, hash_paths

    items: list[Any] = []
    paths: list[str] = []
    for inp in inputs:
        if os.path.isfile(inp) and inp.lower().endswith((".json", ".jsonl")):
            try:
                items.extend(read_results_file(inp))
            except ValueError as exc:
                problems.append(str(exc))
            continue
        paths.append(inp)
    if paths:
        files = expand_paths(paths, recursive, on_error=problems.append)
        items.extend(hash_paths(files, jobs=(os.cpu_count() or 1) if len(files) >= 16 else 1, sha256=True))
    return items


def read_results_file(path: str) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read ({exc})") from None
    stripped = text.lstrip()
    rows: list[Any] = []
    try:
        if stripped.startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise ValueError(f"{path}: not JSON results ({exc})") from None
    good = [r for r in rows if isinstance(r, dict) and "file" in r]
    if len(good) != len(rows):
        raise ValueError(f"{path}: {len(rows) - len(good)} rows are not result objects with a 'file' key")
    return good


def read_clusters_file(path: str) -> list[Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON, bad UTF-8, huge numbers
        raise ExportError(f"{path}: cannot read clusters ({exc})") from None
    threshold = None
    if isinstance(data, dict):  # `telfhash cluster` output: {"threshold": T, "clusters": [...]}
        threshold = data.get("threshold") if isinstance(data.get("threshold"), int) else None
        data = data.get("clusters")
    if not isinstance(data, list):
        raise ExportError(f'{path}: expected a JSON list of clusters (or {{"clusters": [...]}})')
    if threshold is not None:
        data = [dict(c, threshold=c.get("threshold", threshold)) if isinstance(c, dict) else c for c in data]
    return data


def cmd_export(args) -> int:
    problems: list[str] = []
    items = read_inputs(args.inputs, args.recursive, problems)
    for p in problems:
        _err(p)
    report = ExportReport()
    try:
        previous = None
        if args.previous:
            from .importer import load_bundle

            try:
                previous = load_bundle(args.previous, max_bytes=0)
            except BundleError as exc:
                _err(f"--previous: {exc}")
                return 1
        clusters = read_clusters_file(args.clusters) if args.clusters else None
        bundle = export_bundle(
            items,
            clusters,
            threshold=args.threshold,
            linkage=args.linkage,
            telfhash_key=args.telfhash_key,
            identity_name=args.identity,
            timestamp=args.timestamp,
            include_singletons=args.singletons,
            report=report,
            misp_layout=args.misp_layout,
            yara=args.yara,
            previous=previous,
        )
    except ExportError as exc:
        _err(str(exc))
        return 1
    for w in report.warnings:
        _err(f"warning: {w}")
    if report.skipped:
        _err(f"{len(report.skipped)} item(s) left out (no telfhash or no SHA-256), e.g. {report.skipped[0]}")
    _write(args.output, dumps(bundle))
    n_groups = sum(1 for o in bundle["objects"] if o["type"] == "grouping")
    n_files = sum(1 for o in bundle["objects"] if o["type"] == "file")
    _err(f"{bundle['id']}: {n_groups} cluster(s), {n_files} file(s)")
    if args.validate:
        return _report_validation(bundle, "export", strict=True)
    return 0


def _report_validation(bundle: dict, name: str, strict: bool) -> int:
    from .validate import validate_bundle

    rep = validate_bundle(bundle, strict=strict)
    for line in rep.lines():
        print(f"{name}: {line}")
    print(f"{name}: {'valid' if rep.ok else 'INVALID'} ({len(rep.errors)} error(s), {len(rep.warnings)} warning(s))")
    return 0 if rep.ok else 1


def cmd_validate(args) -> int:
    from .importer import load_bundle

    status = 0
    for path in args.bundles:
        try:
            bundle = load_bundle(sys.stdin.buffer if path == "-" else path, max_bytes=args.max_bytes)
        except BundleError as exc:
            print(f"{path}: INVALID: {exc}")
            status = 1
            continue
        status |= _report_validation(bundle, path, args.strict)
    return status


def cmd_publish(args) -> int:
    from .importer import load_bundle
    from .taxii import TaxiiError, load_settings, publish

    from .taxii import _safe_url

    try:
        bundle = load_bundle(sys.stdin.buffer if args.bundle == "-" else args.bundle, max_bytes=args.max_bytes)
        settings = load_settings(args.config, args.url)
        rep = publish(bundle, settings, chunk=args.chunk, timeout=args.timeout, skip_present=not args.resend)
    except (BundleError, TaxiiError) as exc:
        _err(str(exc))
        return 1
    print(
        f"published to {_safe_url(settings.url)}: {rep.success} added ({rep.new_versions} as new versions), "
        f"{rep.already} already there, {rep.failure} failed, {rep.pending} pending"
    )
    for f in rep.failures:
        print(f"  failed: {f}")
    return 0 if rep.failure == 0 and rep.pending == 0 else 1


def cmd_pull(args) -> int:
    from .taxii import TaxiiError, load_settings, pull

    try:
        bundle = pull(load_settings(args.config, args.url), added_after=args.added_after)
    except TaxiiError as exc:
        _err(str(exc))
        return 1
    _write(args.output, dumps(bundle))
    _err(f"{len(bundle['objects'])} object(s)")
    if not bundle["objects"]:
        _err("warning: the collection holds no objects (or none matching the filters)")
        return 1
    return 0


def cmd_serve(args) -> int:
    from .server import serve

    user, password = os.environ.get("TELFHASH_TAXII_USER"), os.environ.get("TELFHASH_TAXII_PASSWORD")
    if not user or not password:
        _err("set TELFHASH_TAXII_USER and TELFHASH_TAXII_PASSWORD (the account the server accepts)")
        return 2
    try:
        return serve(args.port, user, password)
    except RuntimeError as exc:
        _err(str(exc))
        return 1


def cmd_import(args) -> int:
    from . import importer

    try:
        if args.taxii:
            from .taxii import TaxiiError, load_settings, pull

            try:
                bundle: Any = pull(load_settings(args.config, args.url))
            except TaxiiError as exc:
                _err(str(exc))
                return 1
        elif args.bundle:
            bundle = sys.stdin.buffer if args.bundle == "-" else args.bundle
        else:
            _err("give a BUNDLE file or --taxii")
            return 2
        report = importer.read_bundle(bundle, max_bytes=args.max_bytes)
    except BundleError as exc:
        _err(str(exc))
        return 1
    if args.taxii:
        from .taxii import _safe_url

        report.origin = _safe_url(args.url or os.environ.get("TELFHASH_TAXII_URL"))
    shown = report.problems if args.format == "json" else report.problems[:MAX_PROBLEM_LINES]
    for p in shown:
        _err(f"warning: {p}")
    if len(report.problems) > len(shown):
        _err(f"... and {len(report.problems) - len(shown)} more problem(s) (-f json lists them all)")
    empty = None
    if report.objects == 0:
        empty = "the collection holds no objects" if args.taxii else "the bundle holds no objects"
    elif not report.digests:
        empty = f"no telfhash in the {'collection' if args.taxii else 'bundle'} ({report.objects} object(s) read)"
    if empty:
        _err(f"warning: {empty}; nothing to import")
    added = None
    matches: list = []
    try:
        if args.index and not empty:
            added = importer.add_to_index(report, args.index)
            matches.extend(importer.search_index(report, args.index, args.threshold))
        if args.local and not empty:
            from telfhash_core import expand_paths

            files = expand_paths(args.local, args.recursive, on_error=_err)
            matches.extend(importer.match_local(report, files, args.threshold))
    except BundleError as exc:
        _err(str(exc))
        return 1
    unique: dict[tuple[str, str], Any] = {}
    for m in matches:  # a sample both in the index and under --local is listed once
        key = (m.cluster, m.file)
        if key not in unique or m.distance < unique[key].distance:
            unique[key] = m
    matches = sorted(unique.values(), key=lambda m: (m.cluster, m.distance, m.file))
    if added is not None and args.format != "json":
        for line in added["local_kept"][:MAX_PROBLEM_LINES]:
            _err(f"warning: {line}")
    if args.format == "json":
        print(
            json.dumps(
                {
                    "bundle": report.bundle_id,
                    "source": report.source,
                    "telfhashes": len(report.telfhashes()),
                    "clusters": report.clusters,
                    "duplicates": report.duplicates,
                    "added_to_index": added,
                    "matches": [dict(m.to_dict(), cluster_label=cluster_label(report, m.cluster)) for m in matches],
                    "problems": report.problems,
                    "empty": empty,
                },
                indent=2,
            )
        )
        return 1 if empty else 0
    print(
        f"{report.source}: {len(report.telfhashes())} telfhash(es) in {len(report.clusters)} cluster(s)"
        + (
            f"; index {args.index}: {added['added']} added, {added['updated'] + added['unchanged']} already there"
            + (f", {len(added['local_kept'])} kept their local value" if added["local_kept"] else "")
            + (f", {added['without_sha256']} without SHA-256 not recorded" if added["without_sha256"] else "")
            if added is not None
            else ""
        )
    )
    if empty:
        return 1
    if args.index or args.local:
        if not matches:
            print(f"no local sample within {args.threshold} of a shared cluster")
        else:
            rows = [(m.file, str(m.distance), cluster_label(report, m.cluster)) for m in matches]
            head = ("local sample", "distance", "shared cluster (representative, size)")
            w0 = max(len(head[0]), *(len(r[0]) for r in rows))
            w1 = max(len(head[1]), *(len(r[1]) for r in rows))
            print(f"{head[0]:<{w0}}  {head[1]:>{w1}}  {head[2]}")
            for r in rows:
                print(f"{r[0]:<{w0}}  {r[1]:>{w1}}  {r[2]}")
    return 0


def cluster_label(report, cluster: str) -> str:
    """A shared cluster as a person reads it: its representative's telfhash (shortened), its
    size, and its name or id."""
    info = report.clusters.get(cluster, {})
    rep = info.get("representative")
    size = info.get("size")
    name = info.get("name") or cluster
    parts = []
    if rep:
        parts.append(f"{rep[:16]}…")
    if size:
        parts.append(f"{size} sample{'s' if size != 1 else ''}")
    return ", ".join(parts) + f"  ({name})" if parts else name
