"""Batch layer: corpus-scale hashing (local pool or Dask) and partitioned clustering.

``run`` reads inputs and writes result parts; ``partitioned`` groups digests too many for one
machine's all-pairs pass.  The old ``telfhash_core.batch`` names are re-exported here.
"""

from .run import *  # noqa: F401,F403  (deprecated flat names, kept for existing callers)
