"""The misp-modules contract of the telfhash expansion and hover modules: what MISP sends, what
it does with the answer, and the answer we give.

How MISP calls a module (MISP core, ``app/``; lines as of MISP/MISP bb0909a3):

* **Enrich an attribute** (``EventsController::__queryEnrichment``): ``{"module", "attribute",
  "event_id", "config"}``; a malware-sample/attachment carries its file base64-encoded in
  ``attribute.data`` (a malware-sample is a ZipCrypto ZIP, ``zip -j -P infected``).  An
  ``{"error"}`` answer is flashed; ``results`` are shown for review before they are saved.
* **Enrich the whole event / a workflow** (``Event::enrichment``): the same, plus
  ``attribute_uuid``, for every attribute of a type the module accepts.  A reply without
  ``results`` throws, which stops the enrichment of the rest of the event.  So a file that has
  nothing to add (not ELF, ``tnull``/``-``, no index for a digest) is answered with an empty
  ``results`` (and a ``comment`` MISP shows in the review page); ``{"error"}`` is kept for real
  faults: a bad request or setting, a damaged ZIP, a wrong password, a sample over the size cap,
  a missing or broken index.
* **Hover** (``AttributesController::hoverEnrichment``): the attribute *without* its file (no
  ``data``), 5 s of budget.  MISP shows each object's attributes and each attribute's
  ``type: value``; an empty answer shows as "Empty results".  So hover looks the sample up in the
  index by the MD5/SHA-1/SHA-256 its value carries and shows the stored telfhash and neighbours,
  or one ``text`` line saying why there is nothing.
* **Saving objects** (``Event::processModuleResultsData``): an object whose ``id`` equals the
  id of the object the enriched attribute sits in (``initialObject``) is *merged* into it: only
  attributes it lacks are added.  So when the sample sits in a ``file`` object, the answer is
  that object (its ``id``, and its ``uuid`` when the request carries it, as misp-modules'
  ``urlhaus`` does) with the telfhash added, not a second file object.  References keep only the
  referenced uuid and the relationship type, so the TLSH distance of a neighbour travels in its
  object comment (saved) and in its telfhash attribute's comment (saved), not on the reference.

Known neighbours are other people's samples: their attributes go out with ``to_ids`` false, and
nothing of the index's own paths or location is sent (only the file name).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import uuid as _uuid
from dataclasses import dataclass, field, replace
from typing import Any

from pymisp import MISPObject

import telfhash_core as tc

from . import known
from .sample import Sample, SampleError, decode_base64, unzip_sample

log = logging.getLogger("telfhash.misp")

INDEX_ENV = "TELFHASH_MISP_INDEX"  # index path used when the module config leaves index_path empty

SAMPLE_TYPES = ("malware-sample", "attachment")
ATTRIBUTE_TYPES = SAMPLE_TYPES + ("telfhash",)
OBJECT_TYPES = ("file",)
HASH_RELATIONS = ("sha256", "sha1", "md5")

# relationships from MISP's list (misp-objects relationships/definition.json)
REL_INPUT = "characterizes"  # the new file object characterizes the sample attribute it came from
REL_SIMILAR = "similar"  # "an object which is similar to another object"

CONFIG_EXPANSION = ["index_path", "max_distance", "max_results", "max_sample_mb"]
CONFIG_HOVER = ["index_path", "max_distance", "max_results", "max_sample_mb", "timeout_seconds"]


@dataclass(frozen=True)
class Settings:
    index_path: str | None = None
    max_distance: int = tc.DEFAULT_THRESHOLD
    max_results: int = 20
    max_sample_bytes: int = 256 << 20
    timeout: float | None = None  # hover: answer before MISP's 5 s budget runs out
    hover: bool = False


DEFAULTS = Settings()
HOVER_DEFAULTS = Settings(max_results=5, max_sample_bytes=16 << 20, timeout=4.0, hover=True)


class ModuleError(Exception):
    """A real fault with the request, the sample or the setup: ``{"error": str(exc)}``."""


class Nothing(Exception):
    """Nothing to add, for the reason given: an empty ``results`` (hover: one ``text`` line)."""


# ----------------------------------------------------------------------------- settings


def _int_setting(config: dict, key: str, default: int, low: int, high: int) -> int:
    raw = config.get(key)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return default
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise ModuleError(f"module setting {key} must be a whole number, got {raw!r}")
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise ModuleError(f"module setting {key} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise ModuleError(f"module setting {key} must be between {low} and {high}, got {value}")
    return value


def settings_from_config(config: Any, hover: bool = False) -> Settings:
    """Module settings from MISP's ``config`` (values arrive as strings, often empty or null)."""
    base = HOVER_DEFAULTS if hover else DEFAULTS
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ModuleError("the request's config must be an object")
    raw_index = config.get("index_path")
    if raw_index is not None and not isinstance(raw_index, str):
        raise ModuleError(f"module setting index_path must be a path, got {raw_index!r}")
    index_path = (raw_index or "").strip() or os.environ.get(INDEX_ENV, "").strip() or None
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


# ----------------------------------------------------------------------------- MISP objects


def misp_hex(digest: str) -> str:
    """The telfhash as MISP stores it: 70 lower-case hex characters."""
    return tc.normalize(digest, "hex").lower()


_RELATIONS = ("filename", "size-in-bytes", "md5", "sha1", "sha256", "telfhash", "text")


def _prototypes() -> tuple[dict, dict[str, dict]]:
    """The file object's header and each relation's attribute fields exactly as PyMISP writes them
    (template uuid and version, category, to_ids and correlation defaults), taken once from PyMISP:
    building every answer through PyMISP cost a quarter of a request's CPU."""
    obj = MISPObject("file", standalone=False)
    for relation in _RELATIONS:
        obj.add_attribute(relation, value="0")
    d = json.loads(obj.to_json())
    header = {k: d[k] for k in ("name", "meta-category", "template_uuid", "description", "template_version")}
    tail = {k: d[k] for k in ("distribution", "sharing_group_id") if k in d}
    attrs = {a["object_relation"]: {k: v for k, v in a.items() if k not in ("uuid", "value")} for a in d["Attribute"]}
    return {**header, "_tail": tail}, attrs


_HEADER, _ATTRIBUTE_FIELDS = _prototypes()


@dataclass
class FileObject:
    """A MISP ``file`` object of an answer, serialised as PyMISP would (see :func:`_prototypes`)."""

    uuid: str = field(default_factory=lambda: str(_uuid.uuid4()))
    id: str | None = None
    comment: str | None = None
    attributes: list[dict] = field(default_factory=list)
    references: list[dict] = field(default_factory=list)

    def add_attribute(self, relation: str, value: Any, **kw: Any) -> None:
        a = {"uuid": str(_uuid.uuid4()), "object_relation": relation, "value": str(value)}
        a.update(_ATTRIBUTE_FIELDS[relation])
        a.update(kw)
        self.attributes.append(a)

    def add_reference(self, referenced_uuid: str, relationship_type: str, comment: str | None = None) -> None:
        ref = {
            "uuid": str(_uuid.uuid4()),
            "object_uuid": self.uuid,
            "referenced_uuid": referenced_uuid,
            "relationship_type": relationship_type,
        }
        if comment:
            ref["comment"] = comment
        self.references.append(ref)

    def to_dict(self) -> dict:
        d = {k: v for k, v in _HEADER.items() if k != "_tail"}
        d["uuid"] = self.uuid
        if self.references:
            d["ObjectReference"] = [dict(r) for r in self.references]
        d["Attribute"] = [dict(a) for a in self.attributes]
        d.update(_HEADER["_tail"])
        if self.comment:
            d["comment"] = self.comment
        if self.id is not None:
            d["id"] = self.id
        return d


def _add(obj: FileObject, relation: str, value: Any, **kw: Any) -> None:
    if value is None or value == "":
        return
    obj.add_attribute(relation, value=value, **{k: v for k, v in kw.items() if v is not None})


@dataclass
class Target:
    """Where the answer attaches: the input attribute, and the object it sits in (if any)."""

    uuid: str  # the input attribute's (or object's) uuid
    object_id: str | None = None  # id of the file object to merge into
    object_uuid: str | None = None
    is_object: bool = False  # the request was an object

    @property
    def merge(self) -> bool:
        return self.object_id is not None


def _object_id(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    text = str(value).strip()
    return text if text.isdigit() and int(text) > 0 else None


def _sample_object(target: Target) -> FileObject:
    obj = FileObject()
    if target.object_id is not None:
        obj.id = target.object_id  # MISP merges an object whose id is the initial object's id (as urlhaus does)
        if target.object_uuid:
            obj.uuid = target.object_uuid
    return obj


def _link_input(obj: FileObject, target: Target) -> None:
    if not target.merge:  # a merged object already holds the sample
        obj.add_reference(target.uuid, REL_INPUT)


def computed_object(sample: Sample, result: tc.Result, target: Target) -> FileObject:
    obj = _sample_object(target)
    detail = f"{result.arch or 'unknown arch'}, from {result.method or '?'}, {result.symbols} symbols"
    _add(obj, "filename", sample.filename)
    _add(obj, "size-in-bytes", len(sample.data))
    _add(obj, "md5", hashlib.md5(sample.data).hexdigest())
    _add(obj, "sha1", hashlib.sha1(sample.data).hexdigest())
    _add(obj, "sha256", hashlib.sha256(sample.data).hexdigest())
    _add(obj, "telfhash", misp_hex(result.telfhash or ""), comment=f"telfhash-core {tc.__version__}: {detail}")
    _link_input(obj, target)
    return obj


def _entry_note(entry: dict) -> str:
    parts = []
    if entry.get("label"):
        parts.append(f"family {entry['label']}")
    if entry.get("arch"):
        parts.append(f"arch {entry['arch']}")
    if entry.get("added"):
        parts.append(f"known since {entry['added'][:10]}")
    return ", ".join(parts)


def known_object(entry: dict, filename: str | None, target: Target, hover: bool) -> FileObject:
    """The sample as the index knows it (hover, or a malware-sample whose file MISP did not send)."""
    obj = _sample_object(target)
    note = _entry_note(entry)
    _add(obj, "filename", filename or _basename(entry.get("path")))
    _add(obj, "size-in-bytes", entry.get("size"))
    for relation in ("md5", "sha1", "sha256"):
        _add(obj, relation, entry.get(relation))
    _add(
        obj, "telfhash", misp_hex(entry["telfhash"]), comment="from the telfhash index" + (f" ({note})" if note else "")
    )
    if hover and note:
        _add(obj, "text", f"known to the telfhash index: {note}")
    _link_input(obj, target)
    return obj


def _basename(path: Any) -> str | None:
    if not isinstance(path, str) or not path:
        return None
    return os.path.basename(path.replace("\\", "/")) or None


def neighbour_object(match: Any, source: str, hover: bool) -> FileObject:
    """A known sample within the distance, as a file object: to_ids false, no server path."""
    parts = [f"telfhash distance {match.distance} to {source}"]
    if getattr(match, "label", None):
        parts.append(f"family {match.label}")
    if getattr(match, "arch", None):
        parts.append(f"arch {match.arch}")
    note = "; ".join(parts) + " (telfhash-core index)"
    obj = FileObject(comment=note)
    if hover:  # the hover shows attributes, not comments
        _add(obj, "text", note, to_ids=False)
    _add(obj, "filename", _basename(getattr(match, "path", None)), to_ids=False)
    _add(obj, "size-in-bytes", getattr(match, "size", None), to_ids=False)
    for relation in ("md5", "sha1", "sha256"):
        _add(obj, relation, getattr(match, relation, None), to_ids=False)
    telf = getattr(match, "telfhash", None)
    if telf and tc.is_digest(telf):
        _add(obj, "telfhash", misp_hex(telf), to_ids=False, comment=f"telfhash distance {match.distance} to {source}")
    return obj


def _results(objects: list[FileObject]) -> dict:
    return {"results": {"Object": [o.to_dict() for o in objects]} if objects else {}}


# ----------------------------------------------------------------------------- answers


def _neighbours(
    event: list[FileObject],
    source_obj: FileObject | None,
    source_uuid: str,
    digest: str,
    source: str,
    settings: Settings,
    exclude: str | None,
) -> int:
    if not settings.index_path or settings.max_results == 0:
        return 0
    try:
        matches = known.similar(settings.index_path, digest, settings.max_distance, settings.max_results, exclude)
    except known.IndexError_ as exc:
        raise ModuleError(str(exc)) from None
    for m in matches:
        obj = neighbour_object(m, source, settings.hover)
        event.append(obj)
        comment = f"telfhash distance {m.distance}"
        if source_obj is not None:
            source_obj.add_reference(obj.uuid, REL_SIMILAR, comment=comment)
        else:  # a telfhash attribute as input: the known sample is similar to that digest
            obj.add_reference(source_uuid, REL_SIMILAR, comment=comment)
    return len(matches)


def _hash_sample(sample: Sample) -> tc.Result:
    result = tc.hash_bytes(sample.data, sample.filename)
    if not result.ok:
        reason = result.reason.value if result.reason else "unknown"
        detail = f": {result.detail}" if result.detail else ""
        raise Nothing(f"telfhash: {sample.filename} has no telfhash ({reason}{detail}); nothing to add")
    return result


def answer_sample(sample: Sample, target: Target, settings: Settings) -> dict:
    result = _hash_sample(sample)
    event: list[FileObject] = []
    obj = computed_object(sample, result, target)
    event.append(obj)
    sha256 = hashlib.sha256(sample.data).hexdigest()
    _neighbours(event, obj, target.uuid, result.telfhash or "", f"sha256 {sha256}", settings, sha256)
    return _results(event)


def answer_known(hashes: list[str], filename: str | None, target: Target, settings: Settings, why: str) -> dict:
    """A sample given by its hashes only: what the index knows of it."""
    if not hashes:
        raise Nothing(f"telfhash: {why}, and its value carries no MD5/SHA-1/SHA-256 to look up")
    if not settings.index_path:
        raise Nothing(f"telfhash: {why}, and no telfhash index is configured (index_path) to look {hashes[0]} up")
    try:
        entry = known.lookup(settings.index_path, hashes)
    except known.IndexError_ as exc:
        raise ModuleError(str(exc)) from None
    if entry is None:
        n = known.size(settings.index_path)
        raise Nothing(
            f"telfhash: {hashes[0]} is not among the {n if n is not None else '?'} samples of the telfhash index"
            + ("; enrich with telfhash_expansion to compute it" if settings.hover else f" ({why})")
        )
    if not entry.get("telfhash"):
        raise Nothing(
            f"telfhash: {hashes[0]} is known to the index without a telfhash ({entry.get('reason') or 'no digest'})"
        )
    event: list[FileObject] = []
    obj = known_object(entry, filename, target, settings.hover)
    event.append(obj)
    _neighbours(event, obj, target.uuid, entry["telfhash"], f"sha256 {entry['sha256']}", settings, entry["sha256"])
    return _results(event)


def answer_digest(value: Any, target: Target, settings: Settings) -> dict:
    if not isinstance(value, str) or not tc.is_digest(value):
        raise ModuleError(f"not a telfhash: {str(value)[:100]!r} (expected t1 + 70 hex, T1 + 70 hex or 70 hex)")
    if not settings.index_path:
        raise Nothing("telfhash: no telfhash index is configured (index_path), so no known sample can be shown")
    if settings.max_results == 0:
        raise Nothing("telfhash: max_results is 0, so no known sample is shown")
    event: list[FileObject] = []
    if _neighbours(event, None, target.uuid, value, f"telfhash {misp_hex(value)[:16]}…", settings, None) == 0:
        n = known.size(settings.index_path)
        raise Nothing(
            f"telfhash: no known sample within distance {settings.max_distance} "
            f"among the {n if n is not None else '?'} samples of the telfhash index"
        )
    return _results(event)


def _nothing(message: str, settings: Settings) -> dict:
    if settings.hover:  # MISP's hover shows "type: value" for attributes; an empty answer is "Empty results"
        return {"results": {"Attribute": [{"type": "text", "value": message}]}}
    return {"results": {}, "comment": message}


# ----------------------------------------------------------------------------- requests


def _split_sample_value(value: Any) -> tuple[str | None, str | None]:
    """``"name|md5"`` (malware-sample) -> (name, md5)."""
    if not isinstance(value, str):
        return None, None
    name, sep, md5 = value.rpartition("|")
    if not sep:
        return value or None, None
    return name or None, md5.strip() or None


def _has_data(attribute: dict) -> bool:
    data = attribute.get("data")
    return isinstance(data, str) and bool(data.strip())


def sample_from_attribute(attribute: dict, limit: int) -> Sample:
    kind = attribute.get("type")
    if kind == "malware-sample":
        name, md5 = _split_sample_value(attribute.get("value"))
        text = attribute.get("data")
        if not isinstance(text, str) or not text.strip():
            raise SampleError("the malware-sample carries no data (MISP sends the file base64-encoded in 'data')")
        data, original = unzip_sample(text, md5, limit)  # decoded as the ZIP is read
        return Sample(data, name or original or md5 or "sample")
    if kind == "attachment":
        blob = decode_base64(attribute.get("data"), "attachment")
        if len(blob) > limit:
            raise SampleError(f"the attachment is {len(blob)} bytes, over the limit of {limit} (max_sample_mb)")
        value = attribute.get("value")
        return Sample(blob, value if isinstance(value, str) and value else "attachment")
    raise ModuleError(f"unsupported attribute type {kind!r}")


def _attribute_request(attribute: dict, settings: Settings) -> dict:
    missing = [k for k in ("type", "uuid", "value") if k not in attribute]
    if missing:
        raise ModuleError(f"the attribute lacks {', '.join(missing)} (needs at least a type, a value and a uuid)")
    if not isinstance(attribute["uuid"], str) or not attribute["uuid"].strip():
        raise ModuleError("the attribute's uuid must be a non-empty string")
    kind = attribute["type"]
    if not isinstance(kind, str) or kind not in ATTRIBUTE_TYPES:
        raise ModuleError(f"unsupported attribute type {kind!r}: use malware-sample, attachment or telfhash")
    object_id = _object_id(attribute.get("object_id"))
    holder = attribute.get("Object")  # not sent by MISP today, but the object's uuid when a caller does
    object_uuid = None
    if object_id and isinstance(holder, dict) and _object_id(holder.get("id")) == object_id:
        object_uuid = holder.get("uuid") if isinstance(holder.get("uuid"), str) else None
    target = Target(attribute["uuid"], object_id=object_id, object_uuid=object_uuid)
    if kind == "telfhash":
        return answer_digest(attribute.get("value"), target, settings)
    if not _has_data(attribute):  # hover, or MISP could not read the file: what the index knows
        if "data" in attribute and not isinstance(attribute["data"], (str, type(None))):
            raise ModuleError("the attribute's data must be base64 text")
        name = _split_sample_value(attribute.get("value"))[0] if kind == "malware-sample" else attribute.get("value")
        why = "MISP sends no file on hover" if settings.hover else "the request carries no file data"
        return answer_known(
            known.hashes_in(attribute.get("value")), name if isinstance(name, str) else None, target, settings, why
        )
    sample = sample_from_attribute(attribute, settings.max_sample_bytes)
    return answer_sample(sample, target, settings)


def _object_request(obj: Any, settings: Settings) -> dict:
    if not isinstance(obj, dict):
        raise ModuleError("the request's object must be a MISP object")
    if obj.get("name") not in OBJECT_TYPES:
        raise ModuleError(f"unsupported object {obj.get('name')!r}: only file objects are accepted")
    uuid = obj.get("uuid")
    if not isinstance(uuid, str) or not uuid:
        raise ModuleError("the file object has no uuid")
    raw_attributes = obj.get("Attribute") or []
    if not isinstance(raw_attributes, list):
        raise ModuleError("the file object's Attribute must be a list")
    attributes = [a for a in raw_attributes if isinstance(a, dict)]
    target = Target(uuid, object_id=_object_id(obj.get("id")), object_uuid=uuid, is_object=True)
    carriers = [a for a in attributes if a.get("type") in SAMPLE_TYPES and _has_data(a)]
    filename = next((a.get("value") for a in attributes if a.get("object_relation") == "filename"), None)
    filename = filename if isinstance(filename, str) and filename else None
    if carriers:
        carrier = next((a for a in carriers if a.get("type") == "malware-sample"), carriers[0])
        sample = sample_from_attribute(carrier, settings.max_sample_bytes)
        if filename:
            sample.filename = filename
        return answer_sample(sample, target, settings)
    digests = [a.get("value") for a in attributes if a.get("type") == "telfhash"]
    if digests:
        return answer_digest(digests[0], replace(target, object_id=None), settings)
    hashes: list[str] = []
    for relation in HASH_RELATIONS:
        for a in attributes:
            if a.get("object_relation") == relation or a.get("type") == relation:
                hashes += [h for h in known.hashes_in(a.get("value")) if h not in hashes]
    for a in attributes:
        if a.get("type") == "malware-sample":
            hashes += [h for h in known.hashes_in(a.get("value")) if h not in hashes]
    return answer_known(hashes, filename, target, settings, "the file object carries no sample data")


def _dispatch(request: dict, settings: Settings) -> dict:
    attribute = request.get("attribute")
    if attribute is None and request.get("object") is not None:
        return _object_request(request["object"], settings)
    if not isinstance(attribute, dict):
        raise ModuleError(
            "this module requires an 'attribute' (malware-sample, attachment or telfhash) or a file 'object'"
        )
    return _attribute_request(attribute, settings)


def _answer(request: dict, settings: Settings) -> dict:
    try:
        return _dispatch(request, settings)
    except Nothing as exc:
        return _nothing(str(exc), settings)


def expand(request: Any, *, hover: bool = False) -> dict:
    """Answer one MISP request (already parsed from JSON). Never raises."""
    try:
        if not isinstance(request, dict):
            raise ModuleError("the request must be a JSON object")
        settings = settings_from_config(request.get("config"), hover=hover)
        if settings.timeout:
            return _with_deadline(_answer, request, settings)
        return _answer(request, settings)
    except (ModuleError, SampleError) as exc:
        return {"error": str(exc)}
    except Exception as exc:
        log.exception("telfhash module failed")
        return {"error": f"internal error in the telfhash module: {type(exc).__name__}: {exc}"}


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
            "Hover: what the local telfhash index knows of a malware-sample or attachment (by the MD5/SHA-1/"
            "SHA-256 its value carries) or of a telfhash: its telfhash and nearest known samples."
        )
    else:
        description = (
            "The telfhash (ELF symbol TLSH) of a malware-sample, attachment or file object, added to the file "
            "object; with a local telfhash index configured, also the known samples within a distance."
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
            "characters MISP validates. Files without a telfhash (not ELF, too few symbols) add nothing. With "
            "index_path set, returns the known samples within max_distance (default 50), at most max_results, as "
            "file objects (to_ids off) whose comment gives the distance."
        ),
        "references": ["https://github.com/trendmicro/telfhash"],
        "input": "malware-sample, attachment or telfhash attribute; file object carrying one of them or its hashes.",
        "output": "file object with filename, size-in-bytes, md5, sha1, sha256 and telfhash; similar known samples.",
    }


def mispattributes() -> dict:
    return {
        "input": list(ATTRIBUTE_TYPES) + list(OBJECT_TYPES),
        "output": ["telfhash", "md5", "sha1", "sha256", "filename", "size-in-bytes"],
        "format": "misp_standard",
    }


PRELOAD_ENV = "TELFHASH_MISP_PRELOAD"  # set: load the compiled kernels at start, in the background


def _preload() -> None:
    try:
        from telfhash_core.similarity.tlshdist import encode, one_to_many

        from . import zipcrypto

        zipcrypto.kernel()
        probe = "t1" + "0" * 6 + "a5" * 32
        one_to_many(encode([probe]), probe)
        log.info("telfhash: compiled kernels loaded")
    except Exception as exc:  # noqa: BLE001 - only a warm-up: the first request reports any problem
        log.warning("telfhash: preloading the compiled kernels failed: %s", exc)


def _warm_up() -> None:
    """The compiled kernels (numba, ~110 MiB; compiled once per install, ~6 s, then cached on disk)
    load on first use, unless TELFHASH_MISP_PRELOAD asks for them at start (in a thread, so the
    modules are listed at once)."""
    if os.environ.get(PRELOAD_ENV):
        import threading

        threading.Thread(target=_preload, name="telfhash-preload", daemon=True).start()


_warm_up()
