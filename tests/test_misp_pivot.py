"""The MISP module's pivot and hover: known samples from a real local index of corpus files,
checked against py-tlsh distances between the reference digests of the corpus manifest.  Hover
requests are shaped as AttributesController::hoverEnrichment builds them (no data)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import corpus
import pytest

pytest.importorskip("pymisp", reason="pymisp is not installed (pip install -e '.[misp]')")

import tlsh
from telfhash_plugins.misp import expansion, hover
from test_misp import (
    enrich_request,
    hover_request,
    malware_sample,
    misp_attribute,
    values,
)

from telfhash_core.store import index as index_mod


def ref_distance(a: str, b: str) -> int:
    """py-tlsh diff (length term included) between two reference digests (t1 + 70 hex)."""
    return tlsh.diff("T1" + a[2:].upper(), "T1" + b[2:].upper())


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """An index of the IoT families' dynamically linked builds plus a few unrelated programs."""
    files = corpus.files()
    chosen = [f for f in files if "iot-fam" in f["pkg"] and f["path"].endswith("_dyn")]
    chosen += [f for f in files if f["pkg"] == "coreutils" and f["arch"] == "amd64"][:8]
    path = tmp_path_factory.mktemp("misp-index") / "index.sqlite"
    with index_mod.Index(path) as ix:
        ix.add_files([f["abspath"] for f in chosen], jobs=1, progress=False)
        assert len(ix) == len({f["sha256"] for f in chosen})
    return str(path), chosen


def expected(query_entry: dict, chosen: list[dict], max_distance: int, self_excluded: bool = True):
    q = query_entry["reference"]["telfhash"]
    out = {}
    for f in chosen:
        t = f["reference"]["telfhash"]
        if not t.startswith("t1") or (self_excluded and f["sha256"] == query_entry["sha256"]):
            continue
        d = ref_distance(q, t)
        if d <= max_distance:
            out[f["sha256"]] = d
    return out


def malware_sample_attribute(data: bytes, name: str) -> dict:
    return malware_sample(data, name)


def query(attribute: dict, config: dict | None = None, module: str = "telfhash_expansion") -> dict:
    return enrich_request(attribute, config, module)


def split(res: dict):
    objs = res["results"]["Object"]
    return objs[0], objs[1:]


def test_sample_pivot_matches_brute_force(indexed):
    path, chosen = indexed
    entry = next(f for f in chosen if f["path"] == "armel/iot-fam-a/fam_a_v1_arm_dyn")
    data = Path(entry["abspath"]).read_bytes()
    attr = malware_sample_attribute(data, "fam_a.elf")
    res = expansion.dict_handler(query(attr, {"index_path": path, "max_distance": "120", "max_results": "100"}))
    assert "error" not in res, res
    sample, known = split(res)
    want = expected(entry, chosen, 120)
    assert len(want) >= 6  # the same program built for the other architectures
    got = {values(o)["sha256"]: o for o in known}
    assert set(got) == set(want)
    by_uuid = {o["uuid"]: o for o in known}
    refs = [r for r in sample["ObjectReference"] if r["relationship_type"] == "similar"]
    assert len(refs) == len(known)
    for r in refs:
        o = by_uuid[r["referenced_uuid"]]
        sha = values(o)["sha256"]
        assert r["comment"] == f"telfhash distance {want[sha]}"
        assert f"telfhash distance {want[sha]}" in o["comment"]
        ref_t = next(f for f in chosen if f["sha256"] == sha)["reference"]["telfhash"]
        assert values(o)["telfhash"] == ref_t[2:]
        assert all(a["to_ids"] is False for a in o["Attribute"])  # other samples: never detection rules
        assert "/" not in values(o)["filename"] and "/" not in o["comment"]  # no server paths
    # the input reference is still there
    assert [r["referenced_uuid"] for r in sample["ObjectReference"] if r["relationship_type"] == "characterizes"] == [
        attr["uuid"]
    ]


def test_pivot_cap_and_distance(indexed):
    path, chosen = indexed
    entry = next(f for f in chosen if f["path"] == "amd64/iot-fam-b/fam_b_v1_x86_64_dyn")
    data = Path(entry["abspath"]).read_bytes()
    want = expected(entry, chosen, 200)
    config = {"index_path": path, "max_distance": "200", "max_results": "3"}
    res = expansion.dict_handler(query(malware_sample_attribute(data, "b"), config))
    _, known = split(res)
    assert len(known) == min(3, len(want))
    dists = sorted(want.values())
    got = [want[values(o)["sha256"]] for o in known]
    assert got == dists[: len(got)]  # the nearest ones, nearest first
    res = expansion.dict_handler(query(malware_sample_attribute(data, "b"), {"index_path": path, "max_distance": "0"}))
    _, known = split(res)
    assert {values(o)["sha256"] for o in known} == set(expected(entry, chosen, 0))


def test_default_distance_is_50(indexed):
    path, chosen = indexed
    entry = next(f for f in chosen if f["path"] == "i386/iot-fam-a/fam_a_v2_i686_dyn")
    data = Path(entry["abspath"]).read_bytes()
    config = {"index_path": path, "max_results": "1000"}
    res = expansion.dict_handler(query(malware_sample_attribute(data, "x"), config))
    _, known = split(res)
    assert {values(o)["sha256"] for o in known} == set(expected(entry, chosen, 50))
    assert set(expected(entry, chosen, 400)) - set(expected(entry, chosen, 50))  # the default leaves some out


def test_telfhash_attribute_returns_only_the_pivot(indexed):
    path, chosen = indexed
    entry = next(f for f in chosen if f["path"] == "mips/iot-fam-b/fam_b_v2_mips_dyn")
    for spelling in (entry["reference"]["telfhash"], entry["reference"]["telfhash"][2:].upper()):
        attr = misp_attribute("telfhash", spelling)
        res = expansion.dict_handler(query(attr, {"index_path": path, "max_results": "1000"}))
        objs = res["results"]["Object"]
        want = expected(entry, chosen, 50, self_excluded=False)
        assert {values(o)["sha256"] for o in objs} == set(want)
        for o in objs:
            (ref,) = o["ObjectReference"]
            assert ref["referenced_uuid"] == attr["uuid"] and ref["relationship_type"] == "similar"
            assert ref["comment"] == f"telfhash distance {want[values(o)['sha256']]}"
        # hover answers the same for a digest (bounded by its own default cap of 5)
        hres = hover.dict_handler(hover_request(attr, {"index_path": path}))
        assert len(hres["results"]["Object"]) == min(5, len(want))
        for o in hres["results"]["Object"]:  # the hover shows attributes only: the distance is one of them
            assert values(o)["text"].startswith(f"telfhash distance {want[values(o)['sha256']]} to telfhash ")


def test_hover_of_a_known_malware_sample_shows_its_telfhash_and_neighbours(indexed):
    """MISP hovers with the attribute only ("name|md5", no data): looked up by its MD5."""
    import time

    path, chosen = indexed
    entry = next(f for f in chosen if f["path"] == "armel/iot-fam-a/fam_a_v1_arm_dyn")
    data = Path(entry["abspath"]).read_bytes()
    req = hover_request(malware_sample(data, "fam_a.elf"), {"index_path": path, "max_distance": "120"})
    assert "data" not in req["attribute"]
    t = time.perf_counter()
    res = hover.dict_handler(req)
    assert time.perf_counter() - t < 5.0  # MISP's hover budget
    sample, known = split(res)
    v = values(sample)
    assert v["telfhash"] == entry["reference"]["telfhash"][2:] and v["sha256"] == entry["sha256"]
    assert v["md5"] == hashlib.md5(data).hexdigest() and v["filename"] == "fam_a.elf"
    want = expected(entry, chosen, 120)
    nearest = sorted(want.values())[:5]
    assert sorted(want[values(o)["sha256"]] for o in known) == nearest
    # the same by SHA-1 or SHA-256 in the value; an unknown sample is one clear line
    for value in (hashlib.sha1(data).hexdigest(), entry["sha256"].upper()):
        res = hover.dict_handler(hover_request(misp_attribute("attachment", value), {"index_path": path}))
        assert values(res["results"]["Object"][0])["sha256"] == entry["sha256"]
    res = hover.dict_handler(hover_request(misp_attribute("malware-sample", "x.elf|" + "0" * 32), {"index_path": path}))
    (line,) = res["results"]["Attribute"]
    assert line["type"] == "text" and "is not among the" in line["value"] and "telfhash_expansion" in line["value"]


def test_expansion_without_data_uses_the_index(indexed):
    # bulk enrichment sends data '' when MISP cannot read the file (MispAttribute::base64EncodeAttachment)
    path, chosen = indexed
    entry = chosen[0]
    data = Path(entry["abspath"]).read_bytes()
    attr = malware_sample(data, "gone.elf")
    attr["data"] = ""
    (obj, *_) = expansion.dict_handler(query(attr, {"index_path": path}))["results"]["Object"]
    assert values(obj)["telfhash"] == entry["reference"]["telfhash"][2:]


def test_broken_index_is_a_clear_error(tmp_path):
    bad = tmp_path / "not-an-index"
    bad.write_bytes(b"this is not sqlite" * 100)
    entry = corpus.files()[0]
    attr = misp_attribute("telfhash", entry["reference"]["telfhash"])
    res = expansion.dict_handler(query(attr, {"index_path": str(bad)}))
    assert set(res) == {"error"} and "telfhash index" in res["error"] and "not" in res["error"], res


def test_index_from_the_launcher_environment(indexed, monkeypatch):
    # telfhash-misp-modules --index PATH exports TELFHASH_MISP_INDEX; MISP's empty setting then uses it
    path, chosen = indexed
    entry = next(f for f in chosen if f["path"] == "mips/iot-fam-b/fam_b_v2_mips_dyn")
    attr = misp_attribute("telfhash", entry["reference"]["telfhash"])
    monkeypatch.setenv("TELFHASH_MISP_INDEX", path)
    res = expansion.dict_handler(query(attr, {"index_path": "", "max_results": "1000"}))
    want = set(expected(entry, chosen, 50, self_excluded=False))
    assert {values(o)["sha256"] for o in res["results"]["Object"]} == want
