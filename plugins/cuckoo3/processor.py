"""Cuckoo 3's plugin contract, implemented: the pre-stage processor, the post-stage processor and
the reporter that writes the result into Cuckoo's own JSON files.

Cuckoo 3 (cert-ee/cuckoo3) finds plugins with ``cuckoo.common.packages.enumerate_plugins``: it
imports every module of ``cuckoo.processing.pre`` (``.post``, ``.reporting``) and keeps only the
``Processor`` (``Reporter``) subclasses *defined in a module of that package*.  The classes here
therefore run only through the short drop-in modules that ``telfhash-cuckoo3 install`` writes into
those packages (``install.DROPINS``), each defining one subclass.

* :class:`TelfhashPre` -- pre stage (no VM needed), beside ``FileInfoGather``: hashes the
  identified target, ``ctx.result["target"]`` as ``pre/prepare.py``'s ``DetermineTarget`` chose it
  (for an archive, the file picked inside it), read from ``Binaries.path(Paths.binaries(), sha256)``
  as ``pre/static.py`` does.  Result key ``telfhash``.
* :class:`TelfhashPost` -- post stage, once per task: hashes the ELF files in the task's
  ``dropped/`` folder (``TaskPaths.dropped_file``).  Result key ``telfhash``.
* :class:`TelfhashReporter` -- Cuckoo's ``JSONDump`` writes a fixed list of keys to ``pre.json``
  and ``report.json``; this reporter runs after it and adds the ``telfhash`` key to the file just
  written (atomically), leaving every other key as it was.

Problems are logged with ``ctx.log`` and added to ``ctx.errtracker`` (Cuckoo's processing errors,
``processing_errors.json``), settings errors included, whatever the file type; nothing raises into
Cuckoo.  Cuckoo's base classes are imported only when Cuckoo 3 is installed, so this module can be
imported (and its logic tested) without it.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import stat
import tempfile
from typing import Any, ClassVar

from telfhash_plugins.cape.enrich import KEY, Settings, enrich

from . import config

log = logging.getLogger(__name__)

try:  # the real base classes when running inside Cuckoo 3
    from cuckoo.processing.abtracts import Processor as _Processor  # type: ignore[import-not-found]
    from cuckoo.processing.abtracts import Reporter as _Reporter  # type: ignore[import-not-found]

    HAVE_CUCKOO3 = True
except ImportError:  # importable without Cuckoo 3; these follow cuckoo/processing/abtracts.py

    class _Processor:  # type: ignore[no-redef]
        NAME = ""
        ORDER = 999
        KEY = ""
        PLATFORMS: ClassVar[list] = []
        CATEGORY: ClassVar[list] = []

        def __init__(self, processingctx):
            self.ctx = processingctx

        @classmethod
        def enabled(cls):
            return True

        @classmethod
        def init_once(cls):
            pass

        def init(self):
            pass

        def start(self):
            raise NotImplementedError

        def cleanup(self):
            pass

    class _Reporter:  # type: ignore[no-redef]
        ORDER = 999
        CATEGORY: ClassVar[list] = []

        def __init__(self, processingctx):
            self.ctx = processingctx
            self.handlers: dict[str, Any] = {}
            for stage, name in (("pre", "report_pre_analysis"), ("post", "report_post_analysis")):
                if getattr(type(self), name) is not getattr(_Reporter, name):  # implemented by the subclass
                    self.handlers[stage] = getattr(self, name)

        @classmethod
        def enabled(cls):
            return True

        @classmethod
        def init_once(cls):
            pass

        def init(self):
            pass

        def report_identification(self):
            pass

        def report_pre_analysis(self):
            pass

        def report_post_analysis(self):
            pass

        def cleanup(self):
            pass

    HAVE_CUCKOO3 = False

ELF_MAGIC = b"\x7fELF"


# ----------------------------------------------------------------------------- settings (once per worker)


class _Conf:
    """The settings a worker read at plugin start; ``reload()`` re-reads them."""

    settings: Settings | None = None
    dropped: bool = True
    errors: ClassVar[list[str]] = []

    @classmethod
    def get(cls) -> tuple[Settings, bool, list[str]]:
        if cls.settings is None:
            cls.reload()
        assert cls.settings is not None
        return cls.settings, cls.dropped, list(cls.errors)

    @classmethod
    def reload(cls, path: str | os.PathLike | None = None) -> None:
        cls.settings, cls.dropped, cls.errors = config.load(path)
        for e in cls.errors:
            log.warning("%s", e)


def reload_settings(path: str | os.PathLike | None = None) -> None:
    """Re-read the YAML file (tests, or a worker told that the file changed)."""
    _Conf.reload(path)
    _close_hasher()


# ----------------------------------------------------------------------------- hashing worker (once per process)

_HASHER: Any = None


def _hasher(settings: Settings) -> Any:
    """The hashing worker of this Cuckoo process, started once and kept across analyses (starting
    a Python process per analysis would cost more than hashing its files); replaced after it fell
    back to in-process hashing, and whenever the time budget or size cap changed."""
    global _HASHER
    from telfhash_plugins.cape.worker import Hasher

    h = _HASHER
    if (
        h is None
        or h.timeout != float(settings.timeout)
        or h.max_size != settings.max_file_size
        or (settings.timeout > 0 and h.mode != "worker")
    ):
        _close_hasher()
        h = _HASHER = Hasher(timeout=settings.timeout, max_size=settings.max_file_size)
        atexit.register(_close_hasher)
    h.notes, h.restarts = [], 0  # per analysis
    return h


def _warm() -> None:
    """Start the hashing worker when Cuckoo sets its plugins up, not during the first analysis."""
    settings = _Conf.get()[0]
    if settings.enabled:
        import telfhash_core  # noqa: F401 -- imported here once, not in the first analysis

        h = _hasher(settings)
        if h.mode == "worker" and h.proc is None:
            h._start()


def _close_hasher() -> None:
    global _HASHER
    h, _HASHER = _HASHER, None
    if h is not None:
        h.close()


# ----------------------------------------------------------------------------- helpers


def _report(ctx: Any, caller: Any, message: str, level: str = "warning") -> None:
    """Log through Cuckoo's analysis/task logger and add to its processing errors."""
    logger = getattr(ctx, "log", None)
    try:
        getattr(logger, level)(message, plugin=type(caller).__name__)
    except Exception:  # noqa: BLE001 -- a host plugin reports, never raises
        log.warning("%s", message)
    tracker = getattr(ctx, "errtracker", None)
    if tracker is not None:
        try:
            tracker.add_error(message, caller)
        except Exception:  # noqa: BLE001 -- a host plugin reports, never raises
            log.warning("could not add to Cuckoo's error tracker: %s", message)


def _is_elf(path: str) -> bool:
    """A regular file (not followed through a symlink) that starts with the ELF magic."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            return False
        with open(path, "rb") as fh:
            return fh.read(4) == ELF_MAGIC
    except (OSError, ValueError):
        return False


def _target_path(sha256: str) -> str:
    from cuckoo.common.storage import Binaries, Paths  # type: ignore[import-not-found]

    path, _ = Binaries.path(str(Paths.binaries()), sha256)
    return os.fspath(path)


def _finish(ctx: Any, caller: Any, summary: dict) -> dict:
    """Report the summary's errors and per-file failures through Cuckoo; return the summary."""
    for e in summary.get("errors", []):
        _report(ctx, caller, f"telfhash: {e}")
    for f in summary.get("files", []):
        if f.get("error") in ("timeout", "worker_failed", "internal", "unreadable", "not_found", "too_large"):
            _report(ctx, caller, f"telfhash: {f.get('name')}: {f['error']} ({f.get('detail')})")
    return summary


# ----------------------------------------------------------------------------- pre stage


class TelfhashPre(_Processor):
    """telfhash of the analysis' identified target, when it is an ELF file."""

    NAME = "telfhash"
    KEY = KEY
    ORDER = 900  # after DetermineTarget (1) and CreateZip (2)
    CATEGORY: ClassVar[list] = ["file"]

    @classmethod
    def enabled(cls):
        return _Conf.get()[0].enabled

    @classmethod
    def init_once(cls):
        _Conf.reload()
        _warm()

    def start(self):
        try:
            return self._start()
        except Exception as exc:  # noqa: BLE001 -- never raise into Cuckoo
            _report(self.ctx, self, f"telfhash: internal error: {type(exc).__name__}: {exc}", "exception")
            return None

    def _start(self):
        settings, _dropped, errors = _Conf.get()
        for e in errors:  # whatever the target is
            _report(self.ctx, self, e)
        target = self.ctx.result.get("target")
        sha = getattr(target, "sha256", None)
        if not isinstance(sha, str) or len(sha) != 64:
            return None  # a URL analysis, or no target: nothing to hash
        try:
            path = _target_path(sha)
        except Exception as exc:  # noqa: BLE001 -- a host plugin reports, never raises
            _report(self.ctx, self, f"telfhash: no stored binary for the target {sha}: {exc}")
            return None
        if not _is_elf(path):
            return None  # not ELF: no result key, pre.json unchanged
        name = getattr(target, "filename", None) or getattr(target, "orig_filename", None) or sha
        filetype = getattr(target, "filetype", None)
        fd: dict[str, Any] = {
            "path": path,
            "sha256": sha,
            "name": name,
            "type": filetype if isinstance(filetype, str) and "ELF" in filetype else "ELF",
        }
        summary = enrich(
            {"target": {"category": "file", "file": fd}}, _without_errors(settings), hasher=_hasher(settings)
        )
        summary["target"] = {k: fd[k] for k in ("telfhash", "telfhash_error") if k in fd}
        summary["target"].update({"sha256": sha, "name": name})
        self.ctx.log.debug("telfhash of the target", telfhash=fd.get("telfhash"), error=fd.get("telfhash_error"))
        return _finish(self.ctx, self, summary)


def _without_errors(settings: Settings) -> Settings:
    s = Settings(**settings.to_dict())
    s.errors = []
    return s


# ----------------------------------------------------------------------------- post stage


class TelfhashPost(_Processor):
    """telfhash of the ELF files the task dropped (``<task>/dropped/``)."""

    NAME = "telfhash"
    KEY = KEY
    ORDER = 900
    CATEGORY: ClassVar[list] = []  # URL analyses drop files too

    @classmethod
    def enabled(cls):
        settings, dropped, _ = _Conf.get()
        return settings.enabled and dropped

    @classmethod
    def init_once(cls):
        _Conf.reload()
        _warm()

    def start(self):
        try:
            return self._start()
        except Exception as exc:  # noqa: BLE001 -- a host plugin reports, never raises
            _report(self.ctx, self, f"telfhash: internal error: {type(exc).__name__}: {exc}", "exception")
            return None

    def _dropped_dir(self) -> str:
        from cuckoo.common.storage import TaskPaths  # type: ignore[import-not-found]

        return os.fspath(TaskPaths.dropped_file(self.ctx.task.id))

    def _start(self):
        settings, _dropped, errors = _Conf.get()
        for e in errors:
            _report(self.ctx, self, e)
        folder = self._dropped_dir()
        try:
            names = sorted(os.listdir(folder))
        except FileNotFoundError:
            return None
        except OSError as exc:
            _report(self.ctx, self, f"telfhash: cannot list {folder}: {exc}")
            return None
        dropped: list[dict[str, Any]] = []
        limit = max(settings.max_files, 1) * 20  # a flood of files: bound the work
        if len(names) > limit:
            _report(self.ctx, self, f"telfhash: {len(names)} dropped files; looking at the first {limit}")
        for name in names[:limit]:
            path = os.path.join(folder, name)
            if _is_elf(path):
                dropped.append({"path": path, "name": name, "type": "ELF"})
        if not dropped:
            return None
        summary = enrich({"dropped": dropped}, _without_errors(settings), hasher=_hasher(settings))
        summary["dropped"] = [
            {"name": fd["name"], **{k: fd[k] for k in ("telfhash", "telfhash_error") if k in fd}} for fd in dropped
        ]
        return _finish(self.ctx, self, summary)


# ----------------------------------------------------------------------------- reporting


def _json_path(ctx: Any) -> str | None:
    from cuckoo.common.storage import AnalysisPaths, TaskPaths  # type: ignore[import-not-found]

    if getattr(ctx, "stage", None) == "pre":
        return os.fspath(AnalysisPaths.prejson(ctx.analysis.id))
    if getattr(ctx, "stage", None) == "post":
        return os.fspath(TaskPaths.report(ctx.task.id))
    return None


def add_to_json(path: str, key: str, value: Any) -> None:
    """Set ``key`` in the JSON object stored at ``path``, replacing the file atomically; all
    other keys are kept exactly as they were."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise TypeError(f"{path} does not hold a JSON object")
    data[key] = value
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".telfhash-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh)  # compact, as Cuckoo's StrictContainer.to_file writes it
        os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class TelfhashReporter(_Reporter):
    """Adds the ``telfhash`` result to ``pre.json`` (pre) and ``report.json`` (post)."""

    ORDER = 2  # after JSONDump (1), which writes the files

    @classmethod
    def enabled(cls):
        return _Conf.get()[0].enabled

    def _write(self):
        value = self.ctx.result.get(KEY)
        if value is None:
            return
        try:
            path = _json_path(self.ctx)
            if path is None:
                return
            add_to_json(path, KEY, value)
        except Exception as exc:  # noqa: BLE001 -- a host plugin reports, never raises
            _report(self.ctx, self, f"telfhash: could not add the result to the report: {type(exc).__name__}: {exc}")

    def report_pre_analysis(self):
        self._write()

    def report_post_analysis(self):
        self._write()


__all__ = [
    "HAVE_CUCKOO3",
    "TelfhashPost",
    "TelfhashPre",
    "TelfhashReporter",
    "add_to_json",
    "reload_settings",
]
