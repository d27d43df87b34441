"""``telfhash-cuckoo3``: put the Cuckoo 3 plugin in place, check it, or take it out.

    telfhash-cuckoo3 install   [--cwd ~/.cuckoocwd] [--no-web] [--disabled] [--no-dropped] ...
    telfhash-cuckoo3 status    [--cwd ...]
    telfhash-cuckoo3 uninstall [--cwd ...] [--purge]

Run it with the Python of Cuckoo's environment (where ``cuckoo`` is installed), then restart
Cuckoo.  Exit status: 0 done (status: everything in place), 1 something failed or is missing
(status: run ``install`` again, e.g. after a Cuckoo upgrade), 2 bad usage.
"""

from __future__ import annotations

import argparse
import sys

from . import install as inst


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="telfhash-cuckoo3", description="telfhash for Cuckoo 3: plugin installer")
    sub = p.add_subparsers(dest="command", required=True)
    cwd_help = "the Cuckoo working directory (default: $CUCKOO_CWD or ~/.cuckoocwd)"

    pi = sub.add_parser("install", help="write the plugin drop-ins, the settings file and the web hook")
    pi.add_argument("--cwd", help=cwd_help)
    pi.add_argument("--no-web", action="store_true", help="do not add the block to web/web_local_settings.py")
    pi.add_argument("--disabled", action="store_true", help="write the settings file with enabled: false")
    pi.add_argument("--no-dropped", action="store_true", help="settings: do not hash dropped files (post stage)")
    pi.add_argument("--index", help="settings: telfhash-core index file for known neighbours")
    pi.add_argument("--threshold", type=int, help="settings: TLSH distance for groups and neighbours")
    pi.add_argument("--timeout", type=int, help="settings: seconds per file (0: no worker process)")
    pi.add_argument("--max-file-size", type=int, help="settings: bytes")
    pi.add_argument("--overwrite-config", action="store_true", help="replace an existing telfhash.yaml")
    pi.set_defaults(func=_cmd_install)

    ps = sub.add_parser("status", help="show what is in place (exit 1 if something is missing)")
    ps.add_argument("--cwd", help=cwd_help)
    ps.set_defaults(func=_cmd_status)

    pu = sub.add_parser("uninstall", help="remove the drop-ins and the web hook (and, with --purge, the settings)")
    pu.add_argument("--cwd", help=cwd_help)
    pu.add_argument("--purge", action="store_true", help="also remove conf/processing/telfhash.yaml")
    pu.set_defaults(func=_cmd_uninstall)
    return p


def _print(items: list[inst.Item]) -> None:
    for it in items:
        print(f"{it.what:34} {it.state:12} {it.path}")


def _cmd_install(args) -> int:
    values: dict = {}
    if args.disabled:
        values["enabled"] = False
    if args.no_dropped:
        values["dropped"] = False
    for name in ("index", "threshold", "timeout", "max_file_size"):
        v = getattr(args, name)
        if v is not None:
            values[name] = v
    items = inst.install(args.cwd, web=not args.no_web, values=values, overwrite_config=args.overwrite_config)
    _print(items)
    bad = [it for it in items if not it.ok()]
    for it in bad:
        print(f"telfhash-cuckoo3: {it.what}: {it.state} ({it.path})", file=sys.stderr)
    if not bad:
        print("done; restart Cuckoo to load the plugin")
    return 1 if bad else 0


def _cmd_status(args) -> int:
    items = inst.status(args.cwd)
    _print(items)
    needed = [it for it in items if it.what != "web"]  # the web hook is optional (install --no-web)
    return 0 if all(it.state == "installed" or it.state.startswith("missing (defaults") for it in needed) else 1


def _cmd_uninstall(args) -> int:
    items = inst.uninstall(args.cwd, purge=args.purge)
    _print(items)
    return 1 if any(not it.ok() for it in items) else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
