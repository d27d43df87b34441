#!/usr/bin/env python3
"""Cost of sharing corpus clusters as STIX 2.1, stage by stage, beside the reference tool.

Stages, on the same corpus files:

* hashing: ours (``hash_paths`` with SHA-256) and the reference (telfhash 0.9.8's
  ``telfhash.telfhash(*paths)`` in its own interpreter) -- the only stage the reference has;
* clustering (``telfhash_core.similarity.cluster``), export (bundle dict + JSON text, MD5/SHA-1 read from
  the files), ``stix2-validator --strict``, ``stix2.parse``;
* import: reading the bundle's telfhashes, and matching local samples against every shared
  cluster (local = the corpus files of other architectures).

Every telfhash is checked against the manifest's reference value first.

    python benchmarks/bench_stix.py [--reference-python PATH] [--limit N] [--threshold T] [--no-validate]
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

import telfhash_core as tc  # noqa: E402
from telfhash_plugins.stix import dumps, export_bundle, match_local, read_bundle  # noqa: E402

REF_SCRIPT = r"""
import json, sys, time
import telfhash
paths = json.load(open(sys.argv[1]))
t = time.perf_counter()
out = telfhash.telfhash(*paths)
json.dump({"seconds": time.perf_counter() - t, "values": {r["file"]: r["telfhash"] for r in out}}, open(sys.argv[2], "w"))
"""


def find_reference(arg: str | None) -> str | None:
    for cand in (arg, os.environ.get("TELFHASH_REFERENCE_PYTHON"), "/work/refvenv/bin/python"):
        if cand and Path(cand).exists():
            return cand
    try:  # installed beside us?
        import telfhash  # noqa: F401

        return sys.executable
    except ImportError:
        return None


def timed(fn, *a, **kw):
    t = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference-python", help="interpreter with telfhash 0.9.8 installed")
    ap.add_argument("--limit", type=int, default=600, help="corpus files to share (default 600; 0 = all)")
    ap.add_argument("--threshold", type=int, default=50)
    ap.add_argument("--no-validate", action="store_true", help="skip stix2-validator (the slowest stage)")
    args = ap.parse_args()

    entries = corpus.files()
    archs = sorted({e["arch"] for e in entries})
    # the local samples: the architecture with the most files; the others are shared
    local_arch = max(archs, key=lambda a: (sum(e["arch"] == a for e in entries), a))
    shared = [e for e in entries if e["arch"] != local_arch]
    local = [e for e in entries if e["arch"] == local_arch]
    if args.limit:
        shared = shared[:: max(1, len(shared) // args.limit)][: args.limit]
    paths = [e["abspath"] for e in shared]
    ref_values = {e["abspath"]: e["reference"]["telfhash"] for e in entries}
    print(f"corpus: {len(paths)} files shared ({len(archs) - 1} architectures), {len(local)} local ({local_arch})")

    rows = []
    results, t_hash = timed(lambda: list(tc.hash_paths(paths, sha256=True, jobs=1)))
    bad = [r.file for r in results if r.reference_telfhash != ref_values[r.file]]
    if bad:
        print(f"MISMATCH with the reference values: {len(bad)} files, e.g. {bad[0]}")
        return 1
    ref_py = find_reference(args.reference_python)
    t_ref = None
    if ref_py:
        with tempfile.TemporaryDirectory() as d:
            Path(d, "p.json").write_text(json.dumps(paths))
            Path(d, "s.py").write_text(REF_SCRIPT)
            p = subprocess.run([ref_py, str(Path(d, "s.py")), str(Path(d, "p.json")), str(Path(d, "o.json"))], capture_output=True, text=True)
            if p.returncode == 0:
                t_ref = json.loads(Path(d, "o.json").read_text())["seconds"]
            else:
                print(f"reference run failed: {p.stderr.strip()[-300:]}")
    else:
        print("reference tool not found (give --reference-python PATH): hashing shown without it")
    rows.append(("hash (telfhash + SHA-256)", t_hash, t_ref, f"{len(paths)} files"))

    try:
        from telfhash_core.similarity.cluster import cluster
    except ImportError:
        print("telfhash_core.similarity.cluster not available")
        return 1
    cluster(results[:20], threshold=args.threshold)  # compile the kernels first
    (clusters, _), t_cl = timed(cluster, results, threshold=args.threshold)
    multi = [c for c in clusters if c.size > 1]
    rows.append(("cluster", t_cl, None, f"{len(multi)} clusters of 2+"))
    bundle, t_exp = timed(export_bundle, results, clusters, threshold=args.threshold, timestamp="2026-11-27T00:00:00Z")
    text, t_dump = timed(dumps, bundle)
    rows.append(("export (objects + MD5/SHA-1)", t_exp, None, f"{len(bundle['objects'])} objects"))
    rows.append(("export (JSON text)", t_dump, None, f"{len(text) / 1e6:.2f} MB"))
    if not args.no_validate:
        from telfhash_plugins.stix import validate_bundle

        rep, t_val = timed(validate_bundle, bundle)
        rows.append(("stix2-validator --strict + stix2.parse", t_val, None, "valid" if rep.ok else f"INVALID: {rep.lines()[:1]}"))
    report, t_read = timed(read_bundle, text)
    rows.append(("import: read telfhashes", t_read, None, f"{len(report.telfhashes())} telfhashes"))
    local_results = list(tc.hash_paths([e["abspath"] for e in local]))
    match_local(report, local_results[:1], args.threshold)  # compile the distance kernels first
    matches, t_match = timed(match_local, report, local_results, args.threshold)
    rows.append(("import: match local samples", t_match, None, f"{len(local_results)} x {len(report.digests)} -> {len(matches)} matches"))

    print(f"\n{'stage':<40} {'ours (s)':>10} {'reference (s)':>14} {'ratio':>7}  notes")
    for name, ours, ref, note in rows:
        ref_txt = f"{ref:14.3f}" if ref is not None else f"{'-':>14}"
        ratio = f"{ref / ours:6.1f}x" if ref is not None and ours > 0 else f"{'':>7}"
        print(f"{name:<40} {ours:10.3f} {ref_txt} {ratio}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
