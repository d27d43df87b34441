"""Deprecated: the Cuckoo 3 adapter moved to :mod:`telfhash_plugins.cuckoo3` (``docs/cuckoo3.md``).

This alias keeps old two-line drop-ins importable.  ``TelfhashProcessor`` is now the pre-stage
processor :class:`telfhash_plugins.cuckoo3.processor.TelfhashPre`; a drop-in in Cuckoo's ``post``
package finds no target there and returns nothing.  Replace it with ``telfhash-cuckoo3 install``.
"""

from __future__ import annotations

import warnings

from telfhash_plugins.cuckoo3.config import load as _load
from telfhash_plugins.cuckoo3.processor import HAVE_CUCKOO3
from telfhash_plugins.cuckoo3.processor import TelfhashPre as TelfhashProcessor

from .enrich import Settings

warnings.warn(
    "telfhash_plugins.cape.cuckoo3 is deprecated; use telfhash_plugins.cuckoo3 (telfhash-cuckoo3 install)",
    DeprecationWarning,
    stacklevel=2,
)


def load_settings(path: str | None = None) -> Settings:
    """The settings of ``conf/processing/telfhash.yaml`` (errors in ``Settings.errors``)."""
    settings, _dropped, errors = _load(path)
    settings.errors = errors
    return settings


__all__ = ["HAVE_CUCKOO3", "TelfhashProcessor", "load_settings"]
