"""Hashing with a time budget per file.

A hostile ELF file can make parsing slow (huge section tables, the disassembly fallback on a
large code segment).  Sandbox processing must not wait on one such file, so files are hashed in
a separate worker process (``python -m telfhash_plugins.cape.worker``) that reads one JSON
request per line on stdin and writes one JSON result per line on stdout.  When a file is not
done within the budget the worker is killed, the file is reported as ``timeout`` and a fresh
worker takes the next file.  A worker that dies (crash, out of memory) costs only the file it
was hashing.

A whole-analysis ``deadline`` bounds the sum: each file gets at most what is left of it, and
files not reached get ``budget``.  Inside CAPE one worker serves every analysis of a processing
process (:func:`shared`), so its start-up (~0.4 s of imports) is paid once, not per analysis; a
worker that has had nothing to do for ``IDLE_EXIT`` seconds, or whose parent went away, ends.

With ``timeout <= 0`` (or when no worker can be started) files are hashed in the calling
process; then only the size cap (and, between files, the deadline) bounds the work.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import selectors
import signal
import subprocess
import sys
import time
from typing import Any

IDLE_EXIT = 600.0  # seconds without a request after which a worker ends

# ----------------------------------------------------------------------------- worker side


def _serve() -> int:
    """Worker loop: ``{"path": ..., "max_size": ...}`` in, ``Result.to_dict()`` out."""
    import telfhash_core as tc

    out = sys.stdout
    # the protocol owns stdout: nothing else may print there
    sys.stdout = sys.stderr
    out.write(json.dumps({"ready": True, "version": tc.__version__}) + "\n")
    out.flush()
    idle = float(os.environ.get("TELFHASH_CAPE_WORKER_IDLE") or IDLE_EXIT)
    delay = float(os.environ.get("TELFHASH_CAPE_TEST_DELAY") or 0)  # tests: make every file slow
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin, selectors.EVENT_READ)
    while True:
        if not sel.select(idle):
            return 0  # nothing to do for a long time: the parent keeps no idle worker forever
        line = sys.stdin.readline()
        if not line:
            return 0
        try:
            req = json.loads(line)
            # a worker left behind by a parent that was killed ends by itself: SIGALRM's default
            # action terminates the process a little after the parent would have given up
            budget = float(req.get("timeout") or 0)
            if budget > 0 and hasattr(signal, "alarm"):
                signal.alarm(int(math.ceil(budget)) + 5)
            if delay:
                time.sleep(delay)
            r = tc.hash_file(req["path"], max_size=int(req.get("max_size") or (1 << 32)))
            if hasattr(signal, "alarm"):
                signal.alarm(0)
            d = r.to_dict()
            d["telfhash"] = r.telfhash
            d["reference_telfhash"] = r.reference_telfhash
        except Exception as exc:  # never let one request end the worker
            d = {"telfhash": None, "reason": "internal", "detail": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(d) + "\n")
        out.flush()


# ----------------------------------------------------------------------------- caller side


def _in_process(path: str, max_size: int) -> dict[str, Any]:
    import telfhash_core as tc

    try:
        r = tc.hash_file(path, max_size=max_size)
    except Exception as exc:  # hash_file reports bad files itself; this is a last resort
        return {"telfhash": None, "reason": "internal", "detail": f"{type(exc).__name__}: {exc}"}
    d = r.to_dict()
    d["telfhash"] = r.telfhash
    d["reference_telfhash"] = r.reference_telfhash
    return d


BUDGET_RESULT: dict[str, Any] = {
    "telfhash": None,
    "reason": "budget",
    "detail": "not hashed: the analysis' time budget was used up",
}


class Hasher:
    """Hash files one at a time, each within ``timeout`` seconds (worker process) and at most
    ``max_size`` bytes.  Use as a context manager.  :meth:`hash` never raises."""

    START_TIMEOUT = 60.0  # importing the hashing code in a fresh interpreter on a busy machine

    def __init__(
        self, timeout: float = 30.0, max_size: int = 64 << 20, python: str | None = None, deadline: float | None = None
    ):
        self.timeout = float(timeout)
        self.max_size = int(max_size)
        self.python = python or sys.executable
        self.proc: subprocess.Popen | None = None
        self.pid = os.getpid()
        self.mode = "worker" if self.timeout > 0 and self.python else "in-process"
        self.deadline = deadline  # time.monotonic() by which every file must be done
        self.notes: list[str] = []
        self.restarts = 0
        self.started = 0
        self.timed_out = False

    def begin(self, deadline: float | None) -> None:
        """Start a new analysis with this (reused) hasher: new deadline, fresh counters."""
        self.deadline = deadline
        self.notes, self.restarts, self.started = [], 0, 0
        if self.pid != os.getpid():  # a forked copy: the worker belongs to the parent
            self.proc, self.pid = None, os.getpid()
        if self.timeout > 0 and self.python:
            self.mode = "worker"

    def left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.monotonic()

    # -- worker management

    def _start(self) -> bool:
        env = dict(os.environ)
        # the worker must import the same telfhash_core as this process
        env["PYTHONPATH"] = os.pathsep.join(p for p in (*sys.path, env.get("PYTHONPATH")) if p)
        self.started += 1
        try:
            self.proc = subprocess.Popen(
                [self.python, "-m", "telfhash_plugins.cape.worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=env,
                close_fds=True,
                text=True,
                bufsize=1,
            )
        except OSError as exc:
            self._fallback(f"cannot start the hashing worker ({exc})")
            return False
        hello = self._read_line(min(self.START_TIMEOUT, max(0.0, self.left())))
        if hello is None or not hello.get("ready"):
            self._kill()
            if self.left() <= 0:
                return False  # out of time while starting: the files get "budget"
            self._fallback("the hashing worker did not start")
            return False
        return True

    def _fallback(self, why: str) -> None:
        self.mode = "in-process"
        self.notes.append(f"{why}: hashing in-process, bounded by the size cap only")

    def _kill(self) -> None:
        p, self.proc = self.proc, None
        if p is None:
            return
        try:
            p.kill()
        except OSError:
            pass
        for f in (p.stdin, p.stdout):
            try:
                if f is not None:
                    f.close()
            except Exception:
                pass
        try:
            p.wait(timeout=10)
        except Exception:
            pass

    def _read_line(self, timeout: float) -> dict | None:
        """One JSON line from the worker within ``timeout`` s; None on timeout, EOF or garbage
        (``self.timed_out`` tells the first from the others)."""
        self.timed_out = False
        p = self.proc
        if p is None or p.stdout is None:
            return None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(p.stdout, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.timed_out = True
                    return None
                if sel.select(left):
                    line = p.stdout.readline()
                    if not line:
                        return None
                    try:
                        d = json.loads(line)
                    except ValueError:
                        return None
                    return d if isinstance(d, dict) else None

    # -- public

    def hash(self, path: str) -> dict[str, Any]:
        """A result dict (``Result.to_dict()`` keys plus ``reference_telfhash``), or for a file
        that ran out of time ``{"telfhash": None, "reason": "timeout", ...}`` (its own limit) or
        ``"budget"`` (the analysis' deadline)."""
        if self.left() <= 0:
            return BUDGET_RESULT
        if self.mode == "worker" and self.proc is not None and self.proc.poll() is not None:
            self._kill()  # ended since the last file (idle exit, killed): start a new one
        if self.mode == "worker" and self.proc is None:
            self._start()
            if self.mode == "worker" and self.proc is None:
                return BUDGET_RESULT
        if self.mode != "worker":
            return _in_process(path, self.max_size)
        for attempt in range(2):
            try:
                assert self.proc is not None and self.proc.stdin is not None
                self.proc.stdin.write(
                    json.dumps({"path": path, "max_size": self.max_size, "timeout": self.timeout}) + "\n"
                )
                self.proc.stdin.flush()
                break
            except (OSError, ValueError, AssertionError):
                self._kill()
                self.restarts += 1
                if attempt or not self._start():
                    self._fallback("the hashing worker stopped accepting files")
                    return _in_process(path, self.max_size)
        wait = min(self.timeout, max(0.0, self.left()))
        d = self._read_line(wait)
        if d is None:
            alive = self.timed_out and self.proc is not None and self.proc.poll() is None
            self._kill()
            self.restarts += 1
            if alive and wait < self.timeout:
                return dict(BUDGET_RESULT, detail="the analysis' time budget ran out while hashing this file; stopped")
            if alive:
                return {
                    "telfhash": None,
                    "reason": "timeout",
                    "detail": f"not hashed within {self.timeout:g} s; stopped",
                }
            return {"telfhash": None, "reason": "worker_failed", "detail": "the hashing worker stopped on this file"}
        return d

    def close(self) -> None:
        p = self.proc
        if p is None:
            return
        try:
            if p.stdin:
                p.stdin.close()
            p.wait(timeout=5)
        except Exception:
            pass
        self._kill()

    def __enter__(self) -> Hasher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_SHARED: dict[tuple, Hasher] = {}


def shared(timeout: float, max_size: int, deadline: float | None) -> Hasher:
    """A hasher kept for the life of this process (one per setting), so that its worker serves
    the next analysis too; :meth:`Hasher.begin` has been called with ``deadline``."""
    key = (float(timeout), int(max_size), sys.executable)
    h = _SHARED.get(key)
    if h is None:
        for old in _SHARED.values():  # settings changed: end the old worker
            old.close()
        _SHARED.clear()
        h = _SHARED[key] = Hasher(timeout=timeout, max_size=max_size)
        atexit.register(h.close)
    h.begin(deadline)
    return h


if __name__ == "__main__":
    sys.exit(_serve())
