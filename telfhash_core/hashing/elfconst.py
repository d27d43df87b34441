"""ELF facts in one place: the numbers of the ELF specification this package reads, the symbol
table layouts, and how a real file fails at crafted offsets and sizes.

:mod:`~telfhash_core.hashing.elf`, :mod:`~telfhash_core.hashing.fallback` and
:mod:`telfhash_core.companion` import them from here (and not from each other).
"""

from __future__ import annotations

import functools
import os
from typing import Any

# Section types (numeric) ---------------------------------------------------------------
SHT_NULL, SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_HASH, SHT_DYNAMIC = 0, 1, 2, 3, 4, 5, 6
SHT_NOBITS, SHT_REL, SHT_DYNSYM, SHT_SYMTAB_SHNDX, SHT_RELR = 8, 9, 11, 18, 19
SHT_GNU_HASH, SHT_SUNW_LDYNSYM, SHT_SUNW_SYMINFO = 0x6FFFFFF6, 0x6FFFFFF3, 0x6FFFFFFC
SHT_GNU_VERDEF, SHT_GNU_VERNEED, SHT_GNU_VERSYM = 0x6FFFFFFD, 0x6FFFFFFE, 0x6FFFFFFF
SHT_LOPROC_3 = 0x70000003  # SHT_ARM_ATTRIBUTES / SHT_RISCV_ATTRIBUTES
SHF_COMPRESSED = 0x800
EM_ARM, EM_RISCV = 40, 243

STT_FUNC, STB_GLOBAL = 2, 1

# Object file types, segment types, dynamic tags and symbol attributes (the companion value).
ET_EXEC, ET_DYN = 2, 3
PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
PF_X = 1
DT_NULL, DT_SONAME, DT_FLAGS_1 = 0, 14, 0x6FFFFFFB
DF_1_PIE = 0x08000000
SHN_UNDEF = 0
STT_GNU_IFUNC = 10
STB_WEAK = 2
STV_DEFAULT, STV_PROTECTED = 0, 3


# How a real file fails when pyelftools seeks or reads at crafted offsets and sizes: the
# reference reads a file object, so these failures decide its answer ("Unknown error") on
# crafted files.  Seeking past the largest file offset the filesystem allows fails with
# EINVAL (ext4 with 4 KiB blocks, the usual Linux filesystem: 16 TiB - 4 KiB), an offset of
# 2**63 or more cannot be passed at all, and a read of more bytes than the machine's memory
# fails before reading (Python allocates the buffer first).
MAX_FILE_OFFSET = 0xFFFFFFFF000
_OFFSET_LIMIT = 1 << 63
try:
    MEMORY_LIMIT = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
except (ValueError, OSError, AttributeError):  # pragma: no cover - not Linux
    MEMORY_LIMIT = 1 << 36


def check_seek(pos: int) -> None:
    """Raise what seeking a real file to ``pos`` raises."""
    if pos >= _OFFSET_LIMIT:
        raise ValueError("cannot fit 'int' into an offset-sized integer")
    if pos > MAX_FILE_OFFSET:
        raise OSError(22, "Invalid argument")


def check_read(n: int) -> None:
    """Raise what reading ``n`` bytes from a real file raises before reading."""
    if n >= _OFFSET_LIMIT:
        raise OverflowError("cannot fit 'int' into an index-sized integer")
    if n > MEMORY_LIMIT:
        raise MemoryError(f"read of {n} bytes")


@functools.lru_cache(maxsize=None)
def _sym_dtype() -> dict:
    import numpy as np

    return {
        (32, "<"): np.dtype(
            [("name", "<u4"), ("value", "<u4"), ("size", "<u4"), ("info", "u1"), ("other", "u1"), ("shndx", "<u2")]
        ),
        (32, ">"): np.dtype(
            [("name", ">u4"), ("value", ">u4"), ("size", ">u4"), ("info", "u1"), ("other", "u1"), ("shndx", ">u2")]
        ),
        (64, "<"): np.dtype(
            [("name", "<u4"), ("info", "u1"), ("other", "u1"), ("shndx", "<u2"), ("value", "<u8"), ("size", "<u8")]
        ),
        (64, ">"): np.dtype(
            [("name", ">u4"), ("info", "u1"), ("other", "u1"), ("shndx", ">u2"), ("value", ">u8"), ("size", ">u8")]
        ),
    }


def __getattr__(name: str) -> Any:
    # SYM_DTYPE: symbol table entries by (ELF class, byte order), for decoding a whole table at
    # once.  Built on first use (PEP 562): it needs NumPy, which hashing one small file does not load.
    if name == "SYM_DTYPE":
        return _sym_dtype()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
