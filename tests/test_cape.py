"""The CAPEv2 processing module, run by CAPE's own processing engine.

CAPE's real files, pinned unmodified as text fixtures (tests/fixtures/cape, origin and commit in
ORIGIN.md), are laid out as a CAPE checkout in a temporary folder: the configuration reader
(``lib/cuckoo/common/config.py`` and what it imports), ``path_utils.py``, ``conf/default``, and
the three files the processing engine lives in -- ``lib/cuckoo/common/abstracts.py`` (the
``Processing`` base class), ``lib/cuckoo/core/plugins.py`` (``import_package``,
``load_plugins``, ``RunProcessing``) and ``lib/cuckoo/common/utils.py`` (``get_options``,
``get_memdump_path``, ...).  Those three import much of CAPE (its SQLAlchemy database layer,
MITRE data, DNS resolver, Pillow, requests) for parts that processing never touches, so they
are loaded statement by statement from the real text: every top-level statement of
``abstracts.py`` and ``plugins.py`` runs except the ones listed in ``ABSTRACTS_SKIPPED`` and
``PLUGINS_SKIPPED`` (with the reason), and of ``utils.py`` the statements in ``UTILS_USED``.
The code that runs is CAPE's text, compiled from the pinned file (tracebacks show its lines);
the tests check that every listed statement is still in the file, so a refreshed fixture that
moves things fails loudly.

The module file and drop-in are written by ``telfhash-cape install``; a small "builder" module
(order 1) contributes the ``dropped`` list the way CAPE's own modules do before ours runs.
``run_processing`` does what ``utils/process.py`` does: results start as
``{"statistics": {...}}``, ``import_package(modules.processing)``, then
``RunProcessing(task, results).run()`` on ``storage/analyses/<id>`` of the tree.  What CAPE
logs at WARNING or above (a module that raised, could not be imported, ...) is returned as the
list of failures.

Expected digests are the reference tool's (corpus manifest); expected groups and neighbour
distances come from py-tlsh directly, pair by pair.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import importlib
import io
import json
import logging
import os
import shutil
import sys
import types
from pathlib import Path

import corpus
import pytest
import tlsh
from telfhash_plugins.cape import install as inst
from telfhash_plugins.cape.cli import main as cape_main

FIX = Path(__file__).parent / "fixtures" / "cape"

# ----------------------------------------------------------------------------- CAPE's own code

# Top-level statements of the real abstracts.py that are not run (first line -> why).  Nothing
# that Processing, or the class statements themselves, use at definition time.
ABSTRACTS_SKIPPED = {
    "import PIL": "third-party (Pillow); screenshots of Machinery only",
    "import requests": "third-party; Signature/Feed downloads only",
    "from data.dnsbl import dnsbl_servers": "CAPE data list; Signature only",
    "from lib.cuckoo.common.integrations.mitre import mitre_load": "CAPE's MITRE ATT&CK integration; signatures only",
    "from lib.cuckoo.common.url_validate import url as url_validator": "Signature only",
    "from lib.cuckoo.core.database import Database, _Database": "CAPE's database layer (SQLAlchemy ORM); Machinery only",
    "from lib.cuckoo.core.data.task import Task": "SQLAlchemy ORM model; Machinery only",
    "from lib.cuckoo.core.data.machines import Machine": "SQLAlchemy ORM model; Machinery only",
    "mitre, HAVE_MITRE, _ = mitre_load(repconf.mitre.enabled)": "needs the MITRE loader above",
    "myresolver = dns.resolver.Resolver()": "third-party (dnspython); Signature only",
    "myresolver.timeout = 5.0": "dnspython resolver",
    "myresolver.lifetime = 5.0": "dnspython resolver",
    'myresolver.domain = dns.name.Name("google-public-dns-a.google.com")': "dnspython resolver",
    'myresolver.nameserver = ["8.8.8.8"]': "dnspython resolver",
}
# The same for the real plugins.py: everything of the processing engine runs.
PLUGINS_SKIPPED = {
    "from lib.cuckoo.common.mapTTPs import mapTTP": "signatures only",
    "from lib.cuckoo.common.scoring import calc_scoring": "signatures only",
    "from lib.cuckoo.core.database import Database": "CAPE's database layer (SQLAlchemy ORM)",
    "from utils.community_blocklist import blocklist": "community signatures' blocklist",
    "db = Database()": "database connection; RunProcessing does not use it",
    'if blocklist.get("signatures"):': "banned signatures; the list stays empty",
}
# Of the real utils.py (900 lines of helpers) only these statements run, besides its stdlib imports.
UTILS_USED = {
    "from data.family_detection_names import family_detection_names",
    "from lib.cuckoo.common.config import Config",
    "from lib.cuckoo.common.constants import CUCKOO_ROOT",
    "from lib.cuckoo.common.exceptions import CuckooOperationalError",
    "from lib.cuckoo.common.path_utils import path_exists, path_get_filename, path_is_dir, path_mkdir, path_read_file",
    "try: import re2 as re",
    "config = Config()",
    "HAVE_TMPFS = False",
    'if hasattr(config, "tmpfs"):',
    "log = logging.getLogger(__name__)",
    'CATEGORIES_NEEDING_VM: Final[Tuple[str]] = ("file", "url")',
    "def load_categories",
    "def get_memdump_path",
    "def create_folder",
    "def get_options",
    "def option_enabled",
    "def option_dict_enabled",
    "def add_family_detection",
}


def _key(node: ast.stmt, lines: list[str]) -> str:
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        return f"{'class' if isinstance(node, ast.ClassDef) else 'def'} {node.name}"
    if isinstance(node, ast.Try):
        return "try: " + lines[node.body[0].lineno - 1].strip()
    return lines[node.lineno - 1].strip()


def _stdlib_import(node: ast.stmt) -> bool:
    if isinstance(node, ast.Import):
        return all(a.name.split(".")[0] in sys.stdlib_module_names for a in node.names)
    if isinstance(node, ast.ImportFrom):
        return node.level == 0 and (node.module or "").split(".")[0] in sys.stdlib_module_names
    return False


def load_real(
    root: Path, name: str, *, skip: dict[str, str] | None = None, only: set[str] | None = None
) -> types.ModuleType:
    """Module ``name`` from the real CAPE file in ``root``: its top-level statements, run in order,
    except those in ``skip`` (or only stdlib imports and those in ``only``)."""
    path = root / (name.replace(".", "/") + ".py")
    text = path.read_text()
    lines = text.splitlines()
    mod = types.ModuleType(name)
    mod.__file__ = str(path)
    mod.__package__ = name.rpartition(".")[0]
    sys.modules[name] = mod
    nodes = [(node, _key(node, lines)) for node in ast.parse(text, str(path)).body]
    missing = set(skip or only or ()) - {key for _, key in nodes}
    assert not missing, f"{path.name} (refreshed fixture?) no longer has: {sorted(missing)}"
    for node, key in nodes:
        if skip is not None and key in skip:
            continue
        if only is not None and not _stdlib_import(node) and key not in only:
            continue
        exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), mod.__dict__)  # noqa: S102 (CAPE's pinned text)
    parent, _, child = name.rpartition(".")
    setattr(importlib.import_module(parent), child, mod)
    return mod


def load_cape(root: Path) -> types.ModuleType:
    """CAPE's processing engine (lib.cuckoo.core.plugins) from the real files in ``root``."""
    load_real(root, "lib.cuckoo.common.utils", only=UTILS_USED)
    load_real(root, "lib.cuckoo.common.abstracts", skip=ABSTRACTS_SKIPPED)
    return load_real(root, "lib.cuckoo.core.plugins", skip=PLUGINS_SKIPPED)


BUILDER = """import json
import os

from lib.cuckoo.common.abstracts import Processing


class Builder(Processing):
    \"\"\"Contributes the dropped-file list, as CAPE's own (order 1) modules do.\"\"\"

    key = "dropped"

    def run(self):
        with open(os.path.join(self.analysis_path, "dropped.json")) as fh:
            return json.load(fh)
"""


def make_cape_root(tmp: Path, abstracts_text: str | None = None) -> Path:
    """A CAPE checkout of the pinned real files (``abstracts_text`` replaces abstracts.py's text)."""
    root = tmp / "CAPEv2"
    for src in FIX.rglob("*"):
        rel = src.relative_to(FIX)
        if src.is_file() and (
            src.suffix == ".txt" and rel.parts[0] in ("lib", "modules", "data") or rel.parts[:2] == ("conf", "default")
        ):
            dest = root / (str(rel)[: -len(".txt")] if src.suffix == ".txt" else rel)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
    if abstracts_text is not None:
        (root / "lib/cuckoo/common/abstracts.py").write_text(abstracts_text)
    (root / "modules/processing/builder.py").write_text(BUILDER)
    (root / "conf/processing.conf").write_text("[builder]\nenabled = yes\n")
    return root


def _purge() -> None:
    for name in list(sys.modules):
        if name in ("lib", "modules", "data") or name.startswith(("lib.", "modules.", "data.")):
            del sys.modules[name]


class _Failures(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            msg += f" [{type(record.exc_info[1]).__name__}: {record.exc_info[1]}]"
        self.messages.append(f"{record.name}: {msg}")


def run_processing(root: Path, task: dict, results: dict, analysis_path: Path) -> list[str]:
    """What CAPE's utils/process.py does for a task; returns what CAPE logged at WARNING or above."""
    where = root / "storage" / "analyses" / str(task["id"])  # RunProcessing's analysis path
    where.parent.mkdir(parents=True, exist_ok=True)
    if where.is_symlink():
        where.unlink()
    if not where.exists():
        where.symlink_to(analysis_path)
    results.setdefault("statistics", {"processing": [], "signatures": [], "reporting": []})
    handler = _Failures()
    engine = logging.getLogger("lib.cuckoo.core.plugins")  # where RunProcessing logs a module's failure
    engine.addHandler(handler)
    printed = io.StringIO()
    _purge()
    sys.path.insert(0, str(root))
    try:
        plugins = load_cape(root)
        with contextlib.redirect_stdout(printed):  # import_plugin prints import errors
            plugins.import_package(importlib.import_module("modules.processing"))
        plugins.RunProcessing(task=task, results=results).run()
    finally:
        sys.path.remove(str(root))
        engine.removeHandler(handler)
        _purge()
    return handler.messages + [line for line in printed.getvalue().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- the analysis


def _pick(files: list[dict], label: str, arch: str) -> dict:
    for f in files:
        if f["label"] == label and f["arch"] == arch:
            return f
    pytest.skip(f"corpus lacks {label} for {arch}")


ELF_TYPE = "ELF 32-bit LSB executable, ARM, EABI5 version 1 (SYSV), dynamically linked"


def _fd(f: dict, path: Path) -> dict:
    return {
        "name": os.path.basename(f["path"]),
        "path": str(path),
        "size": f["size"],
        "sha256": f["sha256"],
        "md5": "0" * 32,
        "type": ELF_TYPE,
        "tlsh": "T1" + "A" * 70,
        "yara": [],
        "cape_yara": [],
    }


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
    dropped = [
        _fd(chosen[k], place(chosen[k], "files")) for k in ("d_fam_a2", "d_fam_b1", "d_chroot", "d_dash", "d_tnull")
    ]
    dropped += [
        {"name": "notes.txt", "path": str(text), "size": 16, "sha256": "1" * 64, "type": "ASCII text"},
        None,
        dict(_fd(chosen["d_chroot"], an / "files" / "gone"), sha256="2" * 64, name="gone"),  # path no longer exists
        # the same file as the first dropped one, reached twice (e.g. dropped and extracted)
        _fd(chosen["d_fam_a2"], an / "files" / chosen["d_fam_a2"]["sha256"]),
    ]
    (an / "dropped.json").write_text(json.dumps(dropped))
    nested = _fd(chosen["nested"], place(chosen["nested"], "selfextracted"))
    payload = dict(
        _fd(chosen["payload"], place(chosen["payload"], "CAPE")),
        selfextract={
            "7zip": {
                "extracted_files": [nested, {"name": "x.txt", "type": "data", "path": "/nonexistent"}],
                "extracted_files_time": 0.1,
                "password": "",
            }
        },
    )
    results = {
        "info": {"id": 17, "category": "file"},
        "statistics": {"processing": []},
        "target": {"category": "file", "file": _fd(chosen["target"], an / "binary")},
        "CAPE": {"payloads": [payload, None], "configs": []},
        "procdump": [_fd(chosen["procdump"], place(chosen["procdump"], "procdump"))],
        "suricata": {
            "files": [
                {"file_info": _fd(chosen["suricata"], place(chosen["suricata"], "files")), "id": 1},
                {"file_info": None},
            ],
            "alerts": [],
        },
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
        for b in keys[i + 1 :]:
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
    # CAPE's RunProcessing times every module it ran, in its order
    assert [m["name"] for m in enabled.pop("statistics")["processing"]] == ["Builder", "Telfhash"]
    assert [m["name"] for m in disabled.pop("statistics")["processing"]] == ["Builder"]
    assert _strip(enabled) == disabled
    # and the non-ELF dicts are untouched, None entries stay None
    assert enabled["dropped"][5] == {
        "name": "notes.txt",
        "path": str(analysis["dir"] / "files" / "notes.txt"),
        "size": 16,
        "sha256": "1" * 64,
        "type": "ASCII text",
    }
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
    digests = {
        f["sha256"]: f["reference"]["telfhash"] for f in chosen.values() if f["reference"]["telfhash"].startswith("t1")
    }
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
        "dropped": [
            "text",
            5,
            None,
            {"type": 7, "path": None},
            {"type": "ELF", "path": None},
            {"type": "ELF", "path": str(tmp_path)},
            {"type": "ELF", "path": "bad\x00path"},
            {"type": "ELF", "path": str(analysis["dir"] / "files" / "notes.txt"), "sha256": "3" * 64},
            {"type": "ELF", "path": 12},
        ],
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
    assert _strip({k: v for k, v in results.items() if k not in ("telfhash", "statistics")}) == before


def test_known_neighbours_from_an_index(cape_root, analysis, tmp_path):
    from telfhash_core.store.index import Index

    files = [
        f for f in corpus.files() if f["label"].startswith("iot-fam-") and f["reference"]["telfhash"].startswith("t1")
    ]
    files = [f for f in files if f["sha256"] != analysis["chosen"]["target"]["sha256"]]
    db = tmp_path / "known.db"
    with Index(db) as ix:
        ix.add_results(
            [
                {"sha256": f["sha256"], "file": f["path"], "telfhash": f["reference"]["telfhash"], "arch": f["arch"]}
                for f in files
            ],
            source="test",
        )
    conf = cape_root / inst.CONFIG_REL
    conf.write_text(
        conf.read_text().replace("index = \n", f"index = {db}\n").replace("max_neighbours = 10", "max_neighbours = 50")
    )
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
    conf.write_text(
        conf.read_text()
        .replace("max_file_size = 67108864", f"max_file_size = {small}")
        .replace("max_files = 500", "max_files = 3")
    )
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


# ----------------------------------------------------------------------------- contract breaks


def test_the_engine_is_capes_own_code(tmp_path):
    """The base class and the engine that run the module are compiled from the pinned CAPE text."""
    root = make_cape_root(tmp_path)
    _purge()
    sys.path.insert(0, str(root))
    try:
        plugins = load_cape(root)
        abstracts = sys.modules["lib.cuckoo.common.abstracts"]
        init = abstracts.Processing.__init__.__code__
        assert init.co_filename == str(root / "lib/cuckoo/common/abstracts.py")
        pinned = (FIX / "lib/cuckoo/common/abstracts.py.txt").read_text().splitlines()
        assert pinned[init.co_firstlineno - 1].strip() == "def __init__(self, results=None):"
        assert plugins.RunProcessing.process.__code__.co_filename == str(root / "lib/cuckoo/core/plugins.py")
        assert plugins.Processing is abstracts.Processing
    finally:
        sys.path.remove(str(root))
        _purge()


def test_a_run_signature_cape_does_not_call_is_caught(tmp_path, analysis):
    """CAPE calls ``run()`` without arguments: a module that wants one fails in CAPE's engine, and
    the harness reports it (so every test using ``_run`` would fail)."""
    root = make_cape_root(tmp_path)
    assert cape_main(["install", "--cape-root", str(root)]) == 0
    mod = root / inst.MODULE_REL
    mod.write_text(mod.read_text().replace("    def run(self):", "    def run(self, results):"))
    results = copy.deepcopy(analysis["results"])
    failures = run_processing(root, {"id": 17}, results, analysis["dir"])
    assert len(failures) == 1 and "Telfhash" in failures[0] and "TypeError" in failures[0], failures
    assert "telfhash" not in results and "telfhash" not in results["target"]["file"]


def test_a_base_class_without_results_is_caught(tmp_path, analysis):
    """If CAPE's ``Processing`` stopped handing the results dict to modules (``self.results``), the
    module could enrich nothing: the real base class is what makes the other tests pass."""
    text = (FIX / "lib/cuckoo/common/abstracts.py.txt").read_text()
    block = (
        "        self.task = None\n        self.options = None\n        self.results = results\n"  # Processing.__init__
    )
    assert text.count(block) == 1
    root = make_cape_root(tmp_path, text.replace(block, block.replace("= results", "= None")))
    assert cape_main(["install", "--cape-root", str(root)]) == 0
    results = copy.deepcopy(analysis["results"])
    assert run_processing(root, {"id": 17}, results, analysis["dir"]) == []
    assert results["telfhash"]["errors"] == ["no results dict to enrich"]
    assert not any("telfhash" in fd for _, fd in _elf_dicts(results))


def test_a_refreshed_fixture_that_moved_things_fails_loudly(tmp_path):
    text = (FIX / "lib/cuckoo/core/plugins.py.txt").read_text()
    root = make_cape_root(tmp_path)
    (root / "lib/cuckoo/core/plugins.py").write_text(text.replace("db = Database()\n", "db = Database(lazy=True)\n"))
    _purge()
    sys.path.insert(0, str(root))
    try:
        with pytest.raises(AssertionError, match="db = Database"):
            load_cape(root)
    finally:
        sys.path.remove(str(root))
        _purge()
