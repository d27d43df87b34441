"""The adapter's settings, declared and read the way Cuckoo 3 declares and reads its own.

Cuckoo 3 describes each YAML configuration file with a dict of *typeloaders*
(``cuckoo.common.config.Boolean``, ``Int``, ``String``, ...) in a Cuckoo package's ``config.py``,
renders the file from a Jinja2 template at ``cuckoo createcwd`` and loads it with
``load_values(read_config_raw(path), typeloaders)``, which type-checks every key and checks its
constraints.  Only packages of the ``cuckoo`` namespace can register typeloaders, so this module
keeps its own (built from Cuckoo's classes, when Cuckoo is importable) and uses the same two
functions to render ``$CUCKOO_CWD/conf/processing/telfhash.yaml`` and to read it.  The file is read
once per processing worker (at plugin start), not per analysis; a missing file means the documented
defaults; a file Cuckoo's loader rejects means the defaults plus the loader's message, which the
processors report through Cuckoo's error tracker.
"""

from __future__ import annotations

import logging
import os
from copy import deepcopy
from pathlib import Path
from typing import Any

from telfhash_plugins.cape.enrich import Settings

log = logging.getLogger(__name__)

CONF_NAME = "telfhash.yaml"
CONF_SUBPKG = "processing"  # the file lives beside Cuckoo's processing configuration
TEMPLATE = Path(__file__).with_name("conftemplates") / "telfhash.yaml.jinja2"

# name -> (kind, default, minimum); the single description from which the typeloaders are built
FIELDS: dict[str, tuple[str, Any, int | None]] = {
    "enabled": ("bool", True, None),
    "max_file_size": ("int", Settings().max_file_size, 1),
    "timeout": ("int", int(Settings().timeout), 0),
    "threshold": ("int", Settings().threshold, 0),
    "index": ("str", "", None),
    "max_neighbours": ("int", Settings().max_neighbours, 0),
    "index_add": ("bool", False, None),
    "max_files": ("int", Settings().max_files, 0),
    "dropped": ("bool", True, None),
}


def typeloaders() -> dict[str, Any]:
    """``{"telfhash.yaml": {key: TypeLoader}}`` built from Cuckoo 3's own typeloader classes."""
    from cuckoo.common import config  # type: ignore[import-not-found]

    loaders: dict[str, Any] = {}
    for name, (kind, default, minimum) in FIELDS.items():
        if kind == "bool":
            loaders[name] = config.Boolean(default_val=default, required=False)
        elif kind == "int":
            loaders[name] = config.Int(default_val=default, min_value=minimum, required=False)
        else:
            loaders[name] = config.String(default_val=default, allow_empty=True, required=False)
    return {CONF_NAME: loaders}


def conf_path(cwd: str | os.PathLike | None = None) -> Path | None:
    """``<cwd>/conf/processing/telfhash.yaml``; the CWD defaults to the one Cuckoo has set."""
    if cwd is None:
        try:
            from cuckoo.common.storage import cuckoocwd  # type: ignore[import-not-found]

            cwd = cuckoocwd.root
        except Exception:  # noqa: BLE001 -- a host plugin reports, never raises
            cwd = os.environ.get("CUCKOO_CWD") or None
    return Path(cwd, "conf", CONF_SUBPKG, CONF_NAME) if cwd else None


def render(cwd: str | os.PathLike, values: dict[str, Any] | None = None) -> Path:
    """Write the configuration file from the template with Cuckoo's renderer (refuses to
    overwrite, as Cuckoo's does)."""
    from cuckoo.common.config import render_config_from_typeloaders  # type: ignore[import-not-found]

    path = conf_path(cwd)
    assert path is not None
    loaders = deepcopy(typeloaders()[CONF_NAME])
    for k, v in (values or {}).items():
        loaders[k].value = v
    render_config_from_typeloaders(str(TEMPLATE), loaders, str(path))
    return path


def _to_settings(values: dict[str, Any]) -> Settings:
    return Settings.from_options({k: v for k, v in values.items() if k in Settings().to_dict()})


def load(path: str | os.PathLike | None = None) -> tuple[Settings, bool, list[str]]:
    """``(settings, hash_dropped, errors)`` from the YAML file; defaults where it is missing or
    rejected.  Never raises."""
    try:
        path = Path(path) if path is not None else conf_path()
    except Exception as exc:  # noqa: BLE001 -- an unusable path type
        return Settings(), True, [f"telfhash settings: {exc}"]
    if path is None or not path.is_file():
        return Settings(), True, []
    try:
        from cuckoo.common import config  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 -- a host plugin reports, never raises
        return _load_plain(path)
    loaders = deepcopy(typeloaders()[CONF_NAME])
    try:
        raw = config.read_config_raw(str(path))
        if raw is None:
            raw = {}
        config.load_values(raw, loaders)
    except config.ConfigurationError as exc:
        return Settings(), True, [f"telfhash settings in {path}: {exc}; using the defaults"]
    except Exception as exc:  # noqa: BLE001 -- an unreadable file
        return Settings(), True, [f"telfhash settings in {path}: {type(exc).__name__}: {exc}; using the defaults"]
    values = {k: loader.usable_value for k, loader in loaders.items() if loader.value is not None}
    extra = sorted(set(raw) - set(FIELDS)) if isinstance(raw, dict) else []
    errors = [f"telfhash settings in {path}: unknown key {k!r} ignored" for k in extra]
    settings = _to_settings(values)
    errors.extend(f"telfhash settings in {path}: {e}" for e in settings.errors)
    settings.errors = []
    return settings, bool(values.get("dropped", True)), errors


def _load_plain(path: Path) -> tuple[Settings, bool, list[str]]:
    """Without Cuckoo (tools, tests): the same keys with PyYAML, value checks from ``Settings``."""
    try:
        import yaml

        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh) or {}
        if not isinstance(raw, dict):
            raise TypeError("not a mapping of keys to values")
    except Exception as exc:  # noqa: BLE001 -- a host plugin reports, never raises
        return Settings(), True, [f"telfhash settings in {path}: {type(exc).__name__}: {exc}; using the defaults"]
    settings = _to_settings(raw)
    errors = [f"telfhash settings in {path}: {e}" for e in settings.errors]
    settings.errors = []
    return settings, bool(raw.get("dropped", True)), errors


__all__ = ["CONF_NAME", "FIELDS", "TEMPLATE", "conf_path", "load", "render", "typeloaders"]
