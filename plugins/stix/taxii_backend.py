"""medallion's memory backend as ``telfhash stix serve`` runs it: the same data and answers, with
object reads that take linear time and accept every STIX object.

This module is imported only inside the medallion process that ``serve`` starts (its config
names ``telfhash_plugins.stix.taxii_backend.TelfhashMemoryBackend``).  medallion 3.0's
``BasicFilter`` has two problems for shared clusters:

* it reads an object's version from a property named ``version`` before ``modified``, so any
  read whose answer includes an Extension Definition (``version`` is its semantic version,
  e.g. "1.1.0") fails with HTTP 500 -- unfiltered reads, as feed readers make, always do;
* its pagination matches every manifest entry against every object and parses timestamps
  inside that double loop, and its spec-version step compares every object with every other:
  a first page of a 2,000-object collection took 5-7 s, a pull of 2,105 objects 46 s.

``FastFilter`` keeps the filter's semantics (type, id, added_after, spec_version, version
first/last/all/dates, order by date added, limit and ``next``) with dictionaries and one
timestamp parse per distinct string.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from medallion.backends import memory_backend
from medallion.backends.memory_backend import MemoryBackend
from medallion.common import determine_spec_version, string_to_datetime
from medallion.filters.basic_filter import BasicFilter


@lru_cache(maxsize=65536)
def _when(text: str):
    return string_to_datetime(text)


def _version(obj: dict) -> Any:
    """The version of a STIX object (``modified``, else ``created``, else the date added) or of a
    manifest entry (``version``)."""
    if "type" not in obj and "version" in obj:  # a manifest entry
        return _when(obj["version"])
    for key in ("modified", "created", "_date_added"):
        if key in obj:
            return _when(obj[key])
    return _when(obj["version"])


def _spec(obj: dict) -> str:
    if "media_type" in obj:
        return obj["media_type"].split("version=")[1]
    return determine_spec_version(obj)


class FastFilter(BasicFilter):
    """``BasicFilter`` with linear-time steps and object versions read from ``modified``."""

    @staticmethod
    def filter_by_spec_version(data, spec_):
        if spec_:
            wanted = set(spec_.split(","))
            return [o for o in data if _spec(o) in wanted]
        newest: dict[str, str] = {}
        for o in data:
            s = _spec(o)
            if o["id"] not in newest or s > newest[o["id"]]:
                newest[o["id"]] = s
        return [o for o in data if _spec(o) == newest[o["id"]]]

    @staticmethod
    def filter_by_added_after(data, manifest_info, added_after_date):
        after = _when(added_after_date)
        if manifest_info is None:
            return [o for o in data if _when(o["date_added"]) > after]
        added = {(m["id"], _version(m)): _when(m["date_added"]) for m in manifest_info}
        return [o for o in data if added.get((o["id"], _version(o)), after) > after]

    @staticmethod
    def filter_by_version(data, version):
        indicators = (version or "last").split(",")
        if "all" in indicators:
            return data
        dates = {_when(x) for x in indicators if x not in ("first", "last")}
        keep: dict[tuple[str, Any], dict] = {}
        if dates:
            for o in data:
                if _version(o) in dates:
                    keep.setdefault((o["id"], _version(o)), o)
        for which in ("first", "last"):
            if which not in indicators:
                continue
            chosen: dict[str, dict] = {}
            for o in data:
                cur = chosen.get(o["id"])
                if cur is None or (_version(o) < _version(cur) if which == "first" else _version(o) > _version(cur)):
                    chosen[o["id"]] = o
            for o in chosen.values():
                keep.setdefault((o["id"], _version(o)), o)
        return sorted(keep.values(), key=lambda o: o["id"])

    def sort_and_paginate(self, data, limit, manifest):
        headers: dict[str, str] = {}
        if not data:
            return [], {}, headers
        if manifest:
            manifest.sort(key=lambda m: m["date_added"])
            by_key: dict[tuple[str, Any], dict] = {}
            for o in data:
                by_key.setdefault((o["id"], _version(o)), o)
            new, dates = [], []
            for m in manifest:
                o = by_key.pop((m["id"], _version(m)), None)
                if o is not None:
                    new.append(o)
                    dates.append(m["date_added"])
            if not new:
                return [], {}, headers
            headers["X-TAXII-Date-Added-First"] = dates[0]
            if limit and limit < len(new):
                headers["X-TAXII-Date-Added-Last"] = dates[limit - 1]
                return new[:limit], new[limit:], headers
            headers["X-TAXII-Date-Added-Last"] = dates[-1]
            return new, {}, headers
        data.sort(key=lambda x: x["date_added"])
        next_save: Any = {}
        if limit and limit < len(data):
            next_save = data[limit:]
            data = data[:limit]
        headers["X-TAXII-Date-Added-First"] = data[0]["date_added"]
        headers["X-TAXII-Date-Added-Last"] = data[-1]["date_added"]
        return data, next_save, headers


# the backend's methods look the filter class up in their module: the medallion process that
# loads this module uses the fast one everywhere
memory_backend.BasicFilter = FastFilter  # type: ignore[misc]
memory_backend.find_att = _version  # page headers of later pages (get_next)


class TelfhashMemoryBackend(MemoryBackend):
    """medallion's ``MemoryBackend`` with :class:`FastFilter`."""
