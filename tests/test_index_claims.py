"""Index semantics for values that come from others: claims never outrank values computed from
the bytes, atomic adds, provenance, and many queries answered in one pass.

Digests and distances come from the corpus manifest (the reference tool) and py-tlsh.
"""

from __future__ import annotations

import hashlib

import corpus
import pytest
import tlsh
from telfhash_plugins.stix import add_to_index, export_bundle, read_bundle, search_index

from telfhash_core.store.index import CLAIMED, Index


def _diff(a: str, b: str) -> int:
    return tlsh.diff("T1" + a[2:].upper(), "T1" + b[2:].upper())


@pytest.fixture(scope="module")
def two_files():
    fs = [f for f in corpus.files() if f["reference"]["telfhash"].startswith("t1")]
    a = fs[0]
    b = next(
        f
        for f in fs
        if f["reference"]["telfhash"] != a["reference"]["telfhash"]
        and _diff(a["reference"]["telfhash"], f["reference"]["telfhash"]) > 100
    )
    return a, b


def _poisoned_bundle(real, wrong_telfhash):
    """A bundle claiming ``wrong_telfhash`` for the real file's SHA-256 (and MD5/SHA-1)."""
    data = open(real["abspath"], "rb").read()
    row = {"file": "elsewhere/sample", "telfhash": wrong_telfhash, "sha256": real["sha256"]}
    other = {"file": "elsewhere/other", "telfhash": wrong_telfhash, "sha256": hashlib.sha256(b"other").hexdigest()}
    b = export_bundle(
        [row, other],
        [{"members": ["elsewhere/sample", "elsewhere/other"]}],
        hash_files=False,
        timestamp="2026-11-27T00:00:00Z",
    )
    assert real["sha256"] == hashlib.sha256(data).hexdigest()
    return b


def test_poisoning_claim_first_then_the_real_file_wins(tmp_path, two_files):
    real, other = two_files
    db = tmp_path / "ix.sqlite"
    bundle = _poisoned_bundle(real, other["reference"]["telfhash"])
    rep = read_bundle(bundle)
    stats = add_to_index(rep, str(db))
    assert stats["added"] == 2
    with Index(db) as ix:
        e = ix.get(real["sha256"])
        assert e["method"] == CLAIMED and e["source"] == rep.source
        assert e["extra"]["stix_bundle"] == bundle["id"] and e["extra"]["stix_cluster"].startswith("grouping--")
        st = ix.add_files([real["abspath"]])  # the file itself, hashed here
        assert st.updated == 1
        e = ix.get(real["sha256"])
        assert e["telfhash"] == real["reference"]["telfhash"] and e["source"] == "local" and e["method"] != CLAIMED
        assert e["extra"]["replaced_claim"] == {"source": rep.source, "telfhash": other["reference"]["telfhash"]}
        hits = ix.search(real["abspath"], max_distance=0)
        assert [h.sha256 for h in hits] == [real["sha256"]]
    # the same claim again changes nothing and is reported
    stats = add_to_index(read_bundle(bundle), str(db))
    assert len(stats["local_kept"]) == 1 and real["sha256"] in stats["local_kept"][0]
    with Index(db) as ix:
        assert ix.get(real["sha256"])["telfhash"] == real["reference"]["telfhash"]


def test_poisoning_local_first_then_the_claim_changes_nothing(tmp_path, two_files):
    real, other = two_files
    db = tmp_path / "ix.sqlite"
    with Index(db) as ix:
        ix.add_files([real["abspath"]])
    stats = add_to_index(read_bundle(_poisoned_bundle(real, other["reference"]["telfhash"])), str(db))
    assert stats["local_kept"] and stats["added"] == 1  # only the other sample is new
    with Index(db) as ix:
        e = ix.get(real["sha256"])
        assert e["telfhash"] == real["reference"]["telfhash"] and e["source"] == "local"
        assert [h.sha256 for h in ix.search(real["reference"]["telfhash"], max_distance=0)] == [real["sha256"]]


def test_an_add_is_atomic_all_or_nothing(tmp_path, two_files):
    real, _ = two_files
    db = tmp_path / "ix.sqlite"

    def rows():
        for i in range(5000):
            yield {
                "file": f"r{i}",
                "telfhash": real["reference"]["telfhash"],
                "sha256": hashlib.sha256(b"%d" % i).hexdigest(),
            }
            if i == 4000:
                raise RuntimeError("interrupted")

    with Index(db) as ix:
        with pytest.raises(RuntimeError):
            ix.add_results(rows(), source="stix:x", claim=True, atomic=True)
        assert len(ix) == 0
        with pytest.raises(RuntimeError):
            ix.add_results(rows(), source="stix:x", claim=True, batch_size=1000)
        assert len(ix) == 4000  # batched: what was committed stays (the old behaviour, still there on request)


def test_search_many_equals_one_search_per_digest(tmp_path):
    fs = [f for f in corpus.files() if f["reference"]["telfhash"].startswith("t1")][:300]
    db = tmp_path / "ix.sqlite"
    with Index(db) as ix:
        ix.add_results(
            [{"file": f["abspath"], "telfhash": f["reference"]["telfhash"], "sha256": f["sha256"]} for f in fs[:200]]
        )
        ix.add_results(
            [{"file": f["abspath"], "telfhash": f["reference"]["telfhash"], "sha256": f["sha256"]} for f in fs[200:]],
            source="stix:b",
        )
        queries = [f["reference"]["telfhash"] for f in fs[::3]] * 3 + [fs[0]["reference"]["telfhash"].upper()]
        for limit in (Index.MANY_DIRECT_LIMIT, 0):  # per distinct digest, and the all-pairs scan
            ix.MANY_DIRECT_LIMIT = limit
            many = ix.search_many(queries, 60, exclude_sources=["stix:b"])
            for q in set(queries):
                t1 = "t1" + q[2:].lower()
                want = [(m.sha256, m.distance) for m in ix.search(q, 60) if m.source != "stix:b"]
                assert sorted((m.sha256, m.distance) for m in many.get(t1, [])) == sorted(want)
                for m in many.get(t1, []):
                    assert m.distance == _diff(t1, m.telfhash) and m.source != "stix:b"


def test_import_searches_once_per_distinct_digest(tmp_path, monkeypatch, two_files):
    real, _ = two_files
    import telfhash_core.similarity.tlshdist as td

    n = 3000
    rows = [
        {"file": f"s{i}", "telfhash": real["reference"]["telfhash"], "sha256": hashlib.sha256(b"s%d" % i).hexdigest()}
        for i in range(n)
    ]
    b = export_bundle(
        rows, [{"members": [r["file"] for r in rows]}], hash_files=False, timestamp="2026-11-27T00:00:00Z", yara=False
    )
    db = tmp_path / "ix.sqlite"
    with Index(db) as ix:
        ix.add_results([{"file": real["abspath"], "telfhash": real["reference"]["telfhash"], "sha256": real["sha256"]}])
    rep = read_bundle(b)
    assert add_to_index(rep, str(db))["added"] == n
    calls = []
    orig = td.one_to_many
    monkeypatch.setattr(td, "one_to_many", lambda *a, **k: calls.append(1) or orig(*a, **k))
    matches = search_index(rep, str(db), 50)
    assert len(calls) == 1  # n Files, one distinct telfhash: one pass
    assert [(m.file, m.distance) for m in matches] == [(real["abspath"], 0)]  # the bundle's own rows are left out
