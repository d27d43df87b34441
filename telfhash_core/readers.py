"""The one reader of what ``telfhash`` writes, with one memory bound for every caller.

The index (``index add --jsonl``), ``telfhash cluster`` and ``telfhash batch cluster`` all read
results written earlier: one JSON list (``-f json``), JSON lines (``-f jsonl``, batch output)
and, where a caller asks for text, ``-f tsv`` / the default layout or one digest per line.
Hostile input is expected: each bad line becomes a :class:`Problem` (a ``str`` saying where and
why) and the reading goes on; a line longer than :data:`MAX_LINE` or a JSON list larger than
:data:`MAX_JSON_LIST` stops the reading with a Problem, so ``/dev/zero`` cannot exhaust memory.

    >>> with open("results.jsonl", "rb") as fh:
    ...     for item in iter_items(fh):
    ...         if isinstance(item, Problem): print("skipped", item)
"""

from __future__ import annotations

import io
import json
from typing import IO, Any, Callable, Iterator

_fast_loads: Callable[[bytes], Any] | None = None
try:  # optional (extra "fast"): parses a JSON line several times faster than json.loads
    import orjson

    _fast_loads = orjson.loads
except ImportError:  # pragma: no cover - the core install: the standard library reads every line
    pass

MAX_LINE = 16 << 20  # a line longer than this is not a result: stop reading there
MAX_JSON_LIST = 1 << 30  # a JSON list file larger than this is refused


class Problem(str):
    """Why one line or entry could not be read (``"line 7: not valid JSON (...)"``).

    ``cut`` is True for a last line without its newline that is not JSON: a line cut short by a
    killed writer (batch output ignores it; it is rewritten on resume)."""

    lineno: int
    why: str
    cut: bool
    where: str

    def __new__(cls, lineno: int, why: str, *, cut: bool = False, where: str = "line") -> "Problem":
        obj = super().__new__(cls, f"{where} {lineno}: {why}")
        obj.lineno, obj.why, obj.cut, obj.where = lineno, why, cut, where
        return obj

    def __reduce__(self):  # copied or pickled: a plain string
        return (str, (str(self),))

    def at(self, source: str) -> str:
        """``"SOURCE:LINE: why"``, as compilers report (``"SOURCE: item K: why"`` in a JSON list)."""
        if self.where == "line":
            return f"{source}:{self.lineno}: {self.why}"
        return f"{source}: {self}"


def _parse_text_line(line: str) -> Any:
    """A digest alone, ``file<TAB>digest`` (``-f tsv``) or ``file  digest`` (default output)."""
    if "\t" in line:
        name, _, value = line.rpartition("\t")
        return {"file": name, "telfhash": value.strip()}
    parts = line.rsplit(None, 1)
    if len(parts) == 2:
        return {"file": parts[0].rstrip(), "telfhash": parts[1]}
    return parts[0]


def _decode(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw


def _fast_object(raw: bytes | str) -> dict | None:
    """The object on a line that starts with ``{``, read by orjson when it is installed; None when
    the standard path must read the line: no orjson, not bytes, or anything orjson refuses (bad
    UTF-8, lone surrogates, NaN, ...).  orjson reads an integer beyond 64 bits as a float where
    json keeps the int, so an object holding a float goes to json as well.  Where orjson's object
    is kept, ``json.loads`` gives the same one: the items do not depend on orjson."""
    if _fast_loads is None or not isinstance(raw, bytes) or raw[:1] != b"{":
        return None
    try:
        item = _fast_loads(raw)
        if not isinstance(item, dict) or _holds_float(item):
            return None
    except (ValueError, TypeError, RecursionError):
        return None
    return item


def _holds_float(obj: dict | list) -> bool:
    values = obj.values() if type(obj) is dict else obj
    types = set(map(type, values))  # one pass in C: a result line holds strings and None
    if float in types:
        return True
    if dict in types or list in types:
        return any(_holds_float(v) for v in values if type(v) is dict or type(v) is list)
    return False


def iter_items(fh: IO, *, text: bool = False, strings: bool = False) -> Iterator[Any]:
    """Items of a stream (binary or text) written by ``telfhash``: dicts, and a :class:`Problem`
    for each line or entry that cannot be read.

    ``text=True`` also reads the text layouts (``-f tsv``, the default output, one digest per
    line; ``#`` starts a comment), giving dicts ``{"file", "telfhash"}`` or digest strings.
    ``strings=True`` keeps the strings of a JSON list (a list of digests) as items.
    """
    first = True
    lineno = 0
    while True:
        raw = fh.readline(MAX_LINE + 1)
        if not raw:
            return
        lineno += 1
        if len(raw) > MAX_LINE:
            yield Problem(lineno, f"longer than {MAX_LINE:,} bytes, not a result; stopped reading")
            return
        fast = _fast_object(raw)
        if fast is not None:
            first = False
            yield fast
            continue
        line = _decode(raw)
        stripped = line.strip()
        if not stripped or (text and stripped.startswith("#")):
            continue
        if first and stripped.startswith("["):
            yield from _json_list(fh, line, lineno, strings)
            return
        first = False
        if text and not stripped.startswith("{"):
            yield _parse_text_line(stripped)
            continue
        try:
            item = json.loads(stripped)
        except ValueError as exc:
            yield Problem(
                lineno, f"not valid JSON ({getattr(exc, 'msg', str(exc))[:200]})", cut=not line.endswith("\n")
            )
            continue
        except RecursionError:
            yield Problem(lineno, "JSON nested too deeply")
            continue
        yield item if isinstance(item, dict) else Problem(lineno, "not a JSON object")


def _json_list(fh: IO, line: str, lineno: int, strings: bool) -> Iterator[Any]:
    rest = fh.read(MAX_JSON_LIST)
    if fh.read(1):
        yield Problem(lineno, f"a JSON list over {MAX_JSON_LIST >> 30} GB; write JSONL instead")
        return
    try:
        items = json.loads(line + _decode(rest))
    except (ValueError, RecursionError) as exc:
        yield Problem(lineno, f"not valid JSON ({type(exc).__name__}: {str(exc)[:200]})")
        return
    if not isinstance(items, list):
        yield Problem(lineno, "expected a JSON list or one object per line")
        return
    for k, it in enumerate(items):
        if isinstance(it, dict) or (strings and isinstance(it, str)):
            yield it
        else:
            yield Problem(k, "not a JSON object" + (" or string" if strings else ""), where="item")


def read_items(text: str, source: str = "<input>", errors: list[str] | None = None) -> list[Any]:
    """Every item of ``text`` (see :func:`iter_items` with ``text=True, strings=True``); problems
    are appended to ``errors`` as ``"SOURCE: ..."`` and skipped."""
    errors = [] if errors is None else errors
    items: list[Any] = []
    for item in iter_items(io.StringIO(text), text=True, strings=True):
        if isinstance(item, Problem):
            errors.append(item.at(source))
        else:
            items.append(item)
    return items
