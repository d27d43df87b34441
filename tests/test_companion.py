"""The companion hash telfhash-x: each normalisation rule, the readers against pyelftools and
capstone's own API, the field through the API and CLI (telfhash untouched), hostile input."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from io import BytesIO
from pathlib import Path

import capstone
import pytest
import tlsh
from elftools.elf.elffile import ELFFile

import corpus
import telfhash_core as tc
from telfhash_core import companion as cx

VALUE_RE = re.compile(r"^tx2:(?:imports|exports|strings|calls):t1[0-9a-f]{70}$")  # the field: tx2
TX1_RE = re.compile(r"^tx1:t1[0-9a-f]{70}$")


def _entry(path_part: str) -> dict:
    for f in corpus.files():
        if f["path"] == path_part:
            return f
    raise AssertionError(f"{path_part} not in the corpus manifest")


def _sample(n_per_arch: int = 3) -> list[dict]:
    """A few files per architecture, chosen deterministically."""
    by: dict[str, list[dict]] = {}
    for f in corpus.files():
        by.setdefault(f["arch"], []).append(f)
    out = []
    for arch in sorted(by):
        files = sorted(by[arch], key=lambda f: f["sha256"])
        out += files[:n_per_arch]
    return out


# ----------------------------------------------------------------------------- folding rules


@pytest.mark.parametrize(
    "variant, base",
    [
        ("open64", "open"),  # large-file variant
        ("fopen64", "fopen"),
        ("lseek64", "lseek"),
        ("posix_fadvise64", "posix_fadvise"),
        ("__open64_2", "__open_2"),  # fortified large-file variant
        ("__openat64_2", "__openat_2"),
        ("__pread64_chk", "__pread_chk"),
        ("readdir64_r", "readdir_r"),
        ("__xstat64", "__xstat"),  # glibc < 2.33 stat wrappers
        ("__stat64_time64", "stat"),  # 64-bit time_t on 32-bit CPUs
        ("__fstatat64_time64", "fstatat"),
        ("__fcntl_time64", "fcntl"),
        ("__clock_gettime64", "clock_gettime"),
        ("__localtime64_r", "localtime_r"),
        ("__time64", "time"),
        ("_Znwj", "_Znwm"),  # operator new(unsigned int) on ILP32, (unsigned long) on LP64
        (
            "_ZNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEE9_M_createERjj",
            "_ZNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEE9_M_createERmm",
        ),
    ],
)
def test_variants_fold_onto_the_base_name(variant, base):
    assert cx.fold_name(variant) == cx.fold_name(base)


@pytest.mark.parametrize(
    "name, folded",
    [
        ("printf", "printf"),
        ("a64l", "a64l"),
        ("SSL_read", "ssl_read"),
        ("__errno_location", "errno_location"),
        ("x", "x"),
    ],
)
def test_ordinary_names_are_only_lowercased_and_unprefixed(name, folded):
    assert cx.fold_name(name) == folded


def test_fold_never_fails_on_odd_names():
    for name in ["_", "__", "64", "_64", "__64_2", "a\nb64", "é64", "0", "_Z"]:
        assert isinstance(cx.fold_name(name), str)


# ----------------------------------------------------------------------------- helper list


def test_helper_list_drops_cpu_specific_runtime_names():
    for raw in ["__aeabi_idiv", "__aeabi_uldivmod", "__gmon_start__", "raise", "mempcpy", "_Ux86_64_step"]:
        assert cx.is_helper(cx.fold_name(raw)), raw
    for raw in ["printf", "open64", "SSL_read", "getopt_long", "__printf_chk"]:
        assert not cx.is_helper(cx.fold_name(raw)), raw


def test_normalise_folds_dedupes_sorts_and_drops_helpers():
    names = ["open64", "open", "__aeabi_idiv", "Zeta", "fopen64", "raise", "", "__stat64_time64"]
    assert cx.normalise(names) == ["fopen", "open", "stat", "zeta"]


def test_derivation_finds_a_name_missing_on_one_cpu_and_only_then():
    archs = ["amd64", "arm64", "armel", "i386", "s390x"]
    builds = []
    for k in range(4):  # four programs: "strlen" is imported everywhere except on s390x
        for a in archs:
            names = [f"prog{k}_f", "printf"] + ([] if a == "s390x" else ["strlen"])
            if a in ("armel",):
                names.append("__aeabi_idiv" if k < 2 else "__aeabi_uidiv")
                names.append("__aeabi_ldivmod")
            builds.append((f"p{k}", a, names))
    data = cx.derive_helpers(builds)
    assert data["names"] == ["aeabi_ldivmod", "strlen"]
    assert data["prefixes"] == ["aeabi_"]  # three reserved names of one family, never on every CPU
    assert data["evidence"]["strlen"] == ["s390x: 4/4"]


def test_shipped_helper_list_is_what_the_corpus_gives():
    items = []
    for f in corpus.files():
        buf = Path(f["abspath"]).read_bytes()
        items.append((f["label"], f["arch"], cx.raw_names(buf, cx.elf_facts(buf))))
    derived = cx.derive_helpers(items)
    shipped = json.loads(Path(cx.__file__).with_name("companion_data.json").read_text())
    assert derived["names"] == shipped["names"]
    assert derived["prefixes"] == shipped["prefixes"]


# ----------------------------------------------------------------------------- readers vs pyelftools


def _pyelftools_functions(path: str):
    """Imported and exported function names, read one symbol at a time by pyelftools."""
    with open(path, "rb") as fh:
        elf = ELFFile(BytesIO(fh.read()))
    table = elf.get_section_by_name(".dynsym")
    if table is None or table["sh_size"] == 0:
        table = elf.get_section_by_name(".symtab")
    if table is None:
        return None
    imp, exp = [], []
    for s in table.iter_symbols():
        if s["st_info"]["type"] not in ("STT_FUNC", "STT_LOOS") or s["st_info"]["bind"] not in (
            "STB_GLOBAL",
            "STB_WEAK",
        ):
            continue
        if s["st_other"]["visibility"] not in ("STV_DEFAULT", "STV_PROTECTED") or not s.name:
            continue
        (imp if s["st_shndx"] == "SHN_UNDEF" else exp).append(s.name)
    return imp, exp


def test_symbol_reader_matches_pyelftools():
    checked = 0
    for f in _sample(4):
        expected = _pyelftools_functions(f["abspath"])
        buf = Path(f["abspath"]).read_bytes()
        facts = cx.elf_facts(buf)
        table = cx.symbol_table(facts)
        if expected is None:
            assert table is None
            continue
        syms = cx.read_symbols(buf, facts.header, table)
        assert (syms.imported, syms.exported) == expected, f["path"]
        checked += 1
    assert checked >= 20


def test_library_or_executable_agrees_with_the_file_name():
    seen = {True: 0, False: 0}
    for f in corpus.files():
        buf = Path(f["abspath"]).read_bytes()
        facts = cx.elf_facts(buf)
        is_so = ".so" in f["path"].rsplit("/", 1)[-1]
        assert facts.is_library == is_so, f["path"]
        seen[is_so] += 1
    assert seen[True] >= 50 and seen[False] >= 1000


def test_strings_match_a_plain_scan_of_rodata():
    for path in [
        "mipsel/klibc-utils/usr__lib__klibc__bin__cpio",
        "s390x/klibc-utils/usr__lib__klibc__bin__kinit",
        "m68k/iot-fam-a/fam_a_v1_m68k_static",
    ]:
        f = _entry(path)
        data = Path(f["abspath"]).read_bytes()
        elf = ELFFile(BytesIO(data))
        expected, run = set(), bytearray()
        for s in elf.iter_sections():
            if s.name.startswith(".rodata") and s["sh_type"] == "SHT_PROGBITS":
                for byte in s.data() + b"\x00":
                    if 32 <= byte <= 126 or byte in (9, 10, 13):
                        run.append(byte)
                    else:
                        if len(run) >= 6:
                            expected.add(run.decode())
                        run.clear()
        assert cx.readonly_strings(data, cx.elf_facts(data)) == sorted(expected)
        assert expected


def test_strings_are_the_same_across_cpus_for_a_stripped_program():
    got = {}
    for arch in ["amd64", "arm64", "armel", "i386", "mipsel", "s390x"]:
        f = _entry(f"{arch}/klibc-utils/usr__lib__klibc__bin__cpio")
        data = Path(f["abspath"]).read_bytes()
        got[arch] = cx.readonly_strings(data, cx.elf_facts(data))
    assert all(v == got["amd64"] for v in got.values())


# ----------------------------------------------------------------------------- call fallback decoding


def _reference_mode_calls(path: str, arch, mode, mnemonics) -> int:
    """Distinct call operands found by capstone's Python API in one sweep that stops at the
    first undecodable bytes, as the reference sweeps (its CPU mode choice)."""
    data = Path(path).read_bytes()
    elf = ELFFile(BytesIO(data))
    text = elf.get_section_by_name(".text")
    return len(
        {op for _a, _s, mn, op in capstone.Cs(arch, mode).disasm_lite(text.data(), text["sh_addr"]) if mn in mnemonics}
    )


def test_call_fallback_decodes_each_cpu_in_its_own_mode():
    counts = {}
    for arch in ["amd64", "arm64", "armhf", "mipsel", "mips64el", "s390x", "i386"]:
        f = _entry(f"{arch}/klibc-utils/usr__lib__klibc__bin__cpio")
        data = Path(f["abspath"]).read_bytes()
        counts[arch] = len(cx.call_targets(data, cx.elf_facts(data)))
    base = counts["amd64"]
    assert base >= 20
    for arch, n in counts.items():  # the same program calls about as many functions on every CPU
        assert 0.75 * base <= n <= 1.25 * base, (arch, counts)
    # the reference's modes (MIPS always big-endian, ARM never Thumb) see almost nothing here
    mipsel = _entry("mipsel/klibc-utils/usr__lib__klibc__bin__cpio")["abspath"]
    armhf = _entry("armhf/klibc-utils/usr__lib__klibc__bin__cpio")["abspath"]
    assert (
        _reference_mode_calls(
            mipsel, capstone.CS_ARCH_MIPS, capstone.CS_MODE_MIPS32 | capstone.CS_MODE_BIG_ENDIAN, {"jal"}
        )
        <= 2
    )
    assert _reference_mode_calls(armhf, capstone.CS_ARCH_ARM, capstone.CS_MODE_ARM, {"bl", "blx"}) <= 2


def test_call_fallback_covers_big_endian_and_other_cpus():
    for path in [
        "mips/iot-fam-a/fam_a_v1_mips_static",
        "powerpc/iot-fam-a/fam_a_v1_powerpc_static",
        "sh4/iot-fam-a/fam_a_v1_sh4_static",
        "m68k/iot-fam-a/fam_a_v1_m68k_static",
    ]:
        data = Path(_entry(path)["abspath"]).read_bytes()
        targets = cx.call_targets(data, cx.elf_facts(data))
        assert len(targets) >= 100, path  # static programs: hundreds of libc functions


# ----------------------------------------------------------------------------- the field


def test_field_through_the_api_leaves_telfhash_untouched():
    for f in _sample(2):
        plain = tc.hash_file(f["abspath"])
        with_x = tc.hash_file(f["abspath"], fields=["telfhash_x"])
        assert with_x.reference_telfhash == f["reference"]["telfhash"] == plain.reference_telfhash
        assert with_x.msg == f["reference"]["msg"]
        value = with_x.extra["telfhash_x"]
        assert value is None or VALUE_RE.match(value), value
        assert "field_errors" not in with_x.extra
        if value and plain.ok:  # the part after the last ':' is a digest the core's distance reads as py-tlsh does
            part = value.rsplit(":", 1)[1]
            assert tc.distance(part, plain.telfhash) == tlsh.diff(part.upper(), plain.telfhash.upper())


def test_value_is_deterministic_and_the_same_from_bytes_and_from_a_process_pool():
    files = [f["abspath"] for f in _sample(1)]
    one = {r.file: r.extra["telfhash_x"] for r in tc.hash_paths(files, fields=["telfhash_x"])}
    two = {r.file: r.extra["telfhash_x"] for r in tc.hash_paths(files, jobs=2, fields=["telfhash_x"])}
    three = {p: tc.hash_bytes(Path(p).read_bytes(), p, fields=["telfhash_x"]).extra["telfhash_x"] for p in files}
    assert one == two == three
    assert sum(1 for v in one.values() if v) >= len(files) - 2


def test_same_program_across_cpus_gets_close_values():
    values = {}
    for arch in ["amd64", "arm64", "armel", "armhf", "i386", "mips64el", "mipsel", "ppc64el", "s390x"]:
        f = _entry(f"{arch}/coreutils/bin__ls")
        values[arch] = tc.hash_file(f["abspath"], fields=["telfhash_x"]).extra["telfhash_x"]
    for arch, v in values.items():
        assert tc.distance(cx.split(v)[1], cx.split(values["amd64"])[1]) <= 50, arch


def test_cli_field_jsonl():
    files = [_entry(p)["abspath"] for p in ["i386/coreutils/bin__ls", "mipsel/klibc-utils/usr__lib__klibc__bin__cpio"]]
    out = subprocess.run(
        [sys.executable, "-m", "telfhash_core.cli", "--field", "telfhash_x", "-f", "jsonl", *files],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, TELFHASH_NO_ENTRY_POINTS="1"),
    )
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert len(rows) == 2
    for row, path in zip(rows, files):
        ref = next(f for f in corpus.files() if f["abspath"] == path)["reference"]
        assert (row["telfhash"], row["msg"]) == (ref["telfhash"], ref["msg"])
        assert VALUE_RE.match(row["telfhash_x"])


# ----------------------------------------------------------------------------- hostile input


def test_hostile_input_gives_none_or_a_value_never_an_exception():
    rng = random.Random(8)
    seeds = [
        Path(_entry(p)["abspath"]).read_bytes()
        for p in ["armel/coreutils/bin__ls", "mipsel/klibc-utils/usr__lib__klibc__bin__cpio"]
    ]
    cases = [
        b"",
        b"\x7fELF",
        b"\x7fELF\x02\x01\x01" + b"\x00" * 9,
        b"not an elf at all" * 10,
        seeds[0][:64],
        seeds[0][:5000],
    ]
    for seed in seeds:
        for _ in range(150):
            data = bytearray(seed[: rng.choice([len(seed), 2048, 65536])])
            for _ in range(rng.randint(1, 12)):
                pos = rng.randrange(0, min(len(data), 4096))
                data[pos] = rng.randrange(256)
            cases.append(bytes(data))
    for data in cases:
        value = cx.compute(data, None)
        assert value is None or VALUE_RE.match(value)
    r = tc.hash_bytes(b"\x7fELF garbage" * 20, "x", fields=["telfhash_x"])
    assert r.extra["telfhash_x"] is None and "field_errors" not in r.extra


def test_clustering_runs_on_the_companion_field():
    import telfhash_core.similarity.cluster as cluster  # our own module: a broken import must fail, not skip

    archs = ["amd64", "arm64", "armel", "armhf", "i386", "mips64el", "mipsel", "ppc64el", "s390x"]
    results = [tc.hash_file(_entry(f"{a}/coreutils/bin__ls")["abspath"], fields=["telfhash_x"]) for a in archs]
    results += [
        tc.hash_file(_entry(f"{a}/klibc-utils/usr__lib__klibc__bin__cpio")["abspath"], fields=["telfhash_x"])
        for a in archs
    ]
    clusters, _ungroupable = cluster.cluster(results, 50, key="telfhash_x")
    groups = sorted(sorted(Path(m).parent.parent.name for m in c.members) for c in clusters if len(c.members) > 1)
    assert groups == [sorted(archs), sorted(archs)]


def _minimal_elf(machine: int, code: bytes, entry_offset: int = 0, big_endian: bool = False) -> bytes:
    """A 32-bit ELF executable with no sections and one R+X PT_LOAD holding ``code``."""
    import struct

    e = ">" if big_endian else "<"
    ehdr_size, phdr_size, vaddr = 52, 32, 0x10000
    off = ehdr_size + phdr_size
    ident = b"\x7fELF" + bytes([1, 2 if big_endian else 1, 1]) + b"\x00" * 9
    ehdr = ident + struct.pack(
        e + "HHIIIIIHHHHHH",
        2,
        machine,
        1,
        vaddr + off + entry_offset,
        ehdr_size,
        0,
        0,
        ehdr_size,
        phdr_size,
        1,
        40,
        0,
        0,
    )
    phdr = struct.pack(e + "IIIIIIII", 1, off, vaddr + off, vaddr + off, len(code), len(code), 5, 0x1000)
    return ehdr + phdr + code


def test_sweep_of_undecodable_code_ends_quickly():
    import time

    rng = random.Random(80)
    garbage = bytes(rng.randrange(0x80, 0x100) for _ in range(1 << 20))  # no printable strings: the call sweep runs
    for machine in (40, 8, 3):  # ARM, MIPS, x86
        data = _minimal_elf(machine, garbage)
        t = time.perf_counter()
        value = cx.compute(data, None)
        assert time.perf_counter() - t < 30
        assert value is None or VALUE_RE.match(value)


def test_symbol_names_without_terminator_do_not_slow_the_reader_down():
    import time

    f = _entry("amd64/coreutils/bin__ls")
    data = bytearray(Path(f["abspath"]).read_bytes())
    facts = cx.elf_facts(bytes(data))
    table = cx.symbol_table(facts)
    strtab = next(s for s in facts.sections if s.offset == table.strtab_offset)
    data[strtab.offset : strtab.offset + strtab.size] = b"A" * strtab.size  # every name runs into the next
    data += b"B" * (8 << 20)  # and then into 8 MB without a NUL
    t = time.perf_counter()
    value = cx.compute(bytes(data), None)
    assert time.perf_counter() - t < 10
    assert value is None or VALUE_RE.match(value)


def test_call_sweep_decodes_a_thumb_entry_point_as_thumb():
    # bl from Thumb code: "push {r7, lr}; bl +0x100; pop {r7, pc}" encoded for Thumb-2, little-endian
    thumb = bytes.fromhex("80b5") + bytes.fromhex("00f07ef8") + bytes.fromhex("80bd") + b"\x00\x00" * 200
    data = _minimal_elf(40, thumb, entry_offset=1)  # odd entry point: Thumb
    facts = cx.elf_facts(data)
    expected = [
        op
        for _a, _s, mn, op in capstone.Cs(capstone.CS_ARCH_ARM, capstone.CS_MODE_THUMB).disasm_lite(thumb[:8], 0)
        if mn == "bl"
    ]
    assert len(expected) == 1
    targets = cx.call_targets(data, facts)
    assert targets == [f"+{int(expected[0].lstrip('#'), 16):x}"]
