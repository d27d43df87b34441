"""YARA rules per telfhash cluster, compiled and run by the real engines (yara-python, yara-x)
over the whole shared corpus.

Expected values come from outside the code under test: the members' telfhashes and SHA-256s
from the corpus manifest (the reference tool's values, hashlib), the clusters from the
reference's grouping rule applied to them (single linkage at 50 with py-tlsh distances, via the
core's clustering, whose agreement with the reference is tested elsewhere), matches from the
engines themselves.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys

import corpus
import pytest

yara = pytest.importorskip("yara", reason="yara-python is not installed (the stix extra: pip install -e '.[stix]')")
yara_x = pytest.importorskip("yara_x", reason="yara-x is not installed (the stix extra: pip install -e '.[stix]')")

from telfhash_plugins.stix import export_bundle  # noqa: E402
from telfhash_plugins.yara.cli import rules_of_bundle  # noqa: E402
from telfhash_plugins.yara.rules import RuleMember, cluster_rule, rule_name, ruleset  # noqa: E402

from telfhash_core.similarity.cluster import cluster  # noqa: E402

THRESHOLD = 50


@pytest.fixture(scope="module")
def corpus_rules():
    files = corpus.files()
    rows = [
        {"file": f["abspath"], "telfhash": f["reference"]["telfhash"], "sha256": f["sha256"], "arch": f["arch"]}
        for f in files
        if f["reference"]["telfhash"].startswith("t1")
    ]
    clusters, _ = cluster(rows, threshold=THRESHOLD)
    by_file = {r["file"]: r for r in rows}
    rules, telf_only, members = [], [], {}
    for k, c in enumerate(clusters):
        ms = [by_file[m if isinstance(m, str) else m["file"]] for m in c.members]
        if len({m["sha256"] for m in ms}) < 2:
            continue
        name = rule_name(f"grouping--{k:08d}-0000-4000-8000-000000000000")
        rm = [RuleMember(m["sha256"], m["telfhash"]) for m in ms]
        rules.append(cluster_rule(name, rm, threshold=THRESHOLD))
        telf_only.append(cluster_rule(name + "_telfhash_only", rm, threshold=THRESHOLD, by_sha256=False))
        for m in ms:
            members.setdefault(m["sha256"], set()).add(name)
    return files, ruleset(rules + telf_only), members


def _scan(files, source):
    ry = yara.compile(source=source)
    sx = yara_x.Scanner(yara_x.compile(source))
    out = {}
    for f in files:
        with open(f["abspath"], "rb") as fh:
            data = fh.read()
        out[f["sha256"]] = (
            {m.rule for m in ry.match(data=data)},
            {m.identifier for m in sx.scan(data).matching_rules},
        )
    return out


def test_each_rule_matches_its_members_and_no_other_corpus_file_in_both_engines(corpus_rules):
    files, source, members = corpus_rules
    assert len(members) > 100
    got = _scan(files, source)  # one scan per engine: the rules and their telfhash-only twins
    table = collections.Counter()
    for f in files:
        want = members.get(f["sha256"], set())
        for engine, matched in zip(("yara-python", "yara-x"), got[f["sha256"]]):
            full = {m for m in matched if not m.endswith("_telfhash_only")}
            telf = {m[: -len("_telfhash_only")] for m in matched if m.endswith("_telfhash_only")}
            assert full == want, (engine, f["path"], sorted(full ^ want)[:3])
            assert telf <= want, (engine, f["path"])  # the telfhash alone matches no other corpus file either
            if want:
                table[(engine, "by telfhash" if telf == want else "by SHA-256 only")] += 1
    # the telfhash condition carries most members; the SHA-256 covers the rest (fallback path,
    # yara-x's TLSH differing from py-tlsh) -- printed for the closing note
    print(json.dumps({f"{e}: {how}": n for (e, how), n in sorted(table.items())}))
    for engine in ("yara-python", "yara-x"):
        assert table[(engine, "by telfhash")] > table[(engine, "by SHA-256 only")]


def test_members_hashed_by_the_fallback_have_no_engine_telfhash_and_match_by_sha256():
    import telfhash_core as tc

    rows = [f for f in corpus.files() if f["reference"]["telfhash"].startswith("t1") and f["arch"] in ("amd64", "i386")]
    fallback = [f for f in rows[:400] if tc.hash_file(f["abspath"]).method == "fallback"][:6]
    if len(fallback) < 2:
        pytest.skip("fewer than two files hashed by the fallback in this corpus")
    ms = [RuleMember(f["sha256"], f["reference"]["telfhash"]) for f in fallback]
    got = _scan(fallback, ruleset([cluster_rule("fallback_members", ms)]))
    telf = _scan(fallback, ruleset([cluster_rule("fallback_members", ms, by_sha256=False)]))
    for f in fallback:
        assert got[f["sha256"]] == ({"fallback_members"}, {"fallback_members"})
        assert telf[f["sha256"]] == (set(), set())  # neither engine implements the fallback


def test_stix_yara_indicator_and_telfhash_yara_write_the_same_rules(tmp_path):
    fx = corpus.REPO / "tests" / "fixtures"
    entries = json.loads((fx / "fixtures.json").read_text())
    paths = sorted(str(p) for p in (fx / "elf").iterdir())
    assert entries and paths
    b = export_bundle(paths, None, threshold=300, timestamp="2026-11-27T00:00:00Z")
    in_bundle = rules_of_bundle(b)
    assert in_bundle
    out = tmp_path / "c.yar"
    p = subprocess.run(
        [sys.executable, "-m", "telfhash_plugins.yara.cli", *paths, "-t", "300", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    text = out.read_text()
    assert text == ruleset(in_bundle)
    yara.compile(source=text)
    yara_x.compile(text)
    # every YARA Indicator of the bundle compiles on its own too (it carries its imports)
    for o in b["objects"]:
        if o["type"] == "indicator" and o["pattern_type"] == "yara":
            yara.compile(source=o["pattern"])
            yara_x.compile(o["pattern"])


def test_telfhash_yara_through_the_command_hook(tmp_path, capsys):
    """The entry point registers telfhash_plugins.yara.cli; the core's CLI then has `telfhash yara`."""
    import telfhash_plugins.yara.cli as ycli

    import telfhash_core.cli as cli
    from telfhash_core.plugins import get_plugin_manager, reset_plugin_manager

    pm = get_plugin_manager()
    if not pm.is_registered(ycli):
        pm.register(ycli, name="yara-test")
    try:
        fx = corpus.REPO / "tests" / "fixtures" / "elf"
        out = tmp_path / "r.yar"
        assert cli.main(["yara", str(fx), "-r", "-t", "300", "-o", str(out)]) == 0
        text = out.read_text()
        assert text.startswith('import "elf"\nimport "hash"\n') and "rule telfhash_cluster_" in text
        yara.compile(source=text)
    finally:
        reset_plugin_manager()
