"""Deprecated location: use telfhash_core.store.index.  Kept so existing imports keep working."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("telfhash_core.store.index")
