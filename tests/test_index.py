"""The local similarity index: searches equal a brute-force py-tlsh scan, idempotent adds,
clusters equal brute-force connected components, hostile input, the CLI."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tlsh

import corpus
from telfhash_core.similarity import tlshdist
from telfhash_core.store.index import AddStats, Index, Match, encode_packed

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- helpers


def manifest_results() -> list[dict]:
    """The corpus as ``telfhash -f jsonl --sha256`` rows, with the reference tool's values."""
    rows = []
    for f in corpus.manifest()["files"]:
        ref = f["reference"]
        rows.append(
            {
                "file": f["path"],
                "telfhash": ref["telfhash"],
                "msg": ref["msg"],
                "sha256": f["sha256"],
                "size": f["size"],
                "arch": f["arch"],
                "label": f["label"],
            }
        )
    return rows


def unique_by_sha(rows: list[dict]) -> dict[str, dict]:
    first: dict[str, dict] = {}
    for r in rows:
        first.setdefault(r["sha256"], r)
    return first


def brute_force(query: str, entries: dict[str, dict], threshold: int) -> list[tuple[int, str]]:
    """Every (distance, sha256) within threshold, with py-tlsh's own diff."""
    q = "T1" + query[-70:].upper()
    out = []
    for sha, r in entries.items():
        d = r["telfhash"]
        if isinstance(d, str) and d.startswith("t1") and len(d) == 72:
            dist = tlsh.diff(q, "T1" + d[2:].upper())
            if dist <= threshold:
                out.append((dist, sha))
    return sorted(out)


def as_pairs(matches: list[Match]) -> list[tuple[int, str]]:
    return sorted((m.distance, m.sha256) for m in matches)


@pytest.fixture(scope="module")
def rows():
    return manifest_results()


@pytest.fixture(scope="module")
def corpus_index(tmp_path_factory, rows):
    db = tmp_path_factory.mktemp("ix") / "corpus.sqlite"
    with Index(db) as ix:
        st = ix.add_results(rows, source="manifest", batch_size=97)
    return db, st


def run_cli(*args, env=None, input=None):
    e = dict(os.environ, TELFHASH_NO_ENTRY_POINTS="1", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "telfhash_core.cli", *args],
        capture_output=True,
        text=True,
        env=e,
        input=input,
        timeout=120,
    )


# ----------------------------------------------------------------------------- search = brute force


def test_add_counts_match_the_manifest(corpus_index, rows):
    db, st = corpus_index
    uniq = unique_by_sha(rows)
    with_digest = sum(1 for r in uniq.values() if r["telfhash"].startswith("t1"))
    assert st.seen == len(rows)
    assert st.added == len(uniq)
    assert st.with_digest == with_digest
    assert st.without_digest == len(uniq) - with_digest
    assert st.unchanged == len(rows) - len(uniq)
    assert st.skipped == 0
    with Index(db) as ix:
        assert len(ix) == len(uniq)
        s = ix.stats()
        assert s["with_telfhash"] == with_digest
        assert s["distinct_telfhashes"] == len({r["telfhash"] for r in uniq.values() if r["telfhash"].startswith("t1")})
        assert s["reasons"].get("too_few_symbols") == sum(1 for r in uniq.values() if r["telfhash"] == "tnull")


@pytest.mark.parametrize("threshold", [0, 30, 50, 120])
def test_search_equals_brute_force(corpus_index, rows, threshold):
    db, _ = corpus_index
    uniq = unique_by_sha(rows)
    digests = sorted({r["telfhash"] for r in uniq.values() if r["telfhash"].startswith("t1")})
    rng = np.random.default_rng(threshold)
    queries = [digests[i] for i in rng.choice(len(digests), 15, replace=False)]
    with Index(db) as ix:
        for q in queries:
            got = ix.search(q, max_distance=threshold)
            assert as_pairs(got) == brute_force(q, uniq, threshold)
            dists = [m.distance for m in got]
            assert dists == sorted(dists)
            assert got and got[0].distance == 0  # the query itself is an entry


def test_search_entry_fields_come_from_the_first_sighting(corpus_index, rows):
    db, _ = corpus_index
    uniq = unique_by_sha(rows)
    r = next(r for r in uniq.values() if r["telfhash"].startswith("t1"))
    with Index(db) as ix:
        m = next(m for m in ix.search(r["telfhash"], 0) if m.sha256 == r["sha256"])
    assert (m.path, m.telfhash, m.arch, m.size, m.source) == (
        r["file"],
        r["telfhash"],
        r["arch"],
        r["size"],
        "manifest",
    )
    d = m.to_dict()
    assert d["distance"] == 0 and d["sha256"] == r["sha256"] and d["added"].endswith("Z")


def test_query_spellings_and_limit(corpus_index, rows):
    db, _ = corpus_index
    q = next(r["telfhash"] for r in rows if r["telfhash"].startswith("t1"))
    with Index(db) as ix:
        full = ix.search(q, 200)
        assert as_pairs(ix.search("T1" + q[2:].upper(), 200)) == as_pairs(full)
        assert as_pairs(ix.search(q[2:], 200)) == as_pairs(full)
        assert as_pairs(ix.search("  " + q + "\n", 200)) == as_pairs(full)
        assert [m.sha256 for m in ix.search(q, 200, limit=3)] == [m.sha256 for m in full[:3]]
        assert ix.search(q, 200, limit=0) == []


def test_search_by_file_hashes_it_first(corpus_index):
    db, _ = corpus_index
    files = [f for f in corpus.files() if f["reference"]["telfhash"].startswith("t1")][:5]
    with Index(db) as ix:
        for f in files:
            assert as_pairs(ix.search(f["abspath"], 40)) == as_pairs(ix.search(f["reference"]["telfhash"], 40))
            assert f["sha256"] in {m.sha256 for m in ix.search(Path(f["abspath"]), 0)}


def test_entries_without_a_digest_never_match(corpus_index, rows):
    db, _ = corpus_index
    without = {r["sha256"] for r in rows if not r["telfhash"].startswith("t1")}
    assert without
    with Index(db) as ix:
        # the largest distance py-tlsh can give is far below 2000: every entry with a digest
        every = ix.search(next(r["telfhash"] for r in rows if r["telfhash"].startswith("t1")), 100_000)
        found = {m.sha256 for m in every}
        assert not found & without
        assert len(found) == len(ix) - len(without)
        e = ix.get(next(iter(without)))
        assert e["telfhash"] is None and e["reason"] in ("too_few_symbols", "no_symbols", "no_digest")


def test_encode_packed_equals_tlshdist_encode(rows):
    digests = sorted({r["telfhash"] for r in rows if r["telfhash"].startswith("t1")})
    packed = np.frombuffer(b"".join(bytes.fromhex(d[2:]) for d in digests), dtype=np.uint8).reshape(-1, 35)
    a, b = encode_packed(packed), tlshdist.encode(digests)
    for f in ("hex", "checksum", "lvalue", "q1", "q2", "body", "planes"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f


# ----------------------------------------------------------------------------- idempotency


def test_same_sample_twice_is_one_entry(tmp_path, rows):
    db = tmp_path / "i.sqlite"
    sample = dict(next(r for r in rows if r["telfhash"].startswith("t1")))
    with Index(db) as ix:
        st1 = ix.add_results([sample], source="first")
        again = dict(sample, file="/elsewhere/copy", arch=None)
        st2 = ix.add_results([again, sample], source="second")
        assert (st1.added, st2.added, st2.unchanged, st2.updated) == (1, 0, 2, 0)
        assert len(ix) == 1
        e = ix.get(sample["sha256"])
        assert (e["path"], e["source"], e["arch"]) == (sample["file"], "first", sample["arch"])
        assert e["telfhash"] == sample["telfhash"]


def test_later_add_fills_in_a_missing_digest_and_search_sees_it(tmp_path, rows):
    db = tmp_path / "i.sqlite"
    sample = next(r for r in rows if r["telfhash"].startswith("t1"))
    other = next(r for r in rows if r["telfhash"].startswith("t1") and r["sha256"] != sample["sha256"])
    with Index(db) as ix:
        ix.add_results([dict(sample, telfhash="-", reason="corrupt"), other])
        assert sample["sha256"] not in {m.sha256 for m in ix.search(sample["telfhash"], 0)}  # caches the matrix
        st = ix.add_results([dict(sample, file="/second/path")])
        assert (st.added, st.updated) == (0, 1)
        assert sample["sha256"] in {m.sha256 for m in ix.search(sample["telfhash"], 0)}
        e = ix.get(sample["sha256"])
        assert e["reason"] is None and e["telfhash"] == sample["telfhash"] and e["path"] == sample["file"]
        assert len(ix) == 2


def test_incremental_reload_sees_rows_added_by_another_connection(tmp_path, rows):
    db = tmp_path / "i.sqlite"
    with_digest = [r for r in unique_by_sha(rows).values() if r["telfhash"].startswith("t1")]
    with Index(db) as reader, Index(db) as writer:
        writer.add_results(with_digest[:100])
        q = with_digest[150]["telfhash"]
        assert as_pairs(reader.search(q, 80)) == brute_force(q, {r["sha256"]: r for r in with_digest[:100]}, 80)
        writer.add_results(with_digest[100:])
        assert as_pairs(reader.search(q, 80)) == brute_force(q, {r["sha256"]: r for r in with_digest}, 80)


def test_add_files_records_reference_values(tmp_path):
    files = corpus.files()[::25]
    db = tmp_path / "f.sqlite"
    with Index(db) as ix:
        seen = []
        st = ix.add_files(
            [f["abspath"] for f in files], jobs=1, progress=lambda done, total: seen.append((done, total))
        )
        assert seen[-1] == (len(files), len(files))
        assert st.seen == len(files) and st.skipped == 0
        by_sha = {e["sha256"]: e for e in ix.entries()}
    assert len(by_sha) == len({f["sha256"] for f in files})
    for f in files:
        e = by_sha[f["sha256"]]
        ref = f["reference"]["telfhash"]
        assert e["telfhash"] == (ref if ref.startswith("t1") else None), f["path"]
        assert e["size"] == f["size"]


# ----------------------------------------------------------------------------- clusters


def brute_components(entries: dict[str, dict], threshold: int) -> set[frozenset]:
    shas = [s for s, r in entries.items() if r["telfhash"].startswith("t1")]
    digs = ["T1" + entries[s]["telfhash"][2:].upper() for s in shas]
    parent = list(range(len(shas)))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i in range(len(shas)):
        for j in range(i + 1, len(shas)):
            if tlsh.diff(digs[i], digs[j]) <= threshold:
                parent[find(i)] = find(j)
    groups: dict[int, set] = {}
    for i, s in enumerate(shas):
        groups.setdefault(find(i), set()).add(s)
    return {frozenset(g) for g in groups.values()}


@pytest.mark.parametrize("threshold", [20, 50])
def test_clusters_equal_brute_force_components(tmp_path, rows, threshold):
    rng = np.random.default_rng(threshold)
    uniq = unique_by_sha(rows)
    pick = [list(uniq)[i] for i in rng.choice(len(uniq), 600, replace=False)]
    entries = {s: uniq[s] for s in pick}
    with Index(tmp_path / "c.sqlite") as ix:
        ix.add_results(entries.values())
        got = ix.clusters(threshold, min_size=1)
    expect = brute_components(entries, threshold)
    assert {frozenset(m["sha256"] for m in g["members"]) for g in got} == expect
    sizes = [g["size"] for g in got]
    assert sizes == sorted(sizes, reverse=True)
    for g in got[:10]:
        digs = sorted({m["telfhash"] for m in g["members"]})
        assert g["digests"] == len(digs)
        rep = g["representative"]["telfhash"]
        assert g["max_distance"] == max(tlsh.diff("T1" + a[2:], "T1" + b[2:]) for a in digs for b in digs)
        ecc = {a: max(tlsh.diff("T1" + a[2:], "T1" + b[2:]) for b in digs) for a in digs}
        assert ecc[rep] == min(ecc.values())  # the representative is a centre of its cluster
        assert g["exact"] is True and sum(g["archs"].values()) == g["size"]


# ----------------------------------------------------------------------------- hostile input

HOSTILE_QUERIES = [
    None,
    123,
    1.5,
    b"\xff\xfe",
    "",
    "   ",
    "tnull",
    "TNULL",
    "-",
    "t1" + "zz" * 35,
    "t1" + "ab" * 34,
    "t2" + "ab" * 35,
    "x" * 100_000,
    "a\x00b",
    "../../../../etc/shadow-does-not-exist",
    ["t1" + "ab" * 35],
]


@pytest.mark.parametrize("query", HOSTILE_QUERIES, ids=lambda q: repr(q)[:30])
def test_hostile_queries_raise_value_error(corpus_index, query):
    db, _ = corpus_index
    with Index(db) as ix:
        with pytest.raises(ValueError):
            ix.search(query)


def test_hostile_query_files_and_arguments(corpus_index, tmp_path):
    db, _ = corpus_index
    not_elf = tmp_path / "notes.txt"
    not_elf.write_text("hello\n")
    q = "t1" + "ab" * 35
    with Index(db) as ix:
        for bad in (not_elf, tmp_path, str(tmp_path / "missing")):
            with pytest.raises(ValueError):
                ix.search(bad)
        for kw in (
            {"max_distance": -1},
            {"max_distance": True},
            {"max_distance": "50"},
            {"limit": -1},
            {"key": "sha256"},
        ):
            with pytest.raises(ValueError):
                ix.search(q, **kw)
        with pytest.raises(ValueError):
            ix.clusters(-3)


def test_hostile_jsonl_goes_on_after_bad_lines(tmp_path, rows):
    good = [r for r in rows if r["telfhash"].startswith("t1")][:3]
    lines = [
        json.dumps(good[0]),
        "{not json",
        "[1, 2",
        '"a string"',
        "42",
        json.dumps({"file": "x", "telfhash": good[1]["telfhash"]}),  # no sha256
        json.dumps({"file": "y", "telfhash": "t1" + "ab" * 35, "sha256": "zz"}),
        json.dumps(dict(good[1], telfhash="garbage", size="huge", arch=["x"], symbols=-5)),
        "",
        json.dumps(
            dict(
                good[2],
                file="\udcff odd name".encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
                extra={"k": [1, 2]},
            )
        ),
        "\xff\xfe binary junk",
    ]
    p = tmp_path / "in.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogateescape")
    with Index(tmp_path / "j.sqlite") as ix:
        st = ix.add_jsonl(p)
        assert (st.added, st.with_digest, st.skipped) == (3, 2, 7)
        assert len(st.errors) == 7 and any("line 2" in e for e in st.errors)
        e = ix.get(good[1]["sha256"])
        assert e["telfhash"] is None and e["size"] is None and e["symbols"] is None
        assert ix.get(good[0]["sha256"])["source"] == "jsonl:in.jsonl"
        assert {m.sha256 for m in ix.search(good[2]["telfhash"], 0)} == {good[2]["sha256"]}


def test_json_list_input_is_read(tmp_path, rows):
    p = tmp_path / "list.json"
    p.write_text(json.dumps(rows[:40]))
    with Index(tmp_path / "l.sqlite") as ix:
        st = ix.add_jsonl(p, source="misp")
        assert st.added == len({r["sha256"] for r in rows[:40]})
        assert set(ix.stats()["sources"]) == {"misp"}


def test_hostile_index_files(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError, match="not a telfhash index"):
        Index(junk)
    foreign = tmp_path / "foreign.sqlite"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    with pytest.raises(ValueError, match="not a telfhash index"):
        Index(foreign)
    with pytest.raises(FileNotFoundError):
        Index(tmp_path / "absent.sqlite", create=False)
    with pytest.raises(IsADirectoryError):
        Index(tmp_path)
    assert not (tmp_path / "absent.sqlite").exists()


def test_default_path_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TELFHASH_INDEX", str(tmp_path / "env" / "x.sqlite"))
    with Index() as ix:
        assert ix.path == tmp_path / "env" / "x.sqlite"
        assert len(ix) == 0
    assert (tmp_path / "env" / "x.sqlite").is_file()


def test_add_stats_text():
    st = AddStats(seen=3, added=2, with_digest=1, unchanged=1)
    assert "2 added" in str(st) and st.to_dict()["seen"] == 3


# ----------------------------------------------------------------------------- CLI


class _CP:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def cli(capsys, *args) -> _CP:
    """Run ``telfhash ARGS`` in this process (an exception escaping would fail the test)."""
    from telfhash_core.cli import main

    capsys.readouterr()
    try:
        rc = main(list(args))
    except SystemExit as exc:
        rc = exc.code
    out = capsys.readouterr()
    return _CP(rc, out.out, out.err)


def test_cli_add_search_stats_clusters(tmp_path, capsys):
    files = [f for f in corpus.files() if f["pkg"] == "coreutils"][:40]
    assert files
    db = str(tmp_path / "cli.sqlite")
    cp = run_cli("index", "--db", db, "add", "-j", "1", *[f["abspath"] for f in files])  # the real command
    assert cp.returncode == 0, cp.stderr
    assert "Traceback" not in cp.stderr
    q = next(f for f in files if f["reference"]["telfhash"].startswith("t1"))
    cp = run_cli("index", "search", "--db", db, q["reference"]["telfhash"], "-t", "60", "-f", "json")
    assert cp.returncode == 0, cp.stderr
    got = json.loads(cp.stdout)
    entries = unique_by_sha([{"sha256": f["sha256"], "telfhash": f["reference"]["telfhash"]} for f in files])
    assert sorted((m["distance"], m["sha256"]) for m in got) == brute_force(q["reference"]["telfhash"], entries, 60)
    cp = cli(capsys, "index", "--db", db, "search", q["abspath"], "-t", "400", "--limit", "2")
    lines = cp.stdout.splitlines()  # a header row, then the two matches
    assert cp.returncode == 0 and len(lines) == 3 and q["sha256"] in cp.stdout
    assert lines[0].split() == ["DIST", "SHA256", "ARCH", "TELFHASH", "PATH"]
    cp = cli(capsys, "index", "--db", db, "stats", "-f", "json")
    assert json.loads(cp.stdout)["entries"] == len(entries)
    cp = cli(capsys, "index", "--db", db, "stats")
    assert cp.returncode == 0 and f"entries:      {len(entries)}" in cp.stdout
    cp = cli(capsys, "index", "--db", db, "clusters", "-t", "50", "-f", "json")
    groups = json.loads(cp.stdout)
    assert cp.returncode == 0 and all(g["size"] >= 2 for g in groups)
    cp = cli(capsys, "index", "--db", db, "clusters", "-t", "50")
    assert cp.returncode == 0 and ("Cluster 1" in cp.stdout or "no cluster" in cp.stderr)


def test_cli_errors_are_one_line(tmp_path, rows, capsys, monkeypatch):
    db = str(tmp_path / "e.sqlite")
    cp = cli(capsys, "index", "--db", db, "search", "t1" + "ab" * 35)
    assert cp.returncode == 2 and "no index at" in cp.stderr
    jl = tmp_path / "r.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in rows[:30]) + "\nnot json\n")
    cp = cli(capsys, "index", "--db", db, "add", "--jsonl", str(jl), "-f", "json")
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["skipped"] == 1 and "line 31" in cp.stderr
    for bad in ("tnull", "-", "zz", "t1" + "ab" * 34, str(tmp_path)):
        cp = cli(capsys, "index", "--db", db, "search", bad)
        assert cp.returncode == 2 and cp.stderr.startswith("telfhash index: error:"), bad
    cp = cli(capsys, "index", "--db", db, "search", "t1" + "00" * 35, "-t", "0")
    assert cp.returncode == 1 and cp.stdout == ""
    cp = cli(capsys, "index", "--db", db, "search", "t1" + "00" * 35, "-t", "-1")
    assert cp.returncode == 2
    cp = cli(capsys, "index", "--db", db, "add")
    assert cp.returncode == 2 and "PATH" in cp.stderr
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00" * 5000)
    cp = cli(capsys, "index", "--db", str(junk), "stats")
    assert cp.returncode == 2 and "not a telfhash index" in cp.stderr
    # the real command: stdin input and an error, without a traceback
    cp = run_cli("index", "--db", db, "add", "--jsonl", "-", input=json.dumps(rows[40]) + "\n")
    assert cp.returncode == 0 and "1 seen" in cp.stdout
    cp = run_cli("index", "--db", str(junk), "search", "tnull")
    assert cp.returncode == 2 and "Traceback" not in cp.stderr and cp.stderr.count("\n") == 1


# ----------------------------------------------------------------------------- stored snapshot


def test_stored_snapshot_is_used_and_kept_current(tmp_path, rows):
    db = tmp_path / "s.sqlite"
    uniq = [r for r in unique_by_sha(rows).values() if r["telfhash"].startswith("t1")]
    q = uniq[7]["telfhash"]

    def expect(sub):
        return brute_force(q, {r["sha256"]: r for r in sub}, 90)

    with Index(db) as ix:
        ix.add_results(uniq[:300])
        assert ix.save_snapshot(min_rows=1)
        assert not ix.save_snapshot(min_rows=1)  # nothing new
        ix.add_results(uniq[300:500])  # appended after the snapshot
    with Index(db) as ix:
        base, max_id = ix._read_snapshot("digest", ix._generation()[1])
        assert base is not None and len(base[0]) == 300 and max_id == 300
        assert as_pairs(ix.search(q, 90)) == expect(uniq[:500])
        assert ix.save_snapshot(min_rows=1)  # stores the 200 newer rows as a second part
    with Index(db) as ix:
        base, max_id = ix._read_snapshot("digest", ix._generation()[1])
        assert len(base[0]) == 500 and max_id == 500
        assert as_pairs(ix.search(q, 90)) == expect(uniq[:500])
        # a rewrite (a digest filled in for a known sample) makes the snapshot stale
        ix.add_results([dict(uniq[500], telfhash="-")])
        ix.add_results([uniq[500]])
    with Index(db) as ix:
        assert ix._read_snapshot("digest", ix._generation()[1]) == (None, 0)
        assert as_pairs(ix.search(q, 90)) == expect(uniq[:501])
    # a damaged snapshot is ignored, never trusted
    with Index(db) as ix:
        assert ix.save_snapshot(min_rows=1)
    con = sqlite3.connect(db)
    con.execute("UPDATE snapshot SET packed = x'00ff'")
    con.commit()
    con.close()
    with Index(db) as ix:
        assert ix._read_snapshot("digest", ix._generation()[1]) == (None, 0)
        assert as_pairs(ix.search(q, 90)) == expect(uniq[:501])


def test_planes_match_tlshdist_on_random_bytes():
    from telfhash_core.store.index import packed_planes

    rng = np.random.default_rng(3)
    packed = rng.integers(0, 256, (500, 35), dtype=np.uint8)
    digests = ["t1" + r.tobytes().hex() for r in packed]
    assert np.array_equal(packed_planes(packed), tlshdist.encode(digests).planes)
    enc = encode_packed(packed, hex=False)
    for k in (0, 17, 499):
        assert np.array_equal(
            tlshdist.one_to_many(enc, digests[k]), [tlsh.diff("T1" + digests[k][2:], "T1" + d[2:]) for d in digests]
        )


def test_companion_hash_is_recorded_and_searchable(tmp_path):
    from telfhash_core.plugins import field_functions

    if "telfhash_x" not in field_functions():
        pytest.skip("the companion hash plugin is not installed")
    files = [f for f in corpus.files() if f["pkg"] == "coreutils"][:12]
    with Index(tmp_path / "x.sqlite") as ix:
        ix.add_files([f["abspath"] for f in files], jobs=1, fields=("telfhash_x",))
        entries = list(ix.entries())
        with_x = [e for e in entries if e["telfhash_x"]]
        assert with_x and all(e["telfhash_x"].startswith("tx2:") for e in with_x)
        e = with_x[0]
        x = e["telfhash_x"].rsplit(":", 1)[1]
        got = ix.search(e["telfhash_x"], 60, key="telfhash_x")
        others = {o["sha256"]: o["telfhash_x"].rsplit(":", 1)[1] for o in with_x}
        expect = sorted((tlsh.diff("T1" + x[2:], "T1" + v[2:]), s) for s, v in others.items())
        assert as_pairs(got) == [p for p in expect if p[0] <= 60]
        assert ix.stats()["with_telfhash_x"] == len(with_x)
        path = next(f["abspath"] for f in files if f["sha256"] == e["sha256"])
        assert e["sha256"] in {m.sha256 for m in ix.search(path, 0, key="telfhash_x")}


def test_skip_known_paths_does_not_add_again(tmp_path):
    files = corpus.files()[:200:20]
    paths = [f["abspath"] for f in files]
    with Index(tmp_path / "k.sqlite") as ix:
        first = ix.add_files(paths, jobs=1)
        again = ix.add_files(paths + [str(tmp_path / "missing")], jobs=1, skip_known_paths=True)
        n = len({f["sha256"] for f in files})
        assert first.added == n and len(ix) == n
        # every path first seen here is skipped; a duplicate's second path and the missing file are not
        assert again.added == 0 and again.seen == len(paths) + 1
        assert again.unchanged == len(paths) and again.skipped == 1 and "missing" in again.errors[0]


def test_hostile_jsonl_sizes_and_nesting(tmp_path, rows, monkeypatch):
    import telfhash_core.readers as readers_mod  # the one reader of telfhash output

    good = next(r for r in rows if r["telfhash"].startswith("t1"))
    monkeypatch.setattr(readers_mod, "MAX_LINE", 1000)
    p = tmp_path / "big.jsonl"
    p.write_text(json.dumps(good) + "\n" + "x" * 5000 + "\n" + json.dumps(dict(good, sha256="1" * 64)) + "\n")
    with Index(tmp_path / "b.sqlite") as ix:
        st = ix.add_jsonl(p)
    # the good line is added; the over-long line stops the reading (memory stays bounded)
    assert st.added == 1 and st.skipped == 1 and "stopped reading" in st.errors[-1]
    p2 = tmp_path / "nest.jsonl"
    p2.write_text("[" * 500 + "\n" + json.dumps(good) + "\n")
    monkeypatch.setattr(readers_mod, "MAX_LINE", 16 << 20)
    with Index(tmp_path / "n.sqlite") as ix:
        st = ix.add_jsonl(p2)
        assert st.added == 0 and st.skipped == 1
    p3 = tmp_path / "deep.jsonl"
    p3.write_text('{"a": ' * 100_000 + "1" + "}" * 100_000 + "\n" + json.dumps(good) + "\n")
    with Index(tmp_path / "d.sqlite") as ix:
        st = ix.add_jsonl(p3)
        assert st.added == 1 and st.skipped == 1
