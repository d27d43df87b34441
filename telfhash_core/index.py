"""Deprecated location: use telfhash_core.store.index.  Kept so existing imports keep working."""

import importlib
import sys
import warnings

warnings.warn("telfhash_core.index is deprecated: import telfhash_core.store.index", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = importlib.import_module("telfhash_core.store.index")
