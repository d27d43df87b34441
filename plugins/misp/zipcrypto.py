"""PKWARE traditional encryption ("ZipCrypto") decrypted at compiled speed.

MISP stores every malware-sample as a ZIP encrypted with ZipCrypto (``zip -j -P infected``).
Python's ``zipfile`` (and pyzipper) decrypt it one byte at a time in Python, about 1.4 MB of
sample per CPU-second: a 16 MiB sample took longer than MISP's whole 10 s module timeout.  The
cipher is a serial chain (each byte's key stream depends on the previous plain byte), so NumPy
cannot vectorise it; a numba kernel running the same loop compiled (and without the GIL) does
about 80-100 MB/s, which is what the chain of two table look-ups and a multiply per byte allows.

numba is a dependency of the core already.  It is imported on the first encrypted sample, not
when misp-modules loads the module: it costs about 100 MiB of memory and most of a second.
Without numba (or with ``TELFHASH_NO_NUMBA`` set) :func:`kernel` returns None and the caller
uses ``zipfile``'s own decrypter instead (slow, but the same bytes).

The algorithm is written from PKWARE's APPNOTE.TXT, section 6.1.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger("telfhash.misp")

HEADER_SIZE = 12  # bytes of the encryption header before each encrypted entry's data


def _crc_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table[i] = c
    return table


CRC_TABLE = _crc_table()


def initial_keys(password: bytes) -> np.ndarray:
    """The three 32-bit keys after the password has been fed in (APPNOTE 6.1.5)."""
    k0, k1, k2 = 0x12345678, 0x23456789, 0x34567890
    for c in password:
        k0 = int(CRC_TABLE[(k0 ^ c) & 0xFF]) ^ (k0 >> 8)
        k1 = ((k1 + (k0 & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
        k2 = int(CRC_TABLE[(k2 ^ (k1 >> 24)) & 0xFF]) ^ (k2 >> 8)
    return np.array([k0, k1, k2], dtype=np.int64)


_lock = threading.Lock()
_kernel: Callable[..., Any] | None = None
_tried = False


def _compile() -> Callable[..., Any] | None:
    if os.environ.get("TELFHASH_NO_NUMBA"):
        return None
    try:
        import numba
    except Exception as exc:  # noqa: BLE001 - numba missing or broken: the slow path still works
        log.warning("numba is not usable (%s): ZipCrypto samples are decrypted in Python (slow)", exc)
        return None

    def decrypt(buf, keys, crc):  # pragma: no cover - compiled; checked against zipfile in tests
        k0 = keys[0]
        k1 = keys[1]
        k2 = keys[2]
        for i in range(buf.size):
            t = (k2 | 2) & 0xFFFF
            c = (np.int64(buf[i]) ^ ((t * (t ^ 1)) >> 8)) & 0xFF
            buf[i] = c
            k0 = np.int64(crc[(k0 ^ c) & 0xFF]) ^ (k0 >> 8)
            k1 = ((k1 + (k0 & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
            k2 = np.int64(crc[(k2 ^ (k1 >> 24)) & 0xFF]) ^ (k2 >> 8)
        keys[0] = k0
        keys[1] = k1
        keys[2] = k2

    try:
        try:
            fn = numba.njit(nogil=True, cache=True, boundscheck=False)(decrypt)
        except RuntimeError:  # no writable cache location: compile in memory
            fn = numba.njit(nogil=True, boundscheck=False)(decrypt)
        probe = np.zeros(HEADER_SIZE, dtype=np.uint8)
        fn(probe, initial_keys(b"x"), CRC_TABLE)  # compile (or load the cached code) now
        return fn
    except Exception as exc:  # noqa: BLE001 - any numba failure falls back to the slow path
        log.warning("cannot compile the ZipCrypto kernel (%s): decrypting in Python (slow)", exc)
        return None


def kernel() -> Callable[..., Any] | None:
    """``decrypt(buf: uint8 array, keys: int64[3], CRC_TABLE)``, in place, keys updated; or None."""
    global _kernel, _tried
    if not _tried:
        with _lock:
            if not _tried:
                _kernel = _compile()
                _tried = True
    return _kernel


class Decrypter:
    """Decrypts one entry's bytes in order, in chunks of any size."""

    def __init__(self, password: bytes, decrypt: Callable[..., Any]):
        self.keys = initial_keys(password)
        self._decrypt = decrypt

    def __call__(self, chunk: bytes | memoryview) -> np.ndarray:
        buf = np.frombuffer(chunk, dtype=np.uint8).copy()
        self._decrypt(buf, self.keys, CRC_TABLE)
        return buf
