"""The sample bytes out of what MISP sends: base64, and for a malware-sample an encrypted ZIP.

MISP zips every malware-sample with ``zip -j -P infected`` (ZipCrypto): one entry named by the
sample's MD5 and one ``<md5>.filename.txt`` holding its name.  Samples are hostile, and so may
the ZIP be, so:

* the ZIP's directory is read by ``zipfile``; the chosen entry's data is then decrypted by the
  compiled kernel of :mod:`.zipcrypto` and inflated by ``zlib`` in chunks of 1 MiB, straight into
  one growing buffer: the memory used is the sample (never more than the cap plus one chunk),
  whatever the ZIP declares;
* AES entries (WinZip AE-x, which other tools produce) go through pyzipper, entries of other
  kinds through ``zipfile``, with the same chunked, bounded reading;
* every failure is a :class:`SampleError` whose text says what was wrong (not a ZIP, wrong
  password, damaged, over the cap), never a traceback.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any

from . import zipcrypto

ZIP_PASSWORD = b"infected"
FILENAME_SUFFIX = ".filename.txt"
CHUNK = 1 << 20

_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
_LOCAL_SIGNATURE = 0x04034B50
_DATA_DESCRIPTOR = 0x08  # general purpose flag bit 3: sizes and CRC follow the data
_ENCRYPTED = 0x01
_AES = 99  # WinZip AE-x "compression method"
_SPACE = re.compile(r"\s")


class SampleError(Exception):
    """A sample that cannot be read: reported to MISP as ``{"error": str(exc)}``."""


@dataclass
class Sample:
    data: bytes
    filename: str


def decode_base64(data: Any, what: str) -> bytes:
    if not isinstance(data, str) or not data.strip():
        raise SampleError(f"the {what} carries no data (MISP sends the file base64-encoded in 'data')")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        error = exc
    if not error_is_fatal(data):  # line breaks are harmless
        try:
            return base64.b64decode("".join(data.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            error = exc
    raise SampleError(f"the {what}'s data is not valid base64: {error}")


def error_is_fatal(data: str) -> bool:
    """Whether a base64 text that failed strict decoding has no whitespace to blame."""
    return _SPACE.search(data) is None


def _over(limit: int) -> SampleError:
    return SampleError(f"the sample inflates past the limit of {limit} bytes (max_sample_mb)")


class _Sink:
    """A bounded output buffer; ``value()`` hands its bytes over without a copy."""

    def __init__(self, limit: int):
        self.limit = limit
        self.buf = io.BytesIO()
        self.size = 0
        self.crc = 0

    def write(self, piece) -> None:
        n = len(piece)
        if self.size + n > self.limit:
            raise _over(self.limit)
        self.buf.write(piece)
        self.size += n
        self.crc = zlib.crc32(piece, self.crc)

    def value(self) -> bytes:
        return self.buf.getvalue()  # CPython shares the buffer with the returned bytes


def _data_offset(blob: memoryview, info: zipfile.ZipInfo) -> int:
    off = info.header_offset
    if off < 0 or off + _LOCAL_HEADER.size > len(blob):
        raise SampleError("the malware-sample ZIP is damaged: local header out of range")
    fields = _LOCAL_HEADER.unpack_from(blob, off)
    if fields[0] != _LOCAL_SIGNATURE:
        raise SampleError("the malware-sample ZIP is damaged: bad local header signature")
    return off + _LOCAL_HEADER.size + fields[9] + fields[10]


def _read_zipcrypto(blob: memoryview, info: zipfile.ZipInfo, limit: int, decrypt) -> bytes:
    """Decrypt and inflate one ZipCrypto entry (stored or deflated) in chunks, bounded by ``limit``."""
    start = _data_offset(blob, info)
    end = start + info.compress_size
    if end > len(blob) or info.compress_size < zipcrypto.HEADER_SIZE:
        raise SampleError("the malware-sample ZIP is damaged: entry data out of range")
    dec = zipcrypto.Decrypter(ZIP_PASSWORD, decrypt)
    header = dec(blob[start : start + zipcrypto.HEADER_SIZE])
    if info.flag_bits & _DATA_DESCRIPTOR:
        check = (info._raw_time >> 8) & 0xFF  # type: ignore[attr-defined]  # as zipfile checks it
    else:
        check = (info.CRC >> 24) & 0xFF
    if int(header[-1]) != check:
        raise SampleError("cannot decrypt the malware-sample ZIP with the password 'infected' (bad password)")
    sink = _Sink(limit)
    inflater = zlib.decompressobj(-15) if info.compress_type == zipfile.ZIP_DEFLATED else None
    pos = start + zipcrypto.HEADER_SIZE
    try:
        while pos < end:
            plain = dec(blob[pos : min(end, pos + CHUNK)])
            pos += CHUNK
            if inflater is None:
                sink.write(plain.data)
                continue
            piece = inflater.decompress(plain.data, limit - sink.size + 1)
            sink.write(piece)
            if inflater.unconsumed_tail:  # output reached the cap with input left over
                raise _over(limit)
            if inflater.eof:
                break
        if inflater is not None and not inflater.eof:
            sink.write(inflater.flush())
            if not inflater.eof:
                raise SampleError("the malware-sample ZIP is damaged: the compressed data ends early")
    except zlib.error as exc:
        raise SampleError(f"the malware-sample ZIP is damaged (or the password is wrong): {exc}") from None
    if sink.crc != info.CRC:
        raise SampleError("the malware-sample ZIP is damaged (or the password is wrong): CRC mismatch")
    return sink.value()


def _read_generic(zf: Any, info: zipfile.ZipInfo, limit: int) -> bytes:
    """Any other entry (AES, unencrypted, other compression) through (py)zipfile, in bounded chunks."""
    sink = _Sink(limit)
    with zf.open(info, pwd=ZIP_PASSWORD if info.flag_bits & _ENCRYPTED else None) as fh:
        while True:
            piece = fh.read(min(CHUNK, limit - sink.size + 1))
            if not piece:
                break
            sink.write(piece)
    return sink.value()


def _open_zip(blob: bytes) -> Any:
    try:
        import pyzipper  # AES (WinZip AE-1/AE-2) and ZipCrypto

        return pyzipper.AESZipFile(io.BytesIO(blob))
    except ImportError:  # without pyzipper: ZipCrypto and plain entries only
        return zipfile.ZipFile(io.BytesIO(blob))


def _is_aes(blob: memoryview, info: zipfile.ZipInfo) -> bool:
    """WinZip AES: method 99 in the local header (pyzipper reports the inner method instead)."""
    off = info.header_offset
    if 0 <= off and off + _LOCAL_HEADER.size <= len(blob) and _LOCAL_HEADER.unpack_from(blob, off)[3] == _AES:
        return True
    return bool(info.extra and b"\x01\x99" in info.extra)


def read_member(zf: Any, blob: memoryview, info: zipfile.ZipInfo, limit: int) -> bytes:
    if info.file_size > limit:
        raise SampleError(f"the sample is {info.file_size} bytes, over the limit of {limit} (max_sample_mb)")
    fast = (
        info.flag_bits & _ENCRYPTED
        and info.compress_type in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
        and not _is_aes(blob, info)
        and zipcrypto.kernel() is not None
    )
    if fast:
        return _read_zipcrypto(blob, info, limit, zipcrypto.kernel())
    return _read_generic(zf, info, limit)


def unzip_sample(blob: bytes, md5: str | None, limit: int) -> tuple[bytes, str | None]:
    """The sample and its original name from a MISP malware-sample ZIP."""
    try:
        zf = _open_zip(blob)
    except Exception as exc:  # noqa: BLE001 - zipfile and pyzipper each have their own BadZipFile
        raise SampleError(f"the malware-sample is not a readable ZIP archive: {exc}") from None
    view = memoryview(blob)
    try:
        with zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            names = [i for i in infos if i.filename.endswith(FILENAME_SUFFIX)]
            samples = [i for i in infos if not i.filename.endswith(FILENAME_SUFFIX)]
            chosen = samples
            if md5:
                chosen = [i for i in samples if i.filename.lower() == md5.lower()] or samples
            if not chosen:
                raise SampleError("the malware-sample ZIP holds no sample")
            if len(chosen) > 1:
                raise SampleError(f"the malware-sample ZIP holds {len(chosen)} files besides the name file; expected one")
            data = read_member(zf, view, chosen[0], limit)
            original = None
            for info in names:
                if info.filename[: -len(FILENAME_SUFFIX)] == chosen[0].filename or len(names) == 1:
                    try:
                        raw = read_member(zf, view, info, 4096)
                        original = raw.decode("utf-8", "replace").strip() or None
                    except Exception:  # noqa: BLE001 - the name is a nicety; the sample is what counts
                        original = None
                    break
            return data, original
    except SampleError:
        raise
    except RuntimeError as exc:  # "Bad password for file", "File ... is encrypted, password required"
        raise SampleError(f"cannot decrypt the malware-sample ZIP with the password 'infected': {exc}") from None
    except NotImplementedError as exc:  # unsupported compression or encryption
        raise SampleError(f"cannot extract the malware-sample ZIP: {exc}") from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError, zlib.error) as exc:
        raise SampleError(f"the malware-sample ZIP is damaged: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the zlib/AES layers raise their own kinds on garbage
        raise SampleError(f"the malware-sample ZIP is damaged: {type(exc).__name__}: {exc}") from None
