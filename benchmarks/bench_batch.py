"""Batch hashing and partitioned clustering: throughput, Dask overhead, clustering at scale.

    .venv/bin/python benchmarks/bench_batch.py [--corpus DIR] [--reference-python PATH]
                                               [--cluster-size N] [--no-dask]

Prints:
  * files/s of ``telfhash batch`` on the corpus with 1 and 2 local worker processes (and the ratio),
    and, on a sample, side by side with the reference tool (``telfhash.telfhash``) in the same run;
  * the Dask engine on a 2-worker LocalCluster against the local engine: overhead per file;
  * grouping of N synthetic digests (default 10^6) at T=50 on the 2-worker LocalCluster, checked
    equal to the single-machine grouping, with both times.

The machine may be shared: compare the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from telfhash_core import batch  # noqa: E402
from telfhash_core.batch.partitioned import cluster_digests, relabel  # noqa: E402

REF_SNIPPET = r"""
import sys, time, json
import telfhash
paths = [l.rstrip("\n") for l in open(sys.argv[1])]
t = time.perf_counter()
out = telfhash.telfhash(*paths)
print(json.dumps({"seconds": time.perf_counter() - t, "n": len(out)}))
"""


def corpus_files(folder: str | None) -> list[str]:
    if folder is None:
        import corpus  # tests/corpus.py: extracts the shared corpus once

        folder = str(corpus.root())
    files = []
    for top, dirs, names in os.walk(folder):
        dirs.sort()
        files.extend(os.path.join(top, n) for n in sorted(names) if not n.startswith("."))
    return files


def reference_python(arg: str | None) -> str | None:
    """A Python with the reference ``telfhash`` importable, or None."""
    candidates = [arg] if arg else [c for c in (sys.executable, os.environ.get("TELFHASH_REFERENCE_PYTHON")) if c]
    for py in candidates:
        if py and os.path.exists(py):
            ok = subprocess.run([py, "-c", "import telfhash"], capture_output=True).returncode == 0
            if ok:
                return py
    return None


CPU = {"last": 0.0}  # CPU seconds (this process and its workers) of the last timed_batch


def _cpu() -> float:
    import resource

    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def timed_batch(files, jobs, tmp, **kw) -> float:
    out = os.path.join(tmp, f"out-{jobs}-{time.monotonic_ns()}.jsonl")
    c, t = _cpu(), time.perf_counter()
    s = batch.run_batch(files, out, jobs=jobs, progress=False, **kw)
    dt = time.perf_counter() - t
    CPU["last"] = _cpu() - c
    assert s.written == len(files) and s.failed_chunks == 0
    return dt


def synthetic(n: int, seed: int = 1) -> list[str]:
    """n digests around n/10 random centres (a few body bytes changed, length code moved by up to 3)."""
    rng = np.random.default_rng(seed)
    cent = rng.integers(0, 256, size=(max(1, n // 10), 35), dtype=np.uint8)
    b = cent[rng.integers(0, cent.shape[0], size=n)]
    for _ in range(3):
        rows = np.flatnonzero(rng.random(n) < 0.6)
        b[rows, rng.integers(3, 35, size=rows.size)] = rng.integers(0, 256, size=rows.size, dtype=np.uint8)
    lv = ((((b[:, 1] & 15).astype(int) << 4) | (b[:, 1] >> 4)) + rng.integers(-3, 4, size=n)) % 256
    b[:, 1] = (((lv & 15) << 4) | (lv >> 4)).astype(np.uint8)
    raw = b.tobytes().hex()
    return ["t1" + raw[i * 70 : (i + 1) * 70] for i in range(n)]


def single_machine(digests, threshold):
    try:
        from telfhash_core.similarity.cluster import components

        return "cluster.components", relabel(np.asarray(components(digests, threshold)))
    except ImportError:
        from telfhash_core.similarity.tlshdist import components_within, encode

        return "tlshdist.components_within", relabel(components_within(encode(digests), threshold))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=None, help="folder of ELF files (default: the shared corpus)")
    ap.add_argument("--reference-python", default=None, help="Python with the reference telfhash installed")
    ap.add_argument("--reference-sample", type=int, default=300, help="files for the side-by-side with the reference")
    ap.add_argument("--cluster-size", type=int, default=1_000_000, help="synthetic digests to group (default 10^6)")
    ap.add_argument("--threshold", type=int, default=50)
    ap.add_argument("--no-dask", action="store_true")
    args = ap.parse_args()

    files = corpus_files(args.corpus)
    n = len(files)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (shared: compare ratios)")
    tmp = tempfile.mkdtemp(prefix="bench-batch-")
    try:
        timed_batch(files[:100], 1, tmp)  # page cache, imports
        # ---------------------------------------------------------------- local engine
        print(f"\n== telfhash batch, local engine, {n} corpus files (JSONL, sha256 included)")
        t1 = timed_batch(files, 1, tmp)
        c1 = CPU["last"]
        t2 = timed_batch(files, 2, tmp)
        c2 = CPU["last"]
        print(f"  1 worker : {t1:7.2f} s  {n / t1:8.0f} files/s   CPU {c1:6.2f} s ({n / c1:.0f} files per CPU-second)")
        print(
            f"  2 workers: {t2:7.2f} s  {n / t2:8.0f} files/s   CPU {c2:6.2f} s ({n / c2:.0f} files per CPU-second)"
            f"   ratio 2/1 = {t1 / t2:.2f}"
        )
        print(
            "  (wall-clock ratio; on a machine busy with other work it stays near 1 while CPU per file shows the pool's cost)"
        )
        # ---------------------------------------------------------------- reference, same sample
        py = reference_python(args.reference_python)
        sample = files[:: max(1, n // args.reference_sample)][: args.reference_sample]
        if py is None:
            print("\n== reference tool: not found (pass --reference-python PATH); side-by-side skipped")
        else:
            listing = os.path.join(tmp, "sample.txt")
            Path(listing).write_text("".join(p + "\n" for p in sample))
            res = subprocess.run([py, "-c", REF_SNIPPET, listing], capture_output=True, text=True)
            if res.returncode != 0:
                print(f"\n== reference tool failed: {res.stderr.strip()[-300:]}")
            else:
                import json

                ref_s = json.loads(res.stdout.strip().splitlines()[-1])["seconds"]
                ours = timed_batch(sample, 1, tmp)
                print(
                    f"\n== same {len(sample)} files, one process: reference telfhash.telfhash() vs telfhash batch -j 1"
                )
                print(f"  reference: {ref_s:7.2f} s  {len(sample) / ref_s:8.0f} files/s")
                print(
                    f"  batch    : {ours:7.2f} s  {len(sample) / ours:8.0f} files/s   speed-up {ref_s / ours:.1f}x "
                    "(batch also computes SHA-256 and writes JSONL)"
                )
        if args.no_dask:
            return 0
        # ---------------------------------------------------------------- Dask
        from distributed import Client, LocalCluster

        t = time.perf_counter()
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            silence_logs=40,
        )
        client = Client(cluster)
        t_start = time.perf_counter() - t
        try:
            client.run(lambda: __import__("telfhash_core.batch.run"))
            batch.run_batch(
                files[:64],
                os.path.join(tmp, "warm.parquet"),
                fmt="parquet",
                engine="dask",
                client=client,
                progress=False,
            )
            t = time.perf_counter()
            s = batch.run_batch(files, os.path.join(tmp, "dask.jsonl"), engine="dask", client=client, progress=False)
            td = time.perf_counter() - t
            assert s.written == n
            t2b = timed_batch(files, 2, tmp)
            print(f"\n== Dask engine, LocalCluster of 2 worker processes on 127.0.0.1 (started in {t_start:.1f} s)")
            print(f"  dask     : {td:7.2f} s  {n / td:8.0f} files/s")
            print(f"  local -j2: {t2b:7.2f} s  {n / t2b:8.0f} files/s")
            print(f"  overhead : {(td - t2b) / n * 1000:+.2f} ms per file ({td / t2b:.2f}x the local engine's time)")
            # ------------------------------------------------------------ clustering
            N, T = args.cluster_size, args.threshold
            print(f"\n== grouping {N} synthetic digests at T={T} (n/10 centres, small mutations)")
            t = time.perf_counter()
            digests = synthetic(N)
            print(f"  generated in {time.perf_counter() - t:.1f} s")
            t = time.perf_counter()
            labels, info = cluster_digests(digests, T, engine="dask", client=client)
            tc = time.perf_counter() - t
            print(
                f"  dask, 2 workers   : {tc:7.1f} s  ({info['tasks']} partitions, {info['distinct']} distinct, "
                f"{info['clusters']} groups, {info['multi']} with 2+)"
            )
            t = time.perf_counter()
            name, expected = single_machine(digests, T)
            ts = time.perf_counter() - t
            print(f"  single machine    : {ts:7.1f} s  ({name}, all cores)")
            t = time.perf_counter()
            local_labels, _ = cluster_digests(digests, T, engine="local", jobs=2)
            tl = time.perf_counter() - t
            print(f"  partitioned local : {tl:7.1f} s  (the same partitions on 2 threads)")
            same = bool((labels == expected).all()) and bool((local_labels == expected).all())
            print(f"  identical groups  : {same}")
            if not same:
                return 1
        finally:
            client.close()
            cluster.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
