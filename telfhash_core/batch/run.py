"""Corpus-scale batch hashing: resumable, locally (process pool) or on a Dask cluster, to JSONL or Parquet.

``telfhash batch INPUT... -o OUT`` hashes every file the inputs name and writes one row per
file.  Inputs are folders (walked recursively), files, file lists (``@list.txt``,
``--from-list FILE``, ``-`` for stdin; one path or URL per line) and fsspec URLs
(``file://``, ``s3://`` with s3fs, ``memory://`` in-process only, ...).  Rerunning the same
command with the same output skips what is already written, so a killed run resumes and the
output ends with every file exactly once.  ``telfhash batch cluster RESULTS -o CLUSTERS`` groups
the digests of a results file (see :mod:`telfhash_core.batch.partitioned`).  See ``docs/batch.md``.

Inputs are expanded by :mod:`~telfhash_core.batch.inputs`, rows are written by
:mod:`~telfhash_core.batch.sinks`; this module hashes (one file -> one row), runs the engines and
keeps the run resumable.

Dask, pyarrow and fsspec are optional (the ``dask`` extra: ``pip install -e '.[dask]'``) and imported only
when asked for.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from ..parallel import bounded, worker_init
from ..progress import Progress, plural
from ..result import Reason
from .common import EXTRA_HINT, BatchError, close_client, dask_client, is_url, log, need  # noqa: F401  (re-exported)
from .inputs import _mtime_from_info, _stat_key, expand_inputs, read_list  # noqa: F401  (read_list: re-exported)
from .sinks import (  # noqa: F401  (the former home of these names)
    COLUMNS,
    JsonlSink,
    ParquetSink,
    clean_row,
    clean_text,
    open_sink,
    parquet_schema,
    read_rows,
)


DEFAULT_CHUNK = 32  # files per task sent to a worker
MAX_UNREAD_SHOWN = 20  # inputs that could not be read, reported one by one (then only counted)
FLUSH_SECONDS = 10.0


# Rows with these reasons are inputs that could not be read at all (counted apart; a run
# where nothing could be read fails).
UNREAD = frozenset({Reason.NOT_FOUND.value, Reason.UNREADABLE.value, Reason.DIRECTORY.value, Reason.NOT_REGULAR.value})


# ----------------------------------------------------------------------------- one file -> one row


def _row(path: str, result, mtime_ns: int | None) -> dict[str, Any]:
    ok = result.telfhash is not None
    return {
        "path": path,
        "size": result.size,
        "mtime_ns": mtime_ns,
        "sha256": result.sha256,
        "telfhash": result.telfhash,
        "reason": None if ok or result.reason is None else result.reason.value,
        "detail": None if ok else (result.detail or None),
        "arch": result.arch,
        "method": result.method,
        "fallback": result.method == "fallback",
        "symbols": int(result.symbols or 0),
    }


def _error_row(path: str, reason: Reason, detail: str, size=None, mtime_ns=None) -> dict[str, Any]:
    row = dict.fromkeys(COLUMNS)
    row.update(path=path, reason=reason.value, detail=detail, size=size, mtime_ns=mtime_ns, fallback=False, symbols=0)
    return row


def _sha256_local(path: str) -> str | None:
    h = hashlib.sha256()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(fd, "rb", closefd=False) as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    finally:
        os.close(fd)
    return h.hexdigest()


def hash_item(path: str, skip_sha256: frozenset | set | None = None) -> dict[str, Any] | None:
    """Hash one input (local path or fsspec URL) into a row; never raises.

    With ``skip_sha256``, returns None for a file whose SHA-256 is in that set (already written).
    """
    from ..hashing.api import DEFAULT_MAX_SIZE, hash_file

    try:
        if is_url(path):
            return _hash_url(path, skip_sha256)
        try:
            st = os.stat(path)
            mtime = st.st_mtime_ns
        except OSError:
            mtime = None
        if skip_sha256:
            sha = _sha256_local(path)
            if sha is not None and sha in skip_sha256:
                return None
        return _row(path, hash_file(path, sha256=True, max_size=DEFAULT_MAX_SIZE), mtime)
    except Exception as exc:  # last line of defence: one bad file must not cost the batch
        return _error_row(path, Reason.INTERNAL, f"internal error: {exc!r}")


def _hash_url(url: str, skip_sha256) -> dict[str, Any] | None:
    from ..hashing.api import DEFAULT_MAX_SIZE, hash_bytes

    fsspec = need("fsspec")
    try:
        fs, p = fsspec.core.url_to_fs(url)
        info = fs.info(p)
    except FileNotFoundError:
        return _error_row(url, Reason.NOT_FOUND, "no such file or object")
    except ImportError as exc:
        return _error_row(url, Reason.UNREADABLE, f"no fsspec backend for this URL: {exc}")
    except Exception as exc:
        return _error_row(url, Reason.UNREADABLE, f"cannot read: {type(exc).__name__}: {exc}")
    mtime = _mtime_from_info(info)
    size = info.get("size")
    if info.get("type") == "directory":
        return _error_row(url, Reason.DIRECTORY, "is a directory", None, mtime)
    if size is not None and size > DEFAULT_MAX_SIZE:
        return _error_row(
            url, Reason.TOO_LARGE, f"object is {size} bytes, over the limit of {DEFAULT_MAX_SIZE}", size, mtime
        )
    try:
        data = fs.cat_file(p)
    except Exception as exc:
        return _error_row(url, Reason.UNREADABLE, f"cannot read: {type(exc).__name__}: {exc}", size, mtime)
    if skip_sha256 and hashlib.sha256(data).hexdigest() in skip_sha256:
        return None
    return _row(url, hash_bytes(data, url, sha256=True), mtime)


def hash_chunk(paths: list[str], skip_sha256=None) -> list[dict[str, Any]]:
    """Rows for a list of inputs (the unit of work sent to a process or a Dask worker).

    Files whose SHA-256 is in ``skip_sha256`` give a ``{"path": ..., "skipped": True}`` marker.
    """
    out = []
    for p in paths:
        row = hash_item(p, skip_sha256)
        out.append(row if row is not None else {"path": p, "skipped": True})
    return out


# ----------------------------------------------------------------------------- engines


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


Work = Iterator[tuple[list[str], "list[dict] | BaseException"]]


def _outcomes(finished: Iterator[tuple[list[str], Any]]) -> Work:
    for c, fut in finished:
        try:
            yield c, fut.result()
        except Exception as exc:  # a worker died (e.g. out of memory) or was lost: retried on rerun
            yield c, exc


def _local_engine(chunks: list[list[str]], jobs: int, skip) -> Work:
    if jobs <= 1:
        for c in chunks:
            yield c, hash_chunk(c, skip)
        return
    from concurrent.futures import Future, ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=jobs, initializer=worker_init) as pool:

        def submit(c: list[str]) -> Future:
            try:
                return pool.submit(hash_chunk, c, skip)
            except Exception as exc:  # the pool is broken: this chunk fails, the run goes on
                failed: Future = Future()
                failed.set_exception(exc)
                return failed

        yield from _outcomes(bounded(chunks, submit, jobs * 4))


def _dask_engine(chunks: list[list[str]], client, skip) -> Work:
    distributed = need("distributed")
    skip_f = client.scatter(skip, broadcast=True) if skip else None
    nworkers = max(1, len(client.scheduler_info().get("workers", {})))

    def wait_any(pending: set) -> set:
        return set(distributed.wait(list(pending), return_when="FIRST_COMPLETED").done)

    for c, outcome in _outcomes(
        bounded(
            chunks, lambda c: client.submit(hash_chunk, c, skip_f, pure=False), max(8, nworkers * 8), wait_any=wait_any
        )
    ):
        yield c, outcome


# ----------------------------------------------------------------------------- the run


@dataclass
class BatchSummary:
    output: str
    inputs: int = 0  # files named by the inputs
    skipped: int = 0  # already in the output
    written: int = 0  # rows written by this run
    with_digest: int = 0
    unread: int = 0  # rows of inputs that could not be read (missing, unreadable, not a file)
    reasons: dict[str, int] = field(default_factory=dict)  # rows written without a telfhash, by Reason code
    failed_chunks: int = 0  # work units lost (worker crash): rerun to retry them
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _fire(fire: Callable[[Any], None], row: dict, fmt: str) -> None:
    """The ``telfhash_result`` hook for one row; in JSONL output what a plugin adds to
    ``result.extra`` becomes columns of the row (never replacing ours)."""
    from ..result import Result

    r = Result.from_dict({**row, "file": row.get("path")})
    fire(r)
    if fmt == "jsonl":
        for k, v in r.extra.items():
            row.setdefault(k, v)


def run_batch(
    inputs: Iterable[str],
    output: str,
    *,
    fmt: str = "jsonl",
    engine: str = "local",
    scheduler: str | None = None,
    jobs: int = 0,
    resume_key: str = "path",
    from_lists: Iterable[str] = (),
    chunk: int = DEFAULT_CHUNK,
    flush_rows: int | None = None,
    progress: bool | None = None,
    client=None,
    on_error: Callable[[str], None] | None = None,
) -> BatchSummary:
    """Hash every file of ``inputs`` into ``output`` (see the module docstring); resumable.

    ``engine``: ``"local"`` (process pool of ``jobs`` processes; 0 = all cores, 1 = this process)
    or ``"dask"`` (``client``, or a Client to ``scheduler``, or a new local cluster).
    ``resume_key``: ``"path"`` (path + size + mtime) or ``"sha256"`` (file content).
    """
    t0 = time.perf_counter()
    if resume_key not in ("path", "sha256"):
        raise BatchError(f"unknown resume key {resume_key!r} (path or sha256)")
    if engine not in ("local", "dask"):
        raise BatchError(f"unknown engine {engine!r} (local or dask)")
    errors: list[str] = []
    report = on_error or log.warning

    def note(m: str) -> None:
        errors.append(m)
        report(m)

    if engine == "dask" and client is None:  # fail early, before any work, when dask is missing
        need("distributed")
    sink = open_sink(output, fmt)
    summary = BatchSummary(output=output)
    own_client = None
    try:
        files = expand_inputs(inputs, from_lists, note)
        summary.inputs = len(files)
        # ---- what is already written
        done_rows = sink.existing()
        skip_sha: set[str] = set()
        todo: list[str]
        if resume_key == "path":
            written = {r["path"]: (r.get("size"), r.get("mtime_ns")) for r in done_rows}
            stale, todo = set(), []
            for p in files:
                shown = clean_text(p)
                if shown in written:
                    if _stat_key(p) == written[shown]:
                        summary.skipped += 1
                        continue
                    stale.add(shown)
                todo.append(p)
            if stale:
                sink.drop_paths(stale)
        else:
            skip_sha = {r["sha256"] for r in done_rows if r.get("sha256")}
            # rows without a SHA-256 (the file could not be read) are keyed by path
            no_sha_paths = {r["path"] for r in done_rows if not r.get("sha256")}
            todo = []
            for p in files:
                if clean_text(p) in no_sha_paths:
                    summary.skipped += 1
                    continue
                todo.append(p)
        del done_rows
        # ---- the work
        chunk = max(1, int(chunk))
        if engine == "local":
            jobs = jobs or (os.cpu_count() or 1)
            if len(todo) < 4 * chunk:
                chunk = max(1, len(todo) // max(1, jobs * 2))
            work = _local_engine(_chunks(todo, chunk), min(jobs, max(1, len(todo))), frozenset(skip_sha) or None)
        else:
            if client is None:
                client = own_client = dask_client(scheduler, jobs)
            work = _dask_engine(_chunks(todo, chunk), client, frozenset(skip_sha) or None)
        flush_rows = flush_rows or (1000 if fmt == "jsonl" else 20000)
        bar = Progress(len(todo), enabled=progress, min_total=1, desc="telfhash batch", prog="telfhash batch")
        from ..plugins import result_hook

        fire = result_hook({"command": "batch", "output": output, "format": fmt})
        buffer: list[dict] = []
        last_flush = time.monotonic()
        unread_shown = 0

        def flush() -> None:
            nonlocal last_flush
            sink.write(buffer)
            summary.written += len(buffer)
            summary.with_digest += sum(1 for r in buffer if r.get("telfhash"))
            summary.unread += sum(1 for r in buffer if r.get("reason") in UNREAD)
            buffer.clear()
            last_flush = time.monotonic()

        try:
            for paths, rows in work:
                if isinstance(rows, BaseException):
                    summary.failed_chunks += 1
                    note(
                        f"{plural(len(paths), 'file')} not hashed ({type(rows).__name__}: {rows}); rerun to retry them"
                    )
                    bar.update(len(paths))
                else:
                    for r in rows:
                        bar.update(1, None if r.get("skipped") else r)
                        if r.get("skipped"):
                            summary.skipped += 1
                            continue
                        if resume_key == "sha256" and r.get("sha256"):
                            if r["sha256"] in skip_sha:  # same content seen under another path in this run
                                summary.skipped += 1
                                continue
                            skip_sha.add(r["sha256"])
                        if r.get("reason") in UNREAD:
                            unread_shown += 1
                            if unread_shown <= MAX_UNREAD_SHOWN:
                                note(f"{r.get('path')}: not read ({r.get('reason')}: {r.get('detail')})")
                        if fire is not None:
                            _fire(fire, r, fmt)
                        buffer.append(clean_row(r))
                if len(buffer) >= flush_rows or (buffer and time.monotonic() - last_flush >= FLUSH_SECONDS):
                    flush()
        finally:
            flush()  # also on Ctrl-C: what was received is kept
            bar.close(summary=False)  # the caller prints the summary
            summary.reasons = dict(bar.reasons.most_common())
    finally:
        sink.close()
        close_client(own_client)
    summary.errors = errors
    summary.seconds = time.perf_counter() - t0
    return summary
