"""Publish bundles to, and read them back from, a TAXII 2.1 collection (taxii2-client).

Credentials never come from the command line (it ends up in shell history and ``ps``): they
come from the environment (``TELFHASH_TAXII_USER`` / ``TELFHASH_TAXII_PASSWORD``, or
``TELFHASH_TAXII_TOKEN`` for a bearer token) or from a config file (``--config PATH``,
``$TELFHASH_TAXII_CONFIG``, or ``~/.config/telfhash/taxii.ini``)::

    [taxii]
    url = https://taxii.example.org/api1/collections/<collection id>/
    user = alice
    password = ...

The environment wins over the file.  A config file holding a secret that other users can read is
refused.
"""

from __future__ import annotations

import configparser
import logging
import os
import re
import stat
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .export import EXTENSION_ID, carry_versions, extension_definition

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path("~/.config/telfhash/taxii.ini")
# Everything our bundles hold except the Extension Definition: medallion 3.0's object reads fail
# (HTTP 500) whenever the answer would include one, so reads always filter by type and the
# definition is fetched on its own (and, for ours, taken from the package when that fails).
READ_TYPES = ("identity", "grouping", "malware", "indicator", "relationship", "file", "observed-data", "note", "report")


class TaxiiError(RuntimeError):
    """A TAXII operation failed (the message says what and where, never the secret)."""


@dataclass
class TaxiiSettings:
    url: str | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    verify: bool | str = True
    origin: list[str] = field(default_factory=list)  # where each value came from (no secrets)


def load_settings(config: str | os.PathLike | None = None, url: str | None = None, environ=None) -> TaxiiSettings:
    """Collection URL and credentials from the config file, then the environment, then ``url``."""
    env = os.environ if environ is None else environ
    s = TaxiiSettings()
    path = Path(config) if config else Path(env["TELFHASH_TAXII_CONFIG"]) if env.get("TELFHASH_TAXII_CONFIG") else None
    explicit = path is not None
    if path is None:
        path = DEFAULT_CONFIG.expanduser()
    if path.exists():
        _read_config(path, s)
    elif explicit:
        raise TaxiiError(f"config file {path} does not exist")
    for key, attr in (
        ("TELFHASH_TAXII_URL", "url"),
        ("TELFHASH_TAXII_USER", "user"),
        ("TELFHASH_TAXII_PASSWORD", "password"),
        ("TELFHASH_TAXII_TOKEN", "token"),
    ):
        if env.get(key):
            setattr(s, attr, env[key])
            s.origin.append(f"{attr} from ${key}")
    if env.get("TELFHASH_TAXII_CA_BUNDLE"):
        s.verify = env["TELFHASH_TAXII_CA_BUNDLE"]
    if url:
        s.url = url
        s.origin.append("url from the command line")
    if not s.url:
        raise TaxiiError("no collection URL: give --url, set TELFHASH_TAXII_URL, or put url= in the config file")
    check_url(s.url)
    if not s.url.endswith("/"):
        s.url += "/"
    return s


def check_url(url: str) -> None:
    """Refuse a URL that is not http(s) or that carries a user name or password: secrets in a URL
    end up in shell history, ``ps``, proxies and logs (the message never repeats them)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError:
        raise TaxiiError("the collection URL cannot be parsed") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TaxiiError(f"the collection URL must be http:// or https:// with a host, not {_safe_url(url)!r}")
    if "@" in parts.netloc:
        raise TaxiiError(
            f"the collection URL {_safe_url(url)} holds a user name or password: remove it and set "
            "TELFHASH_TAXII_USER/TELFHASH_TAXII_PASSWORD (or TELFHASH_TAXII_TOKEN) or the config file instead"
        )


def _safe_url(url: str | None) -> str:
    """``url`` as it may be shown: without user info, query or fragment."""
    if not url:
        return "?"
    try:
        p = urllib.parse.urlsplit(url)
        host = p.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{p.port}" if p.port else ""
    except ValueError:
        return "<unparsable URL>"
    return f"{p.scheme}://{host}{port}{p.path}" + ("?…" if p.query else "")


def _scrub(text: str, settings: TaxiiSettings | None) -> str:
    """``text`` with every secret of ``settings`` (and any URL user info) blanked out."""
    text = re.sub(r"(?<=://)[^/@\s]+@", "***@", text)
    if settings is not None:
        for secret in (settings.password, settings.token):
            if secret and len(secret) >= 1:
                text = text.replace(secret, "***")
                quoted = urllib.parse.quote(secret, safe="")
                if quoted != secret:
                    text = text.replace(quoted, "***")
    return text


def _read_config(path: Path, s: TaxiiSettings) -> None:
    cp = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as fh:
            cp.read_file(fh)
    except (OSError, UnicodeDecodeError, configparser.Error) as exc:
        raise TaxiiError(f"config file {path}: cannot read it ({exc})") from None
    if not cp.has_section("taxii"):
        raise TaxiiError(f"config file {path}: no [taxii] section")
    sec = cp["taxii"]
    if (sec.get("password") or sec.get("token")) and os.name == "posix":
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise TaxiiError(f"config file {path} holds a secret but others can read it: chmod 600 {path}")
    for attr in ("url", "user", "password", "token"):
        if sec.get(attr):
            setattr(s, attr, sec.get(attr))
            s.origin.append(f"{attr} from {path}")
    if sec.get("verify"):
        v = sec.get("verify")
        s.verify = False if v.lower() in ("false", "no", "0") else True if v.lower() in ("true", "yes", "1") else v


def _collection(s: TaxiiSettings):
    from taxii2client.v21 import Collection

    kwargs: dict[str, Any] = {"verify": s.verify}
    if s.token:
        kwargs["auth"] = _Bearer(s.token)
    elif s.user is not None:
        kwargs["user"] = s.user
        kwargs["password"] = s.password or ""
    try:
        return Collection(s.url, **kwargs)
    except Exception as exc:
        raise TaxiiError(f"{_safe_url(s.url)}: {_explain(exc, s)}") from None


class _Bearer:
    """requests auth: ``Authorization: Bearer <token>``."""

    def __init__(self, token: str):
        self._token = token

    def __call__(self, request):
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request


def _explain(exc: Exception, settings: TaxiiSettings | None = None) -> str:
    text = _scrub(str(exc), settings)
    resp = getattr(exc, "response", None)
    code = getattr(resp, "status_code", None)
    if code == 401:
        if settings is not None and settings.token:
            return "HTTP 401: the server refused the token (check TELFHASH_TAXII_TOKEN or token= in the config file)"
        if settings is not None and settings.user is None:
            return "HTTP 401: the server wants credentials (set TELFHASH_TAXII_USER/PASSWORD or TELFHASH_TAXII_TOKEN)"
        return "HTTP 401: the server refused the credentials (check TELFHASH_TAXII_USER/PASSWORD or the config file)"
    if code == 403:
        return "HTTP 403: these credentials may not use this collection"
    if code == 404:
        return "HTTP 404: no such API root or collection (check the URL)"
    if code == 413:
        return "HTTP 413: the request is too large for the server (use a smaller --chunk)"
    return f"{type(exc).__name__}: {text[:300]}"


@dataclass
class PublishReport:
    status_ids: list[str] = field(default_factory=list)
    success: int = 0
    failure: int = 0
    pending: int = 0
    already: int = 0  # objects (same id and content) the collection held before: not sent again
    new_versions: int = 0  # objects the collection held with other content: sent as a new version
    failures: list[str] = field(default_factory=list)


def _present(col, objects: list[dict]) -> set[tuple[str, str | None]]:
    """(id, version) of the collection's objects of the types in ``objects`` (from its manifest);
    version None for objects without ``modified``/``created`` (SCOs)."""
    from taxii2client.v21 import as_pages

    types = sorted({o.get("type") for o in objects if isinstance(o, dict) and isinstance(o.get("type"), str)})
    present: set[tuple[str, str | None]] = set()
    if not types:
        return present
    for page in as_pages(col.get_manifest, per_request=1000, type=types):
        for m in page.get("objects", []) or []:
            if isinstance(m, dict) and isinstance(m.get("id"), str):
                present.add((m["id"], m.get("version")))
                present.add((m["id"], None))
    return present


def _latest(col, ids: list[str]) -> dict[str, dict]:
    """The newest version the collection holds of each of ``ids``."""
    out: dict[str, dict] = {}
    for i in range(0, len(ids), 100):
        chunk = sorted(set(ids[i : i + 100]))
        if not chunk:
            continue
        env = col.get_objects(id=chunk)
        for o in env.get("objects", []) or []:
            if isinstance(o, dict) and isinstance(o.get("id"), str):
                cur = out.get(o["id"])
                if cur is None or str(o.get("modified", "")) > str(cur.get("modified", "")):
                    out[o["id"]] = o
    return out


def publish(
    bundle: dict, settings: TaxiiSettings, *, chunk: int = 500, timeout: int = 60, skip_present: bool = True
) -> PublishReport:
    """Add the bundle's objects to the collection, ``chunk`` objects per request, waiting for each
    request's status to be final (``timeout`` seconds).

    The collection is read first.  An object it already holds with the same content (whatever
    the timestamps; for SCOs the same id, ids being derived from content) is not sent again
    with ``skip_present`` (re-publishing an export is a no-op).  An object it holds with other
    content is sent as a new version, as STIX 2.1 wants it: the held ``created``, and a
    ``modified`` later than the held one.
    """
    objects = bundle.get("objects") if isinstance(bundle, dict) else None
    if not isinstance(objects, list):
        raise TaxiiError("not a bundle: no list of objects")
    col = _collection(settings)
    report = PublishReport()
    try:
        present = _present(col, objects)
        present_ids = {i for i, v in present if v is None}
        # Extension Definitions are fixed objects of ours (and medallion 3.0 cannot read them by id)
        latest = _latest(
            col,
            [
                o["id"]
                for o in objects
                if isinstance(o, dict)
                and "modified" in o
                and o.get("id") in present_ids
                and o.get("type") != "extension-definition"
            ],
        )
    except Exception as exc:
        where = _safe_url(settings.url)
        raise TaxiiError(f"{where}: reading what the collection holds: {_explain(exc, settings)}") from None
    for o in objects:
        if not isinstance(o, dict):
            continue
        if "modified" not in o and o.get("id") in present_ids:  # SCOs: the same id is the same content
            latest.setdefault(o["id"], o)
        elif o.get("type") == "extension-definition" and (o.get("id"), o.get("modified")) in present:
            latest.setdefault(o["id"], o)  # a fixed object: the same version is the same content
    objects, unchanged, report.new_versions = carry_versions(objects, latest, drop_unchanged=skip_present)
    report.already = unchanged if skip_present else 0
    step = chunk if chunk and chunk > 0 else max(len(objects), 1)
    for start in range(0, len(objects), step):
        envelope = {"objects": objects[start : start + step]}
        try:
            status = col.add_objects(envelope, wait_for_completion=True, poll_interval=1, timeout=timeout)
        except Exception as exc:
            raise TaxiiError(
                f"{_safe_url(settings.url)}: adding objects {start}-{start + len(envelope['objects']) - 1}: "
                f"{_explain(exc, settings)}"
            ) from None
        report.status_ids.append(str(getattr(status, "id", "")))
        report.success += int(getattr(status, "success_count", 0) or 0)
        report.failure += int(getattr(status, "failure_count", 0) or 0)
        report.pending += int(getattr(status, "pending_count", 0) or 0)
        for f in getattr(status, "failures", None) or []:
            report.failures.append(f"{f.get('id')}: {f.get('message', '')}" if isinstance(f, dict) else str(f))
    return report


def pull(
    settings: TaxiiSettings,
    *,
    types: Iterable[str] | None = None,
    added_after: str | None = None,
    ids: Iterable[str] | None = None,
    per_request: int = 1000,
) -> dict:
    """A bundle of the collection's objects matching the filters, read page by page
    (``per_request`` objects per page, or the server's smaller limit).

    Without ``types`` the read is unfiltered, as feed readers make it.  A server that answers
    it with HTTP 500 (medallion 3.0 does whenever the answer would include an Extension
    Definition: it reads its ``version`` "1.1.0" as a timestamp) is read again with
    ``match[type]`` set to the types of READ_TYPES, and the definition is fetched on its own
    (ours is taken from the package when that fails too).
    """
    col = _collection(settings)
    try:
        objects = _read_pages(col, types, added_after, ids, per_request)
    except Exception as exc:
        code = getattr(getattr(exc, "response", None), "status_code", None)
        if types is not None or code != 500:
            raise TaxiiError(f"{_safe_url(settings.url)}: reading objects: {_explain(exc, settings)}") from None
        log.info("%s: unfiltered read refused (HTTP 500); reading by type", _safe_url(settings.url))
        try:
            objects = _read_pages(col, READ_TYPES, added_after, ids, per_request)
        except Exception as exc2:
            raise TaxiiError(f"{_safe_url(settings.url)}: reading objects: {_explain(exc2, settings)}") from None
        types = READ_TYPES
    if types is not None and "extension-definition" not in set(types):
        ext = None
        try:
            got = col.get_object(EXTENSION_ID)
            found = [o for o in got.get("objects", []) or [] if o.get("id") == EXTENSION_ID]
            ext = found[-1] if found else None
        except Exception:
            ext = None  # medallion 3.0 answers HTTP 500 here; our definition ships with the package
        if ext is None and any(EXTENSION_ID in (o.get("extensions") or {}) for o in objects if isinstance(o, dict)):
            ext = extension_definition()
        if ext is not None:
            objects.insert(0, ext)
    return {"type": "bundle", "id": _pull_id(settings.url or "", objects), "objects": objects}


def _read_pages(col, types, added_after, ids, per_request: int) -> list[dict]:
    from taxii2client.v21 import as_pages

    filters: dict[str, Any] = {}
    if types is not None:
        filters["type"] = list(types)
    if added_after:
        filters["added_after"] = added_after
    if ids:
        filters["id"] = list(ids)
    objects: list[dict] = []
    for page in as_pages(col.get_objects, per_request=per_request, **filters):
        objects.extend(page.get("objects", []) or [])
    return objects


def _pull_id(url: str, objects: list[dict]) -> str:
    from .export import _sdo_id

    return _sdo_id("bundle", "taxii", url, *(f"{o.get('id')}@{o.get('modified', '')}" for o in objects))
