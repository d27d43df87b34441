"""What the Python that runs CAPE offers telfhash-core: versions of the libraries whose behaviour
decides the digests, and whether they are ones the digests were checked with.

CAPE pins its own versions (``poetry.lock``): pyelftools 0.31 and ``python-tlsh`` 4.5.0, while
telfhash-core installs ``py-tlsh``.  Both TLSH distributions install the same extension file,
``tlsh.*.so``: installing one overwrites the other's file, and uninstalling either deletes it for
both.  A routine ``poetry install`` in CAPE after ours can therefore change pyelftools or remove
``tlsh`` without a word; :func:`check` says so, and the module refuses to produce digests it
cannot vouch for (:func:`refusal`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import importlib.util
from base64 import urlsafe_b64encode
from pathlib import Path
from typing import Any

# pyelftools versions under which the shared corpora (3,070 files) gave the reference values
KNOWN_GOOD_PYELFTOOLS = ("0.31", "0.32", "0.33")
# TLSH distributions (same C code, same "tlsh" module) and capstone series checked
TLSH_DISTRIBUTIONS = ("py-tlsh", "python-tlsh")
KNOWN_GOOD_CAPSTONE = ("5.0.",)

TLSH_FIX = (
    "the tlsh module is missing or broken. py-tlsh (telfhash-core) and python-tlsh (CAPE) install the "
    "same file, and uninstalling either one deletes it for both. Fix: in CAPE's environment run "
    "'pip install --force-reinstall --no-deps python-tlsh==4.5.0' (or py-tlsh), then restart cape-processor"
)


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _tlsh_owner() -> str | None:
    """Which installed TLSH distribution wrote the ``tlsh`` extension file now on disk (its
    RECORD hash matches the file), if any can be told."""
    spec = importlib.util.find_spec("tlsh")
    if spec is None or not spec.origin:
        return None
    try:
        data = Path(spec.origin).read_bytes()
    except OSError:
        return None
    digest = "sha256=" + urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    for dist in TLSH_DISTRIBUTIONS:
        try:
            files = md.files(dist) or []
        except md.PackageNotFoundError:
            continue
        for f in files:
            if f.name.startswith("tlsh.") and f.hash is not None and f"{f.hash.mode}={f.hash.value}" == digest:
                return dist
    return None


def tlsh_problem() -> str | None:
    """None when ``tlsh`` imports and computes a TLSH; else the message naming the fix."""
    try:
        import tlsh

        h = tlsh.forcehash(bytes(range(256)) * 4)
        if not isinstance(h, str) or len(h) != 72:
            return f"{TLSH_FIX} (tlsh.forcehash gave {h!r})"
    except Exception as exc:
        return f"{TLSH_FIX} ({type(exc).__name__}: {exc})"
    return None


def check() -> dict[str, Any]:
    """Versions seen and verdicts; ``ok`` is False when a digest could be wrong or missing."""
    out: dict[str, Any] = {"problems": []}
    pe = _version("pyelftools")
    out["pyelftools"] = {"version": pe, "known_good": pe in KNOWN_GOOD_PYELFTOOLS}
    if pe is None:
        out["problems"].append("pyelftools is not installed")
    elif pe not in KNOWN_GOOD_PYELFTOOLS:
        out["problems"].append(
            f"pyelftools {pe} is not one the digests were checked with ({', '.join(KNOWN_GOOD_PYELFTOOLS)}); "
            "install one of those (CAPE pins 0.31)"
        )
    cs = _version("capstone")
    out["capstone"] = {"version": cs, "known_good": bool(cs and cs.startswith(KNOWN_GOOD_CAPSTONE))}
    if not out["capstone"]["known_good"]:
        out["problems"].append(f"capstone {cs} is not 5.0.x: fallback digests (no symbol table) can differ")
    dists = {d: _version(d) for d in TLSH_DISTRIBUTIONS}
    problem = tlsh_problem()
    out["tlsh"] = {
        "distributions": {d: v for d, v in dists.items() if v},
        "owner": _tlsh_owner(),
        "importable": problem is None,
    }
    if problem:
        out["problems"].append(problem)
    out["ok"] = not out["problems"]
    return out


def refusal() -> str | None:
    """Why no digest should be produced in this environment (None: go ahead)."""
    pe = _version("pyelftools")
    if pe is not None and pe not in KNOWN_GOOD_PYELFTOOLS:
        return (
            f"pyelftools {pe} is not a version the digests were checked with ({', '.join(KNOWN_GOOD_PYELFTOOLS)}): "
            "no telfhash produced; install pyelftools 0.31 (CAPE's pin) or 0.33"
        )
    return tlsh_problem()
