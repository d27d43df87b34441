"""What receivers get from our bundles: MISP through misp-stix (its own file conversion, the
path MISP's STIX import takes) and PyMISP; bundles from others read in every telfhash
spelling; the smaller points of the import (duplicates, SHA-256, spec_version, extension
content from other producers, size limits, the import command's output).

Telfhashes come from the corpus manifest (the reference tool); what MISP keeps is what
misp-stix and PyMISP produce; schema verdicts from jsonschema.
"""

from __future__ import annotations

import collections
import copy
import json
import re
import subprocess
import sys

import corpus
import pytest

pytest.importorskip("misp_stix_converter")
pymisp = pytest.importorskip("pymisp")

from telfhash_plugins.stix import BundleError, export_bundle, load_bundle, read_bundle  # noqa: E402
from telfhash_plugins.stix.export import EXTENSION_ID, extension_schema  # noqa: E402
from telfhash_plugins.stix.importer import extension_errors  # noqa: E402

import telfhash_core as tc  # noqa: E402

TS = "2026-11-27T00:00:00Z"


@pytest.fixture(scope="module")
def sample_set():
    entries = [e for e in corpus.files() if e["reference"]["telfhash"].startswith("t1")]
    by_label = collections.defaultdict(list)
    for e in entries:
        by_label[e["label"]].append(e)
    labels = sorted(lb for lb, es in by_label.items() if len({e["arch"] for e in es}) >= 3)[::40][:8]
    files = [e for lb in labels for e in sorted(by_label[lb], key=lambda e: e["path"])]
    results = list(tc.hash_paths([e["abspath"] for e in files], sha256=True))
    for r, e in zip(sorted(results, key=lambda r: r.file), sorted(files, key=lambda e: e["abspath"])):
        assert r.telfhash == e["reference"]["telfhash"] and r.sha256 == e["sha256"]
    clusters = [{"members": [e["abspath"] for e in by_label[lb]]} for lb in labels]
    return {"entries": files, "results": results, "clusters": clusters}


@pytest.fixture(scope="module")
def bundle(sample_set):
    return export_bundle(sample_set["results"], sample_set["clusters"], timestamp=TS)


# ----------------------------------------------------------------------------- MISP


def test_misp_stix_gives_a_telfhash_attribute_on_the_file_object_of_every_sample(bundle, sample_set, tmp_path):
    from misp_stix_converter import stix_2_to_misp

    path = tmp_path / "clusters.json"
    path.write_text(json.dumps(bundle))
    out = tmp_path / "out"
    out.mkdir()
    res = stix_2_to_misp(path, output_dir=out)  # the library's file conversion, as MISP's import calls it
    assert not res.get("errors"), res
    events = [pymisp.MISPEvent() for _ in sorted(out.iterdir())]
    for ev, f in zip(events, sorted(out.iterdir())):
        ev.load_file(str(f))
    want = {(e["sha256"], e["reference"]["telfhash"][2:]) for e in sample_set["entries"]}
    got, shas, patterns, yara_rules, names = set(), set(), 0, 0, set()
    for ev in events:
        names.add(ev.info)
        for obj in ev.objects:
            attrs = collections.defaultdict(list)
            for a in obj.attributes:
                attrs[a.type].append(a.value)
            if obj.name == "file":
                shas.update(attrs["sha256"])
                for t in attrs["telfhash"]:
                    assert re.fullmatch(r"[0-9a-f]{70}", t)  # MISP's 70-hex spelling
                    got.update((s, t) for s in attrs["sha256"])
            patterns += obj.name == "stix2-pattern"
            yara_rules += obj.name == "yara"
    groupings = [o for o in bundle["objects"] if o["type"] == "grouping"]
    assert got == want  # 100%: every telfhash, on the file object that carries its sample's SHA-256
    assert shas == {f["hashes"]["SHA-256"] for f in bundle["objects"] if f["type"] == "file"}  # every File kept
    assert names == {g["name"] for g in groupings} and len(events) == len(groupings)  # every cluster kept
    assert patterns == yara_rules == len(groupings)  # every pattern and rule kept


def test_misp_events_round_trip_through_pymisp_json(bundle, tmp_path):
    from misp_stix_converter import stix_2_to_misp

    path = tmp_path / "b.json"
    path.write_text(json.dumps(bundle))
    out = tmp_path / "o"
    out.mkdir()
    stix_2_to_misp(path, output_dir=out)
    for f in out.iterdir():
        ev = pymisp.MISPEvent()
        ev.load_file(str(f))
        again = pymisp.MISPEvent()
        again.from_json(ev.to_json())  # PyMISP accepts every value it wrote
        assert (
            sum(a.type == "telfhash" for o in again.objects for a in o.attributes)
            == sum(a.type == "telfhash" for o in ev.objects for a in o.attributes)
            > 0
        )


def test_every_telfhash_spelling_is_read(sample_set):
    e = sample_set["entries"][0]
    t1 = e["reference"]["telfhash"]
    spellings = [t1, t1.upper(), t1[2:], t1[2:].upper(), "T1" + t1[2:]]
    for k, v in enumerate(spellings):
        b = {
            "type": "bundle",
            "id": "bundle--5c0d981b-1f1b-40b9-9e26-5e3f28f2c83c",
            "objects": [
                {
                    "type": "file",
                    "spec_version": "2.1",
                    "id": "file--5c0d981b-1f1b-50b9-9e26-5e3f28f2c83c",
                    "hashes": {"SHA-256": e["sha256"]},
                    "x_misp_telfhash": v,
                },
                {
                    "type": "file",
                    "spec_version": "2.1",
                    "id": "file--6c0d981b-1f1b-50b9-9e26-5e3f28f2c83c",
                    "hashes": {"SHA-256": "ab" * 32, "TELFHASH": v},
                },
                {
                    "type": "indicator",
                    "spec_version": "2.1",
                    "id": "indicator--7c0d981b-1f1b-40b9-9e26-5e3f28f2c83c",
                    "created": TS,
                    "modified": TS,
                    "valid_from": TS,
                    "pattern_type": "stix",
                    "pattern": f"[file:hashes.'SHA-256' = '{'cd' * 32}' AND file:hashes.TELFHASH = '{v}']",
                },
            ],
        }
        rep = read_bundle(b)
        assert rep.telfhashes() == {t1}, (k, v, rep.problems)
        assert {d.sha256 for d in rep.digests} == {e["sha256"], "ab" * 32, "cd" * 32}


# ----------------------------------------------------------------------------- smaller points


def test_duplicate_ids_are_reported(bundle):
    b = copy.deepcopy(bundle)
    g = next(o for o in b["objects"] if o["type"] == "grouping")
    f = next(o for o in b["objects"] if o["type"] == "file")
    changed = dict(g, description="another text, same version")
    b["objects"] += [copy.deepcopy(f), changed]
    rep = read_bundle(b)
    assert set(rep.duplicates) == {g["id"], f["id"]}
    text = "\n".join(rep.problems)
    assert f"{g['id']}: appears again with the same version" in text and f"{f['id']}: appears more than once" in text


def test_invalid_sha256_and_numeric_spec_version_are_reported(bundle):
    b = copy.deepcopy(bundle)
    f = next(o for o in b["objects"] if o["type"] == "file")
    f["hashes"]["SHA-256"] = "xyz"
    m = next(o for o in b["objects"] if o["type"] == "malware")
    m["spec_version"] = 2.1
    rep = read_bundle(b)
    text = "\n".join(rep.problems)
    assert f"{f['id']}: SHA-256 'xyz' is not 64 hex characters" in text
    assert f'{m["id"]}: wrong spec_version: the number 2.1, where STIX 2.1 writes the text "2.1"' in text
    with pytest.raises(BundleError, match=r"the number 2\.1"):
        read_bundle({"type": "bundle", "id": b["id"], "spec_version": 2.1, "objects": []})


def test_other_producers_extension_content_is_checked_against_the_schema_per_item(bundle):
    jsonschema = pytest.importorskip("jsonschema")
    schema = extension_schema()
    b = copy.deepcopy(bundle)
    gs = [o for o in b["objects"] if o["type"] == "grouping"]
    gs[0]["extensions"][EXTENSION_ID]["threshold"] = 10**40
    gs[1]["extensions"][EXTENSION_ID]["members"][0]["distance_to_representative"] = -1
    rep = read_bundle(b)
    bad = [p for p in rep.problems if "does not follow its schema" in p]
    assert len(bad) == 2 and gs[0]["id"] in bad[0] + bad[1] and gs[1]["id"] in bad[0] + bad[1]
    assert rep.clusters[gs[0]["id"]]["threshold"] is None  # its extension's content is not used ...
    assert rep.clusters[gs[2]["id"]]["threshold"] == 50  # ... the rest is read
    # our checks and a JSON-schema validator give the same verdicts, on good and hostile content
    good = bundle["objects"][[o["type"] for o in bundle["objects"]].index("grouping")]["extensions"][EXTENSION_ID]
    variants = [good]
    for key, value in [
        ("threshold", 10**40),
        ("threshold", -1),
        ("threshold", True),
        ("threshold", 2.5),
        ("size", 0),
        ("linkage", "x" * 65),
        ("max_distance", 65536),
        ("max_distance_exact", "no"),
        ("representative_ref", "file--nope"),
        ("representative_telfhash", "T1" + "A" * 70),
        ("architectures", ["x"] * 257),
        ("members", []),
        ("extra", 1),
        ("extension_type", "new-sdo"),
    ]:
        variants.append(dict(good, **{key: value}))
    for mkey, mval in [
        ("file_ref", 3),
        ("telfhash", "t1" + "g" * 70),
        ("arch", "a" * 65),
        ("distance_to_representative", 10**6),
        ("x", 1),
    ]:
        v = copy.deepcopy(good)
        v["members"][0][mkey] = mval
        variants.append(v)
    v = copy.deepcopy(good)
    del v["members"][0]["telfhash"]
    variants.append(v)
    v = copy.deepcopy(good)
    del v["threshold"]
    variants.append(v)
    for v in variants:
        assert (not extension_errors(v)) == jsonschema.Draft202012Validator(schema).is_valid(v), v


def test_max_bytes_zero_means_no_limit(tmp_path, bundle):
    p = tmp_path / "b.json"
    p.write_text(json.dumps(bundle))
    assert load_bundle(str(p), max_bytes=0)["id"] == bundle["id"]
    with pytest.raises(BundleError, match="larger than the limit"):
        load_bundle(str(p), max_bytes=100)
    r = subprocess.run(
        [sys.executable, "-m", "telfhash_core.cli", "stix", "import", "--max-bytes", "0", str(p)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0 and "larger than the limit" not in r.stdout + r.stderr, r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "telfhash_core.cli", "stix", "publish", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "--max-bytes" in r.stdout


def test_import_lists_matches_aligned_with_the_cluster_representative_and_size(tmp_path, bundle, sample_set):
    p = tmp_path / "b.json"
    p.write_text(json.dumps(bundle))
    local = [e["abspath"] for e in sample_set["entries"][:3]]
    r = subprocess.run(
        [sys.executable, "-m", "telfhash_core.cli", "stix", "import", str(p), "--local", *local, "-t", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("local sample"))
    rows = lines[head + 1 :]
    assert len(rows) == 3
    col = lines[head].index("distance") + len("distance")
    groupings = {g["name"]: g["extensions"][EXTENSION_ID] for g in bundle["objects"] if g["type"] == "grouping"}
    for row in rows:
        assert row[col - 1] == "0" and row[col : col + 2] == "  "  # right-aligned distances under the header
        name = re.search(r"\((telfhash cluster [0-9a-f]{8})\)$", row).group(1)
        ext = groupings[name]
        assert f"{ext['representative_telfhash'][:16]}…, {ext['size']} samples" in row


def test_import_of_an_empty_bundle_warns_and_fails(tmp_path):
    p = tmp_path / "empty.json"
    p.write_text(json.dumps({"type": "bundle", "id": "bundle--5c0d981b-1f1b-40b9-9e26-5e3f28f2c83c", "objects": []}))
    r = subprocess.run(
        [sys.executable, "-m", "telfhash_core.cli", "stix", "import", str(p)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "warning: the bundle holds no objects; nothing to import" in r.stderr
