#!/usr/bin/env python3
"""Run the CAPEv2 module inside a real CAPE checkout, with CAPE's own processing engine.

The tests run the module under CAPE's pinned ``Processing``/``RunProcessing`` text; this script is
how it is checked against a whole CAPE: its database, its configuration reader, its own processing
modules (``CAPE.py`` builds the target and dropped-file dicts with libmagic, ``analysisinfo``,
``behavior``, ``strings``, ...) and its engine.  It needs CAPE's Python environment (CAPE's
``requirements.txt`` installed in a venv) with telfhash-core installed into it, as operators do::

    python benchmarks/cape_real.py /path/to/CAPEv2-checkout --cape-python /path/to/cape-venv/bin/python \
        [--work DIR] [--quick] [--repeat N]

What it does, in a copy of the checkout (the checkout itself is not touched):

1. ``telfhash-cape install --cape-root COPY --ui`` with the CAPE environment's own entry point;
   ``custom/conf/processing.conf`` turns off ``virustotal`` (the one default module that calls out);
2. one analysis: the target and dropped ELF files of many architectures from the shared corpus,
   a non-ELF dropped file, and a ``files.json`` entry whose file is missing; the task is added
   with CAPE's ``Database.add_path`` (SQLite, CAPE's default);
3. in fresh CAPE processes, what ``utils/process.py`` does: ``init_database()``,
   ``import_package(modules.processing)``, ``RunProcessing(task.to_dict(), results).run()`` --
   with the module enabled and disabled (drop-in ``enabled = no``), ``--repeat`` times each;
4. prints each ELF dict's telfhash beside the reference tool's (``TELFHASH_REFERENCE_PYTHON``,
   telfhash 0.9.8), whether the rest of the results is the same with and without the module,
   and the processing time with and without.  Exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import corpus

# Runs in CAPE's Python with the CAPE root as working directory and first on sys.path.
INNER = r"""
import json, os, sys, time
sys.path.insert(0, os.getcwd())
mode, out = sys.argv[1], sys.argv[2]
import logging
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
from lib.cuckoo.core.database import Database, init_database
init_database()
db = Database()
if mode == "add":
    with db.session.begin():
        tid = db.add_path(file_path=sys.argv[3], platform="linux", package="")
    print(json.dumps({"task_id": tid}))
    sys.exit(0)
import modules.processing
from lib.cuckoo.core.plugins import RunProcessing, import_package, list_plugins
from lib.cuckoo.common.utils import get_options
t0 = time.perf_counter()
import_package(modules.processing)
t_import = time.perf_counter() - t0
tid = int(mode)
with db.session.begin():
    task = db.view_task(tid)
    task_dict = task.to_dict()
    db.session.expunge_all()
task_dict["_options_parsed"] = get_options(task_dict.get("options"))
results = {"statistics": {"processing": [], "signatures": [], "reporting": []}}
t0 = time.perf_counter()
with db.session.begin():
    RunProcessing(task=task_dict, results=results).run()
elapsed = time.perf_counter() - t0
loaded = sorted(m.__name__ for m in list_plugins(group="processing"))
with open(out, "w") as fh:
    json.dump({"results": results, "seconds": elapsed, "import_seconds": t_import, "loaded": loaded}, fh, default=str)
"""

REF = "import json,sys,telfhash;print(json.dumps([r['telfhash'] for r in telfhash.telfhash(*sys.argv[1:])]))"


def pick(quick: bool) -> list[dict]:
    """One file with a t1 digest per architecture (sorted), plus one 'tnull'/'-' file."""
    files = corpus.files()
    by_arch: dict[str, dict] = {}
    odd = None
    for f in sorted(files, key=lambda f: f["path"]):
        if f["reference"]["telfhash"].startswith("t1") and f["arch"] not in by_arch and 20_000 < f["size"] < 2_000_000:
            by_arch[f["arch"]] = f
        if odd is None and not f["reference"]["telfhash"].startswith("t1"):
            odd = f
    for f in sorted(files, key=lambda f: f["size"]):  # architectures with no file in that size range
        if f["reference"]["telfhash"].startswith("t1") and f["arch"] not in by_arch:
            by_arch[f["arch"]] = f
    chosen = [by_arch[a] for a in sorted(by_arch)]
    if quick:
        chosen = chosen[:4]
    return chosen + ([odd] if odd else [])


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    # a fixed hash seed: CAPE builds some lists (strings, ...) from sets, in hash order
    env = dict(os.environ, PYTHONHASHSEED="0")
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False, env=env)


def walk(obj, where="results"):
    """Every dict (with its place) that has a 'telfhash' or 'telfhash_error' key."""
    if isinstance(obj, dict):
        if "telfhash" in obj and isinstance(obj.get("telfhash"), str) or "telfhash_error" in obj:
            yield where, obj
        for k, v in obj.items():
            if k != "telfhash" or not isinstance(v, dict):
                yield from walk(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from walk(v, f"{where}[{i}]")


def strip(obj):
    if isinstance(obj, dict):
        return {k: strip(v) for k, v in obj.items() if k not in ("telfhash", "telfhash_error")}
    if isinstance(obj, list):
        return [strip(v) for v in obj]
    return obj


def differences(a, b, where="results") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{where}.{k}: only {'with' if k in a else 'without'}")
            else:
                out += differences(a[k], b[k], f"{where}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [where]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkout", type=Path, help="a CAPEv2 checkout (read only; a copy is used)")
    ap.add_argument("--cape-python", default="/work/venvs/capev2/bin/python", help="Python of CAPE's environment")
    ap.add_argument("--commit", help="the checkout's commit, printed (for a tree made with git archive)")
    ap.add_argument("--work", type=Path, help="work folder (default: a temporary one, removed)")
    ap.add_argument("--quick", action="store_true", help="4 architectures, 2 runs per mode")
    ap.add_argument("--repeat", type=int, default=3, help="runs per mode (default 3, at least 2)")
    args = ap.parse_args()
    repeat = 2 if args.quick else max(2, args.repeat)  # two runs at least: what differs between runs is not ours
    ref_py = os.environ.get("TELFHASH_REFERENCE_PYTHON")
    if not ref_py or not os.path.exists(ref_py):
        print("TELFHASH_REFERENCE_PYTHON is not set to the reference tool's Python (telfhash 0.9.8)")
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="cape-real-"))
    root = work / "CAPEv2"
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(args.checkout, root, symlinks=True, ignore=shutil.ignore_patterns(".git"))
    cape_py = args.cape_python
    bindir = Path(cape_py).parent
    ok = True

    head = args.commit or run(["git", "-C", str(args.checkout), "rev-parse", "HEAD"]).stdout.strip() or "(unknown)"
    versions = (
        "import sys, elftools, capstone, importlib.metadata as m; "
        "print(sys.version.split()[0], 'pyelftools', elftools.__version__, 'capstone', capstone.__version__, "
        "'python-tlsh', m.version('python-tlsh'), 'py-tlsh', m.version('py-tlsh'), "
        "'SQLAlchemy', m.version('SQLAlchemy'), 'telfhash-core', m.version('telfhash-core'))"
    )
    vers = run([cape_py, "-c", versions]).stdout.strip()
    print(f"CAPE checkout: {args.checkout} (commit {head}); copy at {root}")
    print(f"CAPE's Python: {cape_py}: {vers}")

    # 1. install, the operators' way
    (root / "custom" / "conf").mkdir(parents=True, exist_ok=True)
    (root / "custom" / "conf" / "processing.conf").write_text("[virustotal]\nenabled = no\n")
    for cmd in (["install", "--cape-root", str(root), "--ui"], ["status", "--cape-root", str(root)]):
        p = run([str(bindir / "telfhash-cape"), *cmd])
        print(f"$ telfhash-cape {' '.join(cmd[:1] + cmd[3:])}: exit {p.returncode}")
        if cmd[0] == "install" and p.returncode != 0:
            print(p.stdout + p.stderr)
            return 1
        if cmd[0] == "status":
            for line in p.stdout.splitlines():
                if any(
                    w in line for w in ("pyelftools", "tlsh", "verdict", "module", "drop-in", "settings", "patches")
                ):
                    print("   ", line.strip())

    # 2. the analysis
    chosen = pick(args.quick)
    target, dropped = chosen[0], chosen[1:]
    p = run([cape_py, "-c", INNER, "add", "-", target["abspath"]], cwd=root)
    if p.returncode != 0:
        print("adding the task failed:\n" + p.stderr[-3000:])
        return 1
    tid = json.loads(p.stdout.strip().splitlines()[-1])["task_id"]
    tid = tid[0] if isinstance(tid, list) else tid
    an = root / "storage" / "analyses" / str(tid)
    for d in ("files", "CAPE", "procdump", "logs", "reports"):
        (an / d).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(target["abspath"], an / "binary")
    meta = []
    for f in dropped:
        shutil.copyfile(f["abspath"], an / "files" / f["sha256"])
        meta.append(
            {
                "path": f"files/{f['sha256']}",
                "filepath": "/tmp/" + os.path.basename(f["path"]),
                "pids": [4242],
                "metadata": "",
            }
        )
    (an / "files" / ("a" * 64)).write_text("#!/bin/sh\necho not an ELF file\n")
    meta.append({"path": "files/" + "a" * 64, "filepath": "/tmp/run.sh", "pids": [4242], "metadata": ""})
    meta.append(
        {"path": "files/" + "b" * 64, "filepath": "/tmp/gone", "pids": [4242], "metadata": ""}
    )  # its file is missing
    (an / "files" / ("c" * 64)).symlink_to(an / "files" / "deleted")  # a dropped path that leads nowhere
    (an / "files.json").write_text("".join(json.dumps(m) + "\n" for m in meta))
    print(
        f"analysis {tid}: target {target['arch']}, {len(dropped)} dropped ELF, 1 non-ELF, 1 files.json entry without file, 1 dangling symlink"
    )

    # 3. CAPE's processing, with and without the module
    conf = root / "custom" / "conf" / "processing.conf.d" / "telfhash.conf"
    text = conf.read_text()
    runs: dict[str, list[dict]] = {"with": [], "without": []}
    for _ in range(repeat):
        for mode in ("with", "without"):
            conf.write_text(text if mode == "with" else text.replace("enabled = yes", "enabled = no"))
            out = work / f"results-{mode}.json"
            p = run([cape_py, "-c", INNER, str(tid), str(out)], cwd=root)
            if p.returncode != 0:
                print(f"RunProcessing ({mode}) failed:\n" + p.stderr[-3000:])
                return 1
            r = json.loads(out.read_text())
            r["log"] = [line for line in p.stderr.splitlines() if line.startswith(("WARNING", "ERROR", "CRITICAL"))]
            r["log"] += [
                line for line in p.stdout.splitlines() if "Unable to import plugin" in line
            ]  # import_plugin prints
            runs[mode].append(r)
    conf.write_text(text)
    w, wo = runs["with"][0], runs["without"][0]
    print(f"processing modules CAPE loaded (with): {', '.join(w['loaded'])}")
    print(
        "processing statistics (with): "
        + ", ".join(f"{m['name']} {m['time']}s" for m in w["results"]["statistics"]["processing"])
    )
    for line in dict.fromkeys(w["log"]):
        n = w["log"].count(line)
        print(f"CAPE log (with): {line[:200]}{f' (x{n})' if n > 1 else ''}")

    # 4. every ELF dict against the reference
    res = w["results"]
    elf = list(walk({k: v for k, v in res.items() if k != "telfhash"}))
    paths = [fd.get("path") for _, fd in elf]
    existing = [p for p in paths if isinstance(p, str) and os.path.isfile(p)]
    t0 = time.perf_counter()
    refs = dict(zip(existing, json.loads(run([ref_py, "-c", REF, *existing]).stdout))) if existing else {}
    t_ref = time.perf_counter() - t0
    print(f"\n{'where':38} {'arch':9} {'ours == reference':18} telfhash")
    by_sha = {f["sha256"]: f for f in chosen}
    same = 0
    for where, fd in elf:
        ref = refs.get(fd.get("path"))
        ours = fd.get("telfhash", f"(error: {fd.get('telfhash_error')})")
        eq = ours == ref
        same += eq
        ok &= eq
        arch = by_sha.get(fd.get("sha256"), {}).get("arch", "?")
        print(f"{where[8:]:38} {arch:9} {'yes' if eq else 'NO, ref ' + str(ref):18} {ours[:44]}")
    n_elf = sum(1 for f in chosen)
    print(f"ELF dicts with telfhash: {len(elf)} (files placed: {n_elf}); equal to the reference: {same}/{len(elf)}")
    if len(elf) < n_elf:
        ok = False
        print("MISSING: some placed ELF files got no telfhash")
    for i, fd in enumerate(res.get("dropped") or []):
        if isinstance(fd, dict) and "ELF" not in str(fd.get("type")):
            print(
                f"dropped[{i}] (non-ELF, {str(fd.get('type'))[:30]}): telfhash keys added: "
                f"{sorted(k for k in fd if k.startswith('telfhash')) or 'none'}"
            )
    listed = {os.path.basename(str(fd.get("path"))) for fd in res.get("dropped") or [] if isinstance(fd, dict)}
    print(
        f"files.json entry without file / dangling symlink: CAPE made a file dict for them: "
        f"{'b' * 64 in listed} / {'c' * 64 in listed} (so the module never sees them)"
    )
    s = res.get("telfhash", {})
    print(
        f"summary: elf_files {s.get('elf_files')}, hashed {s.get('hashed')}, groups {len(s.get('groups', []))}, "
        f"errors {s.get('errors')}"
    )
    for f in s.get("files", []):
        if f.get("error"):
            print(f"  summary file error: {f.get('where')} {f.get('error')}")

    # 5. nothing else changes
    a = {k: v for k, v in strip(res).items() if k not in ("telfhash", "statistics")}
    b = {k: v for k, v in wo["results"].items() if k not in ("telfhash", "statistics")}
    diff = differences(a, b)
    # what differs between two runs without the module (times, ...) is not ours
    noise = set()
    for other in runs["without"][1:] + runs["with"][1:]:
        noise |= set(
            differences({k: v for k, v in strip(other["results"]).items() if k not in ("telfhash", "statistics")}, b)
        )
    ours_diff = [d for d in diff if d not in noise]
    print(
        f"\nother modules' results with vs without the module: {len(diff)} differing fields, "
        f"{len(diff) - len(ours_diff)} of them also differ between runs without it; "
        f"{'unchanged' if not ours_diff else 'CHANGED: ' + ', '.join(ours_diff[:10])}"
    )
    if noise:
        print(f"  (differ between runs anyway: {', '.join(sorted(noise)[:8])}{' ...' if len(noise) > 8 else ''})")
    ok &= not ours_diff
    names_w = [m["name"] for m in res["statistics"]["processing"]]
    names_wo = [m["name"] for m in wo["results"]["statistics"]["processing"]]
    print(
        f"modules run: with {len(names_w)} ({'Telfhash last' if names_w[-1:] == ['Telfhash'] else 'order: ' + str(names_w)}), "
        f"without {len(names_wo)}; same others: {[n for n in names_w if n != 'Telfhash'] == names_wo}"
    )

    # 6. time
    tw = [r["seconds"] for r in runs["with"]]
    two = [r["seconds"] for r in runs["without"]]
    tel = [
        next((m["time"] for m in r["results"]["statistics"]["processing"] if m["name"] == "Telfhash"), 0)
        for r in runs["with"]
    ]
    mw, mwo = statistics.median(tw), statistics.median(two)
    print(
        f"\nRunProcessing wall time, median of {repeat}: with {mw:.2f} s, without {mwo:.2f} s, "
        f"ratio {mw / mwo:.2f}; the Telfhash module alone {statistics.median(tel):.2f} s "
        f"({len(elf)} ELF dicts, {n_elf} files; worker start-up included)"
    )
    print(
        f"reference tool on the same files: {t_ref:.2f} s (one process, start-up included); "
        f"module / reference: {statistics.median(tel) / t_ref:.2f}"
    )
    print("RESULT:", "all checks passed" if ok else "FAILED")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
