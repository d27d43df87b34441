#!/usr/bin/env python3
"""Speed of exact grouping (connected components of "TLSH distance <= T").

1. Synthetic families at 10^4, 10^5 (and more with --sizes): real symbol lists from the shared
   corpus with a few names dropped, added or renamed, hashed again; ~30% of the digests are
   exact duplicates.  Each size runs in its own process so that the peak memory
   (``resource.getrusage``) is that size's own.  Times: ``components()`` (collapse duplicates,
   encode, all candidate pairs, union-find) and ``cluster()`` (the same plus each cluster's
   representative and largest internal distance).
2. Side by side with the reference ``telfhash.group()`` on the same 800 real digests from the
   corpus manifest: both times, the ratio, and whether the reference's (overlapping) groups,
   merged, equal our components.

    python benchmarks/bench_cluster.py [--sizes 10000,100000,1000000] [--threshold 50]
                                       [--reference-python PATH] [--reference-n 800]

The reference runs in its own interpreter; by default ``$TELFHASH_REFERENCE_PYTHON`` when it
exists, else the current one if ``import telfhash`` works there.  Without it that part is
skipped, saying so.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

DEFAULT_REFERENCE = os.environ.get("TELFHASH_REFERENCE_PYTHON", "")


# ----------------------------------------------------------------------------- data


def symbol_lists(limit: int = 400) -> list[list[str]]:
    import corpus

    return corpus.symbol_lists(limit, min_names=20)


def synthetic(n: int, seed: int = 0, duplicates: float = 0.3) -> list[str]:
    """``n`` digests: families of ~20 variants of real symbol lists, ``duplicates`` share exact copies."""
    from telfhash_core.digest import tlsh_digest

    rng = random.Random(seed)
    bases = symbol_lists()
    vocab = sorted({w for b in bases for w in b})
    unique = int(n * (1 - duplicates))
    out: list[str] = []
    while len(out) < unique:
        base = rng.choice(bases)
        for _ in range(rng.randint(5, 40)):
            s = list(base)
            for _ in range(rng.randint(1, 6)):
                op = rng.random()
                if op < 0.33 and len(s) > 10:
                    s.pop(rng.randrange(len(s)))
                elif op < 0.66:
                    s.append(rng.choice(vocab))
                else:
                    k = rng.randrange(len(s))
                    s[k] += rng.choice("abcxyz0123")
            d = tlsh_digest(sorted(s))
            if d.startswith("t1"):
                out.append(d)
    out = out[:unique]
    out += [rng.choice(out) for _ in range(n - unique)]
    rng.shuffle(out)
    return out


# ----------------------------------------------------------------------------- one size


def run_one(n: int, threshold: int, cluster_max: int) -> dict:
    import numpy as np

    from telfhash_core.similarity import tlshdist
    from telfhash_core.similarity.cluster import cluster, components

    t = time.perf_counter()
    digests = synthetic(n)
    gen = time.perf_counter() - t
    components(digests[:2000], threshold)  # load the compiled kernels (cached on disk)
    t, c = time.perf_counter(), time.process_time()
    labels = components(digests, threshold)
    t_comp, c_comp = time.perf_counter() - t, time.process_time() - c
    rss_comp = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t_clu = c_clu = None
    if n <= cluster_max:
        t, c = time.perf_counter(), time.process_time()
        cluster(digests, threshold)
        t_clu, c_clu = time.perf_counter() - t, time.process_time() - c
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sizes = np.bincount(labels)
    return {
        "n": n,
        "unique": len(set(digests)),
        "generate_s": gen,
        "components_s": t_comp,
        "components_cpu": c_comp,
        "cluster_s": t_clu,
        "cluster_cpu": c_clu,
        "groups": int((sizes > 1).sum()),
        "largest": int(sizes.max()),
        "singletons": int((sizes == 1).sum()),
        "peak_mb_after_components": rss_comp,
        "peak_mb": rss,
        "numba": tlshdist.HAVE_NUMBA,
        "threads": tlshdist._threads(None),
    }


# ----------------------------------------------------------------------------- reference


REF_SCRIPT = r"""
import json, sys, time
import telfhash
entries = json.load(open(sys.argv[1]))
t = time.perf_counter()
r = telfhash.group(entries, threshold=int(sys.argv[2]))
el = time.perf_counter() - t
print(json.dumps({"seconds": el, "grouped": [list(g) for g in r["grouped"]], "nogroup": list(r["nogroup"])}))
"""


def reference_python(arg: str | None) -> str | None:
    candidates = [arg] if arg else [c for c in (DEFAULT_REFERENCE, sys.executable) if c]
    for py in candidates:
        if py and Path(py).exists():
            ok = subprocess.run([py, "-c", "import telfhash"], capture_output=True).returncode == 0
            if ok:
                return py
            if arg:
                print(f"reference: 'import telfhash' fails with {py}")
    return None


def merge_overlapping(groups):
    merged: list[set] = []
    for g in groups:
        g = set(g)
        for m in [m for m in merged if m & g]:
            g |= m
            merged.remove(m)
        merged.append(g)
    return sorted(tuple(sorted(m)) for m in merged)


def side_by_side(py: str | None, n: int, threshold: int) -> None:
    import corpus

    from telfhash_core.similarity.cluster import group

    files = [f for f in corpus.manifest()["files"] if f["reference"]["telfhash"].startswith("t1")]
    rng = random.Random(800)
    sample = rng.sample(files, min(n, len(files)))
    entries = [{"file": f["path"], "telfhash": f["reference"]["telfhash"], "msg": ""} for f in sample]
    group(entries[:50], threshold)  # load the compiled kernels
    times = []
    for _ in range(3):
        t = time.perf_counter()
        ours = group(entries, threshold)
        times.append(time.perf_counter() - t)
    ours_t = sorted(times)[1]
    print(f"\n== side by side: group() on the same {len(entries)} real digests (corpus manifest), T={threshold}")
    print(
        f"ours       group(): {ours_t * 1000:9.1f} ms   (median of 3)  {len(ours['grouped'])} groups, "
        f"{len(ours['nogroup'])} ungrouped"
    )
    if py is None:
        print(
            "reference  group(): not run -- no interpreter with 'import telfhash' "
            f"(tried --reference-python, {DEFAULT_REFERENCE}, {sys.executable})"
        )
        return
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(entries, fh)
        path = fh.name
    try:
        out = subprocess.run([py, "-c", REF_SCRIPT, path, str(threshold)], capture_output=True, text=True, timeout=3600)
    finally:
        os.unlink(path)
    if out.returncode != 0:
        print(f"reference  group(): failed: {out.stderr.strip().splitlines()[-1:]}")
        return
    ref = json.loads(out.stdout)
    print(
        f"reference  group(): {ref['seconds'] * 1000:9.1f} ms   ({py})  {len(ref['grouped'])} groups "
        f"(overlapping allowed), {len(ref['nogroup'])} ungrouped"
    )
    print(f"ratio: ours is {ref['seconds'] / ours_t:,.0f}x faster")
    same = sorted(ours["grouped"]) == merge_overlapping(ref["grouped"]) and sorted(ours["nogroup"]) == sorted(
        ref["nogroup"]
    )
    overlaps = sum(
        1 for a in range(len(ref["grouped"])) for b in range(a) if set(ref["grouped"][a]) & set(ref["grouped"][b])
    )
    print(
        f"reference groups merged where they overlap == our components: {same} "
        f"({overlaps} overlapping pairs of reference groups)"
    )


# ----------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated digest counts (default 10000,100000)")
    ap.add_argument("--threshold", type=int, default=50)
    ap.add_argument(
        "--reference-python", default=None, help="interpreter with telfhash 0.9.8 (default $TELFHASH_REFERENCE_PYTHON)"
    )
    ap.add_argument("--reference-n", type=int, default=800, help="digests for the side-by-side run (default 800)")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--cluster-max", type=int, default=200_000, help="run cluster() up to this size (default 200000)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.threshold, args.cluster_max)))
        return 0

    try:
        import corpus

        corpus.root()
    except BaseException as exc:  # corpus helper skips (pytest.skip) when the shared folder is absent
        print(f"shared corpus not available: {exc}")
        return 1

    print(
        f"== exact grouping of synthetic families (~30% duplicates), T={args.threshold}, "
        f"{os.cpu_count()} cores; one process per size"
    )
    print("times: wall seconds (CPU seconds of the process, all threads)")
    print(
        f"{'digests':>9} {'distinct':>9} {'components()':>16} {'cluster()':>16} {'groups':>7} {'largest':>8} "
        f"{'singles':>8} {'peak RSS':>9}"
    )
    prev = None
    r = {}
    for n in [int(x) for x in args.sizes.split(",") if x.strip()]:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                str(n),
                "--threshold",
                str(args.threshold),
                "--cluster-max",
                str(args.cluster_max),
            ],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            print(f"{n:>9} failed: {out.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        growth = f"  x{r['components_cpu'] / prev[1]:.1f} CPU for x{n / prev[0]:.0f} digests" if prev else ""
        comp = f"{r['components_s']:.2f}s ({r['components_cpu']:.1f})"
        clu = f"{r['cluster_s']:.2f}s ({r['cluster_cpu']:.1f})" if r["cluster_s"] is not None else "not run"
        print(
            f"{r['n']:>9,} {r['unique']:>9,} {comp:>16} {clu:>16} {r['groups']:>7,} "
            f"{r['largest']:>8,} {r['singletons']:>8,} {r['peak_mb']:>7.0f}MB{growth}"
        )
        prev = (n, r["components_cpu"])
    print(
        f"(numba kernels: {r.get('numba', '?')}, threads: {r.get('threads', '?')}; generation time not included; "
        f"load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    )
    if not args.skip_reference:
        side_by_side(reference_python(args.reference_python), args.reference_n, args.threshold)
    return 0


if __name__ == "__main__":
    sys.exit(main())
