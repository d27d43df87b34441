"""What the Assemblyline service computes for one file, without Assemblyline's classes.

The service (:mod:`.service`) only turns an :class:`Analysis` into result sections, so the work
itself (settings from the service configuration, hashing under a time budget, the index lookup)
can be reasoned about, and tested for hostile input, apart from the runtime. Everything here
reports problems in the returned objects; nothing raises for a bad file or a bad setting.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import telfhash_core as tc

# under Assemblyline's logger, whose handlers the runtime sets up (it raises the root logger to CRITICAL)
log = logging.getLogger("assemblyline.service.telfhash.analysis")

COMPANION_FIELD = "telfhash_x"
MAX_LABEL = 200  # characters of a family label shown or tagged
MAX_RELATED = 50  # telfhashes of one submission read back from its temporary data, at most
# Assemblyline drops a temporary-data value whose str() is longer than its
# submission.max_temp_data_length (4096 by default): stay under it
MAX_TEMP_CHARS = 4000
MAX_TEMP_NAME = 40

DEFAULTS: dict[str, Any] = {
    "index_path": "",
    "threshold": 50,
    "max_neighbours": 10,
    "max_file_size": 100 * 1024 * 1024,
    "time_budget": 20.0,
    "companion": True,
}


# ----------------------------------------------------------------------------- settings


@dataclass
class Settings:
    """The service configuration, checked.  ``problems`` lists settings that were out of range
    and replaced by their defaults (shown to the analyst, never raised)."""

    index_path: str = ""
    threshold: int = tc.DEFAULT_THRESHOLD
    max_neighbours: int = 10
    max_file_size: int = 100 * 1024 * 1024
    time_budget: float = 20.0
    companion: bool = True  # compute telfhash_x (about half of the hashing time)
    problems: list[str] = field(default_factory=list)

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> Settings:
        config = dict(config or {})
        s = cls()
        s.index_path = str(config.get("index_path") or "").strip()
        s.threshold = _int_setting(config, "threshold", 0, 1000, s.problems)
        s.max_neighbours = _int_setting(config, "max_neighbours", 0, 1000, s.problems)
        s.max_file_size = _int_setting(config, "max_file_size", 1, 1 << 40, s.problems)
        s.time_budget = _float_setting(config, "time_budget", 0.0, 3600.0, s.problems)
        s.companion = _bool_setting(config, "companion", s.problems)
        return s


def _bool_setting(config: dict[str, Any], key: str, problems: list[str]) -> bool:
    value = config.get(key, DEFAULTS[key])
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    problems.append(f"{key}={value!r} is not true or false; using {DEFAULTS[key]}")
    return bool(DEFAULTS[key])


def _int_setting(config: dict[str, Any], key: str, low: int, high: int, problems: list[str]) -> int:
    value = config.get(key, DEFAULTS[key])
    try:
        if isinstance(value, bool):
            raise TypeError(key)
        number = int(str(value).strip()) if not isinstance(value, int) else value
        if not low <= number <= high:
            raise ValueError
        return number
    except (TypeError, ValueError):
        problems.append(f"{key}={value!r} is not a whole number in [{low}, {high}]; using {DEFAULTS[key]}")
        return int(DEFAULTS[key])


def _float_setting(config: dict[str, Any], key: str, low: float, high: float, problems: list[str]) -> float:
    value = config.get(key, DEFAULTS[key])
    try:
        if isinstance(value, bool):
            raise TypeError(key)
        number = float(value)
        if not (math.isfinite(number) and low <= number <= high):
            raise ValueError
        return number
    except (TypeError, ValueError):
        problems.append(f"{key}={value!r} is not a number in [{low}, {high}]; using {DEFAULTS[key]}")
        return float(DEFAULTS[key])


# ----------------------------------------------------------------------------- time budget


class BudgetExceeded(BaseException):
    """Raised inside the hashing when a file's time budget is spent.  A BaseException, so that
    no ``except Exception`` on the way turns it into an ordinary per-file error."""


class _Watchdog:
    """One daemon thread for the whole process that raises :class:`BudgetExceeded` in a thread
    whose budget has run out (``PyThreadState_SetAsyncExc``).  Arming and disarming cost a lock
    and two assignments, so a budget costs nothing measurable per file (a timer thread per file
    cost about 1 ms)."""

    TICK = 0.02  # seconds: how late past its budget a block can be interrupted, at most

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: dict[int, float] = {}  # thread id -> deadline (monotonic)
        self._fired: set[int] = set()
        self._thread: threading.Thread | None = None

    def arm(self, tid: int, seconds: float) -> None:
        with self._lock:
            self._armed[tid] = time.monotonic() + seconds
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="telfhash-budget", daemon=True)
                self._thread.start()

    def disarm(self, tid: int) -> None:
        with self._lock:
            self._armed.pop(tid, None)
            if tid in self._fired:  # the block may have ended before the exception was raised: withdraw it
                self._fired.discard(tid)
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), None)

    def _run(self) -> None:
        while True:
            time.sleep(self.TICK)
            now = time.monotonic()
            with self._lock:
                for tid, deadline in list(self._armed.items()):
                    if now >= deadline:
                        del self._armed[tid]
                        self._fired.add(tid)
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(
                            ctypes.c_ulong(tid), ctypes.py_object(BudgetExceeded)
                        )


_WATCHDOG = _Watchdog()


@contextmanager
def time_budget(seconds: float) -> Iterator[bool]:
    """Interrupt the block with :class:`BudgetExceeded` after ``seconds`` of wall time.

    Assemblyline's runtime runs tasks in a worker thread, where no signal can reach, so a
    watchdog thread raises the exception in the hashing thread.  Python raises it between
    bytecodes: the hashing returns to Python often (capstone is read in chunks), so it stops
    soon after the budget.  With ``seconds <= 0`` there is no budget (yields False); then only
    the file size limit bounds the work.
    """
    if not seconds > 0:
        yield False
        return
    tid = threading.get_ident()
    _WATCHDOG.arm(tid, seconds)
    try:
        yield True
    finally:
        _WATCHDOG.disarm(tid)


# ----------------------------------------------------------------------------- the analysis


@dataclass
class Neighbour:
    """One indexed sample near the file."""

    sha256: str
    distance: int
    by: str  # "telfhash" or "telfhash_x"
    label: str | None
    arch: str | None
    path: str | None
    source: str | None


@dataclass
class Analysis:
    """Everything the service reports for one file."""

    result: tc.Result
    seconds: float = 0.0
    timed_out: bool = False
    error: str | None = None  # an unexpected failure, in words (the service still returns a result)
    own_entry: dict | None = None  # the file's own index entry, when the index knows it
    neighbours: list[Neighbour] = field(default_factory=list)
    index_note: str | None = None  # why there is no neighbour list (no index, unreadable index, ...)

    @property
    def telfhash_x(self) -> str | None:
        value = self.result.extra.get(COMPANION_FIELD)
        return value if isinstance(value, str) and value else None

    def labelled(self, threshold: int) -> dict[str, int]:
        """Family label -> smallest distance, for labelled neighbours within ``threshold``."""
        out: dict[str, int] = {}
        for n in self.neighbours:
            if n.label and n.distance <= threshold:
                out[n.label] = min(out.get(n.label, n.distance), n.distance)
        return out


def hash_with_budget(path: str, name: str, settings: Settings) -> Analysis:
    """Hash ``path`` (shown as ``name``) with the companion value, within the time budget."""
    start = time.perf_counter()
    try:
        with time_budget(settings.time_budget):
            fields = (COMPANION_FIELD,) if settings.companion else ()
            r = tc.hash_file(path, max_size=settings.max_file_size, fields=fields)
    except BudgetExceeded:
        r = tc.Result(
            file=name, reason=tc.Reason.INTERNAL, detail=f"over the time budget of {settings.time_budget:g} s"
        )
        return Analysis(r, time.perf_counter() - start, timed_out=True)
    except Exception as exc:  # a bug in the core must not become a service error: report it
        log.exception("hashing %s failed", name)
        r = tc.Result(file=name, reason=tc.Reason.INTERNAL, detail=f"{type(exc).__name__}: {exc}")
        return Analysis(r, time.perf_counter() - start, error=r.detail)
    r.file = name
    return Analysis(r, time.perf_counter() - start)


def clean_label(value: Any) -> str | None:
    """A family label fit to show and tag: printable, one line, at most MAX_LABEL characters."""
    if not isinstance(value, str):
        return None
    text = "".join(ch if ch.isprintable() else " " for ch in value).strip()
    return text[:MAX_LABEL] or None


class IndexReader:
    """The telfhash-core index, opened once per service process and reopened when it fails."""

    def __init__(self, path: str):
        self.path = path
        self._index: Any = None

    def _open(self) -> Any:
        if self._index is None:
            from telfhash_core.store.index import Index

            if not os.path.isfile(self.path):
                raise ValueError(f"no index file at {self.path}")
            self._index = Index(self.path, create=False)
        return self._index

    def close(self) -> None:
        if self._index is not None:
            index, self._index = self._index, None
            try:
                index.close()
            except Exception as exc:  # noqa: BLE001  e.g. closed from another thread: nothing left to do
                log.debug("closing index %s: %s", self.path, exc)

    def annotate(self, analysis: Analysis, sha256: str | None, settings: Settings) -> None:
        """Fill ``analysis.own_entry`` and ``analysis.neighbours`` (nearest first)."""
        try:
            index = self._open()
            analysis.own_entry = _own_entry(index, sha256)
            analysis.neighbours = _neighbours(index, analysis, sha256, settings)
        except Exception as exc:  # noqa: BLE001  unreadable, locked or corrupt index: the hash is still reported
            log.warning("index %s: %s", self.path, exc)
            analysis.index_note = f"index unavailable: {exc}"
            self.close()


def _own_entry(index: Any, sha256: str | None) -> dict | None:
    if not sha256:
        return None
    return index.lookup(sha256)


def _neighbours(index: Any, analysis: Analysis, sha256: str | None, settings: Settings) -> list[Neighbour]:
    if settings.max_neighbours == 0:
        return []
    own = (sha256 or "").lower()
    found: dict[str, Neighbour] = {}
    queries: list[tuple[str, str]] = []
    if analysis.result.telfhash:
        queries.append(("telfhash", analysis.result.telfhash))
    if analysis.telfhash_x:
        queries.append((COMPANION_FIELD, analysis.telfhash_x))
    for key, value in queries:
        # one more than needed, because the file itself may be among them
        for m in index.search(value, max_distance=settings.threshold, limit=settings.max_neighbours + 1, key=key):
            if m.sha256 == own:
                continue
            old = found.get(m.sha256)
            if old is None or m.distance < old.distance:
                found[m.sha256] = Neighbour(
                    sha256=m.sha256,
                    distance=int(m.distance),
                    by=key,
                    label=clean_label(m.label),
                    arch=m.arch,
                    path=m.path,
                    source=m.source,
                )
    ordered = sorted(found.values(), key=lambda n: (n.distance, n.by != "telfhash", n.sha256))
    return ordered[: settings.max_neighbours]


def related_in_submission(telfhash: str | None, seen: Any, own_sha256: str) -> list[dict[str, Any]]:
    """Distances from this file's telfhash to those of the submission's other ELF files, as
    shared through Assemblyline's temporary submission data (entries that are not well formed
    are ignored)."""
    if not telfhash or not isinstance(seen, list):
        return []
    out = []
    for item in seen[:MAX_RELATED]:
        if not isinstance(item, dict):
            continue
        other, sha = item.get("telfhash"), item.get("sha256")
        if not isinstance(sha, str) or sha == own_sha256 or not isinstance(other, str) or not tc.is_digest(other):
            continue
        try:
            d = tc.distance(telfhash, other)
        except ValueError:
            continue
        name = item.get("name")
        out.append({"sha256": sha, "name": name if isinstance(name, str) else "", "distance": d})
    return sorted(out, key=lambda x: (x["distance"], x["sha256"]))


def remember(seen: Any, sha256: str, name: str, telfhash: str | None) -> list[dict[str, Any]]:
    """The submission's list of hashed ELF files with this one added, while the list stays
    under Assemblyline's size limit for a temporary-data value (about 18 files)."""
    items = [i for i in seen[:MAX_RELATED] if isinstance(i, dict)] if isinstance(seen, list) else []
    if telfhash and not any(i.get("sha256") == sha256 for i in items):
        grown = [*items, {"sha256": sha256, "name": name[-MAX_TEMP_NAME:], "telfhash": telfhash}]
        if len(str(grown)) <= MAX_TEMP_CHARS:  # else Assemblyline would drop the whole list
            return grown
    return items
