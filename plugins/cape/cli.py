"""``telfhash-cape``: install the CAPEv2 module, remove it, show its state, or enrich an
existing report offline.

    telfhash-cape install   --cape-root /opt/CAPEv2 [--index PATH] [--threshold N] ...
    telfhash-cape status    --cape-root /opt/CAPEv2
    telfhash-cape uninstall --cape-root /opt/CAPEv2
    telfhash-cape reprocess --analysis /opt/CAPEv2/storage/analyses/42 [--report PATH] [-o NEW | --in-place]

Exit status: 0 done, 1 refused or failed (message on stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from . import install as inst
from .enrich import KEY, Settings, enrich


def _settings_args(p: argparse.ArgumentParser) -> None:
    d = Settings()
    p.add_argument("--index", default=None, help="telfhash-core index file for known neighbours")
    p.add_argument(
        "--threshold", type=int, default=None, help=f"TLSH distance for groups and neighbours (default {d.threshold})"
    )
    p.add_argument("--max-file-size", default=None, help=f"bytes, K/M/G accepted (default {d.max_file_size})")
    p.add_argument(
        "--timeout", type=float, default=None, help=f"seconds per file (default {d.timeout:g}; 0: no worker)"
    )
    p.add_argument(
        "--max-neighbours", type=int, default=None, help=f"known samples listed per file (default {d.max_neighbours})"
    )
    p.add_argument("--max-files", type=int, default=None, help=f"distinct ELF files hashed (default {d.max_files})")
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds for all files of an analysis (default 0: a quarter of CAPE's processing timeout)",
    )
    p.add_argument(
        "--detections",
        action="store_true",
        default=None,
        help="add CAPE family detections from labelled known neighbours",
    )
    p.add_argument(
        "--detection-distance",
        type=int,
        default=None,
        help=f"... at this TLSH distance or closer (default {d.detection_distance})",
    )


def _settings(args, base: dict | None = None) -> Settings:
    opts = dict(base or {})
    for name in (
        "index",
        "threshold",
        "max_file_size",
        "timeout",
        "max_neighbours",
        "max_files",
        "budget",
        "detections",
        "detection_distance",
    ):
        v = getattr(args, name, None)
        if v is not None:
            opts[name] = v
    if getattr(args, "disabled", False):
        opts["enabled"] = False
    if getattr(args, "index_add", False):
        opts["index_add"] = True
    return Settings.from_options(opts)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="telfhash-cape", description="telfhash for CAPEv2: module installer and offline report enrichment"
    )
    sub = p.add_subparsers(dest="command", required=True)

    pi = sub.add_parser("install", help="write the processing module and its [telfhash] drop-in into a CAPE checkout")
    pi.add_argument("--cape-root", required=True, help="the CAPEv2 checkout (e.g. /opt/CAPEv2)")
    _settings_args(pi)
    pi.add_argument("--disabled", action="store_true", help="write the drop-in with enabled = no")
    pi.add_argument("--index-add", action="store_true", help="record each analysis' ELF files in the index")
    pi.add_argument(
        "--overwrite-config", action="store_true", help="replace an existing drop-in of ours (default: keep it)"
    )
    pi.add_argument(
        "--ui", action="store_true", help="also patch CAPE's templates and search for telfhash (reverted by uninstall)"
    )
    pi.set_defaults(func=_cmd_install)

    pu = sub.add_parser("uninstall", help="remove the files written by install (and nothing else)")
    pu.add_argument("--cape-root", required=True)
    pu.set_defaults(func=_cmd_uninstall)

    ps = sub.add_parser("status", help="show whether the module is installed and what it would read")
    ps.add_argument("--cape-root", required=True)
    ps.set_defaults(func=_cmd_status)

    pr = sub.add_parser("reprocess", help="enrich an existing report.json offline, writing a new report")
    pr.add_argument("--analysis", required=True, help="the analysis folder (storage/analyses/<id>)")
    pr.add_argument("--report", help="the report to read (default ANALYSIS/reports/report.json)")
    out = pr.add_mutually_exclusive_group()
    out.add_argument("-o", "--output", help="where to write the new report (default REPORT_DIR/report.telfhash.json)")
    out.add_argument("--in-place", action="store_true", help="replace the report itself (atomically)")
    pr.add_argument("--force", action="store_true", help="overwrite an existing output file")
    pr.add_argument("--cape-root", help="read settings from this checkout's telfhash drop-in; options below override")
    _settings_args(pr)
    pr.add_argument("--index-add", action="store_true", help="record the analysis' ELF files in the index")
    pr.add_argument("--summary", action="store_true", help="also print the telfhash summary as JSON on stdout")
    pr.set_defaults(func=_cmd_reprocess)
    return p


def _err(msg: str) -> int:
    print(f"telfhash-cape: {msg}", file=sys.stderr)
    return 1


def _cmd_install(args) -> int:
    s = _settings(args)
    for e in s.errors:
        return _err(e)
    done = inst.install(args.cape_root, s, overwrite_config=args.overwrite_config, ui=args.ui)
    for line in done:
        print(line)
    print("Restart CAPE's processing (e.g. systemctl restart cape-processor) to load the module.")
    if args.ui:
        print("Restart CAPE's web UI (e.g. systemctl restart cape-web) to show telfhash there.")
    from . import env

    for problem in env.check()["problems"]:
        print(f"telfhash-cape: warning: {problem}", file=sys.stderr)
    return 0


def _cmd_uninstall(args) -> int:
    done, refused = inst.uninstall(args.cape_root)
    for line in done:
        print(line)
    for line in refused:
        print(line, file=sys.stderr)
    return 1 if refused else 0


def _cmd_status(args) -> int:
    st = inst.status(args.cape_root)
    print(f"module: {st['module']}")
    print(f"config: {st['config']}")
    bad = not (st["module"].state.startswith("ours") and st["config"].state.startswith("ours"))
    s = st.get("settings")
    if s is not None:
        print("settings (as CAPE reads them): " + ", ".join(f"{k}={v!r}" for k, v in s.to_dict().items()))
        for e in s.errors:
            print(f"  warning: {e}")
    if st.get("settings_error"):
        print(
            f"settings: CAPE CANNOT READ its processing configuration, so it processes nothing: {st['settings_error']}"
        )
        bad = True
    elif s is None:
        print("settings: no [telfhash] section in CAPE's processing configuration")
    for other in st["other_sections"]:
        print(f"note: {other} also has a [telfhash] section")
    try:
        import telfhash_core

        print(f"telfhash-core {telfhash_core.__version__} importable by {sys.executable}")
    except Exception as exc:  # pragma: no cover - this very package imports it
        print(f"telfhash-core NOT importable by {sys.executable}: {exc}")
    e = st["environment"]
    pe, cs, tl = e["pyelftools"], e["capstone"], e["tlsh"]
    verdict = lambda ok: "known good" if ok else "NOT KNOWN GOOD"  # noqa: E731
    print(f"pyelftools {pe['version']}: {verdict(pe['known_good'])}")
    print(f"capstone {cs['version']}: {verdict(cs['known_good'])}")
    dists = ", ".join(f"{d} {v}" for d, v in tl["distributions"].items()) or "no TLSH distribution installed"
    owner = f"; the tlsh file on disk is {tl['owner']}'s" if tl["owner"] else ""
    print(f"tlsh: {'importable' if tl['importable'] else 'NOT IMPORTABLE'} ({dists}{owner})")
    for problem in e["problems"]:
        print(f"problem: {problem}")
    bad = bad or not e["ok"]
    ui_states = st["ui"]
    applied = sum(1 for _, x in ui_states if x == "applied")
    print(f"ui: {applied} of {len(ui_states)} patches applied" + ("" if applied else " (install --ui adds them)"))
    for p, x in ui_states:
        if x in ("edited", "changed") and applied:
            print(f"  {p.rel}: {p.what}: {x}")
    return 1 if bad else 0


def _conf_settings(root: str) -> dict:
    """The [telfhash] options as CAPE reads them; InstallError when there are none."""
    options, error = inst.cape_settings(root)
    if error:
        raise inst.InstallError(f"CAPE cannot read its processing configuration under {root}: {error}")
    if options is None:
        raise inst.InstallError(
            f"no [telfhash] section in CAPE's processing configuration under {root} "
            "(telfhash-cape install writes one; leave out --cape-root to use the defaults)"
        )
    return dict(options)


def _cmd_reprocess(args) -> int:
    analysis = Path(args.analysis).expanduser()
    if not analysis.is_dir():
        return _err(f"{analysis}: no such analysis folder")
    report = Path(args.report).expanduser() if args.report else analysis / "reports" / "report.json"
    if not report.is_file():
        return _err(f"{report}: no such report")
    if args.in_place:
        dest = report
    else:
        dest = Path(args.output).expanduser() if args.output else report.with_name("report.telfhash.json")
        if dest.resolve() == report.resolve():
            return _err("the output is the report itself: use --in-place to replace it")
        if dest.exists() and not args.force:
            return _err(f"{dest} exists (use --force to overwrite it)")
    base = _conf_settings(args.cape_root) if args.cape_root else {}
    s = _settings(args, base)
    for e in s.errors:
        print(f"telfhash-cape: warning: {e}", file=sys.stderr)
    try:
        with open(report, "rb") as fh:
            results = json.load(fh)
    except (OSError, ValueError, RecursionError) as exc:
        return _err(f"{report}: cannot read the report as JSON ({type(exc).__name__}: {exc})")
    if not isinstance(results, dict):
        return _err(f"{report}: not a CAPE report (the top level is not an object)")
    summary = enrich(results, s, str(analysis))
    results[KEY] = summary
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".telfhash-", dir=dest.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(results, fh, ensure_ascii=False)
        if args.in_place:
            try:
                os.chmod(tmp, report.stat().st_mode & 0o777)
            except OSError:
                pass
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    print(
        f"{dest}: {summary.get('elf_files', 0)} ELF files, {summary.get('hashed', 0)} with a telfhash, "
        f"{len(summary.get('groups') or [])} groups"
        + (f", {len(summary['errors'])} errors" if summary.get("errors") else ""),
        file=sys.stderr,
    )
    for e in summary.get("errors") or []:
        print(f"telfhash-cape: {e}", file=sys.stderr)
    if args.summary:
        json.dump(summary, sys.stdout, indent=2)
        print()
    return 0


def _quiet_stdout() -> None:
    """After a closed pipe (``status | head``): send the rest to /dev/null, so that neither the
    remaining output nor the flush at exit raise."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:
        _quiet_stdout()
        return 1
    except inst.InstallError as exc:
        return _err(str(exc))
    except KeyboardInterrupt:
        return _err("interrupted")
    except OSError as exc:
        return _err(f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # no traceback reaches the user
        return _err(f"unexpected error: {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    sys.exit(main())
