"""What the local telfhash index knows: a sample by its MD5/SHA-1/SHA-256, and the known samples
nearest to a telfhash.

misp-modules answers requests from a pool of threads and an :class:`~telfhash_core.store.index.Index`
belongs to one thread, so each thread keeps its own open index per file (its digest matrix is
reused between queries, and reloaded by the index itself when the file changes).  Looking a
sample up by hash is one SQL query; a neighbour search loads the compiled distance kernels on
first use.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any

try:
    from telfhash_core.store.index import Index as _Index

    _INDEX_IMPORT_ERROR: str | None = None
except Exception as exc:  # noqa: BLE001 - a module that fails to import must not break misp-modules
    _Index = None  # type: ignore[assignment,misc]
    _INDEX_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"


class IndexError_(Exception):
    """The configured index cannot be used (missing, unreadable, not an index)."""


log = logging.getLogger("telfhash.misp")
_HASH_RE = re.compile(r"^(?:[0-9a-fA-F]{32}|[0-9a-fA-F]{40}|[0-9a-fA-F]{64})$")
_local = threading.local()


def hashes_in(value: Any) -> list[str]:
    """MD5/SHA-1/SHA-256 values carried by an attribute value (``name|md5``, a bare hash, ...)."""
    if not isinstance(value, str):
        return []
    out = []
    for part in value.split("|"):
        part = part.strip()
        if _HASH_RE.match(part) and part.lower() not in out:
            out.append(part.lower())
    return out


def _open(path: str):
    if _Index is None:
        raise IndexError_(f"the telfhash index cannot be used here: {_INDEX_IMPORT_ERROR}")
    if not os.path.exists(path):
        raise IndexError_(f"the telfhash index configured as index_path does not exist: {path}")
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_dev, st.st_ino)
    cache = getattr(_local, "indexes", None)
    if cache is None:
        cache = _local.indexes = {}
    ix = cache.get(key)
    if ix is None:
        for old in [k for k in cache if k[0] == key[0]]:  # the file was replaced
            _close_quietly(cache.pop(old))
        try:
            ix = cache[key] = _Index(path, create=False)
        except Exception as exc:  # noqa: BLE001 - reported as a clear error, never raised
            raise IndexError_(f"cannot open the telfhash index {path}: {type(exc).__name__}: {exc}") from None
    return ix


def _forget(path: str) -> None:
    cache = getattr(_local, "indexes", None) or {}
    for k in [k for k in cache if k[0] == os.path.abspath(path)]:
        _close_quietly(cache.pop(k))


def _close_quietly(ix) -> None:
    try:
        ix.close()
    except Exception as exc:  # noqa: BLE001
        log.debug("closing the index: %s", exc)


def lookup(path: str, values: list[str]) -> dict | None:
    """The index entry of the first of ``values`` (hashes) the index holds, or None."""
    ix = _open(path)
    try:
        for value in values:
            entry = ix.lookup(value)
            if entry is not None:
                return entry
    except Exception as exc:  # noqa: BLE001 - a broken index file must be reported, not raised
        _forget(path)
        raise IndexError_(f"cannot search the telfhash index {path}: {type(exc).__name__}: {exc}") from None
    return None


def similar(path: str, digest: str, max_distance: int, limit: int, exclude_sha256: str | None = None) -> list:
    """Known samples within ``max_distance`` of ``digest``, nearest first, at most ``limit``."""
    if limit <= 0:
        return []
    ix = _open(path)
    try:
        # one spare slot: the sample itself may be in the index
        matches = ix.search(digest, max_distance=max_distance, limit=limit + 1)
    except Exception as exc:  # noqa: BLE001
        _forget(path)
        raise IndexError_(f"cannot search the telfhash index {path}: {type(exc).__name__}: {exc}") from None
    out = [m for m in matches if not (exclude_sha256 and m.sha256 == exclude_sha256)]
    out.sort(key=lambda m: (m.distance, m.sha256 or ""))
    return out[:limit]


def size(path: str) -> int | None:
    try:
        return len(_open(path))
    except Exception:  # noqa: BLE001 - only used in explanations
        return None
