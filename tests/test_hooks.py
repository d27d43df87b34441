"""The hooks are honest: documented, exercised by tests, fired by every entry point; plugins load
one by one, their errors are shown, and duplicate names are refused."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

import telfhash_core as tc
from telfhash_core import hookspecs
from telfhash_core import plugins as plugins_mod
from telfhash_core.formats import Exporter, OutputFormat
from telfhash_core.plugins import get_plugin_manager, reset_plugin_manager

ROOT = Path(__file__).resolve().parent.parent
FIX = Path(__file__).parent / "fixtures"
ENTRIES = json.loads((FIX / "fixtures.json").read_text())["files"]
PATHS = [str(FIX / e["fixture"]) for e in ENTRIES]
HOOKS = sorted(n for n in dir(hookspecs) if n.startswith("telfhash_") and callable(getattr(hookspecs, n)))


@pytest.fixture
def fresh_plugins(monkeypatch):
    monkeypatch.setenv("TELFHASH_NO_ENTRY_POINTS", "1")
    reset_plugin_manager()
    yield get_plugin_manager()
    reset_plugin_manager()


def test_hookspecs_are_found():
    assert set(HOOKS) >= {
        "telfhash_result",
        "telfhash_fields",
        "telfhash_output_formats",
        "telfhash_exporters",
        "telfhash_commands",
    }


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook):
    doc = (ROOT / "docs" / "plugins.md").read_text()
    assert re.search(rf"^### `{hook}\(", doc, re.M), f"{hook} has no section in docs/plugins.md"


class Recorder:
    """A plugin implementing every hook, used by the tests below; ``called`` records which ran."""

    def __init__(self):
        self.results: list[str] = []
        self.called: set[str] = set()

    @tc.hookimpl
    def telfhash_result(self, result, options):
        self.called.add("telfhash_result")
        self.results.append(result.file)
        result.extra["recorded"] = True
        result.extra["telfhash"] = "not ours to set"  # must never replace the core's value

    @tc.hookimpl
    def telfhash_fields(self):
        self.called.add("telfhash_fields")
        return {"first_byte": lambda buf, result: buf[0]}

    @tc.hookimpl
    def telfhash_output_formats(self):
        self.called.add("telfhash_output_formats")
        return [OutputFormat("names", "file names", lambda rs, out, ctx: out.write(",".join(r.file for r in rs)))]

    @tc.hookimpl
    def telfhash_exporters(self):
        self.called.add("telfhash_exporters")

        def export(results, clusters, out, options):
            out.write(json.dumps({"n": len(results), "threshold": options["threshold"], "opt": options.get("k")}))

        return [Exporter("count", "how many results", export)]

    @tc.hookimpl
    def telfhash_commands(self, subparsers):
        self.called.add("telfhash_commands")
        p = subparsers.add_parser("recorded", help="how many results the recorder saw")
        p.set_defaults(func=lambda args: print(len(self.results)) or 0)


def test_every_hook_is_exercised(fresh_plugins, tmp_path, capsys):
    """Fails when hookspecs.py gains a hook that no test drives through the real entry points."""
    from telfhash_core.cli import main

    rec = Recorder()
    fresh_plugins.register(rec)
    missing = [h for h in HOOKS if not hasattr(rec, h)]
    assert not missing, f"hooks without a test implementation: {missing}"
    r = tc.hash_file(PATHS[0], fields=["first_byte"])
    assert r.extra["first_byte"] == 0x7F
    assert main(["-f", "names", PATHS[0]]) == 0
    results = tmp_path / "r.jsonl"
    results.write_text(json.dumps(r.to_dict()) + "\n")
    assert main(["export", "count", str(results), "-o", str(tmp_path / "x.json")]) == 0
    assert main(["recorded"]) == 0
    capsys.readouterr()
    assert rec.called >= set(HOOKS), f"hooks never called: {sorted(set(HOOKS) - rec.called)}"


def test_result_hook_fires_for_every_entry_point(fresh_plugins, tmp_path, capsys):
    from telfhash_core.batch.run import run_batch
    from telfhash_core.cli import main
    from telfhash_core.store.index import Index

    rec = Recorder()
    fresh_plugins.register(rec)
    few = PATHS[:3]
    got = list(tc.hash_paths(few))
    assert rec.results == few
    assert all(r.extra["recorded"] for r in got)
    assert all(r.to_dict()["telfhash"] == r.reference_telfhash for r in got)  # our value kept

    rec.results.clear()
    with Index(tmp_path / "i.sqlite") as ix:
        ix.add_files(few, jobs=1, progress=False)
    assert sorted(rec.results) == sorted(os.path.abspath(p) for p in few)  # the index stores absolute paths

    rec.results.clear()
    out = tmp_path / "b.jsonl"
    run_batch(few, str(out), jobs=1, progress=False)
    assert sorted(rec.results) == sorted(few)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert all(r["recorded"] is True for r in rows)
    assert all(r["telfhash"] != "not ours to set" for r in rows)

    rec.results.clear()
    assert main(["-f", "names", *few]) == 0
    assert capsys.readouterr().out.startswith(",".join(few))
    assert rec.results == few
    assert main(["recorded"]) == 0
    assert capsys.readouterr().out.strip() == str(len(few))


def test_exporters_are_reachable_from_the_cli(fresh_plugins, tmp_path, capsys):
    from telfhash_core.cli import main

    fresh_plugins.register(Recorder())
    results = tmp_path / "r.jsonl"
    results.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in tc.hash_paths(PATHS[:4])))
    out = tmp_path / "x.json"
    assert main(["export", "count", str(results), "-o", str(out), "-t", "40", "--option", "k=v"]) == 0
    assert json.loads(out.read_text()) == {"n": 4, "threshold": 40, "opt": "v"}
    assert main(["export", "nosuch", str(results)]) == 2
    assert "no exporter 'nosuch'" in capsys.readouterr().err


def test_duplicate_names_are_refused(fresh_plugins):
    from telfhash_core.formats import available_exporters, available_formats

    fresh_plugins.register(Recorder())
    fresh_plugins.register(Recorder(), name="second")
    with pytest.raises(plugins_mod.DuplicateNameError, match="names"):
        available_formats()
    with pytest.raises(plugins_mod.DuplicateNameError, match="count"):
        available_exporters()
    with pytest.raises(plugins_mod.DuplicateNameError, match="first_byte"):
        plugins_mod.field_functions()


def test_the_command_line_refuses_duplicate_names_in_one_line(fresh_plugins, capsys):
    from telfhash_core.cli import main

    fresh_plugins.register(Recorder())
    fresh_plugins.register(Recorder(), name="second")
    assert main([PATHS[0]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("telfhash: error: two plugins offer the command 'recorded'") and "Traceback" not in err


def test_a_broken_entry_point_costs_only_itself(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)  # the repository's plugins/ folder would be taken for a path to hash

    class EP:
        def __init__(self, name, value, load):
            self.name, self.value, self._load = name, value, load
            self.dist = SimpleNamespace(name="thirdparty", version="1.0")

        def load(self):
            return self._load()

    def broken():
        raise ImportError("No module named 'missing_dependency'")

    good = SimpleNamespace(telfhash_output_formats=tc.hookimpl(lambda: [OutputFormat("good", "g", lambda *a: None)]))
    monkeypatch.delenv("TELFHASH_NO_ENTRY_POINTS", raising=False)
    monkeypatch.setattr(
        plugins_mod, "_entry_points", lambda: [EP("broken", "bad.mod", broken), EP("good", "good.mod", lambda: good)]
    )
    reset_plugin_manager()
    try:
        from telfhash_core.cli import main
        from telfhash_core.formats import available_formats

        assert "good" in available_formats()
        assert any("broken" in e and "missing_dependency" in e for e in plugins_mod.load_errors)
        assert main(["plugins"]) == 1
        out = capsys.readouterr().out
        assert "NOT LOADED" in out and "missing_dependency" in out and "thirdparty 1.0" in out
        assert main(["plugins", "-f", "json"]) == 1
        doc = json.loads(capsys.readouterr().out)
        names = {p["name"]: p for p in doc["plugins"]}
        assert names["good"]["hooks"] == ["telfhash_output_formats"] and names["broken"]["error"]
        assert "telfhash_core.commands.batch" in names and names["telfhash_core.commands.batch"]["origin"] == "built-in"
    finally:
        reset_plugin_manager()


def test_hookimpl_is_exported_from_the_package():
    assert tc.hookimpl is hookspecs.hookimpl
    assert tc.DEFAULT_THRESHOLD == 50


def test_the_stix_exporter_through_telfhash_export(tmp_path, capsys, monkeypatch):
    """The real exporter of the STIX adapter (entry point `stix`), reached from the command line."""
    stix2validator = pytest.importorskip("stix2validator")  # the 'stix' extra
    from telfhash_core.cli import main

    monkeypatch.delenv("TELFHASH_NO_ENTRY_POINTS", raising=False)
    monkeypatch.chdir(tmp_path)
    reset_plugin_manager()
    try:
        results = tmp_path / "r.jsonl"
        results.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in tc.hash_paths(PATHS, sha256=True)))
        assert main(["export", "stix", str(results), "-o", "bundle.json"]) == 0, capsys.readouterr().err
        bundle = json.loads((tmp_path / "bundle.json").read_text())
        assert bundle["type"] == "bundle"
        assert stix2validator.validate_instance(bundle).is_valid
        hashed = {r.sha256 for r in tc.hash_paths(PATHS, sha256=True) if r.ok}
        files = {o["hashes"]["SHA-256"].lower() for o in bundle["objects"] if o["type"] == "file"}
        assert files and files <= hashed
    finally:
        reset_plugin_manager()
