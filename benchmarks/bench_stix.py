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

Then the figures a receiver cares about, each beside the host it replaces or feeds:

* MISP: the share of exported telfhashes that misp-stix (its file conversion, as MISP's STIX
  import runs it) turns into ``telfhash`` attributes on the file object carrying the sample's
  SHA-256 -- for the default bundle and for one without the MISP layout;
* YARA: per engine (yara-python, yara-x), members matched by their cluster's rule through
  ``elf.telfhash()`` or only through their SHA-256, and corpus files matched by another rule;
* import of N Files (default 200,000) of a few near-identical telfhashes into an index that holds
  local samples, and the old way (one index search per shared digest) on the first 2,000;
* ``stix pull`` of 2,000 objects from ``telfhash stix serve`` and from stock medallion 3.0;
* poisoning: a bundle's wrong claim for a local file's SHA-256, then ``index add`` of the file.

    python benchmarks/bench_stix.py [--reference-python PATH] [--limit N] [--threshold T] [--no-validate]
                                    [--quick] [--files N]
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
    ap.add_argument(
        "--quick", action="store_true", help="smaller sizes: 20,000 Files to import, stock medallion on 600 objects"
    )
    ap.add_argument(
        "--files", type=int, default=None, help="Files in the import figure (default 200,000; --quick 20,000)"
    )
    ap.add_argument(
        "--only-receivers", action="store_true", help="skip the stage table, print the receiver figures only"
    )
    args = ap.parse_args()
    if args.only_receivers:
        return receivers(args)

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
            p = subprocess.run(
                [ref_py, str(Path(d, "s.py")), str(Path(d, "p.json")), str(Path(d, "o.json"))],
                capture_output=True,
                text=True,
            )
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
        rows.append(
            (
                "stix2-validator --strict + stix2.parse",
                t_val,
                None,
                "valid" if rep.ok else f"INVALID: {rep.lines()[:1]}",
            )
        )
    report, t_read = timed(read_bundle, text)
    rows.append(("import: read telfhashes", t_read, None, f"{len(report.telfhashes())} telfhashes"))
    local_results = list(tc.hash_paths([e["abspath"] for e in local]))
    match_local(report, local_results[:1], args.threshold)  # compile the distance kernels first
    matches, t_match = timed(match_local, report, local_results, args.threshold)
    rows.append(
        (
            "import: match local samples",
            t_match,
            None,
            f"{len(local_results)} x {len(report.digests)} -> {len(matches)} matches",
        )
    )

    print(f"\n{'stage':<40} {'ours (s)':>10} {'reference (s)':>14} {'ratio':>7}  notes")
    for name, ours, ref, note in rows:
        ref_txt = f"{ref:14.3f}" if ref is not None else f"{'-':>14}"
        ratio = f"{ref / ours:6.1f}x" if ref is not None and ours > 0 else f"{'':>7}"
        print(f"{name:<40} {ours:10.3f} {ref_txt} {ratio}  {note}")
    return receivers(args)


# ----------------------------------------------------------------------------- receiver figures


def receivers(args) -> int:
    import hashlib
    import random

    from telfhash_core.similarity.cluster import cluster

    entries = corpus.files()
    rows_all = [
        {"file": e["abspath"], "telfhash": e["reference"]["telfhash"], "sha256": e["sha256"], "arch": e["arch"]}
        for e in entries
        if e["reference"]["telfhash"].startswith("t1")
    ]
    clusters, _ = cluster(rows_all, threshold=args.threshold)
    print(f"\ncorpus clusters at {args.threshold}: {sum(c.size > 1 for c in clusters)} of 2+ members")
    misp_figures(rows_all, clusters, args.threshold)
    yara_table(entries, rows_all, clusters, args.threshold)
    n = args.files or (20_000 if args.quick else 200_000)
    import_figures(n, rows_all, random.Random(7), hashlib)
    pull_figures(600 if args.quick else 2000)
    poisoning(entries)
    return 0


def misp_figures(rows, clusters, threshold) -> None:
    from misp_stix_converter import stix_2_to_misp
    from pymisp import MISPEvent

    for layout in (True, False):
        b = export_bundle(
            rows, clusters, threshold=threshold, timestamp="2026-11-27T00:00:00Z", misp_layout=layout, hash_files=False
        )
        ext = "extension-definition--1e6507bc-d6fa-48a6-b047-009557ebe233"
        sha_of = {f["id"]: f["hashes"]["SHA-256"] for f in b["objects"] if f["type"] == "file"}
        want = {
            (sha_of[m["file_ref"]], m["telfhash"][2:])
            for g in b["objects"]
            if g["type"] == "grouping" and ext in g.get("extensions", {})
            for m in g["extensions"][ext]["members"]
        }
        files = {f["hashes"]["SHA-256"] for f in b["objects"] if f["type"] == "file"}
        with tempfile.TemporaryDirectory() as d:
            path = Path(d, "b.json")
            path.write_text(json.dumps(b))
            out = Path(d, "out")
            out.mkdir()
            t = time.perf_counter()
            res = stix_2_to_misp(path, output_dir=out)
            secs = time.perf_counter() - t
            got, shas = set(), set()
            for f in out.iterdir():
                ev = MISPEvent()
                ev.load_file(str(f))
                for o in ev.objects:
                    if o.name != "file":
                        continue
                    sh = [a.value for a in o.attributes if a.type == "sha256"]
                    shas.update(sh)
                    got.update((x, a.value) for a in o.attributes if a.type == "telfhash" for x in sh)
        print(
            f"MISP via misp-stix ({'default, MISP layout' if layout else 'without the MISP layout'}): "
            f"{len(got & want)}/{len(want)} telfhashes ({100 * len(got & want) / max(1, len(want)):.0f}%) as telfhash attributes "
            f"on the sample's file object; {len(shas & files)}/{len(files)} Files kept; {secs:.1f} s"
            + (f"; errors: {res.get('errors')}" if res.get("errors") else "")
        )


def yara_table(entries, rows, clusters, threshold) -> None:
    try:
        import yara
        import yara_x
    except ImportError as exc:
        print(f"YARA: skipped ({exc})")
        return
    from telfhash_plugins.yara.rules import RuleMember, cluster_rule, rule_name, ruleset

    by_file = {r["file"]: r for r in rows}
    rules, members = [], {}
    for k, c in enumerate(clusters):
        ms = [by_file[m if isinstance(m, str) else m["file"]] for m in c.members]
        if len({m["sha256"] for m in ms}) < 2:
            continue
        name = rule_name(f"grouping--{k:08d}-0000-4000-8000-000000000000")
        rm = [RuleMember(m["sha256"], m["telfhash"]) for m in ms]
        rules += [
            cluster_rule(name, rm, threshold=threshold),
            cluster_rule(name + "_t", rm, threshold=threshold, by_sha256=False),
        ]
        for m in ms:
            members.setdefault(m["sha256"], set()).add(name)
    src = ruleset(rules)
    engines = {"yara-python": yara.compile(source=src), "yara-x": yara_x.Scanner(yara_x.compile(src))}
    print(f"\nYARA match table: {len(rules) // 2} cluster rules, {len(members)} members, {len(entries)} corpus files")
    print(
        f"{'engine':<12} {'by telfhash':>12} {'SHA-256 only':>13} {'unmatched':>10} {'other files hit':>16} {'scan (s)':>9}"
    )
    datas = [(e["sha256"], Path(e["abspath"]).read_bytes()) for e in entries]
    for name, eng in engines.items():
        t = time.perf_counter()
        by_t = by_sha = miss = fp = 0
        for sha, data in datas:
            hit = (
                {m.rule for m in eng.match(data=data)}
                if name == "yara-python"
                else {m.identifier for m in eng.scan(data).matching_rules}
            )
            full = {h for h in hit if not h.endswith("_t")}
            telf = {h[:-2] for h in hit if h.endswith("_t")}
            want = members.get(sha, set())
            fp += bool(full - want)
            if want:
                if not want <= full:
                    miss += 1
                elif want <= telf:
                    by_t += 1
                else:
                    by_sha += 1
        print(f"{name:<12} {by_t:>12} {by_sha:>13} {miss:>10} {fp:>16} {time.perf_counter() - t:>9.1f}")
    print(
        "SHA-256 only: no symbol table (neither engine has the reference's fallback), or yara-x's TLSH differs from py-tlsh"
    )


def import_figures(n, rows, rnd, hashlib) -> None:
    from telfhash_core.store.index import Index
    from telfhash_plugins.stix import add_to_index, search_index

    seeds = [r["telfhash"] for r in rows[:: max(1, len(rows) // 50)]][:50]
    shared = [
        {"file": f"s{i}", "telfhash": seeds[i % len(seeds)], "sha256": hashlib.sha256(b"s%d" % i).hexdigest()}
        for i in range(n)
    ]
    b = export_bundle(
        shared,
        [{"members": [r["file"] for r in shared]}],
        hash_files=False,
        timestamp="2026-11-27T00:00:00Z",
        yara=False,
    )
    text = dumps(b)
    with tempfile.TemporaryDirectory() as d:
        db = str(Path(d, "ix.sqlite"))
        with Index(db) as ix:
            ix.add_results([{"file": r["file"], "telfhash": r["telfhash"], "sha256": r["sha256"]} for r in rows])
        t0 = time.perf_counter()
        rep = read_bundle(text, max_bytes=0)
        t1 = time.perf_counter()
        st = add_to_index(rep, db)
        t2 = time.perf_counter()
        matches = search_index(rep, db, 50)
        t3 = time.perf_counter()
        print(
            f"\nimport of {n:,} Files ({len(set(seeds))} distinct telfhashes) into an index of {len(rows)} local samples: "
            f"{t3 - t0:.1f} s (read {t1 - t0:.1f}, index add {t2 - t1:.1f}, search {t3 - t2:.1f}); "
            f"{st['added']:,} added, {len(matches)} local matches"
        )
        k = min(2000, n)
        small = read_bundle(
            dumps(
                export_bundle(shared[:k], [{"members": [r["file"] for r in shared[:k]]}], hash_files=False, yara=False)
            )
        )
        db2 = str(Path(d, "small.sqlite"))  # the local samples and the 2,000 shared ones only
        with Index(db2) as ix:
            ix.add_results([{"file": r["file"], "telfhash": r["telfhash"], "sha256": r["sha256"]} for r in rows])
        add_to_index(small, db2)
        with Index(db2) as ix:
            t = time.perf_counter()
            for dgt in small.digests:  # the old way: one search per shared digest, own rows filtered afterwards
                [m for m in ix.search(dgt.telfhash, max_distance=50) if m.source != small.source]
            old = time.perf_counter() - t
            t = time.perf_counter()
            ix.search_many([dg.telfhash for dg in small.digests], 50, exclude_sources=[small.source])
            new = time.perf_counter() - t
        print(
            f"search of {k:,} shared digests: one search each {old:.2f} s, one pass over distinct digests {new:.3f} s ({old / max(new, 1e-9):.0f}x)"
        )


def pull_figures(n_objects: int) -> None:
    import hashlib
    import socket

    from telfhash_plugins.stix import load_settings, publish, pull
    from telfhash_plugins.stix import server as srv

    def port() -> int:
        with socket.socket() as so:
            so.bind(("127.0.0.1", 0))
            return so.getsockname()[1]

    n_files = max(1, n_objects * 20 // 24)
    rows = [
        {
            "file": f"s{i}",
            "telfhash": "t1"
            + "579297300e9da0e22294ddabf313f175b9324c7a9df8357011127d46dee9e8a4c2e993"[:-4]
            + "%04x" % i,
            "sha256": hashlib.sha256(b"%d" % i).hexdigest(),
        }
        for i in range(n_files)
    ]
    b = export_bundle(
        rows,
        [{"members": [f"s{i}" for i in range(k, min(n_files, k + 20))]} for k in range(0, n_files, 20)],
        hash_files=False,
        yara=False,
        misp_layout=False,
        timestamp="2026-11-27T00:00:00Z",
    )
    user, pw = "bench", "bench-password"
    env = {"TELFHASH_TAXII_USER": user, "TELFHASH_TAXII_PASSWORD": pw}
    figures = {}
    for which in ("telfhash stix serve", "stock medallion 3.0"):
        p = port()
        if which.startswith("telfhash"):
            proc = srv.start(p, user, pw, quiet=True)
        else:
            d = tempfile.mkdtemp(prefix="bench-medallion-")
            data, config = srv.server_config("127.0.0.1", p, user, pw)
            Path(d, "data.json").write_text(json.dumps(data))
            config["backend"] = {
                "module": "medallion.backends.memory_backend",
                "module_class": "MemoryBackend",
                "filename": str(Path(d, "data.json")),
            }
            cfg = Path(d, "config.json")
            cfg.write_text(json.dumps(config))
            proc = subprocess.Popen(
                [sys.executable, "-m", "medallion.scripts.run", "--host", "127.0.0.1", "--port", str(p), str(cfg)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        try:
            srv.wait_ready(proc, "127.0.0.1", p)
            st = load_settings(url=srv.collection_url("127.0.0.1", p), environ=env)
            publish(b, st)
            t = time.perf_counter()
            got = pull(st)
            figures[which] = time.perf_counter() - t
            print(f"stix pull of {len(got['objects'])} objects from {which}: {figures[which]:.2f} s")
        finally:
            srv.stop(proc)
            if not which.startswith("telfhash"):
                import shutil

                shutil.rmtree(d, ignore_errors=True)
    a, b2 = figures.get("telfhash stix serve"), figures.get("stock medallion 3.0")
    if a and b2:
        print(f"pull: {b2 / a:.0f}x faster than from stock medallion")


def poisoning(entries) -> None:
    from telfhash_core.store.index import Index
    from telfhash_plugins.stix import add_to_index

    fs = [e for e in entries if e["reference"]["telfhash"].startswith("t1")]
    real, other = fs[0], fs[-1]
    b = export_bundle(
        [
            {"file": "x/a", "telfhash": other["reference"]["telfhash"], "sha256": real["sha256"]},
            {"file": "x/b", "telfhash": other["reference"]["telfhash"], "sha256": "00" * 32},
        ],
        [{"members": ["x/a", "x/b"]}],
        hash_files=False,
    )
    with tempfile.TemporaryDirectory() as d:
        db = str(Path(d, "ix.sqlite"))
        add_to_index(read_bundle(b), db)
        with Index(db) as ix:
            ix.add_files([real["abspath"]])
            e = ix.get(real["sha256"])
            found = [m.sha256 for m in ix.search(real["abspath"], max_distance=0)]
        wins = e["telfhash"] == real["reference"]["telfhash"] and real["sha256"] in found
        print(
            f"\npoisoning (claim first, then index add of the real file): the local value {'wins' if wins else 'LOSES'}; "
            f"search with the real file finds it: {real['sha256'] in found}"
        )


if __name__ == "__main__":
    sys.exit(main())
