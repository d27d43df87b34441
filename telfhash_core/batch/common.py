"""What the batch modules share: their error type, optional imports, and the Dask client's life.

Kept apart so that :mod:`~telfhash_core.batch.run` and :mod:`~telfhash_core.batch.partitioned`
both depend on it and not on each other.
"""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType
from typing import Any

log = logging.getLogger("telfhash_core.batch")

EXTRA_HINT = (
    "install the optional dependencies (extra telfhash-core[dask]): pip install -e '.[dask]' in the telfhash-core clone"
)


class BatchError(Exception):
    """A problem with the command as a whole (bad output, missing optional dependency, ...)."""


def need(module: str) -> ModuleType:
    """Import an optional dependency or raise BatchError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BatchError(f"{module} is not installed ({exc}); {EXTRA_HINT}") from None


def is_url(text: str) -> bool:
    """True for ``scheme://...`` (an fsspec URL), False for a local path."""
    head, sep, _ = text.partition("://")
    return bool(sep) and head.replace("+", "").replace("-", "").isalnum() and len(head) > 1


def dask_client(scheduler: str | None, jobs: int = 0, *, quiet: bool = False) -> Any:
    """A ``dask.distributed.Client``: to ``scheduler`` (``tcp://host:8786``, a scheduler file path
    ending in ``.json``), or to a new local cluster of ``jobs`` worker processes.  Close it with
    :func:`close_client`."""
    distributed = need("distributed")
    need("dask")
    if scheduler:
        try:
            if scheduler.endswith(".json") and os.path.isfile(scheduler):
                client = distributed.Client(scheduler_file=scheduler, timeout="30s")
            else:
                client = distributed.Client(scheduler, timeout="30s")
        except Exception as exc:
            raise BatchError(f"cannot connect to the Dask scheduler {scheduler}: {exc}") from None
        client._telfhash_own_cluster = False
    else:
        n = jobs or (os.cpu_count() or 1)
        cluster = distributed.LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0"
        )
        client = distributed.Client(cluster)
        client._telfhash_own_cluster = True
    if not quiet:
        link = getattr(client, "dashboard_link", None)
        log.info("Dask scheduler %s; dashboard: %s", client.scheduler.address, link)
    return client


def close_client(client: Any) -> None:
    """Close a client made by :func:`dask_client`, and the local cluster it started (a
    scheduler given by address is left running)."""
    if client is None:
        return
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None and getattr(client, "_telfhash_own_cluster", False):
        cluster.close()
