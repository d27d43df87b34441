"""Publish to and read from a real TAXII 2.1 server (medallion, memory backend) started on
127.0.0.1 at a free port by the test, and stopped by its PID."""

from __future__ import annotations

import collections
import json
import os
import re
import socket
import stat
import subprocess
import sys
import time
import uuid

import pytest

import corpus

stix2 = pytest.importorskip("stix2")
pytest.importorskip("medallion")
pytest.importorskip("taxii2client")
requests = pytest.importorskip("requests")

import telfhash_core as tc  # noqa: E402
from telfhash_plugins.stix import EXTENSION_ID, TaxiiError, export_bundle, load_settings, publish, pull, read_bundle  # noqa: E402

USER, PASSWORD = "alice", "correct horse battery staple"
TS = "2026-11-27T00:00:00Z"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def taxii(tmp_path_factory):
    """A medallion server with one readable, writable collection; yields its collection URL."""
    d = tmp_path_factory.mktemp("medallion")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api1/"
    coll = str(uuid.uuid4())
    data = {
        "/discovery": {
            "title": "test",
            "description": "test server",
            "contact": "-",
            "default": api,
            "api_roots": [api],
        },
        "api1": {
            "information": {
                "title": "api1",
                "description": "test",
                "versions": ["application/taxii+json;version=2.1"],
                "max_content_length": 100_000_000,
            },
            "status": [],
            "collections": [
                {
                    "id": coll,
                    "title": "telfhash clusters",
                    "description": "test",
                    "can_read": True,
                    "can_write": True,
                    "media_types": ["application/stix+json;version=2.1"],
                    "objects": [],
                    "manifest": [],
                }
            ],
        },
    }
    (d / "data.json").write_text(json.dumps(data))
    config = {
        "backend": {
            "module": "medallion.backends.memory_backend",
            "module_class": "MemoryBackend",
            "filename": str(d / "data.json"),
        },
        "users": {USER: PASSWORD},
        "taxii": {"max_page_size": 100},
    }
    (d / "config.json").write_text(json.dumps(config))
    log = open(d / "server.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "medallion.scripts.run",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            str(d / "config.json"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"{api}collections/{coll}/"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError("medallion exited: " + (d / "server.log").read_text(errors="replace")[-2000:])
            try:
                r = requests.get(
                    url, auth=(USER, PASSWORD), headers={"Accept": "application/taxii+json;version=2.1"}, timeout=2
                )
                if r.status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("medallion did not answer within 30 s")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


@pytest.fixture(scope="module")
def bundle():
    entries = [e for e in corpus.files() if e["reference"]["telfhash"].startswith("t1")]
    by_label = collections.defaultdict(list)
    for e in entries:
        by_label[e["label"]].append(e)
    labels = sorted(lb for lb, es in by_label.items() if len({e["arch"] for e in es}) >= 3)[:5]
    files = [e for lb in labels for e in by_label[lb]]
    results = list(tc.hash_paths([e["abspath"] for e in files], sha256=True))
    clusters = [{"members": [e["abspath"] for e in by_label[lb]]} for lb in labels]
    return export_bundle(results, clusters, timestamp=TS, identity_name="Test CERT")


def _env():
    return {"TELFHASH_TAXII_USER": USER, "TELFHASH_TAXII_PASSWORD": PASSWORD}


def test_publish_then_pull_with_filters_gives_the_same_objects(taxii, bundle):
    settings = load_settings(url=taxii, environ=_env())
    rep = publish(bundle, settings, chunk=10)  # several requests
    assert (rep.success, rep.failure, rep.pending) == (len(bundle["objects"]), 0, 0)
    assert len(rep.status_ids) == -(-len(bundle["objects"]) // 10)

    pulled = pull(settings, per_request=7)  # several pages
    stix2.parse(json.dumps(pulled), allow_custom=False)
    assert {o["id"]: o for o in pulled["objects"]} == {o["id"]: o for o in bundle["objects"]}
    assert len(pulled["objects"]) == len(bundle["objects"])

    only = pull(settings, types=("grouping", "malware"))
    kinds = collections.Counter(o["type"] for o in only["objects"])
    assert set(kinds) == {"grouping", "malware", "extension-definition"}
    assert kinds["grouping"] == kinds["malware"] == sum(1 for o in bundle["objects"] if o["type"] == "grouping")
    for o in only["objects"]:
        assert o == next(b for b in bundle["objects"] if b["id"] == o["id"])

    # the telfhashes survive the trip
    assert read_bundle(pulled).telfhashes() == read_bundle(bundle).telfhashes()
    future = pull(settings, added_after="2999-01-01T00:00:00Z")
    assert [o["type"] for o in future["objects"]] == []


def test_wrong_credentials_and_url_give_clear_errors(taxii, bundle):
    with pytest.raises(TaxiiError, match="401"):
        publish(
            bundle, load_settings(url=taxii, environ={"TELFHASH_TAXII_USER": USER, "TELFHASH_TAXII_PASSWORD": "nope"})
        )
    with pytest.raises(TaxiiError, match="404|no such"):
        pull(load_settings(url=taxii.replace("/api1/", "/nope/"), environ=_env()))
    with pytest.raises(TaxiiError, match="no collection URL"):
        load_settings(environ={})


def test_cli_publish_and_import_with_credentials_from_env_and_config(taxii, bundle, tmp_path):
    bfile = tmp_path / "bundle.json"
    bfile.write_text(json.dumps(bundle))
    env = dict(os.environ, **_env(), TELFHASH_TAXII_URL=taxii)
    env.pop("TELFHASH_TAXII_CONFIG", None)
    env["HOME"] = str(tmp_path)  # no stray ~/.config/telfhash/taxii.ini
    cmd = [sys.executable, "-m", "telfhash_core.cli", "stix"]
    n = len(bundle["objects"])
    p = subprocess.run(cmd + ["publish", str(bfile)], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    m = re.search(r"(\d+) added \(\d+ as new versions\), (\d+) already there, 0 failed, 0 pending", p.stdout)
    assert m and int(m.group(1)) + int(m.group(2)) == n, p.stdout
    p = subprocess.run(cmd + ["publish", str(bfile)], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and f"0 added (0 as new versions), {n} already there, 0 failed" in p.stdout, (
        p.stdout + p.stderr
    )  # nothing sent twice
    assert PASSWORD not in p.stdout + p.stderr

    # a second user: credentials in a config file, readable by the owner only
    cfg = tmp_path / "taxii.ini"
    cfg.write_text(f"[taxii]\nurl = {taxii}\nuser = {USER}\npassword = {PASSWORD}\n")
    os.chmod(cfg, 0o644)
    env2 = {k: v for k, v in env.items() if not k.startswith("TELFHASH_TAXII")}
    p = subprocess.run(
        cmd + ["import", "--taxii", "--config", str(cfg)], env=env2, capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 1 and "chmod 600" in p.stderr and "Traceback" not in p.stderr
    os.chmod(cfg, stat.S_IRUSR | stat.S_IWUSR)
    local = [e["abspath"] for e in corpus.files() if e["reference"]["telfhash"].startswith("t1")][:400:9]
    p = subprocess.run(
        cmd + ["import", "--taxii", "--config", str(cfg), "--local", *local, "-t", "60", "-f", "json"],
        env=env2,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["telfhashes"] == len(read_bundle(bundle).telfhashes())
    assert EXTENSION_ID not in doc["clusters"]
    assert all(m["distance"] <= 60 for m in doc["matches"])


def test_stix_serve_runs_a_local_collection(bundle, tmp_path):
    from telfhash_plugins.stix.server import collection_url

    port = _free_port()
    env = dict(os.environ, **_env())
    proc = subprocess.Popen(
        [sys.executable, "-m", "telfhash_core.cli", "stix", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # the server and its medallion child end together below
    )
    try:
        url = collection_url("127.0.0.1", port)
        assert proc.stdout.readline().decode().strip().endswith(url)
        settings = load_settings(url=url, environ=_env())
        deadline = time.monotonic() + 30
        while True:
            try:
                rep = publish(bundle, settings)
                break
            except TaxiiError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
        assert rep.success == len(bundle["objects"]) and rep.failure == 0
        assert read_bundle(pull(settings)).telfhashes() == read_bundle(bundle).telfhashes()
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(15)
        proc.stdout.close()
