"""The Cuckoo 3 adapter against Cuckoo 3's own code, pinned unmodified in tests/fixtures/cuckoo3.

Cuckoo 3 is not on PyPI; these contract tests import its real ``storage``, ``config``,
``packages`` (plugin discovery), ``strictcontainer``, ``errors``, ``log`` and ``abtracts`` modules
from the fixtures and run the adapter's plugins with them.  ``benchmarks/cuckoo3_real.py`` runs the
same plugins inside a full Cuckoo 3 installation.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest

FIX = Path(__file__).resolve().parent / "fixtures"
PINNED = FIX / "cuckoo3" / "src"
ELF_META = json.loads((FIX / "fixtures.json").read_text())["files"]
ELVES = {Path(f["fixture"]).name: f for f in ELF_META}
AMD64 = ELVES["amd64__iproute2__usr__lib__x86_64-linux-gnu__tc__q_atm.so"]
NUKE = ELVES["amd64__klibc-utils__usr__lib__klibc__bin__nuke"]
SYNC = ELVES["amd64__klibc-utils__usr__lib__klibc__bin__sync"]  # reference: tnull
AID = "20260101-ABCDEF"
TID = f"{AID}_1"


def _site(dest: Path) -> Path:
    """Cuckoo's pinned files laid out as an importable ``cuckoo`` package under ``dest``."""
    for src in PINNED.rglob("*.txt"):
        rel = src.relative_to(PINNED)
        parts = rel.parts[1:]  # drop common/, processing/ (the distribution folders)
        out = dest.joinpath(*parts).with_suffix("")  # x.py.txt -> x.py
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, out)
    return dest


def _forget():
    for name in list(sys.modules):
        if name == "cuckoo" or name.startswith(("cuckoo.", "telfhash_plugins.cuckoo3")):
            del sys.modules[name]
        if name == "telfhash_plugins.cape.cuckoo3":
            del sys.modules[name]


@pytest.fixture
def cuckoo(tmp_path, monkeypatch):
    """Cuckoo 3's pinned modules importable, a Cuckoo working directory set, and the adapter's
    modules imported afresh against them."""
    site = _site(tmp_path / "site")
    _forget()
    monkeypatch.syspath_prepend(str(site))
    if importlib.util.find_spec("sflock") is None:  # imported by storage.py, not used by what is tested
        monkeypatch.setitem(sys.modules, "sflock", types.ModuleType("sflock"))
    if importlib.util.find_spec("vt") is None:  # strictcontainer.py: isinstance(obj, WhistleBlowerDict)
        vt, vto = types.ModuleType("vt"), types.ModuleType("vt.object")
        vto.WhistleBlowerDict = type("WhistleBlowerDict", (dict,), {})
        vt.object = vto
        monkeypatch.setitem(sys.modules, "vt", vt)
        monkeypatch.setitem(sys.modules, "vt.object", vto)
    storage = importlib.import_module("cuckoo.common.storage")
    assert storage.__file__.startswith(str(site)), storage.__file__
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / ".cuckoocwd").touch()
    (cwd / "conf" / "processing").mkdir(parents=True)
    monkeypatch.delenv("CUCKOO_CWD", raising=False)
    storage.cuckoocwd.set(cwd, skip_migration_check=True)
    storage.AnalysisPaths.path(AID).mkdir(parents=True)
    storage.TaskPaths.path(TID).mkdir(parents=True)
    proc = importlib.import_module("telfhash_plugins.cuckoo3.processor")
    assert proc.HAVE_CUCKOO3
    proc.reload_settings()
    ns = SimpleNamespace(
        site=site,
        cwd=cwd,
        storage=storage,
        config=importlib.import_module("cuckoo.common.config"),
        packages=importlib.import_module("cuckoo.common.packages"),
        sc=importlib.import_module("cuckoo.common.strictcontainer"),
        errors=importlib.import_module("cuckoo.common.errors"),
        log=importlib.import_module("cuckoo.common.log"),
        abtracts=importlib.import_module("cuckoo.processing.abtracts"),
        proc=proc,
        install=importlib.import_module("telfhash_plugins.cuckoo3.install"),
        tconfig=importlib.import_module("telfhash_plugins.cuckoo3.config"),
    )
    yield ns
    proc._close_hasher()  # the hashing worker this module started
    for logger in getattr(ns, "_loggers", []):
        logger.close()
    _forget()


def _store(cu, fixture: dict) -> str:
    """Put a file into Cuckoo's binaries store, as identification does; its SHA-256."""
    sha = fixture["sha256"]
    path, folder = cu.storage.Binaries.path(cu.storage.Paths.binaries(), sha)
    os.makedirs(folder, exist_ok=True)
    shutil.copyfile(FIX / fixture["fixture"], path)
    return sha


def _target(cu, sha: str, filename: str, filetype: str = "ELF 64-bit LSB shared object, x86-64") -> object:
    return cu.sc.TargetFile(
        filename=filename,
        orig_filename=filename,
        platforms=[],
        size=1,
        filetype=filetype,
        media_type="application/x-sharedlib",
        sha512="",
        sha256=sha,
        sha1="",
        md5="",
        extrpath=[],
        container=False,
    )


class _Result:  # the store/get/contains interface of cuckoo.processing.worker.ProcessingResult
    def __init__(self, **kw):
        self._r = dict(kw)

    def store(self, key, value):
        if key in self._r:
            raise KeyError(key)
        self._r[key] = value

    def get(self, key, default=None):
        return self._r.get(key, default)

    def __contains__(self, key):
        return key in self._r


def _ctx(cu, stage: str, **result):
    logger = cu.log.AnalysisLogger("test", AID) if stage == "pre" else cu.log.TaskLogger("test", TID)
    cu.__dict__.setdefault("_loggers", []).append(logger)
    return SimpleNamespace(
        stage=stage,
        log=logger,
        errtracker=cu.errors.ErrorTracker(),
        result=_Result(**result),
        analysis=SimpleNamespace(id=AID, category="file"),
        task=SimpleNamespace(id=TID),
    )


def _plugin(cu, package: str, base):
    """Write our drop-in into the pinned plugin package and let Cuckoo's loader find it."""
    folder = cu.install.package_dir(package)
    (folder / "telfhash.py").write_text(cu.install.dropin_text(package))
    found = cu.packages.enumerate_plugins(package, {}, base)
    return found


# ----------------------------------------------------------------------------- discovery


def test_cuckoos_loader_finds_exactly_the_dropin_classes(cuckoo):
    pre = _plugin(cuckoo, "cuckoo.processing.pre", cuckoo.abtracts.Processor)
    post = _plugin(cuckoo, "cuckoo.processing.post", cuckoo.abtracts.Processor)
    rep = _plugin(cuckoo, "cuckoo.processing.reporting", cuckoo.abtracts.Reporter)
    # one class each: the base classes defined in telfhash_plugins are not taken (packages.py:167)
    assert [c.__name__ for c in pre] == ["Telfhash"]
    assert [c.__name__ for c in post] == ["TelfhashDropped"]
    assert [c.__name__ for c in rep] == ["TelfhashJSON"]
    assert issubclass(pre[0], cuckoo.proc.TelfhashPre) and pre[0].KEY == "telfhash" and pre[0].CATEGORY == ["file"]
    assert pre[0].ORDER > 2  # after DetermineTarget (1) and CreateZip (2)
    # Cuckoo's Reporter registers a handler per stage it implements
    r = rep[0](SimpleNamespace())
    assert sorted(r.handlers) == ["post", "pre"] and rep[0].ORDER > 1  # after JSONDump (1)


def test_dropin_without_telfhash_core_defines_nothing(cuckoo, monkeypatch):
    monkeypatch.setitem(sys.modules, "telfhash_plugins.cuckoo3", None)  # import fails as if uninstalled
    ns: dict = {"__name__": "cuckoo.processing.pre.telfhash"}
    exec(compile(cuckoo.install.dropin_text("cuckoo.processing.pre"), "telfhash.py", "exec"), ns)  # noqa: S102 -- the drop-in text, run as an import would
    assert "Telfhash" not in ns


# ----------------------------------------------------------------------------- pre stage


def test_pre_hashes_the_identified_target_from_the_binaries_store(cuckoo):
    sha = _store(cuckoo, AMD64)
    (cls,) = _plugin(cuckoo, "cuckoo.processing.pre", cuckoo.abtracts.Processor)
    ctx = _ctx(cuckoo, "pre", target=_target(cuckoo, sha, "q_atm.so"))
    assert cls.enabled()
    cls.init_once()
    out = cls(ctx).start()
    assert out["target"]["telfhash"] == AMD64["reference"]["telfhash"]
    assert out["target"]["sha256"] == sha and out["files"][0]["telfhash"] == AMD64["reference"]["telfhash"]
    assert out["errors"] == [] and not ctx.errtracker.has_errors()
    json.dumps(out)  # what JSONDump and our reporter write must serialise


def test_archive_is_hashed_by_its_identified_target_not_the_submitted_file(cuckoo):
    """The submitted file (``binary``) is a zip; DetermineTarget's choice is the ELF inside."""
    sha = _store(cuckoo, NUKE)
    binary = cuckoo.storage.AnalysisPaths.submitted_file(AID, resolve=False)
    binary.write_bytes(b"PK\x03\x04" + b"\x00" * 200)
    (cls,) = _plugin(cuckoo, "cuckoo.processing.pre", cuckoo.abtracts.Processor)
    ctx = _ctx(cuckoo, "pre", target=_target(cuckoo, sha, "payload/sample.bin"))
    out = cls(ctx).start()
    assert out["target"]["telfhash"] == NUKE["reference"]["telfhash"]


def test_cuckoo_paths_are_pathlib_and_enrich_takes_them(cuckoo):
    """``AnalysisPaths.submitted_file`` returns a ``pathlib.Path`` (storage.py:440); a file dict
    holding one must still be hashed (it used to come back as ``no_path``)."""
    from telfhash_plugins.cape.enrich import Settings, enrich

    path = cuckoo.storage.AnalysisPaths.submitted_file(AID)
    assert isinstance(path, Path)
    shutil.copyfile(FIX / AMD64["fixture"], path)
    fd = {"path": path, "sha256": AMD64["sha256"], "type": "ELF"}
    summary = enrich({"target": {"category": "file", "file": fd}}, Settings(timeout=0))
    assert fd.get("telfhash") == AMD64["reference"]["telfhash"], fd
    json.dumps(summary)
    dropped = cuckoo.storage.TaskPaths.dropped_file(TID)
    assert isinstance(dropped, Path)


def test_non_elf_target_adds_nothing_but_settings_errors_still_reach_cuckoo(cuckoo):
    (cuckoo.cwd / "conf" / "processing" / "telfhash.yaml").write_text("enabled: true\nthreshold: lots\nbogus: 1\n")
    cuckoo.proc.reload_settings()
    text = {"sha256": "ab" * 32, "fixture": "fixtures.json"}  # a JSON file: not ELF
    sha = _store(cuckoo, text)
    (cls,) = _plugin(cuckoo, "cuckoo.processing.pre", cuckoo.abtracts.Processor)
    ctx = _ctx(cuckoo, "pre", target=_target(cuckoo, sha, "notes.txt", "JSON text data"))
    assert cls(ctx).start() is None  # no key: pre.json unchanged
    errors = ctx.errtracker.to_dict()["errors"]
    assert any("threshold" in e and "incorrect type" in e for e in errors), errors
    assert all(e.startswith("Telfhash: ") for e in errors)  # add_error(..., caller) names the plugin
    # and for an ELF target: defaults apply, the error is reported again
    sha = _store(cuckoo, AMD64)
    ctx = _ctx(cuckoo, "pre", target=_target(cuckoo, sha, "q_atm.so"))
    out = cls(ctx).start()
    assert out["target"]["telfhash"] == AMD64["reference"]["telfhash"] and out["threshold"] == 50
    assert any("threshold" in e for e in ctx.errtracker.to_dict()["errors"])
    log = cuckoo.storage.AnalysisPaths.analysislog(AID)
    for logger in cuckoo._loggers:
        logger.close()
    cuckoo._loggers.clear()
    assert "threshold" in log.read_text()  # and in the analysis log, through ctx.log


def test_missing_stored_binary_is_a_processing_error_not_a_crash(cuckoo):
    (cls,) = _plugin(cuckoo, "cuckoo.processing.pre", cuckoo.abtracts.Processor)
    ctx = _ctx(cuckoo, "pre", target=_target(cuckoo, "cd" * 32, "gone.elf"))
    assert cls(ctx).start() is None
    ctx = _ctx(cuckoo, "pre")  # no target at all (URL analyses have no sha256)
    assert cls(ctx).start() is None


# ----------------------------------------------------------------------------- settings


def test_settings_file_is_rendered_and_read_with_cuckoos_typeloaders(cuckoo):
    from telfhash_plugins.cape.enrich import Settings

    path = cuckoo.tconfig.render(cuckoo.cwd, {"threshold": 30, "dropped": False})
    assert path == cuckoo.cwd / "conf" / "processing" / "telfhash.yaml"
    text = path.read_text()
    assert "threshold: 30" in text and "dropped: False" in text
    settings, dropped, errors = cuckoo.tconfig.load(path)
    assert errors == [] and dropped is False
    assert settings.to_dict() == {**Settings().to_dict(), "threshold": 30}
    with pytest.raises(cuckoo.config.ConfigurationError):  # Cuckoo's renderer never overwrites
        cuckoo.tconfig.render(cuckoo.cwd)
    path.write_text("max_file_size: 0\n")  # Cuckoo's Int(min_value=1) rejects it
    settings, _, errors = cuckoo.tconfig.load(path)
    assert settings.max_file_size == Settings().max_file_size and "lower than minimum" in errors[0]
    path.write_text("enabled: false\n")
    cuckoo.proc.reload_settings()
    assert not cuckoo.proc.TelfhashPre.enabled() and not cuckoo.proc.TelfhashPost.enabled()


# ----------------------------------------------------------------------------- post stage


def test_post_hashes_dropped_elf_files_only(cuckoo, tmp_path):
    folder = cuckoo.storage.TaskPaths.dropped_file(TID)
    folder.mkdir(parents=True)
    shutil.copyfile(FIX / NUKE["fixture"], folder / "nuke")
    shutil.copyfile(FIX / SYNC["fixture"], folder / "sync")
    (folder / "readme.txt").write_text("text\n")
    outside = tmp_path / "outside.elf"
    shutil.copyfile(FIX / AMD64["fixture"], outside)
    os.symlink(outside, folder / "link.elf")  # a symlink out of the task folder is not followed
    (cls,) = _plugin(cuckoo, "cuckoo.processing.post", cuckoo.abtracts.Processor)
    ctx = _ctx(cuckoo, "post")
    out = cls(ctx).start()
    got = {d["name"]: d.get("telfhash") for d in out["dropped"]}
    assert got == {"nuke": NUKE["reference"]["telfhash"], "sync": SYNC["reference"]["telfhash"]}
    assert out["elf_files"] == 2
    json.dumps(out)


def test_post_without_dropped_folder_returns_nothing(cuckoo):
    (cls,) = _plugin(cuckoo, "cuckoo.processing.post", cuckoo.abtracts.Processor)
    assert cls(_ctx(cuckoo, "post")).start() is None


# ----------------------------------------------------------------------------- reporting


@pytest.mark.parametrize("stage,name", [("pre", "pre.json"), ("post", "report.json")])
def test_reporter_adds_only_its_key_to_cuckoos_json(cuckoo, stage, name):
    original = (FIX / "cuckoo3" / "output" / name).read_text()
    dest = cuckoo.storage.AnalysisPaths.prejson(AID) if stage == "pre" else cuckoo.storage.TaskPaths.report(TID)
    dest.write_text(original)
    (cls,) = _plugin(cuckoo, "cuckoo.processing.reporting", cuckoo.abtracts.Reporter)
    value = {"files": [{"name": "x", "telfhash": AMD64["reference"]["telfhash"]}], "groups": [], "errors": []}
    ctx = _ctx(cuckoo, stage, telfhash=value)
    rep = cls(ctx)
    rep.handlers[stage]()
    after = json.loads(dest.read_text())
    before = json.loads(original)
    assert after == {**before, "telfhash": value}
    assert list(after)[: len(before)] == list(before)  # key order kept too
    container = cuckoo.sc.Pre if stage == "pre" else cuckoo.sc.Post
    loaded = container.from_file(dest)  # Cuckoo's own reader accepts the file
    assert loaded.to_dict()["telfhash"] == value
    # no result: the file is left alone
    dest.write_text(original)
    cls(_ctx(cuckoo, stage)).handlers[stage]()
    assert dest.read_text() == original


def test_reporter_failure_is_a_processing_error(cuckoo):
    (cls,) = _plugin(cuckoo, "cuckoo.processing.reporting", cuckoo.abtracts.Reporter)
    ctx = _ctx(cuckoo, "pre", telfhash={"files": []})  # pre.json was never written
    cls(ctx).handlers["pre"]()
    assert any("could not add" in e for e in ctx.errtracker.to_dict()["errors"])


# ----------------------------------------------------------------------------- installer


def test_install_status_uninstall(cuckoo):
    inst = cuckoo.install
    web = cuckoo.cwd / "web" / "web_local_settings.py"
    web.parent.mkdir()
    web.write_text("ALLOWED_HOSTS = ['*']\n")
    items = inst.install(cuckoo.cwd, values={"threshold": 40})
    assert all(it.ok() for it in items), items
    assert {it.state for it in inst.status(cuckoo.cwd)} == {"installed"}
    assert "threshold: 40" in (cuckoo.cwd / "conf" / "processing" / "telfhash.yaml").read_text()
    again = inst.install(cuckoo.cwd)  # idempotent: nothing rewritten, settings kept
    assert {it.state for it in again} == {"unchanged", "kept"}
    assert web.read_text().count(inst.WEB_BEGIN) == 1 and web.read_text().startswith("ALLOWED_HOSTS")
    # after a Cuckoo reinstall the drop-ins are gone: status says so
    pre = inst.package_dir("cuckoo.processing.pre") / "telfhash.py"
    pre.unlink()
    assert [it.state for it in inst.status(cuckoo.cwd) if it.path == str(pre)] == ["missing"]
    inst.install(cuckoo.cwd)
    assert pre.is_file()
    # a file of the same name that is not ours is neither overwritten nor removed
    post = inst.package_dir("cuckoo.processing.post") / "telfhash.py"
    post.write_text("# someone else's plugin\n")
    assert [it.state for it in inst.install(cuckoo.cwd) if it.path == str(post)] == ["foreign"]
    inst.uninstall(cuckoo.cwd)
    assert post.read_text() == "# someone else's plugin\n" and not pre.exists()
    assert web.read_text() == "ALLOWED_HOSTS = ['*']\n"
    assert (cuckoo.cwd / "conf" / "processing" / "telfhash.yaml").exists()  # kept unless --purge


def test_cli_install_refuses_a_folder_that_is_not_a_cuckoo_cwd(cuckoo, tmp_path, capsys):
    from telfhash_plugins.cuckoo3 import cli

    assert cli.main(["install", "--cwd", str(tmp_path / "nowhere"), "--no-web"]) == 1
    assert "not a Cuckoo working directory" in capsys.readouterr().err
    assert cli.main(["status", "--cwd", str(cuckoo.cwd)]) == 0  # drop-ins in place from the line above


# ----------------------------------------------------------------------------- web


def test_web_environment_wraps_cuckoos_templates(cuckoo):
    import jinja2
    from telfhash_plugins.cuckoo3 import web

    cuckoo_templates = PINNED / "web" / "cuckoo" / "web" / "templates"
    env = web.environment(loader=jinja2.FileSystemLoader(str(cuckoo_templates)), telfhash_original="jinja2.Environment")
    ours, _, _ = env.loader.get_source(env, "analysis/components/summary.html.jinja2")
    theirs, _, _ = env.loader.get_source(env, "cuckoo/analysis/components/summary.html.jinja2")
    assert "telfhash" in ours and "telfhash" not in theirs
    assert theirs == (cuckoo_templates / "analysis/components/summary.html.jinja2").read_text()
    value = {
        "threshold": 50,
        "errors": [],
        "groups": [],
        "files": [
            {"name": "q_atm.so", "sha256": AMD64["sha256"], "telfhash": AMD64["reference"]["telfhash"], "arch": "x64"}
        ],
    }
    html = env.get_template("telfhash/result.html.jinja2").render(pre={"telfhash": value})
    assert AMD64["reference"]["telfhash"] in html and "q_atm.so" in html  # with Cuckoo's ui_box macro
    settings = {
        "TEMPLATES": [
            {
                "BACKEND": "django.template.backends.jinja2.Jinja2",
                "OPTIONS": {"environment": "cuckoo.web.web.jinja.env.environment"},
            }
        ]
    }
    assert web.configure(settings) and not web.configure(settings)  # a second call changes nothing
    assert settings["TEMPLATES"][0]["OPTIONS"]["environment"] == "telfhash_plugins.cuckoo3.web.environment"


def test_deprecated_alias_still_imports():
    sys.modules.pop("telfhash_plugins.cape.cuckoo3", None)
    with pytest.warns(DeprecationWarning):
        alias = importlib.import_module("telfhash_plugins.cape.cuckoo3")
    from telfhash_plugins.cuckoo3.processor import TelfhashPre

    assert alias.TelfhashProcessor is TelfhashPre and alias.TelfhashProcessor.KEY == "telfhash"
