"""End to end: the real misp-modules server, started by telfhash-misp-modules on 127.0.0.1 at a
free port, lists the telfhash modules and answers a MISP-shaped query with the reference digest."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

import corpus

pytest.importorskip("misp_modules", reason="misp-modules is not installed (pip install -e '.[misp]')")

from test_misp import malware_sample_attribute, values  # noqa: E402

STARTUP_SECONDS = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def post(url: str, body: dict, timeout: float = 15.0) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


@pytest.fixture
def server(tmp_path):
    port = free_port()
    log_path = tmp_path / "misp-modules.log"
    root = tmp_path / "root"
    cmd = [sys.executable, "-m", "telfhash_plugins.misp.server", "-l", "127.0.0.1", "-p", str(port), "--root", str(root)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        modules = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                modules = json.loads(get(base + "/modules", timeout=2))
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.3)
        if modules is None:
            pytest.fail(f"misp-modules did not answer on {base} within {STARTUP_SECONDS} s:\n{log_path.read_text()[-3000:]}")
        yield base, modules, log_path, root
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)  # the launcher passes it on to misp-modules
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # our own session: the launcher and its misp-modules
                proc.wait(timeout=5)


def test_misp_modules_server_end_to_end(server):
    base, modules, log_path, root = server
    by_name = {m["name"]: m for m in modules}
    assert "telfhash_expansion" in by_name and "telfhash_hover" in by_name, sorted(by_name)
    log = log_path.read_text()
    assert "CUSTOM MISP module telfhash_expansion (type=expansion) imported" in log
    assert "CUSTOM MISP module telfhash_hover (type=expansion) imported" in log
    assert by_name["telfhash_expansion"]["meta"]["module-type"] == ["expansion"]
    assert by_name["telfhash_hover"]["meta"]["module-type"] == ["hover"]
    assert by_name["telfhash_expansion"]["mispattributes"]["format"] == "misp_standard"
    assert {"malware-sample", "attachment", "telfhash", "file"} <= set(by_name["telfhash_expansion"]["mispattributes"]["input"])
    assert "index_path" in by_name["telfhash_expansion"]["meta"]["config"]
    assert (root / "expansion" / "telfhash_expansion.py").is_file()

    entry = next(f for f in corpus.files() if f["path"] == "amd64/iot-fam-b/fam_b_v1_x86_64_static")
    data = open(entry["abspath"], "rb").read()
    attr = malware_sample_attribute(data, "fam_b.elf")
    attr.update({"id": "1234", "event_id": "42", "object_id": "0", "to_ids": True, "distribution": "5"})
    body = {
        "module": "telfhash_expansion",
        "attribute": attr,
        "event_id": "42",
        "config": {"index_path": "", "max_distance": "", "max_results": "", "max_sample_mb": ""},
        "timeout": 10,
    }
    res = post(base + "/query", body)
    assert "error" not in res, res
    (obj,) = res["results"]["Object"]
    v = values(obj)
    assert v["telfhash"] == entry["reference"]["telfhash"][2:]
    assert v["sha256"] == entry["sha256"] and v["md5"] == hashlib.md5(data).hexdigest()
    assert obj["ObjectReference"][0]["referenced_uuid"] == attr["uuid"]

    # hover module, and a clear error through the server for a wrong attribute type
    body["module"] = "telfhash_hover"
    assert values(post(base + "/query", body)["results"]["Object"][0])["telfhash"] == entry["reference"]["telfhash"][2:]
    body["attribute"] = {"type": "domain", "value": "example.org", "uuid": attr["uuid"]}
    assert "unsupported attribute type" in post(base + "/query", body)["error"]


def test_write_root_only(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "telfhash_plugins.misp.server", "--write-root", str(tmp_path / "r"), "-p", "7001"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "-c " + str((tmp_path / "r").resolve()) in out.stdout and "-p 7001" in out.stdout
    text = (tmp_path / "r" / "expansion" / "telfhash_hover.py").read_text()
    assert "from telfhash_plugins.misp.hover import" in text


def test_launcher_and_module_agree_on_the_index_variable():
    from telfhash_plugins.misp import module, server

    assert server.INDEX_ENV == module.INDEX_ENV == "TELFHASH_MISP_INDEX"
