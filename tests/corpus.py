"""Access to the shared ELF corpus (``../shared/corpus`` beside the repository).

The tarball is extracted once into a cache folder (``$TELFHASH_CACHE`` or
``~/.cache/telfhash-core``); set ``TELFHASH_CORPUS`` to point at another copy.

Where the shared folder is absent, the committed fixtures (``tests/fixtures``: files copied from
the corpus with their manifest entries and reference values) stand in for it: ``files()``,
``root()`` answer from them, laid out as the corpus is, and ``manifest()`` from the committed
copy of the corpus's manifest (every reference value), so a bare clone runs the corpus tests on
a small sample.  A test that needs the whole corpus (counts, particular
files) calls :func:`require_full` and is skipped there; ``TELFHASH_NO_FIXTURE_CORPUS=1`` skips
every corpus test instead.
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
# The static, stripped corpus (14 CPUs): beside the main one unless TELFHASH_CORPUS_STATIC says where.
STATIC = Path(os.environ.get("TELFHASH_CORPUS_STATIC", SHARED.parent / "corpus-static"))
CACHE = Path(os.environ.get("TELFHASH_CACHE", Path.home() / ".cache" / "telfhash-core"))


def available() -> bool:
    return (SHARED / "manifest.json").is_file() and (SHARED / "elf-corpus.tar.xz").is_file()


# Every skip for an absent corpus carries this text (tests/conftest.py folds them into one line).
SKIP_MARK = "corpus not found at"

HOW_TO_GET = (
    "The corpora are the folders corpus/ and corpus-static/ of the project's shared data (manifest.json and "
    "elf-corpus.tar.xz each), expected beside the repository in ../shared/; elsewhere set TELFHASH_CORPUS=/path/to/corpus "
    "(and TELFHASH_CORPUS_STATIC=/path/to/corpus-static). The tests that need them add breadth; tests/fixtures covers "
    "every route without them."
)


def skip_reason() -> str:
    return f"shared corpus not found at {SHARED} (set TELFHASH_CORPUS to its folder)"


def missing() -> list[str]:
    """The corpora that are absent, as paths."""
    out = [] if available() else [str(SHARED)]
    return out + ([] if static_available() else [str(STATIC)])


FIXTURES = Path(__file__).resolve().parent / "fixtures"


def using_fixtures() -> bool:
    """True when the committed fixtures stand in for the absent shared corpus."""
    return not available() and not os.environ.get("TELFHASH_NO_FIXTURE_CORPUS")


def require_full(what: str = "the whole corpus") -> None:
    """Skip the calling test unless the shared corpus itself is here (not the fixture sample)."""
    if not available():
        pytest.skip(full_reason(what))


def full_reason(what: str = "the whole corpus") -> str:
    return f"needs {what}: {skip_reason()}"


@lru_cache(maxsize=None)
def manifest() -> dict:
    """The corpus manifest.  Without the shared corpus: its committed copy
    (``fixtures/corpus-manifest.json.gz``: every file's reference value), of whose files only the
    fixtures are here (see :func:`files`)."""
    if using_fixtures():
        import gzip

        return json.loads(gzip.decompress((FIXTURES / "corpus-manifest.json.gz").read_bytes()))
    if not available():
        pytest.skip(skip_reason())
    return json.loads((SHARED / "manifest.json").read_text())


@lru_cache(maxsize=None)
def root() -> Path:
    """The extracted corpus folder (extracting on first use); the fixtures laid out likewise."""
    if using_fixtures():
        return _fixture_root()
    return _extract(SHARED, manifest(), "corpus")


def _fixture_root() -> Path:
    """A folder ``ARCH/PKG/FILE`` of links to the fixtures (the corpus's layout)."""
    data = json.loads((FIXTURES / "fixtures.json").read_text())
    dest = CACHE / "fixture-corpus"
    for e in data["files"]:
        link = dest / e["corpus_path"]
        target = (FIXTURES / e["fixture"]).resolve()
        if link.is_symlink() and link.resolve() == target:
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    return dest


def _extract(folder: Path, m: dict, prefix: str) -> Path:
    tarball = folder / "elf-corpus.tar.xz"
    st = tarball.stat()
    dest = CACHE / f"{prefix}-{st.st_size}-{int(st.st_mtime)}"
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
    """Manifest entries, each with an added ``abspath`` (without the shared corpus: the fixtures')."""
    base = root()
    entries = manifest()["files"]
    if using_fixtures():
        here = {e["corpus_path"] for e in json.loads((FIXTURES / "fixtures.json").read_text())["files"]}
        entries = [f for f in entries if f["path"] in here]
    return [dict(f, abspath=str(base / f["path"])) for f in entries]


def static_available() -> bool:
    return (STATIC / "manifest.json").is_file() and (STATIC / "elf-corpus.tar.xz").is_file()


def static_skip_reason() -> str:
    return f"shared static corpus not found at {STATIC} (set TELFHASH_CORPUS_STATIC to its folder)"


@lru_cache(maxsize=None)
def static_manifest() -> dict:
    if not static_available():
        pytest.skip(static_skip_reason())
    return json.loads((STATIC / "manifest.json").read_text())


@lru_cache(maxsize=None)
def static_root() -> Path:
    """The extracted static corpus folder (extracting on first use; ~900 MB)."""
    return _extract(STATIC, static_manifest(), "corpus-static")


def static_files() -> list[dict]:
    """Static-corpus manifest entries, each with an added ``abspath``."""
    base = static_root()
    return [dict(f, abspath=str(base / f["path"])) for f in static_manifest()["files"]]


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
