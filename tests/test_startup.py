"""Start-up cost of ``telfhash FILE``: what it imports, and that its lighter routes give the same values."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from telfhash_core import plugins
from telfhash_core.hashing import elf

FIX = Path(__file__).parent / "fixtures"
ENTRIES = json.loads((FIX / "fixtures.json").read_text())["files"]
PATHS = [str(FIX / e["fixture"]) for e in ENTRIES]


def _run_probe(probe: str) -> subprocess.CompletedProcess:
    """``probe`` in a fresh interpreter (hook tracing off: it loads logging); it must succeed."""
    env = dict(os.environ)
    env.pop("TELFHASH_TRACE_HOOKS", None)
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    return p


def test_one_file_imports_no_numpy_pyelftools_pool_or_pluggy():
    probe = (
        "import sys, io, contextlib\n"
        "from telfhash_core.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    main([{PATHS[0]!r}])\n"
        "heavy = ['numpy', 'numba', 'pluggy', 'importlib.metadata', 'elftools.elf.elffile', 'tqdm',\n"
        "         'concurrent.futures.process', 'capstone', 'telfhash_core.store.index', 'telfhash_plugins.stix.plugin']\n"
        "print([m for m in heavy if m in sys.modules])\n"
        "from telfhash_core.plugins import declared_entry_points, OWN_ADAPTERS\n"
        "print(any(not v.startswith(OWN_ADAPTERS) for _n, v in declared_entry_points()))\n"
    )
    p = _run_probe(probe)
    loaded, third_party = p.stdout.split("\n")[:2]
    if third_party == "True":
        pytest.skip("a third-party telfhash plugin is installed here: hashing loads the plugin manager")
    assert loaded == "[]"


def _table(buf, h):
    try:
        return elf.find_symbol_table_fast(buf, h)
    except elf._GiveUp:
        return elf.find_symbol_table_exact(elf.open_elf(buf))


WITH_TABLE = [p for p in PATHS if _table(Path(p).read_bytes(), elf.read_header(Path(p).read_bytes()))]


def test_fixtures_cover_symbol_tables():
    assert len(WITH_TABLE) >= 8


@pytest.mark.parametrize("path", WITH_TABLE, ids=[Path(p).name for p in WITH_TABLE])
def test_struct_and_numpy_symbol_readers_agree(path):
    buf = Path(path).read_bytes()
    h = elf.read_header(buf)
    table = _table(buf, h)
    assert elf.read_function_names(buf, h, table, use_numpy=False) == elf.read_function_names(
        buf, h, table, use_numpy=True
    )


def test_symbol_readers_fail_alike_on_crafted_tables():
    buf = bytearray(Path(PATHS[0]).read_bytes())
    h = elf.read_header(buf)
    table = _table(buf, h)
    assert table is not None
    outcomes = []
    for crafted in (
        elf.SymbolTable(table.kind, table.offset, table.size + 10 * len(buf), table.entsize, table.strtab_offset),
        elf.SymbolTable(table.kind, table.offset, table.size, table.entsize, elf.MAX_FILE_OFFSET + 1),
        elf.SymbolTable(table.kind, table.offset, table.size, table.entsize + 8, table.strtab_offset),
        elf.SymbolTable(table.kind, len(buf) - 5, table.size, table.entsize, table.strtab_offset),
    ):
        got = []
        for use_numpy in (False, True):
            try:
                got.append(("ok", tuple(elf.read_function_names(bytes(buf), h, crafted, use_numpy=use_numpy))))
            except Exception as exc:  # the exception is part of the answer
                got.append((type(exc).__name__, str(exc)))
        assert got[0] == got[1]
        outcomes.append(got[0][0])
    assert "ok" in outcomes and len(set(outcomes)) > 1  # both kinds of answer were exercised


def test_known_machine_names_are_pyelftools_names():
    from elftools.elf.elffile import ELFFile
    from elftools.elf.enums import ENUM_E_MACHINE

    names = {v: k for k, v in ENUM_E_MACHINE.items() if isinstance(v, int)}

    class Shim:
        def __init__(self, m):
            self.m = m

        def __getitem__(self, key):
            return names.get(self.m, self.m)

    for machine, name in elf.KNOWN_MACHINES.items():
        assert ELFFile.get_machine_arch(Shim(machine)) == name
    elf.machine_name.cache_clear()
    assert elf.machine_name(94) == ELFFile.get_machine_arch(Shim(94))  # not in the table: asks pyelftools


def test_own_adapters_implement_no_hashing_hook():
    """``telfhash FILE`` skips the project's own adapters: they must add nothing it would call."""
    own = [(n, v) for n, v in plugins.declared_entry_points() if v.startswith(plugins.OWN_ADAPTERS)]
    if not own:
        pytest.skip("the package's entry points are not installed (pip install -e .)")
    import importlib

    for _name, value in own:
        module = importlib.import_module(value.partition(":")[0])
        for hook in plugins.HASHING_HOOKS:
            fn = getattr(module, hook, None)
            assert fn is None or not hasattr(fn, "telfhash_impl"), f"{value} implements {hook}"


def test_declared_entry_points_match_importlib_metadata():
    from importlib.metadata import entry_points

    assert sorted(set(plugins.declared_entry_points())) == sorted(
        {(e.name, e.value) for e in entry_points(group="telfhash")}
    )


def test_static_x86_programs_import_no_numpy_capstone_package_or_pyelftools_parser():
    """The call-destination fallback for x86/x86-64 reads the headers with struct and loads
    libcapstone through ctypes."""
    static = [
        str(FIX / "elf" / n)
        for n in ("amd64__klibc-utils__usr__lib__klibc__bin__nuke", "i386__klibc-utils__usr__lib__klibc__bin__cpio")
    ]
    probe = (
        "import sys, io, contextlib, json\n"
        "from telfhash_core.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        f"    main(['-f', 'json', *{static!r}])\n"
        "print([r['telfhash'] for r in json.loads(out.getvalue())])\n"
        "heavy = ['numpy', 'capstone', 'elftools.elf.elffile', 'elftools.construct', 'concurrent.futures']\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    p = _run_probe(probe)
    values, loaded = p.stdout.split("\n")[:2]
    expected = {e["fixture"]: e["reference"]["telfhash"] for e in ENTRIES}
    assert values == repr([expected["elf/" + Path(s).name] for s in static])
    assert loaded == "[]"
