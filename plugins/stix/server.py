"""A local TAXII 2.1 server for trying the exchange out: medallion with its memory backend, one
readable and writable collection, listening on 127.0.0.1 only.  Not for production (medallion
says so itself): the data lives in memory and is gone when the server stops.

    TELFHASH_TAXII_USER=alice TELFHASH_TAXII_PASSWORD=... telfhash stix serve --port 8000

The server is a child process: it stops when ``serve`` gets any stop signal, and when ``serve`` is
killed outright (a watchdog pipe on its stdin reaches end of file; PR_SET_PDEATHSIG on Linux
too).  Its configuration, password included, is passed through a pipe: nothing is written to disk.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

# Fixed, so the collection URL is the same at every start.
COLLECTION_ID = str(uuid.uuid5(uuid.UUID("5c0d981b-1f1b-40b9-9e26-5e3f28f2c83c"), "telfhash clusters"))
API_ROOT = "telfhash"


def collection_url(host: str, port: int) -> str:
    return f"http://{host}:{port}/{API_ROOT}/collections/{COLLECTION_ID}/"


def server_config(host: str, port: int, user: str, password: str) -> tuple[dict, dict]:
    """medallion's (data, config) for one readable and writable collection."""
    api = f"http://{host}:{port}/{API_ROOT}/"
    data = {
        "/discovery": {
            "title": "telfhash-core local TAXII server",
            "description": "medallion, memory backend: the data is gone when the server stops",
            "contact": "localhost",
            "default": api,
            "api_roots": [api],
        },
        API_ROOT: {
            "information": {
                "title": "telfhash",
                "description": "telfhash clusters as STIX 2.1",
                "versions": ["application/taxii+json;version=2.1"],
                "max_content_length": 256 * 1024 * 1024,
            },
            "status": [],
            "collections": [
                {
                    "id": COLLECTION_ID,
                    "title": "telfhash clusters",
                    "description": "bundles from telfhash stix export",
                    "can_read": True,
                    "can_write": True,
                    "media_types": ["application/stix+json;version=2.1"],
                    "objects": [],
                    "manifest": [],
                }
            ],
        },
    }
    config = {
        # medallion's memory backend with linear-time reads that accept Extension Definitions
        "backend": {"module": "telfhash_plugins.stix.taxii_backend", "module_class": "TelfhashMemoryBackend"},
        "users": {user: password},
        "taxii": {"max_page_size": 1000},
    }
    return data, config


def _pipe_with(text: str) -> int:
    """A pipe's read end holding ``text`` (written by a thread: no size limit); nothing on disk."""
    r, w = os.pipe()

    def feed() -> None:
        with os.fdopen(w, "w", encoding="utf-8") as fh:
            try:
                fh.write(text)
            except BrokenPipeError:
                pass

    threading.Thread(target=feed, daemon=True).start()
    return r


def _die_with_parent(parent: int):
    """preexec_fn: the kernel sends SIGTERM to medallion when the process that started it dies,
    however it dies (SIGKILL included)."""

    def run() -> None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return run


PR_SET_PDEATHSIG = 1
STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP", "SIGINT", "SIGQUIT") if hasattr(signal, n))


def start(port: int, user: str, password: str, host: str = "127.0.0.1", *, quiet: bool = False) -> subprocess.Popen:
    """Start medallion (a child process that dies with this one); its data and config, password
    included, reach it through pipes and are never written to disk."""
    try:
        import medallion  # noqa: F401
    except ImportError:
        raise RuntimeError(
            "medallion is not installed (extra telfhash-core[stix]): pip install -e '.[stix]' in the telfhash-core clone"
        ) from None
    data, config = server_config(host, port, user, password)
    data_fd = _pipe_with(json.dumps(data))
    config["backend"]["filename"] = f"/dev/fd/{data_fd}"
    config_fd = _pipe_with(json.dumps(config))
    out = subprocess.DEVNULL if quiet else None
    cmd = [sys.executable, "-c", _WATCHDOG, "--host", host, "--port", str(port), f"/dev/fd/{config_fd}"]
    try:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,  # the watchdog pipe: it closes when this process ends, however it ends
            stdout=out,
            stderr=out,
            pass_fds=(data_fd, config_fd),
            preexec_fn=_die_with_parent(os.getpid()) if sys.platform.startswith("linux") else None,  # noqa: PLW1509
        )
    finally:
        os.close(data_fd)
        os.close(config_fd)


# medallion's own entry point behind a watchdog: the server exits when its stdin -- a pipe whose
# other end only the starting process holds -- reaches end of file, i.e. when that process is
# gone (any signal, SIGKILL included, on any POSIX system); PR_SET_PDEATHSIG does the same on Linux.
_WATCHDOG = """
import os, sys, threading
def _watch():
    try:
        while os.read(0, 4096):
            pass
    finally:
        os._exit(0)
threading.Thread(target=_watch, daemon=True).start()
from medallion.scripts.run import main
sys.argv[0] = "medallion"
main()
"""


def wait_ready(proc: subprocess.Popen, host: str, port: int, timeout: float = 30.0) -> bool:
    """True once the server accepts connections; False when it exited or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def stop(proc: subprocess.Popen) -> None:
    if proc.stdin is not None:
        try:
            proc.stdin.close()  # the watchdog sees end of file
        except OSError:
            pass
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def serve(port: int, user: str, password: str, host: str = "127.0.0.1") -> int:
    """Run medallion until this process gets SIGINT/SIGTERM/SIGHUP/SIGQUIT (the server stops
    with it; on SIGKILL the kernel stops it); returns its exit status.  Prints ``ready: <URL>``
    once the server answers."""

    def _stop(signum, frame):
        raise KeyboardInterrupt

    for sig in STOP_SIGNALS:
        signal.signal(sig, _stop)
    proc = None
    try:
        proc = start(port, user, password, host, quiet=True)
        if not wait_ready(proc, host, port):
            code = proc.poll()
            stop(proc)
            raise RuntimeError(
                f"the TAXII server did not start on {host}:{port} (exit status {code}; is the port in use?)"
            )
        print(f"ready: {collection_url(host, port)}", flush=True)
        print("stop with Ctrl-C; the data lives in memory only", flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc is not None:
            stop(proc)
