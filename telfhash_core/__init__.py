"""telfhash-core: the telfhash of ELF files, exactly as the reference computes it, only faster.

>>> from telfhash_core import hash_file, telfhash, distance
>>> hash_file("/bin/ls").telfhash            # 't1…' or None (then .reason / .detail say why)
>>> telfhash("/bin/ls", "/bin/cp")           # the reference's list of {"file", "telfhash", "msg"}
>>> distance("t1…", "T1…")                   # TLSH distance; t1…, T1… or bare 70-hex accepted
"""

from .digest import DEFAULT_THRESHOLD, distance, is_digest, normalize
from .hashing.api import expand_paths, hash_bytes, hash_file, hash_fileobj, hash_paths, telfhash
from .result import Reason, Result

__version__ = "0.1.0"


def __getattr__(name: str):
    # ``hookimpl`` needs pluggy: imported on first use, so hashing a file does not load it (PEP 562)
    if name == "hookimpl":
        from .hookspecs import hookimpl

        return hookimpl
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def group(results, threshold: int = DEFAULT_THRESHOLD):
    """Group results by TLSH distance ≤ ``threshold``; the reference's ``group()`` return shape."""
    from .similarity.cluster import group as _group

    return _group(results, threshold=threshold)


__all__ = [
    "DEFAULT_THRESHOLD",
    "Reason",
    "Result",
    "distance",
    "expand_paths",
    "group",
    "hash_bytes",
    "hash_file",
    "hash_fileobj",
    "hash_paths",
    "hookimpl",
    "is_digest",
    "normalize",
    "telfhash",
    "__version__",
]
