"""Access to the shared ELF corpus (``../shared/corpus`` beside the repository).

The tarball is extracted once into a cache folder (``$TELFHASH_CACHE`` or
``~/.cache/telfhash-core``).  Where the shared folder is absent the tests that need it are
skipped with a message saying so; set ``TELFHASH_CORPUS`` to point at another copy.
"""

from __future__ import annotations

import json
import os
import tarfile
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("TELFHASH_CORPUS", REPO.parent / "shared" / "corpus"))
CACHE = Path(os.environ.get("TELFHASH_CACHE", Path.home() / ".cache" / "telfhash-core"))


def available() -> bool:
    return (SHARED / "manifest.json").is_file() and (SHARED / "elf-corpus.tar.xz").is_file()


def skip_reason() -> str:
    return f"shared corpus not found at {SHARED} (set TELFHASH_CORPUS to its folder)"


@lru_cache(maxsize=None)
def manifest() -> dict:
    if not available():
        pytest.skip(skip_reason())
    return json.loads((SHARED / "manifest.json").read_text())


@lru_cache(maxsize=None)
def root() -> Path:
    """The extracted corpus folder (extracting on first use)."""
    m = manifest()
    tarball = SHARED / "elf-corpus.tar.xz"
    st = tarball.stat()
    dest = CACHE / f"corpus-{st.st_size}-{int(st.st_mtime)}"
    marker = dest / ".complete"
    if not marker.exists():
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball) as tf:
            tf.extractall(dest, filter="data") if hasattr(tarfile, "data_filter") else tf.extractall(dest)
        missing = [f["path"] for f in m["files"] if not (dest / f["path"]).is_file()]
        if missing:
            raise RuntimeError(f"corpus extraction incomplete: {len(missing)} files missing, e.g. {missing[:3]}")
        marker.write_text("ok\n")
    return dest


def files() -> list[dict]:
    """Manifest entries, each with an added ``abspath``."""
    base = root()
    return [dict(f, abspath=str(base / f["path"])) for f in manifest()["files"]]


def symbol_lists(limit: int, min_names: int) -> list[list[str]]:
    """The selected (filtered, lower-cased, sorted) symbol names of up to ``limit`` hashed corpus
    files with at least ``min_names`` names: seeds for synthetic families of digests."""
    from telfhash_core.hashing import elf
    from telfhash_core.digest import select_symbols

    out = []
    for f in files():
        if not f["reference"]["telfhash"].startswith("t1"):
            continue
        buf = Path(f["abspath"]).read_bytes()
        try:
            h = elf.read_header(buf)
            table = elf.find_symbol_table_fast(buf, h)
            names = select_symbols(elf.read_function_names(buf, h, table)) if table else []
        except Exception:  # the fast route gave up: not needed for seeds
            continue
        if len(names) >= min_names:
            out.append(names)
        if len(out) >= limit:
            break
    return out
