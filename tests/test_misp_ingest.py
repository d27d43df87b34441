"""The module's answers fed through MISP's own ingestion rules, re-implemented from MISP core
(MISP/MISP bb0909a3), and through PyMISP's validator.

What MISP does with a misp_standard answer (lines of app/Model/Event.php unless noted):

* ``handleMispFormatFromModuleResult`` / ``__fillAttribute`` (5831-5900): a missing ``to_ids``
  takes the type's default; ``processModuleResultsData`` (6670-6917) then saves:
* an object whose ``id`` equals the id of the object holding the enriched attribute
  (``initialObject``, from ``fetchInitialObject`` 5694-5732, passed by ``enrichment`` 6389-6393)
  is merged: its name must match (else NotFoundException), attributes whose (relation, value)
  the object already has are skipped, the others are added to it, and its uuid maps to the
  initial object's (6761-6800);
* any other object is matched against existing objects holding all its (relation, value, type)
  (``__findCurrentObjectId`` 7011-7040), else created, validated by ``MispObject::$validate``
  (app/Model/MispObject.php 66-130: uuid valid and unique on create, name, meta-category,
  template_uuid and template_version required) (6801-6850);
* references are re-pointed through the recovered uuids, skipped when they already exist or
  point outside the event, and saved with only ``referenced_uuid``, ``relationship_type`` and
  ``object_uuid`` (6864-6916): a comment on a reference is dropped.
* telfhash values must be 70 or 72 characters (app/Lib/Tools/AttributeValidationTool.php 660-663).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import uuid

import pytest

pytest.importorskip("pymisp", reason="pymisp is not installed (pip install -e '.[misp]')")

from pymisp import MISPObject
from pymisp.tools.attributevalidationtool import validate_event
from telfhash_plugins.misp import expansion
from test_misp import (
    NULL_CONFIG,
    bulk_request,
    elf_fixtures,
    fixture_files,
    malware_sample,
    misp_attribute,
    read,
    values,
)

from telfhash_core.store.index import Index

_TO_IDS_DEFAULT = {
    "md5": True,
    "sha1": True,
    "sha256": True,
    "filename": False,
    "size-in-bytes": False,
    "telfhash": True,
    "text": False,
    "malware-sample": True,
}
_HEX = {"md5": 32, "sha1": 40, "sha256": 64}


class IngestError(Exception):
    pass


class MispEvent:
    """The rows of one MISP event an enrichment touches, and processModuleResultsData's rules."""

    def __init__(self):
        self.objects: dict[str, dict] = {}
        self.next_id = 7

    def add_file_object(self, attributes: list[dict]) -> dict:
        oid = str(self.next_id)
        self.next_id += 1
        obj = {
            "id": oid,
            "uuid": str(uuid.uuid4()),
            "name": "file",
            "meta-category": "file",
            "comment": "",
            "Attribute": [dict(a, object_id=oid) for a in attributes],
            "ObjectReference": [],
        }
        self.objects[oid] = obj
        return obj

    def fetch_initial_object(self, oid: str) -> dict:
        """Event::fetchInitialObject (5694-5732): the fields MISP passes as initialObject."""
        o = self.objects[oid]
        return {
            "Object": {k: o.get(k) for k in ("id", "uuid", "name")},
            "Attribute": [
                {k: a.get(k) for k in ("id", "uuid", "type", "object_relation", "value")} for a in o["Attribute"]
            ],
            "ObjectReference": [
                {k: r[k] for k in ("referenced_uuid", "relationship_type")} for r in o["ObjectReference"]
            ],
        }

    def uuids(self) -> set[str]:
        out = set()
        for o in self.objects.values():
            out.add(o["uuid"])
            out.update(a["uuid"] for a in o["Attribute"])
        return out

    @staticmethod
    def _fill(attribute: dict) -> dict:
        a = dict(attribute)
        a.setdefault("to_ids", _TO_IDS_DEFAULT.get(a["type"], False))  # __fillAttribute 5888-5890
        return a

    @staticmethod
    def _valid(a: dict) -> bool:
        value = str(a["value"])
        if a["type"] == "telfhash":
            return len(value) in (70, 72)  # AttributeValidationTool.php 660-663
        if a["type"] in _HEX:
            return re.fullmatch(f"[0-9a-fA-F]{{{_HEX[a['type']]}}}", value) is not None
        return bool(value)

    def _save_attribute(self, obj: dict, a: dict) -> bool:
        if not self._valid(a):
            return False
        obj["Attribute"].append(dict(a, object_id=obj["id"], uuid=a.get("uuid") or str(uuid.uuid4())))
        return True

    def _find_current_object_id(self, attributes: list[dict]) -> str | None:
        """Event::__findCurrentObjectId (7011-7040)."""
        want = {(a["object_relation"], str(a["value"]), a["type"]) for a in attributes}
        for oid, o in self.objects.items():
            have = {(a["object_relation"], str(a["value"]), a["type"]) for a in o["Attribute"]}
            if len(want & have) >= len(attributes):
                return oid
        return None

    def ingest(self, results: dict, initial_object: dict | None = None) -> dict:
        """processModuleResultsData's object branch (6760-6917); returns counts."""
        stats = {"saved_objects": 0, "saved_object_attributes": 0, "failed_object_attributes": 0, "references": 0}
        initial_id = initial_object["Object"]["id"] if initial_object else "0"
        recovered: dict[str, str] = {}
        references = []
        for raw in results.get("Object", []):
            obj = copy.deepcopy(raw)
            obj["Attribute"] = [self._fill(a) for a in obj.get("Attribute", [])]
            if "id" in obj and str(obj["id"]) == str(initial_id):
                initial = self.objects[initial_id]
                recovered[obj["uuid"]] = initial["uuid"]
                if obj["name"] != initial["name"]:
                    raise IngestError("Invalid object.")
                have = {(a["object_relation"], str(a["value"])) for a in initial_object["Attribute"]}
                for a in obj["Attribute"]:
                    if (a["object_relation"], str(a["value"])) in have:
                        continue
                    ok = self._save_attribute(initial, a)
                    stats["saved_object_attributes" if ok else "failed_object_attributes"] += 1
                references += [(initial_id, r) for r in obj.get("ObjectReference", [])]
                stats["saved_objects"] += 1
                continue
            current = self._find_current_object_id(obj["Attribute"]) if obj["Attribute"] else None
            if current:
                recovered[obj["uuid"]] = self.objects[current]["uuid"]
                oid = current
            else:
                # MispObject::$validate (MispObject.php 66-130)
                if not re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", obj["uuid"]):
                    raise IngestError(f"invalid uuid {obj['uuid']}")
                if obj["uuid"] in self.uuids():
                    raise IngestError(f"The UUID provided is not unique: {obj['uuid']}")
                for key in ("name", "meta-category", "template_uuid"):
                    if not obj.get(key):
                        raise IngestError(f"object lacks {key}")
                if not str(obj.get("template_version", "")).isdigit():
                    raise IngestError("template_version must be a natural number")
                oid = str(self.next_id)
                self.next_id += 1
                new = {
                    "id": oid,
                    "uuid": obj["uuid"],
                    "name": obj["name"],
                    "meta-category": obj["meta-category"],
                    "comment": obj.get("comment") or "",
                    "Attribute": [],
                    "ObjectReference": [],
                }
                self.objects[oid] = new
                for a in obj["Attribute"]:
                    ok = self._save_attribute(new, a)
                    stats["saved_object_attributes" if ok else "failed_object_attributes"] += 1
                stats["saved_objects"] += 1
            references += [(oid, r) for r in obj.get("ObjectReference", [])]
        for oid, r in references:
            referenced = recovered.get(r["referenced_uuid"], r["referenced_uuid"])
            owner = self.objects[oid]
            if any(
                x["referenced_uuid"] == referenced and x["relationship_type"] == r["relationship_type"]
                for x in owner["ObjectReference"]
            ):
                continue
            if referenced not in self.uuids():
                continue  # getReferencedInfo found nothing in the event
            owner["ObjectReference"].append(
                {
                    "referenced_uuid": referenced,
                    "relationship_type": r["relationship_type"],
                    "object_uuid": recovered.get(r["object_uuid"], r["object_uuid"]),
                }
            )
            stats["references"] += 1
        return stats

    def file_objects_with(self, sha256: str) -> list[dict]:
        return [
            o
            for o in self.objects.values()
            if any(a["object_relation"] == "sha256" and a["value"] == sha256 for a in o["Attribute"])
        ]


@pytest.fixture(scope="module")
def index_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("misp-ingest") / "index.sqlite"
    files = [f for f in fixture_files() if f["reference"]["telfhash"].startswith("t1")]
    with Index(path) as ix:
        ix.add_files([f["abspath"] for f in files], jobs=1, progress=False)
        ix.set_label(files[1]["sha256"], "fixture-family")
    return str(path)


def _sample_event(entry: dict) -> tuple[MispEvent, dict, dict]:
    """A file object as MISP builds it from an uploaded malware-sample: hashes, name, size, sample."""
    data = read(entry)
    name = os.path.basename(entry["fixture"])
    event = MispEvent()
    sample_attr = malware_sample(data, name, object_relation="malware-sample")
    sample_attr["id"] = "300"
    attrs = [
        misp_attribute(t, v, object_relation=t)
        for t, v in (
            ("filename", name),
            ("md5", hashlib.md5(data).hexdigest()),
            ("sha1", hashlib.sha1(data).hexdigest()),
            ("sha256", hashlib.sha256(data).hexdigest()),
        )
    ]
    attrs.append(misp_attribute("size-in-bytes", str(len(data)), object_relation="size-in-bytes"))
    obj = event.add_file_object(attrs + [sample_attr])
    sample_attr["object_id"] = obj["id"]
    return event, obj, sample_attr


def test_bulk_enrichment_merges_into_the_file_object(index_path):
    entry = elf_fixtures()[0]
    event, obj, sample_attr = _sample_event(entry)
    config = dict(NULL_CONFIG, index_path=index_path, max_distance="400", max_results="3")
    res = expansion.dict_handler(bulk_request(sample_attr, config))
    answer = res["results"]
    assert "ObjectReference" in answer["Object"][0]
    before = len(obj["Attribute"])
    stats = event.ingest(answer, event.fetch_initial_object(obj["id"]))
    sha = entry["sha256"]
    assert event.file_objects_with(sha) == [obj]  # no second file object for the sample
    added = obj["Attribute"][before:]
    assert [(a["object_relation"], a["value"]) for a in added] == [("telfhash", entry["reference"]["telfhash"][2:])]
    neighbours = [o for o in event.objects.values() if o is not obj]
    assert len(neighbours) == len(answer["Object"]) - 1 >= 1
    by_uuid = {o["uuid"]: o for o in neighbours}
    assert {r["referenced_uuid"] for r in obj["ObjectReference"]} == set(by_uuid)
    assert all(r["relationship_type"] == "similar" and r["object_uuid"] == obj["uuid"] for r in obj["ObjectReference"])
    for o in neighbours:
        assert re.search(r"telfhash distance \d+ to sha256 " + sha, o["comment"])  # the object comment is kept
        telf = next(a for a in o["Attribute"] if a["object_relation"] == "telfhash")
        assert telf["comment"].startswith("telfhash distance ")
        assert all(a["to_ids"] is False for a in o["Attribute"]), o["Attribute"]
        assert all("/" not in str(a["value"]) for a in o["Attribute"])
    assert stats["failed_object_attributes"] == 0
    text = json.dumps(res)
    assert index_path not in text and os.path.dirname(fixture_files()[0]["abspath"]) not in text  # no server paths

    # enriching again adds nothing: MISP finds every attribute and reference already there
    again = expansion.dict_handler(bulk_request(sample_attr, config))["results"]
    n_objects, n_attrs = len(event.objects), sum(len(o["Attribute"]) for o in event.objects.values())
    stats = event.ingest(again, event.fetch_initial_object(obj["id"]))
    assert len(event.objects) == n_objects and sum(len(o["Attribute"]) for o in event.objects.values()) == n_attrs
    assert stats["references"] == 0


def test_without_the_object_id_misp_would_duplicate_the_file_object(index_path):
    # the rule re-implemented above is what makes the id matter: the same answer without it
    entry = elf_fixtures()[0]
    event, obj, sample_attr = _sample_event(entry)
    answer = expansion.dict_handler(bulk_request(sample_attr))["results"]
    del answer["Object"][0]["id"]
    event.ingest(answer, event.fetch_initial_object(obj["id"]))
    assert len(event.file_objects_with(entry["sha256"])) == 2


def test_object_enrichment_answers_with_the_input_object():
    entry = elf_fixtures()[3]
    event, obj, _ = _sample_event(entry)
    request = {
        "module": "telfhash_expansion",
        "event_id": "42",
        "config": NULL_CONFIG,
        "object": {
            "id": obj["id"],
            "uuid": obj["uuid"],
            "name": "file",
            "meta-category": "file",
            "Attribute": obj["Attribute"],
        },
    }
    answer = expansion.dict_handler(request)["results"]
    (out,) = answer["Object"]
    assert (str(out["id"]), out["uuid"]) == (obj["id"], obj["uuid"])
    event.ingest(answer, event.fetch_initial_object(obj["id"]))
    assert values({"Attribute": obj["Attribute"]})["telfhash"] == entry["reference"]["telfhash"][2:]
    assert len(event.objects) == 1


def test_answers_pass_pymisp_validation(index_path):
    for entry in elf_fixtures()[:4]:
        _, _, sample_attr = _sample_event(entry)
        config = dict(NULL_CONFIG, index_path=index_path, max_distance="400")
        answer = expansion.dict_handler(bulk_request(sample_attr, config))["results"]
        errors: dict = {}
        event = validate_event({"Event": {"info": "telfhash", "Object": copy.deepcopy(answer["Object"])}}, errors)
        assert not errors, errors
        assert sum(len(o.attributes) for o in event.objects) == sum(len(o["Attribute"]) for o in answer["Object"])
        for o in answer["Object"]:
            strict = MISPObject("file", strict=True, standalone=False)
            strict.from_dict(**copy.deepcopy(o))
            strict.to_dict(strict=True)  # the file template's rules (requiredOneOf, multiple)
