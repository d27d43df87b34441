"""What the toolchain puts into a static binary, so that tx2 can leave it out.

A static, stripped program carries its C library: 92-96% of the strings in a static glibc
binary are glibc's, and they are the same in every program built with that C library, so two
unrelated programs look alike.  This module knows those strings.  They are derived from the
toolchains themselves -- the static archives (``libc.a``, ``libm.a``, ``libgcc.a``...) and
start files (``crt*.o``) of Debian's cross C libraries for every CPU and of musl -- by
``benchmarks/derive_toolchain.py``, and shipped as ``toolchain_strings.npz``: sorted 64-bit
keys of the strings, and for each key the evidence (which C libraries/CPUs and which archives
contain it).

The same string extraction runs on both sides (an archive member at derivation, a linked
binary at hashing time), so what is removed is exactly what the toolchain contributed.
"""

from __future__ import annotations

import functools
import json
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..hashing.elfconst import SHT_PROGBITS

DATA_FILE = Path(__file__).with_name("toolchain_strings.npz")

MIN_STRING = 4  # printable runs of at least this many characters are a binary's strings
MIN_TOOLCHAIN = 3  # the toolchain's are kept from 3 on: a 3-character tail ("nan") with a junk byte before it
STRING_RE = re.compile(rb"[\x20-\x7e\t\n\r]{%d,}" % MIN_STRING)
TOOLCHAIN_RE = re.compile(rb"[\x20-\x7e\t\n\r]{%d,}" % MIN_TOOLCHAIN)

SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 1, 2, 4
MAX_MEMBER = 64 << 20


_MUL = np.uint64(0x100000001B3)  # multiplier of the polynomial string hash (mod 2**64)
_LEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)
_BATCH = 1 << 18  # bytes of strings keyed at once (bounds the temporary arrays)
_BUCKET_BITS = 16  # ToolchainData.contains: top bits of a key that pick its bucket
_POW = np.cumprod(np.full(1 << 12, _MUL, dtype=np.uint64))
_POW = np.concatenate((np.ones(1, dtype=np.uint64), _POW))


def _powers(n: int) -> np.ndarray:
    global _POW
    if n > _POW.size:
        more = np.cumprod(np.full(n - _POW.size, _MUL, dtype=np.uint64)) * _POW[-1]
        _POW = np.concatenate((_POW, more))
    return _POW


def _mix(h: np.ndarray) -> np.ndarray:
    """The final avalanche, in place (``h`` is a fresh array of its caller's)."""
    h ^= h >> _S33
    h *= _MIX1
    h ^= h >> _S33
    h *= _MIX2
    h ^= h >> _S33
    return h


def suffix_keys(strings: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keys of every suffix of every string, computed together with NumPy.

    Returns ``(keys, starts, ends)``: ``keys[p]`` is the key of the suffix that starts at byte
    ``p`` of the concatenated strings; string ``i`` is ``[starts[i], ends[i])``, so its own key
    is ``keys[starts[i]]``.  The key is a polynomial hash of the bytes (mod 2**64) with the
    length mixed in and a final avalanche: ``string_key`` of the suffix.  (The arrays are
    updated in place where they can be: a third fewer temporaries than the formula as written.)"""
    lens = np.fromiter(map(len, strings), dtype=np.int64, count=len(strings))
    ends = np.cumsum(lens)
    starts = ends - lens
    if not len(strings) or ends[-1] == 0:
        return np.zeros(0, dtype=np.uint64), starts, ends
    seg_end = np.repeat(ends, lens)
    rem = seg_end - np.arange(int(ends[-1]), dtype=np.int64)  # the suffix's length
    pw = _powers(int(lens.max()) + 1)
    with np.errstate(over="ignore"):
        c = pw[rem - 1]
        c *= np.frombuffer(b"".join(strings), dtype=np.uint8)  # byte * MUL**(bytes after it in its string)
        np.cumsum(c, out=c)
        h = c[seg_end - 1]
        h[1:] -= c[:-1]  # the sum over the suffix: minus the sum before it
        length = rem.astype(np.uint64)
        length *= _LEN
        h += length
        keys = _mix(h)
    return keys, starts, ends


def string_keys(strings) -> np.ndarray:
    """Keys of ``strings`` (bytes) as a uint64 array."""
    strings = list(strings)
    out: list[np.ndarray] = []
    batch: list[bytes] = []
    size = 0
    for x in strings + [None]:
        if x is None or (size + len(x) > _BATCH and batch):
            if batch:
                keys, starts, _ends = suffix_keys(batch)
                out.append(keys[starts] if keys.size else np.zeros(len(batch), dtype=np.uint64))
            batch, size = [], 0
        if x is not None:
            batch.append(x)
            size += len(x)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.uint64)


def string_key(s: bytes) -> int:
    """64-bit key of one string (see :func:`suffix_keys`)."""
    return int(string_keys([s])[0])


def strings_in(data: bytes) -> list[bytes]:
    """Printable runs of at least ``MIN_STRING`` characters in ``data``."""
    return STRING_RE.findall(data)


# ----------------------------------------------------------------------------- archives


def ar_members(buf: bytes) -> Iterator[tuple[str, bytes]]:
    """Members of a System V / GNU ``ar`` archive: ``(name, bytes)``; the symbol index and the
    long-name table are skipped."""
    if not buf.startswith(b"!<arch>\n"):
        raise ValueError("not an ar archive")
    pos, longnames = 8, b""
    n = len(buf)
    while pos + 60 <= n:
        hdr = buf[pos : pos + 60]
        name = hdr[:16].decode("ascii", "replace").rstrip()
        try:
            size = int(hdr[48:58].decode("ascii").strip() or 0)
        except ValueError:
            raise ValueError(f"bad ar member header at {pos}") from None
        start = pos + 60
        data = buf[start : start + min(size, MAX_MEMBER)]
        pos = start + size + (size & 1)
        if name in ("/", "/SYM64/", "__.SYMDEF"):
            continue
        if name == "//":
            longnames = data
            continue
        if name.startswith("/") and name[1:].isdigit():
            off = int(name[1:])
            end = longnames.find(b"/\n", off)
            name = longnames[off : end if end >= 0 else None].decode("ascii", "replace")
        yield name.rstrip("/"), data


def object_strings(obj: bytes) -> set[bytes]:
    """Strings in the allocated, non-executable data sections (``.rodata*``, ``.data*``...) of
    one relocatable object (or any ELF image with section headers)."""
    from ..hashing.elf import NotELF
    from .tx1 import elf_facts

    try:
        facts = elf_facts(obj)
    except (NotELF, ValueError, struct.error, IndexError):  # not ELF (e.g. a linker script member): nothing
        return set()
    out: set[bytes] = set()
    n = len(obj)
    for s in facts.sections:
        if s.type != SHT_PROGBITS or not s.flags & SHF_ALLOC or s.flags & SHF_EXECINSTR:
            continue
        if s.offset >= n or s.size <= 0:
            continue
        out.update(TOOLCHAIN_RE.findall(obj[s.offset : s.offset + s.size]))
    return out


# ----------------------------------------------------------------------------- the shipped data


@functools.lru_cache(maxsize=1)
def shipped() -> ToolchainData:
    """The derived toolchain strings shipped with the package."""
    return ToolchainData.load(DATA_FILE)


class ToolchainData:
    """Sorted string keys with, per key, a bit mask of the C libraries (CPUs) and one of the
    archive kinds that contain it; ``libcs`` and ``kinds`` name the bits."""

    def __init__(self, keys: np.ndarray, libc_mask: np.ndarray, kind_mask: np.ndarray, meta: dict) -> None:
        order = np.argsort(keys, kind="stable")
        self.keys = np.ascontiguousarray(keys[order], dtype=np.uint64)
        self.libc_mask = np.ascontiguousarray(libc_mask[order], dtype=np.uint64)
        self.kind_mask = np.ascontiguousarray(kind_mask[order], dtype=np.uint32)
        self.meta = meta
        self.libcs: list[str] = list(meta["libcs"])
        self.kinds: list[str] = list(meta["kinds"])
        self._starts: np.ndarray | None = None  # see _bucket_starts

    @classmethod
    def load(cls, path: Path) -> ToolchainData:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return cls(z["keys"], z["libc_mask"], z["kind_mask"], meta)

    def save(self, path: Path) -> None:
        np.savez_compressed(
            path,
            keys=self.keys,
            libc_mask=self.libc_mask,
            kind_mask=self.kind_mask,
            meta=np.array(json.dumps(self.meta, sort_keys=True)),
        )

    def __len__(self) -> int:
        return int(self.keys.size)

    def without(self, libcs) -> ToolchainData:
        """The data as if the C libraries ``libcs`` had not been used (hold-out evaluation)."""
        drop = 0
        for name in libcs:
            if name in self.libcs:
                drop |= 1 << self.libcs.index(name)
        mask = self.libc_mask & np.uint64(~drop & ((1 << 64) - 1))
        keep = mask != 0
        return ToolchainData(self.keys[keep], mask[keep], self.kind_mask[keep], self.meta)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``keys`` are toolchain strings.

        The keys are uniform 64-bit hashes, so their top ``_BUCKET_BITS`` bits index a table of
        where each run of equal top bits starts in the sorted keys (about one key per run, at
        most a handful): each query is compared with the keys of its run, all queries at once,
        instead of a binary search through the whole array (several times faster; the same
        answer).  A comparison past a query's run meets keys of other top bits, never equal."""
        keys = np.asarray(keys, dtype=np.uint64)
        if keys.size == 0 or self.keys.size == 0:
            return np.zeros(keys.shape, dtype=bool)
        starts = self._bucket_starts()
        bucket = (keys >> np.uint64(64 - _BUCKET_BITS)).astype(np.intp)
        pos = starts[bucket]
        longest = int((starts[bucket + 1] - pos).max())
        top = self.keys.size - 1
        np.minimum(pos, top, out=pos)
        out = self.keys[pos] == keys
        for _ in range(1, longest):
            pos += 1
            np.minimum(pos, top, out=pos)
            out |= self.keys[pos] == keys
        return out

    def _bucket_starts(self) -> np.ndarray:
        """Index of the first key of each top-bits bucket, and the key count at the end."""
        starts = self._starts
        if starts is None:
            edges = np.arange(1 << _BUCKET_BITS, dtype=np.uint64) << np.uint64(64 - _BUCKET_BITS)
            starts = self._starts = np.append(np.searchsorted(self.keys, edges), self.keys.size)
        return starts

    def evidence(self, s: bytes) -> dict | None:
        """Where the string ``s`` comes from: ``{"libcs": [...], "archives": [...]}``, or None."""
        k = np.array([string_key(s)], dtype=np.uint64)
        i = int(np.searchsorted(self.keys, k)[0])
        if i >= self.keys.size or self.keys[i] != k[0]:
            return None
        lm, km = int(self.libc_mask[i]), int(self.kind_mask[i])
        return {
            "libcs": [n for b, n in enumerate(self.libcs) if lm >> b & 1],
            "archives": [n for b, n in enumerate(self.kinds) if km >> b & 1],
        }
