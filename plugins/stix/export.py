"""Telfhash clusters as a STIX 2.1 bundle.

The bundle holds, in this order:

* the producer's Identity (and the project's own, which publishes the Extension Definition);
* the Extension Definition of the ``telfhash cluster`` property-extension;
* per cluster: a Grouping (``context: malware-analysis``) carrying the extension, a Malware
  family with ``sample_refs``, an Indicator whose pattern enumerates the members' telfhashes,
  and the ``indicates`` Relationship;
* one File per sample, with standard hashes only (MD5, SHA-1, SHA-256) unless a telfhash key is
  asked for.

Objects are plain dictionaries written in a fixed key order; ids are UUIDv5 over the content,
so the same input gives the same ids and order (and the same bytes for the same timestamp).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from telfhash_core.digest import DEFAULT_THRESHOLD, distance, is_digest, normalize
from telfhash_core.result import Result

# Our namespace for the ids of the objects we produce (SDOs, SROs, bundles).
NAMESPACE = uuid.UUID("5c0d981b-1f1b-40b9-9e26-5e3f28f2c83c")
# The STIX 2.1 namespace for deterministic SCO ids (section 2.9 of the specification).
SCO_NAMESPACE = uuid.UUID("00abedb4-aa42-466c-9c01-fed23315a9b7")

EXTENSION_ID = "extension-definition--1e6507bc-d6fa-48a6-b047-009557ebe233"
EXTENSION_VERSION = "1.1.0"
PROJECT_IDENTITY_ID = "identity--003b9e40-c313-489e-a1f5-6c717aa66af2"
# Fixed objects (project identity, extension definition) carry a fixed timestamp: the same
# object with the same id must not appear with different versions.
FIXED_TIMESTAMP = "2026-11-01T00:00:00.000Z"
# The extension definition's version 1.1.0 (schema with bounds) is a new version of the object:
# same ``created``, later ``modified``.
EXTENSION_MODIFIED = "2026-12-01T00:00:00.000Z"
SCHEMA_FILE = Path(__file__).with_name("telfhash-cluster-extension.schema.json")

# Keys under which the telfhash may go into File ``hashes`` (opt-in).
TELFHASH_KEYS = ("TELFHASH", "x_telfhash")

# pyelftools machine names -> STIX processor-architecture-ov (only values in the vocabulary).
_ARCH_OV = {
    "x64": "x86-64",
    "x86": "x86",
    "ARM": "arm",
    "AArch64": "arm",
    "MIPS": "mips",
    "PowerPC": "powerpc",
    "64-bit PowerPC": "powerpc",
    "SPARC": "sparc",
    "SPARC v9 64-bit": "sparc",
    "Intel IA-64": "ia-64",
    "Alpha": "alpha",
}


class ExportError(ValueError):
    """The input cannot be exported (words for a person in the message)."""


@dataclass
class Sample:
    """One ELF sample as it goes into the bundle."""

    file: str
    telfhash: str  # t1 + 70 hex
    sha256: str
    md5: str | None = None
    sha1: str | None = None
    arch: str | None = None
    size: int | None = None
    method: str | None = None  # how the telfhash was computed: "dynsym"/"symtab", "fallback"

    @property
    def hashes(self) -> dict[str, str]:
        h: dict[str, str] = {}
        if self.md5:
            h["MD5"] = self.md5
        if self.sha1:
            h["SHA-1"] = self.sha1
        h["SHA-256"] = self.sha256
        return h

    @property
    def file_id(self) -> str:
        return file_id(self.hashes)


@dataclass
class ClusterSpec:
    """A cluster reduced to what the bundle needs (built from a ``Cluster`` or its dict)."""

    members: list[Sample]
    representative: Sample
    threshold: int
    linkage: str | None = None
    max_distance: int | None = None
    max_distance_exact: bool = True


@dataclass
class ExportReport:
    """What was left out and why (per item), besides the bundle itself."""

    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- ids and time


def _ts(value: Any = None) -> str:
    """A STIX timestamp (UTC, millisecond precision) from None (now, or $SOURCE_DATE_EPOCH),
    a datetime, epoch seconds, or an ISO 8601 string."""
    if value is None:
        epoch = os.environ.get("SOURCE_DATE_EPOCH")
        value = int(epoch) if epoch and epoch.strip().isdigit() else _dt.datetime.now(_dt.timezone.utc)
    if isinstance(value, (int, float)):
        value = _dt.datetime.fromtimestamp(value, _dt.timezone.utc)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            value = _dt.datetime.fromisoformat(text)
        except ValueError:
            raise ExportError(f"not an ISO 8601 timestamp: {value!r}") from None
    if not isinstance(value, _dt.datetime):
        raise ExportError(f"not a timestamp: {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.timezone.utc)
    value = value.astimezone(_dt.timezone.utc)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def _sdo_id(kind: str, *parts: str) -> str:
    """A deterministic id for a domain/relationship object or bundle.  STIX 2.1 wants UUIDv4
    there (random-looking, version 4): the 122 free bits come from a SHA-256 of the content key
    and our namespace, so the same content always gets the same id."""
    digest = hashlib.sha256(NAMESPACE.bytes + (kind + chr(0) + chr(0).join(parts)).encode("utf-8")).digest()
    return f"{kind}--{uuid.UUID(bytes=digest[:16], version=4)}"


def file_id(hashes: dict[str, str], name: str | None = None) -> str:
    """The deterministic File id of STIX 2.1 (UUIDv5 over one hash chosen MD5 > SHA-1 >
    SHA-256 > SHA-512, and the name when there is one), as any conforming producer computes it."""
    chosen = None
    for key in ("MD5", "SHA-1", "SHA-256", "SHA-512"):
        if key in hashes:
            chosen = {key: hashes[key]}
            break
    if chosen is None and hashes:
        key = next(iter(hashes))
        chosen = {key: hashes[key]}
    contributing: dict[str, Any] = {}
    if chosen:
        contributing["hashes"] = chosen
    if name is not None:
        contributing["name"] = name
    if not contributing:
        raise ExportError("a File needs hashes or a name")
    # RFC 8785 canonical JSON; for these ASCII strings that is sorted keys without spaces.
    data = json.dumps(contributing, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"file--{uuid.uuid5(SCO_NAMESPACE, data)}"


# ----------------------------------------------------------------------------- inputs


def _hash_file(path: str) -> tuple[str, str, str] | None:
    try:
        md5, sha1, sha256 = hashlib.md5(), hashlib.sha1(), hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                md5.update(block)
                sha1.update(block)
                sha256.update(block)
        return md5.hexdigest(), sha1.hexdigest(), sha256.hexdigest()
    except OSError:
        return None


def _is_hex(value: Any, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and all(c in "0123456789abcdefABCDEF" for c in value)


def to_sample(item: Any, *, hash_files: bool = True, report: ExportReport | None = None) -> Sample | None:
    """A :class:`Sample` from a ``Result``, a result dict (``telfhash -f json/jsonl --sha256``), or
    a path; None (with the reason in ``report``) when it has no telfhash or no SHA-256."""
    report = report if report is not None else ExportReport()
    if isinstance(item, (str, os.PathLike)):
        from telfhash_core import hash_file

        try:
            item = hash_file(item, sha256=True)
        except (OSError, ValueError) as exc:  # e.g. a NUL byte in the name
            report.skipped.append(f"{item!r}: cannot hash ({exc})")
            return None
    if isinstance(item, dict):
        try:
            item = Result.from_dict(item)
        except (ValueError, TypeError, AttributeError) as exc:
            report.skipped.append(f"{_get(item, 'file')!r}: not a usable result ({exc})")
            return None
    if not isinstance(item, Result):
        report.skipped.append(f"{item!r}: not a result")
        return None
    if not isinstance(item.telfhash, str) or not is_digest(item.telfhash):
        report.skipped.append(f"{item.file!s}: no telfhash ({_reason_text(item)})")
        return None
    # results read from JSON may hold anything: keep only well-typed values
    name = item.file if isinstance(item.file, str) else ""
    arch = item.arch if isinstance(item.arch, str) and item.arch else None
    size = item.size if isinstance(item.size, int) and not isinstance(item.size, bool) and item.size >= 0 else None
    md5 = sha1 = None
    sha256 = item.sha256.lower() if _is_hex(item.sha256, 64) else None
    if hash_files and name and "\0" not in name and os.path.isfile(name):
        digests = _hash_file(name)
        if digests is not None:
            if sha256 and digests[2] != sha256:
                report.warnings.append(f"{name}: the file's SHA-256 differs from the one given; using the file's")
            md5, sha1, sha256 = digests
            if size is None:
                try:
                    size = os.path.getsize(name)
                except OSError:
                    pass
    if sha256 is None:
        report.skipped.append(f"{name or '?'}: no SHA-256 (hash with --sha256, or give readable paths)")
        return None
    method = item.method if isinstance(getattr(item, "method", None), str) else None
    return Sample(
        file=name,
        telfhash=normalize(item.telfhash, "t1"),
        sha256=sha256,
        md5=md5,
        sha1=sha1,
        arch=arch,
        size=size,
        method=method,
    )


def _reason_text(item: Result) -> str:
    try:
        return str(item.msg or item.reference_telfhash)
    except Exception:
        return "no usable digest"


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def to_cluster_spec(
    cluster: Any, samples_by_file: dict[str, Sample], *, threshold: int, linkage: str | None, report: ExportReport
) -> ClusterSpec | None:
    """Reduce a ``telfhash_core.cluster.Cluster`` (or its ``to_dict()``) to a :class:`ClusterSpec`."""
    members = _get(cluster, "members") or []
    if isinstance(members, str) or not isinstance(members, (list, tuple)):
        report.skipped.append(f"cluster {cluster!r}: 'members' is not a list")
        return None
    digests = _get(cluster, "digests") or _get(cluster, "telfhashes") or []
    chosen: list[Sample] = []
    for i, m in enumerate(members):
        name = m if isinstance(m, str) else _get(m, "file")
        sample = samples_by_file.get(name) if isinstance(name, str) else None
        if sample is None and isinstance(m, (dict, Result)):
            sample = to_sample(m, report=report)
        elif sample is None and isinstance(name, str) and "\0" not in name and os.path.isfile(name):
            sample = to_sample(name, report=report)  # a member named by path only: hash it now
            if sample is not None:
                samples_by_file[name] = sample
        if sample is None:
            report.skipped.append(f"cluster member {name!r}: no sample with a telfhash and SHA-256")
            continue
        if i < len(digests) and isinstance(digests[i], str) and is_digest(digests[i]):
            if normalize(digests[i], "t1") != sample.telfhash:
                report.warnings.append(f"cluster member {name!r}: the cluster's digest differs from the sample's")
        chosen.append(sample)
    # one File per sample: the same content under two names is one member
    unique: dict[str, Sample] = {}
    for s in chosen:
        unique.setdefault(s.file_id, s)
    chosen = sorted(unique.values(), key=lambda s: (s.telfhash, s.sha256))
    if not chosen:
        return None
    rep = _get(cluster, "representative")
    rep_name = rep if isinstance(rep, str) else _get(rep, "file")
    representative = None
    for s in chosen:
        if s.file == rep_name:
            representative = s
    if representative is None and isinstance(rep_name, str) and is_digest(rep_name):
        t1 = normalize(rep_name, "t1")
        representative = next((s for s in chosen if s.telfhash == t1), None)
    max_d = _get(cluster, "max_distance")
    exact = _get(cluster, "exact", True)
    if representative is None or not isinstance(max_d, int) or isinstance(max_d, bool) or max_d < 0:
        medoid, largest, measured_all = _stats(chosen)
        representative = representative or medoid
        if not isinstance(max_d, int) or isinstance(max_d, bool) or max_d < 0:
            max_d, exact = largest, measured_all
    c_threshold = _get(cluster, "threshold")
    c_linkage = _get(cluster, "linkage")
    return ClusterSpec(
        members=chosen,
        representative=representative,
        threshold=c_threshold if isinstance(c_threshold, int) and not isinstance(c_threshold, bool) else threshold,
        linkage=c_linkage if isinstance(c_linkage, str) else linkage,
        max_distance=max_d,
        max_distance_exact=exact is not False,
    )


STATS_ROWS = 2000  # rows of the distance matrix computed for a cluster's medoid and diameter


def _stats(members: list[Sample]) -> tuple[Sample, int, bool]:
    """(medoid, largest distance, exact) for clusters given without them: distance rows from
    up to STATS_ROWS members (evenly spread) to all; exact when every row was computed."""
    from telfhash_core.similarity.tlshdist import encode, one_to_many

    enc = encode([m.telfhash for m in members])
    step = max(1, -(-len(members) // STATS_ROWS))
    best: tuple | None = None
    largest = 0
    for i in range(0, len(members), step):
        row = one_to_many(enc, i)
        largest = max(largest, int(row.max()))
        rank = (int(row.sum()), members[i].telfhash, members[i].sha256)
        if best is None or rank < best[0]:
            best = (rank, members[i])
    return best[1], largest, step == 1


def cluster_items(items: list[Any], threshold: int) -> tuple[list, list]:
    """Cluster with the core's clustering (``telfhash_core.cluster.cluster``)."""
    try:
        from telfhash_core.similarity.cluster import cluster
    except ImportError as exc:
        raise ExportError(
            f"clustering is not available ({exc}); pass clusters explicitly (e.g. --clusters FILE)"
        ) from None
    return cluster(items, threshold=threshold)


# ----------------------------------------------------------------------------- objects


def project_identity() -> dict:
    return {
        "type": "identity",
        "spec_version": "2.1",
        "id": PROJECT_IDENTITY_ID,
        "created": FIXED_TIMESTAMP,
        "modified": FIXED_TIMESTAMP,
        "name": "telfhash-core",
        "description": "Publisher of the telfhash cluster STIX extension.",
        "identity_class": "system",
    }


def producer_identity(name: str, identity_class: str = "organization") -> dict:
    return {
        "type": "identity",
        "spec_version": "2.1",
        "id": _sdo_id("identity", "producer", name, identity_class),
        "created": FIXED_TIMESTAMP,
        "modified": FIXED_TIMESTAMP,
        "name": name,
        "identity_class": identity_class,
    }


def extension_schema() -> dict:
    """The JSON schema of the extension's properties (shipped with the package)."""
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def extension_definition() -> dict:
    schema_text = json.dumps(extension_schema(), sort_keys=True, separators=(",", ":"))
    return {
        "type": "extension-definition",
        "spec_version": "2.1",
        "id": EXTENSION_ID,
        "created_by_ref": PROJECT_IDENTITY_ID,
        "created": FIXED_TIMESTAMP,
        "modified": EXTENSION_MODIFIED,
        "name": "telfhash cluster",
        "description": (
            "Parameters and members of a cluster of ELF samples whose telfhashes (Trend Micro's "
            "TLSH of the ELF symbol names) lie within a TLSH distance threshold; a property-extension "
            "on grouping objects."
        ),
        "schema": schema_text,
        "version": EXTENSION_VERSION,
        "extension_types": ["property-extension"],
    }


def _hex(t1: str) -> str:
    return normalize(t1, "hex").lower()


def file_object(sample: Sample, telfhash_key: str | None = None, with_size: bool = True) -> dict:
    hashes = sample.hashes
    obj: dict[str, Any] = {"type": "file", "spec_version": "2.1", "id": file_id(hashes)}
    if telfhash_key:
        hashes = dict(hashes)
        hashes[telfhash_key] = _hex(sample.telfhash)
    obj["hashes"] = hashes
    if with_size and isinstance(sample.size, int) and sample.size >= 0:
        obj["size"] = sample.size
    return obj


# Up to this many values a pattern is a chain of ``=`` comparisons joined by OR (what simple
# pattern readers such as misp-stix's understand); beyond, one ``IN (...)`` comparison: the
# pattern grammar nests OR chains, and stix2-patterns (used by stix2 and stix2-validator)
# exceeds Python's recursion limit on a few hundred of them.
MAX_OR_VALUES = 100


def indicator_pattern(telfhashes: Iterable[str], key: str = "TELFHASH") -> str:
    """``[file:hashes.KEY = 'hex' OR ...]`` (or ``IN (...)`` for many values): STIX patterns have
    no similarity operator, so the members' telfhashes are enumerated (70 hex, lower case, as
    misp-stix writes them)."""
    values = sorted({_hex(t) for t in telfhashes})
    if len(values) > MAX_OR_VALUES:
        return f"[file:hashes.{key} IN (" + ", ".join(f"'{v}'" for v in values) + ")]"
    return "[" + " OR ".join(f"file:hashes.{key} = '{v}'" for v in values) + "]"


def _cluster_key(spec: ClusterSpec) -> str:
    return f"{spec.threshold}:" + ",".join(sorted(s.sha256 for s in spec.members))


# misp-stix reads a bundle with its "internal" parser -- the only one that turns a telfhash into
# a MISP ``telfhash`` attribute -- when a Grouping carries this label; its objects are then read
# by their ``misp:name`` labels (see docs/stix.md, "MISP").
MISP_TOOL_LABEL = 'misp:tool="MISP-STIX-Converter"'
MISP_FILE_LABELS = ['misp:name="file"', 'misp:meta-category="file"', 'misp:to_ids="True"']
MISP_PATTERN_LABELS = ['misp:name="stix2-pattern"', 'misp:meta-category="misc"']
MISP_YARA_LABELS = ['misp:name="yara"', 'misp:meta-category="misc"']
MISP_MALWARE_LABELS = ['misp:galaxy-name="Malware"', 'misp:galaxy-type="malware"']


def sample_pattern(sample: Sample) -> str:
    """One sample's hashes, size and telfhash (70 hex, as MISP stores it) in one observation."""
    parts = []
    if sample.md5:
        parts.append(f"file:hashes.MD5 = '{sample.md5}'")
    if sample.sha1:
        parts.append(f"file:hashes.'SHA-1' = '{sample.sha1}'")
    parts.append(f"file:hashes.'SHA-256' = '{sample.sha256}'")
    if isinstance(sample.size, int) and sample.size >= 0:
        parts.append(f"file:size = {sample.size}")
    parts.append(f"file:hashes.TELFHASH = '{_hex(sample.telfhash)}'")
    return "[" + " AND ".join(parts) + "]"


def sample_indicator(sample: Sample, *, created_by: str | None, timestamp: str, misp_layout: bool) -> dict:
    """The Indicator of one member: its hashes with its telfhash.  misp-stix turns it into a
    MISP ``file`` object holding the SHA-256 (MD5, SHA-1, size) and the ``telfhash`` attribute."""
    ind: dict[str, Any] = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": _sdo_id("indicator", "sample", sample.sha256),
        **({"created_by_ref": created_by} if created_by else {}),
        "created": timestamp,
        "modified": timestamp,
        "name": f"ELF sample {sample.sha256}",
        "description": "An ELF sample of a telfhash cluster: its hashes and its telfhash.",
        "pattern": sample_pattern(sample),
        "pattern_type": "stix",
        "pattern_version": "2.1",
        "valid_from": timestamp,
    }
    if misp_layout:
        ind["labels"] = list(MISP_FILE_LABELS)
    return ind


def yara_rule(spec: ClusterSpec, grouping_id: str, description: str) -> str:
    """The cluster's YARA rule (without imports); see telfhash_plugins.yara.rules."""
    from telfhash_plugins.yara.rules import RuleMember, cluster_rule, rule_name

    return cluster_rule(
        rule_name(grouping_id),
        [RuleMember(s.sha256, s.telfhash, s.method) for s in spec.members],
        threshold=spec.threshold,
        description=description,
        reference=grouping_id,
    )


def cluster_objects(
    spec: ClusterSpec,
    *,
    created_by: str | None,
    timestamp: str,
    pattern_key: str,
    misp_layout: bool = True,
    yara: bool = True,
) -> list[dict]:
    key = _cluster_key(spec)
    short = _sdo_id("grouping", key).split("--")[1][:8]
    files = [s.file_id for s in spec.members]
    archs = sorted({s.arch for s in spec.members if s.arch})
    exec_envs = sorted({_ARCH_OV[a] for a in archs if a in _ARCH_OV})
    n = len(spec.members)
    label = f"telfhash cluster {short}"
    what = f"{n} ELF sample{'s' if n != 1 else ''}" + (
        f" on {len(archs)} architecture{'s' if len(archs) != 1 else ''} ({', '.join(archs)})" if archs else ""
    )

    malware: dict[str, Any] = {
        "type": "malware",
        "spec_version": "2.1",
        "id": _sdo_id("malware", key),
        **({"created_by_ref": created_by} if created_by else {}),
        "created": timestamp,
        "modified": timestamp,
        "name": label,
        "description": f"{what} whose telfhashes are within TLSH distance {spec.threshold} of each other.",
        "is_family": True,
    }
    if exec_envs:
        malware["architecture_execution_envs"] = exec_envs
    malware["sample_refs"] = files

    indicator: dict[str, Any] = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": _sdo_id("indicator", key),
        **({"created_by_ref": created_by} if created_by else {}),
        "created": timestamp,
        "modified": timestamp,
        "name": f"{label}: member telfhashes",
        "description": (
            "Exact telfhashes of the cluster's members (STIX patterns cannot express a TLSH distance; "
            f"files within {spec.threshold} of these are likely relatives)."
        ),
        "pattern": indicator_pattern((s.telfhash for s in spec.members), pattern_key),
        "pattern_type": "stix",
        "pattern_version": "2.1",
        "valid_from": timestamp,
    }
    relationship = {
        "type": "relationship",
        "spec_version": "2.1",
        "id": _sdo_id("relationship", indicator["id"], "indicates", malware["id"]),
        **({"created_by_ref": created_by} if created_by else {}),
        "created": timestamp,
        "modified": timestamp,
        "relationship_type": "indicates",
        "source_ref": indicator["id"],
        "target_ref": malware["id"],
    }
    rep = spec.representative
    ext: dict[str, Any] = {"extension_type": "property-extension", "threshold": spec.threshold}
    if spec.linkage:
        ext["linkage"] = spec.linkage
    ext["size"] = n
    if spec.max_distance is not None:
        ext["max_distance"] = spec.max_distance
        if not spec.max_distance_exact:
            ext["max_distance_exact"] = False
    ext["representative_ref"] = rep.file_id
    ext["representative_telfhash"] = rep.telfhash
    if archs:
        ext["architectures"] = archs
    members = []
    for s in spec.members:
        m: dict[str, Any] = {"file_ref": s.file_id, "telfhash": s.telfhash}
        if s.arch:
            m["arch"] = s.arch
        m["distance_to_representative"] = distance(s.telfhash, rep.telfhash)
        members.append(m)
    ext["members"] = members
    gid = _sdo_id("grouping", key)
    extra: list[dict] = []
    if yara:
        from telfhash_plugins.yara.rules import ruleset

        yind: dict[str, Any] = {
            "type": "indicator",
            "spec_version": "2.1",
            "id": _sdo_id("indicator", "yara", key),
            **({"created_by_ref": created_by} if created_by else {}),
            "created": timestamp,
            "modified": timestamp,
            "name": f"{label}: YARA rule",
            "description": (
                "Matches the cluster's members: by elf.telfhash() where the engine computes the reference's value, "
                "and by each member's SHA-256 (the engines have no telfhash for files without a symbol table)."
            ),
            "pattern": ruleset([yara_rule(spec, gid, f"{label}: {what}, threshold {spec.threshold}")]),
            "pattern_type": "yara",
            "valid_from": timestamp,
        }
        yrel = {
            "type": "relationship",
            "spec_version": "2.1",
            "id": _sdo_id("relationship", yind["id"], "indicates", malware["id"]),
            **({"created_by_ref": created_by} if created_by else {}),
            "created": timestamp,
            "modified": timestamp,
            "relationship_type": "indicates",
            "source_ref": yind["id"],
            "target_ref": malware["id"],
        }
        extra += [yind, yrel]
    samples = (
        [sample_indicator(s, created_by=created_by, timestamp=timestamp, misp_layout=True) for s in spec.members]
        if misp_layout
        else []
    )
    if misp_layout:
        malware["labels"] = list(MISP_MALWARE_LABELS)
        indicator["labels"] = list(MISP_PATTERN_LABELS)
        if yara:
            extra[0]["labels"] = list(MISP_YARA_LABELS)
    grouping = {
        "type": "grouping",
        "spec_version": "2.1",
        "id": gid,
        **({"created_by_ref": created_by} if created_by else {}),
        "created": timestamp,
        "modified": timestamp,
        "name": label,
        "description": f"{what}: one family by telfhash (threshold {spec.threshold}).",
        "context": "malware-analysis",
        "object_refs": [
            malware["id"],
            indicator["id"],
            relationship["id"],
            *(o["id"] for o in extra),
            *files,
            *(o["id"] for o in samples),
        ],
        **({"labels": [MISP_TOOL_LABEL]} if misp_layout else {}),
        "extensions": {EXTENSION_ID: ext},
    }
    return [grouping, malware, indicator, relationship, *extra, *samples]


# ----------------------------------------------------------------------------- bundle


def export_bundle(
    results: Iterable[Any] | None = None,
    clusters: Iterable[Any] | None = None,
    *,
    threshold: int = DEFAULT_THRESHOLD,
    linkage: str | None = "single",
    telfhash_key: str | None = None,
    identity_name: str | None = None,
    timestamp: Any = None,
    include_singletons: bool = False,
    min_size: int = 2,
    hash_files: bool = True,
    report: ExportReport | None = None,
    misp_layout: bool = True,
    yara: bool = True,
    previous: Any = None,
) -> dict:
    """A STIX 2.1 bundle (a dict) for ``clusters`` of ``results``.

    ``results``: Results, result dicts (``telfhash -f json --sha256``) or paths.  ``clusters``:
    ``telfhash_core.cluster.Cluster`` objects or their dicts; when None, ``results`` are clustered
    at ``threshold``.  ``telfhash_key`` (``"TELFHASH"`` or ``"x_telfhash"``) also puts each
    telfhash into its File's ``hashes`` (a custom hash: see docs/stix.md for what that costs).
    ``timestamp`` (ISO 8601, datetime or epoch seconds; default ``$SOURCE_DATE_EPOCH`` or now)
    is every produced object's ``created``/``modified``.  A cluster of fewer than ``min_size``
    distinct samples is not exported as a cluster (its samples become plain Files only with
    ``include_singletons``).  ``linkage`` is recorded in the extension when the clusters do not
    say (the core's clustering is single linkage: connected components).  Skipped items are
    listed in ``report``.

    ``misp_layout`` (default): the labels and per-sample Indicators through which misp-stix
    gives MISP a ``file`` object with the ``telfhash`` attribute per sample (docs/stix.md,
    "MISP").  ``yara`` (default): per cluster an Indicator with a YARA rule.  ``previous``: an
    earlier bundle (dict, or a list of objects) of the same clusters: unchanged objects keep
    its timestamps, changed ones its ``created`` with a later ``modified``.
    """
    report = report if report is not None else ExportReport()
    if telfhash_key is not None and telfhash_key not in TELFHASH_KEYS:
        raise ExportError(f"telfhash key must be one of {', '.join(TELFHASH_KEYS)}, not {telfhash_key!r}")
    if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 0:
        raise ExportError(f"threshold must be a whole number ≥ 0, not {threshold!r}")
    ts = _ts(timestamp)
    items = list(results or [])
    samples: list[Sample] = []
    by_file: dict[str, Sample] = {}
    for item in items:
        s = to_sample(item, hash_files=hash_files, report=report)
        if s is not None:
            samples.append(s)
            by_file.setdefault(s.file, s)
    if clusters is None:
        clusters, _ = cluster_items([_sample_result(s) for s in samples], threshold) if samples else ([], [])
    specs = []
    one_content: list[Sample] = []
    for c in clusters:
        spec = to_cluster_spec(c, by_file, threshold=threshold, linkage=linkage, report=report)
        if spec is not None and len(spec.members) >= max(1, min_size):
            specs.append(spec)
        elif spec is not None and len(spec.members) == 1 and len(_get(c, "members") or []) > 1:
            s1 = spec.members[0]
            report.warnings.append(
                f"a cluster of {len(_get(c, 'members'))} files holds one content ({s1.sha256}): "
                "not a cluster; exported as a File"
            )
            one_content.append(s1)
    specs.sort(key=_cluster_key)

    objects: list[dict] = [project_identity()]
    created_by = None  # no producer named: the clusters are not attributed to anyone
    if identity_name is not None and not isinstance(identity_name, str):
        raise ExportError(f"identity name must be text, not {identity_name!r}")
    if identity_name:
        ident = producer_identity(identity_name)
        objects.append(ident)
        created_by = ident["id"]
    objects.append(extension_definition())
    pattern_key = telfhash_key or "TELFHASH"
    files: dict[str, Sample] = {}
    seen_groups: set[str] = set()
    seen_objects: set[str] = set()
    for spec in specs:
        objs = cluster_objects(
            spec, created_by=created_by, timestamp=ts, pattern_key=pattern_key, misp_layout=misp_layout, yara=yara
        )
        if objs[0]["id"] in seen_groups:
            report.warnings.append(
                f"a cluster of {len(spec.members)} samples is given twice; exported once ({objs[0]['id']})"
            )
            continue
        seen_groups.add(objs[0]["id"])
        for o in objs:  # a sample Indicator is shared by every cluster the sample is in
            if o["id"] not in seen_objects:
                seen_objects.add(o["id"])
                objects.append(o)
        for s in spec.members:
            files.setdefault(s.file_id, s)
    loose: dict[str, Sample] = {}
    for s in one_content + (samples if include_singletons else []):  # samples outside every cluster
        if s.file_id not in files:
            loose.setdefault(s.file_id, s)
    files.update(loose)
    if loose and misp_layout:
        extra_objs = unclustered_objects(list(loose.values()), created_by, ts)
        objects.extend(o for o in extra_objs if o["id"] not in seen_objects)
    for fid in sorted(files, key=lambda i: (files[i].sha256, i)):
        objects.append(file_object(files[fid], telfhash_key))
    if previous is not None:
        objects = carry_versions(objects, _newest(previous))[0]
    bundle_id = _sdo_id("bundle", ts, *(f"{o['id']}@{o.get('modified', '')}" for o in objects))
    return {"type": "bundle", "id": bundle_id, "objects": objects}


UNCLUSTERED_LABEL = "telfhash:unclustered"


def unclustered_objects(samples: list[Sample], created_by: str | None, timestamp: str) -> list[dict]:
    """A Grouping of the samples outside every cluster (with their sample Indicators), so that a
    MISP import keeps them too; labelled so that readers do not take it for a cluster."""
    samples = sorted(samples, key=lambda s: s.sha256)
    inds = [sample_indicator(s, created_by=created_by, timestamp=timestamp, misp_layout=True) for s in samples]
    n = len(samples)
    grouping = {
        "type": "grouping",
        "spec_version": "2.1",
        "id": _sdo_id("grouping", "unclustered", *(s.sha256 for s in samples)),
        **({"created_by_ref": created_by} if created_by else {}),
        "created": timestamp,
        "modified": timestamp,
        "name": "telfhash: samples outside clusters",
        "description": (
            f"{n} ELF sample{'s' if n != 1 else ''} shared without a cluster (alone at the threshold, or one content)."
        ),
        "context": "unspecified",
        "object_refs": [*(s.file_id for s in samples), *(i["id"] for i in inds)],
        "labels": [MISP_TOOL_LABEL, UNCLUSTERED_LABEL],
    }
    return [grouping, *inds]


def _newest(previous: Any) -> dict[str, dict]:
    objs = previous.get("objects") if isinstance(previous, dict) else previous
    out: dict[str, dict] = {}
    for o in objs or []:
        if isinstance(o, dict) and isinstance(o.get("id"), str):
            cur = out.get(o["id"])
            if cur is None or str(o.get("modified", "")) > str(cur.get("modified", "")):
                out[o["id"]] = o
    return out


def _sample_result(s: Sample) -> Result:
    return Result(file=s.file, telfhash=s.telfhash, arch=s.arch, size=s.size, sha256=s.sha256)


# properties that say when, not what: two objects equal but for these are the same version
_TIME_KEYS = frozenset({"created", "modified", "valid_from"})


def same_content(a: dict, b: dict) -> bool:
    """True when two versions of an object say the same (timestamps aside)."""
    return {k: v for k, v in a.items() if k not in _TIME_KEYS} == {k: v for k, v in b.items() if k not in _TIME_KEYS}


def _later(ts: str, than: str) -> str:
    """``ts``, or one millisecond after ``than`` when ``ts`` is not later."""
    a, b = _dt.datetime.fromisoformat(_ts(ts)[:-1] + "+00:00"), _dt.datetime.fromisoformat(_ts(than)[:-1] + "+00:00")
    return _ts(a if a > b else b + _dt.timedelta(milliseconds=1))


def carry_versions(objects: list, previous: dict[str, dict], *, drop_unchanged: bool = False) -> tuple[list, int, int]:
    """Versions by the STIX 2.1 rules against ``previous`` (id -> the newest version known, from
    an earlier export or a TAXII collection): an object with the same content takes the known
    version's timestamps (or is dropped with ``drop_unchanged``); one with other content keeps
    the known ``created`` and gets a ``modified`` later than the known one.  Returns
    ``(objects, unchanged, changed)``."""
    out: list = []
    unchanged = changed = 0
    for o in objects:
        prev = previous.get(o["id"]) if isinstance(o, dict) and isinstance(o.get("id"), str) else None
        if prev is None:
            out.append(o)
            continue
        if "modified" not in o or same_content(o, prev):
            unchanged += 1
            if not drop_unchanged:
                o = dict(o)
                for k in ("created", "modified", "valid_from"):
                    if k in prev and k in o:
                        o[k] = prev[k]
                out.append(o)
            continue
        changed += 1
        o = dict(o)
        if isinstance(prev.get("created"), str):
            o["created"] = prev["created"]
        if isinstance(prev.get("modified"), str):
            try:
                o["modified"] = _later(o["modified"], prev["modified"])
            except (ValueError, ExportError):
                pass
        out.append(o)
    return out, unchanged, changed


def dumps(bundle: dict, indent: int | None = 2) -> str:
    """The bundle as JSON text (stable: key order as built, ASCII only)."""
    return json.dumps(bundle, indent=indent, ensure_ascii=True) + "\n"
