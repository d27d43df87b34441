"""Read telfhashes out of STIX 2.1 bundles (ours, MISP's via misp-stix, or anyone's), add them to
the local index, and find the local samples within a distance of a shared cluster.

Where a telfhash can be in a bundle:

* our Grouping extension (``members[].telfhash``, with the cluster's threshold);
* a File's ``hashes`` under a key that names telfhash in any case (``TELFHASH`` as misp-stix
  writes it, ``x_telfhash``), or a File property ``x_misp_telfhash`` / ``x_telfhash`` (what
  misp-stix writes for the telfhash of a MISP ``file`` object);
* an Indicator pattern comparing ``file:hashes.TELFHASH`` (any such key, quoted or not) or
  ``file:x_misp_telfhash`` with ``=`` or ``IN``.

Hostile bundles are expected: the reader checks the size before parsing, the nesting depth, the
STIX version, and reports each unusable object or dangling reference as a per-item problem while
the rest of the bundle is read.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from telfhash_core.digest import is_digest, normalize
from telfhash_core.result import Result

from .export import EXTENSION_ID

DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # a bundle larger than this is refused before parsing
DEFAULT_MAX_OBJECTS = 500_000
MAX_PATTERN_CHARS = 4 * 1024 * 1024

_ID_RE = re.compile(r"^[a-z][a-z0-9-]*--[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_TELF_PROPS = ("x_misp_telfhash", "x_telfhash")
# file:hashes.KEY / file:hashes.'KEY' / file:x_misp_telfhash, then = 'v' or IN ('v', ...)
_PATTERN_RE = re.compile(
    r"file:(?:hashes\.(?:'(?P<qkey>[^']{1,64})'|(?P<key>[A-Za-z0-9_-]{1,64}))|(?P<prop>x_[a-z0-9_]{0,40}telfhash))"
    r"\s*(?:(?P<eq>=)\s*'(?P<value>[^'\\]{0,128})'|(?P<in>IN)\s*\((?P<values>[^()]*)\))",
    re.IGNORECASE,
)
_QUOTED_RE = re.compile(r"'([^'\\]{0,128})'")
_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
_PATTERN_SHA_RE = re.compile(r"file:hashes\.(?:'SHA-256'|SHA256|'SHA256')\s*=\s*'([0-9a-fA-F]{64})'")


class BundleError(ValueError):
    """The input is not a usable STIX 2.1 bundle (the message says why, for a person)."""


@dataclass
class SharedDigest:
    """One telfhash named by a bundle, with where it came from."""

    telfhash: str  # t1 + 70 hex
    cluster: str  # id of the Grouping / Malware / Indicator / File that names it
    cluster_name: str | None = None
    sha256: str | None = None
    file_ref: str | None = None
    arch: str | None = None
    origin: str = ""  # "extension", "file-hashes", "file-property", "pattern"


@dataclass
class ImportReport:
    bundle_id: str | None = None
    digests: list[SharedDigest] = field(default_factory=list)
    # id -> {"name", "threshold", "size", "representative" (t1 digest), "representative_sha256"}
    clusters: dict[str, dict] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    objects: int = 0
    duplicates: list[str] = field(default_factory=list)  # ids that appear more than once
    producers: dict[str, str] = field(default_factory=dict)  # identity id -> name
    origin: str | None = None  # where the bundle was read from (a TAXII collection URL, a file)
    file_hashes: dict[str, dict[str, str]] = field(default_factory=dict)  # File id -> {"md5", "sha1"} (valid hex only)

    @property
    def source(self) -> str:
        return f"stix:{self.bundle_id or 'unknown'}"

    def telfhashes(self) -> set[str]:
        return {d.telfhash for d in self.digests}


@dataclass
class LocalMatch:
    """A local sample within the distance of a shared telfhash (the nearest one of a cluster)."""

    file: str
    telfhash: str
    cluster: str
    cluster_name: str | None
    shared_telfhash: str
    shared_sha256: str | None
    distance: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# ----------------------------------------------------------------------------- loading


def load_bundle(source: Any, *, max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    """A bundle dict from a path, bytes, text, a file object or a dict; BundleError if unusable."""
    if isinstance(source, dict):
        return check_bundle(source)
    limit = max_bytes if max_bytes and max_bytes > 0 else None  # 0 or None: no limit
    if isinstance(source, os.PathLike) or (isinstance(source, str) and not source.lstrip().startswith(("{", "["))):
        path = os.fspath(source)
        try:
            size = os.stat(path).st_size
        except OSError as exc:
            raise BundleError(f"{path}: cannot read ({exc.strerror or exc})") from None
        if limit is not None and size > limit:
            raise BundleError(
                f"{path}: {size} bytes is larger than the limit of {limit} (raise it with --max-bytes, 0: no limit)"
            )
        try:
            with open(path, "rb") as fh:
                data = fh.read(limit + 1) if limit is not None else fh.read()
        except OSError as exc:
            raise BundleError(f"{path}: cannot read ({exc.strerror or exc})") from None
    elif hasattr(source, "read"):
        data = source.read(limit + 1) if limit is not None else source.read()
    else:
        data = source
    if isinstance(data, str):
        data = data.encode("utf-8", errors="surrogatepass")
    if not isinstance(data, (bytes, bytearray)):
        raise BundleError(f"not a bundle: {type(source).__name__}")
    if limit is not None and len(data) > limit:
        raise BundleError(
            f"the bundle is larger than the limit of {limit} bytes (raise it with --max-bytes, 0: no limit)"
        )
    try:
        text = bytes(data).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BundleError(f"not JSON: not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        raise BundleError("not JSON: the input is empty")
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BundleError(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise BundleError("not a usable bundle: JSON nested too deeply") from None
    except ValueError as exc:  # e.g. a number of more than 4300 digits
        raise BundleError(f"not a usable bundle: {exc}") from None
    return check_bundle(parsed)


def check_bundle(parsed: Any, *, max_objects: int = DEFAULT_MAX_OBJECTS) -> dict:
    """Bundle-level checks: a ``bundle`` (or a TAXII envelope) of STIX 2.1 objects."""
    if not isinstance(parsed, dict):
        raise BundleError(f"not a STIX bundle: the JSON is a {type(parsed).__name__}, not an object")
    kind = parsed.get("type")
    if kind is None and isinstance(parsed.get("objects"), list):  # a TAXII envelope
        parsed = {"type": "bundle", "id": None, "objects": parsed["objects"]}
    elif kind != "bundle":
        raise BundleError(f"not a STIX bundle: type is {kind!r}, expected 'bundle'")
    if "spec_version" in parsed and parsed["spec_version"] != "2.1":  # STIX 2.0 bundles carry it
        sv = parsed["spec_version"]
        if isinstance(sv, str):
            raise BundleError(f"wrong spec_version: this is a STIX {sv!r} bundle; only STIX 2.1 is read")
        raise BundleError(f"the bundle's {_spec_version_problem(sv)}")
    objects = parsed.get("objects", [])
    if not isinstance(objects, list):
        raise BundleError("not a STIX bundle: 'objects' is not a list")
    if len(objects) > max_objects:
        raise BundleError(f"too many objects: {len(objects)} (limit {max_objects})")
    bid = parsed.get("id")
    if bid is not None and (not isinstance(bid, str) or not bid.startswith("bundle--") or not _ID_RE.match(bid)):
        raise BundleError(f"not a STIX bundle: invalid bundle id {str(bid)[:80]!r}")
    return parsed


# ----------------------------------------------------------------------------- reading


def _digest(value: Any) -> str | None:
    return normalize(value, "t1") if isinstance(value, str) and is_digest(value) else None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def read_bundle(bundle: Any, *, max_bytes: int = DEFAULT_MAX_BYTES) -> ImportReport:
    """Every telfhash a bundle names, and the problems met on the way (BundleError if unusable)."""
    b = load_bundle(bundle, max_bytes=max_bytes)
    report = ImportReport(bundle_id=b.get("id"))
    by_id: dict[str, dict] = {}
    dup_seen: set[str] = set()
    for i, obj in enumerate(b.get("objects", [])):
        if not isinstance(obj, dict):
            report.problems.append(f"object #{i}: not a JSON object ({type(obj).__name__})")
            continue
        oid, kind = obj.get("id"), obj.get("type")
        if (
            not isinstance(oid, str)
            or not _ID_RE.match(oid)
            or not isinstance(kind, str)
            or not oid.startswith(kind + "--")
        ):
            report.problems.append(f"object #{i}: missing or invalid id/type ({_short(oid)}, {_short(kind)})")
            continue
        sv = obj.get("spec_version")
        if sv is None and kind not in _SCO_TYPES:
            report.problems.append(f"{oid}: no spec_version (STIX 2.0 object?); skipped")
            continue
        if sv is not None and sv != "2.1":
            report.problems.append(f"{oid}: {_spec_version_problem(sv)}; skipped")
            continue
        if oid in by_id:
            prev = by_id[oid]
            new_v = str(obj.get("modified", obj.get("created", "")))
            old_v = str(prev.get("modified", prev.get("created", "")))
            if oid not in dup_seen:
                dup_seen.add(oid)
                report.duplicates.append(oid)
            if new_v == old_v and obj != prev:
                report.problems.append(
                    f"{oid}: appears again with the same version ({new_v or 'no timestamp'}) and other content; "
                    "the first is used"
                )
                continue
            if new_v == old_v:
                report.problems.append(f"{oid}: appears more than once (identical copies); read once")
                continue
            report.problems.append(f"{oid}: several versions in the bundle; the newest ({max(new_v, old_v)}) is used")
            if new_v < old_v:
                continue
        by_id[oid] = obj
    report.objects = len(by_id)
    if b.get("objects") and not by_id:
        raise BundleError("no usable STIX 2.1 object in the bundle: " + "; ".join(report.problems[:3]))

    # containers of files: which cluster names a file
    file_cluster: dict[str, tuple[str, str | None]] = {}
    indicates: dict[str, str] = {}
    for oid, obj in by_id.items():
        kind = obj["type"]
        if kind == "relationship" and obj.get("relationship_type") == "indicates":
            src, dst = obj.get("source_ref"), obj.get("target_ref")
            if isinstance(src, str) and isinstance(dst, str):
                indicates.setdefault(src, dst)
                if dst not in by_id:
                    report.problems.append(f"{oid}: target_ref {_short(dst)} is not in the bundle")
        for prop in ("sample_refs", "object_refs"):
            refs = obj.get(prop)
            if refs is None:
                continue
            if not isinstance(refs, list):
                report.problems.append(f"{oid}: {prop} is not a list")
                continue
            missing = [r for r in refs if not isinstance(r, str) or r not in by_id]
            if missing:
                report.problems.append(
                    f"{oid}: {len(missing)} of {len(refs)} {prop} are not in the bundle (e.g. {_short(missing[0])})"
                )
            if kind in ("malware", "grouping") and prop in ("sample_refs", "object_refs") and not _unclustered(obj):
                for r in refs:
                    if isinstance(r, str) and r.startswith("file--"):
                        # a Malware family is more specific than a Grouping
                        if r not in file_cluster or kind == "malware":
                            file_cluster[r] = (oid, obj.get("name") if isinstance(obj.get("name"), str) else None)

    # our Grouping names the cluster; its Malware and Indicator stand for the same cluster
    alias: dict[str, str] = {}
    for oid, obj in by_id.items():
        exts = obj.get("extensions")
        if obj["type"] == "grouping" and isinstance(exts, dict) and EXTENSION_ID in exts:
            for r in obj.get("object_refs") or []:
                if isinstance(r, str) and r.split("--")[0] in ("malware", "indicator"):
                    alias.setdefault(r, oid)
    for f, (c, cname) in list(file_cluster.items()):
        if c in alias:
            g = alias[c]
            file_cluster[f] = (g, by_id[g].get("name") if isinstance(by_id[g].get("name"), str) else cname)

    def file_info(ref: Any) -> tuple[str | None, str | None]:
        f = by_id.get(ref) if isinstance(ref, str) else None
        if f is None or f.get("type") != "file":
            return None, None
        return ref, file_sha.get(ref)

    file_sha: dict[str, str | None] = {}
    for oid, obj in by_id.items():
        if obj["type"] != "file":
            continue
        fhashes: dict = obj["hashes"] if isinstance(obj.get("hashes"), dict) else {}
        other = {}
        for key, hname, width in (("MD5", "md5", 32), ("SHA-1", "sha1", 40), ("SHA1", "sha1", 40)):
            v = fhashes.get(key)
            if isinstance(v, str) and len(v) == width and all(c in "0123456789abcdefABCDEF" for c in v):
                other[hname] = v.lower()
        if other:
            report.file_hashes[oid] = other
        sha_v = next((v for k, v in fhashes.items() if isinstance(k, str) and k.upper() in ("SHA-256", "SHA256")), None)
        if sha_v is None:
            file_sha[oid] = None
        elif isinstance(sha_v, str) and _SHA256_RE.fullmatch(sha_v.strip()):
            file_sha[oid] = sha_v.strip().lower()
        else:
            file_sha[oid] = None
            report.problems.append(
                f"{oid}: SHA-256 {_short(sha_v)} is not 64 hex characters; the File is read without it"
            )

    sha_file = {v: fid for fid, v in file_sha.items() if v}
    seen: set[tuple[str, str, str | None]] = set()

    def add(d: SharedDigest) -> None:
        key = (d.telfhash, d.cluster, d.file_ref)
        if key not in seen:
            seen.add(key)
            report.digests.append(d)

    for oid, obj in by_id.items():
        kind = obj["type"]
        name = obj.get("name") if isinstance(obj.get("name"), str) else None
        if kind == "identity" and name:
            report.producers[oid] = name[:200]
        if kind == "grouping":
            exts = obj.get("extensions")
            ext = exts.get(EXTENSION_ID) if isinstance(exts, dict) else None
            if ext is None:
                continue
            if not isinstance(ext, dict) or not isinstance(ext.get("members"), list):
                report.problems.append(f"{oid}: the telfhash cluster extension has no list of members")
                continue
            schema_errors = extension_errors(ext)
            if schema_errors:
                report.problems.append(
                    f"{oid}: the telfhash cluster extension does not follow its schema ({schema_errors[0]}"
                    + (f"; and {len(schema_errors) - 1} more" if len(schema_errors) > 1 else "")
                    + "); its content is not used"
                )
                continue
            threshold = ext["threshold"]
            rep_ref, rep_sha = file_info(ext.get("representative_ref"))
            report.clusters[oid] = {
                "name": name,
                "threshold": threshold,
                "size": len(ext["members"]),
                "representative": normalize(ext["representative_telfhash"], "t1"),
                "representative_sha256": rep_sha,
            }
            for j, m in enumerate(ext["members"]):
                t1 = _digest(m.get("telfhash")) if isinstance(m, dict) else None
                if t1 is None:
                    report.problems.append(f"{oid}: member #{j} has no valid telfhash")
                    continue
                ref, sha = file_info(m.get("file_ref"))
                if ref is None and m.get("file_ref") is not None:
                    report.problems.append(
                        f"{oid}: member #{j} file_ref {_short(m.get('file_ref'))} is not in the bundle"
                    )
                arch = m.get("arch") if isinstance(m.get("arch"), str) else None
                add(SharedDigest(t1, oid, name, sha, ref or None, arch, "extension"))
        elif kind == "file":
            values: list[tuple[Any, str]] = []
            hashes = obj.get("hashes")
            if isinstance(hashes, dict):
                values += [
                    (v, "file-hashes") for k, v in hashes.items() if isinstance(k, str) and "telfhash" in k.lower()
                ]
            values += [(obj.get(p), "file-property") for p in _TELF_PROPS if p in obj]
            for v, origin in values:
                t1 = _digest(v)
                if t1 is None:
                    report.problems.append(f"{oid}: telfhash value {_short(v)} is not a telfhash")
                    continue
                cluster, cname = file_cluster.get(oid, (oid, None))
                _, sha = file_info(oid)
                add(SharedDigest(t1, cluster, cname, sha, oid, None, origin))
        elif kind == "indicator":
            pattern = obj.get("pattern")
            if not isinstance(pattern, str) or obj.get("pattern_type", "stix") != "stix":
                continue
            if len(pattern) > MAX_PATTERN_CHARS:
                report.problems.append(f"{oid}: pattern of {len(pattern)} characters is too long; skipped")
                continue
            target = indicates.get(oid)
            cluster = target if target in by_id else oid
            cluster = alias.get(cluster, alias.get(oid, cluster))
            cname = by_id[cluster].get("name") if cluster in by_id else name
            found = pattern_telfhashes(pattern, report.problems, oid)
            sha = None
            if len(found) == 1 and " OR " not in pattern.upper():  # one sample: its hashes and telfhash
                shas = _PATTERN_SHA_RE.findall(pattern)
                if len(shas) == 1:
                    sha = shas[0].lower()
            ref = sha_file.get(sha) if sha else None
            outside = cluster not in report.clusters and _unclustered(by_id.get(cluster, {}))
            if ref is not None and (cluster == oid or outside):
                cluster, cname = file_cluster.get(ref, (ref, None))
            for value in found:
                add(SharedDigest(value, cluster, cname if isinstance(cname, str) else None, sha, ref, None, "pattern"))
    for d in report.digests:
        if d.cluster not in report.clusters:
            report.clusters[d.cluster] = {
                "name": d.cluster_name,
                "threshold": None,
                "size": None,
                "representative": d.telfhash,
                "representative_sha256": d.sha256,
            }
    if report.digests:
        sizes: dict[str, set[str]] = {}
        for d in report.digests:
            sizes.setdefault(d.cluster, set()).add(d.telfhash)
        for cid, info in report.clusters.items():
            if info.get("size") is None:
                info["size"] = len(sizes.get(cid, ()))
    return report


def _unclustered(obj: dict) -> bool:
    """Our Grouping of samples shared without a cluster: a container, not a cluster."""
    from .export import UNCLUSTERED_LABEL

    labels = obj.get("labels")
    return isinstance(labels, list) and UNCLUSTERED_LABEL in labels


def _spec_version_problem(sv: Any) -> str:
    if isinstance(sv, (int, float)) and not isinstance(sv, bool):
        return f'wrong spec_version: the number {sv!r}, where STIX 2.1 writes the text "2.1"'
    return f"wrong spec_version {_short(sv)} (only STIX 2.1 is read)"


_FILE_REF_RE = re.compile(r"^file--[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_T1_RE = re.compile(r"^t1[0-9a-f]{70}$")
_EXT_KEYS = frozenset(
    {
        "extension_type",
        "threshold",
        "linkage",
        "size",
        "max_distance",
        "max_distance_exact",
        "representative_ref",
        "representative_telfhash",
        "architectures",
        "members",
    }
)
_EXT_REQUIRED = ("extension_type", "threshold", "size", "representative_ref", "representative_telfhash", "members")
_MEMBER_KEYS = frozenset({"file_ref", "telfhash", "arch", "distance_to_representative"})
MAX_DISTANCE_VALUE = 65535


def _int_in(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _str_max(v: Any, n: int) -> bool:
    return isinstance(v, str) and len(v) <= n


def extension_errors(ext: Any, limit: int = 5) -> list[str]:
    """Where ``ext`` (a Grouping's telfhash cluster extension, from any producer) breaks the
    extension's JSON schema (``telfhash-cluster-extension.schema.json``): up to ``limit``
    messages, empty when it follows it.

    The checks are those of the schema, written out: a general JSON-schema validator takes
    seconds per 10,000 members (and seconds to import), this takes milliseconds; the tests hold
    the two to the same verdicts."""
    out: list[str] = []

    def bad(where: str, what: str) -> bool:
        out.append(f"{where}: {what}")
        return len(out) >= limit

    if not isinstance(ext, dict):
        return ["the extension: not an object"]
    for k in _EXT_REQUIRED:
        if k not in ext and bad(k, "required property missing"):
            return out
    for k in ext:
        if k not in _EXT_KEYS and bad(_short(k), "property not in the schema"):
            return out
    checks = (
        ("extension_type", lambda v: v == "property-extension", "must be 'property-extension'"),
        ("threshold", lambda v: _int_in(v, 0, MAX_DISTANCE_VALUE), f"must be a whole number 0..{MAX_DISTANCE_VALUE}"),
        ("linkage", lambda v: _str_max(v, 64), "must be text of at most 64 characters"),
        ("size", lambda v: _int_in(v, 1, 100_000_000), "must be a whole number 1..100000000"),
        (
            "max_distance",
            lambda v: _int_in(v, 0, MAX_DISTANCE_VALUE),
            f"must be a whole number 0..{MAX_DISTANCE_VALUE}",
        ),
        ("max_distance_exact", lambda v: isinstance(v, bool), "must be true or false"),
        ("representative_ref", lambda v: isinstance(v, str) and _FILE_REF_RE.match(v) is not None, "must be a File id"),
        (
            "representative_telfhash",
            lambda v: isinstance(v, str) and _T1_RE.match(v) is not None,
            "must be t1 + 70 lower-case hex",
        ),
        (
            "architectures",
            lambda v: isinstance(v, list) and len(v) <= 256 and all(_str_max(a, 64) for a in v),
            "must be a list of at most 256 texts of at most 64 characters",
        ),
    )
    for key, ok, what in checks:
        if key in ext and not ok(ext[key]) and bad(key, f"{_short(ext[key])} {what}"):
            return out
    members = ext.get("members")
    if "members" in ext and (not isinstance(members, list) or not members):
        bad("members", "must be a non-empty list")
        return out
    for j, m in enumerate(members or []):
        if not isinstance(m, dict):
            if bad(f"members/{j}", "not an object"):
                return out
            continue
        ref, telf = m.get("file_ref"), m.get("telfhash")
        if not (isinstance(ref, str) and _FILE_REF_RE.match(ref)) and bad(
            f"members/{j}/file_ref", f"{_short(ref)} is not a File id"
        ):
            return out
        if not (isinstance(telf, str) and _T1_RE.match(telf)) and bad(
            f"members/{j}/telfhash", f"{_short(telf)} is not t1 + 70 lower-case hex"
        ):
            return out
        if len(m) > 2:
            extra = [k for k in m if k not in _MEMBER_KEYS]
            if extra and bad(f"members/{j}", f"property {_short(extra[0])} not in the schema"):
                return out
            if (
                "arch" in m
                and not _str_max(m["arch"], 64)
                and bad(f"members/{j}/arch", "must be text of at most 64 characters")
            ):
                return out
            dist = m.get("distance_to_representative", 0)
            if not _int_in(dist, 0, MAX_DISTANCE_VALUE) and bad(
                f"members/{j}/distance_to_representative",
                f"{_short(dist)} must be a whole number 0..{MAX_DISTANCE_VALUE}",
            ):
                return out
    return out


_SCO_TYPES = frozenset(
    {
        "artifact",
        "autonomous-system",
        "directory",
        "domain-name",
        "email-addr",
        "email-message",
        "file",
        "ipv4-addr",
        "ipv6-addr",
        "mac-addr",
        "mutex",
        "network-traffic",
        "process",
        "software",
        "url",
        "user-account",
        "windows-registry-key",
        "x509-certificate",
    }
)


def pattern_telfhashes(pattern: str, problems: list[str] | None = None, where: str = "") -> list[str]:
    """The telfhashes a STIX pattern compares files with (``=`` or ``IN``), reference spelling."""
    out: list[str] = []
    for m in _PATTERN_RE.finditer(pattern):
        key = m.group("qkey") or m.group("key") or m.group("prop") or ""
        if "telfhash" not in key.lower():
            continue
        raw = [m.group("value")] if m.group("eq") else _QUOTED_RE.findall(m.group("values") or "")
        for v in raw:
            t1 = _digest(v)
            if t1 is None:
                if problems is not None:
                    problems.append(f"{where}: pattern value {_short(v)} is not a telfhash")
                continue
            out.append(t1)
    return out


# ----------------------------------------------------------------------------- index and matching


def shared_results(report: ImportReport) -> list[dict]:
    """The shared telfhashes as result dicts (one per distinct telfhash and file) for the local
    index, each saying where it came from (bundle, cluster, where in the bundle, producer)."""
    out: list[dict] = []
    seen: set[tuple[str, str | None]] = set()
    known = {d.telfhash for d in report.digests if d.sha256 or d.file_ref}
    for d in report.digests:
        if not (d.sha256 or d.file_ref) and d.telfhash in known:
            continue  # a pattern repeating a member's telfhash: the member already stands for it
        key = (d.telfhash, d.sha256 or d.file_ref)
        if key in seen:
            continue
        seen.add(key)
        row = {
            "file": f"{report.source}/{d.file_ref or d.cluster}",
            "telfhash": d.telfhash,
            "arch": d.arch,
            "sha256": d.sha256,
            "stix_bundle": report.bundle_id,
            "stix_cluster": d.cluster,
            "stix_origin": d.origin,
            **(report.file_hashes.get(d.file_ref, {}) if d.file_ref else {}),
        }
        if report.origin:
            row["stix_from"] = report.origin
        out.append(row)
    return out


def add_to_index(report: ImportReport, index_path: str | None) -> dict:
    """Add the shared samples to the local index (source ``stix:<bundle id>``), all of them in
    one transaction or none.

    What a bundle says is a claim: it never changes an entry computed here from the file's
    bytes (those conflicts are listed under ``"local_kept"``), and a later add of the file
    itself replaces it.  The index keys samples by SHA-256, so telfhashes the bundle names
    without one (e.g. only in an Indicator pattern) are not recorded; they still count for
    :func:`match_local`.  Returns ``{"added", "updated", "unchanged", "without_sha256",
    "local_kept", "errors"}``.
    """
    try:
        from telfhash_core.store.index import CLAIMED, Index
    except ImportError as exc:
        raise BundleError(f"the local index is not available ({exc})") from None
    results = shared_results(report)
    with_sha = [r for r in results if r["sha256"]]
    kept: list[str] = []
    try:
        with Index(index_path) as idx:
            shas = sorted({r["sha256"] for r in with_sha})
            local: dict[str, str | None] = {}
            for i in range(0, len(shas), 900):
                chunk = shas[i : i + 900]
                q = f"SELECT sha256, digest, method FROM entries WHERE sha256 IN ({','.join('?' * len(chunk))})"
                for sha, digest, method in idx._conn.execute(q, chunk):
                    if method != CLAIMED:
                        local[sha] = "t1" + bytes(digest).hex() if digest else None
            for r in with_sha:
                if r["sha256"] in local and local[r["sha256"]] != r["telfhash"]:
                    kept.append(
                        f"{r['sha256']}: the bundle claims {r['telfhash']}, "
                        f"the file gave {local[r['sha256']] or 'no telfhash'} here; "
                        "the local value is kept"
                    )
            stats = idx.add_results(with_sha, source=report.source, claim=True, atomic=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise BundleError(f"local index {index_path}: {exc}") from None
    except Exception as exc:  # sqlite3.Error and the like: the index file is unusable
        raise BundleError(f"local index {index_path}: {type(exc).__name__}: {exc}") from None
    return {
        "added": int(getattr(stats, "added", 0)),
        "updated": int(getattr(stats, "updated", 0)),
        "unchanged": int(getattr(stats, "unchanged", 0)),
        "without_sha256": len(results) - len(with_sha),
        "local_kept": kept,
        "errors": list(getattr(stats, "errors", []) or []),
    }


def match_local(report: ImportReport, local: Iterable[Any], threshold: int) -> list[LocalMatch]:
    """For each local sample (Result, result dict or path) and each shared cluster: the nearest
    shared telfhash of that cluster when it is within ``threshold``.  One distance pass per
    local sample over the bundle's distinct telfhashes.  Sorted by cluster, distance, file."""
    import numpy as np

    from telfhash_core import hash_file
    from telfhash_core.similarity.tlshdist import encode, one_to_many

    if not report.digests:
        return []
    per_digest: dict[str, dict[str, SharedDigest]] = {}
    for d in report.digests:
        per = per_digest.setdefault(d.telfhash, {})
        if d.cluster not in per or (d.sha256 and not per[d.cluster].sha256):
            per[d.cluster] = d
    distinct = sorted(per_digest)
    enc = encode(distinct)
    out: list[LocalMatch] = []
    for item in local:
        if isinstance(item, (str, os.PathLike)):
            try:
                item = hash_file(item)
            except (OSError, ValueError):  # e.g. a NUL byte in the name
                continue
        elif isinstance(item, dict):
            try:
                item = Result.from_dict(item)
            except (ValueError, TypeError, AttributeError):
                continue
        if not isinstance(item, Result) or not isinstance(item.telfhash, str) or not is_digest(item.telfhash):
            continue
        dists = one_to_many(enc, item.telfhash)
        best: dict[str, tuple[int, SharedDigest]] = {}
        for k in np.flatnonzero(dists <= threshold).tolist():
            dist = int(dists[k])
            for c, d in per_digest[distinct[k]].items():
                if c not in best or dist < best[c][0]:
                    best[c] = (dist, d)
        for c, (dist, d) in best.items():
            name = report.clusters.get(c, {}).get("name")
            out.append(LocalMatch(item.file, item.telfhash, c, name, d.telfhash, d.sha256, dist))
    out.sort(key=lambda m: (m.cluster, m.distance, m.file))
    return out


def search_index(report: ImportReport, index_path: str | None, threshold: int) -> list[LocalMatch]:
    """The samples in the local index that did not come from this bundle and lie within
    ``threshold`` of a shared telfhash: the nearest shared telfhash per cluster and sample.
    One pass over the bundle's distinct telfhashes (:meth:`Index.search_many`)."""
    try:
        from telfhash_core.store.index import Index
    except ImportError as exc:
        raise BundleError(f"the local index is not available ({exc})") from None
    by_digest: dict[str, dict[str, SharedDigest]] = {}
    for d in report.digests:  # per distinct telfhash: one shared digest per cluster naming it
        per = by_digest.setdefault(d.telfhash, {})
        if d.cluster not in per or (d.sha256 and not per[d.cluster].sha256):
            per[d.cluster] = d
    best: dict[tuple[str, str], LocalMatch] = {}
    try:
        with Index(index_path) as idx:
            found = idx.search_many(by_digest, max_distance=threshold, exclude_sources=[report.source])
    except Exception as exc:
        raise BundleError(f"local index {index_path}: {type(exc).__name__}: {exc}") from None
    for telf, matches in found.items():
        for d in by_digest.get(telf, {}).values():
            cname = report.clusters.get(d.cluster, {}).get("name")
            for m in matches:
                key = (d.cluster, m.sha256)
                cur = best.get(key)
                if cur is None or m.distance < cur.distance:
                    best[key] = LocalMatch(
                        m.path or m.sha256, m.telfhash, d.cluster, cname, d.telfhash, d.sha256, int(m.distance)
                    )
    return sorted(best.values(), key=lambda m: (m.cluster, m.distance, m.file))
