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
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

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
    threshold: int = 50  # TLSH distance for groups and for known neighbours
    index: str = ""  # path to a telfhash-core index (telfhash index add ...); empty: none
    max_neighbours: int = 10  # nearest known samples listed per file
    index_add: bool = False  # also record this analysis' ELF files in the index
    max_files: int = 500  # distinct ELF files hashed per analysis; the rest get "skipped"
    errors: list[str] = field(default_factory=list)

    @classmethod
    def from_options(cls, options: Any) -> "Settings":
        """From CAPE's options object (a dict with attribute access), a dict or None.  Bad
        values keep the default and are reported in ``errors``."""
        s = cls()
        if options is None:
            return s
        get = options.get if hasattr(options, "get") else (lambda k, d=None: getattr(options, k, d))
        conv = {
            "enabled": _bool,
            "max_file_size": _size,
            "timeout": float,
            "threshold": int,
            "index": lambda v: "" if v in (None, False) else str(v).strip(),
            "max_neighbours": int,
            "index_add": _bool,
            "max_files": int,
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
                if name in ("threshold", "max_neighbours", "max_files") and v < 0:
                    raise ValueError("must be >= 0")
                if name == "timeout" and not (v == v and v < 1e9):
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
PAIRWISE_LIMIT = 300


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


# ----------------------------------------------------------------------------- the enrichment


def enrich(results: Any, settings: Settings | None = None, analysis_path: str | None = None, *, hasher=None) -> dict[str, Any]:
    """Edit the ELF file dicts of ``results`` in place and return the summary.  Never raises."""
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
        summary["errors"].append(f"telfhash-core is not importable: {exc}")
        return summary
    try:
        _enrich(results, settings, analysis_path, summary, hasher)
    except Exception as exc:  # a bug here must not cost CAPE the analysis
        log.exception("telfhash: enrichment failed")
        summary["errors"].append(f"internal error: {type(exc).__name__}: {exc}")
    summary["seconds"] = round(time.monotonic() - t0, 3)
    return summary


def _enrich(results: Any, settings: Settings, analysis_path: str | None, summary: dict, hasher) -> None:
    from .worker import Hasher

    located = [(w, fd) for w, fd in file_dicts(results) if is_elf(fd)]
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
                "where": [],
                "dicts": [],
            }
            order.append(key)
        elif e["path"] is None or not os.path.exists(e["path"] or ""):
            e["path"] = path or e["path"]
        e["where"].append(where)
        e["dicts"].append(fd)

    own = hasher is None
    hasher = hasher or Hasher(timeout=settings.timeout, max_size=settings.max_file_size)
    try:
        for n, key in enumerate(order):
            e = entries[key]
            if n >= settings.max_files:
                r = {"telfhash": None, "reason": "skipped", "detail": f"over max_files = {settings.max_files}"}
            elif not e["path"]:
                r = {"telfhash": None, "reason": "no_path", "detail": "the report gives no path for this file"}
            else:
                r = hasher.hash(e["path"])
            e["result"] = r
    finally:
        if own:
            hasher.close()
    summary["hashing"] = {"mode": hasher.mode, "timeout": settings.timeout, "max_file_size": settings.max_file_size}
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
        read = reason not in ("not_found", "unreadable", "directory", "not_regular", "too_large", "timeout",
                              "worker_failed", "skipped", "no_path")
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
                    if e.get("sha256") and r.get("reason") not in ("timeout", "worker_failed", "skipped", "no_path", "not_found"):
                        d = {k: r.get(k) for k in ("telfhash", "reason", "arch", "method", "symbols", "size")}
                        d.update(sha256=e["sha256"], file=e.get("name") or e.get("path"))
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
        return enrich(results, settings, getattr(module, "analysis_path", None) or None)
    except Exception as exc:  # never raise into CAPE
        log.exception("telfhash: processing failed")
        return {"errors": [f"internal error: {type(exc).__name__}: {exc}"], "files": [], "groups": []}
