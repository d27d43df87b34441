"""Grouping the digests of a batch output (``telfhash batch cluster``): read the rows, group them
with :mod:`telfhash_core.similarity.partitioned` (locally or on Dask), write one row per file.

The grouping itself lives in the similarity layer; its names are re-exported here, their former
home.
"""

from __future__ import annotations

import os

import numpy as np

from ..digest import DEFAULT_THRESHOLD, is_digest, normalize
from ..similarity.partitioned import HAVE_NUMBA, cell_offsets, cluster_digests, cluster_task, plan, relabel  # noqa: F401  (their former home)
from .common import BatchError, close_client, dask_client, need

_EMPTY = np.zeros(0, dtype=np.int64)


def cluster_results(
    results: str,
    output: str,
    *,
    threshold: int = DEFAULT_THRESHOLD,
    engine: str = "local",
    scheduler: str | None = None,
    jobs: int = 0,
    fmt: str = "jsonl",
    client=None,
) -> dict:
    """Group the files of a batch output; write one row per file with a telfhash:
    ``path, sha256, telfhash, cluster, cluster_size`` (clusters numbered by first appearance)."""
    from .sinks import read_rows

    rows = [r for r in read_rows(results) if isinstance(r.get("telfhash"), str) and is_digest(r["telfhash"])]
    own = None
    try:
        if engine == "dask" and client is None:
            client = own = dask_client(scheduler, jobs)
        labels, info = cluster_digests(
            [r["telfhash"] for r in rows], threshold, engine=engine, client=client, jobs=jobs
        )
    finally:
        close_client(own)
    sizes = np.bincount(labels) if labels.size else _EMPTY
    out = [
        {
            "path": r.get("path") or r.get("file"),
            "sha256": r.get("sha256"),
            "telfhash": normalize(r["telfhash"]),
            "cluster": int(k),
            "cluster_size": int(sizes[k]),
        }
        for r, k in zip(rows, labels.tolist())
    ]
    if fmt == "parquet":
        pa = need("pyarrow")
        pq = need("pyarrow.parquet")
        schema = pa.schema(
            [
                ("path", pa.string()),
                ("sha256", pa.string()),
                ("telfhash", pa.string()),
                ("cluster", pa.int64()),
                ("cluster_size", pa.int64()),
            ]
        )
        tmp = output + ".tmp"
        pq.write_table(pa.Table.from_pylist(out, schema=schema), tmp, compression="zstd")
        os.replace(tmp, output)
    else:
        import json

        tmp = output + ".tmp"
        try:
            with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as fh:
                for r in out:
                    fh.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")
            os.replace(tmp, output)
        except OSError as exc:
            raise BatchError(f"cannot write {output}: {exc.strerror or exc}") from None
    return info
