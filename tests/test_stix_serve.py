"""`telfhash stix serve` as a real process (medallion underneath), and TAXII behaviour against it:
stops with every signal, leaves no secret on disk, answers unfiltered reads, serves a 2,000-object
pull quickly, keeps valid STIX versions across re-exports; credentials never echoed.

Each server is started on a free 127.0.0.1 port and stopped by its PID.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("medallion")
pytest.importorskip("taxii2client")
requests = pytest.importorskip("requests")

from telfhash_plugins.stix import TaxiiError, export_bundle, load_settings, publish, pull  # noqa: E402
from telfhash_plugins.stix.server import collection_url  # noqa: E402

USER, PASSWORD = "alice", "pw-8c1f0b2e-do-not-echo"
TOKEN = "tok-55aa0c31-never-shown"
HEADERS = {"Accept": "application/taxii+json;version=2.1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _start_serve(port: int):
    env = dict(os.environ, TELFHASH_TAXII_USER=USER, TELFHASH_TAXII_PASSWORD=PASSWORD)
    p = subprocess.Popen(
        [sys.executable, "-m", "telfhash_core.cli", "stix", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = p.stdout.readline()  # "ready: URL" once the server answers
    assert line.startswith("ready: "), line + p.stderr.read() if p.poll() is not None else line
    kids = _children(p.pid)
    assert len(kids) == 1
    return p, kids[0], line.split(" ", 1)[1].strip()


def _wait_gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def server():
    if not sys.platform.startswith("linux"):
        pytest.skip("process checks read /proc")
    port = _free_port()
    p, child, url = _start_serve(port)
    yield url
    p.send_signal(signal.SIGTERM)
    p.wait(20)
    assert _wait_gone(child)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGHUP])  # SIGTERM: the fixture's teardown checks it
def test_serve_takes_the_server_down_on_every_signal_and_keeps_no_secret(sig, tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("process checks read /proc")
    before = set(Path("/tmp").glob("telfhash-taxii-*"))
    p, child, url = _start_serve(_free_port())
    try:
        # the password is in no argv and in no file the server has open
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        assert PASSWORD.encode() not in cmdline
        for fd in Path(f"/proc/{child}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except FileNotFoundError:  # closed since the listing (the server is still starting up)
                continue
            if target.startswith("/") and os.path.isfile(target) and not target.startswith(("/dev", "/proc")):
                try:
                    with open(target, "rb") as fh:
                        assert PASSWORD.encode() not in fh.read(1 << 20), target
                except FileNotFoundError:  # removed since (a temporary file of the start-up)
                    continue
        assert set(Path("/tmp").glob("telfhash-taxii-*")) == before
        r = requests.get(url, auth=(USER, PASSWORD), headers=HEADERS, timeout=10)
        assert r.status_code == 200
    finally:
        p.send_signal(sig)
        p.wait(20)
    assert _wait_gone(child), f"medallion still running after {sig!r} to serve"


def test_import_of_an_empty_collection_warns_and_fails(server, tmp_path):
    env = dict(os.environ, TELFHASH_TAXII_USER=USER, TELFHASH_TAXII_PASSWORD=PASSWORD, HOME=str(tmp_path))
    r = subprocess.run(
        [sys.executable, "-m", "telfhash_core.cli", "stix", "import", "--taxii", "--url", server],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "warning: the collection holds no objects" in r.stderr, r.stderr
    assert server == collection_url("127.0.0.1", int(server.split(":")[2].split("/")[0]))


def _bundle(n_files: int, per_cluster: int = 20, linkage: str = "single", ts: str = "2026-11-27T00:00:00Z"):
    base = "579297300e9da0e22294ddabf313f175b9324c7a9df8357011127d46dee9e8a4c2e993"
    rows = [
        {"file": f"s{i}", "telfhash": "t1" + base[:-4] + "%04x" % i, "sha256": hashlib.sha256(b"%d" % i).hexdigest()}
        for i in range(n_files)
    ]
    clusters = [
        {
            "members": [f"s{i}" for i in range(k, min(n_files, k + per_cluster))],
            "linkage": linkage if k == 0 else "single",
        }
        for k in range(0, n_files, per_cluster)
    ]
    return export_bundle(rows, clusters, hash_files=False, timestamp=ts, yara=False, misp_layout=False)


def _settings(url):
    return load_settings(url=url, environ={"TELFHASH_TAXII_USER": USER, "TELFHASH_TAXII_PASSWORD": PASSWORD})


def test_unfiltered_reads_and_a_2000_object_pull_under_5_seconds(server):
    b = _bundle(1700)
    assert len(b["objects"]) >= 2000
    rep = publish(b, _settings(server))
    assert rep.failure == 0 and rep.success == len(b["objects"])
    r = requests.get(server + "objects/", auth=(USER, PASSWORD), headers=HEADERS, timeout=60)  # no filter at all
    assert r.status_code == 200
    assert "extension-definition" in {o["type"] for o in r.json()["objects"]}
    t = time.perf_counter()
    got = pull(_settings(server))
    seconds = time.perf_counter() - t
    print(f"pull of {len(got['objects'])} objects: {seconds:.2f} s")
    assert {o["id"] for o in got["objects"]} >= {o["id"] for o in b["objects"]}
    assert seconds <= 5.0


def test_versions_follow_the_spec_across_exports(server):
    first = _bundle(60, ts="2026-11-27T00:00:00Z")
    assert publish(first, _settings(server)).failure == 0
    changed = _bundle(60, linkage="complete", ts="2026-11-28T00:00:00Z")  # one cluster changed, re-exported later
    rep = publish(changed, _settings(server))
    assert rep.failure == 0 and rep.new_versions == 1
    col = _settings(server)
    from taxii2client.v21 import Collection, as_pages

    c = Collection(col.url, user=USER, password=PASSWORD)
    versions: dict[str, list[dict]] = {}
    for page in as_pages(
        c.get_objects, per_request=1000, version="all", type=["grouping", "malware", "indicator", "relationship"]
    ):
        for o in page.get("objects", []):
            versions.setdefault(o["id"], []).append(o)
    assert versions
    for oid, vs in versions.items():
        assert len({v["created"] for v in vs}) == 1, oid  # one created per object
        assert len({v["modified"] for v in vs}) == len(vs), oid  # each version its own modified
        assert all(v["modified"] >= v["created"] for v in vs)
    assert sum(len(vs) > 1 for vs in versions.values()) == 1  # only the changed Grouping has two
    # and an export against the previous one keeps the unchanged objects' timestamps
    again = export_bundle(
        [
            {
                "file": f"s{i}",
                "telfhash": "t1"
                + "579297300e9da0e22294ddabf313f175b9324c7a9df8357011127d46dee9e8a4c2e993"[:-4]
                + "%04x" % i,
                "sha256": hashlib.sha256(b"%d" % i).hexdigest(),
            }
            for i in range(60)
        ],
        [{"members": [f"s{i}" for i in range(k, k + 20)]} for k in range(0, 60, 20)],
        hash_files=False,
        timestamp="2026-11-29T00:00:00Z",
        yara=False,
        misp_layout=False,
        previous=first,
    )
    old = {o["id"]: o for o in first["objects"]}
    for o in again["objects"]:
        if "created" in o and o["id"] in old:
            assert (o["created"], o["modified"]) == (old[o["id"]]["created"], old[o["id"]]["modified"])


def test_urls_with_credentials_are_refused_and_never_echoed():
    for url in (f"http://{USER}:{PASSWORD}@127.0.0.1:1/api/collections/x/", f"https://{PASSWORD}@example.org/c/"):
        with pytest.raises(TaxiiError) as exc:
            load_settings(url=url, environ={})
        assert PASSWORD not in str(exc.value) and "user name or password" in str(exc.value)
    env = dict(os.environ, TELFHASH_TAXII_URL=f"http://{USER}:{PASSWORD}@127.0.0.1:1/c/", HOME="/nonexistent")
    r = subprocess.run(
        [sys.executable, "-m", "telfhash_core.cli", "stix", "pull"], env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 1 and PASSWORD not in r.stdout + r.stderr and "user name or password" in r.stderr


def test_a_refused_token_is_named_and_not_shown(server):
    s = load_settings(url=server, environ={"TELFHASH_TAXII_TOKEN": TOKEN})
    with pytest.raises(TaxiiError) as exc:
        pull(s)
    text = str(exc.value)
    assert "401" in text and "TELFHASH_TAXII_TOKEN" in text and "PASSWORD" not in text and TOKEN not in text
    s = load_settings(url=server, environ={"TELFHASH_TAXII_USER": USER, "TELFHASH_TAXII_PASSWORD": "wrong-" + PASSWORD})
    with pytest.raises(TaxiiError) as exc:
        publish(_bundle(2), s)
    assert "401" in str(exc.value) and PASSWORD not in str(exc.value)
