"""Hostile input: crafted, truncated and corrupted ELF files, and paths that are not files.

Every case must give a per-file result with a reason (never an exception), finish quickly and
stay within a memory bound; and the fast route must agree with the exact (pyelftools) route.
"""

from __future__ import annotations

import os
import signal
import struct
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telfhash_core import Reason, hash_bytes, hash_paths
from telfhash_core.hashing.elf import hash_buffer

FIX = Path(__file__).parent / "fixtures" / "elf"
SEEDS = {
    "x64_dynsym": (FIX / "amd64__iproute2__usr__lib__x86_64-linux-gnu__tc__q_atm.so").read_bytes(),
    "x64_fallback": (FIX / "amd64__klibc-utils__usr__lib__klibc__bin__nuke").read_bytes(),
    "arm_fallback": (FIX / "armel__klibc-utils__usr__lib__klibc__bin__dmesg").read_bytes(),
    "mips_be_dynsym": (FIX / "mips__iot-fam-b__fam_b_v1_mips_dyn").read_bytes(),
    "x86_fallback": (FIX / "i386__klibc-utils__usr__lib__klibc__bin__cpio").read_bytes(),
}


@contextmanager
def time_limit(seconds: int):
    def boom(signum, frame):
        raise TimeoutError(f"took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def check(data: bytes):
    """Hash both ways under a time and memory bound; the two routes must agree."""
    tracemalloc.start()
    try:
        with time_limit(20):
            fast = hash_buffer(data, "crafted")
            exact = hash_buffer(data, "crafted", exact=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20 + 8 * len(data), f"peak {peak} bytes"
    for r in (fast, exact):
        assert r.ok or isinstance(r.reason, Reason)
        assert r.ok or r.detail
    assert (fast.telfhash, fast.reference_telfhash, fast.msg) == (exact.telfhash, exact.reference_telfhash, exact.msg)
    return fast


# ----------------------------------------------------------------------------- crafted headers

EH64 = struct.Struct("<16sHHIQQQIHHHHHH")


def header(data: bytes) -> list:
    return list(EH64.unpack_from(data, 0))


def with_header(data: bytes, **fields) -> bytes:
    names = [
        "ident",
        "type",
        "machine",
        "version",
        "entry",
        "phoff",
        "shoff",
        "flags",
        "ehsize",
        "phentsize",
        "phnum",
        "shentsize",
        "shnum",
        "shstrndx",
    ]
    h = header(data)
    for k, v in fields.items():
        h[names.index(k)] = v
    return EH64.pack(*h) + data[EH64.size :]


def section_index(data: bytes, sh_type: int) -> int:
    h = header(data)
    for i in range(h[12]):
        if struct.unpack_from("<I", data, h[6] + i * 64 + 4)[0] == sh_type:
            return i
    raise LookupError(sh_type)


def with_section(data: bytes, index: int, **fields) -> bytes:
    names = ["name", "type", "flags", "addr", "offset", "size", "link", "info", "addralign", "entsize"]
    fmt = struct.Struct("<IIQQQQIIQQ")
    off = header(data)[6] + index * 64
    s = list(fmt.unpack_from(data, off))
    for k, v in fields.items():
        s[names.index(k)] = v
    return data[:off] + fmt.pack(*s) + data[off + 64 :]


DYN = SEEDS["x64_dynsym"]
FB = SEEDS["x64_fallback"]
DYNSYM = 11

CRAFTED = {
    "huge section count": with_header(DYN, shnum=0xFFFF),
    "extended section count from section 0": with_section(with_header(DYN, shnum=0), 0, size=2**63),
    "section table past the end": with_header(DYN, shoff=2**62),
    "section header size too small": with_header(DYN, shentsize=8),
    "string-table index out of range": with_header(DYN, shstrndx=0xFFF0),
    "dynsym size huge": with_section(DYN, section_index(DYN, DYNSYM), size=(2**59 // 24) * 24),
    "dynsym offset past the end": with_section(DYN, section_index(DYN, DYNSYM), offset=2**40),
    "dynsym entry size zero": with_section(DYN, section_index(DYN, DYNSYM), entsize=0),
    "dynsym entry size odd": with_section(DYN, section_index(DYN, DYNSYM), entsize=7),
    "dynsym string table link wrong": with_section(DYN, section_index(DYN, DYNSYM), link=0),
    "dynsym string table link past the end": with_section(DYN, section_index(DYN, DYNSYM), link=0xFFFF),
    "names past the end": with_section(DYN, section_index(DYN, DYNSYM) + 1, offset=2**33),
    "no program headers, header size zero (reference loops forever)": with_header(FB, phoff=0, phentsize=0, phnum=0),
    "program headers past the end": with_header(FB, phoff=2**50),
    "program header size too small": with_header(FB, phentsize=3),
    "no section headers": with_header(FB, shoff=0, shnum=0),
    "entry in a huge NOBITS section": with_section(FB, 1, type=8, addr=0, size=2**62),
    "code section past the end": with_section(FB, 1, offset=2**45, size=2**45),
    "compressed code section": with_section(FB, 1, flags=0x806),
    "entry point zero": with_header(FB, entry=0),
}


# What the reference tool (telfhash 0.9.8) printed for each crafted file, run on this machine
# (ext4, 24 GiB of memory); None = it never returned.
REFERENCE_ON_CRAFTED = {
    "code section past the end": ("-", "Unknown error"),
    "compressed code section": ("t16ca002744810af4cf146f18551d60351991507155b050f545af09c540d03fe14986511", ""),
    "dynsym entry size odd": ("-", "Could not parse file as ELF"),
    "dynsym entry size zero": ("-", "Could not parse file as ELF"),
    "dynsym offset past the end": ("-", "Could not parse file as ELF"),
    "dynsym size huge": ("-", "Could not parse file as ELF"),
    "dynsym string table link past the end": ("-", "Could not parse file as ELF"),
    "dynsym string table link wrong": ("-", "Could not parse file as ELF"),
    "entry in a huge NOBITS section": ("-", "Unknown error"),
    "entry point zero": ("-", "No symbols found"),
    "extended section count from section 0": (
        "t15cb0120604e9544813e2bd5c085748940014e0840316cc8490a40d5040233588c04f9e",
        "",
    ),
    "huge section count": ("t15cb0120604e9544813e2bd5c085748940014e0840316cc8490a40d5040233588c04f9e", ""),
    "names past the end": ("-", "No symbols found"),
    "no program headers, header size zero (reference loops forever)": None,
    "no section headers": ("t16ca002744810af4cf146f18551d60351991507155b050f545af09c540d03fe14986511", ""),
    "program header size too small": ("-", "Could not parse file as ELF"),
    "program headers past the end": ("-", "Unknown error"),
    "section header size too small": ("-", "Could not parse file as ELF"),
    "section table past the end": ("-", "Could not parse file as ELF"),
    "string-table index out of range": ("-", "Could not parse file as ELF"),
}


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_crafted(name):
    r = check(CRAFTED[name])
    expected = REFERENCE_ON_CRAFTED[name]
    if expected is not None:
        assert (r.reference_telfhash, r.msg) == expected


def test_no_pt_load_answers_with_image_base_zero():
    # The reference (0.9.8) never returns on this file; its current source uses image base 0.
    data = with_header(FB, phoff=0, phentsize=0, phnum=0)
    r = check(data)
    assert r.method == "fallback"


def test_truncations_of_every_seed():
    # Every seed keeps its section headers at the end, so every cut loses them: the reference
    # (0.9.8, checked on these cuts) answers "-" / "Could not parse file as ELF" for each.
    for name, data in SEEDS.items():
        for cut in sorted({0, 1, 4, 5, 6, 16, 20, 52, 63, 64, 65, len(data) // 3, len(data) // 2, len(data) - 1}):
            r = check(data[:cut]) if cut else hash_bytes(data[:cut])
            if cut == 0:
                assert r.reason is Reason.EMPTY, (name, cut, r)
            else:
                assert r.reason in (Reason.NOT_ELF, Reason.CORRUPT), (name, cut, r)
            assert (r.reference_telfhash, r.msg) == ("-", "Could not parse file as ELF"), (name, cut, r)


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"MZ\x90\x00" + b"\x00" * 200, Reason.NOT_ELF),
        (b"#!/bin/sh\necho hello\n", Reason.NOT_ELF),
        (b"\x7fELF", Reason.NOT_ELF),
        (b"\x7fELF\x03\x01" + b"\x00" * 100, Reason.NOT_ELF),
        (b"\x7fELF\x02\x01\x01" + b"\x00" * 20, Reason.CORRUPT),
    ],
)
def test_not_elf_and_short(data, reason):
    r = hash_bytes(data)
    assert r.reason is reason and r.reference_telfhash == "-" and r.msg == "Could not parse file as ELF"


# ----------------------------------------------------------------------------- fuzzing


@st.composite
def mutated(draw):
    seed = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[seed])
    h = header(bytes(data)) if data[4] == 2 else None
    regions = [(0, 64)]
    if h:
        regions.append((h[5], h[5] + h[9] * h[10]))  # program headers
        regions.append((h[6], h[6] + h[11] * h[12]))  # section headers
    for _ in range(draw(st.integers(1, 12))):
        lo, hi = draw(st.sampled_from(regions))
        hi = min(max(hi, lo + 1), len(data))
        pos = draw(st.integers(lo, hi - 1))
        width = draw(st.sampled_from([1, 2, 4, 8]))
        value = draw(
            st.sampled_from(
                [0, 1, 0xFF, 0xFFFF, 0x7FFFFFFF, 2**32 - 1, 2**63, 2**64 - 1, draw(st.integers(0, 2**64 - 1))]
            )
        )
        data[pos : pos + width] = (value % (1 << (8 * width))).to_bytes(width, "little")[: max(0, len(data) - pos)]
    if draw(st.booleans()):
        data = data[: draw(st.integers(1, len(data)))]
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated())
def test_fuzz_mutated_headers(data):
    check(data)


# ----------------------------------------------------------------------------- paths


def test_paths_that_are_not_regular_files(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere")
    notdir = tmp_path / "empty" / "child"
    good = FIX / "amd64__klibc-utils__usr__lib__klibc__bin__nuke"
    paths = [str(p) for p in (fifo, tmp_path, empty, link, notdir, tmp_path / "missing", good)]
    paths.insert(6, str(tmp_path / "nul\x00byte"))
    with time_limit(20):
        results = list(hash_paths(paths, jobs=1))
    assert [r.file for r in results] == paths
    reasons = [r.reason for r in results]
    assert reasons[:7] == [
        Reason.NOT_REGULAR,
        Reason.DIRECTORY,
        Reason.EMPTY,
        Reason.NOT_FOUND,
        Reason.UNREADABLE,
        Reason.NOT_FOUND,
        Reason.UNREADABLE,
    ]
    assert results[7].ok
    for r in results[:7]:
        assert r.reference_telfhash == "-" and r.detail


def test_parallel_batch_goes_on_after_bad_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(CRAFTED["dynsym size huge"])
    good = FIX / "amd64__iproute2__usr__lib__x86_64-linux-gnu__tc__q_atm.so"
    paths = [str(bad), str(tmp_path), str(good)] * 10
    with time_limit(60):
        results = list(hash_paths(paths, jobs=2))
    assert [r.file for r in results] == paths
    assert [r.ok for r in results] == [False, False, True] * 10
