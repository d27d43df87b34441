"""Whole-file MD5 and SHA-1 as opt-in fields (``--field md5``, ``--field sha1``).

Threat-intel tools name samples by these (MISP's malware-sample value is ``filename|md5``), so
the index keeps them to find a sample again; SHA-256 stays a first-class option of its own.
"""

from __future__ import annotations

import hashlib

from ..hookspecs import hookimpl

FILE_HASH_FIELDS = ("md5", "sha1")


def _md5(buf, _result) -> str:
    return hashlib.md5(buf, usedforsecurity=False).hexdigest()


def _sha1(buf, _result) -> str:
    return hashlib.sha1(buf, usedforsecurity=False).hexdigest()


@hookimpl
def telfhash_fields():
    return {"md5": _md5, "sha1": _sha1}
