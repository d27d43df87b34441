"""The telfhash misp-modules module, called in-process the way misp-modules calls it.

Expected digests come from the shared corpus manifest (the reference tool's output); hashes and
distances from hashlib and py-tlsh directly.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import struct
import uuid
import warnings
import zlib

import pytest

import corpus

pytest.importorskip("pymisp", reason="pymisp is not installed (pip install -e '.[misp]')")

from pymisp import MISPEvent, MISPObject  # noqa: E402
from pymisp.tools.attributevalidationtool import validate_event  # noqa: E402

from telfhash_plugins.misp import expansion, hover  # noqa: E402

PASSWORD = b"infected"


# ----------------------------------------------------------------------------- MISP-shaped input


def _crc_byte(crc: int, b: int) -> int:
    # one step of the CRC-32 register, as PKWARE's traditional encryption uses it
    return zlib.crc32(bytes([b]), crc ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


class _ZipCrypto:
    """PKWARE traditional ("ZipCrypto") encryption, written from APPNOTE 6.1."""

    def __init__(self, password: bytes):
        self.k = [0x12345678, 0x23456789, 0x34567890]
        for c in password:
            self._update(c)

    def _update(self, c: int) -> None:
        k0, k1, k2 = self.k
        k0 = _crc_byte(k0, c)
        k1 = ((k1 + (k0 & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
        k2 = _crc_byte(k2, k1 >> 24)
        self.k = [k0, k1, k2]

    def encrypt(self, data: bytes) -> bytes:
        out = bytearray(len(data))
        for i, p in enumerate(data):
            t = (self.k[2] | 2) & 0xFFFF
            out[i] = p ^ (((t * (t ^ 1)) >> 8) & 0xFF)
            self._update(p)
        return bytes(out)


def zipcrypto_zip(entries: list[tuple[str, bytes]], password: bytes = PASSWORD) -> bytes:
    """A stored (uncompressed) ZIP whose entries are ZipCrypto-encrypted."""
    out = io.BytesIO()
    central = []
    for name, data in entries:
        crc = zlib.crc32(data) & 0xFFFFFFFF
        header = os.urandom(11) + bytes([crc >> 24])
        enc = _ZipCrypto(password).encrypt(header + data)
        raw_name = name.encode()
        offset = out.tell()
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 1, 0, 0, 0x21, crc, len(enc), len(data), len(raw_name), 0))
        out.write(raw_name + enc)
        central.append(
            struct.pack(
                "<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 1, 0, 0, 0x21, crc, len(enc), len(data),
                len(raw_name), 0, 0, 0, 0, 0, offset,
            )
            + raw_name
        )
    cd_offset = out.tell()
    cd = b"".join(central)
    out.write(cd)
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(cd), cd_offset, 0))
    return out.getvalue()


def aes_zip(entries: list[tuple[str, bytes]], password: bytes = PASSWORD) -> bytes:
    import pyzipper

    buf = io.BytesIO()
    with pyzipper.AESZipFile(buf, "w", compression=pyzipper.ZIP_DEFLATED, encryption=pyzipper.WZ_AES) as zf:
        zf.setpassword(password)
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


def misp_sample_zip(data: bytes, filename: str, kind: str = "aes", password: bytes = PASSWORD) -> bytes:
    """A malware-sample attachment as MISP stores it: ``<md5>`` and ``<md5>.filename.txt``."""
    md5 = hashlib.md5(data).hexdigest()
    # the name file first: the module must not rely on the order
    entries = [(f"{md5}.filename.txt", filename.encode()), (md5, data)]
    return (aes_zip if kind == "aes" else zipcrypto_zip)(entries, password)


def malware_sample_attribute(data: bytes, filename: str, kind: str = "aes", **kw) -> dict:
    md5 = hashlib.md5(data).hexdigest()
    blob = misp_sample_zip(data, filename, kind, **kw)
    return {
        "type": "malware-sample",
        "category": "Payload delivery",
        "value": f"{filename}|{md5}",
        "uuid": str(uuid.uuid4()),
        "data": base64.b64encode(blob).decode(),
    }


def attachment_attribute(data: bytes, filename: str) -> dict:
    return {
        "type": "attachment",
        "category": "External analysis",
        "value": filename,
        "uuid": str(uuid.uuid4()),
        "data": base64.b64encode(data).decode(),
    }


def query(attribute: dict | None = None, config: dict | None = None, module: str = "telfhash_expansion", **extra):
    req = {"module": module, "event_id": "42", "config": config or {}}
    if attribute is not None:
        req["attribute"] = attribute
    req.update(extra)
    return req


# ----------------------------------------------------------------------------- corpus picks


def _by_path() -> dict:
    return {f["path"]: f for f in corpus.files()}


def picks() -> list[dict]:
    """One small hashed file per architecture, plus statically linked ones (the fallback route)."""
    files = [f for f in corpus.files() if f["reference"]["telfhash"].startswith("t1")]
    chosen = {}
    for f in sorted(files, key=lambda f: (f["size"], f["path"])):
        chosen.setdefault(f["arch"], f)
    out = list(chosen.values())
    out += [f for f in files if f["path"] in ("mips/iot-fam-a/fam_a_v1_mips_static", "i386/sash/bin__sash")]
    return out


def file_object(results: dict) -> dict:
    objs = results["results"]["Object"]
    return objs[0]


def values(obj: dict) -> dict:
    return {a["object_relation"]: a["value"] for a in obj["Attribute"]}


def check_sample_object(res: dict, data: bytes, entry: dict, filename: str, target_uuid: str) -> None:
    assert "error" not in res, res
    obj = file_object(res)
    assert obj["name"] == "file"
    v = values(obj)
    assert v["telfhash"] == entry["reference"]["telfhash"][2:]  # 70 hex, as MISP validates it
    assert v["sha256"] == entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert v["md5"] == hashlib.md5(data).hexdigest()
    assert v["sha1"] == hashlib.sha1(data).hexdigest()
    assert int(v["size-in-bytes"]) == entry["size"]
    assert v["filename"] == filename
    refs = obj["ObjectReference"]
    assert [(r["referenced_uuid"], r["relationship_type"]) for r in refs] == [(target_uuid, "characterizes")]


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("kind", ["attachment", "aes", "zipcrypto"])
def test_corpus_samples(kind):
    for entry in picks():
        if kind == "zipcrypto" and entry["size"] > 200_000:
            continue  # the pure-Python encrypter is slow; small files prove the format
        data = open(entry["abspath"], "rb").read()
        name = os.path.basename(entry["path"])
        attr = attachment_attribute(data, name) if kind == "attachment" else malware_sample_attribute(data, name, kind)
        res = expansion.dict_handler(query(attr))
        check_sample_object(res, data, entry, name, attr["uuid"])


def test_handler_json_bytes_matches_dict_handler():
    entry = picks()[0]
    data = open(entry["abspath"], "rb").read()
    attr = malware_sample_attribute(data, "x.bin")
    res = expansion.handler(json.dumps(query(attr)).encode())
    check_sample_object(res, data, entry, "x.bin", attr["uuid"])
    assert expansion.handler(False) is False


def test_zip_name_file_gives_the_name_when_value_has_none():
    entry = picks()[0]
    data = open(entry["abspath"], "rb").read()
    attr = malware_sample_attribute(data, "original-name.elf")
    attr["value"] = "|" + hashlib.md5(data).hexdigest()
    res = expansion.dict_handler(query(attr))
    assert values(file_object(res))["filename"] == "original-name.elf"


def test_zip_with_system_zip_tool(tmp_path):
    import shutil
    import subprocess

    if not shutil.which("zip"):
        pytest.skip("Info-ZIP 'zip' not installed; the hand-written ZipCrypto test covers the format")
    entry = picks()[1]
    data = open(entry["abspath"], "rb").read()
    md5 = hashlib.md5(data).hexdigest()
    (tmp_path / md5).write_bytes(data)
    (tmp_path / f"{md5}.filename.txt").write_text("sample")
    subprocess.run(["zip", "-q", "-j", "-P", "infected", str(tmp_path / "s.zip"), str(tmp_path / f"{md5}.filename.txt"),
                    str(tmp_path / md5)], check=True)
    attr = {"type": "malware-sample", "value": f"sample|{md5}", "uuid": str(uuid.uuid4()),
            "data": base64.b64encode((tmp_path / "s.zip").read_bytes()).decode()}
    check_sample_object(expansion.dict_handler(query(attr)), data, entry, "sample", attr["uuid"])


def test_reference_no_symbols_is_a_clear_error():
    # files for which the reference prints "No symbols found"
    entries = [f for f in corpus.files() if f["reference"]["msg"] == "No symbols found"]
    entries = sorted(entries, key=lambda f: f["size"])[:3]
    assert entries
    for entry in entries:
        data = open(entry["abspath"], "rb").read()
        res = expansion.dict_handler(query(malware_sample_attribute(data, "nosym")))
        assert set(res) == {"error"}
        assert res["error"].startswith("no telfhash for nosym (")


def test_non_elf_and_corrupted_samples():
    res = expansion.dict_handler(query(attachment_attribute(b"#!/bin/sh\necho hi\n" * 10, "script.sh")))
    assert res == {"error": res["error"]} and "not_elf" in res["error"] and "script.sh" in res["error"]
    entry = picks()[0]
    data = open(entry["abspath"], "rb").read()
    for broken in (data[:64], data[:4] + b"\xff" * 60):  # truncated; ELF magic then garbage
        res = expansion.dict_handler(query(malware_sample_attribute(broken, "broken.elf")))
        assert set(res) == {"error"} and res["error"].startswith("no telfhash for broken.elf (")
    res = expansion.dict_handler(query(attachment_attribute(b"", "empty")))
    assert set(res) == {"error"}


def test_bad_base64_bad_zip_wrong_password():
    attr = attachment_attribute(b"x", "x")
    attr["data"] = "this is not base64!"
    assert "not valid base64" in expansion.dict_handler(query(attr))["error"]
    attr = malware_sample_attribute(b"\x7fELF", "x")
    attr["data"] = base64.b64encode(b"PK\x03\x04 definitely not a zip").decode()
    assert "not a readable ZIP" in expansion.dict_handler(query(attr))["error"]
    entry = picks()[0]
    data = open(entry["abspath"], "rb").read()
    for kind in ("aes", "zipcrypto"):
        attr = malware_sample_attribute(data, "x", kind, password=b"wrong")
        err = expansion.dict_handler(query(attr))["error"]
        assert "password" in err, err
    attr = malware_sample_attribute(data, "x")
    del attr["data"]
    assert "carries no data" in expansion.dict_handler(query(attr))["error"]


def test_zip_bomb_is_bounded():
    bomb = b"\0" * (3 << 20)
    attr = malware_sample_attribute(bomb, "bomb")
    res = expansion.dict_handler(query(attr, {"max_sample_mb": "1"}))
    assert "limit" in res["error"]
    # a ZIP that lies about the size: patch the declared sizes to look small
    import pyzipper

    buf = io.BytesIO()
    with pyzipper.ZipFile(buf, "w", compression=pyzipper.ZIP_DEFLATED) as zf:
        zf.writestr("s", bomb)
    raw = bytearray(buf.getvalue())
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        i = raw.find(sig)
        raw[i + off : i + off + 4] = struct.pack("<I", 100)  # uncompressed size: 100 bytes
    attr = {"type": "malware-sample", "value": "s|", "uuid": str(uuid.uuid4()), "data": base64.b64encode(raw).decode()}
    res = expansion.dict_handler(query(attr, {"max_sample_mb": "1"}))
    assert set(res) == {"error"}


def test_wrong_attribute_type_and_malformed_requests():
    res = expansion.dict_handler(query({"type": "ip-dst", "value": "192.0.2.1", "uuid": str(uuid.uuid4())}))
    assert "unsupported attribute type 'ip-dst'" in res["error"]
    res = expansion.dict_handler(query({"type": "attachment", "value": "x"}))
    assert "uuid" in res["error"]
    assert "error" in expansion.dict_handler(query())
    assert "not valid JSON" in expansion.handler(b"{not json")["error"]
    assert "max_distance" in expansion.dict_handler(query(attachment_attribute(b"x", "x"), {"max_distance": "far"}))["error"]
    hostile = [None, [], "x", 5, {"attribute": []}, {"attribute": {"type": None, "uuid": None, "value": None}},
               {"attribute": {"type": "attachment", "uuid": 1, "value": None, "data": 5}}, {"config": "x"},
               {"object": "x"}, {"object": {"name": "file"}}, {"object": {"name": "file", "uuid": "u", "Attribute": [5]}},
               {"object": {"name": "domain-ip", "uuid": "u"}},
               {"attribute": {"type": "telfhash", "uuid": "u", "value": ["t1"]}},
               {"attribute": {"type": ["x"], "uuid": "u", "value": "v"}},
               {"attribute": {"type": "attachment", "uuid": 1, "value": "x", "data": "f0VMRg=="}},
               {"object": {"name": "file", "uuid": "u", "Attribute": {"a": 1}}},
               {"object": {"name": "file", "uuid": "u", "Attribute": [{"type": "malware-sample", "data": "AAAA", "value": 5}]}},
               {"attribute": {"type": "attachment", "uuid": "u", "value": "x", "data": "QUJD"}, "config": {"max_results": "-1"}}]
    for req in hostile:
        for mod in (expansion, hover):
            res = mod.dict_handler(req)
            assert isinstance(res, dict) and set(res) == {"error"} and res["error"], (req, res)
            assert "internal error" not in res["error"], (req, res)
        assert set(expansion.handler(json.dumps(req))) == {"error"}


def test_telfhash_attribute_needs_an_index():
    ref = picks()[0]["reference"]["telfhash"]
    res = expansion.dict_handler(query({"type": "telfhash", "value": ref, "uuid": str(uuid.uuid4())}))
    assert "index_path" in res["error"]
    res = expansion.dict_handler(query({"type": "telfhash", "value": "tnull", "uuid": str(uuid.uuid4())}))
    assert "not a telfhash" in res["error"]
    res = expansion.dict_handler(
        query({"type": "telfhash", "value": ref, "uuid": str(uuid.uuid4())}, {"index_path": "/nonexistent/ix"})
    )
    assert "does not exist" in res["error"]


def test_file_object_carrying_a_sample():
    entry = picks()[2]
    data = open(entry["abspath"], "rb").read()
    sample = malware_sample_attribute(data, "ignored")
    sample["object_relation"] = "malware-sample"
    obj = {
        "name": "file",
        "uuid": str(uuid.uuid4()),
        "Attribute": [
            {"type": "filename", "object_relation": "filename", "value": "from-object.elf", "uuid": str(uuid.uuid4())},
            sample,
        ],
    }
    res = expansion.dict_handler(query(None, object=obj))
    check_sample_object(res, data, entry, "from-object.elf", obj["uuid"])


def test_hover_is_bounded_and_gives_the_same_digest():
    entry = picks()[0]
    data = open(entry["abspath"], "rb").read()
    attr = malware_sample_attribute(data, "h")
    check_sample_object(hover.dict_handler(query(attr, module="telfhash_hover")), data, entry, "h", attr["uuid"])
    assert hover.version()["module-type"] == ["hover"]
    assert expansion.version()["module-type"] == ["expansion"]
    big = next(f for f in corpus.files() if f["size"] > (1 << 20) and f["reference"]["telfhash"].startswith("t1"))
    attr = attachment_attribute(open(big["abspath"], "rb").read(), "big")
    assert "limit" in hover.dict_handler(query(attr, {"max_sample_mb": "1"}))["error"]


def test_results_load_in_pymisp_without_warnings(caplog):
    entry = picks()[3]
    data = open(entry["abspath"], "rb").read()
    attr = malware_sample_attribute(data, "sample.elf")
    res = expansion.dict_handler(query(attr))
    objects = res["results"]["Object"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level(logging.WARNING, logger="pymisp"):
            event = MISPEvent()
            event.from_dict(info="telfhash test", Object=objects)
            errors: dict = {}
            validated = validate_event(event, errors)
            for o in objects:
                m = MISPObject("file")
                m.from_dict(**o)
    assert errors == {}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert len(validated.objects) == 1 and len(validated.objects[0].attributes) == 6
    telf = [a for a in validated.objects[0].attributes if a.type == "telfhash"][0]
    assert telf.value == entry["reference"]["telfhash"][2:]
    # the printed t1 form would be refused by the same validator (why the module sends 70 hex)
    bad = MISPEvent()
    bad.from_dict(info="x", Attribute=[{"type": "telfhash", "value": entry["reference"]["telfhash"]}])
    errs: dict = {}
    with caplog.at_level(logging.CRITICAL, logger="pymisp"):
        validate_event(bad, errs)
    assert errs.get("warnings")


def test_hover_deadline_answers_in_time():
    import time

    from telfhash_plugins.misp import module

    def slow(_request, _settings):
        time.sleep(3)
        return {"results": {}}

    t = time.perf_counter()
    res = module._with_deadline(slow, {}, module.Settings(timeout=0.5, hover=True))
    elapsed = time.perf_counter() - t
    assert elapsed < 2.0 and "within 0.5 s" in res["error"]
    # the configured budget is read from MISP's string settings and bounded
    assert module.settings_from_config({"timeout_seconds": "2"}, hover=True).timeout == 2.0
    assert "timeout_seconds" in hover.dict_handler(query(attachment_attribute(b"x", "x"), {"timeout_seconds": "600"}))["error"]


def test_fuzzed_samples_and_zips_give_errors_not_exceptions():
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    entry = picks()[0]
    data = open(entry["abspath"], "rb").read()
    good_zip = misp_sample_zip(data, "f", "aes")
    good_crypto = misp_sample_zip(data[:3000], "f", "zipcrypto")

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        blob=st.sampled_from([good_zip, good_crypto, data]),
        flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(1, 255)), min_size=1, max_size=8),
        kind=st.sampled_from(["malware-sample", "attachment"]),
        cut=st.one_of(st.none(), st.integers(0, 10**9)),
    )
    def run(blob, flips, kind, cut):
        raw = bytearray(blob)
        for pos, x in flips:
            raw[pos % len(raw)] ^= x
        if cut is not None:
            raw = raw[: cut % (len(raw) + 1)]
        attr = {"type": kind, "value": "f|", "uuid": str(uuid.uuid4()), "data": base64.b64encode(bytes(raw)).decode()}
        res = expansion.dict_handler(query(attr))
        assert isinstance(res, dict) and (set(res) == {"error"} or set(res) == {"results"}), res
        assert "internal error" not in res.get("error", ""), res  # every failure is an expected one
        if "results" in res:  # whatever survived the damage, the digest is the core's for those bytes
            assert values(file_object(res))["telfhash"]

    run()
