"""telfhash-x: an architecture-normalised companion to telfhash (opt-in field ``telfhash_x``).

telfhash itself stays byte-identical to the reference; this is a second value computed
alongside it, meant to give one program built for many CPUs one hash.  The field holds the
current rule set, ``tx2`` (:mod:`.tx2`): ``"tx2:" + rule + ":t1" + 70 hex``.  Values of the
first rule set, ``"tx1:t1" + 70 hex`` (this module), are still read and compared -- with tx1
values only: :func:`distance` refuses (None) to compare values of different rule sets.  The
part after the last ``:`` is a TLSH digest that :func:`telfhash_core.distance` accepts.

Data flows one way: buffer -> ELF facts (type, dynamic tags, symbol tables) -> normalised
token set -> TLSH.  The rules, and the corpus measurements that justify each, are in
``docs/companion.md``; the derived helper list is in ``companion_data.json``.
"""

from __future__ import annotations

from ..hookspecs import hookimpl
from . import tx1 as _tx1
from .tx1 import *  # noqa: F403  (the tx1 rule set and the ELF facts, under their old names)
from .tx1 import FIELD, TX1, VERSION, VERSIONS, tx1_of


def __getattr__(name: str):
    """Names of the tx1 module not exported by ``*`` (kept importable from here)."""
    return getattr(_tx1, name)


def telfhash_x_of(buf, data=None, version: str = VERSION) -> str | None:
    """The companion value of an ELF image (bytes or mmap), or None: ``tx2:<rule>:t1…`` by
    default, ``tx1:t1…`` with ``version="tx1"``.  ``data``: derived data of that rule set
    (evaluation), else the shipped data."""
    if version == TX1:
        return tx1_of(buf, data)
    if version != VERSION:
        raise ValueError(f"unknown companion version {version!r}; use one of {', '.join(VERSIONS)}")
    from . import tx2

    return tx2.value_of(buf, data)


def compute(buf, result) -> str | None:
    """The ``telfhash_x`` field (tx2): computed from the file's bytes; None for non-ELF input."""
    return telfhash_x_of(buf)


def split(value: str) -> tuple[str, str]:
    """``(tag, "t1…")`` from a companion value: ``("tx1", …)`` or ``("tx2:strings", …)`` (the
    TLSH part follows the last ``:``)."""
    tag, _, digest = value.rpartition(":")
    return tag, digest


def parse(value) -> tuple[str, str | None, str] | None:
    """``(version, rule, digest)`` of a companion value, or None when it is not one:
    ``"tx2:imports:t1…"`` -> ``("tx2", "imports", "t1…")``, ``"tx1:t1…"`` -> ``("tx1", None, "t1…")``."""
    if not isinstance(value, str):
        return None
    parts = value.strip().split(":")
    from ..digest import is_digest

    if len(parts) == 2 and parts[0] == TX1 and is_digest(parts[1]):
        return TX1, None, parts[1]
    if len(parts) == 3 and parts[0] == VERSION and is_digest(parts[2]):
        from .tx2 import RULES

        if parts[1] in RULES:
            return VERSION, parts[1], parts[2]
    return None


def version_of(value) -> str | None:
    """``"tx1"``/``"tx2"`` for a companion value, None for anything else."""
    p = parse(value)
    return p[0] if p else None


def distance(a, b) -> int | None:
    """TLSH distance between two companion values of the same rule set; None when either is
    not a companion value or their rule sets differ (a tx1 value is never compared with a tx2
    value: the numbers would mean nothing)."""
    pa, pb = parse(a), parse(b)
    if pa is None or pb is None or pa[0] != pb[0]:
        return None
    from ..digest import distance as _distance

    return _distance(pa[2], pb[2])


@hookimpl
def telfhash_fields():
    return {FIELD: compute}
