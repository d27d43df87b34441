#!/usr/bin/env python3
"""Latency of the telfhash MISP module, side by side with the reference tool, in one run.

For a set of corpus files it times, per sample:

* the reference (telfhash 0.9.8, ``telfhash.telfhash(path)``, in its own interpreter) hashing the
  file from disk -- what a module built on the reference would at least spend;
* our module answering a MISP request in-process: ``attachment`` (base64) and ``malware-sample``
  (base64 of an AES ZIP with password ``infected``), i.e. decode + unzip + hash + MISP objects;
* the same ``malware-sample`` request through a real misp-modules server over HTTP (``--http``);
* the pivot: a ``telfhash`` attribute searched in an index of the whole corpus (``--pivot``).

Every digest is checked against the manifest's reference value.  MISP waits 10 s for an
expansion and 5 s for a hover: the max column is the figure to compare with those budgets.

    python benchmarks/bench_misp.py [--reference-python PATH] [--http] [--pivot] [--limit N]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import corpus  # noqa: E402

from telfhash_plugins.misp import module  # noqa: E402

REF_SCRIPT = r"""
import json, sys, time
import telfhash
paths = json.load(open(sys.argv[1]))
times, values = [], []
for p in paths:
    t = time.perf_counter()
    values.append(telfhash.telfhash(p)[0]["telfhash"])
    times.append(time.perf_counter() - t)
json.dump({"times": times, "values": values}, open(sys.argv[2], "w"))
"""


def find_reference(arg: str | None) -> str | None:
    for cand in (arg, os.environ.get("TELFHASH_REFERENCE_PYTHON"), "/work/refvenv/bin/python",
                 str(corpus.CACHE / "refvenv" / "bin" / "python")):
        if cand and Path(cand).exists():
            return cand
    return None


def run_reference(python: str, paths: list[str]) -> tuple[list[float], list[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        src, dst, script = Path(tmp, "in.json"), Path(tmp, "out.json"), Path(tmp, "ref.py")
        src.write_text(json.dumps(paths))
        script.write_text(REF_SCRIPT)
        subprocess.run([python, str(script), str(src), str(dst)], check=True)
        data = json.loads(dst.read_text())
    return data["times"], data["values"]


def aes_zip_b64(data: bytes, name: str) -> str:
    import hashlib
    import io

    import pyzipper

    md5 = hashlib.md5(data).hexdigest()
    buf = io.BytesIO()
    with pyzipper.AESZipFile(buf, "w", compression=pyzipper.ZIP_DEFLATED, encryption=pyzipper.WZ_AES) as zf:
        zf.setpassword(b"infected")
        zf.writestr(f"{md5}.filename.txt", name.encode())
        zf.writestr(md5, data)
    return base64.b64encode(buf.getvalue()).decode()


def pick(limit: int) -> list[dict]:
    files = [f for f in corpus.files() if f["reference"]["telfhash"].startswith("t1")]
    files.sort(key=lambda f: f["size"], reverse=True)
    big = files[:10]  # the largest (static, capstone fallback): the worst case for a hover
    rest = files[10:][:: max(1, len(files[10:]) // max(1, limit - 10))][: max(0, limit - 10)]
    return big + rest


def summary(times: list[float]) -> str:
    t = sorted(times)
    p95 = t[min(len(t) - 1, int(round(0.95 * (len(t) - 1))))]
    return f"median {statistics.median(t) * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms   max {t[-1] * 1000:7.1f} ms"


def telf_of(res: dict) -> str | None:
    try:
        obj = res["results"]["Object"][0]
        return next(a["value"] for a in obj["Attribute"] if a["type"] == "telfhash")
    except (KeyError, IndexError, StopIteration):
        return None


def time_requests(entries, make_request, call) -> tuple[list[float], int]:
    times, bad = [], 0
    for e, req in zip(entries, make_request):
        t = time.perf_counter()
        res = call(req)
        times.append(time.perf_counter() - t)
        if telf_of(res) != e["reference"]["telfhash"][2:]:
            bad += 1
    return times, bad


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference-python", help="an interpreter where `import telfhash` works (telfhash 0.9.8)")
    ap.add_argument("--limit", type=int, default=60, help="samples (default 60, the 10 largest included)")
    ap.add_argument("--http", action="store_true", help="also time requests through a real misp-modules server")
    ap.add_argument("--pivot", action="store_true", help="also time telfhash pivots in an index of the whole corpus")
    args = ap.parse_args()

    entries = pick(args.limit)
    paths = [e["abspath"] for e in entries]
    blobs = [open(p, "rb").read() for p in paths]
    print(f"samples: {len(entries)} corpus files, {sum(map(len, blobs)) / 1e6:.1f} MB, largest {max(map(len, blobs)) / 1e6:.2f} MB")

    ref = find_reference(args.reference_python)
    ref_times = None
    if ref is None:
        print("reference: not found (give --reference-python PATH to an interpreter with telfhash 0.9.8); ours only")
    else:
        ref_times, ref_values = run_reference(ref, paths)
        wrong = sum(v != e["reference"]["telfhash"] for v, e in zip(ref_values, entries))
        print(f"reference telfhash(path), file on disk      {summary(ref_times)}   ({wrong} differ from manifest)")

    att = [{"module": "telfhash_expansion", "config": {},
            "attribute": {"type": "attachment", "value": os.path.basename(p), "uuid": "00000000-0000-4000-8000-000000000001",
                          "data": base64.b64encode(b).decode()}} for p, b in zip(paths, blobs)]
    mal = [{"module": "telfhash_expansion", "config": {},
            "attribute": {"type": "malware-sample", "value": os.path.basename(p), "uuid": "00000000-0000-4000-8000-000000000002",
                          "data": aes_zip_b64(b, os.path.basename(p))}} for p, b in zip(paths, blobs)]
    module.expand(att[-1])  # warm-up: imports, PyMISP templates
    rows = []
    t_att, bad_att = time_requests(entries, att, lambda r: module.expand(r))
    rows.append(("module, attachment request (in-process)", t_att, bad_att))
    t_mal, bad_mal = time_requests(entries, mal, lambda r: module.expand(r))
    rows.append(("module, malware-sample AES ZIP (in-process)", t_mal, bad_mal))
    t_hov, bad_hov = time_requests(entries, mal, lambda r: module.expand(r, hover=True))
    rows.append(("hover module, malware-sample (in-process)", t_hov, bad_hov))

    if args.http:
        port = free_port()
        with tempfile.TemporaryDirectory() as tmp:
            log = open(Path(tmp) / "log", "wb")
            proc = subprocess.Popen([sys.executable, "-m", "telfhash_plugins.misp.server", "-p", str(port), "--root", tmp + "/root"],
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                base = f"http://127.0.0.1:{port}"
                for _ in range(100):
                    try:
                        urllib.request.urlopen(base + "/modules", timeout=2).read()
                        break
                    except OSError:
                        time.sleep(0.3)

                def over_http(req):
                    r = urllib.request.Request(base + "/query", data=json.dumps(req).encode(), headers={"Content-Type": "application/json"})
                    return json.loads(urllib.request.urlopen(r, timeout=30).read())

                over_http(mal[-1])
                t_http, bad_http = time_requests(entries, mal, over_http)
                rows.append(("misp-modules server, malware-sample (HTTP)", t_http, bad_http))
            finally:
                proc.terminate()
                proc.wait(timeout=15)

    for label, times, bad in rows:
        ratio = ""
        if ref_times:
            ratio = f"   x{sum(ref_times) / sum(times):5.2f} vs reference"
        print(f"{label:<44}{summary(times)}{ratio}   ({bad} wrong)")

    if args.pivot:
        from telfhash_core.store.index import Index

        with tempfile.TemporaryDirectory() as tmp:
            ipath = str(Path(tmp) / "ix.sqlite")
            t = time.perf_counter()
            with Index(ipath) as ix:
                ix.add_files([f["abspath"] for f in corpus.files()], jobs=1, progress=False)
                n = len(ix)
            print(f"index of the corpus: {n} entries built in {time.perf_counter() - t:.1f} s")
            reqs = [{"config": {"index_path": ipath}, "attribute": {"type": "telfhash", "value": e["reference"]["telfhash"],
                                                                    "uuid": "00000000-0000-4000-8000-000000000003"}} for e in entries]
            module.expand(reqs[0])
            times = []
            found = 0
            for r in reqs:
                t = time.perf_counter()
                res = module.expand(r)
                times.append(time.perf_counter() - t)
                found += len(res.get("results", {}).get("Object", []))
            print(f"{'pivot, telfhash attribute (<= 50, max 20)':<44}{summary(times)}   ({found / len(reqs):.1f} matches per query)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
