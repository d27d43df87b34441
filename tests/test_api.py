"""The public API: the three ways in, the reference-compatible function, digest spellings, hooks."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import tlsh

import corpus
import telfhash_core as tc
from telfhash_core.plugins import get_plugin_manager, reset_plugin_manager

FIX = Path(__file__).parent / "fixtures"
ENTRIES = json.loads((FIX / "fixtures.json").read_text())["files"]
HASHED = [e for e in ENTRIES if e["reference"]["telfhash"].startswith("t1")]


def test_path_bytes_and_fileobj_agree():
    for e in ENTRIES:
        p = FIX / e["fixture"]
        a = tc.hash_file(p)
        b = tc.hash_bytes(p.read_bytes(), name=str(p))
        with open(p, "rb") as fh:
            c = tc.hash_fileobj(fh)
        assert a.reference_telfhash == b.reference_telfhash == c.reference_telfhash == e["reference"]["telfhash"]
        assert c.file == str(p)
        assert a.size == b.size == e["size"]


def test_sha256_on_request():
    e = ENTRIES[0]
    r = tc.hash_file(FIX / e["fixture"], sha256=True)
    assert r.sha256 == e["sha256"]
    assert tc.hash_file(FIX / e["fixture"]).sha256 is None


def test_reference_compatible_function(tmp_path):
    paths = [str(FIX / e["fixture"]) for e in ENTRIES[:5]]
    out = tc.telfhash(*paths, str(tmp_path / "does-not-exist"))
    assert [d["file"] for d in out] == paths  # missing paths skipped, as the reference skips them
    assert all(set(d) == {"file", "telfhash", "msg"} for d in out)
    assert [d["telfhash"] for d in out] == [e["reference"]["telfhash"] for e in ENTRIES[:5]]
    star = tc.telfhash(str(FIX / "elf" / "amd64__*"))
    assert len(star) == sum(1 for e in ENTRIES if e["fixture"].startswith("elf/amd64__")) >= 3
    rec = tc.telfhash(str(FIX / "elf"), recursive=True)
    assert len(rec) == len(ENTRIES)


def test_reasons_in_words():
    tnull = next(e for e in ENTRIES if e["reference"]["telfhash"] == "tnull")
    r = tc.hash_file(FIX / tnull["fixture"])
    assert r.reason is tc.Reason.TOO_FEW_SYMBOLS and "TLSH" in r.detail
    s390 = tc.hash_file(FIX / "elf" / "s390x__klibc-utils__usr__lib__klibc__bin__false")
    assert s390.reason is tc.Reason.UNSUPPORTED_ARCH and "IBM S/390" in s390.detail
    assert s390.msg == "No symbols found"


def test_result_dict_round_trip():
    r = tc.hash_file(FIX / HASHED[0]["fixture"], sha256=True)
    d = json.loads(json.dumps(r.to_dict()))
    back = tc.Result.from_dict(d)
    assert back.telfhash == r.telfhash and back.sha256 == r.sha256 and back.arch == r.arch
    ref = tc.Result.from_dict({"file": "x", "telfhash": "tnull", "msg": ""})
    assert ref.reason is tc.Reason.TOO_FEW_SYMBOLS and not ref.ok
    for spelling in ("T1", "hex"):
        other = tc.Result.from_dict({"file": "x", "telfhash": tc.normalize(r.telfhash, spelling)})
        assert other.telfhash == r.telfhash and other.ok


def test_spellings_and_distance():
    digests = [e["reference"]["telfhash"] for e in HASHED]
    rng = random.Random(7)
    for _ in range(50):
        a, b = rng.choice(digests), rng.choice(digests)
        expected = tlsh.diff(a.upper(), b.upper())
        for fa in ("t1", "T1", "hex"):
            for fb in ("t1", "T1", "hex"):
                assert tc.distance(tc.normalize(a, fa), tc.normalize(b, fb)) == expected
    d = digests[0]
    assert tc.normalize(d, "hex") == d[2:].upper() and len(tc.normalize(d, "hex")) == 70
    assert tc.normalize(d.upper(), "t1") == d
    for bad in ("tnull", "-", "", "t1xyz", d[:-1], "x" * 70, None):
        assert not tc.is_digest(bad)
        with pytest.raises(ValueError):
            tc.normalize(bad)


def test_digest_spellings_on_corpus_pairs():
    files = [f for f in corpus.files() if f["reference"]["telfhash"].startswith("t1")]
    rng = random.Random(3)
    for _ in range(300):
        a, b = rng.choice(files)["reference"]["telfhash"], rng.choice(files)["reference"]["telfhash"]
        assert tc.distance(a, tc.normalize(b, "hex")) == tlsh.diff(a.upper(), b.upper())


def test_plugin_hooks_reach_results_and_formats(monkeypatch, capsys):
    from telfhash_core import cli
    from telfhash_core.formats import OutputFormat
    from telfhash_core.hookspecs import hookimpl

    seen = []

    class Plugin:
        @hookimpl
        def telfhash_result(self, result, options):
            seen.append(result.file)

        @hookimpl
        def telfhash_output_formats(self):
            return [OutputFormat("names", "just names", lambda rs, out, ctx: out.write(",".join(r.file for r in rs)))]

        @hookimpl
        def telfhash_fields(self):
            return {"first_byte": lambda buf, result: buf[0]}

    reset_plugin_manager()
    try:
        get_plugin_manager().register(Plugin())
        path = str(FIX / HASHED[0]["fixture"])
        assert cli.main(["-f", "names", path]) == 0
        assert capsys.readouterr().out.startswith(path)
        assert seen == [path]
        r = tc.hash_file(path, fields=["first_byte", "unknown"])
        assert r.extra == {"first_byte": 0x7F, "unknown": None}
    finally:
        reset_plugin_manager()
