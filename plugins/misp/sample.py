"""The sample bytes out of what MISP sends: base64, and for a malware-sample an encrypted ZIP.

MISP zips every malware-sample with ``zip -j -P infected`` (ZipCrypto): one entry named by the
sample's MD5 and one ``<md5>.filename.txt`` holding its name.  Samples are hostile, and so may
the ZIP be, so:

* the ZIP's directory is read by ``zipfile``; the chosen entry's data is then decrypted by the
  compiled kernel of :mod:`.zipcrypto` and inflated by ``zlib`` in chunks of 256 KiB, straight into
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
from typing import Any, BinaryIO, cast

from . import zipcrypto

ZIP_PASSWORD = b"infected"
FILENAME_SUFFIX = ".filename.txt"
CHUNK = 256 << 10  # small: every chunk exists in a few transient copies (base64, cipher, inflate)

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


class Base64File(io.RawIOBase):
    """A read-only, seekable file over base64 text, decoding only the part that is read.

    MISP sends the ZIP as base64 inside the request; decoding it whole would hold a second copy
    of the sample for nothing: the ZIP's directory sits at its end, and its entries are read in
    chunks.  Every part read is validated strictly; the sample's CRC covers its data.
    """

    def __init__(self, text: str, size: int):
        super().__init__()
        self._text = text
        self.size = size
        self._pos = 0

    @classmethod
    def open(cls, text: str) -> Base64File | None:
        """None when the text is not plain base64 (line breaks, bad length): decode it whole then."""
        if not isinstance(text, str) or not text or len(text) % 4:
            return None
        pad = len(text) - len(text.rstrip("="))
        if pad > 2 or not text.isascii() or _SPACE.search(text):
            return None
        return cls(text, len(text) // 4 * 3 - pad)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        n = self.size - self._pos if size is None or size < 0 else min(size, self.size - self._pos)
        if n <= 0:
            return b""
        first, last = self._pos // 3, (self._pos + n + 2) // 3
        try:
            raw = base64.b64decode(self._text[4 * first : 4 * last], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SampleError(f"the malware-sample's data is not valid base64: {exc}") from None
        skip = self._pos - 3 * first
        self._pos += n
        return raw if skip == 0 and len(raw) == n else raw[skip : skip + n]

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _pread(fp: BinaryIO, offset: int, n: int) -> bytes:
    fp.seek(offset)
    return fp.read(n)


def _data_offset(fp: BinaryIO, size: int, info: zipfile.ZipInfo) -> int:
    off = info.header_offset
    if off < 0 or off + _LOCAL_HEADER.size > size:
        raise SampleError("the malware-sample ZIP is damaged: local header out of range")
    fields = _LOCAL_HEADER.unpack(_pread(fp, off, _LOCAL_HEADER.size))
    if fields[0] != _LOCAL_SIGNATURE:
        raise SampleError("the malware-sample ZIP is damaged: bad local header signature")
    return off + _LOCAL_HEADER.size + fields[9] + fields[10]


def _read_zipcrypto(fp: BinaryIO, size: int, info: zipfile.ZipInfo, limit: int, decrypt) -> bytes:
    """Decrypt and inflate one ZipCrypto entry (stored or deflated) in chunks, bounded by ``limit``."""
    start = _data_offset(fp, size, info)
    end = start + info.compress_size
    if end > size or info.compress_size < zipcrypto.HEADER_SIZE:
        raise SampleError("the malware-sample ZIP is damaged: entry data out of range")
    dec = zipcrypto.Decrypter(ZIP_PASSWORD, decrypt)
    header = dec(_pread(fp, start, zipcrypto.HEADER_SIZE))
    if info.flag_bits & _DATA_DESCRIPTOR:
        check = (info._raw_time >> 8) & 0xFF  # type: ignore[attr-defined]  # as zipfile checks it
    else:
        check = (info.CRC >> 24) & 0xFF
    if int(header[-1]) != check:
        raise SampleError("cannot decrypt the malware-sample ZIP with the password 'infected' (bad password)")
    sink = _Sink(limit)
    inflater = zlib.decompressobj(-15) if info.compress_type == zipfile.ZIP_DEFLATED else None
    pos = start + zipcrypto.HEADER_SIZE
    fp.seek(pos)
    try:
        while pos < end:
            raw = fp.read(min(end - pos, CHUNK))
            if not raw:
                raise SampleError("the malware-sample ZIP is damaged: entry data cut short")
            pos += len(raw)
            plain = dec(raw)
            del raw
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


def _open_zip(fp: BinaryIO) -> Any:
    try:
        import pyzipper  # AES (WinZip AE-1/AE-2) and ZipCrypto

        return pyzipper.AESZipFile(fp)
    except ImportError:  # without pyzipper: ZipCrypto and plain entries only
        return zipfile.ZipFile(fp)


def _is_aes(fp: BinaryIO, size: int, info: zipfile.ZipInfo) -> bool:
    """WinZip AES: method 99 in the local header (pyzipper reports the inner method instead)."""
    off = info.header_offset
    if (
        0 <= off
        and off + _LOCAL_HEADER.size <= size
        and _LOCAL_HEADER.unpack(_pread(fp, off, _LOCAL_HEADER.size))[3] == _AES
    ):
        return True
    return bool(info.extra and b"\x01\x99" in info.extra)


def read_member(zf: Any, fp: BinaryIO, size: int, info: zipfile.ZipInfo, limit: int) -> bytes:
    if info.file_size > limit:
        raise SampleError(f"the sample is {info.file_size} bytes, over the limit of {limit} (max_sample_mb)")
    fast = (
        info.flag_bits & _ENCRYPTED
        and info.compress_type in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
        and not _is_aes(fp, size, info)
        and zipcrypto.kernel() is not None
    )
    if fast:
        return _read_zipcrypto(fp, size, info, limit, zipcrypto.kernel())
    return _read_generic(zf, info, limit)


def zip_file(data: bytes | str, what: str = "malware-sample") -> tuple[BinaryIO, int]:
    """A seekable file over the ZIP: the bytes, or the base64 text decoded as it is read."""
    if isinstance(data, (bytes, bytearray)):
        return io.BytesIO(data), len(data)
    b64 = Base64File.open(data)
    if b64 is not None:
        return cast(BinaryIO, b64), b64.size
    blob = decode_base64(data, what)  # line breaks or bad characters: decoded whole (or refused)
    return io.BytesIO(blob), len(blob)


def unzip_sample(data: bytes | str, md5: str | None, limit: int) -> tuple[bytes, str | None]:
    """The sample and its original name from a MISP malware-sample ZIP (bytes, or its base64 text)."""
    fp, size = zip_file(data)
    try:
        zf = _open_zip(fp)
    except SampleError:
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile and pyzipper each have their own BadZipFile
        raise SampleError(f"the malware-sample is not a readable ZIP archive: {exc}") from None
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
                raise SampleError(
                    f"the malware-sample ZIP holds {len(chosen)} files besides the name file; expected one"
                )
            sample = read_member(zf, fp, size, chosen[0], limit)
            original = None
            for info in names:
                if info.filename[: -len(FILENAME_SUFFIX)] == chosen[0].filename or len(names) == 1:
                    try:
                        raw = read_member(zf, fp, size, info, 4096)
                        original = raw.decode("utf-8", "replace").strip() or None
                    except Exception:  # noqa: BLE001 - the name is a nicety; the sample is what counts
                        original = None
                    break
            return sample, original
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
