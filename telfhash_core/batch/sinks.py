"""Where a batch run writes: durable, append-only JSONL files and Parquet folders, and reading
them back (resume, ``batch cluster``)."""

from __future__ import annotations

import fcntl
import json
import os
import time

from ..readers import Problem, iter_items
from .common import BatchError, need

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
        return sorted(
            os.path.join(self.path, n)
            for n in os.listdir(self.path)
            if n.endswith(".parquet") and not n.startswith((".", "_"))
        )

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
