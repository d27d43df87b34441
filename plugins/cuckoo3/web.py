"""Showing the telfhash result in Cuckoo 3's web interface without editing Cuckoo's templates.

Cuckoo's templates render only the keys they know.  Cuckoo does offer one supported place for
local web changes: ``$CUCKOO_CWD/web/web_local_settings.py``, executed at the end of its Django
settings.  ``telfhash-cuckoo3 install`` adds a marked block there that calls :func:`configure`,
which points the Jinja2 backend's ``environment`` option at :func:`environment`.  That wraps
Cuckoo's own environment function: templates in this package's ``templates/`` folder come first,
and Cuckoo's own templates stay reachable under the prefix ``cuckoo/``.  The two templates here
(``analysis/components/summary.html.jinja2`` and ``task/components/task.html.jinja2``) include
Cuckoo's original and then add a telfhash box when ``pre.json`` / ``report.json`` has a
``telfhash`` key; every other page is Cuckoo's, unchanged.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).with_name("templates")
PREFIX = "cuckoo"
ORIGINAL = "cuckoo.web.web.jinja.env.environment"  # Cuckoo's setting, wrapped


def _resolve(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def environment(**kwargs: Any):
    """Cuckoo's Jinja2 environment, with this package's templates in front of Cuckoo's."""
    import jinja2

    base_loader = kwargs.get("loader")
    if base_loader is None:  # Django always passes one; keep Cuckoo's template folders otherwise
        base_loader = jinja2.FileSystemLoader(["templates"])
    kwargs["loader"] = jinja2.ChoiceLoader(
        [
            jinja2.PrefixLoader({PREFIX: base_loader}),
            jinja2.FileSystemLoader(str(TEMPLATES)),
            base_loader,
        ]
    )
    original = kwargs.pop("telfhash_original", None) or ORIGINAL
    return _resolve(original)(**kwargs)


def configure(settings_globals: dict[str, Any]) -> bool:
    """Called from ``web_local_settings.py`` with Django's settings globals: use
    :func:`environment` for Cuckoo's Jinja2 backend.  Returns whether a backend was changed."""
    changed = False
    for backend in settings_globals.get("TEMPLATES", []):
        if not str(backend.get("BACKEND", "")).endswith("jinja2.Jinja2"):
            continue
        options = backend.setdefault("OPTIONS", {})
        current = options.get("environment") or ORIGINAL
        if current == f"{__name__}.environment":
            continue
        options["environment"] = f"{__name__}.environment"
        if current != ORIGINAL:  # someone else's wrapper: keep it underneath ours
            options["telfhash_original"] = current
        changed = True
    return changed


__all__ = ["TEMPLATES", "configure", "environment"]
