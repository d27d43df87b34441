"""Deprecated location: use telfhash_core.hashing.elf.  Kept so existing imports keep working."""

import importlib
import sys
import warnings

warnings.warn("telfhash_core.elf is deprecated: import telfhash_core.hashing.elf", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = importlib.import_module("telfhash_core.hashing.elf")
