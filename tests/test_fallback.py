"""The call-destination sweep equals the reference's algorithm, written out plainly here with
capstone's own Python API (one CsInsn per instruction), on real code and on random bytes."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from capstone import Cs
from elftools.elf.elffile import ELFFile

import corpus
from telfhash_core.hashing import fallback
from telfhash_core.hashing.elf import MemStream

FIXTURES = Path(__file__).parent / "fixtures"


def reference_sweep(code: bytes, address: int, arch: str) -> list[str]:
    """The reference's loop over capstone instructions (the oracle)."""
    md = Cs(*fallback.MODES[arch])
    out: list[str] = []
    for i in md.disasm(code, address):
        if arch in ("x86", "x64") and i.mnemonic == "call":
            if i.op_str.startswith("0x") and i.op_str[2:] not in out:
                out.append(i.op_str[2:])
        elif arch == "ARM" and i.mnemonic.startswith("bl"):
            if i.op_str.startswith("#0x") and i.op_str[3:] not in out:
                out.append(i.op_str[3:])
        elif arch == "MIPS" and i.mnemonic == "lw":
            if i.op_str.startswith("$t9, ") and i.op_str[8:-5] not in out:
                out.append(i.op_str[8:-5])
    return out


def code_of(path: str):
    data = Path(path).read_bytes()
    elf = ELFFile(MemStream(data))
    region = fallback.code_region(elf)
    base = fallback.image_base(elf, data)
    return region.data(), base + region["sh_offset"], elf.get_machine_arch()


@pytest.mark.parametrize("chunk", [1, 7, 1000, fallback.CHUNK])
def test_sweep_equals_reference_loop_across_chunk_sizes(monkeypatch, chunk):
    monkeypatch.setattr(fallback, "CHUNK", chunk)
    entries = json.loads((FIXTURES / "fixtures.json").read_text())["files"]
    checked = 0
    for e in entries:
        path = FIXTURES / e["fixture"]
        elf = ELFFile(MemStream(path.read_bytes()))
        if elf.get_machine_arch() not in fallback.MODES or any(
            s["sh_type"] in ("SHT_DYNSYM", "SHT_SYMTAB") for s in elf.iter_sections()
        ):
            continue
        code, address, arch = code_of(str(path))
        assert fallback.sweep(code, address, arch) == reference_sweep(code, address, arch)
        checked += 1
    assert checked >= 4


@pytest.mark.parametrize("arch", sorted(fallback.MODES))
def test_sweep_equals_reference_loop_on_random_bytes(arch):
    rng = random.Random(1234)
    for _ in range(200):
        # Random code with many call-like opcodes sprinkled in, so that matches occur.
        code = bytearray(rng.randbytes(rng.randint(0, 400)))
        for _k in range(rng.randint(0, 20)):
            pos = rng.randrange(0, len(code) + 1)
            code[pos:pos] = rng.choice(
                [b"\xe8", b"\xeb", b"\x8f\xbc\x00\x00", b"\x00\x00\x00\xeb", b"\xff\xff\x99\x8f"]
            )
        address = rng.choice([0, 0x400000, 0x8048000, 0xFFFFFFF0, 0xFFFFFFFFFFFFFF00])
        assert fallback.sweep(bytes(code), address, arch) == reference_sweep(bytes(code), address, arch)


def test_sweep_on_corpus_static_binaries_equals_reference_loop():
    """Large real code: busybox/sash for every supported architecture (the slow part of the suite)."""
    picked = [f for f in corpus.files() if f["pkg"] in ("sash",) or (f["pkg"] == "iot-fam-a" and "static" in f["path"])]
    checked = 0
    for f in picked:
        data = Path(f["abspath"]).read_bytes()
        elf = ELFFile(MemStream(data))
        if elf.get_machine_arch() not in fallback.MODES:
            continue
        code, address, arch = code_of(f["abspath"])
        assert fallback.sweep(code, address, arch) == reference_sweep(code, address, arch), f["path"]
        checked += 1
    assert checked >= 6


@pytest.mark.parametrize("arch", ["x86", "x64"])
def test_x86_without_printing_equals_the_reference_loop_on_call_heavy_bytes(arch):
    """Prefixed, far, short-target and wrapping calls: the engine that does not print must give
    the texts capstone prints."""
    rng = random.Random(99)
    calls = [
        b"\xe8",
        b"\x66\xe8",
        b"\xf2\xe8",
        b"\x48\xe8",
        b"\x3e\xe8",
        b"\x9a",
        b"\xff\x15",
        b"\xff\xd0",
        b"\x41\xff\xd3",
        b"\xf0\xe8",
    ]
    for _ in range(300):
        code = bytearray()
        for _k in range(rng.randint(1, 40)):
            code += rng.choice(calls) + rng.randbytes(rng.choice([0, 2, 4, 6]))
            if rng.random() < 0.3:
                code += rng.randbytes(rng.randint(1, 6))
        address = rng.choice([0, 1, 0x400000, 0xFFFFFFF0, 0xFFFFFFFFFFFFFFF0, 2**63 - 3])
        expected = reference_sweep(bytes(code), address, arch)
        assert fallback.sweep(bytes(code), address, arch) == expected
        assert fallback.sweep(bytes(code), address, arch, quiet=False) == expected


def test_quiet_engine_is_in_use_for_x86():
    assert fallback._quiet_engine("x64") is not None and fallback._quiet_engine("x86") is not None
    assert fallback._quiet_engine("ARM") is None


def test_capstone_constants_and_record_layout_match_capstones_own():
    """The fallback loads libcapstone without capstone's Python package: its copies of the
    constants and of ``cs_insn`` must be the package's."""
    import ctypes

    import capstone
    from capstone import x86_const

    assert fallback.MODES == {
        "x86": (capstone.CS_ARCH_X86, capstone.CS_MODE_32),
        "x64": (capstone.CS_ARCH_X86, capstone.CS_MODE_64),
        "ARM": (capstone.CS_ARCH_ARM, capstone.CS_MODE_ARM),
        "MIPS": (capstone.CS_ARCH_MIPS, capstone.CS_MODE_MIPS32 | capstone.CS_MODE_BIG_ENDIAN),
    }
    assert (fallback.X86_INS_CALL, fallback.X86_INS_LCALL) == (x86_const.X86_INS_CALL, x86_const.X86_INS_LCALL)
    ours, theirs = fallback._cs_insn, capstone._cs_insn
    assert ctypes.sizeof(ours) == ctypes.sizeof(theirs)
    assert [(n, getattr(ours, n).offset, getattr(ours, n).size) for n, _ in ours._fields_] == [
        (n, getattr(theirs, n).offset, getattr(theirs, n).size) for n, _ in theirs._fields_
    ]
    assert os.path.samefile(fallback._library_path(), capstone._cs._name)


def test_x86_sweep_loads_neither_numpy_nor_capstones_python_package():
    code = (
        "import sys\n"
        "from telfhash_core.hashing import fallback\n"
        "assert fallback.sweep(b'\\xe8\\x10\\x00\\x00\\x00\\xc3', 0x401000, 'x64') == ['401015']\n"
        "print([m for m in ('numpy', 'capstone') if m in sys.modules])\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_fallback_from_raw_headers_equals_the_pyelftools_route():
    """Where the fast symbol-table route walked every section, the fallback's region, image base
    and bytes come from the raw headers: the same answer as the pyelftools route, on every fixture
    and on the static programs of the corpus; and the raw route is the one taken for most."""
    from telfhash_core.hashing import elf as E

    paths = [FIXTURES / e["fixture"] for e in json.loads((FIXTURES / "fixtures.json").read_text())["files"]]
    try:
        paths += [Path(f["abspath"]) for f in corpus.static_files()][::9]
    except BaseException:  # pytest's Skipped: no static corpus here
        pass
    taken = compared = 0
    for path in paths:
        buf = path.read_bytes()
        try:
            h = E.read_header(buf)
            table, sections = E._find_symbol_table_fast(buf, h)
        except (E.NotELF, E._GiveUp):
            continue
        if table is not None or sections is None:
            continue
        arch = E.machine_name(h.machine)
        fast = fallback.call_destinations_fast(buf, h, sections, arch)
        compared += arch in fallback.MODES  # the others are left to the pyelftools route
        if fast is not None:
            taken += 1
            assert fast == fallback.call_destinations(E.open_elf(buf), buf), path
    assert compared >= 4 and taken * 2 >= compared, (taken, compared)
