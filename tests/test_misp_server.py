"""End to end: ``telfhash-misp-modules`` starts the real misp-modules server (only our modules),
says when it is ready, and the server answers MISP-shaped requests: single enrichment of a
``zip -P`` malware-sample, bulk enrichment (``attribute_uuid``), and hover (no data)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("misp_modules", reason="misp-modules is not installed (pip install -e '.[misp]')")

from test_misp import (
    attachment,
    bulk_request,
    elf_fixtures,
    enrich_request,
    hover_request,
    malware_sample,
    read,
    values,
)

LAUNCHER = [sys.executable, "-m", "telfhash_plugins.misp.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(base: str, body: dict, timeout: float = 15.0) -> dict:
    req = urllib.request.Request(
        base + "/query", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("misp-server")
    port = free_port()
    pid_file, log = tmp / "pid", tmp / "log"
    t = time.perf_counter()
    out = subprocess.run(
        LAUNCHER
        + [
            "-p",
            str(port),
            "--root",
            str(tmp / "root"),
            "--background",
            "--pid-file",
            str(pid_file),
            "--log",
            str(log),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    ready_after = time.perf_counter() - t
    assert out.returncode == 0, out.stderr + (log.read_text() if log.exists() else "")
    pid = int(pid_file.read_text())
    try:
        yield f"http://127.0.0.1:{port}", out.stdout, log, tmp / "root", ready_after
    finally:
        _stop(pid)


def test_launcher_prints_one_ready_line_and_loads_only_our_modules(server):
    base, stdout, log, root, ready_after = server
    lines = stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"telfhash-misp-modules: ready on {base} (telfhash_expansion, telfhash_hover)"
    )
    modules = json.loads(urllib.request.urlopen(base + "/modules", timeout=5).read())
    by_name = {m["name"]: m for m in modules}
    assert set(by_name) == {"telfhash_expansion", "telfhash_hover"}  # none of the ~176 bundled modules
    assert by_name["telfhash_expansion"]["meta"]["module-type"] == ["expansion"]
    assert by_name["telfhash_hover"]["meta"]["module-type"] == ["hover"]
    assert by_name["telfhash_expansion"]["mispattributes"]["format"] == "misp_standard"
    assert "index_path" in by_name["telfhash_expansion"]["meta"]["config"]
    text = log.read_text()
    assert "CUSTOM MISP module telfhash_expansion (type=expansion) imported" in text
    assert "WARNING" not in text  # no degraded-install banner, no failed bundled modules
    assert (root / "expansion" / "telfhash_hover.py").is_file()
    assert ready_after < 20


def test_server_answers_misp_requests(server):
    base = server[0]
    entry = elf_fixtures()[4]
    data = read(entry)
    ref = entry["reference"]["telfhash"][2:]
    attr = malware_sample(data, "s.elf")
    res = post(base, dict(enrich_request(attr), timeout=10))
    assert values(res["results"]["Object"][0])["telfhash"] == ref
    # bulk enrichment: a PDF in the event is an empty results, not an error that stops the event
    res = post(base, bulk_request(attachment(b"%PDF-1.5\n" + b"x" * 500, "a.pdf")))
    assert res["results"] == {} and "not_elf" in res["comment"]
    res = post(base, bulk_request(malware_sample(data, "s.elf")))
    assert values(res["results"]["Object"][0])["telfhash"] == ref
    # hover as MISP sends it: no data, no index configured -> one clear line
    res = post(base, hover_request(attr))
    (line,) = res["results"]["Attribute"]
    assert line["type"] == "text" and "index" in line["value"]
    assert (
        "unsupported attribute type"
        in post(base, enrich_request({"type": "domain", "value": "example.org", "uuid": attr["uuid"]}))["error"]
    )


def test_launcher_fails_clearly_when_the_modules_do_not_load(tmp_path):
    # a core that cannot be imported: misp-modules logs the ImportError and goes on without our modules
    broken = tmp_path / "broken"
    (broken / "telfhash_core").mkdir(parents=True)
    (broken / "telfhash_core" / "__init__.py").write_text("raise ImportError('telfhash_core broken for this test')\n")
    env = dict(os.environ, PYTHONPATH=str(broken) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        LAUNCHER + ["-p", str(free_port()), "--root", str(tmp_path / "root"), "--ready-timeout", "30"],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        cwd=tmp_path,
        check=False,
    )  # cwd: not the checkout
    assert out.returncode == 1, out
    assert out.stdout == ""  # no ready line
    assert "did not load telfhash_expansion, telfhash_hover" in out.stderr


def test_launcher_fails_when_the_port_is_taken():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = subprocess.run(LAUNCHER + ["-p", str(port)], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 1 and "already listens" in out.stderr and out.stdout == ""


def test_write_root_only(tmp_path):
    out = subprocess.run(
        LAUNCHER + ["--write-root", str(tmp_path / "r"), "-p", "7001"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "-c " + str((tmp_path / "r").resolve()) in out.stdout and "-p 7001" in out.stdout
    text = Path(tmp_path / "r" / "expansion" / "telfhash_hover.py").read_text()
    assert "from telfhash_plugins.misp.hover import" in text


def test_launcher_and_module_agree_on_the_index_variable():
    from telfhash_plugins.misp import cli, module

    assert cli.INDEX_ENV == module.INDEX_ENV == "TELFHASH_MISP_INDEX"
    assert cli.PRELOAD_ENV == module.PRELOAD_ENV
