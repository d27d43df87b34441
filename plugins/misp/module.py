"""The logic behind the telfhash misp-modules expansion and hover modules.

MISP posts a request such as::

    {"module": "telfhash_expansion",
     "attribute": {"type": "malware-sample", "value": "name|md5", "uuid": "...", "data": "<base64 ZIP>"},
     "config": {"index_path": "/srv/telfhash.idx", "max_distance": "50", ...}}

and gets back ``{"results": {"Object": [...]}}`` (MISP standard format) or ``{"error": "..."}``.

Accepted input:

* ``malware-sample`` -- base64 of a ZIP encrypted with the password ``infected`` (AES or ZipCrypto)
  holding the sample and a ``<md5>.filename.txt`` entry;
* ``attachment`` -- base64 of the raw file;
* ``telfhash`` -- a digest (``t1…``, ``T1…`` or 70 hex): only the pivot is returned;
* a ``file`` object carrying one of the above (``malware-sample``/``attachment`` relation with data,
  or only a ``telfhash`` relation).

Output: a ``file`` object (filename, size-in-bytes, md5, sha1, sha256, telfhash) that
*characterizes* the input attribute/object, plus -- when an index is configured -- the known samples
within ``max_distance``, as ``file`` objects that the new one references as ``similar`` (a
relationship from MISP's list) with the distance in the reference's comment.

MISP validates telfhash as 70 or 72 hex characters and stores it lower-cased, so the digest is sent
as the 70 lower-case hex characters (the reference's ``t1`` prefix dropped).
"""

from __future__ import annotations

import base64
import binascii
import concurrent.futures
import hashlib
import io
import json
import logging
import os
import threading
import zipfile
from dataclasses import dataclass
from typing import Any

from pymisp import MISPEvent, MISPObject

import telfhash_core as tc

log = logging.getLogger("telfhash.misp")

# Imported now rather than on the first request: a cold import of the index (NumPy) costs seconds,
# which a hover request cannot afford.  Any failure only disables the pivot, with a clear error.
try:
    from telfhash_core.store.index import Index as _Index

    _INDEX_IMPORT_ERROR = None
except Exception as exc:  # noqa: BLE001 - a module that fails to import must not break misp-modules
    _Index = None
    _INDEX_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

ZIP_PASSWORD = b"infected"
FILENAME_SUFFIX = ".filename.txt"
INDEX_ENV = "TELFHASH_MISP_INDEX"  # index path used when the module config leaves index_path empty

SAMPLE_TYPES = ("malware-sample", "attachment")
ATTRIBUTE_TYPES = SAMPLE_TYPES + ("telfhash",)
OBJECT_TYPES = ("file",)

# relationships from MISP's list (misp-objects relationships/definition.json)
REL_INPUT = "characterizes"  # the new file object characterizes the sample attribute it came from
REL_SIMILAR = "similar"  # "an object which is similar to another object"

CONFIG_EXPANSION = ["index_path", "max_distance", "max_results", "max_sample_mb"]
CONFIG_HOVER = ["index_path", "max_distance", "max_results", "max_sample_mb", "timeout_seconds"]


@dataclass(frozen=True)
class Settings:
    index_path: str | None = None
    max_distance: int = 50
    max_results: int = 20
    max_sample_bytes: int = 256 << 20
    timeout: float | None = None  # hover: answer (with an error) before MISP's 5 s budget runs out
    hover: bool = False


DEFAULTS = Settings()
HOVER_DEFAULTS = Settings(max_results=5, max_sample_bytes=16 << 20, timeout=4.0, hover=True)


class ModuleError(Exception):
    """A problem with the request or the sample, reported to MISP as ``{"error": str(exc)}``."""


# ----------------------------------------------------------------------------- settings


def _int_setting(config: dict, key: str, default: int, low: int, high: int) -> int:
    raw = config.get(key)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return default
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise ModuleError(f"module setting {key} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise ModuleError(f"module setting {key} must be between {low} and {high}, got {value}")
    return value


def settings_from_config(config: Any, hover: bool = False) -> Settings:
    """Module settings from MISP's ``config`` (all values arrive as strings, often empty)."""
    base = HOVER_DEFAULTS if hover else DEFAULTS
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ModuleError("the request's config must be an object")
    index_path = (str(config.get("index_path") or "").strip()) or os.environ.get(INDEX_ENV, "").strip() or None
    max_mb = _int_setting(config, "max_sample_mb", base.max_sample_bytes >> 20, 1, 4096)
    timeout = base.timeout
    if hover:
        timeout = float(_int_setting(config, "timeout_seconds", int(base.timeout or 4), 1, 60))
    return Settings(
        index_path=index_path,
        max_distance=_int_setting(config, "max_distance", base.max_distance, 0, 2000),
        max_results=_int_setting(config, "max_results", base.max_results, 0, 1000),
        max_sample_bytes=max_mb << 20,
        timeout=timeout,
        hover=hover,
    )


# ----------------------------------------------------------------------------- sample decoding


def decode_base64(data: Any, what: str) -> bytes:
    if not isinstance(data, str) or not data.strip():
        raise ModuleError(f"the {what} carries no data (MISP sends the file base64-encoded in 'data')")
    text = "".join(data.split())  # line breaks are harmless
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ModuleError(f"the {what}'s data is not valid base64: {exc}") from None


def _open_zip(blob: bytes):
    try:
        import pyzipper  # AES (WinZip AE-1/AE-2) and ZipCrypto

        return pyzipper.AESZipFile(io.BytesIO(blob))
    except ImportError:  # ZipCrypto only
        return zipfile.ZipFile(io.BytesIO(blob))


def _read_member(zf, info, limit: int) -> bytes:
    if info.file_size > limit:
        raise ModuleError(f"the sample is {info.file_size} bytes, over the limit of {limit} (max_sample_mb)")
    try:
        zf.setpassword(ZIP_PASSWORD)
    except Exception:  # noqa: BLE001 - plain zipfile accepts it too; be tolerant
        pass
    with zf.open(info) as fh:
        data = fh.read(limit + 1)  # never trust the declared size: bound what is inflated
    if len(data) > limit:
        raise ModuleError(f"the sample inflates past the limit of {limit} bytes (max_sample_mb)")
    return data


def unzip_sample(blob: bytes, md5: str | None, limit: int) -> tuple[bytes, str | None]:
    """The sample and its original name from a MISP malware-sample ZIP."""
    try:
        zf = _open_zip(blob)
    except Exception as exc:  # noqa: BLE001 - zipfile and pyzipper each have their own BadZipFile
        raise ModuleError(f"the malware-sample is not a readable ZIP archive: {exc}") from None
    try:
        with zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            names = [i for i in infos if i.filename.endswith(FILENAME_SUFFIX)]
            samples = [i for i in infos if not i.filename.endswith(FILENAME_SUFFIX)]
            if md5:
                chosen = [i for i in samples if i.filename.lower() == md5.lower()] or samples
            else:
                chosen = samples
            if not chosen:
                raise ModuleError("the malware-sample ZIP holds no sample")
            if len(chosen) > 1:
                raise ModuleError(
                    f"the malware-sample ZIP holds {len(chosen)} files besides the name file; expected one"
                )
            data = _read_member(zf, chosen[0], limit)
            original = None
            for info in names:
                if info.filename[: -len(FILENAME_SUFFIX)] == chosen[0].filename or len(names) == 1:
                    try:
                        raw = _read_member(zf, info, 4096)
                        original = raw.decode("utf-8", "replace").strip() or None
                    except Exception:  # noqa: BLE001 - the name is a nicety; the sample is what counts
                        original = None
                    break
            return data, original
    except ModuleError:
        raise
    except RuntimeError as exc:  # "Bad password for file", "File ... is encrypted, password required"
        raise ModuleError(f"cannot decrypt the malware-sample ZIP with the password 'infected': {exc}") from None
    except NotImplementedError as exc:  # unsupported compression or encryption
        raise ModuleError(f"cannot extract the malware-sample ZIP: {exc}") from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as exc:
        raise ModuleError(f"the malware-sample ZIP is damaged: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the zlib/AES layers raise their own kinds on garbage
        raise ModuleError(f"the malware-sample ZIP is damaged: {type(exc).__name__}: {exc}") from None


def _split_sample_value(value: Any) -> tuple[str | None, str | None]:
    """``"name|md5"`` (malware-sample) -> (name, md5)."""
    if not isinstance(value, str):
        return None, None
    name, sep, md5 = value.rpartition("|")
    if not sep:
        return value or None, None
    return name or None, md5.strip() or None


@dataclass
class Sample:
    data: bytes
    filename: str


def sample_from_attribute(attribute: dict, limit: int) -> Sample:
    kind = attribute.get("type")
    if kind == "malware-sample":
        name, md5 = _split_sample_value(attribute.get("value"))
        blob = decode_base64(attribute.get("data"), "malware-sample")
        data, original = unzip_sample(blob, md5, limit)
        return Sample(data, name or original or md5 or "sample")
    if kind == "attachment":
        blob = decode_base64(attribute.get("data"), "attachment")
        if len(blob) > limit:
            raise ModuleError(f"the attachment is {len(blob)} bytes, over the limit of {limit} (max_sample_mb)")
        value = attribute.get("value")
        return Sample(blob, value if isinstance(value, str) and value else "attachment")
    raise ModuleError(f"unsupported attribute type {kind!r}")


# ----------------------------------------------------------------------------- MISP objects


def misp_hex(digest: str) -> str:
    """The telfhash as MISP stores it: 70 lower-case hex characters."""
    return tc.normalize(digest, "hex").lower()


def _new_event():
    return MISPEvent()


def _file_object(**attrs):
    obj = MISPObject("file", standalone=False)
    for relation, value, comment in attrs.pop("_attrs"):
        if value is None or value == "":
            continue
        kwargs = {"comment": comment} if comment else {}
        obj.add_attribute(relation, value=value, **kwargs)
    if attrs.get("comment"):
        obj.comment = attrs["comment"]
    return obj


def sample_object(sample: Sample, result: tc.Result):
    detail = f"{result.arch or 'unknown arch'}, from {result.method or '?'}, {result.symbols} symbols"
    return _file_object(
        _attrs=[
            ("filename", sample.filename, None),
            ("size-in-bytes", len(sample.data), None),
            ("md5", hashlib.md5(sample.data).hexdigest(), None),
            ("sha1", hashlib.sha1(sample.data).hexdigest(), None),
            ("sha256", hashlib.sha256(sample.data).hexdigest(), None),
            ("telfhash", misp_hex(result.telfhash), f"telfhash-core {tc.__version__}: {detail}"),
        ]
    )


def match_object(match) -> Any:
    path = getattr(match, "path", None)
    name = os.path.basename(path) if path else None
    parts = [f"telfhash distance {match.distance} (local index)"]
    if getattr(match, "arch", None):
        parts.append(f"arch {match.arch}")
    if getattr(match, "source", None):
        parts.append(f"source {match.source}")
    if path:
        parts.append(f"path {path}")
    telf = getattr(match, "telfhash", None)
    return _file_object(
        _attrs=[
            ("filename", name, None),
            ("size-in-bytes", getattr(match, "size", None), None),
            ("sha256", getattr(match, "sha256", None), None),
            ("telfhash", misp_hex(telf) if telf and tc.is_digest(telf) else None, None),
        ],
        comment="; ".join(parts),
    )


def _results(event) -> dict:
    d = json.loads(event.to_json())  # plain JSON types all the way down
    results = {key: d[key] for key in ("Attribute", "Object") if d.get(key)}
    return {"results": results}


# ----------------------------------------------------------------------------- pivot


_local = threading.local()  # an Index belongs to one thread; misp-modules answers from a thread pool


def _open_index(index_cls, path: str):
    """This thread's open index for ``path`` (kept open: its digest matrix is reused between queries)."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_dev, st.st_ino)
    cache = getattr(_local, "indexes", None)
    if cache is None:
        cache = _local.indexes = {}
    ix = cache.get(key)
    if ix is None:
        for old_key in [k for k in cache if k[0] == key[0]]:  # the file was replaced
            _close_quietly(cache.pop(old_key))
        ix = cache[key] = index_cls(path, create=False)
    return ix


def _forget_index(path: str) -> None:
    cache = getattr(_local, "indexes", None) or {}
    for k in [k for k in cache if k[0] == os.path.abspath(path)]:
        _close_quietly(cache.pop(k))


def _close_quietly(ix) -> None:
    try:
        ix.close()
    except Exception:  # noqa: BLE001
        pass


def find_similar(digest: str, settings: Settings, exclude_sha256: str | None = None) -> list:
    """Known samples within ``settings.max_distance`` of ``digest`` from the configured index."""
    if not settings.index_path or settings.max_results == 0:
        return []
    if not os.path.exists(settings.index_path):
        raise ModuleError(f"the telfhash index configured as index_path does not exist: {settings.index_path}")
    if _Index is None:
        raise ModuleError(f"the telfhash index cannot be used here: {_INDEX_IMPORT_ERROR}")
    try:
        ix = _open_index(_Index, settings.index_path)
        # one spare slot: the sample itself may already be in the index
        matches = ix.search(digest, max_distance=settings.max_distance, limit=settings.max_results + 1)
    except Exception as exc:  # noqa: BLE001 - a broken index file must be reported, not raised
        _forget_index(settings.index_path)
        raise ModuleError(f"cannot search the telfhash index {settings.index_path}: {type(exc).__name__}: {exc}") from None
    out = [m for m in matches if not (exclude_sha256 and getattr(m, "sha256", None) == exclude_sha256)]
    out.sort(key=lambda m: (m.distance, getattr(m, "sha256", "") or ""))
    return out[: settings.max_results]


def _add_pivot(event, source_obj, source_uuid: str, digest: str, settings: Settings, exclude: str | None) -> int:
    matches = find_similar(digest, settings, exclude)
    for m in matches:
        obj = match_object(m)
        event.add_object(obj)
        comment = f"telfhash distance {m.distance}"
        if source_obj is not None:
            source_obj.add_reference(obj.uuid, REL_SIMILAR, comment=comment)
        else:  # telfhash attribute as input: the known sample is similar to that digest
            obj.add_reference(source_uuid, REL_SIMILAR, comment=comment)
    return len(matches)


# ----------------------------------------------------------------------------- request handling


def _hash_sample(sample: Sample) -> tc.Result:
    result = tc.hash_bytes(sample.data, sample.filename)
    if not result.ok:
        reason = result.reason.value if result.reason else "unknown"
        detail = f": {result.detail}" if result.detail else ""
        raise ModuleError(f"no telfhash for {sample.filename} ({reason}{detail})")
    return result


def _expand_sample(sample: Sample, target_uuid: str, settings: Settings) -> dict:
    result = _hash_sample(sample)
    event = _new_event()
    obj = sample_object(sample, result)
    obj.add_reference(target_uuid, REL_INPUT)
    event.add_object(obj)
    if not settings.hover:
        _add_pivot(event, obj, target_uuid, result.telfhash, settings, hashlib.sha256(sample.data).hexdigest())
    return _results(event)


def _expand_digest(value: Any, target_uuid: str, settings: Settings) -> dict:
    if not isinstance(value, str) or not tc.is_digest(value):
        raise ModuleError(f"not a telfhash: {value!r} (expected t1 + 70 hex, T1 + 70 hex or 70 hex)")
    if not settings.index_path:
        raise ModuleError(
            "a telfhash attribute can only be pivoted on: set the module's index_path to a telfhash index"
        )
    event = _new_event()
    n = _add_pivot(event, None, target_uuid, value, settings, None)
    if n == 0:
        return {"results": {}}
    return _results(event)


def _expand_object(obj: dict, settings: Settings) -> dict:
    if not isinstance(obj, dict):
        raise ModuleError("the request's object must be a MISP object")
    if obj.get("name") not in OBJECT_TYPES:
        raise ModuleError(f"unsupported object {obj.get('name')!r}: only file objects are accepted")
    uuid = obj.get("uuid")
    if not isinstance(uuid, str) or not uuid:
        raise ModuleError("the file object has no uuid")
    attributes = [a for a in obj.get("Attribute") or [] if isinstance(a, dict)]
    carriers = [a for a in attributes if a.get("type") in SAMPLE_TYPES and a.get("data")]
    filename = next((a.get("value") for a in attributes if a.get("object_relation") == "filename"), None)
    if carriers:
        carrier = next((a for a in carriers if a.get("type") == "malware-sample"), carriers[0])
        sample = sample_from_attribute(carrier, settings.max_sample_bytes)
        if isinstance(filename, str) and filename:
            sample.filename = filename
        return _expand_sample(sample, uuid, settings)
    digests = [a.get("value") for a in attributes if a.get("type") == "telfhash"]
    if digests:
        return _expand_digest(digests[0], uuid, settings)
    raise ModuleError("the file object carries neither a sample (malware-sample/attachment with data) nor a telfhash")


def expand(request: Any, *, hover: bool = False) -> dict:
    """Answer one MISP request (already parsed from JSON). Never raises."""
    try:
        if not isinstance(request, dict):
            raise ModuleError("the request must be a JSON object")
        settings = settings_from_config(request.get("config"), hover=hover)
        if settings.timeout:
            return _with_deadline(_dispatch, request, settings)
        return _dispatch(request, settings)
    except ModuleError as exc:
        return {"error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a traceback must never reach MISP
        log.exception("telfhash module failed")
        return {"error": f"internal error in the telfhash module: {type(exc).__name__}: {exc}"}


def _dispatch(request: dict, settings: Settings) -> dict:
    attribute = request.get("attribute")
    if attribute is None and request.get("object") is not None:
        return _expand_object(request["object"], settings)
    if not isinstance(attribute, dict):
        raise ModuleError(
            "this module requires an 'attribute' (malware-sample, attachment or telfhash) or a file 'object'"
        )
    missing = [k for k in ("type", "uuid", "value") if k not in attribute]
    if missing:
        raise ModuleError(f"the attribute lacks {', '.join(missing)} (needs at least a type, a value and a uuid)")
    if not isinstance(attribute["uuid"], str) or not attribute["uuid"].strip():
        raise ModuleError("the attribute's uuid must be a non-empty string")
    kind = attribute["type"]
    if kind not in ATTRIBUTE_TYPES:
        raise ModuleError(f"unsupported attribute type {kind!r}: use malware-sample, attachment or telfhash")
    if kind == "telfhash":
        return _expand_digest(attribute.get("value"), attribute["uuid"], settings)
    sample = sample_from_attribute(attribute, settings.max_sample_bytes)
    return _expand_sample(sample, attribute["uuid"], settings)


_POOL: concurrent.futures.ThreadPoolExecutor | None = None


def _with_deadline(fn, request: dict, settings: Settings) -> dict:
    """Run ``fn`` but answer by ``settings.timeout`` seconds whatever happens (hover budget)."""
    global _POOL
    if _POOL is None:
        _POOL = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="telfhash-hover")
    future = _POOL.submit(fn, request, settings)
    try:
        return future.result(timeout=settings.timeout)
    except concurrent.futures.TimeoutError:
        return {
            "error": f"telfhash did not finish within {settings.timeout:g} s (hover budget); "
            "use the telfhash_expansion module for this sample"
        }


def handle_json(q: Any, *, hover: bool = False) -> dict | bool:
    """misp-modules' ``handler(q)``: ``q`` is the request as JSON text or bytes."""
    if q is False or q is None:
        return False
    try:
        request = json.loads(q)
    except (TypeError, ValueError, UnicodeDecodeError) as exc:
        return {"error": f"the request is not valid JSON: {exc}"}
    return expand(request, hover=hover)


def module_info(hover: bool) -> dict:
    if hover:
        description = (
            "Hover: the telfhash of an ELF malware-sample or attachment (bounded size and time, no pivot), "
            "or the nearest known samples of a telfhash from the local index."
        )
    else:
        description = (
            "The telfhash (ELF symbol TLSH) of a malware-sample, attachment or file object, as a file object; "
            "with a local telfhash index configured, also the known samples within a distance."
        )
    return {
        "version": tc.__version__,
        "author": "telfhash-core",
        "description": description,
        "module-type": ["hover"] if hover else ["expansion"],
        "name": "telfhash (hover)" if hover else "telfhash",
        "logo": "",
        "requirements": ["telfhash-core[misp]"],
        "features": (
            "Computes the telfhash exactly as Trend Micro's telfhash 0.9.8 does, and sends it as the 70 hex "
            "characters MISP validates. With index_path set, returns the known samples within max_distance "
            "(default 50), at most max_results, as file objects referenced as 'similar' with the distance."
        ),
        "references": ["https://github.com/trendmicro/telfhash"],
        "input": "malware-sample, attachment or telfhash attribute; file object carrying one of them.",
        "output": "file object with filename, size-in-bytes, md5, sha1, sha256 and telfhash; similar known samples.",
    }


def mispattributes() -> dict:
    return {
        "input": list(ATTRIBUTE_TYPES) + list(OBJECT_TYPES),
        "output": ["telfhash", "md5", "sha1", "sha256", "filename", "size-in-bytes"],
        "format": "misp_standard",
    }


def _warm_up() -> None:
    """Pay the one-off costs (PyMISP's object template, the distance kernels' compiled code) at
    load time, so that the first request -- perhaps a hover -- does not."""
    try:
        MISPObject("file", standalone=False)
    except Exception:  # noqa: BLE001 - reported by the first request instead
        pass
    if _Index is not None:
        try:
            from telfhash_core.similarity.tlshdist import encode, one_to_many

            probe = "t1" + "0" * 6 + "a5" * 32
            one_to_many(encode([probe]), probe)
        except Exception:  # noqa: BLE001 - only a warm-up
            pass


_warm_up()
