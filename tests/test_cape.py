"""The CAPEv2 processing module, run the way CAPE runs processing modules.

A temporary folder shaped like a CAPE checkout gets a stand-in ``lib/cuckoo/common/abstracts.py``
(the ``Processing`` base class as CAPE defines it: ``order = 1``, ``enabled = True``,
``__init__(results=None)``, ``set_options``/``set_task``/``set_path``, ``run``), the module
file and drop-in written by ``telfhash-cape install``, and a small "builder" module (order 1)
that contributes the ``dropped`` list the way CAPE's own modules do before ours runs.  The
harness below does what CAPE's ``RunProcessing`` does: imports every file of
``modules/processing``, registers the ``Processing`` subclasses, sorts them by the class
attribute ``order``, looks the options up in the section named after the module in which the
class is defined, skips disabled ones, calls ``set_path``/``set_task``/``set_options``/``run``
and merges ``{key: data}`` into the results.

Expected digests are the reference tool's (corpus manifest); expected groups and neighbour
distances come from py-tlsh directly, pair by pair.
"""

from __future__ import annotations

import configparser
import copy
import importlib
import inspect
import json
import os
import pkgutil
import shutil
import sys
from pathlib import Path

import pytest
import tlsh

import corpus
from telfhash_plugins.cape import install as inst
from telfhash_plugins.cape.cli import main as cape_main

# ----------------------------------------------------------------------------- CAPE stand-ins

ABSTRACTS = '''"""Stand-in for CAPEv2's lib/cuckoo/common/abstracts.py: the Processing base class only."""
import os


class Processing:
    """Base class of processing modules (as in CAPEv2)."""

    order = 1
    enabled = True

    def __init__(self, results=None):
        self.analysis_path = ""
        self.logs_path = ""
        self.task = None
        self.options = None
        self.results = results

    def set_options(self, options):
        self.options = options

    def set_task(self, task):
        self.task = task

    def set_path(self, analysis_path):
        self.analysis_path = analysis_path
        self.log_path = os.path.join(analysis_path, "analysis.log")
        self.file_path = os.path.realpath(os.path.join(analysis_path, "binary"))
        self.dropped_path = os.path.join(analysis_path, "files")
        self.files_metadata = os.path.join(analysis_path, "files.json")
        self.procdump_path = os.path.join(analysis_path, "procdump")
        self.CAPE_path = os.path.join(analysis_path, "CAPE")
        self.logs_path = os.path.join(analysis_path, "logs")
        self.self_extracted = os.path.join(analysis_path, "selfextracted")

    def run(self):
        raise NotImplementedError
'''

BUILDER = '''import json
import os

from lib.cuckoo.common.abstracts import Processing


class Builder(Processing):
    """Contributes the dropped-file list, as CAPE's own (order 1) modules do."""

    key = "dropped"

    def run(self):
        with open(os.path.join(self.analysis_path, "dropped.json")) as fh:
            return json.load(fh)
'''


class Dictionary(dict):
    """CAPE's options object: a dict with attribute access."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _value(cp: configparser.ConfigParser, section: str, name: str):
    # CAPE's Config: "0"/"1" stay integers, then booleans, integers, strings
    raw = cp.get(section, name)
    if raw not in ("0", "1"):
        try:
            return cp.getboolean(section, name)
        except ValueError:
            pass
    try:
        return cp.getint(section, name)
    except ValueError:
        return raw


def cape_processing_config(root: Path) -> dict[str, Dictionary]:
    files = [root / "conf" / "processing.conf", *sorted((root / "conf" / "processing.conf.d").glob("*.conf")),
             root / "custom" / "conf" / "processing.conf",
             *sorted((root / "custom" / "conf" / "processing.conf.d").glob("*.conf"))]
    cp = configparser.ConfigParser()
    cp.read([str(f) for f in files if f.is_file()])
    return {s: Dictionary({k: _value(cp, s, k) for k, _ in cp.items(s)}) for s in cp.sections()}


def make_cape_root(tmp: Path) -> Path:
    root = tmp / "CAPEv2"
    for pkg in ("lib", "lib/cuckoo", "lib/cuckoo/common", "modules", "modules/processing"):
        (root / pkg).mkdir(parents=True, exist_ok=True)
        (root / pkg / "__init__.py").write_text("")
    (root / "lib/cuckoo/common/abstracts.py").write_text(ABSTRACTS)
    (root / "modules/processing/builder.py").write_text(BUILDER)
    (root / "conf").mkdir()
    (root / "conf/processing.conf").write_text("[builder]\nenabled = yes\n")
    return root


def _purge() -> None:
    for name in list(sys.modules):
        if name in ("lib", "modules") or name.startswith(("lib.", "modules.")):
            del sys.modules[name]


def run_processing(root: Path, task: dict, results: dict, analysis_path: Path) -> list[str]:
    """What CAPE's RunProcessing.run/process do; returns the failures it would log."""
    failures: list[str] = []
    cfg = cape_processing_config(root)
    _purge()
    sys.path.insert(0, str(root))
    try:
        abstracts = importlib.import_module("lib.cuckoo.common.abstracts")
        package = importlib.import_module("modules.processing")
        plugins = []
        for _, name, ispkg in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            if ispkg:
                continue
            short = name.rsplit(".", 1)[1]
            if short in cfg and cfg[short].get("enabled", False) is False:
                continue  # CAPE does not even import disabled modules
            module = importlib.import_module(name)
            for _, value in inspect.getmembers(module, inspect.isclass):
                if issubclass(value, abstracts.Processing) and value is not abstracts.Processing:
                    plugins.append(value)
        plugins.sort(key=lambda m: m.order)
        for cls in plugins:
            current = cls(results)
            module_name = inspect.getmodule(current).__name__.rsplit(".", 1)[-1]
            options = cfg.get(module_name)
            if options is None or not options.enabled:
                continue
            current.set_path(str(analysis_path))
            current.set_task(task)
            current.set_options(options)
            try:
                data = current.run()
            except Exception as exc:  # CAPE logs and goes on
                failures.append(f"{cls.__name__}: {type(exc).__name__}: {exc}")
                continue
            results.update({current.key: data})
    finally:
        sys.path.remove(str(root))
        _purge()
    return failures


# ----------------------------------------------------------------------------- the analysis


def _pick(files: list[dict], label: str, arch: str) -> dict:
    for f in files:
        if f["label"] == label and f["arch"] == arch:
            return f
    pytest.skip(f"corpus lacks {label} for {arch}")


ELF_TYPE = "ELF 32-bit LSB executable, ARM, EABI5 version 1 (SYSV), dynamically linked"


def _fd(f: dict, path: Path) -> dict:
    return {"name": os.path.basename(f["path"]), "path": str(path), "size": f["size"], "sha256": f["sha256"],
            "md5": "0" * 32, "type": ELF_TYPE, "tlsh": "T1" + "A" * 70, "yara": [], "cape_yara": []}


@pytest.fixture(scope="module")
def analysis(tmp_path_factory):
    files = corpus.files()
    tmp = tmp_path_factory.mktemp("cape")
    an = tmp / "storage" / "analyses" / "17"
    for d in ("files", "CAPE", "procdump", "selfextracted", "reports"):
        (an / d).mkdir(parents=True)

    def place(f: dict, folder: str) -> Path:
        dest = an / folder / f["sha256"]
        shutil.copyfile(f["abspath"], dest)
        return dest

    chosen = {
        "target": _pick(files, "iot-fam-a:v1_dyn", "mips"),
        "d_fam_a2": _pick(files, "iot-fam-a:v2_dyn", "armel"),
        "d_fam_b1": _pick(files, "iot-fam-b:v1_dyn", "i386"),
        "d_chroot": _pick(files, "coreutils:/usr/sbin/chroot", "amd64"),
        "d_dash": _pick(files, "klibc-utils:/usr/lib/klibc/bin/false", "amd64"),
        "d_tnull": _pick(files, "coreutils:/usr/libexec/coreutils/libstdbuf.so", "amd64"),
        "payload": _pick(files, "iot-fam-a:v1_dyn", "amd64"),
        "nested": _pick(files, "jq:/usr/bin/jq", "amd64"),
        "procdump": _pick(files, "iproute2:/usr/bin/lnstat", "i386"),
        "suricata": _pick(files, "mosquitto:/usr/bin/mosquitto_passwd", "armhf"),
    }
    shutil.copyfile(chosen["target"]["abspath"], an / "binary")
    text = an / "files" / "notes.txt"
    text.write_text("not an ELF file\n")
    dropped = [_fd(chosen[k], place(chosen[k], "files")) for k in ("d_fam_a2", "d_fam_b1", "d_chroot", "d_dash", "d_tnull")]
    dropped += [
        {"name": "notes.txt", "path": str(text), "size": 16, "sha256": "1" * 64, "type": "ASCII text"},
        None,
        dict(_fd(chosen["d_chroot"], an / "files" / "gone"), sha256="2" * 64, name="gone"),  # path no longer exists
        # the same file as the first dropped one, reached twice (e.g. dropped and extracted)
        _fd(chosen["d_fam_a2"], an / "files" / chosen["d_fam_a2"]["sha256"]),
    ]
    (an / "dropped.json").write_text(json.dumps(dropped))
    nested = _fd(chosen["nested"], place(chosen["nested"], "selfextracted"))
    payload = dict(_fd(chosen["payload"], place(chosen["payload"], "CAPE")),
                   selfextract={"7zip": {"extracted_files": [nested, {"name": "x.txt", "type": "data", "path": "/nonexistent"}],
                                         "extracted_files_time": 0.1, "password": ""}})
    results = {
        "info": {"id": 17, "category": "file"},
        "statistics": {"processing": []},
        "target": {"category": "file", "file": _fd(chosen["target"], an / "binary")},
        "CAPE": {"payloads": [payload, None], "configs": []},
        "procdump": [_fd(chosen["procdump"], place(chosen["procdump"], "procdump"))],
        "suricata": {"files": [{"file_info": _fd(chosen["suricata"], place(chosen["suricata"], "files")), "id": 1},
                               {"file_info": None}], "alerts": []},
        "behavior": {"processes": []},
    }
    return {"dir": an, "results": results, "chosen": chosen, "tmp": tmp}


def _strip(obj):
    """A copy without the keys the module adds."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in ("telfhash", "telfhash_error")}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _elf_dicts(results) -> list[tuple[str, dict]]:
    out = []

    def walk(fd, where):
        if not isinstance(fd, dict):
            return
        if "ELF" in str(fd.get("type")):
            out.append((where, fd))
        for tool, block in (fd.get("selfextract") or {}).items():
            for j, sub in enumerate(block.get("extracted_files") or []):
                walk(sub, f"{where}.selfextract.{tool}.extracted_files[{j}]")

    walk(results["target"].get("file"), "target.file")
    for i, fd in enumerate(results.get("dropped") or []):
        walk(fd, f"dropped[{i}]")
    for i, fd in enumerate(results.get("procdump") or []):
        walk(fd, f"procdump[{i}]")
    for i, fd in enumerate(results["CAPE"]["payloads"]):
        walk(fd, f"CAPE.payloads[{i}]")
    for i, e in enumerate(results["suricata"]["files"]):
        walk(e.get("file_info"), f"suricata.files[{i}].file_info")
    return out


def _components(digests: dict[str, str], threshold: int) -> set[frozenset]:
    """Groups (size >= 2) by brute force with py-tlsh: connected components of diff <= T."""
    keys = sorted(digests)
    parent = {k: k for k in keys}

    def find(k):
        while parent[k] != k:
            k = parent[k]
        return k

    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            if tlsh.diff("T1" + digests[a][2:].upper(), "T1" + digests[b][2:].upper()) <= threshold:
                parent[find(a)] = find(b)
    comps: dict[str, set] = {}
    for k in keys:
        comps.setdefault(find(k), set()).add(k)
    return {frozenset(c) for c in comps.values() if len(c) > 1}


@pytest.fixture()
def cape_root(tmp_path):
    root = make_cape_root(tmp_path)
    assert cape_main(["install", "--cape-root", str(root), "--threshold", "120"]) == 0
    return root


def _run(root, analysis, task=None):
    results = copy.deepcopy(analysis["results"])
    failures = run_processing(root, task or {"id": 17, "category": "file", "options": ""}, results, analysis["dir"])
    assert failures == []
    return results


# ----------------------------------------------------------------------------- tests


def test_every_elf_file_dict_gets_the_reference_telfhash(cape_root, analysis):
    results = _run(cape_root, analysis)
    by_sha = {f["sha256"]: f for f in analysis["chosen"].values()}
    elf = _elf_dicts(results)
    assert len(elf) == 12  # target, 7 dropped ELF dicts, payload, nested, procdump, suricata
    for where, fd in elf:
        if fd["name"] == "gone":
            assert "telfhash" not in fd and fd["telfhash_error"] == "not_found", where
            continue
        ref = by_sha[fd["sha256"]]["reference"]["telfhash"]
        assert fd["telfhash"] == ref, where
        assert ("telfhash_error" in fd) == (not ref.startswith("t1")), where
    # the builder ran first (order 1): the dropped list it contributed was enriched
    assert results["dropped"][0]["telfhash"].startswith("t1")


def test_nothing_else_changes(cape_root, analysis, tmp_path):
    enabled = _run(cape_root, analysis)
    conf = cape_root / inst.CONFIG_REL
    conf.write_text(conf.read_text().replace("enabled = yes", "enabled = no"))
    disabled = _run(cape_root, analysis)
    assert "telfhash" not in disabled
    assert not any("telfhash" in fd or "telfhash_error" in fd for _, fd in _elf_dicts(disabled))
    summary = enabled.pop("telfhash")
    assert summary["elf_files"] >= 1
    assert _strip(enabled) == disabled
    # and the non-ELF dicts are untouched, None entries stay None
    assert enabled["dropped"][5] == {"name": "notes.txt", "path": str(analysis["dir"] / "files" / "notes.txt"), "size": 16,
                                     "sha256": "1" * 64, "type": "ASCII text"}
    assert enabled["dropped"][6] is None and enabled["CAPE"]["payloads"][1] is None


def test_summary_files_and_groups(cape_root, analysis):
    results = _run(cape_root, analysis)
    s = results["telfhash"]
    chosen = analysis["chosen"]
    assert s["threshold"] == 120 and s["errors"] == []
    by_sha = {f["sha256"]: f for f in s["files"]}
    # each distinct file once (the duplicate dropped entry folds into the first)
    assert len(s["files"]) == len(chosen) + 1 == s["elf_files"]
    assert by_sha[chosen["d_fam_a2"]["sha256"]]["where"] == ["dropped[0]", "dropped[8]"]
    assert by_sha["2" * 64]["error"] == "not_found"
    for f in chosen.values():
        ref = f["reference"]["telfhash"]
        assert by_sha[f["sha256"]]["telfhash"] == (ref if ref.startswith("t1") else None)
    assert s["hashed"] == sum(f["reference"]["telfhash"].startswith("t1") for f in chosen.values())
    # groups: brute force over the reference digests with py-tlsh
    digests = {f["sha256"]: f["reference"]["telfhash"] for f in chosen.values() if f["reference"]["telfhash"].startswith("t1")}
    expected = _components(digests, 120)
    assert expected, "the chosen files should form at least one group at threshold 120"
    got = {frozenset(m["sha256"] for m in g["members"]) for g in s["groups"]}
    assert got == expected and s["grouping"] == "pairwise"
    for g in s["groups"]:
        ds = [digests[m["sha256"]] for m in g["members"]]
        assert g["max_distance"] == max(tlsh.diff("T1" + a[2:].upper(), "T1" + b[2:].upper()) for a in ds for b in ds)


def test_url_task_without_target_file(cape_root, analysis):
    results = copy.deepcopy(analysis["results"])
    results["target"] = {"category": "url", "url": "http://example.invalid/x"}
    results["info"]["category"] = "url"
    del results["CAPE"], results["procdump"], results["suricata"]
    failures = run_processing(cape_root, {"id": 17, "category": "url"}, results, analysis["dir"])
    assert failures == []
    assert results["target"] == {"category": "url", "url": "http://example.invalid/x"}
    # the dropped files of a URL task are still enriched
    assert results["dropped"][0]["telfhash"] == analysis["chosen"]["d_fam_a2"]["reference"]["telfhash"]
    assert results["telfhash"]["elf_files"] == 6  # 5 files + the missing one; the duplicate folds


def test_hostile_shapes_never_raise(cape_root, analysis, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    results = {
        "target": {"category": "file", "file": {"type": "ELF", "path": str(fifo)}},
        "dropped": ["text", 5, None, {"type": 7, "path": None}, {"type": "ELF", "path": None},
                    {"type": "ELF", "path": str(tmp_path)}, {"type": "ELF", "path": "bad\x00path"},
                    {"type": "ELF", "path": str(analysis["dir"] / "files" / "notes.txt"), "sha256": "3" * 64},
                    {"type": "ELF", "path": 12}],
        "procdump": {"not": "a list"},
        "CAPE": [],
        "suricata": {"files": [None, {"file_info": "x"}, {}]},
    }
    before = copy.deepcopy(results)
    (tmp_path / "dropped.json").write_text(json.dumps(results.pop("dropped")))
    failures = run_processing(cape_root, {"id": 1}, results, tmp_path)
    assert failures == []
    errs = {i: results["dropped"][i].get("telfhash_error") for i in (4, 5, 6, 7, 8)}
    assert errs == {4: "no_path", 5: "directory", 6: "no_path", 7: "not_elf", 8: "no_path"}
    assert results["dropped"][7]["telfhash"] == "-"  # what the reference prints for a non-ELF file
    assert results["target"]["file"]["telfhash_error"] == "not_regular"
    assert _strip({k: v for k, v in results.items() if k != "telfhash"}) == before


def test_known_neighbours_from_an_index(cape_root, analysis, tmp_path):
    from telfhash_core.store.index import Index

    files = [f for f in corpus.files() if f["label"].startswith("iot-fam-") and f["reference"]["telfhash"].startswith("t1")]
    files = [f for f in files if f["sha256"] != analysis["chosen"]["target"]["sha256"]]
    db = tmp_path / "known.db"
    with Index(db) as ix:
        ix.add_results([{"sha256": f["sha256"], "file": f["path"], "telfhash": f["reference"]["telfhash"], "arch": f["arch"]}
                        for f in files], source="test")
    conf = cape_root / inst.CONFIG_REL
    conf.write_text(conf.read_text().replace("index = \n", f"index = {db}\n").replace("max_neighbours = 10", "max_neighbours = 50"))
    results = _run(cape_root, analysis)
    s = results["telfhash"]
    assert s["index"]["entries"] == len(files) and s["errors"] == []
    target = analysis["chosen"]["target"]
    item = next(f for f in s["files"] if f["sha256"] == target["sha256"])
    q = "T1" + target["reference"]["telfhash"][2:].upper()
    expected = sorted((tlsh.diff(q, "T1" + f["reference"]["telfhash"][2:].upper()), f["sha256"]) for f in files)
    expected = [(d, h) for d, h in expected if d <= 120]
    assert expected, "some iot-fam files should be within 120 of the target"
    got = [(m["distance"], m["sha256"]) for m in item["known"]]
    assert sorted(got) == expected


def test_missing_index_is_reported_not_raised(cape_root, analysis, tmp_path):
    conf = cape_root / inst.CONFIG_REL
    conf.write_text(conf.read_text().replace("index = \n", f"index = {tmp_path / 'none.db'}\n"))
    results = _run(cape_root, analysis)
    s = results["telfhash"]
    assert "error" in s["index"] and any("none.db" in e for e in s["errors"])
    assert not (tmp_path / "none.db").exists()
    assert results["target"]["file"]["telfhash"] == analysis["chosen"]["target"]["reference"]["telfhash"]


def test_size_cap_and_max_files(cape_root, analysis):
    conf = cape_root / inst.CONFIG_REL
    small = min(f["size"] for f in analysis["chosen"].values())
    conf.write_text(conf.read_text().replace("max_file_size = 67108864", f"max_file_size = {small}")
                    .replace("max_files = 500", "max_files = 3"))
    results = _run(cape_root, analysis)
    s = results["telfhash"]
    errs = [f.get("error") for f in s["files"]]
    assert errs[3:] == ["skipped"] * (len(errs) - 3)
    for f, size in zip(s["files"][:3], [analysis["chosen"][k]["size"] for k in ("target", "d_fam_a2", "d_fam_b1")]):
        assert (f.get("error") == "too_large") == (size > small)


def test_module_not_importable_returns_an_error(tmp_path, analysis):
    """With telfhash-core missing from CAPE's environment the module reports it, CAPE goes on."""
    root = make_cape_root(tmp_path)
    assert cape_main(["install", "--cape-root", str(root)]) == 0
    saved = {k: v for k, v in sys.modules.items() if k.startswith("telfhash_plugins.cape")}
    try:
        for k in saved:
            sys.modules[k] = None  # makes "import telfhash_plugins.cape.enrich" fail
        results = copy.deepcopy(analysis["results"])
        failures = run_processing(root, {"id": 17}, results, analysis["dir"])
    finally:
        sys.modules.update(saved)
    assert failures == []
    assert "not importable" in results["telfhash"]["errors"][0]
    assert "telfhash" not in results["target"]["file"]


def test_disabled_section_is_never_imported(tmp_path, analysis):
    root = make_cape_root(tmp_path)
    assert cape_main(["install", "--cape-root", str(root), "--disabled"]) == 0
    (root / inst.MODULE_REL).write_text((root / inst.MODULE_REL).read_text() + "\nraise RuntimeError('imported')\n")
    results = copy.deepcopy(analysis["results"])
    assert run_processing(root, {"id": 17}, results, analysis["dir"]) == []
    assert "telfhash" not in results


def test_groups_through_telfhash_core_cluster(analysis, monkeypatch):
    """Above PAIRWISE_LIMIT digests the groups come from telfhash_core.similarity.cluster: same groups."""
    en = importlib.import_module("telfhash_plugins.cape.enrich")

    monkeypatch.setattr(en, "PAIRWISE_LIMIT", 0)
    results = copy.deepcopy(analysis["results"])
    results["dropped"] = json.loads((analysis["dir"] / "dropped.json").read_text())
    s = en.enrich(results, en.Settings(threshold=120), str(analysis["dir"]))
    assert s["grouping"] == "telfhash_core.similarity.cluster"
    chosen = analysis["chosen"].values()
    digests = {f["sha256"]: f["reference"]["telfhash"] for f in chosen if f["reference"]["telfhash"].startswith("t1")}
    assert {frozenset(m["sha256"] for m in g["members"]) for g in s["groups"]} == _components(digests, 120)
