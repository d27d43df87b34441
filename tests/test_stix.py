"""STIX 2.1 export/import of telfhash clusters (telfhash_plugins.stix).

Expected values come from outside the code under test: telfhashes from the reference tool
(the corpus manifest), file hashes from hashlib, File ids from the stix2 library, distances from
py-tlsh, pattern contents from stix2-patterns, validity from stix2-validator and stix2.parse,
MISP behaviour from misp-stix itself.
"""

from __future__ import annotations

import collections
import copy
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import corpus

stix2 = pytest.importorskip("stix2")
stix2validator = pytest.importorskip("stix2validator")
pytest.importorskip("misp_stix_converter")

import tlsh  # noqa: E402
from stix2patterns.v21.pattern import Pattern  # noqa: E402

import telfhash_core as tc  # noqa: E402
from telfhash_plugins.stix import (  # noqa: E402
    EXTENSION_ID,
    BundleError,
    ExportError,
    ExportReport,
    dumps,
    export_bundle,
    load_bundle,
    match_local,
    read_bundle,
    validate_bundle,
)

REPO = Path(__file__).resolve().parent.parent
TS = "2026-11-27T00:00:00Z"
N_LABELS = 14  # clusters taken from the corpus (enough architectures and sizes, validator time bounded)


def _ref_diff(a: str, b: str) -> int:
    return tlsh.diff("T1" + a[2:].upper(), "T1" + b[2:].upper())


@pytest.fixture(scope="module")
def sample_set():
    """Corpus programs built for several architectures (same label), their reference telfhashes,
    and our results for the files (with SHA-256)."""
    entries = [e for e in corpus.files() if e["reference"]["telfhash"].startswith("t1")]
    by_label = collections.defaultdict(list)
    for e in entries:
        by_label[e["label"]].append(e)
    labels = sorted(lb for lb, es in by_label.items() if len({e["arch"] for e in es}) >= 3)
    # spread over the label list, deterministically
    step = max(1, len(labels) // N_LABELS)
    chosen = labels[::step][:N_LABELS]
    files = [e for lb in chosen for e in sorted(by_label[lb], key=lambda e: e["path"])]
    results = list(tc.hash_paths([e["abspath"] for e in files], sha256=True))
    ref = {e["abspath"]: e for e in files}
    for r in results:  # the input is what the reference computes, else nothing below means anything
        assert r.telfhash == ref[r.file]["reference"]["telfhash"], r.file
        assert r.sha256 == ref[r.file]["sha256"]
    clusters = [{"members": [e["abspath"] for e in sorted(by_label[lb], key=lambda e: e["path"])]} for lb in chosen]
    return {"entries": files, "ref": ref, "results": results, "clusters": clusters, "labels": chosen}


@pytest.fixture(scope="module")
def default_bundle(sample_set):
    rep = ExportReport()
    b = export_bundle(sample_set["results"], sample_set["clusters"], timestamp=TS, report=rep)
    assert rep.skipped == [] and rep.warnings == []
    return b


def _by_type(bundle, kind):
    return [o for o in bundle["objects"] if o["type"] == kind]


# ----------------------------------------------------------------------------- validity


def test_default_export_passes_strict_validator_without_warnings_and_parses(default_bundle):
    from stix2validator import ValidationOptions, validate_parsed_json

    # strict: every warning would be an error
    res = validate_parsed_json(copy.deepcopy(default_bundle), ValidationOptions(strict=True, version="2.1"))
    assert res.is_valid, [str(e) for e in res.errors][:5]
    assert not res.errors and not res.warnings, ([str(e) for e in res.errors] + [str(w) for w in res.warnings])[:5]
    parsed = stix2.parse(json.dumps(default_bundle), allow_custom=False)
    assert len(parsed.objects) == len(default_bundle["objects"])


def test_stix2_validator_command_strict_accepts_the_default_export(sample_set, tmp_path):
    b = export_bundle(sample_set["results"], sample_set["clusters"][:4], timestamp=TS)
    path = tmp_path / "b.json"
    path.write_text(dumps(b))
    exe = Path(sys.executable).with_name("stix2_validator")
    cmd = (
        [str(exe)]
        if exe.exists()
        else [
            sys.executable,
            "-c",
            "import sys; from stix2validator.scripts.stix2_validator import main; sys.exit(main())",
        ]
    )
    p = subprocess.run(cmd + ["--strict", "--version", "2.1", str(path)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Valid" in p.stdout and "[!] Warning" not in p.stdout and "Warning" not in p.stdout, p.stdout


def test_clusters_from_the_core_clustering_also_validate(sample_set):
    import telfhash_core.similarity.cluster as cluster_mod  # our own module: a broken import fails

    clusters, _ = cluster_mod.cluster(sample_set["results"], threshold=50)
    assert clusters, "the corpus sample forms no cluster at 50"
    b = export_bundle(sample_set["results"], clusters, timestamp=TS)
    rep = validate_bundle(b)
    assert rep.ok, rep.lines()[:5]
    groupings = _by_type(b, "grouping")
    sha = {r.file: r.sha256 for r in sample_set["results"]}
    assert len(groupings) == sum(1 for c in clusters if len({sha[m] for m in c.members}) >= 2)
    for g in groupings:
        ext = g["extensions"][EXTENSION_ID]
        assert ext["linkage"] == "single"
        for m in ext["members"]:  # every member within the threshold of some other member (single linkage)
            if ext["size"] > 1:
                assert min(_ref_diff(m["telfhash"], o["telfhash"]) for o in ext["members"] if o is not m) <= 50


def test_files_have_standard_hashes_and_stix2_ids(default_bundle, sample_set):
    files = _by_type(default_bundle, "file")
    want = {}
    for e in sample_set["entries"]:
        data = Path(e["abspath"]).read_bytes()
        want[e["sha256"]] = {
            "MD5": hashlib.md5(data).hexdigest(),
            "SHA-1": hashlib.sha1(data).hexdigest(),
            "SHA-256": hashlib.sha256(data).hexdigest(),
        }
    assert {f["hashes"]["SHA-256"] for f in files} == set(want)  # one File per distinct sample
    for f in files:
        assert f["hashes"] == want[f["hashes"]["SHA-256"]]  # standard hashes only
        assert "name" not in f and "extensions" not in f
        assert f["id"] == stix2.File(hashes=f["hashes"]).id
        assert f["size"] == os.path.getsize(
            next(e["abspath"] for e in sample_set["entries"] if e["sha256"] == f["hashes"]["SHA-256"])
        )


def test_cluster_objects_carry_the_reference_telfhashes(default_bundle, sample_set):
    ref = sample_set["ref"]
    objs = {o["id"]: o for o in default_bundle["objects"]}
    file_by_sha = {o["hashes"]["SHA-256"]: o["id"] for o in _by_type(default_bundle, "file")}
    groupings = _by_type(default_bundle, "grouping")
    assert len(groupings) == len(sample_set["clusters"])
    schema = json.loads((REPO / "plugins/stix/telfhash-cluster-extension.schema.json").read_text())
    import jsonschema

    ext_def = objs[EXTENSION_ID]
    assert ext_def["type"] == "extension-definition" and ext_def["extension_types"] == ["property-extension"]
    assert json.loads(ext_def["schema"]) == schema
    expected_clusters = []
    for c in sample_set["clusters"]:
        members = [ref[p] for p in c["members"]]
        expected_clusters.append(
            {
                "files": {file_by_sha[e["sha256"]] for e in members},
                "telfhashes": {e["reference"]["telfhash"] for e in members},
            }
        )
    seen = []
    for g in groupings:
        assert g["context"] == "malware-analysis"
        ext = g["extensions"][EXTENSION_ID]
        jsonschema.validate(ext, schema)
        member_files = {m["file_ref"] for m in ext["members"]}
        member_telfs = {m["telfhash"] for m in ext["members"]}
        exp = next(x for x in expected_clusters if x["files"] == member_files)
        seen.append(exp)
        assert member_telfs == exp["telfhashes"]
        assert ext["threshold"] == 50 and ext["size"] == len(member_files)
        # distances from py-tlsh directly
        rep = ext["representative_telfhash"]
        assert ext["representative_ref"] in member_files
        for m in ext["members"]:
            assert m["distance_to_representative"] == _ref_diff(m["telfhash"], rep)
        telfs = [m["telfhash"] for m in ext["members"]]
        assert ext["max_distance"] == max(_ref_diff(a, b) for a in telfs for b in telfs)
        # the Malware family, the Indicator and the relationship between them
        refs = g["object_refs"]
        malware = [objs[r] for r in refs if r.startswith("malware--")]
        indicators = [objs[r] for r in refs if r.startswith("indicator--")]
        indicator = [i for i in indicators if i["pattern_type"] == "stix" and "SHA-256" not in i["pattern"]]
        yara_ind = [i for i in indicators if i["pattern_type"] == "yara"]
        samples = [i for i in indicators if i["pattern_type"] == "stix" and "SHA-256" in i["pattern"]]
        rel = [objs[r] for r in refs if r.startswith("relationship--")]
        assert len(malware) == len(indicator) == len(yara_ind) == 1 and len(rel) == 2
        assert len(samples) == len(member_files)  # one Indicator per sample: its hashes and its telfhash
        assert malware[0]["is_family"] is True and set(malware[0]["sample_refs"]) == member_files
        assert set(refs) >= member_files
        comparisons = Pattern(indicator[0]["pattern"]).inspect().comparisons["file"]
        assert {path[1] for path, _, _ in comparisons} == {"TELFHASH"}
        assert {op for _, op, _ in comparisons} == {"="}
        assert {"t1" + v.strip("'") for _, _, v in comparisons} == exp["telfhashes"]
        assert {r["relationship_type"] for r in rel} == {"indicates"}
        assert {(r["source_ref"], r["target_ref"]) for r in rel} == {
            (indicator[0]["id"], malware[0]["id"]),
            (yara_ind[0]["id"], malware[0]["id"]),
        }
    assert len(seen) == len(expected_clusters)


def test_export_is_deterministic(sample_set, default_bundle):
    results = list(reversed(sample_set["results"]))
    clusters = [{"members": list(reversed(c["members"]))} for c in reversed(sample_set["clusters"])]
    again = export_bundle(results, clusters, timestamp=TS)
    assert dumps(again) == dumps(default_bundle)
    later = export_bundle(sample_set["results"], sample_set["clusters"], timestamp="2027-01-02T03:04:05Z")
    assert [o["id"] for o in later["objects"]] == [o["id"] for o in default_bundle["objects"]]
    assert later["id"] != default_bundle["id"]  # a different export time is a different bundle
    sdo = [o for o in later["objects"] if o["type"] in ("grouping", "malware", "indicator", "relationship")]
    assert sdo and all(o["created"] == "2027-01-02T03:04:05.000Z" for o in sdo)


def test_telfhash_key_options_and_their_consequences(sample_set, default_bundle):
    from stix2validator import ValidationOptions, validate_parsed_json

    default_ids = {f["hashes"]["SHA-256"]: f["id"] for f in _by_type(default_bundle, "file")}
    tel = {e["sha256"]: e["reference"]["telfhash"] for e in sample_set["entries"]}
    for key in ("x_telfhash", "TELFHASH"):
        b = export_bundle(sample_set["results"], sample_set["clusters"][:4], timestamp=TS, telfhash_key=key)
        for f in _by_type(b, "file"):
            sha = f["hashes"]["SHA-256"]
            assert f["hashes"][key] == tel[sha][2:]  # 70 hex, lower case (misp-stix spelling)
            assert f["id"] == default_ids[sha]  # a custom key inside hashes keeps the File id
        with pytest.raises(stix2.exceptions.InvalidValueError):
            stix2.parse(json.dumps(b), allow_custom=False)
        stix2.parse(json.dumps(b), allow_custom=True)
        res = validate_parsed_json(b, ValidationOptions(strict=True, version="2.1"))
        if key == "x_telfhash":
            assert res.is_valid and not res.warnings
        else:
            assert not res.is_valid and all("TELFHASH" in str(e) for e in res.errors)
        # the importer reads them from the Files alone too
        stripped = [o for o in b["objects"] if o["type"] == "file"]
        got = read_bundle({"type": "bundle", "id": b["id"], "objects": stripped})
        assert got.telfhashes() == {tel[f["hashes"]["SHA-256"]] for f in stripped}
        assert len(stripped) > 8


def _cli(args, capsys):
    from telfhash_core.cli import main

    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_exporter_hook_and_cli(tmp_path, sample_set, default_bundle, capsys):
    from telfhash_core.formats import available_exporters

    exp = available_exporters()["stix"]
    out = io.StringIO()
    exp.export(sample_set["results"], sample_set["clusters"], out, {"timestamp": TS})
    assert json.loads(out.getvalue()) == default_bundle

    # results from `telfhash -f jsonl --sha256`, clusters as a JSON file
    res_file = tmp_path / "results.jsonl"
    res_file.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in sample_set["results"]))
    cl_file = tmp_path / "clusters.json"
    cl_file.write_text(json.dumps(sample_set["clusters"]))
    bundle_file = tmp_path / "out.json"
    rc, _, err = _cli(["stix", "export", res_file, "--clusters", cl_file, "--timestamp", TS, "-o", bundle_file], capsys)
    assert rc == 0, err
    assert json.loads(bundle_file.read_text()) == default_bundle
    rc, out, err = _cli(["stix", "validate", bundle_file], capsys)
    assert rc == 0 and "valid (0 error(s), 0 warning(s))" in out, out + err
    rc, out, err = _cli(["stix", "import", bundle_file, "-f", "json"], capsys)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["telfhashes"] == len({e["reference"]["telfhash"] for e in sample_set["entries"]})


def test_cli_pipeline_with_core_clusters(tmp_path, sample_set, capsys):
    """`telfhash -f jsonl --sha256` -> `telfhash cluster` -> `telfhash stix export --clusters`."""
    import telfhash_core.similarity.cluster  # noqa: F401  (our own module: a broken import fails)

    res_file = tmp_path / "results.jsonl"
    rc, _, err = _cli(
        ["-f", "jsonl", "--sha256", "-o", res_file, *[e["abspath"] for e in sample_set["entries"]]], capsys
    )
    assert rc == 0, err
    cl_file = tmp_path / "clusters.json"
    rc, _, err = _cli(["cluster", res_file, "-t", "30", "-o", cl_file], capsys)
    assert rc == 0, err
    clusters = json.loads(cl_file.read_text())["clusters"]
    bundle_file = tmp_path / "b.json"
    rc, _, err = _cli(["stix", "export", res_file, "--clusters", cl_file, "--timestamp", TS, "-o", bundle_file], capsys)
    assert rc == 0, err
    b = json.loads(bundle_file.read_text())
    sha = {e["abspath"]: e["sha256"] for e in sample_set["entries"]}
    want = sorted(sorted({sha[m] for m in c["members"]}) for c in clusters if len({sha[m] for m in c["members"]}) >= 2)
    objs = {o["id"]: o for o in b["objects"]}
    got = sorted(
        sorted(objs[m["file_ref"]]["hashes"]["SHA-256"] for m in g["extensions"][EXTENSION_ID]["members"])
        for g in _by_type(b, "grouping")
    )
    assert got == want and got
    assert {g["extensions"][EXTENSION_ID]["threshold"] for g in _by_type(b, "grouping")} == {30}


# ----------------------------------------------------------------------------- import and matching


def test_import_reads_every_telfhash_and_matches_local_samples(default_bundle, sample_set):
    report = read_bundle(json.dumps(default_bundle))
    assert report.problems == []
    assert report.bundle_id == default_bundle["id"]
    assert report.telfhashes() == {e["reference"]["telfhash"] for e in sample_set["entries"]}
    assert set(report.clusters) == {g["id"] for g in _by_type(default_bundle, "grouping")}

    # local samples: other corpus files; expected matches by brute force over the reference values
    shared = {e["abspath"] for e in sample_set["entries"]}
    others = [e for e in corpus.files() if e["abspath"] not in shared and e["reference"]["telfhash"].startswith("t1")][
        ::7
    ]
    threshold = 40
    cluster_telfs = collections.defaultdict(set)
    for d in report.digests:
        cluster_telfs[d.cluster].add(d.telfhash)
    expected = set()
    for e in others:
        for cid, telfs in cluster_telfs.items():
            best = min(_ref_diff(e["reference"]["telfhash"], t) for t in telfs)
            if best <= threshold:
                expected.add((e["abspath"], cid, best))
    got = match_local(report, [e["abspath"] for e in others], threshold)
    assert {(m.file, m.cluster, m.distance) for m in got} == expected
    assert expected, "choose a threshold that matches something"


def test_import_into_the_local_index(tmp_path, default_bundle, sample_set):
    import telfhash_core.store.index  # noqa: F401  (our own module: a broken import fails)
    from telfhash_core.store.index import Index

    from telfhash_plugins.stix import add_to_index, search_index

    db = tmp_path / "idx.sqlite"
    local = [e for e in corpus.files() if e["label"] in set(sample_set["labels"])][:6]
    local = [e for e in local if e["abspath"] not in {x["abspath"] for x in sample_set["entries"]}] or local[:2]
    with Index(db) as ix:
        ix.add_results(list(tc.hash_paths([e["abspath"] for e in local], sha256=True)), source="local")
    report = read_bundle(default_bundle)
    stats = add_to_index(report, str(db))
    n_samples = len({e["sha256"] for e in sample_set["entries"]})
    assert stats["added"] + stats["updated"] + stats["unchanged"] == n_samples
    with Index(db) as ix:
        sources = {m.source for t in report.telfhashes() for m in ix.search(t, max_distance=0)}
    assert f"stix:{default_bundle['id']}" in sources
    matches = search_index(report, str(db), 50)
    assert all(m.distance <= 50 for m in matches)
    for m in matches:
        assert m.distance == _ref_diff(m.telfhash, m.shared_telfhash)


# ----------------------------------------------------------------------------- MISP (misp-stix)


def test_misp_stix_imports_default_bundle_without_losing_a_file(default_bundle):
    from misp_stix_converter import ExternalSTIX2toMISPParser
    from misp_stix_converter.tools.stix2_loading_helpers import load_stix2_content

    parser = ExternalSTIX2toMISPParser()
    parser.load_stix_bundle(load_stix2_content(copy.deepcopy(default_bundle)))
    parser.parse_stix_bundle(single_event=True)
    event = json.loads(parser.misp_event.to_json())
    shas = {a["value"] for o in event.get("Object", []) for a in o.get("Attribute", []) if a["type"] == "sha256"}
    shas |= {a["value"] for a in event.get("Attribute", []) if a["type"] == "sha256"}
    want = {f["hashes"]["SHA-256"] for f in _by_type(default_bundle, "file")}
    assert want <= shas, f"{len(want - shas)} File(s) lost"


def test_bundle_exported_by_misp_is_read_back_with_every_telfhash(sample_set):
    from misp_stix_converter import MISPtoSTIX21Parser
    from pymisp import MISPEvent, MISPObject

    telf_key_bundle = export_bundle(
        sample_set["results"], sample_set["clusters"], timestamp=TS, telfhash_key="TELFHASH"
    )
    files = _by_type(telf_key_bundle, "file")
    event = MISPEvent()
    event.info = "telfhash cluster exchange"
    event.uuid = "5e1f6a4c-0d3b-4e8e-9a51-7f0c2b9d4e11"
    event.date = "2026-11-27"
    standalone = set()
    for k, f in enumerate(files):
        if k % 3 == 2:  # some as bare telfhash attributes, as analysts also add them
            event.add_attribute("telfhash", f["hashes"]["TELFHASH"].upper(), to_ids=bool(k % 2))
            standalone.add(f["hashes"]["TELFHASH"])
            continue
        obj = MISPObject("file")
        obj.add_attribute("sha256", value=f["hashes"]["SHA-256"], to_ids=bool(k % 2))
        obj.add_attribute("md5", value=f["hashes"]["MD5"])
        obj.add_attribute("telfhash", value=f["hashes"]["TELFHASH"].upper())
        event.add_object(obj)
    parser = MISPtoSTIX21Parser()
    parser.parse_misp_event(json.loads(event.to_json()))
    misp_bundle = json.loads(parser.bundle.serialize())
    # misp-stix writes the bare attribute as File hashes TELFHASH, spelled as our option spells it
    misp_values = {
        o["hashes"]["TELFHASH"]
        for o in misp_bundle["objects"]
        if o["type"] == "file" and "TELFHASH" in o.get("hashes", {})
    }
    assert misp_values == standalone
    report = read_bundle(misp_bundle)
    want = {"t1" + f["hashes"]["TELFHASH"] for f in files}
    assert report.telfhashes() == want
    with_sha = {(d.telfhash, d.sha256) for d in report.digests if d.sha256}
    for k, f in enumerate(files):
        if k % 3 != 2:  # a MISP file object: its telfhash comes back beside its SHA-256
            assert ("t1" + f["hashes"]["TELFHASH"], f["hashes"]["SHA-256"]) in with_sha


# ----------------------------------------------------------------------------- hostile input


def _good_bundle(default_bundle):
    return copy.deepcopy(default_bundle)


@pytest.mark.parametrize(
    "data, words",
    [
        (b"this is not json", "not JSON"),
        (b"", "empty"),
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b"[1, 2, 3]", "not a STIX bundle"),
        (b'{"type": "indicator"}', "expected 'bundle'"),
        (b'{"type": "bundle", "id": "bundle--x", "objects": []}', "invalid bundle id"),
        (b'{"type": "bundle", "id": "bundle--5d04ee1f-300d-4c7a-986d-77726bda1e1d", "objects": {}}', "not a list"),
        (b"[" * 200000 + b"]" * 200000, "nested too deeply"),
        (b'{"type": "bundle", "objects": [' + b"1" * 5000 + b"]}", "digits"),
    ],
)
def test_hostile_bundles_get_clear_errors(data, words):
    with pytest.raises(BundleError, match=words):
        read_bundle(data)


def test_stix20_bundle_is_refused(default_bundle):
    b = _good_bundle(default_bundle)
    b["spec_version"] = "2.0"
    with pytest.raises(BundleError, match="wrong spec_version.*2.0"):
        read_bundle(b)
    b = _good_bundle(default_bundle)
    for o in b["objects"]:
        o["spec_version"] = "2.0"
    with pytest.raises(BundleError, match="no usable STIX 2.1 object"):
        read_bundle(b)


def test_bad_objects_and_missing_refs_are_reported_and_the_rest_is_read(default_bundle, sample_set):
    b = _good_bundle(default_bundle)
    files = [o for o in b["objects"] if o["type"] == "file"]
    dropped = files[0]["id"]
    b["objects"] = [o for o in b["objects"] if o["id"] != dropped]
    b["objects"].append("not an object")
    b["objects"].append({"type": "indicator", "id": "indicator--nope"})
    b["objects"].append(
        {"type": "malware", "spec_version": "2.0", "id": "malware--5d04ee1f-300d-4c7a-986d-77726bda1e1d"}
    )
    b["objects"].append(
        {
            "type": "indicator",
            "spec_version": "2.1",
            "id": "indicator--6d04ee1f-300d-4c7a-986d-77726bda1e1d",
            "pattern": "[file:hashes.TELFHASH = 'zz']",
            "pattern_type": "stix",
        }
    )
    report = read_bundle(b)
    text = "\n".join(report.problems)
    assert "not a JSON object" in text
    assert "indicator--nope" in text
    assert "wrong spec_version" in text
    assert f"{dropped} is not in the bundle" in text or "are not in the bundle" in text
    assert "'zz'" in text and "not a telfhash" in text
    assert report.telfhashes() == {e["reference"]["telfhash"] for e in sample_set["entries"]}


def test_oversized_bundle_is_refused_before_reading(tmp_path):
    big = tmp_path / "huge.json"
    with open(big, "wb") as fh:
        fh.truncate(65 * 1024 * 1024)  # sparse: no time, no disk
    with pytest.raises(BundleError, match="larger than the limit"):
        load_bundle(str(big))
    with pytest.raises(BundleError, match="larger than the limit"):
        load_bundle(b"{" + b" " * 2000 + b"}", max_bytes=1000)


def test_cli_reports_hostile_input_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\x7fELF not a bundle")
    # one real process: what the user sees
    p = subprocess.run(
        [sys.executable, "-m", "telfhash_core.cli", "stix", "import", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 1 and "not JSON" in p.stderr and "Traceback" not in p.stderr + p.stdout, p.stderr
    for args in (
        ["stix", "validate", bad],
        ["stix", "import", tmp_path / "missing.json"],
        ["stix", "export", tmp_path / "missing-elf", "--clusters", bad],
        ["stix", "publish", bad, "--url", "http://127.0.0.1:9/x/"],
    ):
        rc, out, err = _cli(args, capsys)
        assert rc == 1, (args, out, err)
        assert ("not JSON" in out + err) or ("cannot read" in out + err), (args, out, err)


def test_export_rejects_bad_options_and_skips_unusable_items(sample_set):
    with pytest.raises(ExportError, match="telfhash key"):
        export_bundle(sample_set["results"], sample_set["clusters"], telfhash_key="TLSH")
    with pytest.raises(ExportError, match="timestamp"):
        export_bundle(sample_set["results"], sample_set["clusters"], timestamp="yesterday")
    with pytest.raises(ExportError, match="threshold"):
        export_bundle(sample_set["results"], sample_set["clusters"], threshold=-1)
    rep = ExportReport()
    items = [
        {"file": "/nonexistent/a", "telfhash": "tnull", "msg": ""},
        {"file": "/nonexistent/b", "telfhash": sample_set["results"][0].telfhash, "msg": ""},  # no SHA-256
        42,
    ]
    b = export_bundle(
        items, [{"members": ["/nonexistent/a", "/nonexistent/b"]}, {"members": "x"}], timestamp=TS, report=rep
    )
    assert len(rep.skipped) >= 4
    assert [o["type"] for o in b["objects"]] == ["identity", "extension-definition"]
    assert validate_bundle(b).ok


def test_large_cluster_uses_in_and_stays_valid_and_readable():
    import random

    rng = random.Random(6)
    rows = []
    for k in range(150):  # synthetic samples: results as JSON carries them (no file on disk)
        rows.append(
            {
                "file": f"/elsewhere/sample{k}",
                "telfhash": "t1" + "".join(rng.choice("0123456789abcdef") for _ in range(70)),
                "msg": "",
                "sha256": hashlib.sha256(str(k).encode()).hexdigest(),
            }
        )
    b = export_bundle(rows, [{"members": [r["file"] for r in rows]}], timestamp=TS)
    ind = _by_type(b, "indicator")[0]
    comparisons = Pattern(ind["pattern"]).inspect().comparisons["file"]
    assert [op for _, op, _ in comparisons] == ["IN"]
    import re

    assert len(re.findall(r"'[0-9a-f]{70}'", comparisons[0][2])) == 150
    rep = validate_bundle(b)
    assert rep.ok, rep.lines()[:3]
    assert read_bundle(b).telfhashes() == {r["telfhash"] for r in rows}
    # the indicator alone (no extension) names all of them too
    only = read_bundle({"type": "bundle", "id": b["id"], "objects": [ind]})
    assert only.telfhashes() == {r["telfhash"] for r in rows}


def test_mutated_bundles_and_results_never_raise_anything_else(default_bundle, sample_set):
    import random

    rng = random.Random(11)
    odd = [
        None,
        0,
        -1,
        1.5,
        True,
        "",
        "x",
        [],
        {},
        [1],
        {"a": 1},
        "t1" + "0" * 70,
        "a\0b",
        "2.0",
        "'",
        "file--00000000-0000-4000-8000-000000000000",
    ]

    def mutate(o):
        if isinstance(o, dict) and o:
            k = rng.choice(sorted(o, key=str))
            r = rng.random()
            if r < 0.3:
                o[k] = rng.choice(odd)
            elif r < 0.4:
                del o[k]
            else:
                mutate(o[k])
        elif isinstance(o, list) and o:
            i = rng.randrange(len(o))
            r = rng.random()
            if r < 0.3:
                o[i] = rng.choice(odd)
            elif r < 0.4:
                del o[i]
            else:
                mutate(o[i])

    small = copy.deepcopy(default_bundle)
    small["objects"] = small["objects"][:40]
    read_ok = 0
    for _ in range(400):
        x = copy.deepcopy(small)
        for _ in range(rng.randint(1, 5)):
            mutate(x)
        try:
            match_local(read_bundle(x), [{"file": "a", "telfhash": sample_set["results"][0].telfhash}], 50)
            read_ok += 1
        except BundleError:
            pass
    assert read_ok > 50
    rows = [r.to_dict() for r in sample_set["results"][:6]]
    for _ in range(300):
        x = copy.deepcopy(rows)
        for _ in range(rng.randint(1, 4)):
            mutate(x)
        clusters = [{"members": [r.get("file") if isinstance(r, dict) else r for r in x]}]
        try:
            export_bundle(x, clusters, timestamp=TS, hash_files=False)
        except ExportError:
            pass


def test_producer_identity_is_named_on_every_cluster_object(sample_set):
    b = export_bundle(sample_set["results"], sample_set["clusters"][:2], timestamp=TS, identity_name="ACME CERT")
    idents = {o["id"]: o for o in _by_type(b, "identity")}
    producer = [i for i in idents.values() if i["name"] == "ACME CERT"]
    assert len(producer) == 1 and producer[0]["identity_class"] == "organization"
    sdos = [o for o in b["objects"] if o["type"] in ("grouping", "malware", "indicator", "relationship")]
    assert sdos and all(o["created_by_ref"] == producer[0]["id"] for o in sdos)
    assert idents[b["objects"][2]["created_by_ref"]]["name"] == "telfhash-core"  # the extension's publisher
    assert validate_bundle(b).ok
    # without a producer nothing is attributed
    anon = export_bundle(sample_set["results"], sample_set["clusters"][:2], timestamp=TS)
    assert not any("created_by_ref" in o for o in anon["objects"] if o["type"] != "extension-definition")
