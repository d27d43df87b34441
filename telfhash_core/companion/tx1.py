"""The first companion rule set, tx1 (``"tx1:t1" + 70 hex``), and the ELF facts both rule sets read.

Values of tx1 are still read and compared, with tx1 values only.  Data flows one way: buffer ->
ELF facts (type, dynamic tags, symbol tables) -> normalised token set -> TLSH.  The rules, and the
corpus measurements that justify each, are in ``docs/companion.md``; the derived helper list is in
``companion_data.json``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..digest import tlsh_digest
from ..hashing.elf import Header, NotELF, SymbolTable, read_header
from ..hashing.elfconst import (
    DF_1_PIE,
    DT_FLAGS_1,
    DT_NULL,
    DT_SONAME,
    ET_DYN,
    PF_X,
    PT_DYNAMIC,
    PT_INTERP,
    PT_LOAD,
    SHN_UNDEF,
    SHT_DYNSYM,
    SHT_PROGBITS,
    SHT_STRTAB,
    SHT_SYMTAB,
    STB_GLOBAL,
    STB_WEAK,
    STT_FUNC,
    STT_GNU_IFUNC,
    STV_DEFAULT,
    STV_PROTECTED,
)
from ..hashing.elfconst import SYM_DTYPE as _SYM_DTYPE

TX1 = "tx1"  # the first rule set (this module)
VERSION = "tx2"  # the rule set the field computes (see .tx2)
VERSIONS = (TX1, VERSION)
FIELD = "telfhash_x"

MAX_NAME = 4096  # longer symbol names are cut here
MAX_SECTIONS = 1 << 16
MAX_PHDRS = 1 << 12
MAX_DYN = 1 << 16


# ----------------------------------------------------------------------------- ELF facts


@dataclass
class Section:
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    entsize: int


@dataclass
class ElfFacts:
    """What the companion needs to know about one ELF image."""

    header: Header
    e_type: int
    sections: list[Section] = field(default_factory=list)
    segments: list[tuple[int, int, int, int, int, int]] = field(
        default_factory=list
    )  # type, flags, offset, vaddr, filesz, memsz
    interp: bool = False
    soname: bool = False
    pie_flag: bool = False

    @property
    def is_library(self) -> bool:
        """Shared object (exports matter) rather than executable (imports matter).

        Order of evidence: ``DF_1_PIE`` says executable; a ``DT_SONAME`` says library; a
        ``PT_INTERP`` says executable; ``ET_DYN`` otherwise is a library (a plug-in loaded
        with dlopen usually has no soname), anything else an executable.
        """
        if self.pie_flag:
            return False
        if self.soname:
            return True
        if self.interp:
            return False
        return self.e_type == ET_DYN


def _unpack(fmt: str, buf, off: int) -> tuple | None:
    if off < 0 or off + struct.calcsize(fmt) > len(buf):
        return None
    return struct.unpack_from(fmt, buf, off)


def elf_facts(buf) -> ElfFacts:
    """Parse the headers the companion uses.  Raises :class:`NotELF` or ValueError (unusable)."""
    try:
        h = read_header(buf)
    except NotELF:
        raise
    except Exception as exc:  # the fast reader's "give up": a truncated header
        raise ValueError("truncated ELF header") from exc
    e = h.endian
    e_type = struct.unpack_from(e + "H", buf, 16)[0]
    facts = ElfFacts(h, e_type)
    n = len(buf)
    # sections
    shsize = 40 if h.bits == 32 else 64
    shfmt = e + ("IIIIIIIIII" if h.bits == 32 else "IIQQQQIIQQ")
    raw: list[tuple] = []
    if h.shoff and h.shentsize >= shsize:
        # every header counted here lies wholly inside the buffer
        count = min(h.shnum, MAX_SECTIONS, max(0, (n - h.shoff) // h.shentsize))
        rec = struct.Struct(shfmt)
        if h.shentsize == shsize:
            raw = list(rec.iter_unpack(buf[h.shoff : h.shoff + count * shsize]))
        else:
            raw = [rec.unpack_from(buf, h.shoff + i * h.shentsize) for i in range(count)]
    names_off = raw[h.shstrndx][4] if h.shstrndx < len(raw) else None
    for hdr in raw:
        name = ""
        if names_off is not None:
            pos = names_off + hdr[0]
            end = buf.find(b"\x00", pos, min(n, pos + 256)) if pos < n else -1
            if end >= 0:
                name = bytes(buf[pos:end]).decode("ascii", "replace")
        facts.sections.append(Section(name, hdr[1], hdr[2], hdr[3], hdr[4], hdr[5], hdr[6], hdr[9]))
    # segments
    phsize = 32 if h.bits == 32 else 56
    dynamic = None
    if h.phoff and h.phentsize >= phsize:
        count = min(h.phnum, MAX_PHDRS, max(0, (n - h.phoff) // h.phentsize))
        for i in range(count):
            off = h.phoff + i * h.phentsize
            if h.bits == 32:
                ph = _unpack(e + "IIIIIIII", buf, off)
                if ph is None:
                    break
                seg = (ph[0], ph[6], ph[1], ph[2], ph[4], ph[5])
            else:
                ph = _unpack(e + "IIQQQQQQ", buf, off)
                if ph is None:
                    break
                seg = (ph[0], ph[1], ph[2], ph[3], ph[5], ph[6])
            facts.segments.append(seg)
            if seg[0] == PT_INTERP:
                facts.interp = True
            elif seg[0] == PT_DYNAMIC and dynamic is None:
                dynamic = seg
    if dynamic is not None:
        dfmt = e + ("iI" if h.bits == 32 else "qQ")
        step = struct.calcsize(dfmt)
        off, end = dynamic[2], min(n, dynamic[2] + dynamic[4])
        for _ in range(MAX_DYN):
            if off + step > end:
                break
            tag, val = struct.unpack_from(dfmt, buf, off)
            off += step
            if tag == DT_NULL:
                break
            if tag == DT_SONAME:
                facts.soname = True
            elif tag == DT_FLAGS_1 and val & DF_1_PIE:
                facts.pie_flag = True
    return facts


def symbol_table(facts: ElfFacts) -> SymbolTable | None:
    """The table the companion reads: a non-empty ``.dynsym`` (the dynamic interface: what is
    imported and exported), else a non-empty ``.symtab`` (static, unstripped files)."""
    for wanted in (SHT_DYNSYM, SHT_SYMTAB):
        for s in facts.sections:
            if s.type == wanted and s.size > 0 and s.entsize > 0:
                if s.link >= len(facts.sections):
                    continue
                strtab = facts.sections[s.link]
                if strtab.type != SHT_STRTAB:
                    continue
                return SymbolTable(
                    "dynsym" if wanted == SHT_DYNSYM else "symtab", s.offset, s.size, s.entsize, strtab.offset
                )
    return None


@dataclass
class Symbols:
    """The function symbols of one table, split the way the companion uses them."""

    imported: list[str]
    exported: list[str]


def symbol_array(buf, h: Header, table: SymbolTable):
    """The symbol table as a NumPy view bounded by the buffer (fields ``name``, ``info``,
    ``other``, ``shndx``, ...), or None when it holds no whole symbol."""
    dtype = _SYM_DTYPE[(h.bits, h.endian)]
    if table.entsize < dtype.itemsize or table.offset >= len(buf):
        return None
    count = min(table.size, len(buf) - table.offset) // table.entsize
    if count and table.offset + (count - 1) * table.entsize + dtype.itemsize > len(buf):
        count -= 1
    if count <= 0:
        return None
    return np.ndarray(shape=(count,), dtype=dtype, buffer=buf, offset=table.offset, strides=(table.entsize,))


def names_at(buf, table: SymbolTable, offsets) -> list[str]:
    """The names at ``offsets`` of the table's string table (ASCII; empty ones skipped)."""
    base, n = table.strtab_offset, len(buf)
    out = []
    for off in offsets.tolist():
        pos = base + off
        if pos >= n:
            continue
        end = buf.find(b"\x00", pos, pos + MAX_NAME)  # bounded: a crafted string table may have no NUL
        if end < 0:
            end = min(n, pos + MAX_NAME)
        if end > pos:
            out.append(bytes(buf[pos:end]).decode("ascii", "ignore"))
    return out


def read_symbols(buf, h: Header, table: SymbolTable) -> Symbols:
    """Global or weak functions (``STT_FUNC``/``STT_GNU_IFUNC``) of default or protected
    visibility: undefined ones are imports, defined ones exports (names in table order)."""
    syms = symbol_array(buf, h, table)
    if syms is None:
        return Symbols([], [])
    info, other, shndx = syms["info"], syms["other"], syms["shndx"]
    typ, bind, vis = info & 0xF, info >> 4, other & 3
    keep = ((typ == STT_FUNC) | (typ == STT_GNU_IFUNC)) & ((bind == STB_GLOBAL) | (bind == STB_WEAK))
    keep &= (vis == STV_DEFAULT) | (vis == STV_PROTECTED)
    undef = shndx == SHN_UNDEF
    return Symbols(names_at(buf, table, syms["name"][keep & undef]), names_at(buf, table, syms["name"][keep & ~undef]))


# ----------------------------------------------------------------------------- normalisation

# Large-file (``open64``) and 64-bit-time (``__stat64_time64``, ``__clock_gettime64``) variants
# that 32-bit builds import in place of the base function.  Leading underscores go too, so
# ``__xstat64`` and ``__xstat`` meet, as do ``__open64_2`` and ``__open_2``.
_FOLD_RE = re.compile(r"^_*(?P<base>.*?[A-Za-z_])(?:64)?(?:_time64)?(?:64)?(?P<suffix>_2|_r|_chk)?$", re.DOTALL)


def fold_name(name: str) -> str:
    """The architecture-neutral spelling of a function name (see ``docs/companion.md``).

    * ``open64``, ``__open64_2``, ``__stat64_time64``, ``__localtime64_r`` -> ``open``,
      ``open_2``, ``stat``, ``localtime_r``: a trailing ``64`` and/or ``_time64`` is removed
      (before an optional ``_2``/``_r``/``_chk`` suffix), then leading underscores;
    * C++ mangled names (``_Z…``): ``j`` (unsigned int) -> ``m`` (unsigned long), so
      ``_Znwj`` (ILP32 ``operator new``) and ``_Znwm`` (LP64) meet;
    * lower case.
    """
    if name.startswith("_Z"):
        return name.replace("j", "m").lower()
    m = _FOLD_RE.match(name)
    if m is None:  # nothing but underscores and digits
        return name.lstrip("_").lower()
    return (m["base"] + (m["suffix"] or "")).lstrip("_").lower()


@functools.lru_cache(maxsize=1)
def helper_data() -> dict:
    """The derived helper list (``companion_data.json``): folded names dropped everywhere."""
    path = Path(__file__).with_name("companion_data.json")
    data = json.loads(path.read_text())
    data["names"] = frozenset(data["names"])
    data["prefixes"] = tuple(data.get("prefixes", ()))
    return data


def is_helper(folded: str, data: dict | None = None) -> bool:
    """True for a runtime helper whose presence depends on the CPU, not on the program."""
    data = helper_data() if data is None else data
    return folded in data["names"] or folded.startswith(data["prefixes"])


def normalise(names, data: dict | None = None) -> list[str]:
    """Folded, de-duplicated, helper-free, sorted function names."""
    data = helper_data() if data is None else data
    out = set()
    for n in names:
        if not n:
            continue
        f = fold_name(n)
        if f and not is_helper(f, data):
            out.add(f)
    return sorted(out)


def symbol_names(syms: Symbols, library: bool) -> list[str]:
    """Executables: the functions they import.  Libraries: the functions they export, and
    their imports (plug-ins export only an entry point or two).  An executable's own exports
    are left out: MIPS executables export their internal functions, other CPUs do not."""
    return syms.exported + syms.imported if library else list(syms.imported)


# ----------------------------------------------------------------------------- no symbols: strings

SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 1, 2, 4
MIN_STRING = 6
MAX_STRING_BYTES = 64 << 20
_STRING_RE = re.compile(rb"[\x20-\x7e\t\n\r]{%d,}" % MIN_STRING)


def _readonly_regions(buf, facts: ElfFacts) -> list[tuple[int, int]]:
    """File ranges of read-only data: ``.rodata*`` sections; without section headers, the
    non-executable ``PT_LOAD`` segments, else every ``PT_LOAD``."""
    n = len(buf)
    regions = [
        (s.offset, s.size)
        for s in facts.sections
        if s.type == SHT_PROGBITS
        and s.name.startswith(".rodata")
        and s.flags & SHF_ALLOC
        and not s.flags & SHF_EXECINSTR
    ]
    if not regions and not any(s.type == SHT_PROGBITS for s in facts.sections):
        loads = [seg for seg in facts.segments if seg[0] == PT_LOAD]
        regions = [(seg[2], seg[4]) for seg in loads if not seg[1] & PF_X] or [(seg[2], seg[4]) for seg in loads]
    out, total = [], 0
    for off, size in regions:
        if off >= n or size <= 0:
            continue
        size = min(size, n - off, MAX_STRING_BYTES - total)
        if size <= 0:
            break
        out.append((off, size))
        total += size
    return out


def readonly_strings(buf, facts: ElfFacts) -> list[str]:
    """Printable strings (at least six characters) in read-only data, sorted and unique.

    String literals do not depend on the CPU: the same program built for nine Debian
    architectures has (nearly) the same set, where its code and addresses have nothing in
    common.  Used when a file has no usable symbols (stripped static binaries, klibc)."""
    found: set[str] = set()
    for off, size in _readonly_regions(buf, facts):
        for m in _STRING_RE.finditer(bytes(buf[off : off + size])):
            found.add(m.group().decode("ascii"))
    return sorted(found)


# ----------------------------------------------------------------------------- no strings either: calls

MAX_CODE = 8 << 20  # bytes of code swept at most
MAX_INSNS = 1_000_000  # instructions decoded plus undecodable units skipped, at most
MAX_SKIPS = 1 << 15  # undecodable units skipped at most (beyond that the region is not code)
WINDOW = 1 << 16  # bytes handed to capstone per call (resuming never copies the whole region)
EM_386, EM_68K, EM_MIPS, EM_PPC, EM_PPC64, EM_S390, EM_ARM, EM_SH, EM_X86_64, EM_AARCH64 = (
    3,
    4,
    8,
    20,
    21,
    22,
    40,
    42,
    62,
    183,
)

# e_machine -> (capstone arch, extra mode, call mnemonics, resync step after an undecodable unit)
_CALLS = {
    EM_386: ("X86", "32", ("call",), 1),
    EM_X86_64: ("X86", "64", ("call",), 1),
    EM_ARM: ("ARM", "ARM", ("bl", "blx"), 4),
    EM_AARCH64: ("ARM64", "ARM", ("bl",), 4),
    EM_MIPS: ("MIPS", "MIPS", ("jal", "bal"), 4),
    EM_PPC: ("PPC", "32", ("bl",), 4),
    EM_PPC64: ("PPC", "64", ("bl",), 4),
    EM_S390: ("SYSZ", None, ("brasl",), 2),
    EM_SH: ("SH", "SH4", ("bsr",), 2),
    EM_68K: ("M68K", "M68K_040", ("bsr.l", "bsr.w", "bsr.b", "bsr", "jsr"), 2),
}


def _engine(facts: ElfFacts, thumb: bool):
    """A capstone engine for the file's CPU, endianness and (ARM) instruction set."""
    import capstone

    h = facts.header
    arch, extra, _mn, _step = _CALLS[h.machine]
    mode = capstone.CS_MODE_BIG_ENDIAN if h.endian == ">" else capstone.CS_MODE_LITTLE_ENDIAN
    if arch == "ARM" and thumb:
        mode |= capstone.CS_MODE_THUMB
    elif arch == "MIPS":
        mode |= capstone.CS_MODE_MIPS64 if h.bits == 64 else capstone.CS_MODE_MIPS32
    elif extra is not None and arch != "ARM64":
        mode |= getattr(capstone, f"CS_MODE_{extra}")
    return capstone.Cs(getattr(capstone, f"CS_ARCH_{arch}"), mode)


def _code_region(facts: ElfFacts) -> tuple[int, int, int] | None:
    """(file offset, size, address) of the code holding the entry point: its section, else
    ``.text``, else the executable ``PT_LOAD`` segment holding it, else the first one."""
    entry = facts.header.entry & ~1
    for s in facts.sections:
        if s.flags & SHF_EXECINSTR and s.type == SHT_PROGBITS and s.addr <= entry < s.addr + s.size:
            return s.offset, s.size, s.addr
    for s in facts.sections:
        if s.name == ".text" and s.type == SHT_PROGBITS:
            return s.offset, s.size, s.addr
    loads = [seg for seg in facts.segments if seg[0] == PT_LOAD and seg[1] & PF_X]
    for seg in loads:
        if seg[3] <= entry < seg[3] + seg[4]:
            return seg[2], seg[4], seg[3]
    return (loads[0][2], loads[0][4], loads[0][3]) if loads else None


def _target(op: str) -> int | None:
    """The immediate destination in a call's operand text (``#0x1f0``, ``0x1f0``, ``$1f0.l``,
    ``%r14, 0x1f0``), or None for an indirect call."""
    last = op.rsplit(",", 1)[-1].strip().lstrip("#")
    if last.endswith((".l", ".w")):
        last = last[:-2]
    try:
        if last.startswith("$"):
            return int(last[1:], 16)
        if last.startswith(("0x", "-0x")):
            return int(last, 16)
        return int(last) if last.isdigit() else None
    except ValueError:
        return None


def call_targets(buf, facts: ElfFacts) -> list[str]:
    """Destinations of direct calls in the entry point's code, decoded for the file's real
    CPU (endianness, Thumb when the entry point is odd, AArch64, PowerPC, s390x, SuperH,
    m68k), resuming after undecodable bytes; as offsets from the start of the code (``+1f0``)
    or, outside it, absolute (``@40001f0``).  Sorted, unique."""
    h = facts.header
    if h.machine not in _CALLS:
        return []
    region = _code_region(facts)
    if region is None:
        return []
    off, size, addr = region
    if off >= len(buf):
        return []
    code = bytes(buf[off : off + min(size, MAX_CODE)])
    thumb = h.machine == EM_ARM and bool(h.entry & 1)
    md = _engine(facts, thumb)
    mnemonics, step = frozenset(_CALLS[h.machine][2]), (2 if thumb else _CALLS[h.machine][3])
    found: set[str] = set()
    pos, count, skips, end, n = 0, 0, 0, addr + len(code), len(code)
    while pos < n and count < MAX_INSNS and skips < MAX_SKIPS:
        last = pos
        for _a, s, mn, op in md.disasm_lite(code[pos : pos + WINDOW], (addr + pos) & 0xFFFFFFFFFFFFFFFF):
            count += 1
            last += s  # progress from sizes, not addresses (a crafted address may wrap)
            if mn in mnemonics:
                t = _target(op)
                if t is not None:
                    found.add(f"+{t - addr:x}" if addr <= t < end else f"@{t:x}")
            if count >= MAX_INSNS:
                break
        if last <= pos:  # undecodable here: skip one instruction unit and carry on
            pos += step
            skips += 1
        else:
            pos = last
    return sorted(found)


# ----------------------------------------------------------------------------- the value


def raw_names(buf, facts: ElfFacts) -> list[str]:
    """The function names the companion starts from (before folding), or [] without symbols."""
    table = symbol_table(facts)
    if table is None:
        return []
    return symbol_names(read_symbols(buf, facts.header, table), facts.is_library)


# Fewer function names than this say what interface a file has, not which program it is:
# glibc's 234 gconv modules all import and export the same six.  Such files are hashed by
# their strings instead (the corpus results are the same for any value from 1 to 16).
MIN_SYMBOLS = 8


def features(buf, data: dict | None = None) -> tuple[str, list[str], str | None]:
    """``(source, tokens, digest)``: the normalised function names (``"symbols"``) when there
    are at least ``MIN_SYMBOLS`` and TLSH takes them; else the read-only strings (``"strings"``); else the call destinations
    (``"calls"``).  ``data``: another helper list (evaluation), else the shipped one."""
    facts = elf_facts(buf)
    names = normalise(raw_names(buf, facts), data)
    if len(names) >= MIN_SYMBOLS:
        d = digest_tokens(names)
        if d is not None:
            return "symbols", names, d
    return fallback_features(buf, facts)


def fallback_features(buf, facts: ElfFacts) -> tuple[str, list[str], str | None]:
    """For a file whose symbols give no digest: its strings, else its call destinations.

    Small sets are hashed here too (see :func:`digest_tokens`, ``small=True``): a stripped
    klibc ``mkdir`` has three strings, the same on every CPU.  Symbols are not: hundreds of
    plug-ins share one tiny interface (glibc's 234 ``gconv`` modules import and export the
    same six functions), and would all be linked; they get their strings instead."""
    strings = readonly_strings(buf, facts)
    if strings:
        return "strings", strings, digest_tokens(strings, small=True)
    calls = call_targets(buf, facts)
    return "calls", calls, digest_tokens(calls, small=True)


def _order_key(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "ignore")).digest()


def digest_tokens(tokens: list[str], small: bool = False) -> str | None:
    """TLSH (``t1…``) of the tokens joined with ``,`` in the order of their SHA-256, not
    alphabetically: alphabetical order puts look-alike names side by side (``str*``,
    ``*_chk``), which bunches TLSH's trigram counts; on the corpus the hash order links
    different programs less often (0.78% -> 0.65% of pairs within 50) and the same program
    across CPUs as often.  None when there are no tokens or TLSH refuses the input (too short
    or too uniform) -- unless ``small``: then the TLSH of the tokens' SHA-512 digests in the
    same order, so that identical small sets still meet."""
    if not tokens:
        return None
    tokens = sorted(set(tokens), key=_order_key)
    d = tlsh_digest(tokens)
    if d != "tnull":
        return d
    if not small:
        return None
    import tlsh

    data = b"".join(hashlib.sha512(t.encode("utf-8", "ignore")).digest() for t in tokens)
    d = tlsh.hash(data).lower()
    return d if d.startswith("t1") else None


def tx1_of(buf, data: dict | None = None) -> str | None:
    """The first rule set's value ``tx1:t1…`` of an ELF image (bytes or mmap), or None."""
    import capstone

    try:
        _source, _tokens, d = features(buf, data)
    except (NotELF, ValueError, struct.error, IndexError, OverflowError, MemoryError, capstone.CsError):
        return None  # not an ELF file, or one too broken to say anything about
    return f"{TX1}:{d}" if d else None


# ----------------------------------------------------------------------------- deriving the helper list

MIN_LABELS = 3  # a helper must disagree with the other CPUs in at least this many programs
MIN_SHARE = 0.5  # ... and in at least this share of the programs where the majority is clear
MIN_BUILDS = 4  # programs built for fewer CPUs than this say nothing
MIN_FAMILY = 3  # a prefix becomes a rule when this many CPU-only names share it


def derive_helpers(builds) -> dict:
    """Derive the helper list from ``builds``: ``(label, arch, raw function names)`` triples,
    where one label is one program built for several CPUs.

    For every program built for at least ``MIN_BUILDS`` CPUs, every folded name and every
    CPU: do the *other* builds clearly agree (a strict majority has the name, or a strict
    majority lacks it), and does this CPU's build go the other way?  A name is a helper when,
    for some CPU, it goes the other way in at least ``MIN_LABELS`` programs and in at least
    ``MIN_SHARE`` of the programs where the others agree.  A prefix (the first ``_``-separated
    word, e.g. ``aeabi_``) becomes a rule when ``MIN_FAMILY`` names with it go the other way
    for some CPU (in any number of programs), all of them in the implementation's reserved
    name space (spelled with a leading underscore: ``__aeabi_idiv``, ``_Ux86_64_step``), and no
    name with it is ever present on every CPU.
    """
    per_label: dict[str, dict[str, set[str]]] = {}
    reserved: set[str] = set()
    for label, arch, build_names in builds:
        folded = {fold_name(n) for n in build_names if n} - {""}
        reserved.update(fold_name(n) for n in build_names if n.startswith("_"))
        if folded:
            per_label.setdefault(label, {})[arch] = folded
    against: dict[tuple[str, str], int] = {}
    decided: dict[tuple[str, str], int] = {}
    everywhere: set[str] = set()
    for per in per_label.values():
        archs = sorted(per)
        if len(archs) < MIN_BUILDS:
            continue
        everywhere |= set.intersection(*per.values())
        for name in set().union(*per.values()):
            have = {a for a in archs if name in per[a]}
            for a in archs:
                k = len(have) - (a in have)
                others = len(archs) - 1
                if 2 * k == others:
                    continue
                majority_has = 2 * k > others
                decided[(a, name)] = decided.get((a, name), 0) + 1
                if (a in have) != majority_has:
                    against[(a, name)] = against.get((a, name), 0) + 1
    names: dict[str, list] = {}
    loose: set[str] = set()
    for (a, name), n in against.items():
        loose.add(name)
        if n >= MIN_LABELS and n >= MIN_SHARE * decided[(a, name)]:
            names.setdefault(name, []).append([a, n, decided[(a, name)]])
    families: dict[str, set[str]] = {}
    for name in loose & reserved:
        head, sep, _ = name.partition("_")
        if sep and head and not head.isdigit():
            families.setdefault(head + "_", set()).add(name)
    prefixes = sorted(
        p
        for p, members in families.items()
        if len(members) >= MIN_FAMILY and not any(n.startswith(p) for n in everywhere)
    )
    return {
        "version": TX1,
        "names": sorted(names),
        "prefixes": prefixes,
        # name -> "cpu: programs where its build goes against the others / programs where they agree"
        "evidence": {n: [f"{a}: {k}/{m}" for a, k, m in sorted(v)] for n, v in sorted(names.items())},
        "prefix_members": {p: sorted(families[p]) for p in prefixes},
    }
