"""Deprecated location: use telfhash_core.hashing.fallback.  Kept so existing imports keep working."""

import importlib
import sys
import warnings

warnings.warn(
    "telfhash_core.fallback is deprecated: import telfhash_core.hashing.fallback", DeprecationWarning, stacklevel=2
)
sys.modules[__name__] = importlib.import_module("telfhash_core.hashing.fallback")
