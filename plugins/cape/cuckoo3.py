"""The same enrichment as a Cuckoo 3 post-processing module.

Cuckoo 3 (cert-ee/cuckoo3) runs ``Processor`` subclasses found in its
``cuckoo.processing.post`` package: ``KEY`` names the part of the results (keys must be unique),
``ORDER`` sorts them, ``CATEGORY`` says which analyses they apply to, ``__init__(ctx)`` gets the
processing context and ``start()`` returns the data.  This module imports Cuckoo 3 only when it
is there, so it can be imported (and tested) without it; the class to run is defined in a
two-line file dropped into Cuckoo 3's ``post`` folder (see ``docs/cape.md``), which also keeps
Cuckoo from seeing the class twice::

    from telfhash_plugins.cape import cuckoo3 as _telfhash
    class Telfhash(_telfhash.TelfhashProcessor): pass

Cuckoo 3's post stage has no dropped-file list yet, so the submitted file is hashed (when it
is an ELF file); the result has the same shape as the CAPE summary.  Settings: a ``[telfhash]``
section in ``$CUCKOO_CWD/conf/processing/telfhash.conf`` (optional; same keys as for CAPE).
Cuckoo 2 runs on Python 2.7 only and is not supported.
"""

from __future__ import annotations

import configparser
import os
from typing import Any

from .enrich import KEY, Settings, enrich

try:  # the real base class when running inside Cuckoo 3
    from cuckoo.processing.abtracts import Processor as _Base  # type: ignore[import-not-found]

    HAVE_CUCKOO3 = True
except Exception:  # importable without Cuckoo 3

    class _Base:  # the documented contract: NAME, ORDER, KEY, CATEGORY, __init__(ctx), start()
        NAME = ""
        ORDER = 999
        KEY = ""
        PLATFORMS: list = []
        CATEGORY: list = []

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

    HAVE_CUCKOO3 = False


def _cwd_root() -> str | None:
    try:
        from cuckoo.common.storage import cuckoocwd  # type: ignore[import-not-found]

        return str(cuckoocwd.root)
    except Exception:
        return os.environ.get("CUCKOO_CWD") or None


def load_settings(path: str | None = None) -> Settings:
    """``[telfhash]`` from ``path`` (default ``$CUCKOO_CWD/conf/processing/telfhash.conf``)."""
    if path is None:
        root = _cwd_root()
        path = os.path.join(root, "conf", "processing", "telfhash.conf") if root else None
    if not path or not os.path.isfile(path):
        return Settings()
    cp = configparser.ConfigParser()
    try:
        cp.read(path)
    except (configparser.Error, UnicodeDecodeError) as exc:
        s = Settings()
        s.errors.append(f"{path}: {exc}")
        return s
    return Settings.from_options(dict(cp["telfhash"])) if cp.has_section("telfhash") else Settings()


def _submitted(ctx: Any) -> tuple[str | None, str | None, str | None]:
    """(path, sha256, name) of the submitted file of the analysis in ``ctx``."""
    analysis = getattr(ctx, "analysis", None)
    submitted = getattr(analysis, "submitted", None)
    sha = getattr(submitted, "sha256", None)
    name = getattr(submitted, "filename", None)
    path = getattr(ctx, "submitted_file", None)  # not set by Cuckoo 3 itself: a way to pass it
    if path is None:
        try:
            from cuckoo.common.storage import AnalysisPaths  # type: ignore[import-not-found]

            path = AnalysisPaths.submitted_file(analysis.id)
        except Exception:
            path = None
    return path, sha if isinstance(sha, str) else None, name if isinstance(name, str) else None


def _is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"\x7fELF"
    except OSError:
        return False


class TelfhashProcessor(_Base):
    """telfhash of the submitted ELF file (and, with an index, its known neighbours)."""

    NAME = "telfhash"
    KEY = KEY
    ORDER = 900
    CATEGORY = ["file"]

    settings: Settings | None = None

    @classmethod
    def enabled(cls):
        return load_settings().enabled

    @classmethod
    def init_once(cls):
        cls.settings = load_settings()

    def start(self):
        try:
            settings = self.settings or load_settings()
            path, sha, name = _submitted(self.ctx)
            if not path:
                return {"errors": ["no submitted file for this analysis"], "files": [], "groups": []}
            fd: dict[str, Any] = {"path": path, "sha256": sha, "name": name or os.path.basename(path)}
            if not _is_elf(path):
                return {"files": [], "groups": [], "errors": [], "elf_files": 0, "hashed": 0}
            fd["type"] = "ELF"
            results = {"target": {"category": "file", "file": fd}}
            summary = enrich(results, settings)
            summary["target"] = {k: fd[k] for k in ("telfhash", "telfhash_error") if k in fd}
            return summary
        except Exception as exc:  # never raise into Cuckoo
            return {"errors": [f"internal error: {type(exc).__name__}: {exc}"], "files": [], "groups": []}


__all__ = ["TelfhashProcessor", "load_settings", "HAVE_CUCKOO3"]
