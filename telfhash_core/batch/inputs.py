"""What a batch run reads: folders, files, file lists and fsspec URLs, expanded to one list of
inputs, and the resume key of each (size and modification time, as a worker records them)."""

from __future__ import annotations

import os
import stat
import sys
from typing import Callable, Iterable

from ..hashing.api import walk_files
from .common import BatchError, is_url, log, need


def _mtime_from_info(info: dict) -> int | None:
    """Modification time (ns) from an fsspec ``info`` dict, whatever the backend calls it."""
    import datetime as _dt

    for key in ("mtime", "LastModified", "last_modified", "updated", "modified", "created"):
        v = info.get(key)
        if v is None:
            continue
        if isinstance(v, _dt.datetime):
            return int(v.timestamp() * 1e9)
        if isinstance(v, (int, float)):
            return int(v * 1e9) if v < 1e11 else int(v)
        if isinstance(v, str):
            try:
                return int(_dt.datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp() * 1e9)
            except ValueError:
                continue
    return None


def read_list(source: str) -> list[str]:
    """Paths from a list file (one per line; ``-`` = stdin); blank lines are ignored."""
    try:
        if source == "-":
            text = sys.stdin.read()
        else:
            with open(source, encoding="utf-8", errors="surrogateescape") as fh:
                text = fh.read()
    except OSError as exc:
        raise BatchError(f"cannot read the file list {source}: {exc.strerror or exc}") from None
    return [line.rstrip("\r") for line in text.split("\n") if line.strip()]


def _expand_url(url: str, on_error: Callable[[str], None]) -> list[str]:
    fsspec = need("fsspec")
    try:
        fs, p = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        on_error(f"{url}: no fsspec backend for this URL ({exc})")
        return [url]
    try:
        if any(c in p for c in "*?["):
            found = sorted(fs.glob(p))
            found = [f for f in found if not fs.isdir(f)]
        elif fs.isdir(p):
            found = sorted(fs.find(p))
        else:
            return [url]
    except Exception as exc:
        on_error(f"{url}: {type(exc).__name__}: {exc}")
        return [url]
    return [fs.unstrip_protocol(f) for f in found]


def expand_inputs(
    inputs: Iterable[str], from_lists: Iterable[str] = (), on_error: Callable[[str], None] | None = None
) -> list[str]:
    """The inputs' files, each once, in the order first named.

    ``@FILE`` and ``from_lists`` entries are file lists; ``-`` reads a list from stdin; a folder is
    walked recursively (links to folders are not followed); a URL with a scheme goes through
    fsspec (folders and wildcards are expanded).  Other paths are kept as given, so that a
    missing file gets a row saying so.
    """
    report = on_error or log.warning
    out: list[str] = []
    seen: set[str] = set()

    def add(p: str) -> None:
        if p not in seen:
            seen.add(p)
            out.append(p)

    def one(arg: str) -> None:
        if is_url(arg):
            for p in _expand_url(arg, report):
                add(p)
        elif os.path.isdir(arg):
            for p in walk_files(arg, report):
                add(p)
        else:
            add(arg)

    for arg in inputs:
        if arg == "-" or (arg.startswith("@") and len(arg) > 1):
            for line in read_list("-" if arg == "-" else arg[1:]):
                one(line)
        else:
            one(arg)
    for lst in from_lists:
        for line in read_list(lst):
            one(line)
    return out


def _stat_key(path: str) -> tuple:
    """``(size, mtime_ns)`` as a worker would record it (``(None, None)`` when it cannot be examined)."""
    if is_url(path):
        try:
            fsspec = need("fsspec")
            fs, p = fsspec.core.url_to_fs(path)
            info = fs.info(p)
            if info.get("type") == "directory":
                return (None, _mtime_from_info(info))
            return (info.get("size"), _mtime_from_info(info))
        except Exception:
            return (None, None)
    try:
        st = os.stat(path)
    except OSError:
        return (None, None)
    if stat.S_ISREG(st.st_mode):
        return (st.st_size, st.st_mtime_ns)
    return (None, st.st_mtime_ns)  # not a regular file: the worker records no size
