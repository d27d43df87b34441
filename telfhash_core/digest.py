"""From symbol names to a telfhash: the reference's filter rules, TLSH, and digest spellings.

Three spellings of the same digest are in use:

* ``t1`` + 70 hex, lower case -- what the reference tool prints (our ``telfhash`` field);
* ``T1`` + 70 hex, upper case -- VirusTotal, YARA-X, py-tlsh;
* the bare 70 hex characters  -- what MISP accepts.

:func:`normalize` turns any of them into one chosen form and :func:`distance` accepts all three.
"""

from __future__ import annotations

import re
from typing import Iterable

import tlsh

# Names dropped outright (compared with the original case).
EXCLUDED_NAMES = frozenset(
    {
        "__libc_start_main",
        "main",
        "abort",
        "cachectl",
        "cacheflush",
        "puts",
        "atol",
        "malloc_trim",
    }
)

# Patterns dropped with ``re.search`` on the original case.  Kept as regular expressions
# because ``.`` and ``$`` treat a newline specially, and crafted names may contain one.
EXCLUDED_PATTERNS = (r"^[_\.].*$", r"^.*64$", r"^str.*$", r"^mem.*$")
_EXCLUDED_RE = re.compile("|".join(f"(?:{p})" for p in EXCLUDED_PATTERNS))

TLSH_HEX_LEN = 70  # 35 bytes: 3 header bytes + 32 body bytes
PACKED_LEN = TLSH_HEX_LEN // 2
NULL_DIGEST = "tnull"

# The TLSH distance at or under which two telfhashes are "similar": the reference's default for
# grouping, and the default of every threshold in this package and its adapters.
DEFAULT_THRESHOLD = 50


def is_excluded(name: str) -> bool:
    """True when the reference drops this (non-empty) symbol name."""
    if name in EXCLUDED_NAMES:
        return True
    if "\n" in name:  # rare: only here do the regular expressions differ from plain string tests
        return _EXCLUDED_RE.search(name) is not None
    return name[0] in "_." or name.endswith("64") or name.startswith(("str", "mem"))


def select_symbols(names: Iterable[str]) -> list[str]:
    """Apply the exclusion rules, lower-case and sort (duplicates kept)."""
    out = [n.lower() for n in names if n and not is_excluded(n)]
    out.sort()
    return out


def tlsh_digest(items: list[str]) -> str:
    """Comma-join, encode and TLSH-hash; returns ``t1...`` or ``tnull`` (lower case).

    Non-ASCII characters are dropped before hashing (``errors="ignore"``), as the reference's
    current source does; the 0.9.8 release crashes on them instead.
    """
    data = ",".join(items).encode("ascii", errors="ignore")
    return tlsh.forcehash(data).lower()


# ----------------------------------------------------------------------------- spellings
# This section is the one place that knows how a digest is spelled, tagged and packed.

_HEX = frozenset("0123456789abcdefABCDEF")
FORMS = ("t1", "T1", "hex")


def hex_body(digest: object) -> str | None:
    """The 70 hex characters of a digest in any accepted spelling, upper case; None if invalid."""
    if not isinstance(digest, str):
        return None
    d = digest.strip()
    if len(d) == TLSH_HEX_LEN + 2 and d[:2] in ("t1", "T1"):
        d = d[2:]
    if len(d) != TLSH_HEX_LEN or not _HEX.issuperset(d):
        return None
    return d.upper()


def split_tag(value: str) -> tuple[str, str]:
    """``("tx1", "t1…")`` from a tagged value such as a companion hash (the digest follows the
    last ``:``); ``("", value)`` when there is no tag."""
    tag, _, digest = value.rpartition(":")
    return tag, digest


def tagged_body(value: object, tag: str | None = None) -> str | None:
    """Like :func:`hex_body`, also for a tagged value ``tag:t1…`` (read after the last ``:``).

    With ``tag``, only a value carrying exactly that tag is accepted."""
    if not isinstance(value, str):
        return None
    found, digest = split_tag(value.strip())
    if tag is not None and found != tag:
        return None
    return hex_body(digest)


def spell(body: str, form: str = "t1") -> str:
    """The 70 hex characters ``body`` (upper case) written as ``form`` (see :func:`normalize`)."""
    if form == "t1":
        return "t1" + body.lower()
    if form == "T1":
        return "T1" + body
    if form == "hex":
        return body
    raise ValueError(f"unknown digest form {form!r}; use 't1', 'T1' or 'hex'")


def is_digest(value: str) -> bool:
    """True for a usable telfhash in any spelling (``t1…``, ``T1…`` or 70 hex)."""
    return hex_body(value) is not None


def normalize(digest: str, form: str = "t1") -> str:
    """Return ``digest`` (any spelling) as ``form``: ``"t1"`` (reference), ``"T1"`` (VirusTotal) or
    ``"hex"`` (70 hex, upper case, as MISP stores it).

    Raises ValueError for anything that is not a telfhash (``tnull``, ``-``, wrong length, ...).
    """
    body = hex_body(digest)
    if body is None:
        raise ValueError(f"not a telfhash digest: {digest!r}")
    return spell(body, form)


def pack(digest: str) -> bytes:
    """The 35 bytes of a digest given in any spelling (ValueError if it is not one)."""
    return bytes.fromhex(normalize(digest, "hex"))


def unpack(blob: bytes) -> str:
    """``t1`` + 70 hex (the reference's spelling) from 35 packed bytes."""
    return "t1" + bytes(blob).hex()


def to_tlsh(digest: str) -> "tlsh.Tlsh":
    """A py-tlsh ``Tlsh`` object for a digest in any spelling (for fast repeated ``.diff``)."""
    t = tlsh.Tlsh()
    t.fromTlshStr("T1" + normalize(digest, "hex"))
    return t


def distance(a: str, b: str, length: bool = True) -> int:
    """TLSH distance between two telfhashes, each in any spelling (``t1``, ``T1`` or 70 hex).

    ``length=True`` (default) is py-tlsh's ``diff``: it includes the length term, as the
    reference's grouping does.
    """
    ta, tb = "T1" + normalize(a, "hex"), "T1" + normalize(b, "hex")
    return tlsh.diff(ta, tb) if length else tlsh.diffxlen(ta, tb)
