"""Corpus-scale batch hashing: resumable, locally (process pool) or on a Dask cluster, to JSONL or Parquet.

``telfhash batch INPUT... -o OUT`` hashes every file the inputs name and writes one row per
file.  Inputs are folders (walked recursively), files, file lists (``@list.txt``,
``--from-list FILE``, ``-`` for stdin; one path or URL per line) and fsspec URLs
(``file://``, ``s3://`` with s3fs, ``memory://`` in-process only, ...).  Rerunning the same
command with the same output skips what is already written, so a killed run resumes and the
output ends with every file exactly once.  ``telfhash batch cluster RESULTS -o CLUSTERS`` groups
the digests of a results file (see :mod:`telfhash_core.batch.partitioned`).  See ``docs/batch.md``.

Dask, pyarrow and fsspec are optional (``pip install telfhash-core[dask]``) and imported only
when asked for.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import stat
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from ..hashing.api import walk_files
from ..parallel import bounded, worker_init
from ..progress import Progress, plural
from ..readers import Problem, iter_items
from ..result import Reason
from .common import EXTRA_HINT, BatchError, close_client, dask_client, is_url, log, need  # noqa: F401  (EXTRA_HINT: re-exported)


# One row per file, in this column order (also the Parquet schema, see parquet_schema()).
COLUMNS = (
    "path",  # the input as given (a local path or a URL)
    "size",  # bytes, null when the file could not be examined
    "mtime_ns",  # modification time in ns (null when unknown), part of the resume key
    "sha256",  # hex, null when the file could not be read
    "telfhash",  # t1 + 70 hex (the reference's spelling) or null
    "reason",  # why there is no telfhash (a telfhash_core.Reason code), null with a telfhash
    "detail",  # the reason in words, null with a telfhash
    "arch",  # pyelftools machine name ("x64", "ARM", ...), null when not an ELF file
    "method",  # "dynsym", "symtab" or "fallback"
    "fallback",  # true when the digest came from the call-destination fallback
    "symbols",  # names (or call destinations) that went into the digest
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
        return _error_row(url, Reason.TOO_LARGE, f"object is {size} bytes, over the limit of {DEFAULT_MAX_SIZE}", size, mtime)
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


# ----------------------------------------------------------------------------- inputs


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


# ----------------------------------------------------------------------------- outputs


def clean_text(value: str) -> str:
    """``value`` as valid UTF-8: the bytes of a name that is not UTF-8 (held as surrogates, as
    ``os.walk`` returns it) are written as ``\\xNN`` escapes."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def clean_row(row: dict) -> dict:
    """A row whose strings all encode as UTF-8 (required by JSON files read back and by Parquet)."""
    return {k: clean_text(v) if isinstance(v, str) else v for k, v in row.items()}


class _Sink:
    """Durable, append-only output.  Subclasses: :class:`JsonlSink`, :class:`ParquetSink`."""

    path: str

    def existing(self) -> list[dict]:  # rows already written (resume)
        raise NotImplementedError

    def drop_paths(self, paths: set[str]) -> None:  # remove stale rows before resuming
        raise NotImplementedError

    def write(self, rows: list[dict]) -> None:  # durable when it returns
        raise NotImplementedError

    def close(self) -> None:
        pass


def _lock(fd: int, what: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise BatchError(f"{what} is being written by another telfhash batch run") from None


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class JsonlSink(_Sink):
    """One JSON object per line; each batch of rows is appended and fsync'ed.

    A line cut short by a kill (no final newline) is removed when the file is opened again.
    """

    def __init__(self, path: str):
        self.path = path
        if os.path.isdir(path):
            raise BatchError(f"{path} is a folder; JSONL output is a file (use --format parquet for a folder)")
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise BatchError(f"cannot open {path}: {exc.strerror or exc}") from None
        _lock(self.fd, path)
        self._repair_tail()

    def _repair_tail(self) -> None:
        size = os.fstat(self.fd).st_size
        if size == 0:
            return
        pos, cut = size, None
        while pos > 0:
            step = min(65536, pos)
            pos -= step
            block = os.pread(self.fd, step, pos)
            k = block.rfind(b"\n")
            if k >= 0:
                cut = pos + k + 1
                break
        cut = cut or 0
        if cut != size:
            os.ftruncate(self.fd, cut)
            os.fsync(self.fd)

    def existing(self) -> list[dict]:
        rows = []
        with open(self.path, "rb") as fh:
            for item in iter_items(fh):
                if isinstance(item, Problem):
                    raise BatchError(f"{item.at(self.path)}: not a telfhash batch output?")
                rows.append(item)
        return rows

    def drop_paths(self, paths: set[str]) -> None:
        tmp = self.path + ".rewrite.tmp"
        with open(self.path, "rb") as src, open(tmp, "wb") as dst:
            for line in src:
                if line.strip() and json.loads(line).get("path") in paths:
                    continue
                dst.write(line)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        _lock(self.fd, self.path)

    def write(self, rows: list[dict]) -> None:
        if not rows:
            return
        data = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in rows)
        buf = data.encode("utf-8")  # rows are clean_row()ed: valid UTF-8
        while buf:
            n = os.write(self.fd, buf)
            buf = buf[n:]
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def parquet_schema():
    """The pyarrow schema of batch rows (Parquet output)."""
    pa = need("pyarrow")
    return pa.schema(
        [
            ("path", pa.string()),
            ("size", pa.int64()),
            ("mtime_ns", pa.int64()),
            ("sha256", pa.string()),
            ("telfhash", pa.string()),
            ("reason", pa.string()),
            ("detail", pa.string()),
            ("arch", pa.string()),
            ("method", pa.string()),
            ("fallback", pa.bool_()),
            ("symbols", pa.int32()),
        ]
    )


class ParquetSink(_Sink):
    """A folder of Parquet part files ``part-<run>-<seq>.parquet``, one per batch of rows.

    Each part is written as a hidden ``.part-*.tmp`` file, fsync'ed and renamed into place, so a
    kill leaves only whole parts (readers skip hidden files).  Read the whole output with
    ``pyarrow.parquet.read_table(OUT)`` or ``pyarrow.dataset.dataset(OUT)``.
    """

    def __init__(self, path: str):
        self.pa = need("pyarrow")
        self.pq = need("pyarrow.parquet")
        self.path = path
        if os.path.exists(path) and not os.path.isdir(path):
            raise BatchError(f"{path} is a file; Parquet output is a folder of part files")
        try:
            os.makedirs(path, exist_ok=True)
            self.lock_fd = os.open(os.path.join(path, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise BatchError(f"cannot create {path}: {exc.strerror or exc}") from None
        _lock(self.lock_fd, path)
        for name in os.listdir(path):  # parts a kill left unfinished
            if name.startswith(".part-") and name.endswith(".tmp"):
                os.unlink(os.path.join(path, name))
        # unique per run (two runs in one second and one process must not reuse part names)
        self.run = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.urandom(4).hex()}"
        self.seq = 0
        self.schema = parquet_schema()

    def _parts(self) -> list[str]:
        return sorted(os.path.join(self.path, n) for n in os.listdir(self.path) if n.endswith(".parquet") and not n.startswith((".", "_")))

    def existing(self) -> list[dict]:
        rows = []
        for part in self._parts():
            try:
                table = self.pq.read_table(part, columns=["path", "size", "mtime_ns", "sha256"])
            except Exception as exc:
                raise BatchError(f"cannot read {part}: {exc}") from None
            rows.extend(table.to_pylist())
        return rows

    def drop_paths(self, paths: set[str]) -> None:
        pc = need("pyarrow.compute")
        value_set = self.pa.array(sorted(paths), type=self.pa.string())
        for part in self._parts():
            table = self.pq.read_table(part, schema=self.schema)
            mask = pc.is_in(table["path"], value_set=value_set)
            if not pc.any(mask).as_py():
                continue
            kept = table.filter(pc.invert(mask))
            self._write_table(kept, os.path.basename(part)) if kept.num_rows else os.unlink(part)
        _fsync_dir(self.path)

    def _write_table(self, table, name: str) -> None:
        tmp = os.path.join(self.path, f".part-{name}.tmp")
        self.pq.write_table(table, tmp, compression="zstd")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, os.path.join(self.path, name))

    def write(self, rows: list[dict]) -> None:
        if not rows:
            return
        table = self.pa.Table.from_pylist([{k: r.get(k) for k in COLUMNS} for r in rows], schema=self.schema)
        self.seq += 1
        self._write_table(table, f"part-{self.run}-{self.seq:06d}.parquet")
        _fsync_dir(self.path)

    def close(self) -> None:
        os.close(self.lock_fd)


def open_sink(path: str, fmt: str) -> _Sink:
    if fmt == "jsonl":
        return JsonlSink(path)
    if fmt == "parquet":
        return ParquetSink(path)
    raise BatchError(f"unknown output format {fmt!r} (jsonl or parquet)")


def read_rows(path: str) -> list[dict]:
    """Every row of a batch output (JSONL file or Parquet folder/file); also reads ``telfhash -f jsonl``."""
    if os.path.isdir(path) or path.endswith(".parquet"):
        pq = need("pyarrow.parquet")
        try:
            return pq.read_table(path).to_pylist()
        except Exception as exc:
            raise BatchError(f"cannot read {path}: {exc}") from None
    rows = []
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise BatchError(f"cannot read {path}: {exc.strerror or exc}") from None
    with fh:
        for item in iter_items(fh):
            if isinstance(item, Problem):
                if item.cut:  # a line cut short by a kill
                    break
                raise BatchError(f"{item.at(path)}: not a telfhash output?")
            rows.append(item)
    for r in rows:
        if "path" not in r and "file" in r:
            r["path"] = r["file"]
    return rows


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
        bounded(chunks, lambda c: client.submit(hash_chunk, c, skip_f, pure=False), max(8, nworkers * 8), wait_any=wait_any)
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
                    note(f"{plural(len(paths), 'file')} not hashed ({type(rows).__name__}: {rows}); rerun to retry them")
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
