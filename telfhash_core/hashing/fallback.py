"""Call destinations for ELF files without a symbol table (static, stripped binaries).

The reference finds a code region, sweeps it linearly with capstone (stopping at the first
bytes capstone cannot decode) and collects, in order of first appearance, the targets of
direct calls, spelled as capstone prints them.  We find the same region with pyelftools, the
same way (or from the raw headers, when the struct-based route of ``elf.py`` found them in
order), and run the same capstone engine; what differs is how the instructions are read:
capstone's C decoder fills an array of instructions in chunks, and the calls are picked from
that array without a Python object per instruction.

libcapstone is loaded here through ctypes, the way capstone's Python package loads it, but
without importing that package (it imports every architecture's module: 0.04 CPU-s, a tenth of
what ``telfhash`` spends on 30 static programs).  x86 needs neither it nor NumPy; ARM and MIPS
pick their calls with NumPy.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import struct
import zlib

from typing import TYPE_CHECKING

from elftools.common.exceptions import ELFCompressionError, ELFError, ELFParseError  # a small module

if TYPE_CHECKING:
    from elftools.elf.elffile import ELFFile

from .elfconst import SHT_NOBITS, check_read, check_seek
from ..result import Reason

# capstone 5's C constants (tests compare them with its Python package's): architecture and mode.
CS_ARCH_ARM, CS_ARCH_MIPS, CS_ARCH_X86 = 0, 2, 3
CS_MODE_ARM, CS_MODE_32, CS_MODE_64, CS_MODE_MIPS32, CS_MODE_BIG_ENDIAN = 0, 1 << 2, 1 << 3, 1 << 2, 1 << 31
X86_INS_CALL, X86_INS_LCALL = 62, 170

# pyelftools machine name -> capstone engine, as the reference chooses them (note: MIPS is
# always decoded big-endian and ARM never as Thumb; those are part of the value).
MODES = {
    "x86": (CS_ARCH_X86, CS_MODE_32),
    "x64": (CS_ARCH_X86, CS_MODE_64),
    "ARM": (CS_ARCH_ARM, CS_MODE_ARM),
    "MIPS": (CS_ARCH_MIPS, CS_MODE_MIPS32 | CS_MODE_BIG_ENDIAN),
}

_PREFIX = 32  # bytes of op_str compared at once (a call target needs at most 19)
# Instructions per capstone call.  capstone grows its array 32, 83, 164, 293, 499, 828, ... entries:
# 828 fills it exactly (205 KB), and glibc reuses that block from call to call; 4096 entries (1.5 MB)
# took 25k-190k page faults over the 30 static programs of bench_core (0.1-0.25 s of system time), 828 took 5k.
CHUNK = 828
MAX_CODE = 256 << 20  # a compressed code section may not inflate beyond this
_MASK64 = (1 << 64) - 1


class _cs_insn(ctypes.Structure):
    """capstone 5's ``cs_insn`` (tests compare it with the Python package's)."""

    _fields_ = [
        ("id", ctypes.c_uint),
        ("address", ctypes.c_uint64),
        ("size", ctypes.c_uint16),
        ("bytes", ctypes.c_ubyte * 24),
        ("mnemonic", ctypes.c_char * 32),
        ("op_str", ctypes.c_char * 160),
        ("detail", ctypes.c_void_p),
    ]


_INSN_SIZE = ctypes.sizeof(_cs_insn)
_ID, _ADDR, _BYTES = _cs_insn.id.offset, _cs_insn.address.offset, _cs_insn.bytes.offset
_MN, _OP = _cs_insn.mnemonic.offset, _cs_insn.op_str.offset
# address, size, first byte and rel32 (after an E8 opcode) of a record: a plain call's fields
_PLAIN = struct.Struct("<QHBi")
assert _cs_insn.size.offset == _ADDR + 8 and _BYTES == _ADDR + 10
_LAST = struct.Struct("<QH")  # address and size
_CALL_IDS = (X86_INS_CALL, X86_INS_LCALL)
_CALL_LOW_BYTE = b"".join(b"C" if i in (X86_INS_CALL & 0xFF, X86_INS_LCALL & 0xFF) else b"." for i in range(256))


def _library_path() -> str:
    """The libcapstone capstone's Python package would load (its first two places: the
    ``LIBCAPSTONE_PATH`` variable, then the ``lib`` folder of the package); else the package's own."""
    name = "libcapstone.so"
    spec = importlib.util.find_spec("capstone")
    folders = [os.environ.get("LIBCAPSTONE_PATH")]
    folders += [os.path.join(d, "lib") for d in (spec.submodule_search_locations or [])] if spec else []
    for folder in folders:
        for candidate in (os.path.join(folder, name), os.path.join(folder, name + ".5")) if folder else ():
            if os.path.exists(candidate):
                return candidate
    import capstone  # elsewhere (a system library, another platform): let the package find it

    return capstone._cs._name


@functools.lru_cache(maxsize=None)
def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(_library_path(), mode=getattr(os, "RTLD_DEEPBIND", 0))
    lib.cs_version.restype = ctypes.c_int
    lib.cs_version.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)]
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.cs_version(ctypes.byref(major), ctypes.byref(minor))
    if major.value != 5:
        raise ImportError(f"the call-destination fallback needs capstone 5, found {major.value}.{minor.value}")
    lib.cs_open.restype = ctypes.c_int
    lib.cs_open.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_size_t)]
    lib.cs_disasm.restype = ctypes.c_size_t
    lib.cs_disasm.argtypes = [
        ctypes.c_size_t,
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_uint64,
        ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_void_p),
    ]
    lib.cs_free.restype = None
    lib.cs_free.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return lib


@functools.lru_cache(maxsize=None)
def _engine(arch: str) -> int:
    """A capstone handle for ``arch`` (kept for the life of the process, as one ``Cs`` was)."""
    handle = ctypes.c_size_t()
    err = _lib().cs_open(*MODES[arch], ctypes.byref(handle))
    if err:
        raise OSError(f"capstone cs_open failed for {arch}: error {err}")
    return handle.value


# ----------------------------------------------------------------------------- x86 without printing
#
# For x86 most of capstone's time goes to printing each instruction's text (measured: 0.16 s of
# decoding and printing for busybox's 398k instructions, 0.06 s without printing).  The reference
# needs the text only of direct calls.  So x86 code is swept by a second capstone engine whose
# printer is switched off: capstone's own decoder still decides every instruction boundary and
# where the sweep stops, and reports each instruction's id and bytes.  The text of a call is then
# the one capstone prints: for the plain ``E8 rel32`` form it is ``0x`` + the target in hex
# (capstone's printPCRelImm: address + size + rel, 32 bits wide in 32-bit mode; 0-9 in decimal);
# a call whose first byte is ``FF`` (no prefix: an indirect call, printed as a register or
# ``... ptr [...]``) is never collected; any other call (prefixed, far) is printed by the normal
# engine.  Tests compare the result with the reference's loop over capstone's own instruction
# objects.
#
# The instructions are read without NumPy (whose import costs more than the reading): one strided
# memoryview copy gathers the low byte of every id, and ``bytes.find`` (memchr) walks from call
# to call; a call costs one struct unpack.  About one instruction in 30 is a call.


class _DlInfo(ctypes.Structure):
    _fields_ = [
        ("fname", ctypes.c_char_p),
        ("fbase", ctypes.c_void_p),
        ("sname", ctypes.c_char_p),
        ("saddr", ctypes.c_void_p),
    ]


@functools.lru_cache(maxsize=None)
def _quiet_engine(arch: str) -> int | None:
    """A capstone handle for x86/x64 that decodes without printing, or None where capstone's
    handle does not have the layout this relies on (then the normal engine is used)."""
    if arch not in ("x86", "x64"):
        return None
    try:
        handle = ctypes.c_size_t()
        if _lib().cs_open(*MODES[arch], ctypes.byref(handle)):
            return None
        # capstone 5's handle starts: arch (4 bytes), mode (4 bytes), printer (function pointer)
        head = (ctypes.c_uint64 * 2).from_address(handle.value)
        cs_arch, cs_mode = MODES[arch]
        if head[0] != cs_arch | (cs_mode << 32):
            return None
        libc = ctypes.CDLL(None)
        info = _DlInfo()
        if not libc.dladdr(ctypes.c_void_p(head[1]), ctypes.byref(info)) or b"capstone" not in (info.fname or b""):
            return None
        # getpagesize() takes no argument, touches no memory and has no effect: a printer that prints nothing
        printer = ctypes.cast(libc.getpagesize, ctypes.c_void_p).value
        if not printer:
            return None
        head[1] = printer
        return handle.value
    except (OSError, AttributeError, ValueError):  # pragma: no cover - unusual platforms
        return None


def _printed(arch: str, code: bytes, address: int) -> tuple[str, str]:
    """capstone's (mnemonic, op_str) for the first instruction of ``code``."""
    lib, out = _lib(), ctypes.c_void_p()
    n = lib.cs_disasm(_engine(arch), code, len(code), address, 1, ctypes.byref(out))
    if n == 0 or out.value is None:  # pragma: no cover - the engine that does not print decoded it
        return "", ""
    try:
        insn = _cs_insn.from_address(out.value)
        return insn.mnemonic.decode("ascii"), insn.op_str.decode("ascii")
    finally:
        lib.cs_free(out, n)


def _x86_chunk(arch: str, view: memoryview, n: int, seen: dict) -> None:
    """Add the collected call targets among ``n`` records decoded without text to ``seen``
    (keys: the target as an int, or capstone's text where that is not plain hex; targets 0-9,
    which capstone prints in decimal, are left for the caller to drop)."""
    # The low byte of every id, marked "C" where it is that of call or lcall (a few rare vector
    # instructions share it: the whole id is checked below, for records not starting with E8).
    marks = view[_ID::_INSN_SIZE].tobytes().translate(_CALL_LOW_BYTE)
    wide = 0xFFFFFFFF if arch == "x86" else _MASK64
    unpack, find, add, stride = _PLAIN.unpack_from, marks.find, seen.setdefault, _INSN_SIZE  # locals: the loop is hot
    k = find(b"C")
    while k >= 0:
        pos = k * stride
        address, size, first, rel = unpack(view, pos + _ADDR)
        if first == 0xE8 and size == 5:  # opcode E8 without prefix: call rel32
            add((address + rel + 5) & wide)
        elif first != 0xFF and view[pos + _ID] | view[pos + _ID + 1] << 8 in _CALL_IDS:
            _add_printed(arch, view, pos, seen)
        k = find(b"C", k + 1)


def _add_printed(arch: str, view: memoryview, pos: int, seen: dict) -> None:
    """The record at ``pos`` as capstone prints it: collected if a call to "0x..."."""
    address, size = _LAST.unpack_from(view, pos + _ADDR)
    mnemonic, op_str = _printed(arch, view[pos + _BYTES : pos + _BYTES + size].tobytes(), address)
    if mnemonic == "call" and op_str.startswith("0x"):
        text = op_str[2:]
        try:
            value: int | None = int(text, 16)
        except ValueError:
            value = None
        seen.setdefault(value if value is not None and format(value, "x") == text else text, None)


# ----------------------------------------------------------------------------- printed text (ARM, MIPS)


@functools.lru_cache(maxsize=None)
def _insn_dtype():
    """One NumPy view of capstone's instruction array; short overlapping fields give cheap prefix
    tests.  Capstone leaves whatever was in memory after each string's terminating NUL, so a field
    is only compared up to a NUL it includes ("mn5" == b"call" means "call\\0") and strings are cut
    at their first NUL."""
    import numpy as np

    return np.dtype(
        {
            "names": ["mn2", "mn3", "mn5", "op_str", "op2", "op3", "op5"],
            "formats": ["S2", "S3", "S5", "S160", "S2", "S3", "S5"],
            "offsets": [_MN, _MN, _MN, _OP, _OP, _OP, _OP],
            "itemsize": _INSN_SIZE,
        }
    )


def _select(arch: str, view: memoryview, n: int) -> list[str]:
    """The distinct collected address strings among ``n`` printed records, in order of first appearance."""
    import numpy as np

    insns = np.frombuffer(view, dtype=_insn_dtype(), count=n)
    if arch in ("x86", "x64"):
        hits, cut = (insns["mn5"] == b"call") & (insns["op2"] == b"0x"), slice(2, None)
    elif arch == "ARM":
        hits, cut = (insns["mn2"] == b"bl") & (insns["op3"] == b"#0x"), slice(3, None)
    else:
        hits, cut = (insns["mn3"] == b"lw") & (insns["op5"] == b"$t9, "), slice(8, -5)
    return [s[cut] for s in _distinct_strings(insns["op_str"][np.flatnonzero(hits)])]


def _distinct_strings(fields) -> list[str]:
    """Distinct C strings among capstone's fixed-size text fields, in order of first appearance.

    The bytes after each string's NUL are garbage, so they are zeroed before comparing.
    """
    import numpy as np

    if fields.size == 0:
        return []
    raw = fields.view(np.uint8).reshape(len(fields), -1)[:, :_PREFIX]
    ended = np.cumsum(raw == 0, axis=1, dtype=np.int32) > 0
    if not ended[:, -1].all():  # a longer string than the window: take the plain route
        return list(dict.fromkeys(_text(f) for f in fields))
    clean = np.ascontiguousarray(np.where(ended, 0, raw).astype(np.uint8)).view(f"S{_PREFIX}").ravel()
    uniq, first = np.unique(clean, return_index=True)
    return [u.decode("ascii") for u in uniq[np.argsort(first, kind="stable")]]


def _text(field: bytes) -> str:
    return field.split(b"\x00", 1)[0].decode("ascii")


def sweep(code: bytes, address: int, arch: str, *, quiet: bool = True) -> list[str]:
    """Linear sweep of ``code`` loaded at ``address``; the reference's call destinations.

    ``quiet=False`` makes x86 use the printing engine too (tests compare the two).
    """
    lib = _lib()
    quiet_handle = _quiet_engine(arch) if quiet else None
    handle = quiet_handle or _engine(arch)
    base = ctypes.cast(ctypes.c_char_p(code), ctypes.c_void_p).value or 0
    total, off = len(code), 0
    seen: dict = {}
    out = ctypes.c_void_p()
    out_ref = ctypes.byref(out)
    while off < total:
        start = (address + off) & _MASK64
        n = lib.cs_disasm(handle, base + off, total - off, start, CHUNK, out_ref)
        if n == 0:
            break
        try:
            view = memoryview((ctypes.c_ubyte * (n * _INSN_SIZE)).from_address(out.value)).cast("B")
            if quiet_handle:
                _x86_chunk(arch, view, n, seen)
            else:
                for a in _select(arch, view, n):  # distinct within the chunk; across chunks here
                    seen.setdefault(a, None)
            last, size = _LAST.unpack_from(view, (n - 1) * _INSN_SIZE + _ADDR)
            off += (last + size - start) & _MASK64
        finally:
            lib.cs_free(out, n)
        if n < CHUNK:  # capstone stopped: an instruction it cannot decode, or the end
            break
    # capstone prints targets 0-9 in decimal: not "0x..." operands
    return [t if isinstance(t, str) else format(t, "x") for t in seen if isinstance(t, str) or t > 9]


# ----------------------------------------------------------------------------- the region


def code_region(elf: ELFFile):
    """The section holding the entry point; else ``.text``; else the first R+X ``PT_LOAD``."""
    ep = elf.header.e_entry
    for section in elf.iter_sections():
        start = section.header.sh_addr
        if start <= ep <= start + section.header.sh_size - 1:
            return section
    text = elf.get_section_by_name(".text")
    if text:
        return text
    for segment in elf.iter_segments():
        if segment["p_type"] == "PT_LOAD" and segment["p_flags"] == 5:
            return segment
    return text


def image_base(elf: ELFFile, buf) -> int:
    """``p_vaddr`` of the first ``PT_LOAD``, found the way the reference finds it.

    The reference reads program headers 0, 1, 2, ... until one is ``PT_LOAD`` -- past
    ``e_phnum`` if need be, until a read fails at the end of the file.  When it could never
    stop (``e_phentsize`` of 0) we use 0, as the reference's current source does.
    """
    h = elf.header
    return _image_base(buf, "<" if elf.little_endian else ">", elf.elfclass, h["e_phoff"], h["e_phentsize"])


def _image_base(buf, endian: str, bits: int, phoff: int, phentsize: int) -> int:
    size = 32 if bits == 32 else 56  # Elf_Phdr
    if phoff > 0 and phentsize < size:
        raise ELFError(f"Too small e_phentsize: {phentsize}")
    vaddr_at, vaddr_fmt = (8, endian + "I") if bits == 32 else (16, endian + "Q")
    n = len(buf)
    if phentsize == 0:
        _read_fails_at(phoff, size, n)
        (ptype,) = struct.unpack_from(endian + "I", buf, phoff)
        return struct.unpack_from(vaddr_fmt, buf, phoff + vaddr_at)[0] if ptype == 1 else 0
    count = 0 if phoff + size > n else (n - size - phoff) // phentsize + 1
    ptype = struct.Struct(endian + "I")
    for k in range(min(count, 64)):  # the first PT_LOAD is nearly always among the first few
        pos = phoff + k * phentsize
        if ptype.unpack_from(buf, pos)[0] == 1:
            return struct.unpack_from(vaddr_fmt, buf, pos + vaddr_at)[0]
    import numpy as np  # many headers (a hostile file): read their types at once

    step = 1 << 16
    for first in range(0, count, step):
        k = min(step, count - first)
        types = np.ndarray(
            (k,), dtype=endian + "u4", buffer=buf, offset=phoff + first * phentsize, strides=(phentsize,)
        )
        hits = np.flatnonzero(types == 1)
        if hits.size:
            pos = phoff + (first + int(hits[0])) * phentsize
            return struct.unpack_from(vaddr_fmt, buf, pos + vaddr_at)[0]
    _read_fails_at(phoff + count * phentsize, size, n)
    raise AssertionError("unreachable")  # pragma: no cover


def _read_fails_at(pos: int, size: int, n: int) -> None:
    """Raise what reading a program header at ``pos`` from a file of ``n`` bytes raises, if anything."""
    check_seek(pos)
    if pos + size > n:
        raise ELFParseError(f"program header at {pos} runs past the end of the file")


def _section_data(section) -> bytes:
    if section["sh_type"] == "SHT_NOBITS":
        check_read(section.data_size)  # the reference builds the zeros; they hold no call
        return b""
    if section.compressed and section._compression_type == "ELFCOMPRESS_ZLIB" and section.data_size > MAX_CODE:
        return _inflate_bounded(section)
    return section.data()


def _inflate_bounded(section) -> bytes:
    """pyelftools' zlib inflation, refusing to grow past MAX_CODE (a decompression bomb)."""
    hdr = section.structs.Elf_Chdr.sizeof()
    section.stream.seek(section["sh_offset"] + hdr)
    packed = section.stream.read(section["sh_size"] - hdr)
    out = zlib.decompressobj().decompress(packed, MAX_CODE + 1)
    if len(out) > MAX_CODE:
        raise MemoryError(f"compressed code section inflates past {MAX_CODE} bytes")
    raise ELFCompressionError(f"Decompressed data is {len(out)} bytes long, should be {section.data_size} bytes long")


def call_destinations(elf: ELFFile, buf) -> tuple[list[str], Reason, str]:
    """``(addresses, reason, detail)``: reason and detail say why when the list is empty."""
    from elftools.elf.segments import Segment

    region = code_region(elf)
    if type(region) is Segment:
        address = elf.header.e_entry
        code = region.data()[address - region["p_vaddr"] :]
    else:
        base = image_base(elf, buf)
        if region is None:
            return [], Reason.NO_CODE, "no symbol table, and no code section or executable segment to disassemble"
        address = base + region["sh_offset"]
        code = _section_data(region)
    arch = elf.get_machine_arch()
    if arch not in MODES:
        return (
            [],
            Reason.UNSUPPORTED_ARCH,
            f"no symbol table, and no call-destination fallback for {arch} (the reference covers x86, x86-64, ARM and MIPS)",
        )
    found = sweep(bytes(code), address, arch)
    return found, Reason.NO_CALLS, _NO_CALLS


_NO_CALLS = "no symbol table, and the fallback found no direct call destinations"


def call_destinations_fast(buf, h, sections, arch: str) -> tuple[list[str], Reason, str] | None:
    """:func:`call_destinations` from the raw headers, for a file whose sections the fast
    symbol-table route has walked to the end (``sections``: its ``_Sections``; ``arch``: pyelftools'
    name of the machine) without finding
    anything out of the ordinary.  Only the plain case: the entry point lies in a section with
    bytes in the file, the architecture is one the fallback covers and the image base is found
    without error; anything else returns None (pyelftools then takes the exact route)."""
    if arch not in MODES:
        return None
    ep = h.entry
    for i in range(h.shnum):  # code_region: the first section holding the entry point
        hdr = sections.get(i)  # (name, type, flags, addr, offset, size, ...)
        if hdr[3] <= ep <= hdr[3] + hdr[5] - 1:
            break
    else:
        return None
    _name, sh_type, _flags, _addr, offset, size = hdr[:6]
    if sh_type == SHT_NOBITS or offset + size > len(buf):
        return None
    try:
        base = _image_base(buf, h.endian, h.bits, h.phoff, h.phentsize)
        check_read(size)
    except Exception:  # the exact route raises it, the reference's way
        return None
    found = sweep(bytes(buf[offset : offset + size]), base + offset, arch)
    return found, Reason.NO_CALLS, _NO_CALLS
