"""Deprecated location: use telfhash_core.batch.partitioned.  Kept so existing imports keep working."""

import importlib
import sys
import warnings

warnings.warn(
    "telfhash_core.batch_cluster is deprecated: import telfhash_core.batch.partitioned",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = importlib.import_module("telfhash_core.batch.partitioned")
