#!/usr/bin/env python3
"""How well telfhash and the companion telfhash-x link one program across CPUs, on the shared corpus.

For each hash and threshold T (30, 50, 70) it prints the fraction of *same-program,
cross-architecture* pairs within distance T (higher is better) and the fraction of
*different-program* pairs within T (lower is better), per architecture pair and overall.
A pair where either file has no hash counts as not linked (it stays in the denominator).

* telfhash values are the reference tool's own (the corpus manifest);
* telfhash-x values are computed by ``telfhash_core.companion`` as shipped;
* hold-out: the helper list is derived from half of the programs (split by a hash of the
  label) and evaluated on the other half, both ways round;
* outside the corpus: ELF files under the given folders (default: this machine's /usr/bin
  and /usr/lib/x86_64-linux-gnu; then /usr/sbin, /usr/libexec, /usr/lib/python3 and
  /usr/lib/gcc, a group no rule was chosen on) -- one CPU only, so only the different-program
  rate means something there; telfhash there is telfhash-core's (identical to the reference
  on the corpus).

    python benchmarks/eval_companion.py [--overall-only] [--outside DIR[,DIR...] ...] [--max-outside N]
    python benchmarks/eval_companion.py --write-data   # re-derive telfhash_core/companion_data.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import stat
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from telfhash_core import companion as cx  # noqa: E402
from telfhash_core.digest import to_tlsh  # noqa: E402

THRESHOLDS = (30, 50, 70)
DATA_PATH = REPO / "telfhash_core" / "companion_data.json"


# ----------------------------------------------------------------------------- per file


class Item:
    """One corpus file: label, arch, the reference telfhash, and what the companion needs."""

    __slots__ = ("label", "arch", "pkg", "path", "telfhash", "tx", "raw", "_buf")

    def __init__(self, entry: dict) -> None:
        self.label, self.arch, self.pkg, self.path = entry["label"], entry["arch"], entry["pkg"], entry["abspath"]
        ref = entry["reference"]["telfhash"]
        self.telfhash = ref if ref.startswith("t1") else None
        self._buf = Path(self.path).read_bytes()
        self.tx = cx.telfhash_x_of(self._buf)
        try:
            self.raw = cx.raw_names(self._buf, cx.elf_facts(self._buf))
        except Exception:
            self.raw = []

    def tx_with(self, data: dict) -> str | None:
        """telfhash-x with another helper list (hold-out evaluation)."""
        return cx.telfhash_x_of(self._buf, data)


def load_corpus() -> list[Item]:
    import corpus

    return [Item(e) for e in corpus.files()]


# ----------------------------------------------------------------------------- pairs


def _tlsh(value: str | None):
    if not value:
        return None
    return to_tlsh(cx.split(value)[1] if ":" in value else value)


def pair_rates(labels, archs, values, thresholds=THRESHOLDS):
    """Counts of linked pairs: ``{"same": {pair_key: [n, hits_T...]}, "diff": {...}}`` where
    pair_key is the sorted (arch, arch) pair, plus an ``"all"`` key in each."""
    objs = [_tlsh(v) for v in values]
    same: dict = defaultdict(lambda: [0] * (1 + len(thresholds)))
    diff: dict = defaultdict(lambda: [0] * (1 + len(thresholds)))
    n = len(objs)
    for i in range(n):
        ti, li, ai = objs[i], labels[i], archs[i]
        for j in range(i + 1, n):
            if li == labels[j]:
                if ai == archs[j]:
                    continue
                rows = same
            else:
                rows = diff
            key = (ai, archs[j]) if ai <= archs[j] else (archs[j], ai)
            row, allrow = rows[key], rows["all"]
            row[0] += 1
            allrow[0] += 1
            tj = objs[j]
            if ti is not None and tj is not None:
                d = ti.diff(tj)
                for k, t in enumerate(thresholds, 1):
                    if d <= t:
                        row[k] += 1
                        allrow[k] += 1
    return {"same": dict(same), "diff": dict(diff)}


def fractions(row) -> list[float]:
    return [h / row[0] if row[0] else 0.0 for h in row[1:]]


def summary(items, values) -> dict:
    r = pair_rates([i.label for i in items], [i.arch for i in items], values)
    return {
        "same": fractions(r["same"].get("all", [0, 0, 0, 0])),
        "diff": fractions(r["diff"].get("all", [0, 0, 0, 0])),
        "same_pairs": r["same"].get("all", [0])[0],
        "diff_pairs": r["diff"].get("all", [0])[0],
        "raw": r,
    }


# ----------------------------------------------------------------------------- hold-out


def fold_of(label: str) -> int:
    return hashlib.sha256(label.encode()).digest()[0] & 1


def holdout(items, split=None) -> list[dict]:
    """Derive from one side of ``split`` (default: half of the programs, by a hash of the
    label), evaluate on the other side; both ways round."""
    split = split or (lambda i: fold_of(i.label))
    out = []
    for train in (0, 1):
        data = cx.derive_helpers((i.label, i.arch, i.raw) for i in items if split(i) == train)
        data = dict(data, names=frozenset(data["names"]), prefixes=tuple(data["prefixes"]))
        test = [i for i in items if split(i) != train]
        out.append(
            {
                "train": train,
                "helpers": len(data["names"]),
                "prefixes": list(data["prefixes"]),
                "telfhash": summary(test, [i.telfhash for i in test]),
                "telfhash_x": summary(test, [i.tx_with(data) for i in test]),
                "files": len(test),
            }
        )
    return out


def by_package(i) -> int:
    """The package split: coreutils (half the corpus) against every other package."""
    return int(i.pkg == "coreutils")


# ----------------------------------------------------------------------------- outside the corpus


def outside_files(dirs, limit: int) -> list[str]:
    seen, out = set(), []
    for d in dirs:
        for root, _dirs, files in os.walk(d):
            for f in sorted(files):
                p = os.path.join(root, f)
                try:
                    st = os.lstat(p)
                    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                    with open(p, "rb") as fh:
                        if fh.read(4) != b"\x7fELF":
                            continue
                except OSError:
                    continue
                out.append(p)
                if len(out) >= limit:
                    return out
    return out


def outside(dirs, limit: int) -> dict:
    from telfhash_core import hash_file

    paths = outside_files(dirs, limit)
    rows, seen = [], set()
    for p in paths:
        r = hash_file(p, sha256=True, fields=[cx.FIELD])
        if r.sha256 in seen:  # the same file twice is not two programs
            continue
        seen.add(r.sha256)
        rows.append((p, r.telfhash, r.extra.get(cx.FIELD)))
    labels = [p for p, _, _ in rows]
    archs = ["host"] * len(rows)
    out = {"files": len(rows)}
    for k, name in ((1, "telfhash"), (2, "telfhash_x")):
        r = pair_rates(labels, archs, [row[k] for row in rows])
        out[name] = fractions(r["diff"].get("all", [0, 0, 0, 0]))
        out[name + "_hashed"] = sum(1 for row in rows if row[k])
    out["pairs"] = len(rows) * (len(rows) - 1) // 2
    return out


# ----------------------------------------------------------------------------- printing


def pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


def pct2(x: float) -> str:
    return f"{100 * x:6.2f}%"


def print_table(ref: dict, tx: dict, per_pair: bool) -> None:
    ts = "/".join(str(t) for t in THRESHOLDS)
    print(f"{'arch pair':<20} {'same-prog pairs':>15}  {'telfhash <=' + ts:>24}  {'telfhash-x <=' + ts:>24}  {'diff-prog pairs':>15}  {'telfhash <=' + ts:>27}  {'telfhash-x <=' + ts:>27}")
    keys = ["all"]
    if per_pair:
        keys += sorted(k for k in set(ref["raw"]["same"]) | set(ref["raw"]["diff"]) if k != "all")
    for k in keys:
        rs, xs = ref["raw"]["same"].get(k), tx["raw"]["same"].get(k)
        rd, xd = ref["raw"]["diff"].get(k), tx["raw"]["diff"].get(k)
        name = "overall" if k == "all" else f"{k[0]}-{k[1]}"
        s1 = " ".join(pct(f) for f in fractions(rs)) if rs else "-"
        s2 = " ".join(pct(f) for f in fractions(xs)) if xs else "-"
        d1 = " ".join(pct2(f) for f in fractions(rd)) if rd else "-"
        d2 = " ".join(pct2(f) for f in fractions(xd)) if xd else "-"
        print(f"{name:<20} {rs[0] if rs else 0:>15}  {s1:>24}  {s2:>24}  {rd[0] if rd else 0:>15}  {d1:>27}  {d2:>27}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--overall-only", action="store_true", help="only the overall rows")
    ap.add_argument(
        "--outside",
        action="append",
        metavar="DIR[,DIR...]",
        help="a group of folders of ELF files outside the corpus (repeatable; default: /usr/bin,/usr/lib/x86_64-linux-gnu "
        "and, as a second group never used to choose a rule, /usr/sbin,/usr/libexec,/usr/lib/python3,/usr/lib/gcc)",
    )
    ap.add_argument("--max-outside", type=int, default=1500, help="at most this many files from --outside")
    ap.add_argument("--write-data", action="store_true", help="derive the helper list from the whole corpus and write it")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    try:
        items = load_corpus()
    except BaseException as exc:  # pytest.skip outside pytest: the shared corpus is absent
        print(f"shared corpus not available: {exc}", file=sys.stderr)
        return 2
    print(f"corpus: {len(items)} files, {len({i.label for i in items})} programs, {len({i.arch for i in items})} architectures  (features in {time.perf_counter() - t0:.1f} s)")
    if args.write_data:
        data = cx.derive_helpers((i.label, i.arch, i.raw) for i in items)
        DATA_PATH.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        print(f"wrote {DATA_PATH}: {len(data['names'])} names, prefixes {data['prefixes']}")
        cx.helper_data.cache_clear()
        items = load_corpus()
    sources = Counter(cx.features(Path(i.path).read_bytes())[0] for i in items)
    print(f"telfhash-x sources: {dict(sources)}; hashed: telfhash {sum(1 for i in items if i.telfhash)}, telfhash-x {sum(1 for i in items if i.tx)}")

    print("\n== shared corpus (helper list as shipped, derived from the whole corpus) ==")
    ref = summary(items, [i.telfhash for i in items])
    tx = summary(items, [i.tx for i in items])
    print_table(ref, tx, per_pair=not args.overall_only)

    print("\n== hold-out: helper list derived from half of the programs, evaluated on the other half ==")
    for h in holdout(items):
        print(
            f"fold {h['train']}->{1 - h['train']}: {h['files']} files, {h['telfhash']['same_pairs']} same-program / {h['telfhash']['diff_pairs']} different-program pairs, "
            f"{h['helpers']} helper names + prefixes {h['prefixes']}"
        )
        for name in ("telfhash", "telfhash_x"):
            s = h[name]
            print(
                f"  {name:<11} same-program within {'/'.join(map(str, THRESHOLDS))}: {' '.join(pct(f) for f in s['same'])}   "
                f"different-program: {' '.join(pct2(f) for f in s['diff'])}"
            )
    print("\n== hold-out by package: derived from coreutils only / from every other package, evaluated on the rest ==")
    for h in holdout(items, by_package):
        print(
            f"{'coreutils -> others' if h['train'] else 'others -> coreutils'}: {h['files']} files, {h['telfhash']['same_pairs']} same-program / {h['telfhash']['diff_pairs']} different-program pairs, "
            f"{h['helpers']} helper names + prefixes {h['prefixes']}"
        )
        for name in ("telfhash", "telfhash_x"):
            s = h[name]
            print(
                f"  {name:<11} same-program within {'/'.join(map(str, THRESHOLDS))}: {' '.join(pct(f) for f in s['same'])}   "
                f"different-program: {' '.join(pct2(f) for f in s['diff'])}"
            )

    print("\n== cost: hash_file over the corpus, one process, without and with the telfhash_x field ==")
    from telfhash_core import hash_file

    paths = [i.path for i in items]
    for _ in range(2):  # alternate, to share the machine's noise
        t1 = time.perf_counter()
        for p in paths:
            hash_file(p)
        plain = time.perf_counter() - t1
        t1 = time.perf_counter()
        for p in paths:
            hash_file(p, fields=[cx.FIELD])
        both = time.perf_counter() - t1
        print(f"  telfhash only {1000 * plain / len(paths):.2f} ms/file, with telfhash_x {1000 * both / len(paths):.2f} ms/file (x{both / plain:.2f})")

    groups = args.outside or ["/usr/bin,/usr/lib/x86_64-linux-gnu", "/usr/sbin,/usr/libexec,/usr/lib/python3,/usr/lib/gcc"]
    for group in groups:
        dirs = [d for d in group.split(",") if os.path.isdir(d)]
        if not dirs:
            continue
        t1 = time.perf_counter()
        o = outside(dirs, args.max_outside)
        print(f"\n== outside the corpus: {o['files']} distinct ELF files under {', '.join(dirs)} ({o['pairs']} pairs, all different programs; {time.perf_counter() - t1:.1f} s) ==")
        for name in ("telfhash", "telfhash_x"):
            print(f"  {name:<11} hashed {o[name + '_hashed']:>5}   different-program pairs within {'/'.join(map(str, THRESHOLDS))}: {' '.join(pct2(f) for f in o[name])}")
    print(f"\ntotal {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
