#!/usr/bin/env python3
"""Cost of the companion value: ``hash_file`` per file with and without the ``telfhash_x``
field (tx2), in one process, on the shared corpora, printed side by side with the ratio.

The runs alternate (plain, with the field, plain, ...) so that both see the same machine
noise; the figure is the total time over the files, and the ratio of CPU time is printed
beside the wall-clock one (other processes on the machine move the latter more).  tx2's per-token caches are emptied
before each pass with the field, so a pass never profits from the one before.  ``--quick`` takes every 8th file.

    python benchmarks/bench_companion.py [--quick] [--rounds N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from telfhash_core import hash_file
from telfhash_core.companion import tx2


def timed(paths, fields) -> tuple[float, float]:
    """Wall-clock and CPU seconds (this process) to hash ``paths``."""
    t, c = time.perf_counter(), time.process_time()
    for p in paths:
        hash_file(p, fields=fields)
    return time.perf_counter() - t, time.process_time() - c


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="every 8th file")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    import corpus

    groups = {}
    try:
        groups["corpus (Debian + IoT)"] = [f["abspath"] for f in corpus.files()]
    except BaseException as exc:  # noqa: BLE001 (pytest.skip outside pytest: the corpus is absent)
        print(f"shared corpus not available: {exc}", file=sys.stderr)
    try:
        groups["corpus-static"] = [f["abspath"] for f in corpus.static_files()]
    except BaseException as exc:  # noqa: BLE001 (as above)
        print(f"shared static corpus not available: {exc}", file=sys.stderr)
    if not groups:
        return 2
    step = 8 if args.quick else 1
    tx2.shipped()  # load the shipped data once, as a long-running process does
    hash_file(next(iter(groups.values()))[0], fields=["telfhash_x"])
    totals = [0.0, 0.0, 0.0, 0.0]  # wall and CPU seconds, plain and with the field
    n_all = 0
    for name, paths in groups.items():
        paths = paths[::step]
        t = [0.0, 0.0, 0.0, 0.0]
        for _ in range(args.rounds):
            wall, cpu = timed(paths, ())
            tx2.clear_caches()  # each pass as a fresh process would see it (no names remembered)
            wall_x, cpu_x = timed(paths, ["telfhash_x"])
            t = [t[0] + wall, t[1] + cpu, t[2] + wall_x, t[3] + cpu_x]
        n = len(paths) * args.rounds
        totals, n_all = [a + b for a, b in zip(totals, t)], n_all + n
        print(_line(name, len(paths), n, t))
    print(_line("both corpora", n_all // args.rounds, n_all, totals))
    return 0


def _line(name: str, files: int, n: int, t: list[float]) -> str:
    """Wall-clock figures, and the ratio of this process's CPU time (steadier on a shared machine)."""
    return (
        f"{name:<22} {files:>5} files: telfhash alone {1000 * t[0] / n:7.2f} ms/file, "
        f"telfhash + tx2 {1000 * t[2] / n:7.2f} ms/file, ratio x{t[2] / t[0]:.2f} (CPU time x{t[3] / t[1]:.2f})"
    )


if __name__ == "__main__":
    sys.exit(main())
