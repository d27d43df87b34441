"""Add telfhash to every ELF file of a CAPEv2 results dict, and summarise.

``enrich(results, settings, analysis_path=None)`` edits the file dicts of ``results`` in place
and returns the summary CAPE stores under the module's key (``"telfhash"``):

* in every file dict whose libmagic ``type`` contains ``ELF`` -- ``target.file``,
  ``dropped[i]``, ``procdump[i]``, ``CAPE.payloads[i]``, ``suricata.files[i].file_info`` and,
  nested in any of them, ``selfextract.<tool>.extracted_files[j]`` (and the older
  ``extracted_files[j]``) -- ``telfhash`` is set to what the reference tool prints (``t1…``,
  ``tnull`` or ``-``) when the file could be read, and ``telfhash_error`` to a short reason code
  when there is no digest (``not_found``, ``too_large``, ``timeout``, ``no_symbols``, ...);
* the summary lists each distinct ELF file once (with where it appears), the groups among them
  (TLSH distance <= threshold, transitively), and with an index configured the nearest known
  samples of each.

Nothing here raises: a bad file, a missing path, a ``None`` entry, odd types anywhere in the
results or a broken index become entries in the summary's ``errors``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Mapping

from telfhash_core import DEFAULT_THRESHOLD

log = logging.getLogger(__name__)

KEY = "telfhash"
ADDED_KEYS = ("telfhash", "telfhash_error")


# ----------------------------------------------------------------------------- settings


def _size(value: Any) -> int:
    """Bytes from an int or a string such as ``64M``, ``1G``, ``500000``."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, (int, float)):
        n = int(value)
    else:
        text = str(value).strip().upper().removesuffix("B").removesuffix("I")
        mult = 1
        if text and text[-1] in "KMGT":
            mult = 1024 ** ("KMGT".index(text[-1]) + 1)
            text = text[:-1]
        n = int(float(text) * mult)
    if n <= 0:
        raise ValueError(f"size must be positive, not {value!r}")
    return n


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "yes", "true", "on"):
        return True
    if text in ("0", "no", "false", "off", ""):
        return False
    raise ValueError(f"not a yes/no value: {value!r}")


@dataclass
class Settings:
    """The ``[telfhash]`` section of CAPE's processing configuration."""

    enabled: bool = True
    max_file_size: int = 64 << 20  # bytes; larger ELF files get telfhash_error "too_large"
    timeout: float = 30.0  # seconds per file (worker process); 0: hash in-process, size cap only
    threshold: int = DEFAULT_THRESHOLD  # TLSH distance for groups and for known neighbours
    index: str = ""  # path to a telfhash-core index (telfhash index add ...); empty: none
    max_neighbours: int = 10  # nearest known samples listed per file
    index_add: bool = False  # also record this analysis' ELF files in the index
    max_files: int = 500  # distinct ELF files hashed per analysis; the rest get "skipped"
    budget: float = 0.0  # seconds for the whole analysis; 0: a quarter of CAPE's processing timeout
    detections: bool = False  # add CAPE family detections from labelled known neighbours
    detection_distance: int = 30  # ... at this TLSH distance or closer
    errors: list[str] = field(default_factory=list)

    @classmethod
    def from_options(cls, options: Any) -> "Settings":
        """From CAPE's options object (a dict with attribute access), a dict or None.  Bad
        values keep the default and are reported in ``errors``."""
        s = cls()
        if options is None:
            return s
        get = options.get if hasattr(options, "get") else (lambda k, d=None: getattr(options, k, d))
        conv: dict[str, Callable[[Any], Any]] = {
            "enabled": _bool,
            "max_file_size": _size,
            "timeout": float,
            "threshold": int,
            "index": lambda v: "" if v in (None, False) else str(v).strip(),
            "max_neighbours": int,
            "index_add": _bool,
            "max_files": int,
            "budget": float,
            "detections": _bool,
            "detection_distance": int,
        }
        for name, fn in conv.items():
            try:
                value = get(name, None)
            except Exception:
                value = None
            if value is None:
                continue
            try:
                v = fn(value)
                if name in ("threshold", "max_neighbours", "max_files", "detection_distance") and v < 0:
                    raise ValueError("must be >= 0")
                if name in ("timeout", "budget") and not (v == v and 0 <= v < 1e9):
                    raise ValueError("not a number of seconds")
                setattr(s, name, v)
            except (TypeError, ValueError) as exc:
                s.errors.append(f"setting {name} = {value!r} ignored ({exc}); using {getattr(s, name)!r}")
        return s

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("errors")
        return d


# ----------------------------------------------------------------------------- finding file dicts


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _nested(fd: dict, where: str) -> Iterator[tuple[str, dict]]:
    se = fd.get("selfextract")
    if isinstance(se, dict):
        for tool, block in se.items():
            if isinstance(block, dict):
                for j, sub in enumerate(_list(block.get("extracted_files"))):
                    if isinstance(sub, dict):
                        w = f"{where}.selfextract.{tool}.extracted_files[{j}]"
                        yield w, sub
                        yield from _nested(sub, w)
    for j, sub in enumerate(_list(fd.get("extracted_files"))):
        if isinstance(sub, dict):
            w = f"{where}.extracted_files[{j}]"
            yield w, sub
            yield from _nested(sub, w)


def file_dicts(results: Any) -> Iterator[tuple[str, dict]]:
    """``(where, file_dict)`` for every file dict of a CAPE results dict, ELF or not."""
    if not isinstance(results, dict):
        return
    tops: list[tuple[str, Any]] = []
    target = results.get("target")
    if isinstance(target, dict):
        tops.append(("target.file", target.get("file")))
    for key in ("dropped", "procdump"):
        for i, fd in enumerate(_list(results.get(key))):
            tops.append((f"{key}[{i}]", fd))
    cape = results.get("CAPE")
    if isinstance(cape, dict):
        for i, fd in enumerate(_list(cape.get("payloads"))):
            tops.append((f"CAPE.payloads[{i}]", fd))
    suri = results.get("suricata")
    if isinstance(suri, dict):
        for i, entry in enumerate(_list(suri.get("files"))):
            if isinstance(entry, dict):
                tops.append((f"suricata.files[{i}].file_info", entry.get("file_info")))
    seen: set[int] = set()
    for where, fd in tops:
        if not isinstance(fd, dict):
            continue
        for w, d in ((where, fd), *_nested(fd, where)):
            if id(d) not in seen:  # the same dict object reachable twice is visited once
                seen.add(id(d))
                yield w, d


def is_elf(fd: dict) -> bool:
    t = fd.get("type")
    return isinstance(t, str) and "ELF" in t


# ----------------------------------------------------------------------------- paths


def resolve_path(fd: dict, where: str, analysis_path: str | None) -> str | None:
    """The file of ``fd`` on this machine.  The recorded ``path`` first; for a report moved
    from another CAPE host, the same file under ``analysis_path`` (the part after
    ``/storage/analyses/<id>/``), the target as ``analysis_path/binary``, or a file named by its
    SHA-256 in the usual folders."""
    path = os.fspath(p) if isinstance(p := fd.get("path"), os.PathLike) else p  # Cuckoo 3 passes pathlib.Path
    if isinstance(path, str) and path and "\x00" not in path and os.path.exists(path):
        return path
    if analysis_path:
        cands: list[str] = []
        if isinstance(path, str) and "/storage/analyses/" in path:
            rest = path.split("/storage/analyses/", 1)[1].split("/", 1)
            if len(rest) == 2:
                cands.append(os.path.join(analysis_path, rest[1]))
        if where == "target.file":
            cands.append(os.path.join(analysis_path, "binary"))
        sha = fd.get("sha256")
        if isinstance(sha, str) and len(sha) == 64 and sha.isalnum():
            for folder in ("files", "CAPE", "procdump", "selfextracted", "suricata/files"):
                cands.append(os.path.join(analysis_path, folder, sha))
        if isinstance(path, str) and path:
            base = os.path.basename(path)
            for folder in ("files", "CAPE", "procdump", "selfextracted"):
                cands.append(os.path.join(analysis_path, folder, base))
        for c in cands:
            if "\x00" not in c and os.path.isfile(c):
                return c
    return path if isinstance(path, str) and path and "\x00" not in path else None


# ----------------------------------------------------------------------------- grouping


# Up to this many digests the groups come from direct pairwise distances (py-tlsh, a few ms);
# beyond, from telfhash_core.similarity.cluster, whose compiled kernels cost a one-off compilation in a
# fresh process (seconds) that a typical analysis with a handful of ELF files should not pay.
PAIRWISE_LIMIT = 600


def _groups(entries: list[dict], threshold: int) -> tuple[list[dict], str]:
    """Groups (size >= 2) among the entries with a digest; ``(groups, method)``."""
    items = [{"file": e["id"], "telfhash": e["telfhash"], "arch": e.get("arch")} for e in entries if e.get("telfhash")]
    if len(items) < 2:
        return [], "none"
    by_id = {e["id"]: e for e in entries}
    raw = None
    if len(items) > PAIRWISE_LIMIT:
        try:
            from telfhash_core.similarity.cluster import cluster

            clusters, _ = cluster(items, threshold=threshold)
            method = "telfhash_core.similarity.cluster"
            raw = [(c.members, c.representative, c.max_distance) for c in clusters if c.size >= 2]
        except ImportError:  # an older telfhash-core without the cluster module
            raw = None
    if raw is None:
        raw, method = _pairwise_groups(items, threshold), "pairwise"
    out = []
    for members, rep, maxd in raw:
        out.append(
            {
                "size": len(members),
                "max_distance": maxd,
                "representative": _ref(by_id[rep]),
                "members": [_ref(by_id[m]) for m in members],
            }
        )
    return out, method


def _pairwise_groups(items: list[dict], threshold: int) -> list[tuple[list[str], str, int]]:
    """Connected components by direct pairwise distances (small inputs only)."""
    from telfhash_core import distance

    n = len(items)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    dist = [[0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            d = distance(items[i]["telfhash"], items[j]["telfhash"])
            dist[i][j] = dist[j][i] = d
            if d <= threshold:
                parent[find(i)] = find(j)
    comps: dict[int, list[int]] = {}
    for i in range(n):
        comps.setdefault(find(i), []).append(i)
    out = []
    for idx in comps.values():
        if len(idx) < 2:
            continue
        rep = min(idx, key=lambda i: (max(dist[i][j] for j in idx), sum(dist[i][j] for j in idx), i))
        maxd = max(dist[i][j] for i in idx for j in idx)
        out.append(([items[i]["file"] for i in idx], items[rep]["file"], maxd))
    out.sort(key=lambda g: -len(g[0]))
    return out


def _ref(e: dict) -> dict:
    return {"sha256": e.get("sha256"), "name": e.get("name"), "telfhash": e.get("telfhash"), "where": e["where"][0]}


# ----------------------------------------------------------------------------- time budget

CAPE_DEFAULT_PROCESSING_TIMEOUT = 300  # utils/process.py: int(os.getenv("CAPE_PROCESSING_TIMEOUT") or 300)


def processing_timeout(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> tuple[float, str]:
    """CAPE's processing timeout (seconds) and where it came from: ``utils/process.py``'s
    ``-pt/--processing-timeout`` when this process is CAPE's processor, else the variable
    ``CAPE_PROCESSING_TIMEOUT`` (its default, set by CAPE's systemd unit), else 300."""
    argv = sys.argv if argv is None else argv
    env_map: Mapping[str, str] = os.environ if environ is None else environ
    if argv and os.path.basename(str(argv[0])) == "process.py":
        for i, a in enumerate(argv):
            value = None
            if a in ("-pt", "--processing-timeout") and i + 1 < len(argv):
                value = argv[i + 1]
            elif a.startswith("--processing-timeout="):
                value = a.split("=", 1)[1]
            elif a.startswith("-pt") and len(a) > 3:
                value = a[3:].lstrip("=")
            if value is not None:
                try:
                    return float(int(value)), "utils/process.py --processing-timeout"
                except ValueError:
                    pass
    env = env_map.get("CAPE_PROCESSING_TIMEOUT")
    if env:
        try:
            return float(int(env)), "CAPE_PROCESSING_TIMEOUT"
        except ValueError:
            pass
    return float(CAPE_DEFAULT_PROCESSING_TIMEOUT), "CAPE's default"


def time_budget(
    settings: Settings, results: Any, argv: list[str] | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Seconds this module may spend on hashing: the ``budget`` setting (0: a quarter of CAPE's
    processing timeout), never more than half the timeout less what earlier processing modules
    already used (``statistics.processing``), and at least one second."""
    pt, source = processing_timeout(argv, environ)
    spent = 0.0
    try:
        for row in results.get("statistics", {}).get("processing", []) or []:
            t = row.get("time") if isinstance(row, dict) else None
            if isinstance(t, (int, float)) and t > 0:
                spent += float(t)
    except AttributeError:
        pass
    wanted = settings.budget if settings.budget > 0 else pt / 4
    seconds = max(1.0, min(wanted, pt / 2 - spent))
    return {"seconds": round(seconds, 3), "processing_timeout": pt, "from": source, "spent_before": round(spent, 3)}


# ----------------------------------------------------------------------------- the enrichment


def enrich(
    results: Any,
    settings: Settings | None = None,
    analysis_path: str | None = None,
    *,
    hasher=None,
    reuse_worker: bool = False,
) -> dict[str, Any]:
    """Edit the ELF file dicts of ``results`` in place and return the summary.  Never raises.

    ``reuse_worker`` keeps the hashing worker for the next call (CAPE's processing processes
    handle one analysis after another)."""
    settings = settings or Settings()
    t0 = time.monotonic()
    summary: dict[str, Any] = {
        "threshold": settings.threshold,
        "files": [],
        "groups": [],
        "errors": list(settings.errors),
    }
    try:
        import telfhash_core as tc

        summary["version"] = tc.__version__
    except Exception as exc:
        from . import env

        summary["errors"].append(env.tlsh_problem() or f"telfhash-core is not importable: {exc}")
        return summary
    try:
        _enrich(results, settings, analysis_path, summary, hasher, t0, reuse_worker)
    except Exception as exc:  # a bug here must not cost CAPE the analysis
        log.exception("telfhash: enrichment failed")
        summary["errors"].append(f"internal error: {type(exc).__name__}: {exc}")
    summary["seconds"] = round(time.monotonic() - t0, 3)
    return summary


def _enrich(
    results: Any, settings: Settings, analysis_path: str | None, summary: dict, hasher, t0: float, reuse: bool
) -> None:
    from . import env
    from .worker import Hasher, shared

    located = [(w, fd) for w, fd in file_dicts(results) if is_elf(fd)]
    refusal = env.refusal() if located else None
    if refusal:  # digests that could be wrong are worse than none
        summary["errors"].append(refusal)
        log.error("telfhash: %s", refusal)
        for _, fd in located:
            for k in ADDED_KEYS:
                fd.pop(k, None)
            fd["telfhash_error"] = "environment"
        summary["elf_files"], summary["hashed"] = len(located), 0
        return
    budget = time_budget(settings, results)
    deadline = t0 + budget["seconds"]
    entries: dict[str, dict] = {}  # one per distinct file
    order: list[str] = []
    for where, fd in located:
        path = resolve_path(fd, where, analysis_path)
        sha = fd.get("sha256") if isinstance(fd.get("sha256"), str) else None
        key = f"sha256:{sha.lower()}" if sha else f"path:{os.path.realpath(path) if path else where}"
        e = entries.get(key)
        if e is None:
            name = fd.get("name")
            if isinstance(name, list):  # CAPE keeps a list of names for some dropped files
                name = next((n for n in name if isinstance(n, str)), None)
            e = entries[key] = {
                "id": key,
                "sha256": sha,
                "name": name if isinstance(name, str) else (os.path.basename(path) if path else None),
                "path": path,
                "type": fd.get("type"),
                "md5": fd.get("md5") if isinstance(fd.get("md5"), str) else None,
                "sha1": fd.get("sha1") if isinstance(fd.get("sha1"), str) else None,
                "where": [],
                "dicts": [],
            }
            order.append(key)
        elif e["path"] is None or not os.path.exists(e["path"] or ""):
            e["path"] = path or e["path"]
        e["where"].append(where)
        e["dicts"].append(fd)

    own = hasher is None and not reuse
    if hasher is None:
        if reuse:
            hasher = shared(settings.timeout, settings.max_file_size, deadline)
        else:
            hasher = Hasher(timeout=settings.timeout, max_size=settings.max_file_size, deadline=deadline)
    elif hasattr(hasher, "begin"):  # a caller's hasher, kept across analyses: this analysis' deadline
        hasher.begin(deadline)
    try:
        for n, key in enumerate(order):
            e = entries[key]
            if n >= settings.max_files:
                r = {"telfhash": None, "reason": "skipped", "detail": f"over max_files = {settings.max_files}"}
            elif not e["path"]:
                r = {"telfhash": None, "reason": "no_path", "detail": "the report gives no path for this file"}
            elif time.monotonic() >= deadline:
                r = {
                    "telfhash": None,
                    "reason": "budget",
                    "detail": f"not hashed: the analysis' budget of {budget['seconds']:g} s was used up",
                }
            else:
                r = hasher.hash(e["path"])
            e["result"] = r
    finally:
        if own:
            hasher.close()
    summary["hashing"] = {
        "mode": hasher.mode,
        "timeout": settings.timeout,
        "max_file_size": settings.max_file_size,
        "budget": budget,
        "workers_started": getattr(hasher, "started", None),
    }
    if hasher.restarts:
        summary["hashing"]["worker_restarts"] = hasher.restarts
    summary["errors"].extend(hasher.notes)

    ok = 0
    for key in order:
        e = entries[key]
        r = e["result"]
        digest = r.get("telfhash") if isinstance(r.get("telfhash"), str) else None
        reason = None if digest else (r.get("reason") or "internal")
        # the reference's output exists only for a file that was actually read
        read = reason not in (
            "not_found",
            "unreadable",
            "directory",
            "not_regular",
            "too_large",
            "timeout",
            "worker_failed",
            "skipped",
            "no_path",
            "budget",
        )
        ref = r.get("reference_telfhash") if read else None
        for fd in e["dicts"]:
            for k in ADDED_KEYS:
                fd.pop(k, None)
            if ref is not None:
                fd["telfhash"] = ref
            if reason:
                fd["telfhash_error"] = reason
        ok += digest is not None
        item = {
            "sha256": e["sha256"],
            "name": e["name"],
            "path": e["path"],
            "where": e["where"],
            "telfhash": digest,
        }
        if reason:
            item["error"] = reason
            item["detail"] = r.get("detail") or None
            if ref is not None:
                item["reference_telfhash"] = ref
        for k in ("arch", "method", "symbols"):
            if r.get(k) is not None:
                item[k] = r[k]
        summary["files"].append(item)
        e["telfhash"], e["arch"] = digest, r.get("arch")

    summary["elf_files"] = len(order)
    summary["hashed"] = ok
    try:
        summary["groups"], summary["grouping"] = _groups([entries[k] for k in order], settings.threshold)
    except Exception as exc:
        summary["errors"].append(f"grouping failed: {type(exc).__name__}: {exc}")
    if settings.index:
        _neighbours(settings, summary, [entries[k] for k in order])
        if settings.detections:
            _detections(settings, summary, results)


def _add_family_detection(results: dict, family: str, detected_by: str, detected_on: str) -> None:
    """CAPE's ``lib.cuckoo.common.utils.add_family_detection`` where importable (inside CAPE:
    it also normalises family names), else the same structure."""
    try:
        from lib.cuckoo.common.utils import add_family_detection  # type: ignore[import-not-found]
    except Exception:
        add_family_detection = None
    if add_family_detection is not None:
        add_family_detection(results, family, detected_by, detected_on)
        return
    dets = results.setdefault("detections", [])
    detection = {detected_by: detected_on}
    for block in dets:
        if isinstance(block, dict) and block.get("family") == family:
            if detection not in block.setdefault("details", []):
                block["details"].append(detection)
            return
    dets.append({"family": family, "details": [detection]})


def _detections(settings: Settings, summary: dict, results: Any) -> None:
    """For each file whose closest *labelled* known neighbour is within ``detection_distance``,
    a CAPE family detection (``detections``, as the Similarity module's ``update_malfamily``
    adds them): one per family and file, never for a file that already has a detection."""
    if not isinstance(results, dict):
        return
    found = results.get("detections")
    existing: list = found if isinstance(found, list) else []
    identified = {
        v
        for b in existing
        if isinstance(b, dict)
        for d in (b.get("details") or [])
        if isinstance(d, dict)
        for v in d.values()
    }
    added = []
    for item in summary["files"]:
        sha = item.get("sha256")
        labelled = [
            k
            for k in item.get("known") or []
            if k.get("label")
            and k.get("distance") is not None
            and k["distance"] <= settings.detection_distance
            and k.get("sha256") != sha
        ]
        if not sha or not labelled or sha in identified:
            continue
        best = min(labelled, key=lambda k: k["distance"])
        label = str(best["label"])[:256]
        try:
            _add_family_detection(results, label, "telfhash", sha)
        except Exception as exc:
            summary["errors"].append(f"detection for {sha}: {type(exc).__name__}: {exc}")
            continue
        item["detection"] = {"family": label, "distance": best["distance"], "neighbour": best.get("sha256")}
        added.append({"family": label, "sha256": sha, "distance": best["distance"]})
    if added:
        summary["detections"] = added


def _neighbours(settings: Settings, summary: dict, entries: list[dict]) -> None:
    """Nearest known samples from the index, per file with a digest; optionally record ours."""
    info: dict[str, Any] = {"path": settings.index}
    summary["index"] = info
    try:
        from telfhash_core.store.index import Index

        with Index(settings.index, create=settings.index_add) as ix:
            info["entries"] = len(ix)
            for e, item in zip(entries, summary["files"]):
                if not e.get("telfhash"):
                    continue
                try:
                    matches = ix.search(e["telfhash"], max_distance=settings.threshold, limit=settings.max_neighbours)
                    item["known"] = [m.to_dict() for m in matches]
                except Exception as exc:
                    item["known_error"] = f"{type(exc).__name__}: {exc}"
            if settings.index_add:
                rows = []
                for e in entries:
                    r = e.get("result") or {}
                    if e.get("sha256") and r.get("reason") not in (
                        "timeout",
                        "worker_failed",
                        "skipped",
                        "no_path",
                        "not_found",
                    ):
                        d = {k: r.get(k) for k in ("telfhash", "reason", "arch", "method", "symbols", "size")}
                        d.update(
                            sha256=e["sha256"],
                            md5=e.get("md5"),
                            sha1=e.get("sha1"),
                            file=e.get("name") or e.get("path"),
                        )
                        rows.append(d)
                st = ix.add_results(rows, source="cape")
                info["added"] = st.added
    except Exception as exc:
        info["error"] = f"{type(exc).__name__}: {exc}"
        summary["errors"].append(f"index {settings.index}: {type(exc).__name__}: {exc}")


# ----------------------------------------------------------------------------- CAPE entry point


def run_module(module: Any) -> dict[str, Any]:
    """What the thin ``Telfhash(Processing)`` class in CAPE's ``modules/processing`` calls."""
    try:
        settings = Settings.from_options(getattr(module, "options", None))
        results = getattr(module, "results", None)
        if not isinstance(results, dict):
            return {"errors": ["no results dict to enrich"], "files": [], "groups": []}
        return enrich(results, settings, getattr(module, "analysis_path", None) or None, reuse_worker=True)
    except Exception as exc:  # never raise into CAPE
        log.exception("telfhash: processing failed")
        return {"errors": [f"internal error: {type(exc).__name__}: {exc}"], "files": [], "groups": []}
