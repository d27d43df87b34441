#!/usr/bin/env python3
"""Speed of telfhash-core against the reference tool, side by side in one run, on the shared corpus.

Prints files per CPU-second for the reference (telfhash 0.9.8) and for us, and the ratio, separately
for files with a symbol table and for static, stripped x86/x86-64 files (the capstone fallback);
then our speed-up with several processes.  Both sides hash one file at a time in one process,
from Python (``telfhash.telfhash(path)`` against ``telfhash_core.hash_file(path)``), and every
value is checked against the manifest's reference value.

    python benchmarks/bench_core.py [--reference-python PATH | --install-reference] [--rounds N]
    python benchmarks/bench_core.py --whole-process [--quick]

``--whole-process`` measures the commands as a user runs them: the CPU seconds of the child
process (start-up, imports, worker processes and output included) of the reference's
``telfhash -f json PATH...`` against ours, on one small dynamic ELF (``/bin/ls``, the median of
several runs: the start-up cost), on 30 static, stripped x86-64 programs (the sbase tools of
``../shared/corpus-static``, hashed by the fallback; the first 30 x86 fallback files of the main
corpus where that corpus is absent) and on the files with a symbol table; every value is checked against the manifest.  ``--quick`` takes fewer
symbol-table files and fewer rounds.

The reference runs in its own interpreter (it pins other versions of the same libraries); give
one where ``import telfhash`` works, or ``--install-reference`` to make a virtualenv for it in the
cache folder.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
    for cand in (
        os.environ.get("TELFHASH_REFERENCE_PYTHON"),
        "/work/refvenv/bin/python",
        str(corpus.CACHE / "refvenv" / "bin" / "python"),
    ):
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


def child_cpu(cmd: list[str], out_path: str | None = None) -> tuple[float, str]:
    """CPU seconds (user + system) of ``cmd`` and of the processes it waited for, and its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"{cmd[:3]} ... failed ({p.returncode}): {p.stderr[-500:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), p.stdout


def reference_command(ref_python: str) -> list[str]:
    script = Path(ref_python).parent / "telfhash"
    if script.exists():
        return [ref_python, str(script)]
    return [ref_python, "-c", "import sys; from telfhash.__main__ import main; sys.exit(main())"]


OURS_COMMAND = [sys.executable, "-m", "telfhash_core.cli"]


def whole_process(args, ref_python: str | None, expected: dict[str, str], groups: dict[str, list[str]]) -> int:
    """The commands as a user runs them: CPU seconds of each child process, start-up included."""
    try:  # the 30 sbase tools built -O2 for amd64: static, stripped, ~750 KB each
        static = corpus.static_files()
        x86 = sorted(f["abspath"] for f in static if (f["arch"], f["pkg"], f["opt"]) == ("amd64", "sbase-v1", "-O2"))
        expected = dict(expected, **{f["abspath"]: f["reference"]["telfhash"] for f in static})
        x86_name = "static x86-64 (sbase -O2), fallback"
    except BaseException:  # pytest's Skipped: the static corpus is not there
        x86 = sorted(groups["x86/x86-64 fallback"])[:30]
        x86_name = "x86/x86-64 fallback, first 30"
    symbols = sorted(groups["symbol table"])
    if args.quick:
        symbols = symbols[:300]
    rounds = 1 if args.quick else max(1, args.rounds)
    env_note = "" if ref_python else " (reference not found: ours only)"
    print(f"whole process: CPU seconds of the child (start-up included), {rounds} round(s){env_note}")
    print(
        f"ours: {' '.join(OURS_COMMAND)}; reference: {' '.join(reference_command(ref_python)) if ref_python else '-'}"
    )
    print(f"{'job':<34}{'n':>6}{'reference s':>13}{'ours s':>9}{'ratio':>9}  identical")

    def row(name: str, paths: list[str], extra: list[str], n_runs: int, pick) -> None:
        ours_runs, ref_runs = [], []
        for _ in range(n_runs):
            ours_runs.append(child_cpu([*OURS_COMMAND, *extra, "-f", "json", *paths]))
            if ref_python:
                ref_runs.append(child_cpu([*reference_command(ref_python), "-f", "json", *paths]))
        ours_t = pick([t for t, _ in ours_runs])
        ours_values = [r["telfhash"] for r in json.loads(ours_runs[0][1])]
        same = all(expected.get(p, v) == v for p, v in zip(paths, ours_values)) and len(ours_values) == len(paths)
        ref_cell = ratio = "-"
        if ref_python:
            ref_t = pick([t for t, _ in ref_runs])
            ref_values = [r["telfhash"] for r in json.loads(ref_runs[0][1])]
            same = same and ref_values == ours_values
            ref_cell, ratio = f"{ref_t:.3f}", f"{ref_t / ours_t:.1f}x"
        print(f"{name:<34}{len(paths):>6}{ref_cell:>13}{ours_t:>9.3f}{ratio:>9}  {'yes' if same else 'NO'}")

    def median(xs: list[float]) -> float:
        return sorted(xs)[len(xs) // 2]

    small = "/bin/ls" if Path("/bin/ls").is_file() else symbols[0]
    row(f"one small file ({small}), median", [small], [], 5 if args.quick else 11, median)
    row(x86_name, x86, [], rounds, min)
    row("symbol table", symbols, [], rounds, min)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference-python", help="interpreter where `import telfhash` (0.9.8) works")
    ap.add_argument(
        "--install-reference", action="store_true", help="create a virtualenv with the reference if none is found"
    )
    ap.add_argument("--rounds", type=int, default=2, help="repeat each measurement, keep the fastest (default 2)")
    ap.add_argument(
        "--whole-process", action="store_true", help="CPU seconds of each tool's command, start-up included"
    )
    ap.add_argument("--quick", action="store_true", help="--whole-process: 300 symbol-table files, one round")
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
    if args.whole_process:
        return whole_process(args, ref_python, expected, groups)
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
        print(
            f"{name:<22}{len(paths):>6}{ref_cell:>15}{len(paths) / ours_t:>12,.0f}{ratio_cell:>9}  {'yes' if same else 'NO'}"
        )

    print()
    everything = [f["abspath"] for f in files]
    base = None
    for jobs in sorted({1, 2, os.cpu_count() or 1}):
        t = time.perf_counter()
        n = sum(1 for _ in hash_paths(everything, jobs=jobs, ordered=False))
        el = time.perf_counter() - t
        base = base or el
        print(
            f"whole corpus, {jobs} process{'es' if jobs > 1 else ''}: {n / el:,.0f} files/s, speed-up {base / el:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
