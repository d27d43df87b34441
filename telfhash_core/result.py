"""The result of hashing one file, and the reasons a file can have no telfhash."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

from .digest import is_digest, normalize


class Reason(str, enum.Enum):
    """Why a file has no telfhash.  The value is a stable machine-readable code."""

    NOT_FOUND = "not_found"  # the path does not exist
    UNREADABLE = "unreadable"  # permission denied, I/O error, ...
    DIRECTORY = "directory"  # a directory given without -r
    NOT_REGULAR = "not_regular"  # FIFO, socket, device: never opened for reading
    EMPTY = "empty"  # zero bytes
    TOO_LARGE = "too_large"  # larger than the configured limit
    NOT_ELF = "not_elf"  # no ELF magic / invalid ELF identification
    CORRUPT = "corrupt"  # truncated or corrupted ELF structures ("Could not parse file as ELF")
    MALFORMED = "malformed"  # structures pyelftools trips over (the reference's "Unknown error")
    NO_SYMBOLS = "no_symbols"  # symbol table present, but no symbol survives the filters
    NO_CALLS = "no_calls"  # no symbol table; the fallback found no call destination
    UNSUPPORTED_ARCH = "unsupported_arch"  # no symbol table and no fallback for this CPU
    TOO_FEW_SYMBOLS = "too_few_symbols"  # TLSH refused the input (too short / too uniform)
    NO_CODE = "no_code"  # fallback found no code section or segment
    INTERNAL = "internal"  # a bug: please report it with the file


# What the reference tool prints in its ``msg`` field for each reason.
_REFERENCE_MSG = {
    Reason.NOT_FOUND: "No such file or directory",
    Reason.NOT_ELF: "Could not parse file as ELF",
    Reason.CORRUPT: "Could not parse file as ELF",
    Reason.EMPTY: "Could not parse file as ELF",
    Reason.NO_SYMBOLS: "No symbols found",
    Reason.NO_CALLS: "No symbols found",
    Reason.UNSUPPORTED_ARCH: "No symbols found",
    Reason.TOO_FEW_SYMBOLS: "",
    Reason.MALFORMED: "Unknown error",
    Reason.NO_CODE: "Unknown error",
    Reason.INTERNAL: "Unknown error",
}


# The reason of a result that carries none (a reference ``{"file", "telfhash", "msg"}`` dict,
# a result written by another tool), from the reference's message.
_FROM_REFERENCE_MSG = {
    "No such file or directory": Reason.NOT_FOUND,
    "Could not parse file as ELF": Reason.NOT_ELF,
    "No symbols found": Reason.NO_SYMBOLS,
    "Unknown error": Reason.MALFORMED,
}


def infer_reason(value: Any, msg: Any = None) -> Reason:
    """Why a result without a digest and without a ``reason`` has none: ``tnull`` is
    :attr:`Reason.TOO_FEW_SYMBOLS`; otherwise the reference's ``msg`` says, and without one
    :attr:`Reason.NO_SYMBOLS` (what ``-`` most often means)."""
    if value in ("tnull", "TNULL"):
        return Reason.TOO_FEW_SYMBOLS
    if isinstance(msg, str) and msg in _FROM_REFERENCE_MSG:
        return _FROM_REFERENCE_MSG[msg]
    return Reason.NO_SYMBOLS


@dataclass
class Result:
    """One file's outcome.

    ``telfhash`` is the digest in the reference's spelling (``t1`` + 70 hex, lower case) or
    ``None``; then ``reason`` (a :class:`Reason`) and ``detail`` (words for a person) say why.
    ``msg`` and :meth:`reference_dict` reproduce what the reference tool reports.
    """

    file: str
    telfhash: str | None = None
    reason: Reason | None = None
    detail: str = ""
    arch: str | None = None  # pyelftools machine name, e.g. "x64", "ARM", "MIPS", "AArch64"
    method: str | None = None  # "dynsym", "symtab" or "fallback"
    symbols: int = 0  # names (or call destinations) that went into the digest
    size: int | None = None
    sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # fields added by plugins

    @property
    def ok(self) -> bool:
        return self.telfhash is not None

    @property
    def reference_telfhash(self) -> str:
        """What the reference prints: the digest, ``tnull`` or ``-``."""
        if self.telfhash is not None:
            return self.telfhash
        return "tnull" if self.reason is Reason.TOO_FEW_SYMBOLS else "-"

    @property
    def msg(self) -> str:
        """The reference's ``msg`` for this outcome (empty when there is a digest)."""
        if self.reason is None:
            return ""
        if self.reason in _REFERENCE_MSG:
            return _REFERENCE_MSG[self.reason]
        return self.detail or self.reason.value

    def reference_dict(self) -> dict[str, str]:
        """``{"file", "telfhash", "msg"}`` exactly as the reference's ``telfhash()`` returns."""
        return {"file": self.file, "telfhash": self.reference_telfhash, "msg": self.msg}

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready: the reference's three keys first, then ours."""
        d: dict[str, Any] = dict(self.reference_dict())
        d.update(
            {
                "ok": self.ok,
                "reason": self.reason.value if self.reason else None,
                "detail": self.detail or None,
                "arch": self.arch,
                "method": self.method,
                "symbols": self.symbols,
                "size": self.size,
            }
        )
        if self.sha256 is not None:
            d["sha256"] = self.sha256
        for k, v in self.extra.items():  # a plugin's field never replaces one of ours
            d.setdefault(k, v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Result":
        """Rebuild a result from :meth:`to_dict` output or from a reference ``{"file", "telfhash",
        "msg"}`` dict (then ``reason`` is inferred from the printed value)."""
        value = d.get("telfhash")
        code = d.get("reason")
        reason = Reason(code) if code is not None else None
        telf = normalize(value, "t1") if isinstance(value, str) and is_digest(value) else None  # t1…, T1… or 70 hex
        if telf is None and reason is None:
            reason = infer_reason(value, d.get("msg"))
        known = {f for f in cls.__dataclass_fields__}
        extra = {
            k: v
            for k, v in d.items()
            if k not in known and k not in ("msg", "ok", "reason", "detail", "telfhash", "file")
        }
        return cls(
            file=d.get("file", ""),
            telfhash=telf,
            reason=reason,
            detail=d.get("detail") or "",
            arch=d.get("arch"),
            method=d.get("method"),
            symbols=d.get("symbols") or 0,
            size=d.get("size"),
            sha256=d.get("sha256"),
            extra=extra,
        )

    def __repr__(self) -> str:  # short, for interactive use
        what = self.telfhash or f"{self.reason.value if self.reason else '?'}: {self.detail}"
        return f"Result({self.file!r}, {what})"


__all__ = ["Reason", "Result", "asdict", "infer_reason"]
