"""The Assemblyline 4 service, run by Assemblyline's own code.

Tasks are built with Assemblyline's task model (``assemblyline.odm.messages.task.Task``), files
are typed by Assemblyline's own identify, the service runs through ``ServiceBase.handle_task``
(its ``Task``/``ServiceRequest`` classes and result serialisation) or through the service runtime
itself (``python -m assemblyline_v4_service.run_service``, fed through its named pipes), and every
result is loaded into Assemblyline's result model, as ``run_service_once`` does.  telfhash values
are compared with the reference tool's values recorded in the corpus manifest and in
tests/fixtures/fixtures.json.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

pytest.importorskip(
    "assemblyline_v4_service",
    reason="Assemblyline's service package is not installed (pip install -e '.[assemblyline]')",
)

import corpus

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
MANIFEST = REPO / "plugins" / "assemblyline" / "service_manifest.yml"
SERVICE_PATH = "telfhash_plugins.assemblyline.service.Telfhash"

# Assemblyline reads these when its modules are imported or a service starts
os.environ["SERVICE_MANIFEST_PATH"] = str(MANIFEST)
os.environ.setdefault("RUNTIME_PREFIX", f"telfhash-test-{os.getpid()}")
_ROOT_LEVEL = logging.root.level

from assemblyline.common import forge
from assemblyline.common.heuristics import HeuristicHandler
from assemblyline.common.isotime import now_as_iso
from assemblyline.odm.messages.task import Task as ServiceTask
from assemblyline.odm.models.result import Result as ResultModel
from assemblyline.odm.models.service import Service
from assemblyline.odm.models.tagging import Tagging
from assemblyline_v4_service.common import helper
from telfhash_plugins.assemblyline.service import Telfhash
from typing_extensions import Self

from telfhash_core.store.index import Index

# Assemblyline's log set-up (run on import) raises the root logger to CRITICAL for the whole
# process; give the other test modules of the session their logging back
logging.root.setLevel(_ROOT_LEVEL)


def fixture_files() -> list[dict]:
    """The committed fixtures (every architecture of the corpus)."""
    data = json.loads((FIXTURES / "fixtures.json").read_text())
    return [dict(f, abspath=str(FIXTURES / f["fixture"])) for f in data["files"]]


@pytest.fixture(scope="module")
def identify():
    ident = forge.get_identify(use_cache=False)
    yield ident
    ident.stop()


@pytest.fixture
def tasking(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKING_DIR", str(tmp_path))
    return tmp_path


def accepted(file_type: str) -> bool:
    manifest = yaml.safe_load(MANIFEST.read_text())
    return bool(re.match(manifest["accepts"], file_type)) and not re.match(manifest["rejects"], file_type)


def make_task(
    identify,
    path: str,
    *,
    filename: str | None = None,
    file_type: str | None = None,
    depth: int = 0,
    temp: dict | None = None,
    config: dict | None = None,
) -> dict:
    """An Assemblyline task for ``path``, with the file typed by Assemblyline's identify."""
    info = identify.fileinfo(path, skip_fuzzy_hashes=True, calculate_entropy=False)
    keys = ("magic", "md5", "mime", "sha1", "sha256", "size", "type")
    fileinfo = {k: info[k] for k in keys if k in info}
    if file_type:
        fileinfo["type"] = file_type
    return {
        "sid": uuid.uuid4().hex[:20],
        "metadata": {},
        "service_name": "Telfhash",
        "service_config": config or {},
        "fileinfo": fileinfo,
        "filename": filename or os.path.basename(path),
        "min_classification": "TLP:C",
        "max_files": 500,
        "ttl": 1,
        "depth": depth,
        "temporary_submission_data": [{"name": k, "value": v} for k, v in (temp or {}).items()],
    }


def run(service: Telfhash, identify, tasking: Path, path: str, **kw) -> dict:
    """One task through ``ServiceBase.handle_task``; the result JSON the runtime would send."""
    task = ServiceTask(make_task(identify, path, **kw))
    shutil.copyfile(path, tasking / task.fileinfo.sha256)
    service.handle_task(task)
    error = tasking / f"{task.sid}_{task.fileinfo.sha256}_error.json"
    assert not error.exists(), error.read_text()
    out = tasking / f"{task.sid}_{task.fileinfo.sha256}_result.json"
    return json.loads(out.read_text())


def validate(result: dict) -> ResultModel:
    """Load a service result into Assemblyline's result model the way ``run_service_once`` does
    (heuristics resolved from the manifest, score summed, timestamps added)."""
    result = json.loads(json.dumps(result))
    result.pop("temp_submission_data", None)
    for file in result["response"]["extracted"] + result["response"]["supplementary"]:
        file.pop("path", None)
    heuristics = helper.get_heuristics()
    total = 0
    for section in result["result"]["sections"]:
        section.pop("zeroize_on_tag_safe", None)
        section.pop("zeroize_on_sig_safe", None)
        if section["heuristic"]:
            heur_id = section["heuristic"]["heur_id"]
            section["heuristic"], new_tags = HeuristicHandler().service_heuristic_to_result_heuristic(
                section["heuristic"], heuristics
            )
            for tag_type, value in new_tags:
                section["tags"].setdefault(tag_type, []).append(value)
            section["heuristic"]["name"] = heuristics[heur_id]["name"]
            total += section["heuristic"]["score"]
    result["result"]["score"] = total
    result["created"] = now_as_iso()
    result["archive_ts"] = None
    result["expiry_ts"] = now_as_iso(24 * 3600)
    return ResultModel(result)


def sections(result: dict) -> dict[str, dict]:
    return {s["title_text"]: s for s in result["result"]["sections"]}


def kv(section: dict) -> dict:
    return json.loads(section["body"])


def main_section(result: dict) -> dict:
    return next(s for s in result["result"]["sections"] if s["title_text"].startswith("telfhash"))


def all_tags(result: dict) -> dict[str, list]:
    out: dict[str, list] = {}
    for section in result["result"]["sections"]:
        for group, sub in section["tags"].items():
            stack = [(group, sub)]
            while stack:
                prefix, value = stack.pop()
                if isinstance(value, dict):
                    stack.extend((f"{prefix}.{k}", v) for k, v in value.items())
                else:
                    out.setdefault(prefix, []).extend(value)
    return out


@pytest.fixture(scope="module")
def service():
    svc = Telfhash()
    svc.start()
    yield svc
    svc.stop()


# ----------------------------------------------------------------------------- manifest


def test_manifest_loads_into_assemblyline_service_model():
    import telfhash_plugins.assemblyline as pkg

    assert pkg.MANIFEST.read_text() == MANIFEST.read_text()  # shipped with the package (package-data)
    attrs = helper.get_service_attributes()  # what ServiceBase does at start-up
    assert isinstance(attrs, Service)
    assert attrs.name == "Telfhash" and attrs.category == "Static Analysis" and attrs.stage == "CORE"
    assert set(attrs.config) == {
        "index_path",
        "threshold",
        "max_neighbours",
        "max_file_size",
        "time_budget",
        "companion",
    }
    data = yaml.safe_load(MANIFEST.read_text().replace("$SERVICE_TAG", "4.5.0.stable1"))
    for extra in ("file_required", "heuristics"):
        data.pop(extra)
    Service(data)  # as the Assemblyline UI/API loads a manifest on registration
    heuristics = helper.get_heuristics()
    assert sorted(heuristics) == [1, 2] and all(h.score > 0 for h in heuristics.values())
    for t in (
        "executable/linux/elf32",
        "executable/linux/elf64",
        "executable/linux/so32",
        "executable/linux/so64",
        "executable/linux/pie64",
    ):
        assert accepted(t), t
    for t in ("executable/windows/pe32", "text/plain", "archive/zip", "empty", "executable/linux/coff32"):
        assert not accepted(t), t


# ----------------------------------------------------------------------------- fixtures (no corpus needed)


def test_fixtures_of_every_architecture_match_the_reference(service, identify, tasking):
    files = fixture_files()
    assert len({f["arch"] for f in files}) == 13  # every architecture of the corpus
    for f in files:
        res = run(service, identify, tasking, f["abspath"])
        assert accepted(res["type"]), (f["fixture"], res["type"])
        model = validate(res)
        body = kv(main_section(res))
        assert body["telfhash"] == f["reference"]["telfhash"], f["fixture"]
        if f["reference"]["telfhash"].startswith("t1"):
            assert body["architecture"] != "-" and body["method"] in ("dynsym", "symtab", "fallback")
            assert all_tags(res)["file.lsh"][0] == f["reference"]["telfhash"]
        else:
            assert body["reason"] and body.get("reference message", "") == f["reference"]["msg"]
        assert model.result.score == 0  # no index: nothing scored


def test_every_tag_is_accepted_by_the_ontology(service, identify, tasking, tmp_path):
    files = [f for f in fixture_files() if f["reference"]["telfhash"].startswith("t1")]
    index_path = tmp_path / "ix.sqlite"
    with Index(index_path) as ix:
        ix.add_files([f["abspath"] for f in files[:4]], jobs=1)
        for f in files[:4]:
            ix.set_label(f["sha256"], f"fam-{f['pkg']}")
    svc = Telfhash({"index_path": str(index_path)})
    res = run(svc, identify, tasking, files[0]["abspath"])
    tags = all_tags(res)
    assert set(tags) == {"file.lsh", "attribution.family"}
    for tag_type, values in tags.items():
        for value in values:
            group, _, rest = tag_type.partition(".")
            nested: dict = {}
            cur = nested.setdefault(group, {})
            *parents, leaf = rest.split(".")
            for p in parents:
                cur = cur.setdefault(p, {})
            cur[leaf] = [value]
            Tagging(nested)  # raises for a tag or value the ontology does not accept
    validate(res)


# ----------------------------------------------------------------------------- index, heuristics, children


def _indexed(tmp_path, files, labels):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "known.sqlite"
    with Index(path) as ix:
        ix.add_files([f["abspath"] for f in files], jobs=1, fields=("telfhash_x",))
        for sha, label in labels.items():
            assert ix.set_label(sha, label)
    return path


def test_nearest_known_samples_and_the_heuristic(identify, tasking, tmp_path):
    files = [f for f in fixture_files() if f["reference"]["telfhash"].startswith("t1")]
    # the same program (iproute2's q_atm.so) on several CPUs, and unrelated programs
    qatm = [f for f in files if f["pkg"] == "iproute2"]
    others = [f for f in files if f["pkg"] != "iproute2"]
    assert len(qatm) >= 3 and others
    query, known = qatm[0], qatm[1:]
    labels = {known[0]["sha256"]: "QAtmFamily"}
    index_path = _indexed(tmp_path, known + others, labels)
    svc = Telfhash({"index_path": str(index_path), "threshold": 1000, "max_neighbours": 5})
    res = run(svc, identify, tasking, query["abspath"])
    model = validate(res)
    table = next(s for s in res["result"]["sections"] if s["title_text"].startswith("telfhash index:"))
    rows = json.loads(table["body"])
    assert 0 < len(rows) <= 5
    assert [r["distance"] for r in rows] == sorted(r["distance"] for r in rows)
    import telfhash_core as tc

    for r in rows:
        entry = next(f for f in files if f["sha256"] == r["sha256"])
        if r["by"] == "telfhash":
            assert r["distance"] == tc.distance(query["reference"]["telfhash"], entry["reference"]["telfhash"])
    assert any(r["label"] == "QAtmFamily" for r in rows)
    similar = table["title_text"]
    assert "within distance 1000" in similar
    heur_sections = [s for s in model.result.sections if s.heuristic]
    assert [s.heuristic.heur_id for s in heur_sections] == ["1"]
    assert model.result.score == helper.get_heuristics()[1].score
    assert "QAtmFamily" in all_tags(res)["attribution.family"]

    # unrelated labelled programs only, and a threshold of 0: nothing scored
    assert all(tc.distance(query["reference"]["telfhash"], o["reference"]["telfhash"]) > 0 for o in others)
    unrelated = _indexed(tmp_path / "u", others, {o["sha256"]: "Other" for o in others})
    tight = Telfhash({"index_path": str(unrelated), "threshold": 0})
    res = run(tight, identify, tasking, query["abspath"])
    assert validate(res).result.score == 0
    assert "attribution.family" not in all_tags(res)


def test_a_known_labelled_sample_is_recognised(identify, tasking, tmp_path):
    f = next(f for f in fixture_files() if f["reference"]["telfhash"].startswith("t1"))
    index_path = _indexed(tmp_path, [f], {f["sha256"]: "KnownFam"})
    res = run(Telfhash({"index_path": str(index_path)}), identify, tasking, f["abspath"])
    model = validate(res)
    known = sections(res)["telfhash index: this file is a known sample"]
    assert kv(known)["label"] == "KnownFam"
    assert model.result.score == helper.get_heuristics()[2].score  # itself is not listed as a neighbour
    assert "no known sample" in " ".join(sections(res))


def test_extracted_elf_children_are_hashed_and_related_to_their_parent(service, identify, tasking):
    files = {f["fixture"]: f for f in fixture_files()}
    parent = files["elf/amd64__iproute2__usr__lib__x86_64-linux-gnu__tc__q_atm.so"]
    child = files["elf/i386__iproute2__usr__lib__i386-linux-gnu__tc__q_atm.so"]
    first = run(service, identify, tasking, parent["abspath"], filename="bundle.tar")
    seen = first["temp_submission_data"]["telfhash_files"]
    assert seen == [{"sha256": parent["sha256"], "name": "bundle.tar", "telfhash": parent["reference"]["telfhash"]}]
    # Assemblyline hands the extracted child to the service with the submission's temporary data
    res = run(service, identify, tasking, child["abspath"], filename="q_atm.so", depth=1, temp={"telfhash_files": seen})
    validate(res)
    assert kv(main_section(res))["telfhash"] == child["reference"]["telfhash"]
    rel = json.loads(sections(res)["telfhash: other ELF files of this submission"]["body"])
    import telfhash_core as tc

    assert rel == [
        {
            "distance": tc.distance(parent["reference"]["telfhash"], child["reference"]["telfhash"]),
            "near": "yes"
            if tc.distance(parent["reference"]["telfhash"], child["reference"]["telfhash"]) <= 50
            else "no",
            "name": "bundle.tar",
            "sha256": parent["sha256"],
        }
    ]
    assert len(res["temp_submission_data"]["telfhash_files"]) == 2

    # a submission with many ELF files: the shared list stays within Assemblyline's limit for a
    # temporary-data value (submission.max_temp_data_length), which would otherwise drop it whole
    limit = forge.get_config().submission.max_temp_data_length
    many: list[dict] = []
    for i in range(100):
        entry = {"sha256": f"{i:064x}", "name": f"dropped/{i:032d}", "telfhash": parent["reference"]["telfhash"]}
        if len(str([*many, entry])) > limit:
            break
        many.append(entry)
    res = run(service, identify, tasking, child["abspath"], depth=1, temp={"telfhash_files": many})
    validate(res)
    assert len(str(res["temp_submission_data"]["telfhash_files"])) <= limit
    rel = json.loads(sections(res)["telfhash: other ELF files of this submission"]["body"])
    assert len(rel) == len(many) > 10


# ----------------------------------------------------------------------------- hostile input


def _hostile_files(tmp: Path) -> dict[str, bytes]:
    good = (FIXTURES / "elf" / "amd64__klibc-utils__usr__lib__klibc__bin__nuke").read_bytes()
    so = (FIXTURES / "elf" / "amd64__iproute2__usr__lib__x86_64-linux-gnu__tc__q_atm.so").read_bytes()
    out = {
        "truncated-header": good[:40],
        "truncated-half": so[: len(so) // 2],
        "not-elf": b"MZ\x90\x00" + os.urandom(4000),
        "elf-magic-only": b"\x7fELF" + b"\x00" * 12,
        "random-after-magic": b"\x7fELF\x02\x01\x01" + os.urandom(5000),
    }
    # section header table claiming 65535 sections far beyond the end of the file
    crafted = bytearray(so)
    struct.pack_into("<Q", crafted, 0x28, 0x7FFFFFFFFFFF0000)  # e_shoff
    struct.pack_into("<H", crafted, 0x3C, 0xFFFF)  # e_shnum
    out["crafted-shoff"] = bytes(crafted)
    # every section claims a size of terabytes
    crafted = bytearray(so)
    (shoff,) = struct.unpack_from("<Q", crafted, 0x28)
    (shnum,) = struct.unpack_from("<H", crafted, 0x3C)
    for i in range(shnum):
        struct.pack_into("<Q", crafted, shoff + i * 64 + 0x20, 1 << 44)
    out["crafted-sizes"] = bytes(crafted)
    # program headers claiming an absurd count and entry size
    crafted = bytearray(good)
    struct.pack_into("<HH", crafted, 0x36, 0xFFFF, 0xFFFF)  # e_phentsize, e_phnum
    out["crafted-phdrs"] = bytes(crafted)
    return out


def nop_sled_elf(code_size: int) -> bytes:
    """An x86-64 ELF executable without sections: one R+X PT_LOAD of NOPs, entry at its start."""
    base, off = 0x400000, 0x1000
    ehdr = struct.pack(
        "<4sBBBBB7sHHIQQQIHHHHHH",
        b"\x7fELF",
        2,
        1,
        1,
        0,
        0,
        b"\0" * 7,
        2,
        62,
        1,
        base + off,
        64,
        0,
        0,
        64,
        56,
        1,
        64,
        0,
        0,
    )
    phdr = struct.pack("<IIQQQQQQ", 1, 5, off, base + off, base + off, code_size, code_size, 0x1000)
    head = ehdr + phdr
    return head + b"\0" * (off - len(head)) + b"\x90" * code_size


def test_hostile_files_end_in_valid_results(service, identify, tasking, tmp_path):
    for name, data in _hostile_files(tmp_path).items():
        path = tmp_path / name
        path.write_bytes(data)
        # Assemblyline typed it as an ELF executable, whatever it holds
        start = time.perf_counter()
        res = run(service, identify, tasking, str(path), file_type="executable/linux/elf64")
        assert time.perf_counter() - start < 10, name
        validate(res)
        body = kv(main_section(res))
        assert body["telfhash"] in ("-", "tnull") or body["telfhash"].startswith("t1"), name
        if body["telfhash"] == "-":
            assert body["reason"] not in ("", "-", "unknown") and body["detail"], (name, body)


def test_size_limit_time_budget_and_bad_settings_are_reported(identify, tasking, tmp_path):
    big = next(f for f in fixture_files() if f["size"] > 20_000)
    res = run(Telfhash({"max_file_size": 1000}), identify, tasking, big["abspath"])
    validate(res)
    assert kv(main_section(res))["reason"] == "too_large"

    # a stripped x86-64 file whose call-destination sweep walks 32 MB of code: over a 0.2 s budget
    slow = tmp_path / "nop-sled"
    slow.write_bytes(nop_sled_elf(32 << 20))
    start = time.perf_counter()
    res = run(Telfhash({"time_budget": 0.2}), identify, tasking, str(slow))
    assert time.perf_counter() - start < 5
    validate(res)
    assert kv(main_section(res))["reason"] == "timeout"
    slow = FIXTURES / "elf" / "amd64__klibc-utils__usr__lib__klibc__bin__nuke"
    # the interrupted task leaves nothing pending: the next file is hashed normally
    res = run(Telfhash(), identify, tasking, str(slow))
    assert kv(main_section(res))["telfhash"].startswith("t1")

    bad = Telfhash(
        {
            "threshold": "many",
            "max_neighbours": -3,
            "time_budget": float("nan"),
            "max_file_size": True,
            "companion": "perhaps",
        }
    )
    res = run(bad, identify, tasking, str(slow))
    validate(res)
    notes = sections(res)["telfhash: configuration problems"]["body"]
    assert all(k in notes for k in ("threshold", "max_neighbours", "time_budget", "max_file_size", "companion"))
    assert kv(main_section(res))["telfhash_x"].startswith("tx2:")  # the default (on) was kept

    res = run(Telfhash({"companion": "false"}), identify, tasking, str(slow))
    assert kv(main_section(res))["telfhash_x"] == "-" and kv(main_section(res))["telfhash"].startswith("t1")
    assert kv(main_section(res))["telfhash"].startswith("t1")


def test_an_unusable_index_is_reported_not_raised(identify, tasking, tmp_path):
    f = fixture_files()[0]
    broken = tmp_path / "broken.sqlite"
    broken.write_bytes(b"this is not a database" * 100)
    for path in (broken, tmp_path / "missing.sqlite", tmp_path):
        res = run(Telfhash({"index_path": str(path)}), identify, tasking, f["abspath"])
        validate(res)
        assert "telfhash index: not searched" in sections(res)
        assert kv(main_section(res))["telfhash"] == f["reference"]["telfhash"]


# ----------------------------------------------------------------------------- the service runtime itself


class Runtime:
    """``python -m assemblyline_v4_service.run_service``, fed tasks through its named pipes as
    Assemblyline's task handler does.  Used as a context manager; ``process(path)`` returns the
    result JSON."""

    def __init__(
        self,
        tasking: Path,
        config: dict | None = None,
        service_path: str = SERVICE_PATH,
        extra_path: tuple[str, ...] = (),
        python: str = sys.executable,
    ):
        self.tasking = tasking
        self.prefix = f"telfhash-rt-{uuid.uuid4().hex[:12]}"
        self.workdir = Path(tempfile.mkdtemp(prefix="telfhash-al-"))
        manifest = yaml.safe_load(MANIFEST.read_text())
        manifest["config"].update(config or {})
        (self.workdir / "service_manifest.yml").write_text(yaml.safe_dump(manifest))
        env = dict(os.environ, SERVICE_PATH=service_path, RUNTIME_PREFIX=self.prefix, TASKING_DIR=str(tasking))
        env.pop("SERVICE_MANIFEST_PATH", None)  # the runtime writes and reads its own copy
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / ".pp"), *extra_path, env.get("PYTHONPATH", "")])
        self.log = open(self.workdir / "service.log", "w")  # noqa: SIM115  closed in __exit__
        self.proc = subprocess.Popen(
            [python, "-m", "assemblyline_v4_service.run_service"],
            cwd=self.workdir,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.task_fifo = self.done_fifo = None

    def _wait_for(self, path: str, timeout: float = 120.0) -> None:
        end = time.monotonic() + timeout
        while not os.path.exists(path):
            if self.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(
                    f"service runtime did not start: {(self.workdir / 'service.log').read_text()[-2000:]}"
                )
            time.sleep(0.02)

    def __enter__(self) -> Self:
        self._wait_for(f"/tmp/{self.prefix}_task.fifo")
        self.task_fifo = open(f"/tmp/{self.prefix}_task.fifo", "w")
        self._wait_for(f"/tmp/{self.prefix}_done.fifo")
        self.done_fifo = open(f"/tmp/{self.prefix}_done.fifo")
        return self

    def process(self, task: dict, path: str) -> dict:
        sha = task["fileinfo"]["sha256"]
        shutil.copyfile(path, self.tasking / sha)
        task_json = self.tasking / f"{task['sid']}_task.json"
        task_json.write_text(json.dumps(task))
        self.task_fifo.write(f"{task_json}\n")
        self.task_fifo.flush()
        out, status = json.loads(self.done_fifo.readline())
        if status != "RESULT_FOUND":
            raise AssertionError(f"service error for {path}: {out and Path(out).read_text()[:2000]}")
        result = json.loads(Path(out).read_text())
        for leftover in (out, task_json, self.tasking / sha):
            os.unlink(leftover)
        return result

    def __exit__(self, *exc) -> None:
        try:
            for fifo in (self.task_fifo, self.done_fifo):
                if fifo is not None:
                    fifo.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.log.close()
            for name in ("task.fifo", "done.fifo", "manifest.yml", "ready"):
                try:
                    os.unlink(f"/tmp/{self.prefix}_{name}")
                except FileNotFoundError:
                    pass
            shutil.rmtree(self.workdir, ignore_errors=True)


def corpus_sample(per_arch: int) -> list[dict]:
    """Up to ``per_arch`` corpus files of every architecture, hashed and unhashed outcomes,
    symbol tables and fallbacks alike (spread over the manifest's order)."""
    if not corpus.available():
        pytest.skip(corpus.skip_reason())
    by_arch: dict[str, list[dict]] = {}
    for f in corpus.files():
        by_arch.setdefault(f["arch"], []).append(f)
    out = []
    for _arch, items in sorted(by_arch.items()):
        step = max(1, len(items) // per_arch)
        out.extend(items[::step][:per_arch])
    return out


def test_service_runtime_on_corpus_files_of_every_architecture(identify, tasking, tmp_path):
    files = corpus_sample(per_arch=5)
    assert len({f["arch"] for f in files}) == 13
    # the runtime runs tasks in a worker thread: the time budget must hold there too
    sled = tmp_path / "nop-sled"
    sled.write_bytes(nop_sled_elf(24 << 20))
    with Runtime(tasking, config={"time_budget": 2}) as rt:
        for i, f in enumerate(files):
            task = make_task(identify, f["abspath"])
            assert accepted(task["fileinfo"]["type"]), (f["path"], task["fileinfo"]["type"])
            res = rt.process(task, f["abspath"])
            validate(res)
            assert kv(main_section(res))["telfhash"] == f["reference"]["telfhash"], f["path"]
            if i == len(files) // 2:
                start = time.perf_counter()
                res = rt.process(make_task(identify, str(sled)), str(sled))
                assert time.perf_counter() - start < 8
                validate(res)
                assert kv(main_section(res))["reason"] == "timeout"


def test_an_internal_error_ends_in_a_result_section(identify, tasking, monkeypatch):
    import telfhash_plugins.assemblyline.service as svc_module

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(svc_module, "hash_section", broken)
    f = fixture_files()[0]
    res = run(Telfhash(), identify, tasking, f["abspath"])
    validate(res)
    body = kv(sections(res)["telfhash: internal error"])
    assert body["error"] == "RuntimeError: simulated bug"
