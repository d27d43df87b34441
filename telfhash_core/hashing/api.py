"""Hash files: one by path, bytes or open file; many paths, in parallel, with per-file errors."""

from __future__ import annotations

import glob
import mmap
import os
import stat
import time
from typing import IO, Any, Callable, Iterable, Iterator

from ..parallel import bounded, worker_init
from ..result import Reason, Result
from .elf import hash_buffer

# Files larger than this are not read (a per-file error, not a crash).  Memory-mapped, so a
# large limit costs nothing; the limit exists for fileobj input, which is read into memory.
DEFAULT_MAX_SIZE = 1 << 32  # 4 GiB

# hash_paths starts its process pool only once the files hashed in this process cost POOL_AFTER
# CPU seconds and the remaining files are estimated at POOL_MIN_REST CPU seconds or more.
POOL_AFTER = 0.25
POOL_MIN_REST = 2.0


def _error(file: str, reason: Reason, detail: str, size: int | None = None) -> Result:
    return Result(file=file, reason=reason, detail=detail, size=size)


def _add_fields(buf, result: Result, fields) -> None:
    """Compute the opt-in fields (from plugins' ``telfhash_fields``) into ``result.extra``."""
    if not fields:
        return
    from ..plugins import field_functions

    known = field_functions()
    for name in fields:
        fn = known.get(name)
        if fn is None:
            result.extra[name] = None
            continue
        try:
            result.extra[name] = fn(buf, result)
        except Exception as exc:  # a field must never cost the file its telfhash
            result.extra[name] = None
            result.extra.setdefault("field_errors", {})[name] = f"{type(exc).__name__}: {exc}"


def hash_file(
    path: str | os.PathLike, *, sha256: bool = False, max_size: int = DEFAULT_MAX_SIZE, fields: Iterable[str] = ()
) -> Result:
    """The telfhash of the file at ``path``.  Never raises for a bad file: the result says why.

    Only regular files are opened for reading (a FIFO or device among the paths cannot hang
    the batch).  ``sha256=True`` also fills ``result.sha256``.
    """
    name = os.fspath(path)
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return _error(name, Reason.NOT_FOUND, "no such file or directory")
    except IsADirectoryError:
        return _error(name, Reason.DIRECTORY, "is a directory (use -r to hash the files in it)")
    except OSError as exc:
        return _error(name, Reason.UNREADABLE, f"cannot read: {exc.strerror or exc}")
    except ValueError as exc:  # e.g. a NUL byte in the path
        return _error(name, Reason.UNREADABLE, f"cannot read: invalid path ({exc})")
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            return _error(name, Reason.DIRECTORY, "is a directory (use -r to hash the files in it)")
        if not stat.S_ISREG(st.st_mode):
            kind = "FIFO" if stat.S_ISFIFO(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode) else "device"
            return _error(name, Reason.NOT_REGULAR, f"not a regular file ({kind}); not read")
        size = st.st_size
        if size == 0:
            return _error(name, Reason.EMPTY, "empty file (0 bytes)", 0)
        if size > max_size:
            return _error(name, Reason.TOO_LARGE, f"file is {size} bytes, over the limit of {max_size}", size)
        try:
            mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            return _error(name, Reason.UNREADABLE, f"cannot read: {exc}", size)
        try:
            result = hash_buffer(mm, name)
            _add_fields(mm, result, fields)
            if sha256:
                import hashlib  # here: a plain hash needs no SHA-256

                result.sha256 = hashlib.sha256(mm).hexdigest()
        except OSError as exc:  # e.g. the file shrank under us (SIGBUS is not raised for reads via mmap slices)
            result = _error(name, Reason.UNREADABLE, f"cannot read: {exc}", size)
        finally:
            mm.close()
        result.size = size
        return result
    finally:
        os.close(fd)


def hash_bytes(
    data: bytes | bytearray | memoryview, name: str = "<bytes>", *, sha256: bool = False, fields: Iterable[str] = ()
) -> Result:
    """The telfhash of an ELF image held in memory."""
    buf = data if isinstance(data, bytes) else bytes(data)
    if len(buf) == 0:
        return _error(name, Reason.EMPTY, "empty file (0 bytes)", 0)
    result = hash_buffer(buf, name)
    _add_fields(buf, result, fields)
    result.size = len(buf)
    if sha256:
        import hashlib

        result.sha256 = hashlib.sha256(buf).hexdigest()
    return result


def hash_fileobj(
    fileobj: IO[bytes],
    name: str | None = None,
    *,
    sha256: bool = False,
    max_size: int = DEFAULT_MAX_SIZE,
    fields: Iterable[str] = (),
) -> Result:
    """The telfhash of an open binary file (read from its current position to the end)."""
    name = name or getattr(fileobj, "name", None) or "<stream>"
    if not isinstance(name, str):
        name = str(name)
    try:
        data = fileobj.read(max_size + 1)
    except OSError as exc:
        return _error(name, Reason.UNREADABLE, f"cannot read: {exc}")
    if not isinstance(data, (bytes, bytearray)):
        return _error(name, Reason.UNREADABLE, "the stream is not opened in binary mode")
    if len(data) > max_size:
        return _error(name, Reason.TOO_LARGE, f"stream is over the limit of {max_size} bytes")
    return hash_bytes(bytes(data), name, sha256=sha256, fields=fields)


# ----------------------------------------------------------------------------- many files


def expand_paths(
    paths: Iterable[str],
    recursive: bool = False,
    *,
    reference: bool = False,
    on_error: Callable[[str], None] | None = None,
    on_file: Callable[[str], None] | None = None,
) -> list[str]:
    """Turn command-line arguments into the list of files to hash.

    Wildcards are expanded with glob, as the reference does.  With ``recursive`` a directory
    is walked (symbolic links to directories are not followed, so a link cycle cannot loop).
    ``reference=True`` is the reference's rule exactly: without ``recursive`` only regular
    files are kept, and paths that do not exist are dropped silently.  Otherwise a path that
    does not exist or a directory given without ``recursive`` is kept, so that it gets a
    per-file result saying why it was not hashed.  ``on_file(path)`` is called for each file
    found, as the walk goes (a progress counter).
    """
    files: list[str] = []
    for f in _iter_paths(paths, recursive, reference, on_error):
        files.append(f)
        if on_file is not None:
            on_file(f)
    return files


def _iter_paths(
    paths: Iterable[str], recursive: bool, reference: bool, on_error: Callable[[str], None] | None
) -> Iterator[str]:
    for arg in paths:
        arg = os.fspath(arg)
        if recursive and os.path.isdir(arg):
            yield from walk_files(arg, on_error)
            continue
        matches = sorted(glob.glob(arg)) if glob.has_magic(arg) else [arg]
        if reference:
            yield from (m for m in matches if os.path.isfile(m))
            continue
        if not matches:  # a wildcard that matched nothing
            yield arg
        for m in matches:
            if recursive and os.path.isdir(m):
                yield from walk_files(m, on_error)
            else:
                yield m


def walk_files(folder: str, on_error: Callable[[str], None] | None = None) -> Iterator[str]:
    """Every file below ``folder``, in sorted order, folder by folder (the one walker of the
    package).  Links to folders are not followed, so a link cycle cannot loop; a folder that
    cannot be listed is reported to ``on_error`` as ``"PATH: why"`` and passed over."""
    report = (lambda e: on_error(f"{e.filename}: {e.strerror}")) if on_error else None
    for top, dirs, names in os.walk(folder, onerror=report):
        dirs.sort()
        for n in sorted(names):
            yield os.path.join(top, n)


_Work = tuple[str, bool, tuple[str, ...]]


def _hash_one(args: _Work) -> Result:
    path, sha, fields = args
    try:
        return hash_file(path, sha256=sha, fields=fields)
    except Exception as exc:  # pragma: no cover - last line of defence: a bug must not stop the batch
        return _error(path, Reason.INTERNAL, f"internal error: {exc!r}")


def hash_paths(
    paths: Iterable[str],
    *,
    jobs: int | None = 1,
    ordered: bool = True,
    sha256: bool = False,
    fields: Iterable[str] = (),
    chunksize: int | None = None,
    options: dict[str, Any] | None = None,
) -> Iterator[Result]:
    """Hash many files and yield one :class:`Result` per path.

    ``jobs``: processes to use (``None`` or 0 = all cores; 1 = this process).  ``ordered=False``
    yields results as they finish.  ``fields``: opt-in extra fields (see ``telfhash_fields``).
    Paths are used as given; see :func:`expand_paths`.  Every result goes through the plugins'
    ``telfhash_result`` hook (with ``options``) in this process before it is yielded.
    """
    from ..plugins import result_hook

    fire = result_hook(options)
    for r in _hash_paths(list(paths), jobs, ordered, sha256, tuple(fields), chunksize):
        if fire is not None:
            fire(r)
        yield r


def _hash_paths(
    paths: list[str], jobs: int | None, ordered: bool, sha256: bool, fields: tuple[str, ...], chunksize: int | None
) -> Iterator[Result]:
    jobs = (os.cpu_count() or 1) if not jobs else jobs
    jobs = max(1, min(jobs, len(paths) or 1))
    work = [(p, sha256, fields) for p in paths]
    if jobs == 1:
        for w in work:
            yield _hash_one(w)
        return
    # Files are hashed here until the rest of the job looks worth a pool: at least POOL_AFTER CPU
    # seconds spent, and the rest estimated at POOL_MIN_REST or more at the rate so far (starting
    # the workers costs about 0.15 CPU-s each).  A short job never pays for processes, and the
    # workers of a long one, forked after these files, inherit the modules they needed (NumPy,
    # libcapstone, pyelftools where those files needed them) instead of importing them.
    started = time.process_time()
    after_first = started  # the rate leaves the first file out: it pays for the imports
    done = 0
    while done < len(work):
        now = time.process_time()
        if done == 1:
            after_first = now
        rate = (now - after_first) / (done - 1) if done > 1 else 0.0
        if now - started >= POOL_AFTER and rate * (len(work) - done) >= POOL_MIN_REST:
            break
        yield _hash_one(work[done])
        done += 1
    work = work[done:]
    if len(work) < 2:
        for w in work:
            yield _hash_one(w)
        return
    if chunksize is None:
        chunksize = max(1, min(16, len(work) // (jobs * 8) or 1))  # small: one big file must not hold back a long chunk
    from concurrent.futures import ProcessPoolExecutor  # imported here: a small job needs no pool

    with ProcessPoolExecutor(max_workers=jobs, initializer=worker_init) as pool:
        if ordered:
            yield from pool.map(_hash_one, work, chunksize=chunksize)
        else:
            chunks = [work[i : i + chunksize] for i in range(0, len(work), chunksize)]
            for _, fut in bounded(chunks, lambda c: pool.submit(_hash_chunk, c), jobs * 4):
                yield from fut.result()


def _hash_chunk(chunk: list[_Work]) -> list[Result]:
    return [_hash_one(w) for w in chunk]


def telfhash(*paths: str, recursive: bool = False, **_ignored) -> list[dict[str, str]]:
    """Drop-in for the reference's ``telfhash.telfhash(*paths, recursive=False)``.

    Returns the same list of ``{"file", "telfhash", "msg"}`` dicts, with the same path
    expansion (glob; paths that do not exist are skipped, as the reference skips them).
    """
    files = expand_paths(paths, recursive, reference=True)
    return [r.reference_dict() for r in hash_paths(files, jobs=1)]
