#!/usr/bin/env python3
"""Cost of the companion value: ``hash_file`` per file with and without the ``telfhash_x``
field (tx2), in one process, on the shared corpora, printed side by side with the ratio.

The runs alternate (plain, with the field, plain, ...) so that both see the same machine
noise; the figure is the total time over the files.  tx2's per-token caches are emptied
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


def timed(paths, fields) -> float:
    t = time.perf_counter()
    for p in paths:
        hash_file(p, fields=fields)
    return time.perf_counter() - t


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
    tot_plain = tot_both = 0.0
    n_all = 0
    for name, paths in groups.items():
        paths = paths[::step]
        plain = both = 0.0
        for _ in range(args.rounds):
            plain += timed(paths, ())
            tx2.clear_caches()  # each pass as a fresh process would see it (no names remembered)
            both += timed(paths, ["telfhash_x"])
        n = len(paths) * args.rounds
        tot_plain, tot_both, n_all = tot_plain + plain, tot_both + both, n_all + n
        print(
            f"{name:<22} {len(paths):>5} files: telfhash alone {1000 * plain / n:7.2f} ms/file, "
            f"telfhash + tx2 {1000 * both / n:7.2f} ms/file, ratio x{both / plain:.2f}"
        )
    print(
        f"{'both corpora':<22} {n_all // args.rounds:>5} files: telfhash alone {1000 * tot_plain / n_all:7.2f} ms/file, "
        f"telfhash + tx2 {1000 * tot_both / n_all:7.2f} ms/file, ratio x{tot_both / tot_plain:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
