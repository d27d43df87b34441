"""The index names samples by MD5, SHA-1 and SHA-256 and keeps a family label per sample:
look-ups, labels in matches and clusters, the `index label` command, and the upgrade of an index
made before these columns existed.  Uses the committed fixtures only."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from telfhash_core.cli import main
from telfhash_core.store.index import SCHEMA_VERSION, Index

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "elf"
# three builds of one program family (same source, three CPUs) and an unrelated tool
FILES = sorted(FIXTURES.glob("*q_atm.so"))


def file_hashes(path: Path) -> dict[str, str]:
    data = path.read_bytes()
    return {name: hashlib.new(name, data).hexdigest() for name in ("md5", "sha1", "sha256")}


@pytest.fixture()
def ix(tmp_path):
    with Index(tmp_path / "ix.sqlite") as index:
        stats = index.add_files([str(p) for p in FILES], jobs=1, progress=False)
        assert stats.added == len(FILES) >= 3
        yield index


def test_add_files_keeps_md5_and_sha1_of_the_bytes(ix):
    for p in FILES:
        h = file_hashes(p)
        e = ix.get(h["sha256"])
        assert e is not None
        assert (e["md5"], e["sha1"]) == (h["md5"], h["sha1"])


@pytest.mark.parametrize("kind", ["md5", "sha1", "sha256"])
def test_lookup_by_any_file_hash_in_any_case(ix, kind):
    p = FILES[0]
    h = file_hashes(p)
    for spelling in (h[kind], h[kind].upper(), f"  {h[kind]}\n"):
        e = ix.lookup(spelling)
        assert e is not None and e["sha256"] == h["sha256"]
    other = hashlib.new(kind, b"not in the index").hexdigest()
    assert ix.lookup(other) is None


@pytest.mark.parametrize("value", ["", "xyz", "0" * 31, "g" * 32, "0" * 63, 42, None, "t1" + "0" * 70])
def test_lookup_refuses_what_is_not_a_file_hash(ix, value):
    with pytest.raises(ValueError):
        ix.lookup(value)


def test_labels_show_in_matches_and_clusters(ix):
    h = file_hashes(FILES[0])
    assert ix.set_label(h["sha256"].upper(), "  tc-atm ")
    assert ix.lookup(h["md5"])["label"] == "tc-atm"
    query = ix.get(h["sha256"])["telfhash"]
    matches = {m.sha256: m for m in ix.search(query, max_distance=300)}
    assert matches[h["sha256"]].label == "tc-atm"
    assert matches[h["sha256"]].md5 == h["md5"] and matches[h["sha256"]].sha1 == h["sha1"]
    assert all(m.label is None for s, m in matches.items() if s != h["sha256"])
    members = [m for c in ix.clusters(300, min_size=1) for m in c["members"]]
    assert {m["sha256"]: m["label"] for m in members}[h["sha256"]] == "tc-atm"
    assert ix.set_label(h["sha256"], None)
    assert ix.get(h["sha256"])["label"] is None
    assert not ix.set_label("0" * 64, "x")
    for bad in ("", "   "):
        with pytest.raises(ValueError):
            ix.set_label(h["sha256"], bad)
    with pytest.raises(ValueError):
        ix.set_label("not-a-sha", "x")


def test_results_carrying_hashes_and_a_label_keep_the_first_label(tmp_path):
    sha, md5, sha1 = "a" * 64, "B" * 32, "c" * 40
    row = {"file": "x", "telfhash": "tnull", "sha256": sha, "md5": md5, "sha1": sha1, "label": "first"}
    with Index(tmp_path / "ix.sqlite") as ix:
        ix.add_results([row])
        ix.add_results([dict(row, label="second", md5="not-hex")])
        e = ix.lookup(md5)
        assert e["label"] == "first" and e["md5"] == md5.lower() and e["sha1"] == sha1
        ix.add_results([{"file": "y", "telfhash": "tnull", "sha256": "d" * 64, "md5": "zz", "label": "x" * 10_000}])
        e = ix.get("d" * 64)
        assert e["md5"] is None and len(e["label"]) == 256


def test_an_index_of_schema_1_gains_the_columns_and_keeps_its_rows(tmp_path):
    path = tmp_path / "old.sqlite"
    with Index(path) as ix:
        ix.add_files([str(FILES[0])], jobs=1, progress=False)
    con = sqlite3.connect(path)  # make it look like an index written before schema 2
    con.execute("DROP INDEX entries_md5")
    con.execute("DROP INDEX entries_sha1")
    for col in ("md5", "sha1", "label"):
        con.execute(f"ALTER TABLE entries DROP COLUMN {col}")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")
    con.commit()
    con.close()
    h = file_hashes(FILES[0])
    with Index(path) as ix:
        assert ix.stats()["schema"] == SCHEMA_VERSION
        e = ix.get(h["sha256"])
        assert e is not None and e["telfhash"] and e["md5"] is None and e["label"] is None
        assert ix.set_label(h["sha256"], "fam")
        ix.add_files([str(FILES[0])], jobs=1, progress=False)  # a new sighting fills md5/sha1 in
        assert ix.lookup(h["md5"])["label"] == "fam"


def test_cli_label_and_clear(ix, capsys):
    h = file_hashes(FILES[1])
    db = str(ix.path)
    assert main(["index", "--db", db, "label", h["sha256"], "mirai"]) == 0
    assert "mirai" in capsys.readouterr().out
    assert ix.get(h["sha256"])["label"] == "mirai"
    assert main(["index", "--db", db, "label", h["sha256"], "--clear"]) == 0
    assert ix.get(h["sha256"])["label"] is None
    assert main(["index", "--db", db, "label", "0" * 64, "x"]) == 2
    assert "no entry" in capsys.readouterr().err
    assert main(["index", "--db", db, "label", h["sha256"]]) == 2
