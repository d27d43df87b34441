"""Call destinations for ELF files without a symbol table (static, stripped binaries).

The reference finds a code region, sweeps it linearly with capstone (stopping at the first
bytes capstone cannot decode) and collects, in order of first appearance, the targets of
direct calls, spelled as capstone prints them.  We find the same region with pyelftools, the
same way, and run the same capstone engine; what differs is how the instructions are read:
capstone's C decoder fills an array of instructions in chunks and NumPy picks the calls from
that array, instead of a Python object per instruction.
"""

from __future__ import annotations

import ctypes
import functools
import struct
import zlib

import capstone
import numpy as np
from capstone import (
    CS_ARCH_ARM,
    CS_ARCH_MIPS,
    CS_ARCH_X86,
    CS_MODE_32,
    CS_MODE_64,
    CS_MODE_ARM,
    CS_MODE_BIG_ENDIAN,
    CS_MODE_MIPS32,
    _cs_insn,
)
from elftools.common.exceptions import ELFCompressionError, ELFError, ELFParseError
from elftools.elf.elffile import ELFFile
from elftools.elf.segments import Segment

from .elfconst import check_read, check_seek
from ..result import Reason

# pyelftools machine name -> capstone engine, as the reference chooses them (note: MIPS is
# always decoded big-endian and ARM never as Thumb; those are part of the value).
MODES = {
    "x86": (CS_ARCH_X86, CS_MODE_32),
    "x64": (CS_ARCH_X86, CS_MODE_64),
    "ARM": (CS_ARCH_ARM, CS_MODE_ARM),
    "MIPS": (CS_ARCH_MIPS, CS_MODE_MIPS32 | CS_MODE_BIG_ENDIAN),
}

_PREFIX = 32  # bytes of op_str compared at once (a call target needs at most 19)
CHUNK = 4096  # instructions per capstone call: ~1 MB of capstone records, cache-friendly (measured best)
MAX_CODE = 256 << 20  # a compressed code section may not inflate beyond this

_INSN_SIZE = ctypes.sizeof(_cs_insn)
_MN, _OP = _cs_insn.mnemonic.offset, _cs_insn.op_str.offset
# One view of capstone's instruction array; short overlapping fields give cheap prefix tests.
# Capstone leaves whatever was in memory after each string's terminating NUL, so a field is
# only compared up to a NUL it includes ("mn5" == b"call" means "call\0") and strings are cut
# at their first NUL.
_INSN_DTYPE = np.dtype(
    {
        "names": ["id", "address", "size", "bytes", "mn2", "mn3", "mn5", "op_str", "op2", "op3", "op5"],
        "formats": ["=u4", "=u8", "=u2", ("u1", 24), "S2", "S3", "S5", "S160", "S2", "S3", "S5"],
        "offsets": [
            0,
            _cs_insn.address.offset,
            _cs_insn.size.offset,
            _cs_insn.bytes.offset,
            _MN,
            _MN,
            _MN,
            _OP,
            _OP,
            _OP,
            _OP,
        ],
        "itemsize": _INSN_SIZE,
    }
)


@functools.lru_cache(maxsize=None)
def _cs_disasm():
    lib = ctypes.CDLL(capstone._cs._name)  # our own function object: capstone's prototypes stay untouched
    fn = lib.cs_disasm
    fn.restype = ctypes.c_size_t
    fn.argtypes = [
        ctypes.c_size_t,
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_uint64,
        ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_void_p),
    ]
    free = lib.cs_free
    free.restype = None
    free.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return fn, free


@functools.lru_cache(maxsize=None)
def _engine(arch: str) -> capstone.Cs:
    return capstone.Cs(*MODES[arch])


# ----------------------------------------------------------------------------- x86 without printing
#
# For x86 most of capstone's time goes to printing each instruction's text (measured: 0.16 s of
# decoding and printing for busybox's 398k instructions, 0.06 s without printing).  The reference
# needs the text only of direct calls.  So x86 code is swept by a second capstone engine whose
# printer is switched off: capstone's own decoder still decides every instruction boundary and
# where the sweep stops, and reports each instruction's id and bytes.  The text of a call is then
# the one capstone prints: for the plain ``E8 rel32`` form it is ``0x`` + the target in hex
# (capstone's printPCRelImm: address + size + rel, 32 bits wide in 32-bit mode; 0-9 in decimal),
# and any other call (prefixed, far) is printed by the normal engine.  Tests compare the result
# with the reference's loop over capstone's own instruction objects.

_X86_CALL_IDS = np.array([capstone.x86_const.X86_INS_CALL, capstone.x86_const.X86_INS_LCALL], dtype=np.uint32)
# prefixes capstone may print as part of the mnemonic or that change the operand
_X86_PREFIXES = frozenset(b"\xf0\xf2\xf3\x2e\x36\x3e\x26\x64\x65\x66\x67") | frozenset(range(0x40, 0x50))


class _DlInfo(ctypes.Structure):
    _fields_ = [
        ("fname", ctypes.c_char_p),
        ("fbase", ctypes.c_void_p),
        ("sname", ctypes.c_char_p),
        ("saddr", ctypes.c_void_p),
    ]


@functools.lru_cache(maxsize=None)
def _quiet_engine(arch: str) -> capstone.Cs | None:
    """A capstone engine for x86/x64 that decodes without printing, or None where capstone's
    handle does not have the layout this relies on (then the normal engine is used)."""
    if arch not in ("x86", "x64"):
        return None
    try:
        md = capstone.Cs(*MODES[arch])
        # capstone 5's handle starts: arch (4 bytes), mode (4 bytes), printer (function pointer)
        head = (ctypes.c_uint64 * 2).from_address(md.csh.value)
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
        return md
    except (OSError, AttributeError, ValueError):  # pragma: no cover - unusual platforms
        return None


def _x86_calls(arch: str, insns: np.ndarray) -> list[tuple[int, str]]:
    """(position, text) of the collected calls among instructions decoded without text."""
    ids = insns["id"]
    cand = np.flatnonzero((ids == _X86_CALL_IDS[0]) | (ids == _X86_CALL_IDS[1]))  # np.isin costs 40% of the sweep here
    if cand.size == 0:
        return []
    raw = insns["bytes"][cand]
    plain = (insns["size"][cand] == 5) & (raw[:, 0] == 0xE8)
    found: list[tuple[int, str]] = []
    idx = cand[plain]
    if idx.size:
        b = raw[plain].astype(np.uint64)
        rel = (b[:, 1] | (b[:, 2] << np.uint64(8)) | (b[:, 3] << np.uint64(16)) | (b[:, 4] << np.uint64(24))).astype(
            np.int64
        )
        rel = np.where(rel >= 1 << 31, rel - (1 << 32), rel)  # sign-extend rel32
        target = insns["address"][idx] + np.uint64(5) + rel.astype(np.uint64)  # wraps like capstone's int64 sum
        if arch == "x86":
            target &= np.uint64(0xFFFFFFFF)
        keep = target > 9  # capstone prints 0..9 in decimal: not a "0x" operand
        uniq, first = np.unique(target[keep], return_index=True)
        order = np.argsort(first, kind="stable")
        pos = idx[keep]
        found.extend((int(pos[first[k]]), format(int(uniq[k]), "x")) for k in order)
    md = _engine(arch)
    for k in cand[~plain]:  # prefixed or far calls: let capstone print them
        code = bytes(insns["bytes"][k][: insns["size"][k]])
        for _addr, _size, mnemonic, op_str in md.disasm_lite(code, int(insns["address"][k]), 1):
            if mnemonic == "call" and op_str.startswith("0x"):
                found.append((int(k), op_str[2:]))
    found.sort()
    return found


def _select(arch: str, insns: np.ndarray) -> list[str]:
    """The distinct collected address strings among ``insns``, in order of first appearance."""
    if arch in ("x86", "x64"):
        hits, cut = (insns["mn5"] == b"call") & (insns["op2"] == b"0x"), slice(2, None)
    elif arch == "ARM":
        hits, cut = (insns["mn2"] == b"bl") & (insns["op3"] == b"#0x"), slice(3, None)
    else:
        hits, cut = (insns["mn3"] == b"lw") & (insns["op5"] == b"$t9, "), slice(8, -5)
    return [s[cut] for s in _distinct_strings(insns["op_str"][np.flatnonzero(hits)])]


def _distinct_strings(fields: np.ndarray) -> list[str]:
    """Distinct C strings among capstone's fixed-size text fields, in order of first appearance.

    The bytes after each string's NUL are garbage, so they are zeroed before comparing.
    """
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
    disasm, free = _cs_disasm()
    engine = (_quiet_engine(arch) if quiet else None) or _engine(arch)
    printed = engine is _engine(arch)
    handle = engine.csh
    base = ctypes.cast(ctypes.c_char_p(code), ctypes.c_void_p).value or 0
    total, off = len(code), 0
    seen: dict[str, None] = {}
    while off < total:
        out = ctypes.c_void_p()
        n = disasm(handle, base + off, total - off, (address + off) & 0xFFFFFFFFFFFFFFFF, CHUNK, ctypes.byref(out))
        if n == 0:
            break
        try:
            raw = (ctypes.c_ubyte * (n * _INSN_SIZE)).from_address(out.value)
            insns = np.frombuffer(raw, dtype=_INSN_DTYPE, count=n)
            texts = _select(arch, insns) if printed else [t for _, t in _x86_calls(arch, insns)]
            for a in texts:  # distinct within the chunk; across chunks here
                seen.setdefault(a, None)
            off += int(insns["size"].sum(dtype=np.int64))
        finally:
            free(out, n)
        if n < CHUNK:  # capstone stopped: an instruction it cannot decode, or the end
            break
    return list(seen)


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
    phoff, phentsize = h["e_phoff"], h["e_phentsize"]
    size = elf.structs.Elf_Phdr.sizeof()
    if phoff > 0 and phentsize < size:
        raise ELFError(f"Too small e_phentsize: {phentsize}")
    endian = "<" if elf.little_endian else ">"
    vaddr_at, vaddr_fmt = (8, endian + "I") if elf.elfclass == 32 else (16, endian + "Q")
    n = len(buf)
    if phentsize == 0:
        _read_fails_at(phoff, size, n)
        (ptype,) = struct.unpack_from(endian + "I", buf, phoff)
        return struct.unpack_from(vaddr_fmt, buf, phoff + vaddr_at)[0] if ptype == 1 else 0
    count = 0 if phoff + size > n else (n - size - phoff) // phentsize + 1
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
    return found, Reason.NO_CALLS, "no symbol table, and the fallback found no direct call destinations"
