"""telfhash-x version 2 (``tx2:``): one value for one program across CPUs, static or dynamic.

tx1 hashed a static, stripped binary by all of its read-only strings, and 92-96% of those are
the static C library's, so unrelated programs on one C library came out alike.  tx2 removes
what the toolchain contributes (strings derived from Debian's cross toolchains, see
:mod:`.toolchain`), normalises CPU names and target triplets, hashes a very small program by
words rather than whole strings, reads imports the same way on every CPU (MIPS lists a
plug-in's host functions as undefined ``STT_FUNC`` with a stub address, other CPUs as
``STT_NOTYPE``), and encodes the token set so that one name more or less moves the distance
little (TLSH over a fixed expansion of each token's hash instead of TLSH over joined text).

Value: ``"tx2:" + rule + ":" + "t1" + 70 hex``, where rule is ``imports``, ``exports``,
``strings`` or ``calls``: the rule that produced it (the digest after the last ``:`` is what
is compared).  Rules and measurements: ``docs/companion.md``.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..hashing.elf import Header, NotELF, SymbolTable
from ..hashing.elfconst import (
    SHN_UNDEF,
    SHT_DYNSYM,
    SHT_STRTAB,
    SHT_SYMTAB,
    STB_GLOBAL,
    STB_WEAK,
    STT_FUNC,
    STT_GNU_IFUNC,
    STV_DEFAULT,
    STV_PROTECTED,
)
from .tx1 import ElfFacts, _readonly_regions, call_targets, derive_helpers, elf_facts, fold_name, names_at, symbol_array
from . import toolchain as tc

VERSION = "tx2"
RULES = ("imports", "exports", "strings", "calls")
HELPERS_FILE = Path(__file__).with_name("tx2_helpers.json")

ET_REL = 1
STT_NOTYPE = 0

# Fewer names than this say which interface a file has, not which program it is (glibc's
# 234 gconv modules import and export the same six functions): such files go by strings.
MIN_SYMBOLS = 8
# Fewer program strings than this (after the toolchain's are removed): hash words instead.
SMALL_STRINGS = 16
# The TLSH input is about this long whatever the number of tokens: each token becomes
# BUDGET // n bytes of its SHAKE-128 stream (at least MIN_EXPAND), so that TLSH's length code
# does not move with the number of tokens (two length steps cost 24).
BUDGET = 1 << 16
MIN_EXPAND = 32
EXPAND = 256  # the per-token expansion measured against joined text (docs/companion.md)
# At most this many tokens (the first in hash order: a consistent sample) are hashed.
MAX_TOKENS = 4096
# A dynamic file's strings join its imports/exports, at most this many (first in hash order).
MAX_SYMBOL_STRINGS = 256
# Leading bytes tried off a string that is not the toolchain's as a whole (table bytes that
# happen to be printable run into the string after them).
MAX_TRIM = 64
MIN_TAIL = 8  # ... leaving a toolchain string of at least this many (3 after 1 or 2 junk bytes)
# The C library's part of a static binary's strings starts with a run of this many text
# strings of which at least RUN_KNOWN are the toolchain's (see toolchain_start; half known is
# enough for a C library that nothing in the data comes from: musl left out of it) ...
RUN_LENGTH, RUN_KNOWN = 16, 8
RUN_START = 2  # ... and begins where this many known ones follow in a row
# ... and leaves at most this many unknown strings after it: a C library that was not derived
# from left at most 19 per file (corpus-static, each CPU held out); busybox, whose own strings
# come after its C library's tables, has over 2,000.
MAX_LEFTOVERS = 64


# ----------------------------------------------------------------------------- symbols


@dataclass
class Symbols:
    imported: list[str]
    exported: list[str]


def _table(facts: ElfFacts, wanted: int) -> SymbolTable | None:
    for s in facts.sections:
        if s.type == wanted and s.size > 0 and s.entsize > 0 and s.link < len(facts.sections):
            strtab = facts.sections[s.link]
            if strtab.type == SHT_STRTAB:
                return SymbolTable(
                    "dynsym" if wanted == SHT_DYNSYM else "symtab", s.offset, s.size, s.entsize, strtab.offset
                )
    return None


def symbol_table(facts: ElfFacts) -> SymbolTable | None:
    """The dynamic interface (``.dynsym``); for relocatable objects (``.o``, kernel modules)
    the ``.symtab``.  A static executable's ``.symtab`` lists its C library's functions: such
    files go by their strings, like their stripped builds."""
    t = _table(facts, SHT_DYNSYM)
    if t is None and facts.e_type == ET_REL:
        t = _table(facts, SHT_SYMTAB)
    return t


def read_symbols(buf, h: Header, table: SymbolTable, exports: bool = True) -> Symbols:
    """Global or weak symbols of default or protected visibility.  Imports: undefined
    ``STT_FUNC``, ``STT_GNU_IFUNC`` *or* ``STT_NOTYPE`` (a plug-in's host functions are NOTYPE
    on most CPUs but FUNC with a stub address on MIPS).  Exports: defined functions (not read,
    left empty, with ``exports=False``)."""
    syms = symbol_array(buf, h, table)
    if syms is None:
        return Symbols([], [])
    info, other, shndx = syms["info"], syms["other"], syms["shndx"]
    typ, bind, vis = info & 0xF, info >> 4, other & 3
    ok = ((bind == STB_GLOBAL) | (bind == STB_WEAK)) & ((vis == STV_DEFAULT) | (vis == STV_PROTECTED))
    func = (typ == STT_FUNC) | (typ == STT_GNU_IFUNC)
    undef = shndx == SHN_UNDEF
    imports = syms["name"][ok & undef & (func | (typ == STT_NOTYPE))]
    exported = names_at(buf, table, syms["name"][ok & func & ~undef]) if exports else []
    return Symbols(names_at(buf, table, imports), exported)


# ----------------------------------------------------------------------------- derived data


@dataclass
class RuleData:
    """What tx2 derives: the import/export helper list (from programs built for many CPUs)
    and the toolchain strings (from the toolchains).  Evaluation swaps in hold-out versions."""

    helpers: frozenset = frozenset()
    prefixes: tuple = ()
    toolchain: tc.ToolchainData | None = None
    meta: dict = field(default_factory=dict)
    # raw name -> its folded name, or "" when it is dropped (see normalise_names); each RuleData
    # has its own (not copied by dataclasses.replace): helpers and prefixes are set once
    kept: dict = field(default_factory=dict, init=False, compare=False, repr=False)

    @classmethod
    def from_helpers(cls, helpers: dict, toolchain: tc.ToolchainData | None) -> RuleData:
        return cls(frozenset(helpers["names"]), tuple(helpers.get("prefixes", ())), toolchain, helpers)


@functools.lru_cache(maxsize=1)
def shipped() -> RuleData:
    helpers = json.loads(HELPERS_FILE.read_text())
    return RuleData.from_helpers(helpers, tc.shipped())


MAX_KEPT = 1 << 16  # raw names remembered per RuleData (see normalise_names)


def _keep(name: str, data: RuleData) -> str:
    """The folded name, or "" when it is empty or one of ``data``'s helpers."""
    f = fold_name(name) if name else ""
    return f if f and f not in data.helpers and not f.startswith(data.prefixes) else ""


def normalise_names(names, data: RuleData) -> list[str]:
    """Folded, de-duplicated, helper-free, sorted names.  What becomes of each raw name is
    remembered per ``data`` (names recur from file to file; a fold is a regular-expression
    match), at most ``MAX_KEPT`` of them."""
    names = list(names)
    kept = data.kept
    got: list = list(map(kept.get, names))  # None: not seen yet
    if None in got:
        if len(kept) > MAX_KEPT:
            kept.clear()
        for i, f in enumerate(got):
            if f is None:
                f = kept.get(names[i])
                if f is None:
                    f = kept[names[i]] = _keep(names[i], data)
                got[i] = f
    out = set(got)
    out.discard("")
    return sorted(out)


def derive(builds) -> dict:
    """The helper list from ``(label, arch, raw import/export names)`` (tx1's derivation run on
    tx2's reading of the symbols)."""
    d = derive_helpers(builds)
    d["version"] = VERSION
    return d


# ----------------------------------------------------------------------------- strings


_CPU_WORDS = [
    "x86_64",
    "x86-64",
    "x64",
    "amd64",
    "i386",
    "i486",
    "i586",
    "i686",
    "x86",
    "x32",
    "ia32",
    "arm",
    "armel",
    "armhf",
    "arm64",
    "aarch64",
    "aarch64_be",
    "arm7",
    "armv4",
    "armv4t",
    "armv5",
    "armv5te",
    "armv5tel",
    "armv6",
    "armv6l",
    "armv7",
    "armv7l",
    "armv7a",
    "armv8",
    "armv8l",
    "armeb",
    "thumb",
    "mips",
    "mipsel",
    "mipseb",
    "mips32",
    "mips64",
    "mips64el",
    "mipsn32",
    "mipsn32el",
    "mipsr6",
    "mipsr6el",
    "mips64r6",
    "mips64r6el",
    "mpsl",
    "powerpc",
    "ppc",
    "ppc32",
    "ppc64",
    "ppc64le",
    "ppc64el",
    "ppcle",
    "powerpc64",
    "powerpc64le",
    "s390",
    "s390x",
    "sh",
    "sh4",
    "sh4a",
    "sh4eb",
    "m68k",
    "m68020",
    "sparc",
    "sparc64",
    "sparcv9",
    "riscv",
    "riscv32",
    "riscv64",
    "alpha",
    "hppa",
    "parisc",
    "arc",
    "loongarch64",
    "loong64",
    "microblaze",
    "or1k",
    "xtensa",
    "ia64",
    "spc",
    "gnueabi",
    "gnueabihf",
    "gnuabi64",
    "gnuabin32",
    "gnuspe",
    "eabi",
    "eabihf",
]


def _trie(words: list[str]) -> str:
    """A regular expression matching any of ``words``, factored by common prefixes (a flat
    alternation of ~100 words is several times slower to scan with)."""
    tree: dict = {}
    for w in words:
        node = tree
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: dict) -> str:
        end = "" in node
        alts = [re.escape(ch) + emit(child) for ch, child in sorted(node.items()) if ch]
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        return "(?:" + body + ")?" if end else body

    return emit(tree)


_CPU_RE = re.compile(
    r"(?<![A-Za-z0-9])" + _trie(sorted({w.lower() for w in _CPU_WORDS})) + r"(?![A-Za-z0-9])", re.IGNORECASE
)
# A target triplet: CPU-[vendor-]linux-ABI (x86_64-linux-gnu, arm-linux-gnueabihf, mipsel-unknown-linux-musl).
_TRIPLET_RE = re.compile(
    r"(?<![A-Za-z0-9])[A-Za-z0-9_]+(?:-[A-Za-z0-9_]+)?-linux(?:-[A-Za-z0-9_]+)?(?![A-Za-z0-9])", re.IGNORECASE
)
_WORD_RE = re.compile(r"[a-z0-9]+")


# _CPU_RE for lower-case ASCII text: the same matches, several times faster to scan with than
# a case-insensitive pattern.
_CPU_LOWER_RE = re.compile(_CPU_RE.pattern)
# A CPU name starts where a run of letters and digits starts, and that run is one of these
# (the part of a CPU name before any ``-``/``_``: ``x86`` of ``x86_64``).
_CPU_FIRST = frozenset(re.split("[-_]", w.lower())[0] for w in _CPU_WORDS)
_NOT_ALNUM = str.maketrans({chr(c): " " for c in range(128) if not chr(c).isdigit() and not chr(c).islower()})


def _segments(low: str, needles) -> list[tuple[int, int]]:
    """``(start, end)`` of each NUL-delimited segment of ``low`` holding one of ``needles``,
    in order (neither pattern matches across a NUL, nor does a NUL count as a letter or
    digit at a segment's edge: each segment can be substituted on its own)."""
    spans = []
    for w in needles:
        pos = low.find(w)
        while pos >= 0:
            end = low.find("\x00", pos)
            end = len(low) if end < 0 else end
            spans.append((low.rfind("\x00", 0, pos) + 1, end))
            pos = low.find(w, end)
    return sorted(set(spans))


def normalise_string(s: str) -> str:
    """CPU names and target triplets replaced by ``<cpu>`` / ``<triplet>``.

    ASCII text (all of a binary's strings; :func:`normalise_all` joins many with NULs) takes a
    faster route to the same result: the patterns run only over the segments that can hold a
    match -- a triplet holds ``-linux``, a CPU name starts with one of ``_CPU_FIRST`` as a
    whole run of letters and digits -- and the CPU names are found in the lower-cased text
    (ASCII lower-casing keeps every offset) by a case-sensitive pattern.  Other text goes
    through the case-insensitive patterns as it is (they also match a few non-ASCII letters,
    such as the Kelvin sign)."""
    if not s.isascii():
        return _CPU_RE.sub("<cpu>", _TRIPLET_RE.sub("<triplet>", s))
    low = s.lower()
    parts: list[str] = []
    last = 0
    if "-linux" in low:
        for a, b in _segments(low, ("-linux",)):
            parts += (s[last:a], _TRIPLET_RE.sub("<triplet>", s[a:b]))
            last = b
        s = "".join(parts) + s[last:]
        low = s.lower()
        parts, last = [], 0
    found = _CPU_FIRST.intersection(low.translate(_NOT_ALNUM).split())
    for a, b in _segments(low, found) if found else ():
        for m in _CPU_LOWER_RE.finditer(low, a, b):
            parts += (s[last : m.start()], "<cpu>")
            last = m.end()
    if not parts:
        return s
    parts.append(s[last:])
    return "".join(parts)


def words(strings: list[str]) -> list[str]:
    """The words (lower-case letters and digits) of normalised strings; ``cpu`` and
    ``triplet`` stand for any CPU name and target triplet."""
    out: set[str] = set()
    for s in strings:
        out.update(_WORD_RE.findall(normalise_string(s).lower()))
    return sorted(out)


MAX_STRINGS_BYTES = 8 << 20  # string bytes kept at most (bounds the key arrays: 8 bytes per byte)


def ordered_strings(buf, facts: ElfFacts) -> dict[bytes, None]:
    """Printable runs (at least ``MIN_STRING``) in read-only data, unique, in the order they
    first occur in the file (the order says which came from the program and which from its C
    library: see :func:`toolchain_start`)."""
    found: dict[bytes, None] = {}
    for off, size in _readonly_regions(buf, facts):
        found.update(dict.fromkeys(tc.strings_in(buf[off : off + size])))
    return found


def capped(found) -> list[bytes]:
    """``found`` as a list, at most ``MAX_STRINGS_BYTES`` of them (the first in file order)."""
    out = list(found)
    if sum(map(len, out)) <= MAX_STRINGS_BYTES:
        return out
    total = 0
    for i, s in enumerate(out):
        total += len(s)
        if total > MAX_STRINGS_BYTES:
            return out[:i]
    return out


def raw_strings(buf, facts: ElfFacts) -> list[bytes]:
    """Printable runs (at least ``MIN_STRING``) in read-only data, unique, in file order; at
    most ``MAX_STRINGS_BYTES`` of them (the first in file order)."""
    return capped(ordered_strings(buf, facts))


def _known(strings: list[bytes], toolchain: tc.ToolchainData, keyed=None) -> np.ndarray:
    """Which ``strings`` are the toolchain's: the whole string, or a tail of it after junk
    bytes (printable table bytes run into the string after them): a tail of ``MIN_TAIL`` or
    more after up to ``MAX_TRIM`` bytes, a tail of 3 or more (``Xout of memory``, ``znan``)
    after 1 or 2.  (A short tail after a long head is the program's own text ending in a
    common piece: ``fclose %s:`` ends in the C library's `` %s:``.)"""
    keys, starts, ends = tc.suffix_keys(strings) if keyed is None else keyed
    hit = np.zeros(len(strings), dtype=bool)
    if not keys.size:
        return hit
    whole = toolchain.contains(keys[starts])
    owner = np.repeat(np.arange(len(strings)), ends - starts)
    pos = np.arange(keys.size, dtype=np.int64)
    off = pos - starts[owner]
    rem = ends[owner] - pos
    cand = (off >= 1) & (off <= MAX_TRIM) & ((rem >= MIN_TAIL) | ((rem >= tc.MIN_TOOLCHAIN) & (off <= 2)))
    idx = np.flatnonzero(cand & ~whole[owner])
    if idx.size:
        hit[owner[idx[toolchain.contains(keys[idx])]]] = True
    return hit | whole


def program_strings(strings: list[bytes], toolchain: tc.ToolchainData | None, keyed=None) -> list[bytes]:
    """``strings`` without the toolchain's (see :func:`_known`), compared as they are and then
    with CPU names and target triplets normalised (the shipped data holds both spellings), so
    that ``/usr/lib/sh4-linux-gnu/`` goes even where no sh4 toolchain was derived from.
    ``keyed``: :func:`toolchain.suffix_keys` of ``strings``, when already computed."""
    if toolchain is None or not strings:
        return list(strings)
    known = _known(strings, toolchain, keyed)
    start = toolchain_start(strings, known)
    left = [s for s, k in zip(strings[:start], known[:start].tolist()) if not k]
    if not left:
        return left
    norm = normalise_all([s.decode("ascii", "replace") for s in left])
    changed = [i for i, (a, b) in enumerate(zip(left, norm)) if len(a) != len(b) or a.decode("ascii", "replace") != b]
    drop = {i for i, s in enumerate(left) if _INTERNAL_RE.search(s)}
    if changed:
        gone = _known([norm[i].encode("ascii", "replace") for i in changed], toolchain)
        drop.update(i for i, g in zip(changed, gone.tolist()) if g)
    return [s for i, s in enumerate(left) if i not in drop]


def toolchain_start(strings: list[bytes], known: np.ndarray) -> int:
    """Where the C library's part of a static binary's strings begins, in file order
    (``len(strings)`` when it cannot be told).

    The linker lays out read-only data in link order: the program's objects, then the static
    archives (``libc.a``, ``libgcc.a``), and merges string literals in that order too.  So a
    static binary's own strings come first and its C library's follow; strings of the C
    library that no derived toolchain has (another CPU's or another build's) sit among known
    ones after that point and can go with them.  The start is the first known text string
    that begins a run of ``RUN_LENGTH`` text strings of which at least ``RUN_KNOWN`` are
    known, after the first unknown one, moved on to where ``RUN_START`` known ones follow in
    a row.  A binary whose program strings come after that point (busybox links with its
    sections sorted by alignment, which puts the C library's tables first) shows it by
    having many unknown strings after it: then nothing is cut (at most
    ``MAX_LEFTOVERS``, or as many as before the start, are taken as the C library's)."""
    # The point is near the start of a static binary's ~1,000 strings: they are tested a
    # growing prefix at a time.
    idx: list[int] = []  # the strings that say something (_is_sentence), in file order
    done, step = 0, 4 * RUN_LENGTH
    while True:
        hi = min(len(strings), done + step)
        idx += [i for i in range(done, hi) if _is_sentence(strings[i])]
        done, step = hi, 2 * step
        complete = done == len(strings)
        found = _run_start(known[idx], complete)
        if found is not None or complete:
            break
    if found is None or found < 0:
        return len(strings)
    before = int((~known[idx[:found]]).sum())
    after = int((~known[idx[found:]]).sum())
    after += sum(1 for i in np.flatnonzero(~known[done:]).tolist() if _is_sentence(strings[done + i]))
    return idx[found] if after <= max(before, MAX_LEFTOVERS) else len(strings)


def _is_sentence(s: bytes) -> bool:
    """Text that says something: a bare word or identifier (``alnum``, ``January``) is weak
    evidence either way (sbase's ``tr`` lists the character class names, which glibc has)."""
    return is_text(s) and not _WORDLIKE_RE.fullmatch(s.decode("ascii", "replace"))


def _run_start(flags: np.ndarray, complete: bool) -> int | None:
    """Where in ``flags`` (known or not, of the strings that say something, in file order) the
    C library's run starts; -1 for nowhere; None when the first ``len(flags)`` strings do not
    decide it yet (``complete``: they are all there are)."""
    n = flags.size
    unknown = np.flatnonzero(~flags)
    if complete and (n < RUN_KNOWN or not unknown.size):
        return -1
    if not unknown.size:
        return None
    runs = np.concatenate(([0], np.cumsum(flags)))
    j = np.arange(n)
    decided = n if complete else n - RUN_LENGTH + 1  # a window is known once all of it is read
    # the program's strings come first, and some of them may be the C library's too (sbase's cal
    # begins with the twelve month names): the run is looked for after its first unknown one
    dense = flags & (runs[np.minimum(j + RUN_LENGTH, n)] - runs[j] >= RUN_KNOWN) & (j > unknown[0]) & (j < decided)
    starts = np.flatnonzero(dense)
    if not starts.size:
        return -1 if complete else None
    cut = int(starts[0])
    # the run may begin with the program's last strings that the C library also has (sbase's
    # "usage" before its own "ferror %s:"): start where RUN_START known ones follow in a row
    solid = np.flatnonzero(
        np.convolve(flags[cut:].astype(np.int64), np.ones(RUN_START, dtype=np.int64), "valid") == RUN_START
    )
    if solid.size:
        return cut + int(solid[0])
    return cut if complete else None


# The shapes of C library internals that differ from CPU to CPU, so that a toolchain that was
# not derived from still loses them: glibc source paths (``../sysdeps/powerpc/…``), bare
# source file names (``dl-support.c``, left by assertions), relocation type names
# (``R_PPC_REL24``), dynamic loader names (``ld-linux-x86-64.so.2``), reserved identifiers
# (``_dl_aux_init``, ``__global_pointer$``), symbol version names (``LINUX_4.15``,
# ``GLIBC_2.17``) and assertion expressions (``l->l_relocated || l->l_type == lt_executable``:
# by ``->``, ``==`` or ``!=``; not by ``&&`` or ``||``, which a program's shell commands have).
_INTERNAL_RE = re.compile(
    rb"sysdeps/|^[\w.+-]+\.[ch]$|\bR_[A-Z0-9]+_[A-Z0-9_]+|\bld(?:-linux[\w.-]*|64)?\.so\b"
    rb"|^_[\w$]+$|^[\w$]+\$$|^[A-Z]+_[0-9][0-9.]*$|\w->\w|\s(?:==|!=)\s"
)


_TEXT_RE = re.compile(rb"[a-z]{3}")
_WORDLIKE_RE = re.compile(r"[a-z0-9_]{1,12}|[A-Za-z_][A-Za-z0-9_]*")
_ALNUM = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 "


def is_text(s: bytes) -> bool:
    """Text rather than table bytes that happen to be printable (``v,;Zk``, ``S]CQ``): three
    lower-case letters in a row, and at least half letters, digits or spaces (counted as what
    is left when they are deleted: no list of matches)."""
    return _TEXT_RE.search(s) is not None and len(s) >= 2 * len(s.translate(None, _ALNUM))


def normalise_all(text: list[str]) -> list[str]:
    """:func:`normalise_string` of each string, in one regular-expression pass over them all."""
    if not text:
        return []
    return normalise_string("\x00".join(text)).split("\x00")


def string_tokens(strings: list[bytes]) -> list[str]:
    """Normalised whole strings, or (fewer than ``SMALL_STRINGS`` text strings) their words."""
    # a bare word or identifier says little and is often a CPU feature name (cmov, zarch, vis2,
    # arm64's falkor, thunderx2t99): it goes before the count that chooses words or strings,
    # so that a CPU whose C library has more of them does not switch unit
    text = [s.decode("ascii", "replace") for s in strings if _is_sentence(s)]
    if len(text) < SMALL_STRINGS:
        return words(text)
    return sorted(set(normalise_all(text)))


def symbol_string_tokens(strings) -> list[str]:
    """A dynamic file's strings as extra tokens of its imports/exports rule: text only, a
    consistent sample of at most ``MAX_SYMBOL_STRINGS`` (first in hash order), normalised,
    marked so that a string never meets a symbol name.  ``strings``: distinct, in any order
    (those of :func:`raw_strings`, or the set they are drawn from when it is not capped)."""
    if len(strings) > MAX_SYMBOL_STRINGS:  # sample by CRC-32 first: the text test is the costly part
        strings = crc_first(strings, 4 * MAX_SYMBOL_STRINGS)
    else:
        strings = sorted(strings)
    text = list(itertools.islice((s for s in strings if is_text(s)), MAX_SYMBOL_STRINGS))
    if not text:
        return []
    # normalise_all of the decoded strings, decoded in one piece (NUL is ASCII: same result)
    return ["\x00" + t for t in normalise_string(b"\x00".join(text).decode("ascii", "replace")).split("\x00")]


def crc_first(strings, k: int) -> list[bytes]:
    """The first ``k`` of the distinct ``strings`` in CRC-32 order, equal CRCs in byte order:
    ``sorted(sorted(strings), key=zlib.crc32)[:k]``.  The ``k + 1`` smallest CRCs are picked
    and ranked with NumPy; only when two of them share a CRC, which byte order would settle,
    are the strings sorted as written."""
    strings = list(strings)
    crcs = np.fromiter(map(zlib.crc32, strings), dtype=np.uint32, count=len(strings))
    first = np.argpartition(crcs, k)[: k + 1] if len(strings) > k + 1 else np.arange(len(strings))
    order = first[np.argsort(crcs[first])]  # the k + 1 smallest CRCs, ranked
    ranked = crcs[order]
    if (ranked[1:] == ranked[:-1]).any():
        return sorted(sorted(strings), key=zlib.crc32)[:k]
    return [strings[i] for i in order[:k].tolist()]


# ----------------------------------------------------------------------------- digest


# Import names and common strings recur from file to file: the order key and the start of the
# SHAKE-128 stream of recent tokens are kept, TOKEN_CACHE tokens of each, a stream at most
# CACHED_EXPAND bytes (about 12 MB at most, a few MB in practice; a larger expansion, of a set
# under BUDGET // CACHED_EXPAND tokens, is computed each time).  A stream is computed to a whole
# number of SHAKE-128 blocks (the bytes past what is needed cost nothing) and recomputed longer
# when a later set needs more: a shorter expansion is a prefix of a longer one.
RATE = 168  # bytes of SHAKE-128 output per Keccak permutation
TOKEN_CACHE = 1 << 14
CACHED_EXPAND = 4 * RATE
_streams: dict[str, bytes] = {}


@functools.lru_cache(maxsize=TOKEN_CACHE)
def _order_key(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "ignore")).digest()


def _expansions(tokens: list[str], expand: int) -> list[bytes]:
    """The first ``expand`` bytes of each token's SHAKE-128 stream."""
    if expand > CACHED_EXPAND:
        return [hashlib.shake_128(t.encode("utf-8", "ignore")).digest(expand) for t in tokens]
    cache = _streams
    if len(cache) > TOKEN_CACHE:
        cache.clear()
    need = -(-expand // RATE) * RATE
    out = []
    for t in tokens:
        stream = cache.get(t)
        if stream is None or len(stream) < expand:
            stream = cache[t] = hashlib.shake_128(t.encode("utf-8", "ignore")).digest(need)
        out.append(stream[:expand])
    return out


def clear_caches() -> None:
    """Forget the per-token and per-name caches (benchmarks measure a cold process)."""
    _order_key.cache_clear()
    _streams.clear()
    shipped().kept.clear()


def digest_tokens(tokens: list[str], expand: int | None = None) -> str | None:
    """TLSH over the tokens' SHAKE-128 expansions (``expand`` bytes each), in hash order.

    A set of names joined as text gives TLSH so little input that its header (length and
    quartile ratios) dominates, and one name of 20 moves the distance by 50 or more.  A fixed
    pseudo-random expansion per token makes each token an equal, independent share of the
    input.  The first ``MAX_TOKENS`` tokens in hash order are a consistent sample of larger
    sets.  None for an empty set."""
    if not tokens:
        return None
    ordered = sorted(set(tokens), key=_order_key)[:MAX_TOKENS]
    if expand is None:
        expand = max(MIN_EXPAND, BUDGET // len(ordered))
    data = b"".join(_expansions(ordered, expand))
    import tlsh

    d = tlsh.forcehash(data).lower()
    return d if d.startswith("t1") else None


# ----------------------------------------------------------------------------- the value


class Material:
    """What tx2 reads from one ELF image, before any derived data is applied.  Parts are read
    on first use (a dynamic file with enough imports never needs its program strings'
    toolchain test, for instance); :meth:`prepare` reads them all and lets go of the image
    (evaluation keeps thousands of these)."""

    def __init__(self, buf) -> None:
        self.buf = buf
        self.facts = elf_facts(buf)
        table = symbol_table(self.facts)
        self.library = self.facts.is_library or self.facts.e_type == ET_REL
        self.raw_names: list[str] | None = None
        if table is not None:
            syms = read_symbols(buf, self.facts.header, table, exports=self.library)
            self.raw_names = syms.exported + syms.imported if self.library else list(syms.imported)
        self._found: dict[bytes, None] | None = None
        self._strings: list[bytes] | None = None
        self._keyed = None
        self._symbol_strings: list[str] | None = None
        self._calls: list[str] | None = None

    @property
    def found(self) -> dict[bytes, None]:
        """The strings before capping, in file order (see :func:`ordered_strings`)."""
        if self._found is None:
            self._found = ordered_strings(self.buf, self.facts)
        return self._found

    @property
    def strings(self) -> list[bytes]:
        if self._strings is None:
            self._strings = capped(self.found)
        return self._strings

    @property
    def keyed(self):
        if self._keyed is None:
            self._keyed = tc.suffix_keys(self.strings)
        return self._keyed

    @property
    def symbol_strings(self) -> list[str]:
        if self._symbol_strings is None:
            # the sample needs no sorted list unless the cap applies; it cannot when the bytes
            # scanned are fewer (distinct strings are distinct runs of those bytes)
            found = self.found
            scanned = sum(size for _off, size in _readonly_regions(self.buf, self.facts))
            uncapped = self._strings is None and (
                scanned <= MAX_STRINGS_BYTES or sum(map(len, found)) <= MAX_STRINGS_BYTES
            )
            self._symbol_strings = symbol_string_tokens(found if uncapped else self.strings)
        return self._symbol_strings

    def calls(self) -> list[str]:
        if self._calls is None:
            self._calls = call_targets(self.buf, self.facts)
        return self._calls

    def prepare(self, toolchain: tc.ToolchainData | None = None) -> Material:
        """Read every part and let go of the image.  The code (the costly sweep) is read only
        when the file has no program strings under ``toolchain`` (default: the shipped data),
        the largest toolchain data it will be used with: less data removes fewer strings."""
        self.strings, self.keyed, self.symbol_strings  # noqa: B018 (read them all)
        toolchain = shipped().toolchain if toolchain is None else toolchain
        if not string_tokens(program_strings(self.strings, toolchain, self.keyed)):
            self.calls()
            if not self._calls:
                self._chunks = code_chunks(self.buf, self.facts)
        else:
            self._calls = []
        self.buf = self._found = None
        return self

    def chunks(self) -> list[str]:
        if self.buf is None:
            return getattr(self, "_chunks", [])
        return code_chunks(self.buf, self.facts)


def decide(m: Material, data: RuleData) -> tuple[str, list[str]]:
    """``(rule, tokens)`` of one file under ``data``.  ``imports`` (executables) or ``exports``
    (libraries: their exports and imports) when the dynamic interface has at least
    ``MIN_SYMBOLS`` names, with the file's strings added; else ``strings`` (program strings,
    the toolchain's removed); else ``calls``."""
    names: list[str] = []
    if m.raw_names is not None:
        names = normalise_names(m.raw_names, data)
        if len(names) >= MIN_SYMBOLS:
            return ("exports" if m.library else "imports"), names + m.symbol_strings
    tokens = string_tokens(program_strings(m.strings, data.toolchain, m.keyed if m._keyed is not None else None))
    if tokens:
        return "strings", tokens
    # No program strings: the code.  Direct-call destinations (same-CPU similarity only), the
    # few symbol names there are, and without either (``true``: a handful of instructions) the
    # entry point's code itself, so that every file with code gets a value.
    calls = m.calls() + ["\x00" + n for n in names]
    return "calls", calls or m.chunks()


def features(buf, data: RuleData | None = None) -> tuple[str, list[str], str | None]:
    """``(rule, tokens, digest)`` for an ELF image (see :func:`decide`)."""
    rule, tokens = decide(Material(buf), shipped() if data is None else data)
    return rule, tokens, digest_tokens(tokens)


def value_from(m: Material, data: RuleData | None = None) -> str | None:
    rule, tokens = decide(m, shipped() if data is None else data)
    d = digest_tokens(tokens)
    return f"{VERSION}:{rule}:{d}" if d else None


CHUNK = 8  # bytes of code per token when a file has nothing else
MAX_CHUNKS = 4096


def code_chunks(buf, facts: ElfFacts) -> list[str]:
    """The code holding the entry point, as hex tokens of ``CHUNK`` bytes with their offset
    (at most ``MAX_CHUNKS``): identical code gives identical values."""
    from .tx1 import _code_region

    region = _code_region(facts)
    if region is None:
        return []
    off, size, _addr = region
    code = bytes(buf[off : off + min(size, CHUNK * MAX_CHUNKS)]) if 0 <= off < len(buf) else b""
    return [f"{i:x}:{code[i : i + CHUNK].hex()}" for i in range(0, len(code), CHUNK)]


def value_of(buf, data: RuleData | None = None) -> str | None:
    """``tx2:<rule>:t1…`` for an ELF image (bytes or mmap), or None."""
    import capstone

    try:
        rule, _tokens, d = features(buf, data)
    except (NotELF, ValueError, struct.error, IndexError, OverflowError, MemoryError, capstone.CsError):
        return None
    return f"{VERSION}:{rule}:{d}" if d else None


def raw_import_names(buf) -> list[str]:
    """The names the helper derivation starts from (before folding)."""
    return Material(buf).raw_names or []
