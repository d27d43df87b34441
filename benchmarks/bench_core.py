#!/usr/bin/env python3
"""Speed of telfhash-core against the reference tool, side by side in one run, on the shared corpus.

Prints files per CPU-second for the reference (telfhash 0.9.8) and for us, and the ratio, separately
for files with a symbol table and for static, stripped x86/x86-64 files (the capstone fallback);
then our speed-up with several processes.  Both sides hash one file at a time in one process,
from Python (``telfhash.telfhash(path)`` against ``telfhash_core.hash_file(path)``), and every
value is checked against the manifest's reference value.

    python benchmarks/bench_core.py [--reference-python PATH | --install-reference] [--rounds N]

The reference runs in its own interpreter (it pins other versions of the same libraries); give
one where ``import telfhash`` works, or ``--install-reference`` to make a virtualenv for it in the
cache folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import corpus  # noqa: E402

from telfhash_core import hash_file, hash_paths  # noqa: E402

REF_SCRIPT = r"""
import json, sys, time
import telfhash
paths = json.load(open(sys.argv[1]))
out = []
t = time.process_time()
for p in paths:
    out.append(telfhash.telfhash(p)[0]["telfhash"])
elapsed = time.process_time() - t
json.dump({"elapsed": elapsed, "values": out}, open(sys.argv[2], "w"))
"""


def find_reference(args) -> str | None:
    if args.reference_python:
        return args.reference_python
    for cand in (os.environ.get("TELFHASH_REFERENCE_PYTHON"), "/work/refvenv/bin/python", str(corpus.CACHE / "refvenv" / "bin" / "python")):
        if cand and Path(cand).exists():
            return cand
    if args.install_reference:
        venv = corpus.CACHE / "refvenv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pins = ["telfhash==0.9.8", "py-tlsh==5.0.0", "pyelftools==0.33", "capstone==5.0.9"]
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *pins], check=True)
        return str(venv / "bin" / "python")
    return None


def run_reference(python: str, paths: list[str]) -> tuple[float, list[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        src, dst, script = Path(tmp, "in.json"), Path(tmp, "out.json"), Path(tmp, "ref.py")
        src.write_text(json.dumps(paths))
        script.write_text(REF_SCRIPT)
        subprocess.run([python, str(script), str(src), str(dst)], check=True)
        data = json.loads(dst.read_text())
    return data["elapsed"], data["values"]


def run_ours(paths: list[str]) -> tuple[float, list[str]]:
    t = time.process_time()
    values = [hash_file(p).reference_telfhash for p in paths]
    return time.process_time() - t, values


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference-python", help="interpreter where `import telfhash` (0.9.8) works")
    ap.add_argument("--install-reference", action="store_true", help="create a virtualenv with the reference if none is found")
    ap.add_argument("--rounds", type=int, default=2, help="repeat each measurement, keep the fastest (default 2)")
    args = ap.parse_args()

    files = corpus.files()
    expected = {f["abspath"]: f["reference"]["telfhash"] for f in files}
    results = {f["abspath"]: hash_file(f["abspath"]) for f in files}
    groups = {
        "symbol table": [p for p, r in results.items() if r.method in ("dynsym", "symtab")],
        "x86/x86-64 fallback": [p for p, r in results.items() if r.method == "fallback" and r.arch in ("x86", "x64")],
        "ARM/MIPS fallback": [p for p, r in results.items() if r.method == "fallback" and r.arch in ("ARM", "MIPS")],
    }
    ref_python = find_reference(args)
    print(f"corpus: {len(files)} files, {sum(f['size'] for f in files) / 2**20:.0f} MiB; cores: {os.cpu_count()}")
    print(f"reference: {ref_python or 'not found (use --reference-python or --install-reference)'}")
    print()
    print("files per CPU-second of one process (rounds alternate; fastest of each kept)")
    print(f"{'files':<22}{'n':>6}{'reference f/s':>15}{'ours f/s':>12}{'ratio':>9}  identical")
    for name, paths in groups.items():
        # rounds alternate between the two tools; each keeps its fastest (CPU seconds of its process)
        ours_runs, ref_runs = [], []
        for _ in range(args.rounds):
            ours_runs.append(run_ours(paths))
            if ref_python:
                ref_runs.append(run_reference(ref_python, paths))
        ours_t, ours_values = min(r[0] for r in ours_runs), ours_runs[0][1]
        same = ours_values == [expected[p] for p in paths]
        ref_cell, ratio_cell = "-", "-"
        if ref_python:
            ref_t = min(r[0] for r in ref_runs)
            same = same and ref_runs[0][1] == ours_values
            ref_cell, ratio_cell = f"{len(paths) / ref_t:,.0f}", f"{ref_t / ours_t:.1f}x"
        print(f"{name:<22}{len(paths):>6}{ref_cell:>15}{len(paths) / ours_t:>12,.0f}{ratio_cell:>9}  {'yes' if same else 'NO'}")

    print()
    everything = [f["abspath"] for f in files]
    base = None
    for jobs in sorted({1, 2, os.cpu_count() or 1}):
        t = time.perf_counter()
        n = sum(1 for _ in hash_paths(everything, jobs=jobs, ordered=False))
        el = time.perf_counter() - t
        base = base or el
        print(f"whole corpus, {jobs} process{'es' if jobs > 1 else ''}: {n / el:,.0f} files/s, speed-up {base / el:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
