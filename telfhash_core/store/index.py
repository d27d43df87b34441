"""A local similarity index: telfhash results in one SQLite file, searched by TLSH distance.

    >>> from telfhash_core.store.index import Index
    >>> with Index("corpus.sqlite") as ix:
    ...     ix.add_files(["/samples"], recursive=True)       # hash (with SHA-256) and record
    ...     ix.add_jsonl("earlier.jsonl")                     # or results from `telfhash -f jsonl --sha256`
    ...     for m in ix.search("t1…", max_distance=50):       # or a path: the file is hashed first
    ...         print(m.distance, m.sha256, m.path)

Storage.  One SQLite file (default ``$TELFHASH_INDEX`` or
``~/.local/share/telfhash-core/index.sqlite``) in WAL mode: any number of processes may read
while one adds.  Adds are committed in batches, so a killed ``add`` keeps every batch already
committed and a re-run only adds what is missing.  Digests are stored packed (the 35 bytes the
70 hex characters spell); a search loads them once into a NumPy matrix (see
:mod:`telfhash_core.similarity.tlshdist`) and reloads only what changed since (a generation counter in
the ``meta`` table), so a query is one vectorised pass over every entry.

Identity.  An entry is one sample, keyed by its SHA-256: adding the same sample again does not
make a second entry.  The first sighting's ``path``, ``source`` and ``added`` time are kept;
fields that were empty (digest, companion hash, architecture, size, ...) are filled in from the
later add.  Samples whose telfhash could not be computed are recorded with their ``reason``
and never match a search.  Results without a SHA-256 are not recorded (hash with ``--sha256``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np

from ..digest import DEFAULT_THRESHOLD, PACKED_LEN, TLSH_HEX_LEN, is_digest, normalize, pack, spell, tagged_body, unpack
from ..hashing.filehashes import FILE_HASH_FIELDS
from ..readers import iter_items
from . import SEARCH_KEYS
from ..result import Reason, Result, infer_reason

if TYPE_CHECKING:  # tlshdist (NumPy kernels, numba) is imported on first search, not with the CLI
    from ..similarity.tlshdist import Encoded

__all__ = ["Index", "Match", "AddStats", "default_path", "SCHEMA_VERSION"]

SCHEMA_VERSION = 2  # 2: md5, sha1 and a family label per entry
APPLICATION_ID = 0x74656C66  # "telf": marks the file as a telfhash-core index
DEFAULT_BATCH = 2000  # results per committed transaction
SNAPSHOT_MIN_ROWS = 20_000  # store the digest matrix when this many entries are not in it yet
SNAPSHOT_PART_ROWS = 1_000_000  # rows per stored blob (SQLite limits a blob to 1 GB)
COMMIT_SECONDS = 2.0  # ... or at least this often while hashing files
COMPANION_TAGS = ("tx1", "tx2")  # companion rule sets read; a search or cluster never mixes them
DIGEST_HEX = TLSH_HEX_LEN  # hex characters of a digest without its "t1"; packed: PACKED_LEN bytes

_SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_HEX_RE = {32: re.compile(r"^[0-9a-fA-F]{32}$"), 40: re.compile(r"^[0-9a-fA-F]{40}$"), 64: _SHA256_RE}
# columns added after schema 1, with their look-up indexes (an older index gains them on open)
_ADDED_COLUMNS = ("md5", "sha1", "label")
_LOOKUP_INDEXES = (
    "CREATE INDEX IF NOT EXISTS entries_md5 ON entries(md5)",
    "CREATE INDEX IF NOT EXISTS entries_sha1 ON entries(sha1)",
)
MAX_LABEL = 256  # characters of a family label
# search keys: name -> (packed digest column, text column)
_KEYS = SEARCH_KEYS

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,     -- lower-case hex, the identity of a sample
    path TEXT,                       -- where it was first seen
    digest BLOB,                     -- telfhash packed (35 bytes), NULL when there is none
    telfhash_x TEXT,                 -- companion hash as given, e.g. "tx1:t1<70 hex>"
    digest_x BLOB,                   -- its digest packed (35 bytes), when it has one
    arch TEXT,
    size INTEGER,
    method TEXT,
    symbols INTEGER,
    reason TEXT,                     -- why there is no telfhash (Reason code), else NULL
    added TEXT NOT NULL,             -- UTC ISO time of the first add
    source TEXT NOT NULL,            -- "local", "stix:<bundle id>", "misp", ...
    extra TEXT,                      -- JSON object: other fields of the result
    md5 TEXT,                        -- lower-case hex, when known (MISP samples are named by it)
    sha1 TEXT,                       -- lower-case hex, when known
    label TEXT                       -- family label, set by `index label` or carried by imports
);
CREATE TABLE IF NOT EXISTS snapshot (
    col TEXT NOT NULL,               -- "digest" or "digest_x"
    part INTEGER NOT NULL,
    ids BLOB NOT NULL,               -- int64 little-endian entry ids
    packed BLOB NOT NULL,            -- 35 bytes per entry
    planes BLOB NOT NULL,            -- 6 x uint64 little-endian bit planes per entry
    PRIMARY KEY (col, part)
);
CREATE TABLE IF NOT EXISTS snapshot_by_header (
    col TEXT NOT NULL,               -- the same rows as `snapshot`, grouped by TLSH header class
    header INTEGER NOT NULL,         -- (length code << 8) | quartile-ratio byte of every row here
    part INTEGER NOT NULL,           -- the snapshot write that stored them
    ids BLOB NOT NULL,               -- int64 little-endian entry ids
    packed BLOB NOT NULL,            -- 35 bytes per entry
    PRIMARY KEY (col, header, part)
);
"""
_BY_HEADER_SCHEMA = _SCHEMA.split(";")[3]
BY_HEADER_MAX_WRITES = 16  # appended snapshot writes before the by-header rows are rewritten in one piece


def default_path() -> Path:
    """``$TELFHASH_INDEX`` or ``~/.local/share/telfhash-core/index.sqlite``."""
    env = os.environ.get("TELFHASH_INDEX")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".local" / "share" / "telfhash-core" / "index.sqlite"


def _utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# ----------------------------------------------------------------------------- packing


def _companion_digest(value: Any) -> bytes | None:
    """The packed digest inside a companion value (``"tx2:strings:t1…"``, ``"tx1:t1…"``), or None."""
    from ..companion import parse

    p = parse(value)
    return pack(p[2]) if p is not None and p[0] in COMPANION_TAGS else None


def _companion_body(value: Any) -> str | None:
    """The 70 hex characters of a companion value's digest (any rule set read), or None."""
    from ..companion import parse

    p = parse(value)
    return tagged_body(p[2]) if p is not None and p[0] in COMPANION_TAGS else None


def _companion_version(value: Any) -> str | None:
    from ..companion import version_of

    return version_of(value)


_EVEN = np.uint64(0x5555555555555555)
_COMPRESS = [
    (1, np.uint64(0x3333333333333333)),
    (2, np.uint64(0x0F0F0F0F0F0F0F0F)),
    (4, np.uint64(0x00FF00FF00FF00FF)),
    (8, np.uint64(0x0000FFFF0000FFFF)),
    (16, np.uint64(0x00000000FFFFFFFF)),
]


def _gather_even_bits(x: np.ndarray) -> np.ndarray:
    """The 32 even-numbered bits of each uint64 (bit 2k -> bit k), order kept."""
    x = x & _EVEN
    for shift, mask in _COMPRESS:
        x = (x | (x >> np.uint64(shift))) & mask
    return x


def packed_planes(packed: np.ndarray) -> np.ndarray:
    """(n, 6) uint64 bit planes (tlshdist's layout) of an (n, 35) matrix of packed digests.

    Built 32 buckets at a time in 64-bit words: in a big-endian word of the body the first
    bucket is in the top two bits; a bucket v is the bits (hi, lo), and the planes are
    v>=1 = hi|lo, v>=2 = hi, v>=3 = hi&lo.
    """
    body = np.ascontiguousarray(packed[:, 3:])
    words = body.view(">u8").astype(np.uint64)  # (n, 4)
    hi = words >> np.uint64(1)
    planes = np.empty((len(packed), 6), dtype=np.uint64)
    for p, bits in enumerate((hi | words, hi, hi & words)):
        c = _gather_even_bits(bits)  # (n, 4): 32 plane bits each
        planes[:, 2 * p] = (c[:, 0] << np.uint64(32)) | c[:, 1]
        planes[:, 2 * p + 1] = (c[:, 2] << np.uint64(32)) | c[:, 3]
    return planes


def _header_classes(packed: np.ndarray) -> np.ndarray:
    """(n,) int64 header class of each packed digest: (length code << 8) | quartile-ratio byte."""
    lbyte = packed[:, 1].astype(np.int64)
    return ((((lbyte & 0x0F) << 4) | (lbyte >> 4)) << 8) | packed[:, 2]


def encode_packed(mat: np.ndarray, planes: np.ndarray | None = None, *, hex: bool = True) -> Encoded:
    """:class:`~telfhash_core.tlshdist.Encoded` from an (n, 35) uint8 matrix of packed digests.

    The same fields as ``tlshdist.encode`` computes from hex text, without the round trip
    through strings.  ``planes``: already computed :func:`packed_planes`.  ``hex=False`` leaves
    the ``hex`` field blank (zero bytes, not allocated until touched): distances never read it,
    and the index spells digests from the packed bytes itself.
    """
    from ..similarity.tlshdist import Encoded

    width = PACKED_LEN
    byts = np.ascontiguousarray(mat, dtype=np.uint8).reshape(-1, width)
    n = byts.shape[0]
    if hex:
        hexarr = np.frombuffer(byts.tobytes().hex().upper().encode("ascii"), dtype=f"S{DIGEST_HEX}").copy()
    else:
        hexarr = np.zeros(n, dtype=f"S{DIGEST_HEX}")
    if planes is None:
        planes = packed_planes(byts)
    lbyte = byts[:, 1]
    return Encoded(
        hex=hexarr,
        checksum=np.ascontiguousarray(byts[:, 0]),
        lvalue=((lbyte & 0x0F) << 4) | (lbyte >> 4),  # the length code is stored nibble-swapped
        q1=np.ascontiguousarray(byts[:, 2] >> 4),
        q2=np.ascontiguousarray(byts[:, 2] & 0x0F),
        body=byts[:, 3:],
        planes=np.ascontiguousarray(planes, dtype=np.uint64),
    )


# ----------------------------------------------------------------------------- records


@dataclass
class Match:
    """One index entry found by :meth:`Index.search`, with its distance to the query."""

    sha256: str
    path: str | None
    telfhash: str
    arch: str | None
    size: int | None
    added: str
    source: str
    distance: int
    telfhash_x: str | None = None
    label: str | None = None  # family label of the known sample, when it has one
    md5: str | None = None
    sha1: str | None = None

    def to_dict(self) -> dict[str, Any]:
        # every field is a str, int or None, set by __init__ in field order: a copy of the
        # instance's dict equals asdict() (same keys, same order) at a fraction of its cost
        return dict(self.__dict__)


@dataclass
class AddStats:
    """What an add did.  ``added``: new entries (``with_digest`` of them searchable);
    ``updated``: known samples whose empty fields were filled in; ``unchanged``: known samples;
    ``skipped``: items not recorded (no SHA-256, not a result), with the first ``errors``."""

    seen: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    with_digest: int = 0
    without_digest: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    MAX_ERRORS = 20

    def error(self, message: str) -> None:
        self.skipped += 1
        if len(self.errors) < self.MAX_ERRORS:
            self.errors.append(message)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        s = (
            f"{self.seen} seen: {self.added} added ({self.with_digest} with a telfhash), "
            f"{self.updated} updated, {self.unchanged} already known, {self.skipped} skipped"
        )
        return s + f" in {self.seconds:.1f} s"


_COLUMNS = (
    "sha256",
    "path",
    "digest",
    "telfhash_x",
    "digest_x",
    "arch",
    "size",
    "method",
    "symbols",
    "reason",
    "added",
    "source",
    "extra",
    "md5",
    "sha1",
    "label",
)

_METHOD = _COLUMNS.index("method")
CLAIMED = "claimed"  # ``method`` of an entry whose digest was taken from someone else's statement

# A row computed here from the file's bytes (any ``method`` but "claimed") replaces a claimed
# entry outright; otherwise a later add only fills fields that were empty, and a claim never
# changes an entry computed here.
_OLD_CLAIM = f"entries.method IS '{CLAIMED}'"
_NEW_CLAIM = f"excluded.method IS '{CLAIMED}'"
_REPLACE = f"({_OLD_CLAIM} AND NOT {_NEW_CLAIM})"


_FILL_REASON = (
    "CASE WHEN entries.digest IS NULL AND excluded.digest IS NOT NULL THEN NULL "
    "ELSE COALESCE(entries.reason, excluded.reason) END"
)
_FILL_TELFHASH_X = (
    "CASE WHEN entries.digest_x IS NULL AND excluded.digest_x IS NOT NULL THEN excluded.telfhash_x "
    "ELSE COALESCE(entries.telfhash_x, excluded.telfhash_x) END"
)


def _set(col: str, fill: str) -> str:
    return f"{col} = CASE WHEN {_REPLACE} THEN excluded.{col} ELSE {fill} END"


_UPSERT = f"""
INSERT INTO entries ({", ".join(_COLUMNS)}) VALUES ({", ".join("?" * len(_COLUMNS))})
ON CONFLICT(sha256) DO UPDATE SET
    {_set("digest", "COALESCE(entries.digest, excluded.digest)")},
    {_set("reason", _FILL_REASON)},
    {_set("telfhash_x", _FILL_TELFHASH_X)},
    {_set("digest_x", "COALESCE(entries.digest_x, excluded.digest_x)")},
    {_set("arch", "COALESCE(entries.arch, excluded.arch)")},
    {_set("size", "COALESCE(entries.size, excluded.size)")},
    {_set("method", "COALESCE(entries.method, excluded.method)")},
    {_set("symbols", "COALESCE(entries.symbols, excluded.symbols)")},
    {_set("path", "COALESCE(entries.path, excluded.path)")},
    {_set("md5", "COALESCE(entries.md5, excluded.md5)")},
    {_set("sha1", "COALESCE(entries.sha1, excluded.sha1)")},
    label = COALESCE(entries.label, excluded.label),
    {_set("added", "entries.added")},
    {_set("source", "entries.source")},
    extra = CASE WHEN {_REPLACE} THEN json_set(COALESCE(excluded.extra, '{{}}'), '$.replaced_claim',
                 json_object('source', entries.source, 'telfhash',
                             CASE WHEN entries.digest IS NULL THEN NULL ELSE 't1' || lower(hex(entries.digest)) END))
            ELSE entries.extra END
WHERE {_REPLACE}
   OR ((NOT {_NEW_CLAIM} OR {_OLD_CLAIM}) AND (
       (entries.digest IS NULL AND excluded.digest IS NOT NULL)
    OR (entries.digest_x IS NULL AND excluded.digest_x IS NOT NULL)
    OR (entries.telfhash_x IS NULL AND excluded.telfhash_x IS NOT NULL)
    OR (entries.arch IS NULL AND excluded.arch IS NOT NULL)
    OR (entries.size IS NULL AND excluded.size IS NOT NULL)
    OR (entries.method IS NULL AND excluded.method IS NOT NULL)
    OR (entries.path IS NULL AND excluded.path IS NOT NULL)
    OR (entries.md5 IS NULL AND excluded.md5 IS NOT NULL)
    OR (entries.sha1 IS NULL AND excluded.sha1 IS NOT NULL)
    OR (entries.label IS NULL AND excluded.label IS NOT NULL)))
"""


def _as_int(v: Any) -> int | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        v = int(v)
    except (ValueError, OverflowError):
        return None
    return v if 0 <= v < 1 << 63 else None


def _as_text(v: Any, limit: int = 4096) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str):
        v = str(v)
    v = v.encode("utf-8", "surrogateescape").decode("utf-8", "replace")  # odd file names
    return v[:limit] if v else None


def _hex_or_none(v: Any, width: int) -> str | None:
    """Lower-case hex of a hash of ``width`` hex characters, or None for anything else."""
    return v.lower() if isinstance(v, str) and _HEX_RE[width].match(v) else None


def _row(item: Any, source: str, added: str) -> tuple | str:
    """A database row from a Result or a result dict; a string says why the item is skipped."""
    if isinstance(item, Result):
        d = item.to_dict()
        d["telfhash"] = item.telfhash
        d["reason"] = item.reason.value if item.reason else None
    elif isinstance(item, dict):
        d = item
    else:
        return f"not a result: {type(item).__name__}"
    sha = d.get("sha256")
    if not isinstance(sha, str) or not _SHA256_RE.match(sha):
        name = d.get("file")
        return (
            f"{name!r}: no SHA-256 (hash with --sha256 / sha256=True)"
            if sha is None
            else f"{d.get('file')!r}: bad sha256 {sha!r}"
        )
    telf = d.get("telfhash")
    digest = pack(telf) if isinstance(telf, str) and is_digest(telf) else None
    reason = None
    if digest is None:
        try:
            reason = Reason(d.get("reason")).value
        except (ValueError, TypeError):  # none given, or not a Reason code
            reason = infer_reason(telf, d.get("msg")).value
    tx = d.get("telfhash_x")
    digest_x = _companion_digest(tx)
    known = {
        "file",
        "telfhash",
        "msg",
        "ok",
        "reason",
        "arch",
        "method",
        "symbols",
        "size",
        "sha256",
        "telfhash_x",
        "path",
        "source",
        "added",
        "md5",
        "sha1",
        "label",
    }
    extra = {k: v for k, v in d.items() if k not in known and v is not None}
    try:
        extra_json = json.dumps(extra, default=str, ensure_ascii=False) if extra else None
    except (TypeError, ValueError):
        extra_json = None
    return (
        sha.lower(),
        _as_text(d.get("file") if d.get("file") is not None else d.get("path")),
        digest,
        _as_text(tx, 256),
        digest_x,
        _as_text(d.get("arch"), 64),
        _as_int(d.get("size")),
        _as_text(d.get("method"), 32),
        _as_int(d.get("symbols")),
        reason,
        added,
        source,
        extra_json,
        _hex_or_none(d.get("md5"), 32),
        _hex_or_none(d.get("sha1"), 40),
        _as_text(d.get("label"), MAX_LABEL),
    )


@dataclass
class _Matrix:
    """The packed digests of one column, their bit planes and row ids, encoded for distances."""

    generation: tuple
    max_id: int  # every entry with id <= max_id is included (when it has a digest)
    ids: np.ndarray  # (n,) int64
    packed: np.ndarray  # (n, 35) uint8
    planes: np.ndarray  # (n, 6) uint64
    enc: Encoded


# ----------------------------------------------------------------------------- the index


class Index:
    """A telfhash similarity index in one SQLite file.  Use as a context manager, or call
    :meth:`close`.  One ``Index`` object belongs to one thread; open one per process or thread
    (any number may read while one adds).

    ``create=False`` raises FileNotFoundError instead of creating a missing index.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, create: bool = True, timeout: float = 60.0):
        self.path = Path(path).expanduser() if path is not None else default_path()
        if not self.path.exists():
            if not create:
                raise FileNotFoundError(f"no index at {self.path} (add files to create it)")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif self.path.is_dir():
            raise IsADirectoryError(f"{self.path} is a directory, not an index file")
        self._conn = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None)
        self._matrices: dict[str, _Matrix] = {}
        self._searched: set[str] = set()  # columns searched once already (see search)
        try:
            self._setup()
        except sqlite3.OperationalError as exc:  # locked, read-only folder, disk full, ...
            self._conn.close()
            raise ValueError(f"{self.path}: cannot open the index: {exc}") from None
        except sqlite3.DatabaseError as exc:  # "file is not a database", "malformed", ...
            self._conn.close()
            raise ValueError(f"{self.path} is not a telfhash index: {exc}") from None
        except Exception:
            self._conn.close()
            raise

    # -- set-up

    def _setup(self) -> None:
        c = self._conn
        c.execute("PRAGMA busy_timeout = 60000")
        c.execute("PRAGMA cache_size = -65536")  # 64 MB of pages: the sha256 index stays in memory while adding
        c.execute("PRAGMA mmap_size = 1073741824")  # reads (the snapshot's blobs) straight from the mapped file
        app = c.execute("PRAGMA application_id").fetchone()[0]
        has_tables = c.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if has_tables and app != APPLICATION_ID:
            raise ValueError(f"{self.path} is an SQLite file but not a telfhash index")
        if c.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            c.execute("PRAGMA journal_mode = WAL")
        c.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: a killed process loses no commit
        if not has_tables:
            c.execute("BEGIN IMMEDIATE")
            try:
                if c.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
                    c.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            c.execute(statement)
                    c.executemany(
                        "INSERT OR IGNORE INTO meta VALUES (?, ?)",
                        [
                            ("schema", str(SCHEMA_VERSION)),
                            ("generation", "0"),
                            ("rewrites", "0"),
                            ("created", _utcnow()),
                        ],
                    )
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        if not c.execute("SELECT 1 FROM sqlite_master WHERE name = 'snapshot'").fetchone():
            c.execute(_SCHEMA.split(";")[2])  # an index made before snapshots were stored
        if not c.execute("SELECT 1 FROM sqlite_master WHERE name = 'snapshot_by_header'").fetchone():
            c.execute(_BY_HEADER_SCHEMA)  # ... or before they were also stored by header class
        version = self._meta("schema")
        if version is None or int(version) > SCHEMA_VERSION:
            raise ValueError(f"{self.path}: index schema {version} is not supported by this version")
        if int(version) < SCHEMA_VERSION:
            self._upgrade()
        for statement in _LOOKUP_INDEXES:
            c.execute(statement)

    def _upgrade(self) -> None:
        """Add the columns of later schemas to an index made by an earlier version (kept rows
        get NULL there: md5/sha1 unknown, no label)."""
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            have = {r[1] for r in c.execute("PRAGMA table_info(entries)")}
            for name in _ADDED_COLUMNS:
                if name not in have:
                    c.execute(f"ALTER TABLE entries ADD COLUMN {name} TEXT")
            c.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION),))
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise

    def _meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _generation(self) -> tuple[int, int]:
        rows = dict(
            self._conn.execute("SELECT key, value FROM meta WHERE key IN ('generation', 'rewrites')").fetchall()
        )
        return int(rows.get("generation", 0)), int(rows.get("rewrites", 0))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None  # type: ignore[assignment]
        self._matrices.clear()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM entries").fetchone()[0])

    def __repr__(self) -> str:
        return f"Index({str(self.path)!r})"

    # -- adding

    def add_results(
        self,
        results: Iterable[Result | dict],
        source: str = "local",
        *,
        batch_size: int = DEFAULT_BATCH,
        claim: bool = False,
        atomic: bool = False,
    ) -> AddStats:
        """Record results (:class:`Result` objects or dicts as ``telfhash -f jsonl --sha256`` writes).

        Committed every ``batch_size`` items, or all in one transaction with ``atomic`` (all of
        them or none).  Items without a SHA-256 are skipped (counted, with the reason in
        ``stats.errors``).  ``claim``: the values are someone else's statement (e.g. a shared
        bundle), not computed here from the bytes: they are recorded with ``method`` "claimed",
        never change an entry computed here, and are replaced by the first add of the file
        itself (the replaced claim is kept in ``extra["replaced_claim"]``).  Returns :class:`AddStats`.
        """
        if atomic:
            batch_size = sys.maxsize
        return self._add(results, source, batch_size=batch_size, seconds=None, claim=claim)

    def _add(
        self,
        items: Iterable[Any],
        source: str,
        *,
        batch_size: int = DEFAULT_BATCH,
        seconds: float | None = None,
        stats: AddStats | None = None,
        on_item: Callable[[Any], None] | None = None,
        claim: bool = False,
    ) -> AddStats:
        source = _as_text(source, 512) or "local"
        stats = stats or AddStats()
        t0 = time.perf_counter()
        batch: list[tuple] = []
        last = time.monotonic()
        for item in items:
            stats.seen += 1
            row = item if isinstance(item, str) else _row(item, source, _utcnow())
            if isinstance(row, str):
                stats.error(row)
            else:
                if claim:
                    row = row[:_METHOD] + (CLAIMED,) + row[_METHOD + 1 :]
                elif row[_METHOD] == CLAIMED:  # only add_results(claim=True) records a claim
                    row = row[:_METHOD] + (None,) + row[_METHOD + 1 :]
                batch.append(row)
            if on_item is not None:
                on_item(item)
            if len(batch) >= batch_size or (seconds is not None and batch and time.monotonic() - last >= seconds):
                self._commit(batch, stats)
                batch = []
                last = time.monotonic()
        if batch:
            self._commit(batch, stats)
        try:
            self.save_snapshot()
        except sqlite3.OperationalError:  # busy or read-only: the next add stores it
            pass
        stats.seconds += time.perf_counter() - t0
        return stats

    def _commit(self, rows: list[tuple], stats: AddStats) -> None:
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            max_id = c.execute("SELECT coalesce(max(id), 0) FROM entries").fetchone()[0]
            before = c.total_changes
            c.executemany(_UPSERT, rows)
            changes = c.total_changes - before
            added, with_digest = c.execute(
                "SELECT count(*), count(digest) FROM entries WHERE id > ?", (max_id,)
            ).fetchone()
            updated = changes - added
            c.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
            if updated:
                c.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'rewrites'")
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise
        stats.added += added
        stats.with_digest += with_digest
        stats.without_digest += added - with_digest
        stats.updated += updated
        stats.unchanged += len(rows) - added - updated

    def add_files(
        self,
        paths: Iterable[str | os.PathLike],
        recursive: bool = False,
        jobs: int = 0,
        progress: bool | Callable[[int, int], None] | None = None,
        *,
        source: str = "local",
        batch_size: int = 200,
        skip_known_paths: bool = False,
        fields: Iterable[str] = (),
    ) -> AddStats:
        """Hash files (with SHA-256) and record them; ``jobs``: processes (0 = all cores).

        Committed every ``batch_size`` files and at least every two seconds, so a killed add keeps
        what it committed.  ``progress``: True for a bar on stderr (tqdm), a callable
        ``progress(done, total)``, or None for a bar only when stderr is a terminal.
        ``skip_known_paths``: do not hash again a path whose file size matches an entry first seen
        at that path (fast resume of a large add).  ``fields``: opt-in per-file fields to compute
        and keep (``("telfhash_x",)`` records the companion hash, searchable with
        ``key="telfhash_x"``; others go to ``extra``).  Files that are not ELF or have no telfhash
        are recorded with their reason; paths that cannot be read are counted as skipped.
        """
        from ..hashing.api import expand_paths, hash_paths
        from ..progress import Progress

        errors: list[str] = []
        bar = Progress(
            None,
            enabled=None if progress is None else bool(progress) and not callable(progress),
            prog="telfhash index add",
        )
        # stored absolute, so that an entry says where the sample is whatever the working folder
        found = expand_paths([os.fspath(p) for p in paths], recursive, on_error=errors.append, on_file=bar.found)
        files = [os.path.abspath(f) for f in found]
        stats = AddStats()
        for e in errors:
            stats.error(e)
        if skip_known_paths and files:
            files = self._unknown_paths(files, stats)
        total = len(files)
        bar.set_total(total)
        if not total:
            bar.close(summary=False)
            return stats
        done = [0]

        def callback(item: Any) -> None:
            bar.update(1, item if isinstance(item, Result) else None)
            if callable(progress):
                done[0] += 1
                progress(done[0], total)

        jobs = jobs or (os.cpu_count() or 1)
        if total < 16:
            jobs = 1
        with bar:
            wanted = tuple(dict.fromkeys((*FILE_HASH_FIELDS, *fields)))  # md5/sha1 name samples for look-ups
            results = hash_paths(files, jobs=jobs, ordered=False, sha256=True, fields=wanted)
            self._add(
                (r if r.sha256 or r.ok else f"{r.file}: {r.detail or r.msg}" for r in results),
                source,
                batch_size=batch_size,
                seconds=COMMIT_SECONDS,
                stats=stats,
                on_item=callback,
            )
        return stats

    def _unknown_paths(self, files: list[str], stats: AddStats) -> list[str]:
        known: dict[str, int | None] = {}
        for i in range(0, len(files), 500):
            chunk = files[i : i + 500]
            q = f"SELECT path, size FROM entries WHERE path IN ({','.join('?' * len(chunk))})"
            known.update(self._conn.execute(q, chunk).fetchall())
        out = []
        for f in files:
            if f in known:
                try:
                    if os.stat(f).st_size == known[f]:
                        stats.seen += 1
                        stats.unchanged += 1
                        continue
                except OSError:
                    pass
            out.append(f)
        return out

    def add_jsonl(
        self, path_or_file: str | os.PathLike | IO, source: str | None = None, *, batch_size: int = DEFAULT_BATCH
    ) -> AddStats:
        """Record results from a file written by ``telfhash -f jsonl --sha256`` (one JSON object
        per line; a JSON list, as ``-f json --details --sha256`` writes, is read too).

        ``source`` defaults to ``"jsonl:<file name>"``.  Lines that are not JSON objects are
        skipped and reported in ``stats.errors`` with their line number.
        """
        if isinstance(path_or_file, (str, os.PathLike)):
            name = os.fspath(path_or_file)
            with open(name, "rb") as fh:
                return self.add_jsonl(fh, source or f"jsonl:{os.path.basename(name)}", batch_size=batch_size)
        source = source or f"jsonl:{getattr(path_or_file, 'name', 'stream')}"
        return self._add(iter_items(path_or_file), source, batch_size=batch_size)

    # -- searching

    def _load(self, column: str) -> _Matrix:
        """The encoded digests of ``column``, reloading only what changed since the last call.

        A new ``Index`` starts from the snapshot stored in the file (when it is current) and
        reads only the rows added after it.  Later, rows appended meanwhile are added to the
        matrix in memory; a rewrite of older rows (a digest filled in) reloads everything.
        """
        c = self._conn
        c.execute("BEGIN")  # one read snapshot for the counters and the rows
        try:
            gen = self._generation()
            cached = self._matrices.get(column)
            if cached is not None and cached.generation == gen:
                return cached
            if cached is not None and cached.generation[1] == gen[1]:
                base = (cached.ids, cached.packed, cached.planes)
                start = cached.max_id
            else:
                cached = None
                base, start = self._read_snapshot(column, gen[1])
            rows = c.execute(
                f"SELECT id, {column} FROM entries WHERE id > ? AND {column} IS NOT NULL ORDER BY id", (start,)
            ).fetchall()
            max_id = c.execute("SELECT coalesce(max(id), 0) FROM entries").fetchone()[0]
        finally:
            c.execute("COMMIT")
        width = PACKED_LEN
        blobs = [r[1] for r in rows if isinstance(r[1], bytes) and len(r[1]) == width]
        if len(blobs) == len(rows):
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        else:  # a foreign write: never let it break a search
            ids = np.array([r[0] for r in rows if isinstance(r[1], bytes) and len(r[1]) == width], dtype=np.int64)
        packed = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(-1, width)
        planes = packed_planes(packed)
        if base is not None and len(base[0]) and not len(ids):  # nothing after the snapshot: no copy
            ids, packed, planes = base
        elif base is not None and len(base[0]):
            ids = np.concatenate([base[0], ids])
            packed = np.concatenate([base[1], packed])
            planes = np.concatenate([base[2], planes])
        m = _Matrix(gen, int(max_id), ids, packed, planes, encode_packed(packed, planes, hex=False))
        self._matrices[column] = m
        return m

    # -- the stored snapshot of the matrix (so that a new process need not read every row)

    def _read_snapshot(self, column: str, rewrites: int):
        """``((ids, packed, planes), max_id)`` from the stored snapshot, or ``(None, 0)``."""
        c = self._conn
        try:
            info = json.loads(self._meta(f"snapshot:{column}") or "null")
            if not isinstance(info, dict) or info.get("rewrites") != rewrites:
                return None, 0
            parts = c.execute(
                "SELECT ids, packed, planes FROM snapshot WHERE col = ? ORDER BY part", (column,)
            ).fetchall()
            if len(parts) != info.get("parts"):
                return None, 0
            ids = [np.frombuffer(p[0], dtype="<i8") for p in parts]
            packed = [np.frombuffer(p[1], dtype=np.uint8).reshape(-1, PACKED_LEN) for p in parts]
            planes = [np.frombuffer(p[2], dtype="<u8").reshape(-1, 6) for p in parts]
            if any(len(a) != len(b) or len(a) != len(c_) for a, b, c_ in zip(ids, packed, planes)):
                return None, 0
        except (ValueError, TypeError, sqlite3.Error):  # missing or damaged: read the rows instead
            return None, 0
        if not parts:
            return (np.zeros(0, np.int64), np.zeros((0, 35), np.uint8), np.zeros((0, 6), np.uint64)), int(
                info["max_id"]
            )
        cat = lambda xs: xs[0] if len(xs) == 1 else np.concatenate(xs)  # noqa: E731
        return (cat(ids).astype(np.int64, copy=False), cat(packed), cat(planes).astype(np.uint64, copy=False)), int(
            info["max_id"]
        )

    def save_snapshot(self, min_rows: int = SNAPSHOT_MIN_ROWS) -> bool:
        """Store the digest matrix in the file when at least ``min_rows`` entries are not in
        the stored snapshot yet (done after every add).  Returns True when it wrote one."""
        wrote = False
        for column in _KEYS.values():
            info = json.loads(self._meta(f"snapshot:{column}") or "null") or {}
            gen = self._generation()
            stale = info.get("rewrites") != gen[1]
            max_id = self._conn.execute("SELECT coalesce(max(id), 0) FROM entries").fetchone()[0]
            missing = max_id - int(info.get("max_id", 0)) if not stale else max_id
            if missing < max(1, min_rows) and (stale or info.get("by_header") or max_id < max(1, min_rows)):
                continue  # (a current snapshot of an earlier version gains its by-header rows)
            if not self._conn.execute(f"SELECT 1 FROM entries WHERE {column} IS NOT NULL LIMIT 1").fetchone():
                continue
            m = self._load(column)
            wrote |= self._write_snapshot(column, m, None if stale else info)
        return wrote

    def _write_snapshot(self, column: str, m: _Matrix, info: dict | None) -> bool:
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            if self._generation() != m.generation:  # written to meanwhile: leave it for the next add
                c.execute("ROLLBACK")
                return False
            if info and isinstance(info.get("parts"), int):
                first_part, start = info["parts"], int(info["max_id"])
            else:
                c.execute("DELETE FROM snapshot WHERE col = ?", (column,))
                first_part, start = 0, 0
            rows = np.flatnonzero(m.ids > start)
            part = first_part
            for k in range(0, len(rows), SNAPSHOT_PART_ROWS):
                sel = rows[k : k + SNAPSHOT_PART_ROWS]
                c.execute(
                    "INSERT OR REPLACE INTO snapshot VALUES (?, ?, ?, ?, ?)",
                    (
                        column,
                        part,
                        m.ids[sel].astype("<i8").tobytes(),
                        np.ascontiguousarray(m.packed[sel]).tobytes(),
                        m.planes[sel].astype("<u8").tobytes(),
                    ),
                )
                part += 1
            by_header = self._write_by_header(column, m, info, start)
            info = {"rewrites": m.generation[1], "max_id": m.max_id, "parts": part, "by_header": by_header}
            c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"snapshot:{column}", json.dumps(info)))
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise
        return True

    def _write_by_header(self, column: str, m: _Matrix, info: dict | None, start: int) -> dict:
        """Store the rows of ``m`` with ids above ``start`` grouped by header class (inside the
        caller's transaction), or all of them when the stored ones cannot be extended."""
        c = self._conn
        old = info.get("by_header") if info else None
        if (
            not isinstance(old, dict)
            or not isinstance(old.get("rows"), int)
            or not isinstance(old.get("writes"), int)
            or old["writes"] >= BY_HEADER_MAX_WRITES
            or start == 0
        ):
            c.execute("DELETE FROM snapshot_by_header WHERE col = ?", (column,))
            old, start = {"rows": 0, "writes": 0}, 0
        rows = np.flatnonzero(m.ids > start)
        header = _header_classes(m.packed[rows])
        order = np.argsort(header, kind="stable")  # ids stay ascending inside a class
        rows, header = rows[order], header[order]
        bounds = np.flatnonzero(np.diff(header)) + 1
        starts = np.concatenate([[0], bounds]).astype(np.int64)
        ends = np.concatenate([bounds, [len(rows)]]).astype(np.int64)
        part = old["writes"]  # numbers the writes since the last rewrite: never reused
        c.executemany(
            "INSERT INTO snapshot_by_header VALUES (?, ?, ?, ?, ?)",
            (
                (
                    column,
                    int(header[a]),
                    part,
                    m.ids[rows[a:b]].astype("<i8").tobytes(),
                    np.ascontiguousarray(m.packed[rows[a:b]]).tobytes(),
                )
                for a, b in zip(starts.tolist(), ends.tolist())
                if b > a
            ),
        )
        return {"rows": old["rows"] + len(rows), "writes": old["writes"] + 1}

    def _search_by_header(self, column: str, digest: str, max_distance: int):
        """``(ids, packed)`` of every entry that could be within ``max_distance`` of ``digest``
        by its header alone, read from the by-header snapshot rows plus the rows added after it;
        None when there is no current, intact by-header snapshot (then the whole matrix is loaded).

        The length and quartile terms of the distance are >= 0 and depend only on the header
        class, so a class whose terms already exceed the threshold holds no match: its rows are
        never read.  This keeps a single search in a new process from reading every digest.
        """
        from ..similarity.tlshdist import header_bounds

        c = self._conn
        c.execute("BEGIN")  # one read snapshot for the counters and the rows
        try:
            gen = self._generation()
            try:
                info = json.loads(self._meta(f"snapshot:{column}") or "null")
            except ValueError:
                return None
            if not isinstance(info, dict) or info.get("rewrites") != gen[1]:
                return None
            bh = info.get("by_header")
            if (
                not isinstance(bh, dict)
                or not isinstance(bh.get("rows"), int)
                or not isinstance(info.get("max_id"), int)
            ):
                return None
            n_ids, n_packed = c.execute(
                "SELECT coalesce(sum(length(ids)), 0), coalesce(sum(length(packed)), 0) FROM snapshot_by_header WHERE col = ?",
                (column,),
            ).fetchone()
            if n_ids != 8 * bh["rows"] or n_packed != PACKED_LEN * bh["rows"]:
                return None  # damaged or written over: never trusted
            headers = np.array(
                [r[0] for r in c.execute("SELECT DISTINCT header FROM snapshot_by_header WHERE col = ?", (column,))],
                dtype=np.int64,
            )
            wanted = headers[header_bounds(headers, digest) <= max_distance] if len(headers) else headers
            parts = c.execute(
                "SELECT header, ids, packed FROM snapshot_by_header WHERE col = ? "
                "AND header IN (SELECT value FROM json_each(?))",
                (column, json.dumps(wanted.tolist())),
            ).fetchall()
            tail = c.execute(
                f"SELECT id, {column} FROM entries WHERE id > ? AND {column} IS NOT NULL ORDER BY id", (info["max_id"],)
            ).fetchall()
        except (ValueError, TypeError, sqlite3.Error):
            return None
        finally:
            c.execute("COMMIT")
        ids_parts, packed_parts = [], []
        for header, ids_blob, packed_blob in parts:
            if not isinstance(ids_blob, bytes) or not isinstance(packed_blob, bytes):
                return None
            ids = np.frombuffer(ids_blob, dtype="<i8")
            if len(ids_blob) % 8 or len(packed_blob) != PACKED_LEN * len(ids):
                return None
            packed = np.frombuffer(packed_blob, dtype=np.uint8).reshape(-1, PACKED_LEN)
            lcode, qbyte = (header >> 8) & 0xFF, header & 0xFF
            if not ((packed[:, 1] == (((lcode & 0x0F) << 4) | (lcode >> 4))).all() and (packed[:, 2] == qbyte).all()):
                return None  # a row in the wrong class: the stored header is nibble-swapped, as in the digest
            ids_parts.append(ids)
            packed_parts.append(packed)
        width = PACKED_LEN
        good = [
            r for r in tail if isinstance(r[1], bytes) and len(r[1]) == width
        ]  # a foreign write never breaks a search
        ids_parts.append(np.fromiter((r[0] for r in good), dtype=np.int64, count=len(good)))
        packed_parts.append(np.frombuffer(b"".join(r[1] for r in good), dtype=np.uint8).reshape(-1, width))
        return np.concatenate(ids_parts).astype(np.int64, copy=False), np.concatenate(packed_parts)

    def _query(self, query: Any, key: str) -> str:
        """The query digest (t1 form) from a digest in any spelling or a path to a file."""
        if isinstance(query, Result):
            value = query.telfhash if key == "telfhash" else query.extra.get("telfhash_x")
            if key == "telfhash_x":
                body = _companion_body(value)
                value = spell(body) if body else None
            if not value:
                raise ValueError(f"{query.file}: the result has no {key} to search with")
            return normalize(value)
        if isinstance(query, os.PathLike):
            query = os.fspath(query)
        if isinstance(query, bytes):
            try:
                query = query.decode()
            except UnicodeDecodeError:
                raise ValueError("the query is neither a telfhash digest nor a readable path") from None
        if not isinstance(query, str):
            raise ValueError(f"the query must be a digest or a path, not {type(query).__name__}")
        text = query.strip()
        if is_digest(text):
            return normalize(text)
        body = _companion_body(text) if key == "telfhash_x" else None
        if body is not None:
            return spell(body)
        if "\x00" not in query and len(query) < 4096 and os.path.isfile(query):
            from ..hashing.api import hash_file

            r = hash_file(query, fields=("telfhash_x",) if key == "telfhash_x" else ())
            return self._query(r, key) if r.ok or key == "telfhash_x" else _no_digest(r)
        shown = query if len(query) <= 80 else query[:77] + "..."
        if text.lower() in ("tnull", "-", ""):
            raise ValueError(f"{shown!r} is not a digest: there is nothing to search with")
        if os.path.exists(query):
            raise ValueError(f"{shown!r} is not a regular file")
        raise ValueError(f"{shown!r} is neither a telfhash digest (t1/T1 + 70 hex, or 70 hex) nor an existing file")

    def search(
        self, query: Any, max_distance: int = DEFAULT_THRESHOLD, limit: int | None = None, key: str = "telfhash"
    ) -> list[Match]:
        """Every entry within ``max_distance`` (py-tlsh ``diff``, length term included) of the
        query, nearest first (ties in the order entries were added).

        ``query``: a digest (``t1…``, ``T1…`` or 70 hex), a path to a file (hashed first) or a
        :class:`Result`.  ``key="telfhash_x"`` searches the companion hashes instead.
        Raises ValueError for anything else.
        """
        if key not in _KEYS:
            raise ValueError(f"unknown key {key!r}; use one of {', '.join(_KEYS)}")
        if isinstance(max_distance, bool) or not isinstance(max_distance, (int, np.integer)) or max_distance < 0:
            raise ValueError(f"max_distance must be a whole number >= 0, not {max_distance!r}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0):
            raise ValueError(f"limit must be None or a whole number >= 0, not {limit!r}")
        digest = self._query(query, key)
        from ..similarity.tlshdist import encode, max_length_code_diff, one_to_many, packed_distances

        column = _KEYS[key]
        if column not in self._matrices and column not in self._searched:
            # The first search of this Index reads only the header classes that can match (a
            # one-off search in a new process); later ones load and keep the whole matrix.
            self._searched.add(column)
            some = self._search_by_header(column, digest, int(max_distance))
            if some is not None:
                ids, packed = some
                if not len(ids) or limit == 0:
                    return []
                d = packed_distances(packed, digest)  # exact; no bit planes to build for one query
                hit = np.flatnonzero(d <= max_distance)
                d = d[hit]
                if key == "telfhash_x" and hit.size:  # only values of the query's rule set
                    keep = self._same_rule_set(query, ids[hit])
                    hit, d = hit[keep], d[keep]
                sort = np.lexsort((ids[hit], d))
                order, d = hit[sort], d[sort]
                if limit is not None:
                    order, d = order[: int(limit)], d[: int(limit)]
                return self._matches(ids[order], d, packed[order])
        m = self._load(column)
        if not len(m.ids) or limit == 0:
            return []

        # The length term alone bounds the distance: compare only rows whose length code is close.
        lmax = max_length_code_diff(int(max_distance))
        if lmax < 128:
            ql = int(encode([digest]).lvalue[0])
            ldiff = (m.enc.lvalue - np.uint8(ql)).astype(np.uint8)  # circular difference, both ways
            cand = np.flatnonzero(np.minimum(ldiff, np.uint8(0) - ldiff) <= lmax)
            d = one_to_many(m.enc, digest, cand)
            keep = d <= max_distance
            hit, d = cand[keep], d[keep]
        else:
            d = one_to_many(m.enc, digest)
            hit = np.flatnonzero(d <= max_distance)
            d = d[hit]
        if key == "telfhash_x" and hit.size:  # only values of the query's rule set (tx1 never meets tx2)
            keep = self._same_rule_set(query, m.ids[hit])
            hit, d = hit[keep], d[keep]
        sort = np.lexsort((m.ids[hit], d))
        order, d = hit[sort], d[sort]
        if limit is not None:
            order, d = order[: int(limit)], d[: int(limit)]
        return self._matches(m.ids[order], d, m.packed[order])

    # one query per distinct digest costs up to this many distance computations; beyond, one
    # all-pairs scan over the distinct digests of both sides (pruned by the TLSH header bounds)
    MANY_DIRECT_LIMIT = 400_000_000

    def search_many(
        self,
        queries: Iterable[str],
        max_distance: int = 50,
        *,
        exclude_sources: Iterable[str] = (),
        key: str = "telfhash",
    ) -> dict[str, list[Match]]:
        """For each distinct digest among ``queries`` (any spelling; others are ignored): the
        entries within ``max_distance``, nearest first, as :meth:`search` finds them.

        One vectorised pass over the distinct digests, however often each is repeated;
        entries whose ``source`` is in ``exclude_sources`` are left out before any distance is
        computed.  Keys of the answer are the digests in ``t1`` spelling; digests without a
        match are absent.
        """
        from ..similarity.tlshdist import Encoded, encode, one_to_many, pairs_within

        if key not in _KEYS:
            raise ValueError(f"unknown key {key!r}; use one of {', '.join(_KEYS)}")
        if isinstance(max_distance, bool) or not isinstance(max_distance, (int, np.integer)) or max_distance < 0:
            raise ValueError(f"max_distance must be a whole number >= 0, not {max_distance!r}")
        want: dict[str, set[str]] = {}  # companion key: digest -> rule sets asked for (bare digest: the current one)
        if key == "telfhash_x":
            from ..companion import VERSION, parse

            plain = []
            for q in queries:
                p = parse(q) if isinstance(q, str) else None
                body, v = (p[2], p[0]) if p else (q, VERSION)
                if isinstance(body, str) and is_digest(body):
                    want.setdefault(normalize(body, "t1"), set()).add(v)
                    plain.append(body)
            queries = plain
        distinct = sorted({normalize(q, "t1") for q in queries if isinstance(q, str) and is_digest(q)})
        m = self._load(_KEYS[key])
        if not distinct or not len(m.ids):
            return {}
        rows = np.arange(len(m.ids), dtype=np.int64)
        excluded = [s for s in exclude_sources if isinstance(s, str)]
        if excluded:
            drop: list[int] = []
            for i in range(0, len(excluded), 900):
                chunk = excluded[i : i + 900]
                q = f"SELECT id FROM entries WHERE source IN ({','.join('?' * len(chunk))})"
                drop.extend(r[0] for r in self._conn.execute(q, chunk))
            if drop:
                rows = rows[~np.isin(m.ids, np.asarray(drop, dtype=np.int64))]
        if not len(rows):
            return {}
        hits: list[tuple[int, np.ndarray, np.ndarray]] = []  # (query number, matrix rows, distances)
        if len(distinct) * len(rows) <= self.MANY_DIRECT_LIMIT:
            enc_q = encode(distinct)
            for k in range(len(distinct)):
                d = one_to_many(m.enc, enc_q[k : k + 1], rows)
                sel = np.flatnonzero(d <= max_distance)
                if len(sel):
                    hits.append((k, rows[sel], d[sel]))
        else:
            # distinct digests of the index side, then every (query, digest) pair within range
            sub = np.ascontiguousarray(m.packed[rows])
            uniq, first, inverse = np.unique(
                sub.view(f"V{sub.shape[1]}").ravel(), return_index=True, return_inverse=True
            )
            enc_u = m.enc[rows[first]]
            enc_q = encode(distinct)
            both = Encoded.concat([enc_q, enc_u])
            i, j, d = pairs_within(both, int(max_distance))
            nq = len(distinct)
            cross = (i < nq) & (j >= nq)
            i, j, d = i[cross], j[cross] - nq, d[cross]
            order = np.argsort(inverse, kind="stable")
            starts = np.searchsorted(inverse[order], np.arange(len(uniq) + 1))
            for k in np.unique(i).tolist():
                sel = i == k
                members = [order[starts[u] : starts[u + 1]] for u in j[sel].tolist()]
                dist = np.concatenate(
                    [np.full(len(mm), dd, dtype=np.int32) for mm, dd in zip(members, d[sel].tolist())]
                )
                hits.append((k, rows[np.concatenate(members)], dist))
        if key == "telfhash_x" and hits:  # tx1 rows answer tx1 queries only, tx2 rows tx2 queries
            versions = self._versions(sorted({int(x) for _k, r, _d in hits for x in m.ids[r].tolist()}))
            kept = []
            for k, r, d in hits:
                ok = np.array(
                    [versions.get(int(x)) in want.get(distinct[k], ()) for x in m.ids[r].tolist()], dtype=bool
                )
                if ok.any():
                    kept.append((k, r[ok], d[ok]))
            hits = kept
        out: dict[str, list[Match]] = {}
        for k, r, d in hits:
            order = np.lexsort((m.ids[r], d))
            out[distinct[k]] = self._matches(m.ids[r[order]], d[order], m.packed[r[order]])
        return out

    def _same_rule_set(self, query: Any, ids: np.ndarray) -> np.ndarray:
        """Which of the rows ``ids`` hold a companion value of the query's rule set."""
        want = self._query_version(query)
        versions = self._versions(ids.tolist())
        return np.array([versions.get(int(i)) == want for i in ids.tolist()], dtype=bool)

    def _query_version(self, query: Any) -> str:
        """The companion rule set of a query: its own tag, else the current one (a bare digest,
        or a file, which is hashed with the current rule set)."""
        from ..companion import VERSION

        if isinstance(query, Result):
            query = query.extra.get("telfhash_x")
        return (_companion_version(query.strip()) if isinstance(query, str) else None) or VERSION

    def _versions(self, ids: list[int]) -> dict[int, str | None]:
        """id -> rule-set tag of its companion value."""
        out: dict[int, str | None] = {}
        for i in range(0, len(ids), 900):
            chunk = ids[i : i + 900]
            q = f"SELECT id, telfhash_x FROM entries WHERE id IN ({','.join('?' * len(chunk))})"
            for r in self._conn.execute(q, chunk):
                out[r[0]] = _companion_version(r[1])
        return out

    def _matches(self, ids: np.ndarray, dist: np.ndarray, packed: np.ndarray) -> list[Match]:
        rows: dict[int, tuple] = {}
        id_list = ids.tolist()
        for i in range(0, len(id_list), 900):
            chunk = id_list[i : i + 900]
            q = (
                "SELECT id, sha256, path, arch, size, added, source, telfhash_x, label, md5, sha1 FROM entries "
                f"WHERE id IN ({','.join('?' * len(chunk))})"
            )
            for r in self._conn.execute(q, chunk):
                rows[r[0]] = r
        hexes = packed.tobytes().hex()  # the digests from the matrix, not from the rows
        out = []
        for k, (i, dd) in enumerate(zip(id_list, dist.tolist())):
            r = rows.get(i)
            if r is not None:
                digest = "t1" + hexes[DIGEST_HEX * k : DIGEST_HEX * (k + 1)]
                out.append(Match(r[1], r[2], digest, r[3], r[4], r[5], r[6], dd, r[7], r[8], r[9], r[10]))
        return out

    # -- listing

    def get(self, sha256: str) -> dict | None:
        """The entry for one SHA-256 as a dict (None when absent)."""
        if not isinstance(sha256, str) or not _SHA256_RE.match(sha256):
            raise ValueError(f"not a SHA-256: {sha256!r}")
        cur = self._conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM entries WHERE sha256 = ?", (sha256.lower(),))
        row = cur.fetchone()
        return _entry_dict(row) if row else None

    def lookup(self, value: str) -> dict | None:
        """The entry of the sample named by its MD5, SHA-1 or SHA-256 (any case), or None.

        ValueError when ``value`` is none of those (32, 40 or 64 hex characters)."""
        text = value.strip() if isinstance(value, str) else ""
        column = {32: "md5", 40: "sha1", 64: "sha256"}.get(len(text))
        if column is None or not _HEX_RE[len(text)].match(text):
            raise ValueError(f"not an MD5, SHA-1 or SHA-256: {str(value)[:80]!r}")
        row = self._conn.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM entries WHERE {column} = ? ORDER BY id LIMIT 1", (text.lower(),)
        ).fetchone()
        return _entry_dict(row) if row else None

    def set_label(self, sha256: str, label: str | None) -> bool:
        """Set (or with None, clear) the family label of a known sample; False when the index
        does not hold it.  Labels show in search matches and clusters."""
        if not isinstance(sha256, str) or not _SHA256_RE.match(sha256):
            raise ValueError(f"not a SHA-256: {sha256!r}")
        if label is not None:
            label = _as_text(label, MAX_LABEL)
            if not label or not label.strip():
                raise ValueError("a label must not be empty (use None to clear it)")
            label = label.strip()
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            changed = c.execute("UPDATE entries SET label = ? WHERE sha256 = ?", (label, sha256.lower())).rowcount
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise
        return bool(changed)

    def entries(self) -> Iterator[dict]:
        """Every entry, in the order added, as dicts (``telfhash`` is ``None`` without a digest)."""
        cur = self._conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM entries ORDER BY id")
        for row in cur:
            yield _entry_dict(row)

    def clusters(self, threshold: int = DEFAULT_THRESHOLD, *, key: str = "telfhash", min_size: int = 2) -> list[dict]:
        """Groups of entries: connected components of "distance <= threshold" (exact and
        transitive, as :func:`telfhash_core.cluster.cluster` computes them).

        Each cluster: ``size`` (entries), ``digests`` (distinct digests), ``representative``
        (the member whose largest distance to the others is smallest), ``max_distance`` (the
        largest distance inside the cluster), ``archs`` (entries per architecture), ``members``
        (sha256, path, telfhash, arch, source; in the order added) and ``exact`` (False only for
        huge clusters, whose representative comes from a sample).  Largest clusters first;
        clusters under ``min_size`` entries are left out.  Entries without a digest never join.
        """
        from ..similarity.cluster import Item, cluster

        if key not in _KEYS:
            raise ValueError(f"unknown key {key!r}; use one of {', '.join(_KEYS)}")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, np.integer)) or threshold < 0:
            raise ValueError(f"threshold must be a whole number >= 0, not {threshold!r}")
        m = self._load(_KEYS[key])
        if not len(m.ids):
            return []
        hexes = m.packed.tobytes().hex().upper()
        versions = self._versions(m.ids.tolist()) if key == "telfhash_x" else {}
        # companion values of different rule sets (tx1, tx2) are grouped separately, never together
        items = [Item(str(i), hexes[70 * k : 70 * k + 70], None, versions.get(i)) for k, i in enumerate(m.ids.tolist())]
        groups, _ = cluster(items, int(threshold), key="telfhash")
        groups = [g for g in groups if g.size >= max(1, int(min_size))]
        meta: dict[int, tuple] = {}
        id_list = [int(x) for g in groups for x in g.members]
        for i in range(0, len(id_list), 900):
            chunk = id_list[i : i + 900]
            q = f"SELECT id, sha256, path, arch, source, label FROM entries WHERE id IN ({','.join('?' * len(chunk))})"
            for r in self._conn.execute(q, chunk):
                meta[r[0]] = r
        out = []
        for g in groups:
            members: list[dict] = []
            archs: dict[str, int] = {}
            rep = None
            for name, digest in zip(g.members, g.digests):
                e = meta.get(int(name))
                if e is None:
                    continue
                member = {"sha256": e[1], "path": e[2], "telfhash": digest, "arch": e[3], "source": e[4], "label": e[5]}
                members.append(member)
                a = e[3] or "unknown"
                archs[a] = archs.get(a, 0) + 1
                if name == g.representative:
                    rep = member
            out.append(
                {
                    "size": len(members),
                    "digests": len(set(g.digests)),
                    "representative": rep,
                    "max_distance": g.max_distance,
                    "archs": dict(sorted(archs.items(), key=lambda kv: (-kv[1], kv[0]))),
                    "members": members,
                    "exact": g.exact,
                }
            )
        return out

    def recompute_x(self, *, all_rows: bool = False, batch_size: int = 200) -> dict[str, int]:
        """Recompute stored companion values of an older rule set (``tx1``) with the current one
        (``tx2``), re-hashing each file whose recorded path still exists and still has the
        recorded SHA-256.  ``all_rows``: values of the current rule set too (after an update
        that changed its rules or derived data; ``old`` then counts every row with a value).  A row whose file is gone (or has changed since) keeps its old value:
        it is still read, shown and searched -- with values of its own rule set only.  Returns
        counts: ``old`` (rows with an older value), ``recomputed``, ``no_value`` (the file has
        no tx2 value: the old one is cleared), ``missing`` and ``changed`` (kept as they are)."""
        import hashlib

        from ..companion import VERSION, telfhash_x_of

        rows = self._conn.execute(
            "SELECT id, sha256, path, telfhash_x FROM entries WHERE telfhash_x IS NOT NULL ORDER BY id"
        ).fetchall()
        counts = {"old": 0, "recomputed": 0, "no_value": 0, "missing": 0, "changed": 0}
        updates: list[tuple] = []
        for id_, sha, path, tx in rows:
            if _companion_version(tx) == VERSION and not all_rows:
                continue
            counts["old"] += 1
            try:
                with open(path, "rb") as fh:
                    data = fh.read()
            except (OSError, TypeError, ValueError):
                counts["missing"] += 1
                continue
            if hashlib.sha256(data).hexdigest() != sha:
                counts["changed"] += 1
                continue
            value = telfhash_x_of(data)
            counts["recomputed" if value else "no_value"] += 1
            updates.append((value, _companion_digest(value), id_))
            if len(updates) >= batch_size:
                self._update_x(updates)
                updates = []
        if updates:
            self._update_x(updates)
        return counts

    def _update_x(self, updates: list[tuple]) -> None:
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            c.executemany("UPDATE entries SET telfhash_x = ?, digest_x = ? WHERE id = ?", updates)
            c.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
            c.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'rewrites'")
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise

    def stats(self) -> dict[str, Any]:
        """Counts: entries, with/without a telfhash (by reason), distinct digests, by architecture
        and source, companion hashes, and the file's size."""
        c = self._conn
        total, with_digest, with_x, first, last = c.execute(
            "SELECT count(*), count(digest), count(digest_x), min(added), max(added) FROM entries"
        ).fetchone()
        distinct = c.execute("SELECT count(DISTINCT digest) FROM entries").fetchone()[0]
        reasons = dict(
            c.execute(
                "SELECT reason, count(*) FROM entries WHERE digest IS NULL GROUP BY reason ORDER BY 2 DESC"
            ).fetchall()
        )
        archs = dict(
            c.execute(
                "SELECT coalesce(arch, 'unknown'), count(*) FROM entries GROUP BY 1 ORDER BY 2 DESC, 1"
            ).fetchall()
        )
        sources = dict(c.execute("SELECT source, count(*) FROM entries GROUP BY 1 ORDER BY 2 DESC, 1").fetchall())
        size = sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())
        return {
            "path": str(self.path),
            "entries": total,
            "with_telfhash": with_digest,
            "without_telfhash": total - with_digest,
            "distinct_telfhashes": distinct,
            "with_telfhash_x": with_x,
            "reasons": reasons,
            "archs": archs,
            "sources": sources,
            "first_added": first,
            "last_added": last,
            "bytes": size,
            "schema": int(self._meta("schema") or 0),
        }


def _no_digest(r: Result) -> str:
    raise ValueError(
        f"{r.file}: no telfhash to search with ({r.reason.value if r.reason else '?'}: {r.detail or r.msg})"
    )


def _entry_dict(row: tuple) -> dict:
    d = dict(zip(_COLUMNS, row))
    d["telfhash"] = unpack(d.pop("digest")) if d.get("digest") else None
    d.pop("digest_x", None)
    try:
        d["extra"] = json.loads(d["extra"]) if d.get("extra") else {}
    except ValueError:
        d["extra"] = {}
    return d
