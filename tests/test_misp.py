"""The telfhash misp-modules modules, called in-process the way misp-modules calls them, with
requests shaped as MISP core builds them (MISP/MISP bb0909a3, app/):

* single-attribute enrichment, ``EventsController::__queryEnrichment`` (EventsController.php
  5392-5400): ``{"module", "attribute": <Attribute incl. data>, "event_id", "config"}``;
* bulk "Enrich event" / workflows, ``Event::enrichment`` (Event.php 6309-6405): the same plus
  ``attribute_uuid``; a reply without ``results`` throws (Event.php 6384-6385);
* hover, ``AttributesController::hoverEnrichment`` (AttributesController.php 2415-2459): the
  attribute *without* data, settings read with ``Configure::read`` (null when unset);
* malware-samples zipped as ``AttachmentTool::encrypt`` does (AttachmentTool.php 308-324):
  ``zip -j -P infected <md5> <md5>.filename.txt``.

Expected digests are the reference tool's (tests/fixtures/fixtures.json, the corpus manifest);
hashes come from hashlib.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import tempfile
import uuid
import zipfile
import zlib
from pathlib import Path

import pytest

pytest.importorskip("pymisp", reason="pymisp is not installed (pip install -e '.[misp]')")

from telfhash_plugins.misp import expansion, hover, module, sample, zipcrypto

PASSWORD = b"infected"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


# ----------------------------------------------------------------------------- fixtures


def fixture_files() -> list[dict]:
    """Committed ELF fixtures with the reference tool's output (see tests/fixtures/README.md)."""
    meta = json.loads((FIXTURES / "fixtures.json").read_text())
    items = meta["files"] if isinstance(meta, dict) and "files" in meta else meta
    items = list(items.values()) if isinstance(items, dict) else items
    return [dict(f, abspath=str(FIXTURES / f["fixture"])) for f in items]


def elf_fixtures() -> list[dict]:
    return [f for f in fixture_files() if f["reference"]["telfhash"].startswith("t1")]


def read(entry: dict) -> bytes:
    return Path(entry["abspath"]).read_bytes()


# ----------------------------------------------------------------------------- ZipCrypto samples


def _crc_byte(crc: int, b: int) -> int:
    return zlib.crc32(bytes([b]), crc ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


class _ZipCrypto:
    """PKWARE traditional ("ZipCrypto") encryption, written from APPNOTE 6.1 (used where Info-ZIP
    ``zip`` is not installed)."""

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
        if len(data) > 1 << 20 and _fast_encrypt() is not None:  # big samples where zip is absent
            import numpy as np

            buf = np.frombuffer(data, dtype=np.uint8).copy()
            keys = np.array(self.k, dtype=np.int64)
            _fast_encrypt()(buf, keys, zipcrypto.CRC_TABLE)
            self.k = [int(k) for k in keys]
            return buf.tobytes()
        out = bytearray(len(data))
        for i, p in enumerate(data):
            t = (self.k[2] | 2) & 0xFFFF
            out[i] = p ^ (((t * (t ^ 1)) >> 8) & 0xFF)
            self._update(p)
        return bytes(out)


_ENCRYPT: list = []


def _fast_encrypt():
    """The same encryption loop compiled with numba (None without it): APPNOTE 6.1, as above."""
    if not _ENCRYPT:
        try:
            import numba
            import numpy as np

            @numba.njit(cache=False)
            def encrypt(buf, keys, crc):  # pragma: no cover - compiled
                k0, k1, k2 = keys[0], keys[1], keys[2]
                for i in range(buf.size):
                    p = np.int64(buf[i])
                    t = (k2 | 2) & 0xFFFF
                    buf[i] = (p ^ ((t * (t ^ 1)) >> 8)) & 0xFF
                    k0 = np.int64(crc[(k0 ^ p) & 0xFF]) ^ (k0 >> 8)
                    k1 = ((k1 + (k0 & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
                    k2 = np.int64(crc[(k2 ^ (k1 >> 24)) & 0xFF]) ^ (k2 >> 8)
                keys[0], keys[1], keys[2] = k0, k1, k2

            _ENCRYPT.append(encrypt)
        except ImportError:
            _ENCRYPT.append(None)
    return _ENCRYPT[0]


def python_zipcrypto_zip(entries: list[tuple[str, bytes]], password: bytes = PASSWORD, deflate: bool = False) -> bytes:
    """A ZIP whose entries are ZipCrypto-encrypted, stored or deflated, built from the spec."""
    out = io.BytesIO()
    central = []
    for name, data in entries:
        crc = zlib.crc32(data) & 0xFFFFFFFF
        method = 8 if deflate else 0
        if deflate:
            c = zlib.compressobj(6, zlib.DEFLATED, -15)
            body = c.compress(data) + c.flush()
        else:
            body = data
        enc = _ZipCrypto(password).encrypt(os.urandom(11) + bytes([crc >> 24]) + body)
        raw_name = name.encode()
        offset = out.tell()
        out.write(
            struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 1, method, 0, 0x21, crc, len(enc), len(data), len(raw_name), 0)
        )
        out.write(raw_name + enc)
        central.append(
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                20,
                20,
                1,
                method,
                0,
                0x21,
                crc,
                len(enc),
                len(data),
                len(raw_name),
                0,
                0,
                0,
                0,
                0,
                offset,
            )
            + raw_name
        )
    cd_offset = out.tell()
    cd = b"".join(central)
    out.write(cd)
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(cd), cd_offset, 0))
    return out.getvalue()


HAVE_ZIP = shutil.which("zip") is not None


def info_zip(entries: list[tuple[str, bytes]], password: bytes = PASSWORD, extra: tuple[str, ...] = ()) -> bytes:
    """A ZIP made by Info-ZIP ``zip -j -P`` exactly as MISP's AttachmentTool::encrypt runs it."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, data in entries:
            Path(tmp, name).write_bytes(data)
            paths.append(str(Path(tmp, name)))
        out = str(Path(tmp, "s.zip"))
        subprocess.run(["zip", "-q", "-j", *extra, "-P", password.decode(), out, *paths], check=True)
        return Path(out).read_bytes()


def misp_zip(data: bytes, filename: str, password: bytes = PASSWORD, how: str = "zip") -> bytes:
    """A malware-sample attachment as MISP stores it: ``<md5>`` and ``<md5>.filename.txt``."""
    md5 = hashlib.md5(data).hexdigest()
    entries = [(md5, data), (f"{md5}.filename.txt", filename.encode())]
    if how == "zip" and HAVE_ZIP:
        return info_zip(entries, password)
    if how == "aes":
        import pyzipper

        buf = io.BytesIO()
        with pyzipper.AESZipFile(buf, "w", compression=pyzipper.ZIP_DEFLATED, encryption=pyzipper.WZ_AES) as zf:
            zf.setpassword(password)
            for name, payload in reversed(entries):  # the name file first: order must not matter
                zf.writestr(name, payload)
        return buf.getvalue()
    return python_zipcrypto_zip(entries, password, deflate=how == "deflate")


# ----------------------------------------------------------------------------- MISP-shaped requests


def misp_attribute(
    kind: str,
    value: str,
    data: bytes | None = None,
    *,
    object_id: str = "0",
    object_relation: str | None = None,
    attr_id: str = "101",
) -> dict:
    """An Attribute as MispAttribute::fetchAttributes returns it (flatten, includeEventTags)."""
    attr = {
        "id": attr_id,
        "event_id": "42",
        "object_id": object_id,
        "object_relation": object_relation,
        "category": "Payload delivery",
        "type": kind,
        "value1": value.split("|")[0],
        "value2": value.partition("|")[2],
        "to_ids": kind == "malware-sample",
        "uuid": str(uuid.uuid4()),
        "timestamp": "1764547200",
        "distribution": "5",
        "sharing_group_id": "0",
        "comment": "",
        "deleted": False,
        "disable_correlation": False,
        "first_seen": None,
        "last_seen": None,
        "value": value,
        "EventTag": [],
    }
    if data is not None:
        attr["data"] = base64.b64encode(data).decode()
    return attr


def malware_sample(data: bytes, filename: str, how: str = "zip", **kw) -> dict:
    md5 = hashlib.md5(data).hexdigest()
    return misp_attribute("malware-sample", f"{filename}|{md5}", misp_zip(data, filename, how=how), **kw)


def attachment(data: bytes, filename: str, **kw) -> dict:
    return misp_attribute("attachment", filename, data, **kw)


NULL_CONFIG = {"index_path": None, "max_distance": None, "max_results": None, "max_sample_mb": None}


def enrich_request(attribute: dict, config: dict | None = None, module_name: str = "telfhash_expansion") -> dict:
    """EventsController::__queryEnrichment's request."""
    return {"module": module_name, "attribute": attribute, "event_id": "42", "config": dict(config or NULL_CONFIG)}


def bulk_request(attribute: dict, config: dict | None = None) -> dict:
    """Event::enrichment's request: module, event_id, attribute_uuid, config, attribute."""
    return {
        "module": "telfhash_expansion",
        "event_id": "42",
        "attribute_uuid": attribute["uuid"],
        "config": dict(config or NULL_CONFIG),
        "attribute": attribute,
    }


def hover_request(attribute: dict, config: dict | None = None) -> dict:
    """AttributesController::hoverEnrichment's request: no data, no event_id."""
    attribute = {k: v for k, v in attribute.items() if k != "data"}
    cfg = dict(config or {})
    for key in module.CONFIG_HOVER:
        cfg.setdefault(key, None)
    return {"module": "telfhash_hover", "config": cfg, "attribute": attribute}


def objects(res: dict) -> list[dict]:
    assert set(res) >= {"results"} and "error" not in res, res
    return res["results"].get("Object", [])


def values(obj: dict) -> dict:
    return {a["object_relation"]: a["value"] for a in obj["Attribute"]}


def check_sample_object(res: dict, data: bytes, ref: str, filename: str, target_uuid: str) -> dict:
    (obj,) = objects(res)[:1]
    assert obj["name"] == "file"
    v = values(obj)
    assert v["telfhash"] == ref[2:]  # 70 hex, as MISP validates it
    assert v["sha256"] == hashlib.sha256(data).hexdigest()
    assert v["md5"] == hashlib.md5(data).hexdigest()
    assert v["sha1"] == hashlib.sha1(data).hexdigest()
    assert int(v["size-in-bytes"]) == len(data)
    assert v["filename"] == filename
    refs = [(r["referenced_uuid"], r["relationship_type"]) for r in obj.get("ObjectReference", [])]
    assert refs == [(target_uuid, "characterizes")]
    return obj


# ----------------------------------------------------------------------------- digests


@pytest.mark.parametrize("how", ["zip", "deflate", "stored", "aes", "attachment"])
def test_fixture_samples_give_the_reference_digest(how):
    for entry in elf_fixtures():
        data = read(entry)
        name = os.path.basename(entry["fixture"])
        if how == "stored" and len(data) > 100_000:
            continue  # the spec encrypter is pure Python
        attr = attachment(data, name) if how == "attachment" else malware_sample(data, name, how=how)
        check_sample_object(
            expansion.dict_handler(enrich_request(attr)), data, entry["reference"]["telfhash"], name, attr["uuid"]
        )


def test_handler_json_bytes_matches_dict_handler():
    entry = elf_fixtures()[0]
    data = read(entry)
    attr = malware_sample(data, "x.bin")
    res = expansion.handler(json.dumps(enrich_request(attr)).encode())
    check_sample_object(res, data, entry["reference"]["telfhash"], "x.bin", attr["uuid"])
    assert expansion.handler(False) is False


def test_zip_name_file_gives_the_name_when_value_has_none():
    data = read(elf_fixtures()[0])
    attr = malware_sample(data, "original-name.elf")
    attr["value"] = "|" + hashlib.md5(data).hexdigest()
    assert values(objects(expansion.dict_handler(enrich_request(attr)))[0])["filename"] == "original-name.elf"


# ----------------------------------------------------------------------------- ZipCrypto kernel


@pytest.mark.skipif(zipcrypto.kernel() is None, reason="numba not usable here: the zipfile path is used instead")
def test_compiled_zipcrypto_equals_zipfile_on_random_data():
    rng = __import__("random").Random(7)
    for size in (0, 1, 11, 12, 13, 4095, 70_001):
        data = bytes(rng.getrandbits(8) for _ in range(size)) if size < 5000 else os.urandom(size)
        data += b"A" * (size // 3)  # partly compressible
        for deflate in (False, True):
            blob = python_zipcrypto_zip([("s", data)], deflate=deflate)
            with zipfile.ZipFile(io.BytesIO(blob)) as zf:
                info = zf.infolist()[0]
                assert zf.read(info, pwd=PASSWORD) == data  # zipfile's own decrypter agrees with the spec encrypter
                got = sample._read_zipcrypto(io.BytesIO(blob), len(blob), info, 1 << 24, zipcrypto.kernel())
            b64 = base64.b64encode(blob).decode()
            assert sample.unzip_sample(b64, None, 1 << 24)[0] == data  # read through the lazy base64 file
            assert got == data


def test_16_mib_sample_without_info_zip_is_built_from_the_spec(monkeypatch):
    # where `zip` is absent the big sample is encrypted by the compiled spec loop: zipfile reads it
    data = os.urandom((1 << 20) + 4097)
    blob = python_zipcrypto_zip([("s", data)])
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        assert zf.read("s", pwd=PASSWORD) == data


@pytest.mark.skipif(not HAVE_ZIP, reason="Info-ZIP 'zip' is not installed; the spec-built ZIPs cover the format")
def test_info_zip_streamed_entries_with_data_descriptor():
    # zip reading from stdin writes a data descriptor (flag bit 3): the check byte is then the time's
    data = read(elf_fixtures()[1])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "s.zip")
        subprocess.run(["zip", "-q", "-P", "infected", str(out), "-"], input=data, check=True)
        blob = out.read_bytes()
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        assert zf.infolist()[0].flag_bits & 0x08
    got, _ = sample.unzip_sample(blob, None, 1 << 24)
    assert got == data


def test_wrong_password_bad_zip_bad_base64_are_errors():
    data = read(elf_fixtures()[0])
    for how in ("zip", "deflate", "aes"):
        attr = misp_attribute(
            "malware-sample", "x|" + hashlib.md5(data).hexdigest(), misp_zip(data, "x", password=b"wrong", how=how)
        )
        err = expansion.dict_handler(enrich_request(attr))["error"]
        assert "password" in err, (how, err)
    attr = malware_sample(data, "x")
    attr["data"] = base64.b64encode(b"PK\x03\x04 definitely not a zip").decode()
    assert "not a readable ZIP" in expansion.dict_handler(enrich_request(attr))["error"]
    attr["data"] = "this is not base64!"
    assert "not valid base64" in expansion.dict_handler(enrich_request(attr))["error"]
    wrapped = malware_sample(data, "x")
    wrapped["data"] = "\n".join(wrapped["data"][i : i + 76] for i in range(0, len(wrapped["data"]), 76))
    assert "results" in expansion.dict_handler(enrich_request(wrapped))  # line breaks are harmless


def test_zip_bombs_are_bounded():
    bomb = b"\0" * (3 << 20)
    for how in ("zip", "deflate", "aes"):
        res = expansion.dict_handler(enrich_request(malware_sample(bomb, "bomb", how=how), {"max_sample_mb": "1"}))
        assert set(res) == {"error"} and "limit" in res["error"], (how, res)
    # a ZipCrypto ZIP that lies about its sizes: declared 100 bytes, inflates to 3 MiB
    raw = bytearray(python_zipcrypto_zip([("s", bomb)], deflate=True))
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        i = raw.find(sig)
        raw[i + off : i + off + 4] = struct.pack("<I", 100)
    attr = misp_attribute("malware-sample", "s|", bytes(raw))
    res = expansion.dict_handler(enrich_request(attr, {"max_sample_mb": "1"}))
    assert set(res) == {"error"} and "limit" in res["error"], res


def test_16_mib_incompressible_sample_within_one_cpu_second():
    """A 16 MiB sample that does not compress, zipped as MISP does: <= 1 s of CPU end to end."""
    import time

    entry = elf_fixtures()[0]
    data = read(entry) + os.urandom((16 << 20) - len(read(entry)))  # trailing bytes do not change telfhash
    attr = malware_sample(data, "big.elf")
    req = enrich_request(attr)
    expansion.dict_handler(enrich_request(malware_sample(read(entry), "warm")))  # kernel compiled / loaded once
    t = time.process_time()
    res = expansion.dict_handler(req)
    cpu = time.process_time() - t
    check_sample_object(res, data, entry["reference"]["telfhash"], "big.elf", attr["uuid"])
    assert cpu <= 1.0, f"{cpu:.2f} s of CPU for a 16 MiB malware-sample"


def test_peak_memory_of_one_request_is_the_cap_plus_64_mib(tmp_path):
    """A 64 KB ZipCrypto ZIP of 63 MiB of zeros, cap 64 MiB: peak RSS grows by <= cap + 64 MiB."""
    zeros = b"\0" * (63 << 20)
    blob = python_zipcrypto_zip([(hashlib.md5(zeros).hexdigest(), zeros)], deflate=True)
    req = tmp_path / "req.json"
    req.write_text(json.dumps(enrich_request(misp_attribute("malware-sample", "z|", blob), {"max_sample_mb": "64"})))
    del zeros
    script = (
        "import json, resource, sys\n"
        "from telfhash_plugins.misp import expansion, zipcrypto\n"
        "zipcrypto.kernel()\n"
        "req = json.loads(open(sys.argv[1]).read())\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "res = expansion.dict_handler(req)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps({'grew_kib': after - before, 'res': res}))\n"
    )
    out = subprocess.run(
        [__import__("sys").executable, "-c", script, str(req)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
        check=False,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["res"]["results"] == {} and "not_elf" in got["res"]["comment"]  # zeros: not an ELF file
    assert got["grew_kib"] <= (64 + 64) * 1024, got["grew_kib"]


# ----------------------------------------------------------------------------- nothing to add


def test_nothing_to_add_is_an_empty_results_not_an_error():
    by_outcome = {}
    for f in fixture_files():
        by_outcome.setdefault(f["reference"]["telfhash"][:2], f)
    cases = [
        ("tnull", read(by_outcome["tn"]), "too_few_symbols"),
        ("no symbols", read(by_outcome["-"]), ""),
        ("pdf", b"%PDF-1.4\n" + os.urandom(3000), "not_elf"),
        ("script", b"#!/bin/sh\necho hi\n" * 10, "not_elf"),
        ("truncated", read(elf_fixtures()[0])[:64], ""),
    ]
    for label, data, reason in cases:
        for attr in (malware_sample(data, f"{label}.bin"), attachment(data, f"{label}.bin")):
            res = expansion.dict_handler(enrich_request(attr))
            assert set(res) == {"results", "comment"} and res["results"] == {}, (label, res)
            assert f"{label}.bin has no telfhash (" in res["comment"] and reason in res["comment"], res
    # a telfhash attribute without an index: nothing to pivot on
    ref = elf_fixtures()[0]["reference"]["telfhash"]
    res = expansion.dict_handler(enrich_request(misp_attribute("telfhash", ref[2:])))
    assert res["results"] == {} and "index_path" in res["comment"]


def test_bulk_enrichment_of_a_mixed_event_never_stops():
    """Event::enrichment walks every attribute and throws on a reply without `results`
    (Event.php 6384-6385): an event mixing ELF, non-ELF and tnull samples gets every ELF's telfhash."""
    event = []
    for f in fixture_files():
        event.append((f, malware_sample(read(f), os.path.basename(f["fixture"]))))
    event.insert(3, (None, malware_sample(b"%PDF-1.7\n" + os.urandom(5000), "invoice.pdf")))
    event.insert(7, (None, attachment(b"MZ\x90\x00" + os.urandom(4000), "setup.exe")))
    event.append((None, misp_attribute("attachment", "missing-on-disk.bin", b"")))  # base64EncodeAttachment -> ''
    added = 0
    for f, attr in event:
        res = expansion.dict_handler(bulk_request(attr))
        assert "results" in res, res  # what Event.php checks before going on
        ref = f["reference"]["telfhash"] if f else "-"
        if ref.startswith("t1"):
            (obj,) = res["results"]["Object"]
            assert values(obj)["telfhash"] == ref[2:]
            added += 1
        else:
            assert res["results"] == {}, res
    assert added == len(elf_fixtures())


def test_real_faults_are_still_errors():
    res = expansion.dict_handler(enrich_request(misp_attribute("ip-dst", "192.0.2.1")))
    assert "unsupported attribute type 'ip-dst'" in res["error"]
    assert "uuid" in expansion.dict_handler({"attribute": {"type": "attachment", "value": "x"}})["error"]
    assert "not valid JSON" in expansion.handler(b"{not json")["error"]
    bad = enrich_request(attachment(b"x", "x"), {"max_distance": "far"})
    assert "max_distance" in expansion.dict_handler(bad)["error"]
    res = expansion.dict_handler(enrich_request(misp_attribute("telfhash", "tnull")))
    assert "not a telfhash" in res["error"]
    ref = elf_fixtures()[0]["reference"]["telfhash"]
    res = expansion.dict_handler(enrich_request(misp_attribute("telfhash", ref), {"index_path": "/nonexistent/ix"}))
    assert "does not exist" in res["error"]
    big = attachment(b"\x7fELF" + b"\0" * (2 << 20), "big")
    assert "over the limit" in expansion.dict_handler(enrich_request(big, {"max_sample_mb": "1"}))["error"]


def test_hostile_requests_give_clear_errors():
    hostile = [
        None,
        [],
        "x",
        5,
        {"attribute": []},
        {"attribute": {"type": None, "uuid": None, "value": None}},
        {"attribute": {"type": "attachment", "uuid": 1, "value": None, "data": 5}},
        {"config": "x"},
        {"object": "x"},
        {"object": {"name": "file"}},
        {"object": {"name": "domain-ip", "uuid": "u"}},
        {"attribute": {"type": "telfhash", "uuid": "u", "value": ["t1"]}},
        {"attribute": {"type": ["x"], "uuid": "u", "value": "v"}},
        {"attribute": {"type": "attachment", "uuid": "u", "value": "x", "data": 5}},
        {"object": {"name": "file", "uuid": "u", "Attribute": {"a": 1}}},
        {
            "object": {
                "name": "file",
                "uuid": "u",
                "Attribute": [{"type": "malware-sample", "data": "AAAA", "value": 5}],
            }
        },
        {
            "attribute": {"type": "attachment", "uuid": "u", "value": "x", "data": "QUJD"},
            "config": {"max_results": "-1"},
        },
        {"attribute": {"type": "attachment", "uuid": "u", "value": "x", "data": "QUJD"}, "config": {"index_path": 5}},
    ]
    for req in hostile:
        for mod in (expansion, hover):
            res = mod.dict_handler(req)
            assert isinstance(res, dict) and set(res) == {"error"} and res["error"], (req, res)
            assert "internal error" not in res["error"], (req, res)


def test_file_object_carrying_a_sample():
    entry = elf_fixtures()[2]
    data = read(entry)
    carrier = malware_sample(data, "ignored", object_relation="malware-sample", object_id="7")
    obj = {
        "id": "7",
        "name": "file",
        "uuid": str(uuid.uuid4()),
        "meta-category": "file",
        "event_id": "42",
        "Attribute": [
            misp_attribute("filename", "from-object.elf", object_relation="filename", object_id="7"),
            carrier,
        ],
    }
    res = expansion.dict_handler(
        {"module": "telfhash_expansion", "object": obj, "event_id": "42", "config": NULL_CONFIG}
    )
    (out,) = objects(res)
    assert str(out["id"]) == "7" and out["uuid"] == obj["uuid"]  # merged into the input object
    assert values(out)["telfhash"] == entry["reference"]["telfhash"][2:]
    assert values(out)["filename"] == "from-object.elf"
    assert not out.get("ObjectReference")  # the object already holds the sample
    # an attribute request for the sample in that object: its id, and its uuid when the request has it
    carrier["Object"] = {"id": "7", "uuid": obj["uuid"]}
    (out,) = objects(expansion.dict_handler(bulk_request(carrier)))
    assert (str(out["id"]), out["uuid"]) == ("7", obj["uuid"])


# ----------------------------------------------------------------------------- hover


def test_hover_without_index_or_hash_says_so_in_one_line():
    data = read(elf_fixtures()[0])
    for attr, words in (
        (malware_sample(data, "h.elf"), "no telfhash index is configured"),
        (attachment(data, "h.elf"), "carries no MD5/SHA-1/SHA-256"),
    ):
        res = hover.dict_handler(hover_request(attr))
        assert res == {"results": {"Attribute": [{"type": "text", "value": res["results"]["Attribute"][0]["value"]}]}}
        text = res["results"]["Attribute"][0]["value"]
        assert words in text and "\n" not in text, text


def test_hover_with_data_computes_and_is_bounded():
    # not what MISP sends on hover, but other callers may: the digest is computed, within the cap
    entry = elf_fixtures()[0]
    data = read(entry)
    attr = malware_sample(data, "h")
    req = enrich_request(attr, module_name="telfhash_hover")
    check_sample_object(hover.dict_handler(req), data, entry["reference"]["telfhash"], "h", attr["uuid"])
    assert hover.version()["module-type"] == ["hover"]
    assert expansion.version()["module-type"] == ["expansion"]


def test_hover_deadline():
    import time

    def slow(_request, _settings):
        time.sleep(3)
        return {"results": {}}

    t = time.perf_counter()
    res = module._with_deadline(slow, {}, module.Settings(timeout=0.5, hover=True))
    assert time.perf_counter() - t < 2.0 and "within 0.5 s" in res["error"]
    assert module.settings_from_config({"timeout_seconds": "2"}, hover=True).timeout == 2.0
    res = hover.dict_handler(enrich_request(attachment(b"x", "x"), {"timeout_seconds": "600"}))
    assert "timeout_seconds" in res["error"]


def test_fuzzed_samples_and_zips_give_answers_not_exceptions():
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    data = read(elf_fixtures()[0])
    zips = [misp_zip(data, "f", how="aes"), misp_zip(data, "f", how="zip"), misp_zip(data[:3000], "f", how="deflate")]

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        blob=st.sampled_from(zips + [data]),
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
        res = expansion.dict_handler(enrich_request(misp_attribute(kind, "f|", bytes(raw))))
        assert isinstance(res, dict) and ("error" in res) != ("results" in res), res
        assert "internal error" not in res.get("error", ""), res

    run()
