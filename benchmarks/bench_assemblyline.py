#!/usr/bin/env python3
"""Throughput of the Assemblyline service in one worker, side by side with the reference tool.

N corpus files (a deterministic sample over every architecture) are handled, in one run:

* reference: ``telfhash.telfhash(path)`` for each file in the reference's interpreter, after its
  import (start-up excluded);
* ours, runtime: the service in Assemblyline's own runtime (``python -m
  assemblyline_v4_service.run_service``), fed one task at a time through its named pipes as the
  task handler does; timed from the first task written to the last result read, after the
  runtime started (start-up excluded).  Files are typed (AL's identify) and staged in the
  tasking folder before timing, as the task handler does before it hands a task over;
* ours, execute only: ``Telfhash.execute`` on the same files in this process (what the service
  itself costs, without Assemblyline's per-task bookkeeping).

Every telfhash in every service result is checked against the manifest's reference value.

    python benchmarks/bench_assemblyline.py [--files 1000] [--quick] [--reference-python PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import corpus
import test_assemblyline as alt

REF_SCRIPT = r"""
import json, sys, time
import telfhash
paths = json.load(open(sys.argv[1]))
t, c = time.perf_counter(), time.process_time()
values = [telfhash.telfhash(p)[0]["telfhash"] for p in paths]
elapsed = time.perf_counter() - t
json.dump({"elapsed": elapsed, "cpu": time.process_time() - c, "values": values}, open(sys.argv[2], "w"))
"""


def find_reference(path: str | None) -> str | None:
    for cand in (path, os.environ.get("TELFHASH_REFERENCE_PYTHON"), "/work/refvenv/bin/python"):
        if cand and Path(cand).exists():
            return cand
    return None


def sample(n: int) -> list[dict]:
    files = corpus.files()
    random.Random(17).shuffle(files)
    return files[:n]


def run_reference(python: str, paths: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "paths.json").write_text(json.dumps(paths))
        (Path(tmp) / "ref.py").write_text(REF_SCRIPT)
        subprocess.run(
            [python, str(Path(tmp) / "ref.py"), str(Path(tmp) / "paths.json"), str(Path(tmp) / "out.json")], check=True
        )
        return json.loads((Path(tmp) / "out.json").read_text())


class NullService:  # replaced below by a ServiceBase subclass when Assemblyline is importable
    pass


try:
    from assemblyline_v4_service.common.base import ServiceBase
    from assemblyline_v4_service.common.result import Result as _ALResult

    class NullService(ServiceBase):  # type: ignore[no-redef]
        """Does nothing: what Assemblyline's runtime costs per task on its own."""

        def execute(self, request) -> None:
            _ = request.file_path  # fetch and check the file, as any service does
            request.result = _ALResult()

except ImportError:  # pragma: no cover
    pass


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) used so far by process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_runtime(files: list[dict], tasks: list[dict], null: bool = False) -> tuple[float, float, list[str]]:
    tasking = Path(tempfile.mkdtemp(prefix="telfhash-bench-al-"))
    try:
        for f, task in zip(files, tasks):
            shutil.copyfile(f["abspath"], tasking / task["fileinfo"]["sha256"])
        task_files = []
        for task in tasks:
            p = tasking / f"{task['sid']}_task.json"
            p.write_text(json.dumps(task))
            task_files.append(p)
        values = []
        runtime = (
            alt.Runtime(tasking, service_path="bench_assemblyline.NullService", extra_path=(str(REPO / "benchmarks"),))
            if null
            else alt.Runtime(tasking)
        )
        with runtime as rt:
            # one task first, untimed: the runtime's start-up and first-call costs
            rt.task_fifo.write(f"{task_files[0]}\n")
            rt.task_fifo.flush()
            rt.done_fifo.readline()
            start, cpu = time.perf_counter(), process_cpu(rt.proc.pid)
            for p in task_files:
                rt.task_fifo.write(f"{p}\n")
                rt.task_fifo.flush()
                out, status = json.loads(rt.done_fifo.readline())
                if status != "RESULT_FOUND":
                    raise SystemExit(f"service error: {out and Path(out).read_text()[:2000]}")
                res = json.loads(Path(out).read_text())
                values.append("" if null else json.loads(alt.main_section(res)["body"])["telfhash"])
            elapsed, cpu = time.perf_counter() - start, process_cpu(rt.proc.pid) - cpu
        return elapsed, cpu, values
    finally:
        shutil.rmtree(tasking, ignore_errors=True)


def run_execute_only(
    files: list[dict], tasks: list[dict], config: dict | None = None
) -> tuple[float, float, list[str]]:
    from assemblyline.odm.messages.task import Task as ServiceTask
    from assemblyline_v4_service.common.request import ServiceRequest
    from assemblyline_v4_service.common.task import Task

    tasking = Path(tempfile.mkdtemp(prefix="telfhash-bench-al-"))
    os.environ["TASKING_DIR"] = str(tasking)
    try:
        service = alt.Telfhash(config)
        requests = []
        for f, task in zip(files, tasks):
            shutil.copyfile(f["abspath"], tasking / task["fileinfo"]["sha256"])
            requests.append(ServiceRequest(Task(ServiceTask(task))))
        for r in requests:  # fetch (sha256 check) before timing: the runtime's part, not the service's
            _ = r.file_path
        values = []
        service.execute(requests[0])  # first call untimed (start-up)
        start, cpu = time.perf_counter(), time.process_time()
        for r in requests:
            service.execute(r)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        for r in requests:
            values.append(json.loads(r.result.sections[0].body)["telfhash"])
        return elapsed, cpu, values
    finally:
        shutil.rmtree(tasking, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="200 files")
    ap.add_argument("--reference-python", default=None)
    args = ap.parse_args()
    n = 200 if args.quick else args.files
    if not corpus.available():
        print(corpus.skip_reason())
        return 0
    files = sample(n)
    ref_python = find_reference(args.reference_python)
    expected = [f["reference"]["telfhash"] for f in files]

    ident = alt.forge.get_identify(use_cache=False)
    tasks = [alt.make_task(ident, f["abspath"]) for f in files]
    ident.stop()
    archs = sorted({f["arch"] for f in files})
    print(f"{len(files)} corpus files, {len(archs)} architectures, one worker (CPU: {os.cpu_count()} cores, shared)")

    rt_wall, rt_cpu, rt_values = run_runtime(files, tasks)
    null_wall, null_cpu, _ = run_runtime(files, tasks, null=True)
    ex_wall, ex_cpu, ex_values = run_execute_only(files, tasks)
    nx_wall, nx_cpu, nx_values = run_execute_only(files, tasks, {"companion": False})
    same_rt = sum(a == b for a, b in zip(rt_values, expected))
    same_ex = sum(a == b for a, b in zip(ex_values, expected))
    same_nx = sum(a == b for a, b in zip(nx_values, expected))

    rows = []
    if ref_python:
        ref = run_reference(ref_python, [f["abspath"] for f in files])
        same_ref = sum(a == b for a, b in zip(ref["values"], expected))
        rows.append(("reference telfhash 0.9.8", ref["elapsed"], ref["cpu"], same_ref))
    rows.append(("service in AL's runtime", rt_wall, rt_cpu, same_rt))
    rows.append(("AL runtime, empty service", null_wall, null_cpu, None))
    rows.append(("service execute() only", ex_wall, ex_cpu, same_ex))
    rows.append(("  ... without telfhash_x", nx_wall, nx_cpu, same_nx))

    print("start-up excluded; ratio = reference CPU seconds / CPU seconds (wall clock in brackets)")
    print(f"{'':28}{'CPU s':>8}{'files/CPU-s':>13}{'ratio':>8}{'(wall':>9}{'ratio)':>8}  identical")
    ref_cpu, ref_wall = (rows[0][2], rows[0][1]) if ref_python else (None, None)
    for name, wall, cpu, same in rows:
        ratio = f"{ref_cpu / cpu:7.1f}x" if ref_cpu else "      -"
        wratio = f"{ref_wall / wall:7.1f}x" if ref_wall else "      -"
        shown = "-" if same is None else f"{same}/{len(files)}"
        print(f"{name:28}{cpu:8.2f}{len(files) / cpu:13.0f}{ratio:>8}{wall:9.2f}{wratio:>8}  {shown}")
    if not ref_python:
        print("reference not found (set TELFHASH_REFERENCE_PYTHON or --reference-python): no ratio")
    print(
        f"Assemblyline's own CPU per task (empty service): {1000 * null_cpu / len(files):.2f} ms; "
        f"the service's share in the runtime: {1000 * (rt_cpu - null_cpu) / len(files):.2f} ms per file"
    )
    ok = same_rt == same_ex == same_nx == len(files)
    print("every service telfhash equals the reference value" if ok else "MISMATCH against the reference values")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
