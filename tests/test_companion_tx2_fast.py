"""tx2's fast paths give what the plain formulas give.

Each test computes one step the straightforward way (the formula as the rules state it: a
case-insensitive substitution, a sort by CRC-32 of the byte-sorted strings, a binary search, a
polynomial hash written out in Python, SHAKE-128 and TLSH called per value) and compares it with
the faster implementation, on inputs chosen to reach the edge cases (ties, caches that hold a
shorter stream, the string cap).
"""

from __future__ import annotations

import hashlib
import random
import zlib
from pathlib import Path

import corpus
import numpy as np
import tlsh

from telfhash_core.companion import toolchain as tcd
from telfhash_core.companion import tx2


def _plain_normalise(s: str) -> str:
    return tx2._CPU_RE.sub("<cpu>", tx2._TRIPLET_RE.sub("<triplet>", s))


def test_normalise_string_matches_the_case_insensitive_patterns():
    rng = random.Random(7)
    pieces = [w for w in tx2._CPU_WORDS] + ["linux", "-linux-", "gnu", "Linux", "X86_64", "ARM", "sh", "ſh"]
    pieces += ["usr", "lib", "a", "9", "_", "-", "/", " ", ".", "\x00", "K", "ı", "é"]
    cases = [
        "/usr/lib/sh4-linux-gnu/gconv",
        "x86_64-linux-gnu\x00ARM-Linux-GNUEABIHF\x00sh",
        "aarch64_be-unknown-linux-musl",
        "foo-LINUX-bar mips\x00\x00sh4eb.arm",
        "",
        "\x00",
        "Kelvin: K-linux, dotless: ı386",
    ]
    for _ in range(3000):
        cases.append("".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))))
    for s in cases:
        assert tx2.normalise_string(s) == _plain_normalise(s), s
    joined = [c for c in cases if "\x00" not in c][:500]
    assert tx2.normalise_all(joined) == [_plain_normalise(s) for s in joined]


def _colliding_pairs(n: int) -> list[tuple[bytes, bytes]]:
    seen: dict[int, bytes] = {}
    pairs = []
    i = 0
    while len(pairs) < n:
        b = b"%08d" % i
        c = zlib.crc32(b)
        if c in seen:
            pairs.append((seen[c], b))
        seen[c] = b
        i += 1
    return pairs


def test_crc_first_is_the_crc_order_of_the_sorted_strings():
    rng = random.Random(3)
    pairs = _colliding_pairs(3)
    # strings whose CRCs are the smallest possible neighbours of a colliding pair's
    for trial in range(300):
        strings = {bytes(rng.randrange(256) for _ in range(rng.randint(1, 7))) for _ in range(rng.randint(0, 2500))}
        if trial % 2:
            strings |= {x for p in pairs for x in p}
        for k in (1, 2, 7, 1024, len(strings) - 1, len(strings), len(strings) + 1):
            if k >= 1:
                assert tx2.crc_first(strings, k) == sorted(sorted(strings), key=zlib.crc32)[:k]
    # a pair tied within the first k: the byte order decides
    low = sorted({x for p in pairs for x in p}, key=zlib.crc32)
    assert tx2.crc_first(set(low), 2) == sorted(sorted(low), key=zlib.crc32)[:2]


def test_contains_matches_a_binary_search():
    data = tcd.shipped()
    rng = np.random.default_rng(5)
    queries = np.concatenate(
        (
            rng.integers(0, 2**63, 5000, dtype=np.int64).astype(np.uint64) * np.uint64(2),
            data.keys[rng.integers(0, data.keys.size, 5000)],
            data.keys[:3],
            data.keys[-3:],
            np.array([0, 2**64 - 1], dtype=np.uint64),
        )
    )
    idx = np.searchsorted(data.keys, queries)
    idx[idx >= data.keys.size] = 0
    assert np.array_equal(data.contains(queries), data.keys[idx] == queries)
    assert data.contains(np.zeros(0, dtype=np.uint64)).size == 0
    held_out = data.without(data.libcs[:2])  # another key set, its own bucket table
    idx = np.searchsorted(held_out.keys, queries)
    idx[idx >= held_out.keys.size] = 0
    assert np.array_equal(held_out.contains(queries), held_out.keys[idx] == queries)


def _plain_key(s: bytes) -> int:
    mask = (1 << 64) - 1
    h = 0
    for b in s:
        h = (h * int(tcd._MUL) + b) & mask
    h = (h + len(s) * int(tcd._LEN)) & mask
    for mult in (int(tcd._MIX1), int(tcd._MIX2)):
        h ^= h >> 33
        h = (h * mult) & mask
    return h ^ (h >> 33)


def test_suffix_keys_are_the_polynomial_hash_of_every_suffix():
    rng = random.Random(11)
    strings = [bytes(rng.randrange(256) for _ in range(rng.randint(0, 40))) for _ in range(60)] + [b"", b"a"]
    keys, starts, ends = tcd.suffix_keys(strings)
    assert keys.size == sum(map(len, strings))
    for s, a, b in zip(strings, starts.tolist(), ends.tolist()):
        assert keys[a:b].tolist() == [_plain_key(s[i:]) for i in range(len(s))]


def _plain_digest(tokens: list[str]) -> str | None:
    ordered = sorted(set(tokens), key=lambda t: hashlib.sha256(t.encode("utf-8", "ignore")).digest())
    ordered = ordered[: tx2.MAX_TOKENS]
    expand = max(tx2.MIN_EXPAND, tx2.BUDGET // len(ordered))
    data = b"".join(hashlib.shake_128(t.encode("utf-8", "ignore")).digest(expand) for t in ordered)
    d = tlsh.forcehash(data).lower()
    return d if d.startswith("t1") else None


def test_digest_tokens_with_and_without_cached_streams():
    rng = random.Random(13)
    vocabulary = [f"name{i}" for i in range(6000)] + ["\x00a string %d" % i for i in range(200)]
    tx2.clear_caches()
    # set sizes that need streams longer and shorter than those cached before them, and sets
    # over MAX_TOKENS
    for n in (300, 40, 500, 97, 96, 1, 2, 5000, 200, 195, 196, 64):
        tokens = rng.sample(vocabulary, n)
        assert tx2.digest_tokens(tokens) == _plain_digest(tokens), n
    tx2.clear_caches()
    assert tx2.digest_tokens(["a", "b", "c"] * 3) == _plain_digest(["a", "b", "c"])


def test_normalise_names_remembered_or_not():
    data = tx2.shipped()
    names = ["open64", "__open64_2", "_Znwj", "printf", "", "__libc_start_main", "__stat64_time64", "___", "x"]

    def plain(ns):
        out = set()
        for n in ns:
            f = tx2.fold_name(n) if n else ""
            if f and f not in data.helpers and not f.startswith(data.prefixes):
                out.add(f)
        return sorted(out)

    tx2.clear_caches()
    assert tx2.normalise_names(names, data) == plain(names)
    assert tx2.normalise_names(names[::-1] + ["close"], data) == plain(names + ["close"])


def test_symbol_strings_under_the_string_cap(monkeypatch):
    """With the cap reached, the sample is drawn from the capped strings (the first in file order)."""
    f = next(e for e in corpus.files() if e["path"].endswith("usr__bin__curl") or e["path"].endswith("bin__busybox"))
    buf = Path(f["abspath"]).read_bytes()
    full = tx2.symbol_string_tokens(tx2.raw_strings(buf, tx2.elf_facts(buf)))
    assert tx2.Material(buf).symbol_strings == full
    monkeypatch.setattr(tx2, "MAX_STRINGS_BYTES", 20000)
    capped = tx2.raw_strings(buf, tx2.elf_facts(buf))
    assert sum(map(len, capped)) <= 20000 < sum(map(len, tx2.ordered_strings(buf, tx2.elf_facts(buf))))
    assert len(capped) > 256
    pool = sorted(capped, key=zlib.crc32)[:1024] if len(capped) > 256 else capped
    text = [s for s in pool if tx2.is_text(s)][:256]
    expected = ["\x00" + t for t in tx2.normalise_all([b.decode("ascii", "replace") for b in text])]
    assert tx2.Material(buf).symbol_strings == expected != full


def test_symbol_string_tokens_is_the_written_rule():
    """A dynamic file's sample: CRC-32 order of the sorted strings, text only, normalised."""
    for f in corpus.files()[::40]:
        buf = Path(f["abspath"]).read_bytes()
        try:
            strings = sorted(tx2.raw_strings(buf, tx2.elf_facts(buf)))  # (raw_strings: file order)
        except Exception:  # noqa: BLE001 (not an ELF file the companion reads)
            continue
        pool = sorted(strings, key=zlib.crc32)[:1024] if len(strings) > 256 else strings
        text = [s for s in pool if tx2.is_text(s)][:256]
        want = ["\x00" + t for t in tx2.normalise_all([b.decode("ascii", "replace") for b in text])]
        assert tx2.symbol_string_tokens(set(strings)) == want, f["path"]
