"""YARA rule text for a cluster of ELF samples, as YARA (``yara-python`` 4.5) and YARA-X (1.x)
compile it.

Why these conditions: both engines' ``elf`` module has ``telfhash()``, computed from the symbol
table like the reference tool and spelled ``T1`` + 70 upper-case hex.  It is the condition that
also finds relatives the cluster has not seen (same symbols).  It cannot match every member:

* neither engine implements the reference's fallback for files without a symbol table (call
  destinations found by disassembly): there ``telfhash()`` has no value;
* YARA-X's TLSH (the ``tlsh-fixed`` crate) gives another digest than py-tlsh for some symbol
  strings (56 of the shared corpus's 1,407 symbol-path files), with the very same names.

So each member is also named by the SHA-256 of its bytes (``hash.sha256(0, filesize)``): exact,
no false positives, and correct in any engine.  Rules are text; nothing here needs an engine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from telfhash_core.digest import is_digest, normalize

_NAME_RE = re.compile(r"[^A-Za-z0-9_]")


@dataclass(frozen=True)
class RuleMember:
    sha256: str
    telfhash: str | None  # any spelling; None when the member has none
    method: str | None = None  # "dynsym"/"symtab" (symbol table) or "fallback"


def rule_name(cluster_id: str) -> str:
    """A YARA identifier for a cluster id (``grouping--<uuid>`` -> ``telfhash_cluster_<hex>``)."""
    tail = cluster_id.split("--", 1)[-1].replace("-", "")
    name = "telfhash_cluster_" + _NAME_RE.sub("_", tail)
    return name[:128]


def _text(value: object) -> str:
    """A YARA string literal's contents: printable ASCII, escaped."""
    s = str(value).encode("ascii", "replace").decode("ascii")
    s = "".join(c if 32 <= ord(c) < 127 else "?" for c in s)
    return s.replace("\\", "\\\\").replace('"', '\\"')[:1000]


def cluster_rule(
    name: str,
    members: Iterable[RuleMember],
    *,
    threshold: int | None = None,
    description: str | None = None,
    reference: str | None = None,
    by_sha256: bool = True,
) -> str:
    """One rule (without imports) matching the members: by telfhash, and by SHA-256 (leave the
    latter out with ``by_sha256=False``, e.g. to measure what the telfhash alone matches)."""
    ms = sorted(
        {m.sha256.lower(): m for m in members if isinstance(m.sha256, str) and len(m.sha256) == 64}.values(),
        key=lambda m: m.sha256,
    )
    if not ms:
        raise ValueError("a rule needs at least one member with a SHA-256")
    telfs = sorted({normalize(m.telfhash, "T1") for m in ms if isinstance(m.telfhash, str) and is_digest(m.telfhash)})
    meta = [f'description = "{_text(description or f"ELF samples of one telfhash cluster ({len(ms)} members)")}"']
    if reference:
        meta.append(f'reference = "{_text(reference)}"')
    if threshold is not None:
        meta.append(f"threshold = {int(threshold)}")
    meta.append(f"members = {len(ms)}")
    meta.append('generator = "telfhash-core"')
    conds = [f'elf.telfhash() == "{t}"' for t in telfs]
    if by_sha256:
        conds += [f'hash.sha256(0, filesize) == "{m.sha256.lower()}"' for m in ms]
    if not conds:
        conds = ["false"]
    body = " or\n        ".join(conds)
    return f"rule {name}\n{{\n    meta:\n        " + "\n        ".join(meta) + f"\n    condition:\n        {body}\n}}\n"


def ruleset(rules: Iterable[str]) -> str:
    """Rules with the imports they use, as one source (a ``.yar`` file)."""
    return 'import "elf"\nimport "hash"\n\n' + "\n".join(rules)
