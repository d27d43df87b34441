"""Our telfhash equals the reference tool's on every file of the shared corpus and the fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import corpus
from telfhash_core import hash_bytes, hash_file
from telfhash_core.hashing.elf import hash_buffer

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_entries():
    return json.loads((FIXTURES / "fixtures.json").read_text())["files"]


@pytest.mark.parametrize("entry", fixture_entries(), ids=lambda e: e["fixture"])
def test_fixture_matches_reference(entry):
    r = hash_file(FIXTURES / entry["fixture"])
    assert r.reference_telfhash == entry["reference"]["telfhash"]
    assert r.msg == entry["reference"]["msg"]


def test_fixtures_cover_every_path():
    entries = fixture_entries()
    methods = {hash_file(FIXTURES / e["fixture"]).method for e in entries}
    assert {"dynsym", "fallback"} <= methods
    values = {e["reference"]["telfhash"][:2] for e in entries}
    assert values == {"t1", "tn", "-"}
    fallback_hashed = {
        hash_file(FIXTURES / e["fixture"]).arch
        for e in entries
        if e["reference"]["telfhash"].startswith("t1") and hash_file(FIXTURES / e["fixture"]).method == "fallback"
    }
    assert {"x64", "x86", "ARM"} <= fallback_hashed


def test_whole_corpus_matches_reference():
    """Every one of the shared corpus' files: telfhash and message as the reference printed them."""
    files = corpus.files()
    mismatches = []
    for f in files:
        r = hash_file(f["abspath"])
        ref = f["reference"]
        if (r.reference_telfhash, r.msg) != (ref["telfhash"], ref["msg"]):
            mismatches.append((f["path"], r.reference_telfhash, ref["telfhash"], r.msg, ref["msg"]))
    assert not mismatches, f"{len(mismatches)} of {len(files)} differ, e.g. {mismatches[:5]}"
    assert len(files) == 1811


def test_corpus_exercises_both_paths_on_every_architecture():
    seen = set()
    for f in corpus.files():
        r = hash_file(f["abspath"])
        seen.add((f["arch"], r.method))
    archs = {a for a, _ in seen}
    assert len(archs) == 13
    for arch in ("amd64", "i386", "armel", "armhf", "mips", "mipsel", "arm64", "ppc64el", "s390x"):
        assert (arch, "dynsym") in seen and (arch, "fallback") in seen, arch


def test_fast_route_equals_exact_route_on_corpus():
    """The struct-based route and the pyelftools route agree on every corpus file."""
    differ = []
    for f in corpus.files():
        data = Path(f["abspath"]).read_bytes()
        a, b = hash_buffer(data, "x"), hash_buffer(data, "x", exact=True)
        if (a.telfhash, a.reason, a.method, a.symbols) != (b.telfhash, b.reason, b.method, b.symbols):
            differ.append(f["path"])
    assert not differ, differ[:5]


def test_bytes_and_path_agree_on_corpus_sample():
    for f in corpus.files()[::37]:
        data = Path(f["abspath"]).read_bytes()
        assert hash_bytes(data).reference_telfhash == f["reference"]["telfhash"]
