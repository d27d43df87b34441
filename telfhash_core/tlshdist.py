"""Deprecated location: use telfhash_core.similarity.tlshdist.  Kept so existing imports keep working."""

import importlib
import sys
import warnings

warnings.warn(
    "telfhash_core.tlshdist is deprecated: import telfhash_core.similarity.tlshdist", DeprecationWarning, stacklevel=2
)
sys.modules[__name__] = importlib.import_module("telfhash_core.similarity.tlshdist")
