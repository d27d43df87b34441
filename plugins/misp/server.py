"""``telfhash-misp-modules``: start misp-modules on loopback with the telfhash modules loaded.

misp-modules loads extra modules from ``ROOT/expansion/*.py`` when started with ``-c ROOT``.  This
command writes two small entry files there (``telfhash_expansion.py`` and ``telfhash_hover.py``; the
logic stays in :mod:`telfhash_plugins.misp`) and runs ``misp-modules -l ADDRESS -p PORT -c ROOT``.

    telfhash-misp-modules                        # 127.0.0.1:6666, modules in a temporary ROOT
    telfhash-misp-modules -p 6667 --index /srv/telfhash.idx
    telfhash-misp-modules --write-root /opt/telfhash-misp   # only write ROOT (for a service unit)
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

# the index used when MISP's index_path setting is empty (read by .module; not imported here so
# that --write-root stays quick)
INDEX_ENV = "TELFHASH_MISP_INDEX"

MODULE_FILES = {
    "telfhash_expansion.py": "expansion",
    "telfhash_hover.py": "hover",
}

_ENTRY_TEMPLATE = '''"""telfhash {kind} module for misp-modules (written by telfhash-misp-modules).

The logic lives in the installed package telfhash_plugins.misp; this file only exposes it.
"""

from telfhash_plugins.misp.{kind} import (  # noqa: F401
    dict_handler,
    handler,
    introspection,
    mispattributes,
    moduleconfig,
    moduleinfo,
    version,
)
'''


def write_root(root: str | os.PathLike) -> Path:
    """Write ``ROOT/expansion/telfhash_{expansion,hover}.py``; returns ROOT."""
    root = Path(root)
    folder = root / "expansion"
    folder.mkdir(parents=True, exist_ok=True)
    for filename, kind in MODULE_FILES.items():
        target = folder / filename
        text = _ENTRY_TEMPLATE.format(kind=kind)
        if not target.exists() or target.read_text() != text:
            target.write_text(text)
    return root


def misp_modules_command(root: str | os.PathLike, listen: str, port: int, debug: bool = False) -> list[str]:
    """The command line that runs misp-modules with ``root`` as its custom modules folder."""
    exe = shutil.which("misp-modules", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    cmd = [exe] if exe else [sys.executable, "-m", "misp_modules"]
    cmd += ["-l", listen, "-p", str(port), "-c", str(root)]
    if debug:
        cmd.append("-d")
    return cmd


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="telfhash-misp-modules",
        description="Run misp-modules with the telfhash expansion and hover modules.",
    )
    p.add_argument("-l", "--listen", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("-p", "--port", type=int, default=6666, help="port (default 6666, misp-modules' usual)")
    p.add_argument("--root", help="custom modules folder to use (kept); default: a temporary folder")
    p.add_argument(
        "--index",
        help=f"telfhash index used when MISP's module setting index_path is empty (sets ${INDEX_ENV})",
    )
    p.add_argument("--write-root", metavar="DIR", help="only write the module files under DIR and print the command")
    p.add_argument("-d", "--debug", action="store_true", help="misp-modules debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.write_root:
        root = write_root(args.write_root)
        print(f"wrote {root / 'expansion'}/{{{','.join(MODULE_FILES)}}}")
        print("start with: " + " ".join(misp_modules_command(root.resolve(), args.listen, args.port)))
        return 0
    try:
        import misp_modules  # noqa: F401
    except ImportError:
        print(
            "telfhash-misp-modules: misp-modules is not installed; install it with: "
            "pip install 'telfhash-core[misp]'",
            file=sys.stderr,
        )
        return 2
    env = dict(os.environ)
    if args.index:
        index = os.path.abspath(args.index)
        if not os.path.exists(index):
            print(f"telfhash-misp-modules: index not found: {index}", file=sys.stderr)
            return 2
        env[INDEX_ENV] = index
    tmp = None
    if args.root:
        root = write_root(args.root)
    else:
        tmp = tempfile.mkdtemp(prefix="telfhash-misp-")
        root = write_root(tmp)
    cmd = misp_modules_command(root.resolve(), args.listen, args.port, args.debug)
    print("telfhash-misp-modules: " + " ".join(cmd), file=sys.stderr, flush=True)
    try:
        child = subprocess.Popen(cmd, env=env)
    except OSError as exc:
        print(f"telfhash-misp-modules: cannot start misp-modules: {exc}", file=sys.stderr)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        return 2

    def forward(signum, _frame):
        if child.poll() is None:
            child.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    try:
        while True:
            try:
                rc = child.wait()
                break
            except InterruptedError:  # pragma: no cover - wait() retries by itself on 3.5+
                continue
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    # misp-modules stops with 0 on SIGTERM/SIGINT; pass its status on
    return rc if rc >= 0 else 128 - rc


if __name__ == "__main__":
    sys.exit(main())
