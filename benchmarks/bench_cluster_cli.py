#!/usr/bin/env python3
"""``telfhash cluster`` as a whole command on many results: time, CPU and peak memory.

Writes ``--n`` synthetic results (default 1,000,000; about 125 MB) as JSON lines of the
reference's keys (``file``, ``telfhash``, ``msg``): half in families grown from real telfhashes
(the shared corpus manifest, else ``/usr/bin``), half in small families around random digests,
each member its seed with a few buckets changed and now and then another checksum, quartile
ratio or length code, plus 2% of results without a telfhash.  Then runs ``telfhash cluster FILE -o OUT -t 50`` in
a child process and prints its wall time, CPU seconds and peak resident memory (the child's
``ru_maxrss``), against the targets (<= 15 s, <= 1 GB for 1,000,000).  ``--compare PYTHONPATH``
runs the same command with another checkout's code as well and checks both outputs are identical.

    python benchmarks/bench_cluster_cli.py [--n 1000000] [--threshold 50] [--keep DIR] [--compare PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_index import seed_digests, synthetic  # noqa: E402


def write_results(path: Path, n: int, seed: int) -> None:
    """Rows as ``telfhash -f json`` prints them, one per line: half in families grown from real
    telfhashes (large groups), half in small families around random digests, 2% without one."""
    rng = np.random.default_rng(seed)
    seeds = seed_digests()
    randoms = ["t1" + rng.bytes(35).hex() for _ in range(max(1, n // 8))]
    with open(path, "w", encoding="utf-8") as fh:
        step = 100_000
        for start in range(0, n, step):
            k = min(step, n - start)
            half = k // 2
            packed = np.concatenate([synthetic(seeds, half, rng), synthetic(randoms, k - half, rng)])
            packed = packed[rng.permutation(k)]
            hexes = packed.tobytes().hex()
            none = rng.random(k) < 0.02
            lines = []
            for j in range(k):
                i = start + j
                ok = not none[j]
                row = {
                    "file": f"/samples/{i // 1000:04d}/{i:08d}.elf",
                    "telfhash": "t1" + hexes[70 * j : 70 * j + 70] if ok else "-",
                    "msg": "" if ok else "No symbols found",
                }
                lines.append(json.dumps(row))
            fh.write("\n".join(lines) + "\n")


def run(cmd: list[str], env: dict, cwd: Path) -> tuple[float, float, float, int, str]:
    """Wall seconds, CPU seconds, peak RSS (MB), exit status and stderr of one child process
    (``os.wait4``: this child's own figures).  ``cwd`` is a folder without a ``telfhash_core``:
    ``python -m`` puts the working directory first on the path, before PYTHONPATH."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    err = p.stderr.read() if p.stderr else ""
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    p.returncode = os.waitstatus_to_exitcode(status)
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024, p.returncode, err


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--threshold", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", help="folder for the input and outputs (kept); default a temporary folder")
    ap.add_argument("--compare", metavar="PYTHONPATH", help="also run another checkout's code (PYTHONPATH) and compare")
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory()
    folder = Path(args.keep or tmp.name)
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / f"results-{args.n}-{args.seed}.jsonl"
    if not src.exists():
        t = time.perf_counter()
        write_results(src, args.n, args.seed)
        print(
            f"input: {args.n:,} results, {src.stat().st_size / 1e6:.0f} MB of JSONL, written in {time.perf_counter() - t:.1f} s"
        )
    else:
        print(f"input: {src} ({src.stat().st_size / 1e6:.0f} MB), reused")

    runs = [("ours", os.environ.get("PYTHONPATH", ""))]
    if args.compare:
        runs.append(("compared", args.compare))
    digests = {}
    for name, pythonpath in runs:
        out = folder / f"clusters-{name}.json"
        env = dict(os.environ, PYTHONPATH=pythonpath, TELFHASH_NO_ENTRY_POINTS="1")
        cmd = [
            sys.executable,
            "-m",
            "telfhash_core.cli",
            "cluster",
            str(src),
            "-o",
            str(out),
            "-t",
            str(args.threshold),
        ]
        wall, cpu, rss, code, err = run(cmd, env, folder)
        if code != 0:
            print(f"{name}: failed ({code}): {err[-800:]}")
            return 1
        digests[name] = hashlib.sha256(out.read_bytes()).hexdigest()
        print(
            f"{name:<9} telfhash cluster: {wall:6.1f} s wall, {cpu:6.1f} CPU-s, peak {rss:,.0f} MB  "
            f"[targets for 1,000,000: <= 15 s, <= 1,000 MB]   {err.strip().splitlines()[-1]}"
        )
    if len(digests) > 1:
        print(f"outputs identical: {'yes' if len(set(digests.values())) == 1 else 'NO'}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
