#!/usr/bin/env python3
"""Cost of the CAPE module on one analysis, side by side with doing the same with the reference.

An analysis is made of N ELF files from the shared corpus (a deterministic sample over all
architectures, one target and N-1 dropped files).  Timed, in one run:

* reference: ``telfhash.telfhash(path)`` for each file, then ``telfhash.group(results)`` --
  what a module built on the reference tool would do (run in the reference's interpreter);
* ours, worker: ``enrich(results)`` as CAPE runs it -- worker process started (counted), each
  file within the time budget, groups;
* ours, in-process: the same with ``timeout = 0`` (no worker; size cap only);
* ours, reused worker: a second analysis in the same process, as in CAPE's processing
  processes (the worker started for the first analysis serves it: no start-up cost).

Every telfhash written into the report is checked against the manifest's reference value.

    python benchmarks/bench_cape.py [--quick] [--files N] [--threshold T] [--reference-python PATH]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import corpus  # noqa: E402

from telfhash_plugins.cape.enrich import Settings, enrich  # noqa: E402

REF_SCRIPT = r"""
import json, sys, time
import telfhash
paths = json.load(open(sys.argv[1]))
threshold = int(sys.argv[3])
t = time.perf_counter()
results = [telfhash.telfhash(p)[0] for p in paths]
t_hash = time.perf_counter() - t
groups = telfhash.group(results, threshold=threshold)
elapsed = time.perf_counter() - t
json.dump({"elapsed": elapsed, "hash": t_hash, "groups": [list(g) for g in groups],
           "values": [r["telfhash"] for r in results]}, open(sys.argv[2], "w"))
"""


def find_reference(path: str | None) -> str | None:
    if path:
        return path
    for cand in (
        os.environ.get("TELFHASH_REFERENCE_PYTHON"),
        "/work/refvenv/bin/python",
        str(corpus.CACHE / "refvenv" / "bin" / "python"),
    ):
        if cand and Path(cand).exists():
            return cand
    return None


def run_reference(python: str, paths: list[str], threshold: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        src, dst, script = Path(tmp, "in.json"), Path(tmp, "out.json"), Path(tmp, "ref.py")
        src.write_text(json.dumps(paths))
        script.write_text(REF_SCRIPT)
        subprocess.run([python, str(script), str(src), str(dst), str(threshold)], check=True)
        return json.loads(dst.read_text())


def make_results(files: list[dict]) -> dict:
    def fd(f):
        return {
            "name": Path(f["path"]).name,
            "path": f["abspath"],
            "sha256": f["sha256"],
            "size": f["size"],
            "type": "ELF executable",
        }

    return {"target": {"category": "file", "file": fd(files[0])}, "dropped": [fd(f) for f in files[1:]]}


def run_ours(results: dict, settings: Settings, reuse: bool = False) -> tuple[float, dict, dict]:
    res = copy.deepcopy(results)
    t = time.perf_counter()
    summary = enrich(res, settings, reuse_worker=reuse)
    return time.perf_counter() - t, summary, res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=40, help="ELF files in the analysis (default 40)")
    ap.add_argument("--quick", action="store_true", help="a small analysis (10 files)")
    ap.add_argument("--threshold", type=int, default=50)
    ap.add_argument("--max-size", type=int, default=3_000_000, help="leave out corpus files larger than this (bytes)")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--reference-python", help="interpreter where `import telfhash` (0.9.8) works")
    args = ap.parse_args()
    if args.quick:
        args.files = min(args.files, 10)

    pool = [f for f in corpus.files() if f["size"] <= args.max_size]
    files = random.Random(args.seed).sample(pool, min(args.files, len(pool)))
    paths = [f["abspath"] for f in files]
    print(
        f"analysis: {len(files)} ELF files, {sum(f['size'] for f in files) / 1e6:.1f} MB, "
        f"{len({f['arch'] for f in files})} architectures, threshold {args.threshold}"
    )
    ref_python = find_reference(args.reference_python)
    print(f"reference: {ref_python or 'not found (give --reference-python PATH)'}")

    results = make_results(files)
    expected = [f["reference"]["telfhash"] for f in files]
    rows = []
    if ref_python:
        ref = run_reference(ref_python, paths, args.threshold)
        assert ref["values"] == expected, "the reference disagrees with its own manifest values"
        rows.append(("reference: telfhash() per file + group()", ref["elapsed"], f"{len(ref['groups'])} groups"))
    from telfhash_plugins.cape import worker

    run_ours(results, Settings(threshold=args.threshold), reuse=True)  # the analysis before: starts the shared worker
    for label, timeout, reuse in (
        ("ours: enrich(), new worker process", 30.0, False),
        ("ours: enrich(), reused worker (CAPE)", 30.0, True),
        ("ours: enrich(), in-process", 0.0, False),
    ):
        secs, summary, res = run_ours(results, Settings(timeout=timeout, threshold=args.threshold), reuse)
        got = [res["target"]["file"].get("telfhash")] + [d.get("telfhash") for d in res["dropped"]]
        bad = sum(g != e for g, e in zip(got, expected))
        assert bad == 0, f"{bad} telfhash values differ from the reference's"
        assert summary["hashing"]["mode"] == ("worker" if timeout else "in-process")
        started = summary["hashing"].get("workers_started")
        rows.append(
            (
                label,
                secs,
                f"{len(summary['groups'])} groups of 2+" + (f", {started} worker(s) started" if timeout else ""),
            )
        )
    for h in worker._SHARED.values():
        h.close()
    base = rows[0][1] if ref_python else None
    print(f"{'':46} {'seconds':>8} {'files/s':>8} {'vs ref':>7}")
    for label, secs, note in rows:
        ratio = f"{base / secs:6.1f}x" if base else "      -"
        print(f"{label:46} {secs:8.2f} {len(files) / secs:8.1f} {ratio}  {note}")
    print("all telfhash values written into the report match the reference's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
