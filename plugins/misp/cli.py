"""``telfhash-misp-modules``: misp-modules with only the telfhash modules, and a ready signal.

It writes ``ROOT/expansion/telfhash_expansion.py`` and ``telfhash_hover.py`` (two import lines
each; the code stays in this package), starts misp-modules' server on them (:mod:`.server`:
only these two modules are loaded), waits until ``GET /modules`` lists both, and prints one line:

    telfhash-misp-modules: ready on http://127.0.0.1:6666 (telfhash_expansion, telfhash_hover), pid 1234

Exit status: 1 when the modules did not load, misp-modules stopped, or the port is taken
(the reason on stderr); 2 for bad usage.  In the foreground it then serves until SIGINT/SIGTERM.
With ``--background`` it returns 0 once ready and leaves the server running (its pid in
``--pid-file``), so that a script or a pasted block can query it on the next line.

    telfhash-misp-modules                              # foreground, 127.0.0.1:6666
    telfhash-misp-modules --background --pid-file /tmp/tmm.pid --log /tmp/tmm.log && curl ...
    telfhash-misp-modules --write-root /opt/telfhash-misp   # only the files, for a service unit
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

# the index used when MISP's index_path setting is empty (read by .module; not imported here: the
# launcher itself needs neither the core nor PyMISP)
INDEX_ENV = "TELFHASH_MISP_INDEX"
PRELOAD_ENV = "TELFHASH_MISP_PRELOAD"

MODULES = ("telfhash_expansion", "telfhash_hover")
MALLOC_ENV = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": str(64 << 10), "MALLOC_TRIM_THRESHOLD_": str(4 << 20)}
MODULE_FILES = {f"{name}.py": name.split("_", 1)[1] for name in MODULES}

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


def server_command(root: str | os.PathLike, listen: str, port: int, debug: bool = False) -> list[str]:
    """misp-modules' server, loading only the modules under ``root`` (see :mod:`.server`)."""
    cmd = [sys.executable, "-m", "telfhash_plugins.misp.server", "-l", listen, "-p", str(port), "-c", str(root)]
    return cmd + (["-d"] if debug else [])


def misp_modules_command(root: str | os.PathLike, listen: str, port: int, debug: bool = False) -> list[str]:
    """The plain ``misp-modules`` command (all bundled modules too), e.g. for a service unit."""
    exe = shutil.which("misp-modules", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    cmd = [exe] if exe else [sys.executable, "-m", "misp_modules"]
    return cmd + ["-l", listen, "-p", str(port), "-c", str(root)] + (["-d"] if debug else [])


def _port_taken(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host if host not in ("0.0.0.0", "::", "") else "127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _listed(base: str) -> tuple[set[str] | None, str]:
    try:
        with urllib.request.urlopen(base + "/modules", timeout=2) as r:
            modules = json.loads(r.read())
        return {str(m.get("name")) for m in modules if isinstance(m, dict)}, ""
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return None, str(exc)


def wait_ready(child: subprocess.Popen, base: str, timeout: float) -> str | None:
    """None once ``/modules`` lists every telfhash module, else why not."""
    deadline = time.monotonic() + timeout
    why = "no answer"
    while time.monotonic() < deadline:
        if child.poll() is not None:
            return f"misp-modules exited with status {child.returncode} before it was ready"
        names, why = _listed(base)
        if names is not None:
            missing = [m for m in MODULES if m not in names]
            if not missing:
                return None
            return f"misp-modules is up but did not load {', '.join(missing)} (see its log for the import error)"
        time.sleep(0.05)
    return f"misp-modules did not answer on {base}/modules within {timeout:g} s ({why})"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="telfhash-misp-modules",
        description="Run misp-modules with only the telfhash expansion and hover modules; print one line when ready.",
    )
    p.add_argument("-l", "--listen", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("-p", "--port", type=int, default=6666, help="port (default 6666, misp-modules' usual)")
    p.add_argument("--root", help="custom modules folder to use (kept); default: a temporary folder")
    p.add_argument("--index", help=f"telfhash index used when MISP's setting index_path is empty (sets ${INDEX_ENV})")
    p.add_argument(
        "--preload",
        action="store_true",
        help="load the compiled kernels (~110 MiB) at start rather than on the first sample or search",
    )
    p.add_argument("--background", action="store_true", help="return once ready and leave the server running")
    p.add_argument("--pid-file", help="with --background: write the server's pid here")
    p.add_argument("--log", help="with --background: misp-modules' log file (default ROOT/misp-modules.log)")
    p.add_argument("--ready-timeout", type=float, default=30.0, help="seconds to wait for the modules (default 30)")
    p.add_argument("--write-root", metavar="DIR", help="only write the module files under DIR and print the command")
    p.add_argument("-d", "--debug", action="store_true", help="misp-modules debug logging")
    return p


def _die_with_parent() -> None:
    """In the foreground child: stop when the launcher dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _fail(message: str, code: int = 1) -> int:
    print(f"telfhash-misp-modules: {message}", file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.write_root:
        root = write_root(args.write_root).resolve()
        print(f"wrote {root / 'expansion'}/{{{','.join(MODULE_FILES)}}}")
        print("start with: " + " ".join(server_command(root, args.listen, args.port)))
        print("or, with every bundled module too: " + " ".join(misp_modules_command(root, args.listen, args.port)))
        return 0
    try:
        import misp_modules  # noqa: F401
    except ImportError:
        return _fail(
            "misp-modules is not installed (extra telfhash-core[misp]): pip install -e '.[misp]' in the telfhash-core clone",
            2,
        )
    if not 0 < args.port < 65536:
        return _fail(f"bad port {args.port}", 2)
    env = dict(os.environ)
    # glibc keeps freed memory in per-thread arenas and raises its mmap threshold as large blocks
    # are freed, so after a burst of big samples the server would stay hundreds of MiB large.
    # Fixed thresholds hand large buffers (request bodies and tornado's 64 KiB body chunks, samples)
    # back to the system when freed.  A value already in the environment wins.
    for key, value in MALLOC_ENV.items():
        env.setdefault(key, value)
    if args.preload:
        env[PRELOAD_ENV] = "1"
    if args.index:
        index = os.path.abspath(args.index)
        if not os.path.isfile(index):
            return _fail(f"index not found: {index}", 2)
        env[INDEX_ENV] = index
    if _port_taken(args.listen, args.port):
        return _fail(f"something already listens on {args.listen}:{args.port} (another misp-modules?); use -p PORT")

    tmp = None
    if args.root:
        root = write_root(args.root).resolve()
    elif args.background:  # the server outlives us: its folder must too
        root = write_root(tempfile.mkdtemp(prefix="telfhash-misp-")).resolve()
    else:
        tmp = tempfile.mkdtemp(prefix="telfhash-misp-")
        root = write_root(tmp).resolve()
    cmd = server_command(root, args.listen, args.port, args.debug)
    host = args.listen if args.listen not in ("0.0.0.0", "::", "") else "127.0.0.1"
    base = f"http://{host}:{args.port}" if ":" not in host else f"http://[{host}]:{args.port}"
    log_handle = None
    try:
        if args.background:
            log_path = Path(args.log) if args.log else root / "misp-modules.log"
            log_handle = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
            child = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        else:
            # the launcher runs no threads, so preexec_fn is safe here
            child = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)  # noqa: PLW1509
    except OSError as exc:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        return _fail(f"cannot start misp-modules: {exc}")
    finally:
        if log_handle:
            log_handle.close()

    def stop(signum=signal.SIGTERM, _frame=None):
        if child.poll() is None:
            child.send_signal(signum)

    if not args.background:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, stop)
    try:
        why = wait_ready(child, base, args.ready_timeout)
        if why:
            stop()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
            extra = f" (log: {log_path})" if args.background else ""
            return _fail(why + extra)
        print(f"telfhash-misp-modules: ready on {base} ({', '.join(MODULES)}), pid {child.pid}", flush=True)
        if args.background:
            if args.pid_file:
                Path(args.pid_file).write_text(f"{child.pid}\n")
            return 0
        rc = child.wait()
        return rc if rc >= 0 else 128 - rc  # misp-modules stops with 0 on SIGTERM/SIGINT
    finally:
        if not args.background and child.poll() is None:
            child.kill()
            child.wait()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
