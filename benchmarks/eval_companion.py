#!/usr/bin/env python3
"""How well telfhash, tx1 and tx2 link one program across CPUs and keep programs apart.

For the two shared corpora (``../shared/corpus``: Debian programs for 9 CPUs and small IoT
programs; ``../shared/corpus-static``: static, stripped programs for 14 CPUs) it prints, at
distance 30/50/70, the share of *same-program cross-CPU* pairs linked (higher is better) and
of *different-program* pairs linked (lower is better).  A pair where either file has no value
counts as not linked and stays in the denominator.

* telfhash: the reference tool's values from the manifests; tx1 and tx2 computed here;
* same program: the same ``label`` (corpus-static: one program at one version, both -O2 and
  -Os).  Different program: another program; in corpus-static, the other version of the same
  tool (``sbase:tar@v1`` / ``@v2``) is neither (a variant of one family): those pairs are left
  out of both rates and their link rate is printed on its own line;
* held-out CPU: for each CPU in turn, tx2's derived data (toolchain strings, import helper
  names) is derived without that CPU (its toolchains and its builds), and the pairs with a
  file of that CPU are evaluated;
* held-out program: the programs are split into 10 groups by a hash of the label; for each
  group in turn the import helper names are derived without its programs and the pairs with
  a file of those programs are evaluated (the toolchain strings come from the toolchains,
  never from programs).

    python benchmarks/eval_companion.py [--per-pair] [--corpus debian|static|both]
    python benchmarks/eval_companion.py --write-data   # re-derive tx2_helpers.json from the Debian corpus
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from telfhash_core import companion as cx
from telfhash_core.companion import tx2
from telfhash_core.similarity import tlshdist

THRESHOLDS = (30, 50, 70)
T50 = 1
PROGRAM_FOLDS = 10  # programs are held out in this many groups (by a hash of the label), each in turn


# ----------------------------------------------------------------------------- per file


class Item:
    """One corpus file: its labels, the reference telfhash, tx1, and tx2's material."""

    __slots__ = ("arch", "family", "label", "mat", "path", "telfhash", "tx1")

    def __init__(self, entry: dict, family: str, tx1: bool = True) -> None:
        self.label, self.family, self.arch, self.path = entry["label"], family, entry["arch"], entry["abspath"]
        ref = entry["reference"]["telfhash"]
        self.telfhash = ref if ref.startswith("t1") else None
        buf = Path(self.path).read_bytes()
        self.tx1 = cx.tx1_of(buf) if tx1 else None
        self.mat: tx2.Material | None
        try:
            self.mat = tx2.Material(buf).prepare()
        except Exception:  # noqa: BLE001 (not ELF / unusable: no value (counted as not linked)
            self.mat = None

    def tx2(self, data: tx2.RuleData) -> str | None:
        return tx2.value_from(self.mat, data) if self.mat is not None else None

    @property
    def raw_names(self):
        return self.mat.raw_names if self.mat is not None else None


def load(which: str, tx1: bool = True) -> list[Item]:
    """The files of one corpus (``tx1=False``: without computing tx1, which the CI run skips)."""
    import corpus

    if which == "static":
        return [
            Item(e, e["label"].split("@")[0] if "@" in e["label"] else e["label"].split(":")[0], tx1)
            for e in corpus.static_files()
        ]
    return [Item(e, e["label"], tx1) for e in corpus.files()]


def helpers_from(items, exclude=lambda i: False) -> dict:
    return tx2.derive((i.label, i.arch, i.raw_names) for i in items if i.raw_names is not None and not exclude(i))


# ----------------------------------------------------------------------------- pairs


def rates(items, values, focus=None) -> dict:
    """Pair counts: ``same`` (same label, different CPU) and ``diff`` (different family), each
    ``[pairs, hits at T...]`` overall and per CPU pair; ``variant`` (same family, other label).
    ``focus``: a boolean per item -- only pairs with at least one focused item count."""
    n = len(items)
    labels = np.array([i.label for i in items])
    fams = np.array([i.family for i in items])
    archs = np.array([i.arch for i in items])
    foc = np.ones(n, dtype=bool) if focus is None else np.asarray(focus, dtype=bool)
    # denominators, by CPU pair, from group counts
    same: dict = defaultdict(lambda: [0] * (1 + len(THRESHOLDS)))
    diff: dict = defaultdict(lambda: [0] * (1 + len(THRESHOLDS)))
    variant = [0] * (1 + len(THRESHOLDS))
    cpus = sorted(set(archs.tolist()))
    for a_i, a in enumerate(cpus):
        for b in cpus[a_i:]:
            ma, mb = archs == a, archs == b
            key = (a, b)
            tot = _pairs(ma, mb, foc)
            same_lab = _grouped_pairs(labels, ma, mb, foc)
            same_fam = _grouped_pairs(fams, ma, mb, foc)
            if a != b:
                same[key][0] += same_lab
            diff[key][0] += tot - same_fam
            variant[0] += same_fam - same_lab
    # hits
    idx = [k for k, v in enumerate(values) if v]
    if len(idx) > 1:
        enc = tlshdist.encode([values[k].rpartition(":")[2] for k in idx])
        i, j, d = tlshdist.pairs_within(enc, max(THRESHOLDS))
        ix = np.array(idx)
        i, j = ix[i], ix[j]
        keep = foc[i] | foc[j]
        i, j, d = i[keep], j[keep], d[keep]
        for a, b, dd in zip(i.tolist(), j.tolist(), d.tolist()):
            aa, ab = archs[a], archs[b]
            key = (aa, ab) if aa <= ab else (ab, aa)
            if labels[a] == labels[b]:
                if aa == ab:
                    continue
                row = same[key]
            elif fams[a] == fams[b]:
                row = variant
            else:
                row = diff[key]
            for k, t in enumerate(THRESHOLDS, 1):
                if dd <= t:
                    row[k] += 1
    for rows in (same, diff):
        allrow = [0] * (1 + len(THRESHOLDS))
        for row in list(rows.values()):
            allrow = [x + y for x, y in zip(allrow, row)]
        rows["all"] = allrow
    return {"same": dict(same), "diff": dict(diff), "variant": variant}


def _pairs(ma, mb, foc) -> int:
    """Unordered pairs (x in A, y in B, x != y) with at least one focused member."""
    if ma is mb or np.array_equal(ma, mb):
        n, f = int(ma.sum()), int((ma & foc).sum())
        return n * (n - 1) // 2 - (n - f) * (n - f - 1) // 2
    na, nb = int(ma.sum()), int(mb.sum())
    ua, ub = int((ma & ~foc).sum()), int((mb & ~foc).sum())
    return na * nb - ua * ub


def _grouped_pairs(groups, ma, mb, foc) -> int:
    total = 0
    ga, gb = Counter(groups[ma].tolist()), Counter(groups[mb].tolist())
    fa, fb = Counter(groups[ma & foc].tolist()), Counter(groups[mb & foc].tolist())
    same_cpu = np.array_equal(ma, mb)
    for g, na in ga.items():
        nb = gb.get(g, 0)
        if same_cpu:
            u = na - fa.get(g, 0)
            total += na * (na - 1) // 2 - u * (u - 1) // 2
        else:
            total += na * nb - (na - fa.get(g, 0)) * (nb - fb.get(g, 0))
    return total


def hits_of(values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair within the largest threshold: ``(i, j, d)``, item numbers with ``i < j``."""
    idx = [k for k, v in enumerate(values) if v]
    if len(idx) < 2:
        e = np.zeros(0, dtype=np.int64)
        return e, e, e
    enc = tlshdist.encode([values[k].rpartition(":")[2] for k in idx])
    i, j, d = tlshdist.pairs_within(enc, max(THRESHOLDS))
    ix = np.array(idx)
    return ix[i], ix[j], d


class Groups:
    """Integer codes of label, family and CPU per item, for fast pair counts."""

    def __init__(self, items) -> None:
        self.label = np.unique([i.label for i in items], return_inverse=True)[1]
        self.fam = np.unique([i.family for i in items], return_inverse=True)[1]
        self.arch = np.unique([i.arch for i in items], return_inverse=True)[1]
        self.n = len(items)


def _c2(x):
    return x * (x - 1) // 2


def focused(g: Groups, hits, focus: np.ndarray) -> dict:
    """Overall ``same`` and ``diff`` rows (as :func:`rates`) for the pairs with at least one
    item in ``focus``, from precomputed ``hits`` (vectorised: the hold-out loops call this
    hundreds of times)."""
    f = focus.astype(bool)
    n, nf = g.n, int(f.sum())

    # same label, different CPU, touching focus: all cross-CPU pairs of the label minus those with no focused member
    def cross_pairs(mask):
        lab_cpu = np.bincount(
            g.label[mask] * (g.arch.max() + 1) + g.arch[mask], minlength=(g.label.max() + 1) * (g.arch.max() + 1)
        )
        lab = np.bincount(g.label[mask], minlength=g.label.max() + 1)
        return int(_c2(lab).sum() - _c2(lab_cpu).sum())

    same_den = cross_pairs(np.ones(n, dtype=bool)) - cross_pairs(~f)
    fam_all = np.bincount(g.fam, minlength=g.fam.max() + 1)
    fam_out = np.bincount(g.fam[~f], minlength=g.fam.max() + 1)
    touching = _c2(n) - _c2(n - nf)
    same_fam_touching = int(_c2(fam_all).sum() - _c2(fam_out).sum())
    diff_den = touching - same_fam_touching
    i, j, d = hits
    keep = f[i] | f[j]
    i, j, d = i[keep], j[keep], d[keep]
    same = (g.label[i] == g.label[j]) & (g.arch[i] != g.arch[j])
    diff = g.fam[i] != g.fam[j]
    return {
        "same": {"all": [same_den] + [int((same & (d <= t)).sum()) for t in THRESHOLDS]},
        "diff": {"all": [diff_den] + [int((diff & (d <= t)).sum()) for t in THRESHOLDS]},
        "variant": [0] * (1 + len(THRESHOLDS)),
    }


def frac(row) -> list[float]:
    return [h / row[0] if row[0] else 0.0 for h in row[1:]]


def add(r1: dict, r2: dict) -> dict:
    out: dict = {}
    for part in ("same", "diff"):
        keys = set(r1[part]) | set(r2[part])
        z = [0] * (1 + len(THRESHOLDS))
        out[part] = {k: [x + y for x, y in zip(r1[part].get(k, z), r2[part].get(k, z))] for k in keys}
    out["variant"] = [x + y for x, y in zip(r1["variant"], r2["variant"])]
    return out


# ----------------------------------------------------------------------------- printing


def pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


def pct2(x: float) -> str:
    return f"{100 * x:6.2f}%"


def row_text(name: str, r: dict, key="all") -> str:
    s, d = r["same"].get(key), r["diff"].get(key)
    ss = " ".join(pct(f) for f in frac(s)) if s else "-"
    dd = " ".join(pct2(f) for f in frac(d)) if d else "-"
    return f"  {name:<22} {s[0] if s else 0:>8}  {ss:>20}   {d[0] if d else 0:>9}  {dd:>23}"


def header() -> str:
    ts = "/".join(map(str, THRESHOLDS))
    return f"  {'':<22} {'same':>8}  {'same-prog <=' + ts:>20}   {'diff':>9}  {'diff-prog <=' + ts:>23}"


# ----------------------------------------------------------------------------- evaluation


def evaluate(name: str, items: list[Item], data: tx2.RuleData, debian_items: list[Item], per_pair: bool) -> dict:
    """Prints the tables for one corpus; returns the tx2 figures (for the CI test)."""
    t0 = time.perf_counter()
    values = [i.tx2(data) for i in items]
    rules = Counter(v.split(":")[1] if v else "none" for v in values)
    print(
        f"\n== {name}: {len(items)} files, {len({i.label for i in items})} programs, {len({i.arch for i in items})} CPUs =="
    )
    print(
        f"  tx2 rules: {dict(rules)}; files with a value: telfhash {sum(1 for i in items if i.telfhash)}, "
        f"tx1 {sum(1 for i in items if i.tx1)}, tx2 {sum(1 for v in values if v)}"
    )
    print(header())
    out = {}
    rows = [("telfhash (reference)", [i.telfhash for i in items]), ("tx1", [i.tx1 for i in items]), ("tx2", values)]
    for hname, vals in rows:
        if hname == "tx1" and not any(vals):
            continue  # not computed (CI)
        r = rates(items, vals)
        out[hname] = r
        print(row_text(hname, r))
    r = out["tx2"]
    if r["variant"][0]:
        print(
            f"  (other version of the same tool, neither same nor different: {r['variant'][0]} pairs, tx2 links "
            f"{' '.join(pct(f) for f in frac(r['variant']))})"
        )
    if per_pair:
        print("  tx2 per CPU pair:")
        for key in sorted(k for k in r["same"] if k != "all"):
            print(row_text(f"{key[0]}-{key[1]}", r, key))

    # one CPU held out: derived data without that CPU's toolchains and builds
    g = Groups(items)
    archs = np.array([i.arch for i in items])
    full = data.toolchain or tx2.shipped().toolchain
    assert full is not None
    total: dict | None = None
    per_cpu: list[str] = []
    for cpu in sorted(set(archs.tolist())):
        held_tc = full.without([n for n in full.libcs if n == cpu or n.endswith("-" + cpu)])
        helpers = helpers_from(debian_items, exclude=lambda i, c=cpu: i.arch == c)
        d = tx2.RuleData.from_helpers(helpers, held_tc)
        vals = [i.tx2(d) for i in items]
        rr = focused(g, hits_of(vals), archs == cpu)
        per_cpu.append(f"{cpu} {pct(frac(rr['same']['all'])[T50]).strip()}")
        total = rr if total is None else add(total, rr)
    assert total is not None
    print(header().replace(" " * 22, "held-out CPU".ljust(22), 1))
    print(row_text("tx2, each CPU held out", total))
    print(f"    same-program <=50 with that CPU held out: {', '.join(per_cpu)}")
    out["held_out_cpu"] = total

    # one program held out: import helper names derived without it
    base_key = (data.helpers, tuple(data.prefixes))
    labels = np.array([i.label for i in items])
    fold = np.array([int(hashlib.sha256(lab.encode()).hexdigest(), 16) % PROGRAM_FOLDS for lab in labels.tolist()])
    debian_labels = {i.label for i in debian_items}
    total = None
    cache: dict = {base_key: hits_of(values)}
    for k in range(PROGRAM_FOLDS):
        held = set(labels[fold == k].tolist())
        if not held:
            continue
        if held & debian_labels:  # the helper list is derived from the Debian corpus only
            helpers = helpers_from(debian_items, exclude=lambda i, h=held: i.label in h)
            key = (frozenset(helpers["names"]), tuple(helpers["prefixes"]))
        else:
            key = base_key
        if key not in cache:
            cache[key] = hits_of([i.tx2(tx2.RuleData.from_helpers(helpers, data.toolchain)) for i in items])
        rr = focused(g, cache[key], fold == k)
        total = rr if total is None else add(total, rr)
    assert total is not None
    print(row_text("tx2, each program held", total))
    out["held_out_program"] = total
    print(
        f"  ({time.perf_counter() - t0:.1f} s; {len(cache) - 1} of {PROGRAM_FOLDS} held-out groups changed the helper list)"
    )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", choices=("debian", "static", "both"), default="both")
    ap.add_argument("--per-pair", action="store_true", help="also one row per CPU pair")
    ap.add_argument(
        "--write-data", action="store_true", help="derive tx2_helpers.json from the Debian corpus and write it"
    )
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    try:
        debian = load("debian")
    except BaseException as exc:  # noqa: BLE001 (pytest.skip outside pytest: the shared corpus is absent
        print(f"shared corpus not available: {exc}", file=sys.stderr)
        return 2
    print(f"Debian corpus read in {time.perf_counter() - t0:.1f} s")
    if args.write_data:
        helpers = helpers_from(debian)
        tx2.HELPERS_FILE.write_text(json.dumps(helpers, indent=1, sort_keys=True) + "\n")
        print(f"wrote {tx2.HELPERS_FILE}: {len(helpers['names'])} names, prefixes {helpers['prefixes']}")
        tx2.shipped.cache_clear()
    data = tx2.shipped()
    assert data.toolchain is not None
    print(
        f"tx2 data: {len(data.toolchain)} toolchain strings from {len(data.toolchain.libcs)} toolchains; "
        f"{len(data.helpers)} helper names + prefixes {list(data.prefixes)}"
    )
    if args.corpus in ("debian", "both"):
        evaluate("shared corpus (Debian programs + small IoT programs)", debian, data, debian, args.per_pair)
    if args.corpus in ("static", "both"):
        try:
            static = load("static")
        except BaseException as exc:  # noqa: BLE001 (as above)
            print(f"shared static corpus not available: {exc}", file=sys.stderr)
            return 2
        evaluate("shared corpus-static (static, stripped)", static, data, debian, args.per_pair)
    print(f"\ntotal {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
