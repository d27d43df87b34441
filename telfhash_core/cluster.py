"""Deprecated location: use telfhash_core.similarity.cluster.  Kept so existing imports keep working."""

import importlib
import sys
import warnings

warnings.warn(
    "telfhash_core.cluster is deprecated: import telfhash_core.similarity.cluster", DeprecationWarning, stacklevel=2
)
sys.modules[__name__] = importlib.import_module("telfhash_core.similarity.cluster")
