"""Grouping: exact connected components, cluster statistics, the reference's shapes and layout,
and the ``telfhash cluster`` command.

Expected groups come from brute force over every pair with py-tlsh's ``diff``; the reference
tool (``telfhash`` 0.9.8, run in its own interpreter) checks ``group()`` and ``-g``.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import tlsh

import corpus
import telfhash_core as tc
from telfhash_core.similarity.cluster import Cluster, cluster, components, group, print_groups, read_items
from telfhash_core.digest import tlsh_digest

# The reference tool's interpreter (telfhash 0.9.8 installed) comes from the environment only.
REF_PYTHON = os.environ.get("TELFHASH_REFERENCE_PYTHON", "")
TELFHASH = [sys.executable, "-m", "telfhash_core.cli"]  # this checkout's command, whatever is installed
D1 = "t1" + "a5" * 35  # far from the fixtures and from each other digest used here


def have_reference() -> bool:
    if not REF_PYTHON or not Path(REF_PYTHON).exists():
        return False
    return subprocess.run([REF_PYTHON, "-c", "import telfhash"], capture_output=True).returncode == 0


needs_reference = pytest.mark.skipif(
    not have_reference(),
    reason="set TELFHASH_REFERENCE_PYTHON to a Python with telfhash 0.9.8 installed"
    + (f" (telfhash not importable by {REF_PYTHON})" if REF_PYTHON else ""),
)


def diff(a: str, b: str) -> int:
    return tlsh.diff("T1" + a[-70:].upper(), "T1" + b[-70:].upper())


def brute_components(digests: list[str], threshold: int) -> list[frozenset[int]]:
    """Connected components of 'diff <= threshold' over positions, by brute force."""
    n = len(digests)
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    for a in range(n):
        for b in range(a + 1, n):
            if diff(digests[a], digests[b]) <= threshold:
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[rb] = ra
    comps: dict[int, set[int]] = {}
    for x in range(n):
        comps.setdefault(find(x), set()).add(x)
    return sorted((frozenset(c) for c in comps.values()), key=min)


def partition(labels) -> list[frozenset[int]]:
    comps: dict[int, set[int]] = {}
    for pos, lab in enumerate(labels):
        comps.setdefault(int(lab), set()).add(pos)
    return sorted((frozenset(c) for c in comps.values()), key=min)


@pytest.fixture(scope="module")
def real():
    """(name, digest, arch) of every corpus file with a digest, from the manifest (reference values)."""
    return [
        (f["path"], f["reference"]["telfhash"], f["arch"])
        for f in corpus.manifest()["files"]
        if f["reference"]["telfhash"].startswith("t1")
    ]


def symbol_lists(limit: int) -> list[list[str]]:
    return corpus.symbol_lists(limit, min_names=25)


@pytest.fixture(scope="module")
def synthetic():
    """Families: real symbol lists with a few names dropped, added or renamed, hashed again."""
    rng = random.Random(5)
    bases = symbol_lists(40)
    vocab = sorted({n for b in bases for n in b})
    out = []
    for base in rng.sample(bases, 12):
        for _ in range(rng.randint(5, 25)):
            s = list(base)
            for _ in range(rng.randint(1, 6)):
                op = rng.random()
                if op < 0.33:
                    s.pop(rng.randrange(len(s)))
                elif op < 0.66:
                    s.append(rng.choice(vocab))
                else:
                    k = rng.randrange(len(s))
                    s[k] += rng.choice("xyz01")
            d = tlsh_digest(sorted(s))
            if d.startswith("t1"):
                out.append(d)
    out += [rng.choice(out) for _ in range(len(out) // 3)]  # duplicates
    rng.shuffle(out)
    return out


# ----------------------------------------------------------------------------- components


@pytest.mark.parametrize("seed,threshold", [(1, 30), (2, 50), (3, 50), (4, 100)])
def test_components_equal_brute_force_on_real_subsets(real, seed, threshold):
    digests = [d for _, d, _ in random.Random(seed).sample(real, 350)]
    assert partition(components(digests, threshold)) == brute_components(digests, threshold)


@pytest.mark.parametrize("threshold", [20, 50, 80])
def test_components_equal_brute_force_on_synthetic_families(synthetic, threshold):
    want = brute_components(synthetic, threshold)
    assert partition(components(synthetic, threshold)) == want
    assert len(want) > 1 and any(len(c) > 2 for c in want)  # non-trivial: families do group


def test_components_spellings_labels_and_non_digests(real):
    d0, d1 = real[0][1], real[1][1]
    labels = components([d0, "T1" + d0[2:].upper(), "tnull", None, d0[2:], "-", d1, "tx1:" + d1], 0)
    assert labels.tolist() == [0, 0, -1, -1, 0, -1, 1, 1]
    assert components([], 50).tolist() == []
    assert components(["tnull"], 50).tolist() == [-1]


# ----------------------------------------------------------------------------- cluster()


def test_cluster_statistics_equal_brute_force(synthetic):
    items = [{"file": f"s{k}", "telfhash": d, "arch": "x64"} for k, d in enumerate(synthetic)]
    items += [{"file": "bad1", "telfhash": "tnull"}, {"file": "bad2", "telfhash": "-"}, {"file": "bad3"}]
    clusters, ungroupable = cluster(items, 50)
    assert ungroupable == ["bad1", "bad2", "bad3"]
    by_name = {f"s{k}": d for k, d in enumerate(synthetic)}
    assert sorted(m for c in clusters for m in c.members) == sorted(by_name)
    assert [c.size for c in clusters] == sorted((c.size for c in clusters), reverse=True)
    for c in clusters:
        ds = [by_name[m] for m in c.members]
        assert c.digests == ds
        if c.size == 1:
            assert (c.max_distance, c.representative) == (0, c.members[0])
            continue
        dist = [[diff(a, b) for b in ds] for a in ds]
        assert c.max_distance == max(max(r) for r in dist)
        # representative: smallest largest distance, then smallest sum, then earliest
        rank = [(max(r), sum(r), k) for k, r in enumerate(dist)]
        assert c.representative == c.members[min(rank)[2]]
        assert c.to_dict()["representative_telfhash"] == ds[min(rank)[2]]
    # same partition as brute force
    pos = {f"s{k}": k for k in range(len(synthetic))}
    got = sorted((frozenset(pos[m] for m in c.members) for c in clusters), key=min)
    assert got == brute_components(synthetic, 50)


def test_cluster_accepts_results_strings_and_a_companion_key(real):
    (n0, d0, a0), (n1, d1, _a1) = real[0], real[1]
    results = [tc.Result(file=n0, telfhash=d0, arch=a0), tc.Result(file=n1, telfhash=None, reason=tc.Reason.NO_SYMBOLS)]
    clusters, bad = cluster(results)
    assert [c.members for c in clusters] == [[n0]] and bad == [n1]
    assert clusters[0].arches == [a0]
    clusters, bad = cluster([d0, "T1" + d0[2:].upper(), "junk"], 0)
    assert clusters[0].size == 2 and bad == ["junk"]
    # --key: the value after the last ':' is the digest; 'telfhash' itself is ignored then
    items = [
        {"file": "a", "telfhash": d0, "telfhash_x": "tx1:" + d1},
        {"file": "b", "telfhash": d1, "telfhash_x": "tx1:" + d1},
        {"file": "c", "telfhash": d0},
    ]
    clusters, bad = cluster(items, 0, key="telfhash_x")
    assert [c.members for c in clusters] == [["a", "b"]] and bad == ["c"]
    r = tc.Result(file="r", telfhash=d0, extra={"telfhash_x": "tx1:" + d1})
    assert cluster([r], key="telfhash_x")[0][0].digests == [d1]


# ----------------------------------------------------------------------------- reference shape


def run_reference_group(entries, threshold):
    code = (
        "import json, sys, telfhash\n"
        "r = telfhash.group(json.load(sys.stdin), threshold=int(sys.argv[1]))\n"
        "print(json.dumps({'grouped': [list(g) for g in r['grouped']], 'nogroup': r['nogroup']}))\n"
    )
    out = subprocess.run(
        [REF_PYTHON, "-c", code, str(threshold)], input=json.dumps(entries), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def merge_overlapping(groups):
    merged: list[set] = []
    for g in groups:
        g = set(g)
        for m in [m for m in merged if m & g]:
            g |= m
            merged.remove(m)
        merged.append(g)
    return sorted(tuple(sorted(m)) for m in merged)


@pytest.mark.reference
@needs_reference
@pytest.mark.parametrize("seed", [11, 12])
def test_group_matches_the_reference_up_to_transitivity(real, seed):
    rng = random.Random(seed)
    sample = rng.sample(real, 90)
    entries = [{"file": n, "telfhash": d, "msg": ""} for n, d, _ in sample]
    entries += [
        {"file": "none.bin", "telfhash": "-", "msg": "No symbols found"},
        {"file": "short.bin", "telfhash": "tnull", "msg": ""},
    ]
    rng.shuffle(entries)
    ref = run_reference_group(entries, 50)
    ours = group(entries, 50)
    assert isinstance(ours["grouped"], tuple) and all(isinstance(g, tuple) for g in ours["grouped"])
    assert all(list(g) == sorted(g) for g in ours["grouped"])
    # the reference's overlapping groups, merged, are exactly our components
    assert sorted(ours["grouped"]) == merge_overlapping(ref["grouped"])
    assert sorted(ours["nogroup"]) == sorted(ref["nogroup"])
    assert "none.bin" not in ours["nogroup"] and "short.bin" not in ours["nogroup"]
    assert tc.group(entries, 50) == ours


def test_group_edges():
    d = "t1" + "a" * 70
    assert group([{"file": "a", "telfhash": d}]) == {"grouped": (), "nogroup": ["a"]}
    assert group([{"file": "a", "telfhash": "-"}]) == {"grouped": (), "nogroup": []}
    assert group([]) == {"grouped": (), "nogroup": []}


# ----------------------------------------------------------------------------- telfhash -g


def corpus_paths(real, patterns):
    return [n for n, _, _ in real if any(p in n for p in patterns)]


@pytest.mark.reference
@needs_reference
def test_dash_g_prints_the_reference_layout(real):
    root = corpus.root()
    names = corpus_paths(real, ["q_atm.so", "/jq/usr__bin__jq", "iproute2/bin__ss"])
    names += [f["path"] for f in corpus.manifest()["files"] if "klibc__bin__false" in f["path"]][:3]  # '-' files
    assert len(names) >= 12
    ref = subprocess.run(
        [REF_PYTHON, "-m", "telfhash", "-g", *names], cwd=root, capture_output=True, text=True, timeout=120
    )
    ours = subprocess.run([*TELFHASH, "-g", *names], cwd=root, capture_output=True, text=True, timeout=120)
    assert ours.returncode == 0, ours.stderr

    # the reference orders groups by size, equal sizes (and 'Ungrouped') in set order, which
    # changes from run to run: compare the hash lines exactly and the groups as collections
    def split(text):
        head, sep, rest = text.partition("\nGroup 1:\n")
        body, _, ungrouped = rest.partition("Ungrouped:\n")
        groups = [tuple(g.split("\n    ")[1:]) for g in ("Group 1:\n" + body).rstrip("\n").split("\nGroup ")]
        groups = [tuple(m.strip() for m in g) for g in groups]
        return (
            head + sep,
            [len(g) for g in groups],
            sorted(groups),
            sorted(ungrouped.splitlines()),
            text.endswith("\n\n"),
        )

    assert split(ours.stdout) == split(ref.stdout)
    sizes = split(ours.stdout)[1]
    assert sizes == sorted(sizes) and len(sizes) >= 3
    assert "Group 1:\n    " in ours.stdout


def test_print_groups_layout():
    import io

    a, b = "t1" + "a" * 70, "t1" + "b" * 70
    out = io.StringIO()
    print_groups([{"file": "x", "telfhash": a}, {"file": "w", "telfhash": a}, {"file": "y", "telfhash": b}], 50, out)
    assert out.getvalue() == "\nGroup 1:\n    w\n    x\nUngrouped:\n    y\n"


# ----------------------------------------------------------------------------- telfhash cluster


def run_cli(*args, stdin=None, cwd=None):
    return subprocess.run([*TELFHASH, *args], input=stdin, capture_output=True, text=True, cwd=cwd, timeout=300)


def test_cluster_cli_round_trip(tmp_path, real):
    root = corpus.root()
    names = corpus_paths(real, ["/iproute2/", "/jq/"])[:120] + ["does/not/exist"]
    (tmp_path / "list").write_text("\n".join(names))
    h = run_cli("-f", "jsonl", "-o", str(tmp_path / "r.jsonl"), *names[:-1], cwd=root)
    assert h.returncode == 0, h.stderr
    out = tmp_path / "c.json"
    r = run_cli("cluster", "-t", "50", "-o", str(out), str(tmp_path / "r.jsonl"))
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    want = {n: d for n, d, _ in real}
    digests = [want[n] for n in names[:-1] if n in want]
    members = [n for n in names[:-1] if n in want]
    expected = [frozenset(members[k] for k in comp) for comp in brute_components(digests, 50)]
    got = [frozenset(c["members"]) for c in doc["clusters"]] + [frozenset([s]) for s in doc["singletons"]]
    assert sorted(got, key=sorted) == sorted(expected, key=sorted)
    for c in doc["clusters"]:
        ds = [want[m] for m in c["members"]]
        assert c["max_distance"] == max(diff(x, y) for x in ds for y in ds)
        assert c["representative"] in c["members"] and c["size"] == len(c["members"])
        assert set(c["arches"]) <= {"x64", "x86", "ARM", "AArch64", "MIPS", "64-bit PowerPC", "IBM S/390"}
    assert set(doc["ungroupable"]) == {n for n in names[:-1] if n not in want}
    # the same results as one JSON list (-f json), as TSV, and as a bare digest list
    # (same order as the JSONL: ties for the representative go to the earliest member)
    rows = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    (tmp_path / "r.json").write_text(json.dumps(rows))
    (tmp_path / "r.tsv").write_text("".join(f"{x['file']}\t{x['telfhash']}\n" for x in rows))
    for src in ("r.json", "r.tsv"):
        r2 = run_cli("cluster", str(tmp_path / src))
        assert r2.returncode == 0, r2.stderr
        again = json.loads(r2.stdout)["clusters"]
        if src == "r.tsv":  # TSV carries no architecture
            again = [dict(c, arches=o["arches"]) for c, o in zip(again, doc["clusters"])]
        assert again == doc["clusters"]
    r3 = run_cli("cluster", "-", stdin="\n".join(digests) + "\n")
    assert r3.returncode == 0
    sizes = sorted(c["size"] for c in json.loads(r3.stdout)["clusters"])
    assert sizes == sorted(c["size"] for c in doc["clusters"])


def test_cluster_cli_hostile_input(tmp_path):
    d = "t1" + "ab" * 35
    (tmp_path / "in.jsonl").write_text(
        '{"file": "a", "telfhash": "%s"}\n{"file": "b", "telfhash": "%s"}\n{broken json\n[1, 2]\n'
        '{"file": "c", "telfhash": 12}\n\x00\x01garbage\n' % (d, d)
    )
    (tmp_path / "bad.json").write_text("[{")
    r = run_cli("cluster", str(tmp_path / "in.jsonl"), str(tmp_path / "missing.jsonl"), str(tmp_path / "bad.json"))
    assert r.returncode == 0
    assert "Traceback" not in r.stderr
    assert "missing.jsonl" in r.stderr and "bad.json" in r.stderr and "in.jsonl:3" in r.stderr
    doc = json.loads(r.stdout)
    assert [c["members"] for c in doc["clusters"]] == [["a", "b"]]
    assert "c" in doc["ungroupable"]
    r = run_cli("cluster", str(tmp_path / "missing.jsonl"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    r = run_cli("cluster", "-t", "-3", str(tmp_path / "in.jsonl"))
    assert r.returncode == 2


def test_read_items_formats():
    d = "t1" + "0f" * 35
    assert read_items(d + "\n# comment\n\n") == [d]
    assert read_items(f"a b.so  {d}\n") == [{"file": "a b.so", "telfhash": d}]
    assert read_items(f"x\t{d}\n") == [{"file": "x", "telfhash": d}]
    errors: list[str] = []
    assert read_items('[{"file": "x"}, 3, "%s"]' % d, "f", errors) == [{"file": "x"}, d]
    assert errors and "f:" in errors[0]


def test_cluster_cli_plots(tmp_path, real):
    items = [{"file": n, "telfhash": d, "arch": a} for n, d, a in real[:200]]
    (tmp_path / "r.json").write_text(json.dumps(items))
    png, page = tmp_path / "g.png", tmp_path / "g.html"
    r = run_cli("cluster", str(tmp_path / "r.json"), "-o", str(tmp_path / "c.json"), "--plot", str(png))
    try:
        import matplotlib  # noqa: F401  (the 'plot' extra)

        assert r.returncode == 0, r.stderr
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    except ImportError:
        assert r.returncode == 1 and "telfhash-core[plot]" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("cluster", str(tmp_path / "r.json"), "-o", str(tmp_path / "c.json"), "--plot", str(page))
    assert r.returncode == 0, r.stderr
    text = page.read_text()
    assert "<svg" in text and "<circle" in text and "<line" in text
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in text
    doc = json.loads((tmp_path / "c.json").read_text())
    assert text.count("<circle") == sum(c["size"] for c in doc["clusters"])
    r = run_cli("cluster", str(tmp_path / "r.json"), "--plot", str(tmp_path / "g.gif"))
    assert r.returncode == 1 and "png" in r.stderr and "Traceback" not in r.stderr


def test_cluster_is_a_dataclass_with_to_dict():
    c = Cluster(members=["a", "b"], digests=["t1" + "a" * 70] * 2, representative="b", max_distance=0)
    assert c.size == 2
    assert c.to_dict()["representative_telfhash"] == "t1" + "a" * 70


def test_hostile_items_are_ungroupable_not_errors(real):
    d = real[0][1]
    items = [
        None,
        5,
        3.5,
        ["x"],
        {"file": 7, "telfhash": ["t1"]},
        {"telfhash": {"a": 1}},
        {"file": "ok", "telfhash": d},
        {"file": "ok2", "telfhash": d.upper()},
        "t1" + "z" * 70,
        "\x00" * 72,
        {"file": "big", "telfhash": "t1" + "0" * 10**6},
    ]
    clusters, bad = cluster(items, 50)
    assert [c.members for c in clusters] == [["ok", "ok2"]]
    assert len(bad) == len(items) - 2
    assert group(items, 50) == {"grouped": (("ok", "ok2"),), "nogroup": []}
    assert components(items[:4] + [d], 50).tolist() == [-1, -1, -1, -1, 0]


def test_png_plot_labels_each_group(tmp_path, monkeypatch):
    """The PNG names every drawn group (representative and size), checked at matplotlib's text calls."""
    matplotlib = pytest.importorskip("matplotlib")  # the 'plot' extra (a third-party package)
    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    from telfhash_core.similarity import cluster as cl

    fixtures = json.loads((Path(__file__).parent / "fixtures" / "fixtures.json").read_text())["files"]
    digests = [e["reference"]["telfhash"] for e in fixtures if e["reference"]["telfhash"].startswith("t1")]
    items = []
    for k, d in enumerate(digests[:4]):  # four families: a digest and two copies one bucket apart
        for v in range(3):
            body = d[:10] + format((int(d[10], 16) + v) % 16, "x") + d[11:] if v else d
            items.append({"file": f"/s/fam{k}_{v}", "telfhash": body, "arch": "x64"})
    clusters, _ = cl.cluster(items, threshold=30)
    texts: list[str] = []
    real_text = Axes.text
    monkeypatch.setattr(
        Axes, "text", lambda self, x, y, s, *a, **k: texts.append(s) or real_text(self, x, y, s, *a, **k)
    )
    png = tmp_path / "g.png"
    cl.plot(clusters, str(png), threshold=30)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    multi = [c for c in clusters if c.size > 1]
    assert len(multi) >= 2
    for k, c in enumerate(clusters, 1):
        if c.size > 1:
            assert f"group {k}: {c.representative.rsplit('/', 1)[-1]} ({c.size})" in texts


def test_cluster_json_is_what_json_dumps_writes(monkeypatch):
    """Each group is written from the columns; the text is json.dumps(to_dict(), indent=1) two
    levels deep, also for names to escape, groups without CPU names and inexact statistics."""
    from telfhash_core.commands.cluster import _GroupText
    from telfhash_core.similarity import cluster as clustermod

    base = "t1" + "0123456789abcdef" * 4 + "012345"
    near = base[:-1] + "7"
    rows = [('a "q" \\ \u00e9', base, "x64"), ("b", near, None), ("c\n\t", base, "ARM"), ("d", near, None)]
    rows += [("e", near, None), ("f", base, None), ("\u2603", D1, None), ("g", D1, None)]
    for limit in (clustermod.EXACT_STATS_LIMIT, 1):  # 1: every group's statistics sampled ("exact": false)
        monkeypatch.setattr(clustermod, "EXACT_STATS_LIMIT", limit)
        cols = clustermod.Columns()
        for name, digest, arch in rows:
            cols.add(name, digest[2:].upper(), arch)
        grouping = clustermod.group_columns(cols, 50)
        writer = _GroupText(grouping)
        texts = [writer.text(k) for k in range(len(grouping)) if grouping.sizes()[k] > 1]
        expect = [json.dumps(c.to_dict(), indent=1).replace("\n", "\n  ") for c in grouping.clusters() if c.size > 1]
        assert texts == expect and len(texts) == 2
        assert ('"exact": false' in texts[0]) == (limit == 1)


@pytest.mark.parametrize("shape", ["jsonl", "json", "text", "singletons", "none"])
def test_cluster_cli_streams_the_same_document_as_cluster(tmp_path, shape):
    """`telfhash cluster` reads and writes as it goes; its JSON equals the document built from
    cluster() and json.dumps(indent=1), byte for byte."""
    fixtures = json.loads((Path(__file__).parent / "fixtures" / "fixtures.json").read_text())["files"]
    items = [{"file": e["corpus_path"], "telfhash": e["reference"]["telfhash"], "arch": e["arch"]} for e in fixtures]
    items += [{"telfhash": items[0]["telfhash"]}, {"file": "x", "telfhash": "-"}, {"file": "y"}]
    # names json.dumps must escape, one of them in a group of members without a CPU name
    items += [{"file": 'a "quoted" \\ name, \u00e9\u2603', "telfhash": items[1]["telfhash"]}, {"file": "\u00fc"}]
    items += [{"file": "plain/1", "telfhash": items[-2]["telfhash"].upper()}, {"file": "plain/2", "telfhash": D1}]
    if shape == "singletons":
        items = [it for it in items if it.get("file", "").endswith(("q_atm.so", "_dyn"))][:2]
    if shape == "none":
        items = [{"file": "a", "telfhash": "tnull"}]
    src = tmp_path / "in"
    if shape == "json":
        src.write_text(json.dumps(items))
    elif shape == "text":
        src.write_text("".join(f"{it.get('file', '')}\t{it.get('telfhash', '-')}\n" for it in items if "file" in it))
        items = [{"file": it["file"], "telfhash": it.get("telfhash", "-")} for it in items if "file" in it]
    else:
        src.write_text("".join(json.dumps(it) + "\n" for it in items))
    r = run_cli("cluster", "-t", "70", str(src), "-o", str(tmp_path / "out.json"))
    assert r.returncode == 0, r.stderr
    clusters, ungroupable = cluster(items, 70)
    doc = {
        "threshold": 70,
        "key": "telfhash",
        "items": len(items),
        "clusters": [c.to_dict() for c in clusters if c.size > 1],
        "singletons": [c.members[0] for c in clusters if c.size == 1],
        "ungroupable": ungroupable,
    }
    assert (tmp_path / "out.json").read_text() == json.dumps(doc, indent=1) + "\n"
