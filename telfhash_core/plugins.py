"""The plugin manager: built-in plugins first, then third-party ``telfhash`` entry points.

Each plugin is loaded on its own: one that fails to import is recorded in :data:`load_errors`
(``telfhash plugins`` shows them) and the others load regardless.  A format, field or exporter
name offered twice is refused with :class:`DuplicateNameError` rather than taken first-wins.

Set ``TELFHASH_TRACE_HOOKS=1`` to log every hook call and its result (logger
``telfhash_core.plugins``, level DEBUG, sent to stderr).  ``TELFHASH_NO_ENTRY_POINTS=1`` loads the
built-ins only.

Hashing a few files must start as fast as the reference tool.  So the ``telfhash FILE`` path asks
:func:`hashing_needs_plugins` first (it reads the entry-point metadata without importing pluggy or
``importlib.metadata``): with no third-party plugin installed, hashing runs without a plugin
manager, since no built-in plugin and none of the project's own adapters implement a hook that
plain hashing calls (a test checks this).
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:
    import pluggy


def _log():
    """This module's logger (``logging`` is imported on first use: a plain hash needs none)."""
    import logging

    return logging.getLogger(__name__)


# The core adds its own formats and commands through the same hooks third parties use.
# Each module implements the hooks it needs; a module that is missing or whose optional
# dependency is not installed is skipped (see ``load_errors``).
DEFAULT_PLUGINS = (
    "telfhash_core.formats",  # default, tsv, json, jsonl output
    "telfhash_core.hashing.filehashes",  # the md5 and sha1 fields
    "telfhash_core.commands.cluster",  # `telfhash cluster`
    "telfhash_core.commands.index",  # `telfhash index ...`
    "telfhash_core.commands.batch",  # `telfhash batch ...` (local / Dask)
    "telfhash_core.commands.plugins",  # `telfhash plugins`, `telfhash export`
    "telfhash_core.companion",  # the opt-in companion hash
)
ENTRY_POINT_GROUP = "telfhash"

# Entry points of the project's own adapters (package ``telfhash_plugins``): they add subcommands
# and exporters only, never a hook that plain hashing calls.
OWN_ADAPTERS = "telfhash_plugins."

# Hooks that ``telfhash FILE`` calls (or whose answers it uses).
HASHING_HOOKS = ("telfhash_result", "telfhash_output_formats", "telfhash_fields")


@dataclass
class PluginInfo:
    """One plugin as ``telfhash plugins`` lists it."""

    name: str
    origin: str  # "built-in" or "entry point <name> (<distribution> <version>)"
    where: str  # the module's file
    hooks: list[str]
    error: str | None = None


class DuplicateNameError(ValueError):
    """Two plugins offer a format, field or exporter of the same name."""


_pm: pluggy.PluginManager | None = None
_infos: list[PluginInfo] = []
load_errors: list[str] = []


def _info(name: str, origin: str, module: Any) -> PluginInfo:
    from . import hookspecs

    specs = {n for n in dir(hookspecs) if n.startswith("telfhash_")}
    hooks = sorted(n for n in dir(module) if n in specs and callable(getattr(module, n, None)))
    return PluginInfo(name, origin, getattr(module, "__file__", None) or "?", hooks)


def _failed(name: str, origin: str, where: str, exc: BaseException) -> None:
    message = f"{name}: {type(exc).__name__}: {exc}"
    load_errors.append(message)
    _infos.append(PluginInfo(name, origin, where, [], error=f"{type(exc).__name__}: {exc}"))
    _log().warning("plugin %s not loaded: %s", name, exc)


def _entry_points() -> Iterable[Any]:
    from importlib.metadata import entry_points

    return entry_points(group=ENTRY_POINT_GROUP)


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (created on first use)."""
    global _pm
    if _pm is not None:
        return _pm
    import pluggy

    from . import hookspecs

    pm = pluggy.PluginManager("telfhash")
    pm.add_hookspecs(hookspecs)
    _infos.clear()
    load_errors.clear()
    for name in DEFAULT_PLUGINS:
        try:
            mod = importlib.import_module(name)
        except ImportError as exc:  # a built-in whose optional dependency is missing
            _failed(name, "built-in", name, exc)
            continue
        pm.register(mod, name=name)
        _infos.append(_info(name, "built-in", mod))
    if not os.environ.get("TELFHASH_NO_ENTRY_POINTS"):
        for ep in _entry_points():
            dist = getattr(ep, "dist", None)
            origin = f"entry point {ep.name}" + (f" ({dist.name} {dist.version})" if dist is not None else "")
            if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue
            try:  # one by one: a broken plugin costs only itself
                plugin = ep.load()
                pm.register(plugin, name=ep.name)
            except Exception as exc:
                _failed(ep.name, origin, ep.value, exc)
                continue
            _infos.append(_info(ep.name, origin, plugin))
    if os.environ.get("TELFHASH_TRACE_HOOKS"):
        import logging

        log = _log()
        if not log.handlers:
            log.addHandler(logging.StreamHandler())
        log.setLevel(logging.DEBUG)
        pm.trace.root.setwriter(lambda msg: log.debug("%s", msg.rstrip("\n")))
        pm.enable_tracing()
    _pm = pm
    return pm


def reset_plugin_manager() -> None:
    """Forget the plugin manager (tests; after registering plugins by hand)."""
    global _pm
    _pm = None


def plugin_infos() -> list[PluginInfo]:
    """Every plugin tried, loaded or not, in load order."""
    get_plugin_manager()
    return list(_infos)


def by_name(
    groups: Iterable[Iterable[Any] | None], what: str, name_of: Callable[[Any], str] = lambda x: x.name
) -> dict:
    """``{name: item}`` over the hook results ``groups``; a name offered twice is refused."""
    found: dict[str, Any] = {}
    for group in groups:
        for item in group or []:
            name = name_of(item)
            if name in found:
                raise DuplicateNameError(f"two plugins offer the {what} {name!r}; uninstall or disable one of them")
            found[name] = item
    return found


def field_functions() -> dict:
    """``{name: compute(buf, result)}`` from every plugin's ``telfhash_fields`` hook."""
    found: dict = {}
    for group in get_plugin_manager().hook.telfhash_fields():
        for name, fn in (group or {}).items():
            if name in found:
                raise DuplicateNameError(f"two plugins offer the field {name!r}; uninstall or disable one of them")
            found[name] = fn
    return found


def result_hook(options: dict[str, Any] | None = None) -> Callable[[Any], None] | None:
    """A function that passes one result through every plugin's ``telfhash_result`` hook, or None
    when no plugin implements it (then the caller skips the work).  Every entry point that
    produces results calls it.  Without a plugin manager and with no third-party plugin installed
    (:func:`hashing_needs_plugins`) none can, and no plugin is loaded."""
    if _pm is None and not hashing_needs_plugins():
        return None
    hook = get_plugin_manager().hook.telfhash_result
    if not hook.get_hookimpls():
        return None
    opts = dict(options or {})
    return lambda result: hook(result=result, options=opts)


def declared_entry_points() -> list[tuple[str, str]]:
    """``(name, "module:attr")`` of every ``telfhash`` entry point of the distributions on
    ``sys.path``, read from their metadata files (cheaper than ``importlib.metadata``)."""
    found: list[tuple[str, str]] = []
    for top in sys.path:
        try:
            names = os.listdir(top or ".")
        except OSError:
            continue
        for name in names:
            if not name.endswith((".dist-info", ".egg-info")):
                continue
            try:
                with open(os.path.join(top or ".", name, "entry_points.txt"), encoding="utf-8") as fh:
                    text = fh.read()
            except OSError:
                continue
            section = None
            for line in text.splitlines():
                line = line.strip()
                if line.startswith("["):
                    section = line.strip("[]").strip()
                elif section == ENTRY_POINT_GROUP and "=" in line and not line.startswith(("#", ";")):
                    key, _, value = line.partition("=")
                    found.append((key.strip(), value.strip()))
    return found


def hashing_needs_plugins() -> bool:
    """Whether ``telfhash FILE`` must load the plugin manager: it exists already (plugins may
    have been registered by hand), hook tracing is on, or a plugin other than the project's own
    adapters is installed (it may implement ``telfhash_result``)."""
    if _pm is not None or os.environ.get("TELFHASH_TRACE_HOOKS"):
        return True
    if os.environ.get("TELFHASH_NO_ENTRY_POINTS"):
        return False
    try:
        declared = declared_entry_points()
    except Exception:  # unreadable metadata: let the plugin manager decide
        return True
    return any(not value.startswith(OWN_ADAPTERS) for _name, value in declared)
