"""Deprecated location: use telfhash_core.hashing.api.  Kept so existing imports keep working."""

import importlib
import sys
import warnings

warnings.warn("telfhash_core.api is deprecated: import telfhash_core.hashing.api", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = importlib.import_module("telfhash_core.hashing.api")
