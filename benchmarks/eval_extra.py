#!/usr/bin/env python3
"""tx2 on static, stripped programs outside the shared corpora (built by build_extra_static.sh):
the small IoT programs and a tiny downloader for amd64, riscv64, hppa and alpha, compared with
each other and with corpus-static's builds of the same programs for 14 CPUs.

Families: ``fam_a`` and ``fam_b`` (v1 and v2, -O2 and -Os) and ``dl`` (the downloader, whose
one long string names its CPU).  Printed: same-family cross-CPU pairs and different-family pairs
within 30/50/70, for telfhash (telfhash-core's, equal to the reference), tx2 as shipped, and tx2
with the extra file's CPU held out of the toolchain data (for the ``musl-amd64`` builds: musl
left out, so that their C library is one nothing in the data comes from; their pairs with the
glibc builds for amd64 count as "other CPU").

    python benchmarks/eval_extra.py DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from telfhash_core import hash_file  # noqa: E402
from telfhash_core.companion import tx2  # noqa: E402
from telfhash_core.digest import distance  # noqa: E402

THRESHOLDS = (30, 50, 70)


def rates(rows, values) -> str:
    same = [0] * 4
    diff = [0] * 4
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            (fi, ai, xi), (fj, aj, xj) = rows[i], rows[j]
            if not (xi or xj):  # only pairs with at least one extra (outside) file
                continue
            if fi == fj and ai == aj:
                continue
            row = same if fi == fj else diff
            row[0] += 1
            a, b = values[i], values[j]
            if a and b:
                d = distance(a.rpartition(":")[2], b.rpartition(":")[2])
                for k, t in enumerate(THRESHOLDS, 1):
                    row[k] += d <= t
    f = lambda r: " ".join(f"{100 * h / r[0]:5.1f}%" if r[0] else "-" for h in r[1:])  # noqa: E731
    return f"same-family cross-CPU {same[0]:>4} pairs {f(same)}   different-family {diff[0]:>5} pairs {f(diff)}"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    import corpus

    rows, paths = [], []
    for p in sorted(Path(argv[0]).glob("*/*")):
        if p.is_file() and p.parent.name != "src":
            rows.append((p.name.split("_v")[0].split("-O")[0], p.parent.name, True))
            paths.append(str(p))
    for f in corpus.static_files():
        if f["pkg"].startswith("iot-fam"):
            rows.append((f["program"], f["arch"], False))
            paths.append(f["abspath"])
    full = tx2.shipped()
    ref = [hash_file(p).telfhash for p in paths]
    ref = [r if r and r.startswith("t1") else None for r in ref]
    shipped = [tx2.value_of(Path(p).read_bytes()) for p in paths]
    held = []
    for (_fam, arch, extra), p in zip(rows, paths):
        data = full
        if extra:
            tcd = full.toolchain
            assert tcd is not None
            data = tx2.RuleData(full.helpers, full.prefixes, tcd.without([n for n in tcd.libcs if n == arch]))
        held.append(tx2.value_of(Path(p).read_bytes(), data))
    n_extra = sum(1 for r in rows if r[2])
    print(
        f"{n_extra} files outside the corpora ({', '.join(sorted({r[1] for r in rows if r[2]}))}), with {len(rows) - n_extra} corpus-static builds of fam_a/fam_b"
    )
    print(f"  telfhash                         {rates(rows, ref)}")
    print(f"  tx2 as shipped                   {rates(rows, shipped)}")
    print(f"  tx2, the file's CPU held out     {rates(rows, held)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
