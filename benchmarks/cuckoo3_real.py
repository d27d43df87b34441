"""Run the telfhash plugin inside real Cuckoo 3 and compare every value with the reference tool.

Cuckoo 3 is not on PyPI, so CI cannot install it; this script is how the adapter is checked
against the real thing.  It needs a Python environment where Cuckoo 3 is installed the way its
``install.sh`` does (``pip install -e`` of common, processing, machineries, web, node, core from a
checkout, plus cert-ee's sflock, roach, httpreplay and peepdf) and telfhash-core too::

    CUCKOO_PY=/path/to/cuckoo-venv/bin/python
    $CUCKOO_PY benchmarks/cuckoo3_real.py /path/to/cuckoo3-checkout [--work DIR] [--quick]

What runs, all of it Cuckoo's own code: ``cuckoo createcwd``, ``cuckoomigrate database all``,
``telfhash-cuckoo3 install``, ``cuckoo submit --platform linux`` (ELF files, a zip holding an ELF,
a text file), then per analysis the state controller's functions (``control.track_untracked``,
``set_next_state``, ``handle_pre_done`` creating the task) and the processing worker
(``runprocessing.WorkReceiver``: ``enumerate_plugins``, ``initialize_plugins``, ``handle_message``
for the identification, pre and post stages, ``JSONDump`` and the error tracker).  Three things
stand in for parts that need a VM: the node-info dump (one Linux machine, written with Cuckoo's
``NodeInfo``/``dump_nodeinfos`` as ``cuckoo`` does at start), the task's ``machine.json`` (Cuckoo's
``Machine.to_file``) and the task's ``dropped/`` files (copied where Cuckoo's result server puts
them).  The web pages are rendered with Django's test client from Cuckoo's own views.

Reference values: ``TELFHASH_REFERENCE_PYTHON`` (telfhash 0.9.8) run on the same files; without it,
the values recorded in ``tests/fixtures/fixtures.json``.  Prints one line per ELF and a summary;
exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"


def _fixture_files(quick: bool) -> list[Path]:
    meta = json.loads((FIXTURES / "fixtures.json").read_text())
    files = [FIXTURES / f["fixture"] for f in meta["files"]]
    return files[:4] if quick else files


def reference(paths: list[Path]) -> dict[str, str]:
    """sha256 -> the reference tool's telfhash."""
    out: dict[str, str] = {}
    ref_py = os.environ.get("TELFHASH_REFERENCE_PYTHON")
    if ref_py and os.path.exists(ref_py):
        code = "import json,sys,telfhash;print(json.dumps(telfhash.telfhash(*sys.argv[1:])))"
        res = json.loads(
            subprocess.run([ref_py, "-c", code, *map(str, paths)], capture_output=True, text=True, check=True).stdout
        )
        for p, r in zip(paths, res):
            out[hashlib.sha256(p.read_bytes()).hexdigest()] = r["telfhash"]
        return out
    meta = json.loads((FIXTURES / "fixtures.json").read_text())
    for f in meta["files"]:
        out[f["sha256"]] = f["reference"]["telfhash"]
    return out


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, **kw)


def cuckoo_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-c", "from cuckoo.main import main; main()", "--cwd", str(cwd), *args])


# ----------------------------------------------------------------------------- the controller's side


class Recorder:
    """Where the state controller hands work on (the processing handler and the scheduler)."""

    def __init__(self):
        self.calls: list[tuple] = []

    def __getattr__(self, name):
        return lambda *a, **k: self.calls.append((name, a, k))


def make_ctx():
    from cuckoo.common.node import read_nodesinfos_dump
    from cuckoo.common.storage import Paths

    nodes = SimpleNamespace(
        nodeinfos=read_nodesinfos_dump(Paths.nodeinfos_dump()), delete_completed_analysis=lambda *a: None
    )
    return SimpleNamespace(processing_handler=Recorder(), scheduler=Recorder(), nodes=nodes)


def controller(ctx, func, worktype=None, **ids):
    from cuckoo import control

    class Locker:
        def inform_work(self, *a):
            pass

        def inform_work_done(self, *a):
            pass

    wt = control._WorkTracker(ctx, func, Locker(), **ids)
    wt.init()
    try:
        if worktype:
            func(wt, worktype)
        else:
            func(wt)
    finally:
        wt.close()


def write_nodeinfos():
    from cuckoo.common.machines import Machine, MachinesList
    from cuckoo.common.node import NodeInfo, dump_nodeinfos
    from cuckoo.common.route import Routes
    from cuckoo.common.storage import Paths

    machines = MachinesList()
    machines.add_machine(
        Machine(
            name="linux1",
            label="linux1",
            ip="192.0.2.10",
            platform="linux",
            os_version="ubuntu22.04",
            tags=set(),
            machinery_name="qemu",
            state="poweroff",
        )
    )
    dump_nodeinfos(Paths.nodeinfos_dump(), NodeInfo("local", "3", machines, Routes(available=[])))
    return machines


class Worker:
    """Cuckoo's processing worker for one stage, driven through its own message handler."""

    def __init__(self, worktype: str):
        from cuckoo.common.storage import cuckoocwd
        from cuckoo.runprocessing import WorkReceiver

        self.states: list[dict] = []
        self.wr = WorkReceiver("/nonexistent.sock", worktype, f"{worktype}0", cuckoocwd)
        self.wr.reader = SimpleNamespace(send_json_message=self.states.append)
        self.wr.initialize_workrunners()
        assert self.wr.initialize_plugins(), f"{worktype}: plugin setup failed"

    def plugins(self) -> list[str]:
        out = []
        for classes in self.wr.plugin_classes[self.wr.worktype].values():
            out += [c.__name__ for c in classes]
        return out

    def run(self, analysis_id: str, task_id: str | None = None) -> str:
        msg = {"analysis_id": analysis_id, **({"task_id": task_id} if task_id else {})}
        self.wr.handle_message(None, msg)
        return self.states[-1]["state"]


# ----------------------------------------------------------------------------- the run


def process_analysis(ctx, aid: str, workers: dict, dropped: list[Path]) -> dict:
    """Identification, pre, task creation, post (with ``dropped`` files) for one analysis."""
    from cuckoo import control
    from cuckoo.common.machines import Machine
    from cuckoo.common.storage import AnalysisPaths, TaskPaths

    out: dict = {"id": aid}
    for stage in ("identification", "pre"):
        t = time.monotonic()
        state = workers[stage].run(aid)
        out[f"t_{stage}"] = time.monotonic() - t
        out[stage] = state
        controller(ctx, control.set_next_state if state == "finished" else control.set_failed, stage, analysis_id=aid)
        if state != "finished":
            return out
    out["pre.json"] = json.loads(AnalysisPaths.prejson(aid).read_text())
    analysis = json.loads(AnalysisPaths.analysisjson(aid).read_text())
    out["analysis.json"] = analysis
    if not analysis.get("tasks"):
        return out
    task_id = analysis["tasks"][0]["id"]
    Machine(
        name="linux1",
        label="linux1",
        ip="192.0.2.10",
        platform="linux",
        os_version="ubuntu22.04",
        tags=set(),
        machinery_name="qemu",
    ).to_file(TaskPaths.machinejson(task_id))
    ddir = Path(TaskPaths.dropped_file(task_id))
    ddir.mkdir(parents=True, exist_ok=True)
    for p in dropped:
        shutil.copyfile(p, ddir / p.name)
    t = time.monotonic()
    state = workers["post"].run(aid, task_id)
    out["t_post"] = time.monotonic() - t
    out["post"] = state
    controller(
        ctx,
        control.set_next_state if state == "finished" else control.set_failed,
        "post",
        analysis_id=aid,
        task_id=task_id,
    )
    out["task_id"] = task_id
    if TaskPaths.report(task_id).exists():
        out["report.json"] = json.loads(TaskPaths.report(task_id).read_text())
    perr = TaskPaths.processingerr_json(task_id)
    out["task_errors"] = json.loads(perr.read_text()) if perr.exists() else {}
    return out


def submit(cwd: Path, files: list[Path]) -> list[str]:
    """``cuckoo submit --platform linux``; the analysis ids in the order of ``files``."""
    import re

    r = cuckoo_cli(cwd, "submit", "--platform", "linux", *map(str, files))
    got = {path: aid for aid, path in re.findall(r"Submitted file: (\S+) -> (.+?)\x1b", r.stdout)}
    missing = [f for f in files if str(f) not in got]
    if missing:
        raise SystemExit(f"cuckoo submit failed for {missing}: {r.stdout}{r.stderr}")
    return [got[str(f)] for f in files]


def track(ctx, ids: list[str]) -> None:
    from cuckoo import control

    controller(ctx, control.track_untracked)


def web_pages(cwd: Path, aid: str, task_id: str | None) -> dict[str, str]:
    """Cuckoo's own analysis and task pages: ``init_web`` as ``cuckoo web`` runs it, then Django's
    test client on Cuckoo's views and templates."""
    from cuckoo.web.web.startup import init_web

    init_web(str(cwd), 40)
    import django
    from django.test.utils import setup_test_environment

    django.setup()
    setup_test_environment()  # lets the test client's host name through ALLOWED_HOSTS
    from django.test import Client

    c = Client()
    pages = {"analysis": c.get(f"/analysis/{aid}").content.decode()}
    if task_id:
        pages["task"] = c.get(f"/analysis/{aid}/task/{task_id}").content.decode()
    return pages


def setup_process(src: Path, cwd: Path, logfile: Path):
    """What each Cuckoo process does at start: CWD, configuration, database; the controller's context."""
    for sub in ("common", "processing", "machineries", "web", "node", "core"):
        if str(src / sub) not in sys.path:
            sys.path.append(str(src / sub))
    from cuckoo.common.startup import init_database, init_global_logging, load_configurations
    from cuckoo.common.storage import cuckoocwd

    cuckoocwd.set(cwd)
    init_global_logging(40, str(logfile), use_logqueue=False)
    load_configurations()
    init_database()


def run_phase(src: Path, cwd: Path, jobs: list[tuple[str, list[str]]]) -> dict:
    """Process analyses in a fresh process, as Cuckoo's workers are (plugins initialise once per
    process): ``jobs`` is ``[(analysis_id, [dropped file, ...]), ...]``."""
    job = cwd.parent / "phase.json"
    job.write_text(json.dumps({"jobs": jobs}))
    r = _run([sys.executable, __file__, str(src), "--work", str(cwd.parent), "--phase", str(job)])
    if r.returncode != 0:
        raise SystemExit(f"processing phase failed:\n{r.stdout}\n{r.stderr}")
    return json.loads((cwd.parent / "phase-out.json").read_text())


def phase_main(src: Path, work: Path, job: Path) -> int:
    cwd = work / "cwd"
    setup_process(src, cwd, work / "cuckoo.log")
    ctx = make_ctx()
    jobs = json.loads(job.read_text())["jobs"]
    from cuckoo.common.storage import Paths

    ids = [aid for aid, _ in jobs]
    untracked = set(os.listdir(Paths.untracked()))
    if untracked & set(ids):
        track(ctx, ids)
    workers = {s: Worker(s) for s in ("identification", "pre", "post")}
    out = {"plugins": {s: w.plugins() for s, w in workers.items()}, "results": {}}
    t0 = time.monotonic()
    for aid, dropped in jobs:
        out["results"][aid] = process_analysis(ctx, aid, workers, [Path(d) for d in dropped])
    out["seconds"] = time.monotonic() - t0
    (work / "phase-out.json").write_text(json.dumps(out, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cuckoo_src", help="the Cuckoo 3 checkout the environment was installed from")
    ap.add_argument("--work", help="working folder (default: a new temporary one, removed at the end)")
    ap.add_argument("--quick", action="store_true", help="4 ELF fixtures instead of all")
    ap.add_argument("--keep-dropins", action="store_true", help="leave the plugin installed in Cuckoo")
    ap.add_argument("--phase", help=argparse.SUPPRESS)  # internal: one processing process
    args = ap.parse_args(argv)
    if args.phase:
        return phase_main(Path(args.cuckoo_src).resolve(), Path(args.work), Path(args.phase))

    src = Path(args.cuckoo_src).resolve()
    for sub in ("common", "processing", "machineries", "web", "node", "core"):
        if str(src / sub) not in sys.path:
            sys.path.append(str(src / sub))
    import cuckoo.processing

    if not str(Path(cuckoo.processing.__file__).resolve()).startswith(str(src)):
        print(f"note: Cuckoo is imported from {cuckoo.processing.__file__}, not from {src}")
    commit = _run(["git", "-C", str(src), "rev-parse", "HEAD"]).stdout.strip() or "(not a git checkout)"
    print(
        f"Cuckoo 3: {src} commit {commit}; cuckoo.processing {cuckoo.processing.__version__}; "
        f"Python {sys.version.split()[0]}"
    )

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="telfhash-cuckoo3-"))
    work.mkdir(parents=True, exist_ok=True)
    cwd = work / "cwd"
    if cwd.exists():
        shutil.rmtree(cwd)
    t0 = time.monotonic()
    for cmd in (["createcwd"],):
        r = cuckoo_cli(cwd, *cmd)
        assert r.returncode == 0, r.stdout + r.stderr
    r = _run(
        [sys.executable, "-c", "from cuckoo.scripts.migrate import main; main()", "--cwd", str(cwd), "database", "all"]
    )
    assert r.returncode == 0, r.stdout + r.stderr
    sigzip = src / "signatures.zip"  # Cuckoo's install docs: unzip -o -d CWD/signatures/cuckoo signatures.zip
    if sigzip.exists():
        with zipfile.ZipFile(sigzip) as z:
            z.extractall(cwd / "signatures" / "cuckoo")
    for kind in ("network", "windows", "linux"):
        (cwd / "signatures" / "cuckoo" / "pattern" / kind).mkdir(parents=True, exist_ok=True)
    vt = cwd / "conf" / "processing" / "virustotal.yaml"  # enabled by default; no lookups from here
    vt.write_text(vt.read_text().replace("enabled: True", "enabled: False", 1))
    cy = cwd / "conf" / "cuckoo.yaml"  # no network capture on this machine (no VM runs either)
    cy.write_text(cy.read_text().replace("tcpdump:\n  enabled: True", "tcpdump:\n  enabled: False"))
    qy = cwd / "conf" / "machineries" / "qemu.yaml"  # its default bridge br0 does not exist here
    vm = work / "vm"  # placeholder files: Cuckoo's config checks that they exist; no VM is started
    vm.mkdir(exist_ok=True)
    for name in ("disk.qcow2", "memory.snapshot", "machineinfo.json"):
        (vm / name).write_text("{}")
    qtext = qy.read_text().replace("interface: br0", "interface: lo")
    qtext = qtext.replace("/usr/bin/qemu-img", "/bin/true").replace("/usr/bin/qemu-system-x86_64", "/bin/true")
    qtext = qtext.replace("/home/cuckoo/.vmcloak/vms/qemu/win10_1/", f"{vm}/")
    qtext = qtext.replace("platform: windows", "platform: linux").replace(
        'os_version: "10"', 'os_version: "ubuntu22.04"'
    )
    qy.write_text(qtext)

    setup_process(src, cwd, work / "cuckoo.log")
    write_nodeinfos()

    elves = _fixture_files(args.quick)
    inputs = work / "in"
    inputs.mkdir(exist_ok=True)
    subs: list[Path] = []
    for p in elves:
        q = inputs / p.name
        shutil.copyfile(p, q)
        subs.append(q)
    zpath = inputs / "elf-in.zip"
    with zipfile.ZipFile(zpath, "w") as z:  # an archive: Cuckoo picks the ELF inside as the target
        z.write(elves[1], "payload/sample.bin")
    text = inputs / "notes.txt"
    text.write_text("not an ELF file, a text file submitted to see that nothing is added for it\n" * 4)
    dropped = [elves[2], elves[3]]
    ref = reference(elves)
    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        print(("ok    " if ok else "FAIL  ") + what)
        if not ok:
            failures.append(what)

    # 1. baseline: the same submissions processed without the plugin
    from telfhash_plugins.cuckoo3 import install as inst

    inst.uninstall(cwd, purge=True)
    submissions = [*subs, zpath, text]
    base_ids = submit(cwd, submissions)
    base_out = run_phase(src, cwd, [(aid, list(map(str, dropped))) for aid in base_ids])
    base = [base_out["results"][aid] for aid in base_ids]

    # 2. the plugin installed with its own command
    r = _run([sys.executable, "-m", "telfhash_plugins.cuckoo3.cli", "install", "--cwd", str(cwd)])
    print(r.stdout.rstrip())
    check(r.returncode == 0, "telfhash-cuckoo3 install")
    r = _run([sys.executable, "-m", "telfhash_plugins.cuckoo3.cli", "status", "--cwd", str(cwd)])
    check(r.returncode == 0, "telfhash-cuckoo3 status")
    ids = submit(cwd, submissions)
    out = run_phase(src, cwd, [(aid, list(map(str, dropped))) for aid in ids])
    plugins = out["plugins"]
    check(
        "Telfhash" in plugins["pre"] and "TelfhashDropped" in plugins["post"] and "TelfhashJSON" in plugins["pre"],
        f"Cuckoo's loader found the plugins: pre {plugins['pre']}; post {plugins['post']}",
    )
    results = out["results"]
    t_proc = out["seconds"]

    # per-ELF values
    print(f"\n{'analysis':18} {'file':58} {'match':5} telfhash")
    n_ok = n_all = 0
    for aid, src_path in zip(ids, [*subs, zpath, text]):
        res = results[aid]
        pre = res.get("pre.json", {})
        th = pre.get("telfhash")
        if src_path == text:
            check(th is None and res.get("pre") == "finished", f"{aid} text file: no telfhash key, pre finished")
            continue
        inner = elves[1] if src_path == zpath else src_path
        sha = hashlib.sha256(inner.read_bytes()).hexdigest()
        got = (th or {}).get("target", {}).get("telfhash")
        n_all += 1
        n_ok += got == ref.get(sha)
        label = src_path.name + (" -> payload/sample.bin" if src_path == zpath else "")
        print(f"{aid:18} {label[:58]:58} {'yes' if got == ref.get(sha) else 'NO':5} {got}")
        if src_path == zpath:
            check(got == ref.get(sha) and pre["target"]["sha256"] == sha, f"{aid} zip hashed by its identified target")
        rep = res.get("report.json", {}).get("telfhash")
        for d in dropped:
            dsha = hashlib.sha256(d.read_bytes()).hexdigest()
            dgot = next((x.get("telfhash") for x in (rep or {}).get("dropped", []) if x["name"] == d.name), None)
            n_all += 1
            n_ok += dgot == ref.get(dsha)
            if dgot != ref.get(dsha):
                print(f"{res.get('task_id', '-'):18} dropped/{d.name[:50]:50} NO    {dgot} (reference {ref.get(dsha)})")
    print(f"\nELF values equal to the reference: {n_ok}/{n_all} (submitted, zip target and dropped)")
    check(n_ok == n_all, "every submitted and dropped ELF has the reference telfhash in pre.json/report.json")

    # other plugins' results unchanged (each submission, processed without and with the plugin)
    def strip(d: dict, drop=("telfhash", "analysis_id", "task_id")) -> dict:
        return {k: v for k, v in d.items() if k not in drop}

    with_plugin = [results[aid] for aid in ids]
    same_pre = sum(strip(b.get("pre.json", {})) == strip(w.get("pre.json", {})) for b, w in zip(base, with_plugin))
    same_rep = sum(
        strip(b.get("report.json", {})) == strip(w.get("report.json", {})) for b, w in zip(base, with_plugin)
    )
    n = len(base)
    check(same_pre == n, f"pre.json: every other key identical without/with plugin ({same_pre}/{n} analyses)")
    check(same_rep == n, f"report.json: every other key identical without/with plugin ({same_rep}/{n} analyses)")
    for stage in ("pre", "post"):
        tb = [b.get(f"t_{stage}", 0.0) for b in base]
        tw = [w.get(f"t_{stage}", 0.0) for w in with_plugin]
        mb, mw = statistics.median(tb), statistics.median(tw)
        print(
            f"{stage} stage, {n} analyses: {sum(tb):.2f} s without the plugin, {sum(tw):.2f} s with it "
            f"(ratio {sum(tw) / sum(tb) if sum(tb) else float('nan'):.1f}); median per analysis "
            f"{mb * 1000:.0f} ms vs {mw * 1000:.0f} ms (+{(mw - mb) * 1000:.0f} ms)"
        )

    # settings errors reach Cuckoo's processing errors, for an ELF and a non-ELF target
    conf = cwd / "conf" / "processing" / "telfhash.yaml"
    conf.write_text(conf.read_text().replace("threshold: 50", "threshold: lots"))
    ids2 = submit(cwd, [subs[0], text])
    out2 = run_phase(src, cwd, [(aid, []) for aid in ids2])
    for aid in ids2:
        res = out2["results"][aid]
        errs = res.get("analysis.json", {}).get("errors", {}).get("errors", [])
        check(
            any("telfhash settings" in e and "threshold" in e for e in errs),
            f"{aid}: settings error in analysis.json errors: {[e for e in errs if 'telfhash' in e][:1]}",
        )

    # web pages
    try:
        pages = web_pages(cwd, ids[0], results[ids[0]].get("task_id"))
        th = results[ids[0]]["pre.json"]["telfhash"]["target"]["telfhash"]
        check(th in pages["analysis"], "analysis page shows the telfhash")
        dvals = [x["telfhash"] for x in results[ids[0]]["report.json"]["telfhash"]["dropped"] if x.get("telfhash")]
        check(all(v in pages.get("task", "") for v in dvals), "task page shows the dropped files' telfhash")
    except Exception as exc:  # noqa: BLE001 -- report, do not hide
        check(False, f"web pages: {type(exc).__name__}: {exc}")

    if not args.keep_dropins:
        inst.uninstall(cwd)
    print(
        f"\n{len(ids) + len(ids2) + len(base_ids)} analyses in {time.monotonic() - t0:.1f} s "
        f"(processing of {len(ids)} analyses with the plugin: {t_proc:.1f} s)"
    )
    print(f"{len(failures)} checks failed" if failures else "all checks passed")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
