"""The one reader of telfhash output: every layout it accepts, a Problem per bad line, and a memory
bound whatever the input."""

from __future__ import annotations

import io
import json
import tracemalloc

import pytest

from telfhash_core import readers
from telfhash_core.readers import Problem, iter_items, read_items

D = "t1" + "0f" * 35


def items(data: bytes, **kw) -> list:
    return list(iter_items(io.BytesIO(data), **kw))


def test_jsonl_json_list_and_text_layouts():
    rows = [{"file": "a", "telfhash": D}, {"file": "b", "telfhash": "-"}]
    assert items("".join(json.dumps(r) + "\n" for r in rows).encode()) == rows
    assert items(json.dumps(rows).encode()) == rows
    assert items(f"a b.so  {D}\nx\t{D}\n{D}\n# comment\n".encode(), text=True) == [
        {"file": "a b.so", "telfhash": D},
        {"file": "x", "telfhash": D},
        D,
    ]
    assert items(json.dumps([D, {"file": "y"}]).encode(), strings=True) == [D, {"file": "y"}]


def test_each_bad_line_is_a_problem_and_the_rest_goes_on():
    got = items(b'{"file": "a"}\n{broken\n[1, 2]\n"text"\n{"file": "b"}\n{"cut": ')
    assert [g for g in got if not isinstance(g, Problem)] == [{"file": "a"}, {"file": "b"}]
    problems = [g for g in got if isinstance(g, Problem)]
    assert [p.lineno for p in problems] == [2, 3, 4, 6]
    assert problems[0].at("r.jsonl").startswith("r.jsonl:2: not valid JSON")
    assert [p.cut for p in problems] == [False, False, False, True]  # only the unfinished last line


def test_problems_copy_as_plain_strings():
    import copy

    p = items(b"{bad\n")[0]
    assert isinstance(p, Problem) and copy.deepcopy([p]) == [str(p)]


def test_a_line_without_end_stops_the_reading_within_the_bound(monkeypatch):
    monkeypatch.setattr(readers, "MAX_LINE", 1 << 16)
    endless = io.BytesIO(b"\x00" * (8 << 20))  # /dev/zero, cut short
    tracemalloc.start()
    try:
        got = list(iter_items(endless))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(got) == 1 and isinstance(got[0], Problem) and "stopped reading" in got[0]
    assert peak < 4 << 20


def test_a_json_list_over_the_bound_is_refused(monkeypatch):
    monkeypatch.setattr(readers, "MAX_JSON_LIST", 100)
    got = items(json.dumps([{"file": str(k)} for k in range(50)], indent=1).encode())  # as -f json --details writes
    assert len(got) == 1 and "write JSONL instead" in got[0]


@pytest.mark.parametrize("data", [b"[" * 100_000, b'{"a": ' * 100_000 + b"1" + b"}" * 100_000 + b"\n"])
def test_deep_nesting_is_a_problem_not_a_crash(data):
    got = items(data)
    assert got and all(isinstance(g, Problem) for g in got)


def test_read_items_reports_with_the_source():
    errors: list[str] = []
    assert read_items('{"file": "a"}\n{bad\n', "in.jsonl", errors) == [{"file": "a"}]
    assert errors == ["in.jsonl:2: not valid JSON (Expecting property name enclosed in double quotes)"]


def test_orjson_or_not_the_same_items(monkeypatch):
    """Lines are read by orjson where it is installed; where it would read a line differently
    from json (integers beyond 64 bits, NaN, lone surrogates, bad UTF-8, BOM) the standard path
    reads it, so every item is json.loads of the line."""
    lines = [
        b'{"file": "a", "telfhash": "' + D.encode() + b'", "n": -12345678901234567890}',
        b'{"file": "b", "n": 123456789012345678901234567890, "x": {"y": [1, 2.5]}}',
        b'{"file": "c", "n": 18446744073709551615, "m": -9223372036854775809}',
        b'{"file": "d", "v": NaN, "w": -Infinity}',
        b'{"file": "e\\ud800", "a": 1, "a": 2}',
        b'{"file": "f\xff"}',
        b'\xef\xbb\xbf{"file": "g"}',
        b'{"file": "h", "deep": ' + b"[" * 900 + b"]" * 900 + b"}",
        b'{"file": "i", "f": 1.5e300, "z": -0.0}',
        b'{"file": "j"}\x0c',
    ]
    data = b"\n".join(lines) + b"\n"
    want = []
    for raw in lines:
        try:
            want.append(json.loads(raw.decode("utf-8", "replace").strip()))
        except ValueError:
            want.append("problem")

    def shown(got):
        return ["problem" if isinstance(it, Problem) else it for it in got]

    fast = shown(items(data))
    monkeypatch.setattr(readers, "_fast_loads", None)
    assert fast == shown(items(data))
    assert repr(fast) == repr(want)  # repr: NaN != NaN, and -0.0 == 0.0
