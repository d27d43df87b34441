"""The plugin manager: built-in plugins first, then third-party ``telfhash`` entry points.

Set ``TELFHASH_TRACE_HOOKS=1`` to print every hook call and its result to stderr.
``TELFHASH_NO_ENTRY_POINTS=1`` loads the built-ins only.
"""

from __future__ import annotations

import importlib
import os
import sys

import pluggy

from . import hookspecs

# The core adds its own formats and commands through the same hooks third parties use.
# Each module implements the hooks it needs; a module that is missing or whose optional
# dependency is not installed is skipped (see ``load_errors``).
DEFAULT_PLUGINS = (
    "telfhash_core.formats",  # default, tsv, json, jsonl output
    "telfhash_core.hashing.filehashes",  # the md5 and sha1 fields
    "telfhash_core.similarity.cluster",  # `telfhash cluster`
    "telfhash_core.store.index",  # `telfhash index ...`
    "telfhash_core.batch.run",  # `telfhash batch ...` (local / Dask)
    "telfhash_core.companion",  # the opt-in companion hash
)

_pm: pluggy.PluginManager | None = None
load_errors: list[str] = []


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (created on first use)."""
    global _pm
    if _pm is not None:
        return _pm
    pm = pluggy.PluginManager("telfhash")
    pm.add_hookspecs(hookspecs)
    for name in DEFAULT_PLUGINS:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a built-in not present, or its optional dependency missing
            load_errors.append(f"{name}: {exc}")
            continue
        pm.register(mod, name=name)
    if not os.environ.get("TELFHASH_NO_ENTRY_POINTS"):
        try:
            pm.load_setuptools_entrypoints("telfhash")
        except Exception as exc:  # a broken third-party plugin must not break hashing
            load_errors.append(f"entry point: {exc!r}")
    if os.environ.get("TELFHASH_TRACE_HOOKS"):
        pm.trace.root.setwriter(lambda msg: sys.stderr.write(msg))
        pm.enable_tracing()
    _pm = pm
    return pm


def reset_plugin_manager() -> None:
    """Forget the plugin manager (tests; after registering plugins by hand)."""
    global _pm
    _pm = None


def field_functions() -> dict:
    """``{name: compute(buf, result)}`` from every plugin's ``telfhash_fields`` hook."""
    found: dict = {}
    for group in get_plugin_manager().hook.telfhash_fields():
        for name, fn in (group or {}).items():
            found.setdefault(name, fn)
    return found
