"""Reading an ELF image: which symbol table the reference would use, and its names, in bulk.

Data flows one way: buffer -> symbol table (or none) -> names -> digest.

Two routes find the symbol table and give the same answer:

* a *fast* route that reads the ELF and section headers with :mod:`struct`.  It accepts only
  files whose structures are in order in every respect that pyelftools checks while the
  reference walks the sections; at the first thing out of the ordinary it gives up;
* the *exact* route, taken then: pyelftools walks the sections exactly as the reference does,
  so a broken file fails the same way (``Could not parse file as ELF`` / ``Unknown error``).

Either way the symbols are decoded from the table's bytes at once (NumPy structured dtype)
rather than one by one, with the reference's semantics for every field and string.  A small
table in a process that has not loaded NumPy is decoded with :mod:`struct` instead (the same
answer): a one-file command then never pays NumPy's import.  pyelftools, too, is imported only
when the exact route or the fallback needs it.
"""

from __future__ import annotations

import functools
import struct
import sys
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from elftools.common.exceptions import ELFError, ELFParseError  # a small module: no construct, no pyelftools parser

from ..digest import select_symbols, tlsh_digest
from ..result import Reason, Result

from .elfconst import (  # noqa: F401  (re-exported: the former home of these names)
    EM_ARM,
    EM_RISCV,
    MAX_FILE_OFFSET,
    MEMORY_LIMIT,
    SHF_COMPRESSED,
    SHT_DYNAMIC,
    SHT_DYNSYM,
    SHT_GNU_HASH,
    SHT_GNU_VERDEF,
    SHT_GNU_VERNEED,
    SHT_GNU_VERSYM,
    SHT_HASH,
    SHT_LOPROC_3,
    SHT_NOBITS,
    SHT_NULL,
    SHT_PROGBITS,
    SHT_REL,
    SHT_RELA,
    SHT_RELR,
    SHT_STRTAB,
    SHT_SUNW_LDYNSYM,
    SHT_SUNW_SYMINFO,
    SHT_SYMTAB,
    SHT_SYMTAB_SHNDX,
    STB_GLOBAL,
    STT_FUNC,
    check_read,
    check_seek,
)

if TYPE_CHECKING:
    from elftools.elf.elffile import ELFFile


@functools.lru_cache(maxsize=None)
def _sym_dtypes() -> dict:
    from .elfconst import SYM_DTYPE  # NumPy: imported on first use

    return SYM_DTYPE


# The same entries with struct: (name, info, other) and the entry's size.
_SYM_STRUCT = {
    (32, "<"): struct.Struct("<I8xBB2x"),
    (32, ">"): struct.Struct(">I8xBB2x"),
    (64, "<"): struct.Struct("<IBB18x"),
    (64, ">"): struct.Struct(">IBB18x"),
}

# Below this many entries, and while NumPy is not loaded, the table is decoded with struct.
SMALL_TABLE = 20_000

# pyelftools' names (``ELFFile.get_machine_arch``) for the usual ``e_machine`` values, so that
# naming the CPU does not import pyelftools; any other value asks pyelftools (a test checks
# every entry against it).
KNOWN_MACHINES = {
    2: "SPARC",
    3: "x86",
    4: "Motorola 68000",
    8: "MIPS",
    18: "Enhanced SPARC",
    20: "PowerPC",
    21: "64-bit PowerPC",
    22: "IBM S/390",
    40: "ARM",
    42: "Hitachi SH",
    43: "SPARC Version 9",
    62: "x64",
    183: "AArch64",
    243: "RISC-V",
    258: "LoongArch",
}


def __getattr__(name: str) -> Any:
    # Names that need NumPy or pyelftools are built on first use (PEP 562).
    if name in ("_SYM_DTYPE", "SYM_DTYPE"):
        return _sym_dtypes()
    if name == "CachedELFFile":
        return _cached_elffile_class()
    if name == "FAITHFUL_CACHE":
        return _cache_is_faithful()
    raise AttributeError(name)


class _GiveUp(Exception):
    """The fast route met something out of the ordinary: take the exact route."""


class NotELF(Exception):
    """No ELF identification (magic, class or data encoding)."""


@dataclass
class SymbolTable:
    """Where the chosen symbol table and its string table are."""

    kind: str  # "dynsym" or "symtab"
    offset: int
    size: int
    entsize: int
    strtab_offset: int


@dataclass
class Header:
    bits: int  # 32 or 64
    endian: str  # "<" or ">"
    machine: int
    entry: int
    phoff: int
    shoff: int
    phentsize: int
    phnum: int
    shentsize: int
    shnum: int
    shstrndx: int


class MemStream:
    """A read-only file-like view of a buffer with a real file's semantics (seeking past the
    end is allowed and reads there return nothing; crafted offsets and sizes fail as they
    do on a file), for pyelftools."""

    __slots__ = ("_buf", "_len", "_pos")

    def __init__(self, buf) -> None:
        self._buf = buf
        self._len = len(buf)
        self._pos = 0

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence == 1:
            pos += self._pos
        elif whence == 2:
            pos += self._len
        if pos < 0:
            raise OSError(22, "Invalid argument")
        check_seek(pos)
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        if n is not None and n > 0:
            check_read(n)
        start = self._pos
        if start >= self._len:
            return b""
        end = self._len if n is None or n < 0 else min(self._len, start + n)
        self._pos = end
        return bytes(self._buf[start:end])


@functools.lru_cache(maxsize=None)
def _cached_elffile_class() -> type:
    from elftools.elf.elffile import ELFFile
    from elftools.elf.structs import ELFStructs

    class CachedELFFile(ELFFile):
        """pyelftools' ``ELFFile`` with its struct definitions built once per kind of file.

        Building the construct definitions is most of the cost of opening a small file; they
        depend only on class, byte order, type, machine and OS ABI, and are not changed by
        parsing.  The rest mirrors the ``__init__`` of pyelftools 0.33.  Earlier versions
        (0.31, 0.32) do more in ``__init__`` (they read the section-name table at once), so this
        class is used only where :func:`_cache_is_faithful` finds that it leaves an object in the
        same state as pyelftools' own constructor; otherwise :func:`open_elf` uses ``ELFFile``.
        """

        _structs_cache: dict[tuple, ELFStructs] = {}

        def __init__(self, stream) -> None:  # noqa: D107 - mirrors ELFFile.__init__ (0.33)
            self.stream = stream
            self.stream.seek(0, 2)
            self.stream_len = self.stream.tell()
            self._identify_file()
            basic = self._structs_cache.get((self.little_endian, self.elfclass))
            if basic is None:
                basic = ELFStructs(little_endian=self.little_endian, elfclass=self.elfclass)
                basic.create_basic_structs()
                self._structs_cache[(self.little_endian, self.elfclass)] = basic
            self.structs = basic
            self.header = self._parse_elf_header()
            key = (self.little_endian, self.elfclass, self["e_type"], self["e_machine"], self["e_ident"]["EI_OSABI"])
            structs = self._structs_cache.get(key)
            if structs is None:
                structs = ELFStructs(little_endian=self.little_endian, elfclass=self.elfclass)
                structs.create_basic_structs()
                structs.create_advanced_structs(*key[2:])
                if len(self._structs_cache) < 256:
                    self._structs_cache[key] = structs
            self.structs = structs
            self.stream.seek(0)
            self.e_ident_raw = self.stream.read(16)
            self.stream_loader = None

    return CachedELFFile


# The smallest well-formed ELF file with a section-name table: header, one string table, the
# section header table (null section + .shstrtab).  Used to compare constructors.
def _probe_elf() -> bytes:
    names = b"\x00.shstrtab\x00"
    shoff = 64 + len(names)
    ident = b"\x7fELF\x02\x01\x01" + bytes(9)  # 64-bit, little-endian, version 1
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, 2, 62, 1, 0, 0, shoff, 0, 64, 56, 0, 64, 2, 1)
    null = bytes(64)
    shstr = struct.pack("<IIQQQQIIQQ", 1, SHT_STRTAB, 0, 0, 64, len(names), 0, 0, 1, 0)
    return ehdr + names + null + shstr


def _stream(buf) -> Any:
    """A :class:`MemStream`, typed as the file object pyelftools' annotations ask for."""
    return MemStream(buf)


@functools.lru_cache(maxsize=None)
def _cache_is_faithful() -> bool:
    """Whether :class:`CachedELFFile` leaves an object in the same state as the installed
    pyelftools' own ``ELFFile`` constructor (same attributes, same header, same sections).
    Decided on first use (``FAITHFUL_CACHE``), not at import: plain hashing never opens pyelftools."""
    from elftools.elf.elffile import ELFFile

    try:
        buf = _probe_elf()
        mine, theirs = _cached_elffile_class()(MemStream(buf)), ELFFile(_stream(buf))
        if set(vars(mine)) != set(vars(theirs)):
            return False
        return [s.name for s in mine.iter_sections()] == [s.name for s in theirs.iter_sections()] == ["", ".shstrtab"]
    except Exception:  # pragma: no cover - any surprise: do not use the cache
        return False


def open_elf(buf) -> ELFFile:
    """An ``ELFFile`` over ``buf`` (pyelftools semantics; cached struct definitions where that
    is verified to be the same as pyelftools' own constructor)."""
    if _cache_is_faithful():
        return _cached_elffile_class()(MemStream(buf))
    from elftools.elf.elffile import ELFFile

    return ELFFile(_stream(buf))


# ----------------------------------------------------------------------------- headers


@functools.lru_cache(maxsize=None)
def machine_name(machine: int) -> str:
    """pyelftools' name for an ``e_machine`` value (``x64``, ``ARM``, ``MIPS``, ...)."""
    known = KNOWN_MACHINES.get(machine)
    if known is not None:
        return known
    from elftools.elf.elffile import ELFFile
    from elftools.elf.enums import ENUM_E_MACHINE

    names = {v: k for k, v in ENUM_E_MACHINE.items() if isinstance(v, int)}

    class _Shim:
        def __getitem__(self, key):
            return names.get(machine, machine)

    return ELFFile.get_machine_arch(_Shim())  # type: ignore[arg-type]


def read_header(buf) -> Header:
    """Parse the ELF identification and header.  Raises :class:`NotELF` or :class:`_GiveUp`."""
    if len(buf) < 4 or bytes(buf[:4]) != b"\x7fELF":
        raise NotELF("not an ELF file (no ELF magic number)")
    if len(buf) < 6:
        raise NotELF("truncated ELF identification")
    ei_class, ei_data = buf[4], buf[5]
    if ei_class not in (1, 2) or ei_data not in (1, 2):
        raise NotELF(f"invalid ELF class/data encoding ({ei_class}, {ei_data})")
    bits = 32 if ei_class == 1 else 64
    e = "<" if ei_data == 1 else ">"
    fmt = e + ("16sHHIIIIIHHHHHH" if bits == 32 else "16sHHIQQQIHHHHHH")
    if len(buf) < struct.calcsize(fmt):
        raise _GiveUp
    (_, _t, machine, _v, entry, phoff, shoff, _f, _eh, phentsize, phnum, shentsize, shnum, shstrndx) = (
        struct.unpack_from(fmt, buf, 0)
    )
    return Header(bits, e, machine, entry, phoff, shoff, phentsize, phnum, shentsize, shnum, shstrndx)


class _Sections:
    """Raw section headers, read on demand; gives up where pyelftools would raise or differ."""

    def __init__(self, buf, h: Header) -> None:
        self.buf, self.h = buf, h
        self.fmt = h.endian + ("IIIIIIIIII" if h.bits == 32 else "IIQQQQIIQQ")
        self.size = 40 if h.bits == 32 else 64
        if h.shentsize < self.size or h.shnum == 0 or h.shstrndx == 0xFFFF:
            raise _GiveUp
        self._cache: dict[int, tuple] = {}
        self.names_at: int | None = None  # file offset of the section-name table, once known
        self.names_at = self.get(h.shstrndx)[4]
        if self.names_at + self.get(h.shstrndx)[0] > MAX_FILE_OFFSET:
            raise _GiveUp

    def get(self, i: int) -> tuple:
        """(name, type, flags, addr, offset, size, link, info, addralign, entsize)"""
        hdr = self._cache.get(i)
        if hdr is None:
            off = self.h.shoff + i * self.h.shentsize
            if off + self.size > len(self.buf):
                raise _GiveUp
            hdr = struct.unpack_from(self.fmt, self.buf, off)
            if hdr[2] & SHF_COMPRESSED:  # pyelftools reads a compression header here
                raise _GiveUp
            if self.names_at is not None and self.names_at + hdr[0] > MAX_FILE_OFFSET:
                raise _GiveUp  # pyelftools looks up every section's name: that seek would fail
            self._cache[i] = hdr
        return hdr

    def name(self, hdr: tuple) -> bytes:
        strtab = self.get(self.h.shstrndx)
        pos = strtab[4] + hdr[0]
        end = self.buf.find(b"\x00", pos) if pos < len(self.buf) else -1
        return bytes(self.buf[pos:end]) if end >= 0 else b""

    def need(self, pos: int, size: int) -> None:
        if pos + size > len(self.buf):
            raise _GiveUp

    def strtab(self, link: int) -> tuple:
        hdr = self.get(link)
        if hdr[1] != SHT_STRTAB:
            raise _GiveUp
        return hdr

    def symtab(self, hdr: tuple, linked: bool = False) -> tuple:
        """Checks pyelftools makes when it builds a symbol table section; returns its strtab."""
        if linked and hdr[1] not in (SHT_SYMTAB, SHT_DYNSYM):
            raise _GiveUp
        strtab = self.strtab(hdr[6])
        entsize = hdr[9]
        if entsize <= 0 or hdr[5] % entsize:
            raise _GiveUp
        return strtab


def find_symbol_table_fast(buf, h: Header) -> SymbolTable | None:
    """The reference's choice of symbol table, from raw headers (``None``: there is none).

    Raises :class:`_GiveUp` whenever a section before the chosen one is anything that
    pyelftools would inspect more closely while walking the sections.
    """
    return _find_symbol_table_fast(buf, h)[0]


def _find_symbol_table_fast(buf, h: Header) -> tuple[SymbolTable | None, _Sections | None]:
    """:func:`find_symbol_table_fast`, and the section headers when it walked all of them."""
    if h.shoff == 0:
        return None, None  # pyelftools: no sections at all
    secs = _Sections(buf, h)  # reads the section-name table first, as pyelftools does
    word = 4 if h.bits == 32 else 8
    for i in range(h.shnum):
        hdr = secs.get(i)
        t, size = hdr[1], hdr[5]
        if t in (SHT_SYMTAB, SHT_DYNSYM, SHT_SUNW_LDYNSYM):
            strtab = secs.symtab(hdr)
            if size > 0 and t != SHT_SUNW_LDYNSYM:
                kind = "dynsym" if t == SHT_DYNSYM else "symtab"
                return SymbolTable(kind, hdr[4], size, hdr[9], strtab[4]), None
        elif t == SHT_GNU_HASH:
            secs.symtab(secs.get(hdr[6]), linked=True)
            secs.need(hdr[4], 16)
            nbuckets, _sym, bloom, _shift = struct.unpack_from(h.endian + "IIII", buf, hdr[4])
            secs.need(hdr[4] + 16, bloom * word + nbuckets * 4)
        elif t == SHT_HASH:
            secs.symtab(secs.get(hdr[6]), linked=True)
            if size:
                secs.need(hdr[4], 8)
                nbuckets, nchains = struct.unpack_from(h.endian + "II", buf, hdr[4])
                secs.need(hdr[4] + 8, (nbuckets + nchains) * 4)
        elif t == SHT_DYNAMIC:
            if secs.get(hdr[6])[1] not in (SHT_STRTAB, SHT_NOBITS, SHT_NULL):
                raise _GiveUp
        elif t == SHT_GNU_VERSYM:
            secs.symtab(secs.get(hdr[6]), linked=True)
        elif t in (SHT_GNU_VERNEED, SHT_GNU_VERDEF):
            secs.strtab(hdr[6])
        elif t in (SHT_REL, SHT_RELA):
            # pyelftools' RelocationSection asserts sh_entsize == sizeof(Elf_Rel / Elf_Rela)
            if hdr[9] != (3 if t == SHT_RELA else 2) * word:
                raise _GiveUp
        elif t in (SHT_RELR, SHT_SYMTAB_SHNDX, SHT_SUNW_SYMINFO):
            raise _GiveUp
        elif t == SHT_LOPROC_3 and h.machine in (EM_ARM, EM_RISCV):
            raise _GiveUp
        elif t == SHT_PROGBITS and secs.name(hdr) == b".stab":
            raise _GiveUp
    return None, secs


def find_symbol_table_exact(elf: ELFFile) -> SymbolTable | None:
    """The reference's choice, made the reference's way (pyelftools walks the sections)."""
    for s in elf.iter_sections():
        if s["sh_size"] <= 0:
            continue
        if s["sh_type"] in ("SHT_DYNSYM", "SHT_SYMTAB"):
            kind = "dynsym" if s["sh_type"] == "SHT_DYNSYM" else "symtab"
            strtab = typing.cast(typing.Any, s).stringtable  # a SymbolTableSection for these types
            return SymbolTable(kind, s["sh_offset"], s["sh_size"], s["sh_entsize"], strtab["sh_offset"])
    return None


# ----------------------------------------------------------------------------- symbols


def read_function_names(buf, h: Header, table: SymbolTable, *, use_numpy: bool | None = None) -> list[str]:
    """Names of the global, default-visibility functions in ``table``, as pyelftools decodes
    them (UTF-8 with replacement), in table order.

    Fails as the reference does: it reads every entry and looks up every entry's name, in
    order, from a file, so the first entry that runs past the end of the file
    (``ELFParseError``) or whose entry or name lies at an offset a file cannot seek to decides.

    ``use_numpy``: decode with NumPy (``True``) or :mod:`struct` (``False``); by default NumPy
    only for large tables or once NumPy is loaded anyway.  The answer is the same.
    """
    rec = _SYM_STRUCT[(h.bits, h.endian)]
    count = table.size // table.entsize
    n = len(buf)
    # entries whose bytes are all in the file: offset + (i * entsize) + itemsize <= n
    room = n - rec.size - table.offset
    whole = 0 if room < 0 else min(count, room // table.entsize + 1)
    if use_numpy is None:
        use_numpy = whole >= SMALL_TABLE or "numpy" in sys.modules
    if use_numpy:
        offsets = _kept_name_offsets_numpy(buf, h, table, whole)
    else:
        offsets = _kept_name_offsets_struct(buf, rec, table, whole)
    if whole < count:
        pos = table.offset + whole * table.entsize
        check_seek(pos)
        raise ELFParseError("symbol table runs past the end of the file")
    base, find = table.strtab_offset, buf.find
    names = []
    for off in offsets:
        pos = base + off
        if pos >= n:
            continue
        end = find(b"\x00", pos)
        if end > pos:
            names.append(buf[pos:end].decode("utf-8", errors="replace"))
    return names


def _kept_name_offsets_numpy(buf, h: Header, table: SymbolTable, whole: int) -> list[int]:
    import numpy as np

    dtype = _sym_dtypes()[(h.bits, h.endian)]
    syms = np.ndarray(
        shape=(whole,), dtype=dtype, buffer=buf, offset=table.offset if whole else 0, strides=(table.entsize,)
    )
    names_rel = syms["name"]
    if table.strtab_offset <= MAX_FILE_OFFSET:
        bad_name = np.flatnonzero(names_rel.astype(np.uint64) > MAX_FILE_OFFSET - table.strtab_offset)
    else:
        bad_name = np.arange(whole)
    if bad_name.size:
        check_seek(table.strtab_offset + int(names_rel[int(bad_name[0])]))
    info, other = syms["info"], syms["other"]
    keep = ((info & 0xF) == STT_FUNC) & ((info >> 4) == STB_GLOBAL) & ((other & 7) == 0)
    return names_rel[keep].tolist()


def _kept_name_offsets_struct(buf, rec: struct.Struct, table: SymbolTable, whole: int) -> list[int]:
    limit = MAX_FILE_OFFSET - table.strtab_offset  # a name offset above this cannot be sought to
    want = (STB_GLOBAL << 4) | STT_FUNC
    if table.entsize == rec.size:
        entries: Any = rec.iter_unpack(buf[table.offset : table.offset + whole * rec.size])
    else:
        unpack, start, step = rec.unpack_from, table.offset, table.entsize
        entries = (unpack(buf, start + i * step) for i in range(whole))
    kept = []
    for name, info, other in entries:
        if name > limit:
            check_seek(table.strtab_offset + name)
        if info == want and not other & 7:
            kept.append(name)
    return kept


# ----------------------------------------------------------------------------- one file


def hash_buffer(buf, name: str, *, exact: bool = False) -> Result:
    """Hash an ELF image held in ``buf`` (bytes or mmap).  Never raises for a bad file.

    ``exact=True`` skips the fast route (the answer is the same; tests compare the two).
    """
    try:
        return _hash_buffer(buf, name, exact)
    except NotELF as exc:
        return Result(file=name, reason=Reason.NOT_ELF, detail=str(exc))
    except ELFError as exc:  # ELFParseError included: what the reference calls "Could not parse file as ELF"
        return Result(file=name, reason=Reason.CORRUPT, detail=f"truncated or corrupted ELF: {exc}")
    except (MemoryError, RecursionError) as exc:
        return Result(file=name, reason=Reason.MALFORMED, detail=f"crafted or corrupted ELF: {type(exc).__name__}")
    except Exception as exc:  # the reference's "Unknown error": malformed structures pyelftools trips on
        return Result(file=name, reason=Reason.MALFORMED, detail=f"malformed ELF ({type(exc).__name__}: {exc})")


def _hash_buffer(buf, name: str, exact: bool) -> Result:
    h = None
    elf = None
    try:
        h = read_header(buf)
        if exact:
            raise _GiveUp
        table, sections = _find_symbol_table_fast(buf, h)
    except _GiveUp:
        elf = open_elf(buf)
        if h is None:
            h = read_header(buf)
        table, sections = find_symbol_table_exact(elf), None
    arch = machine_name(h.machine)
    if table is None:
        from .fallback import call_destinations, call_destinations_fast

        found = call_destinations_fast(buf, h, sections, arch) if sections is not None else None
        if found is None:
            if elf is None:
                elf = open_elf(buf)
            found = call_destinations(elf, buf)
        items, reason, detail = found
        method = "fallback"
    else:
        items = select_symbols(read_function_names(buf, h, table))
        method = table.kind
        reason = Reason.NO_SYMBOLS
        detail = f"no global function symbol survives the filters in .{table.kind}"
    result = Result(file=name, arch=arch, method=method, symbols=len(items))
    if not items:
        result.reason, result.detail = reason, detail
        return result
    digest = tlsh_digest(items)
    if digest == "tnull":
        result.reason = Reason.TOO_FEW_SYMBOLS
        result.detail = (
            f"too few or too uniform symbols for TLSH ({len(items)} {'addresses' if method == 'fallback' else 'names'})"
        )
    else:
        result.telfhash = digest
    return result
