#!/usr/bin/env python3
"""Differential fuzzing against the reference tool: mutate the headers of real ELF files (the
test fixtures), hash every mutant with the reference (telfhash 0.9.8) and with telfhash-core, and
print how many agree (telfhash and message).  The reference runs in its own interpreter; files
on which it never finishes (it loops forever on some crafted program headers) are counted apart.

    python benchmarks/fuzz_vs_reference.py [--count N] [--seed S] [--reference-python PATH] [--add FILE...]

``--add`` mutates these files too (e.g. static x86 programs of ``../shared/corpus-static``, whose
``.rela.plt`` and code section the struct-based route reads).
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from test_hostile import SEEDS, header  # noqa: E402

from telfhash_core import hash_file  # noqa: E402

REF_SCRIPT = r"""
import json, os, signal, sys, time
import telfhash
class Hang(BaseException):  # not an Exception: the libraries' handlers must not swallow it
    pass
def alarm(*_):
    raise Hang()
signal.signal(signal.SIGALRM, alarm)
out = {}
for name in sorted(os.listdir(sys.argv[1])):
    signal.alarm(int(sys.argv[3]))
    start = time.monotonic()
    try:
        r = telfhash.telfhash(os.path.join(sys.argv[1], name))[0]
        # its bare `except:` turns the alarm into "Unknown error": tell a hang by the clock
        hung = time.monotonic() - start >= int(sys.argv[3]) - 0.5
        out[name] = ["HANG", ""] if hung else [r["telfhash"], r["msg"]]
    except Hang:
        out[name] = ["HANG", ""]
    except BaseException as e:
        out[name] = ["CRASH", repr(e)[:200]]
    finally:
        signal.alarm(0)
json.dump(out, open(sys.argv[2], "w"))
"""


def mutate(rng: random.Random, data: bytes) -> bytes:
    d = bytearray(data)
    regions = [(0, 64)]
    if d[4] == 2:
        h = header(bytes(d))
        regions += [(h[5], h[5] + h[9] * h[10]), (h[6], h[6] + h[11] * h[12])]
    for _ in range(rng.randint(1, 6)):
        lo, hi = rng.choice(regions)
        hi = min(max(hi, lo + 1), len(d))
        pos, width = rng.randrange(lo, hi), rng.choice([1, 2, 4, 8])
        v = rng.choice(
            [0, 1, 0xFF, 0xFFFF, 2**31 - 1, 2**32 - 1, rng.getrandbits(64), rng.getrandbits(16), rng.getrandbits(8)]
        )
        d[pos : pos + width] = (v % (1 << (8 * width))).to_bytes(width, "little")[: max(0, len(d) - pos)]
    if rng.random() < 0.2:
        d = d[: rng.randint(1, len(d))]
    return bytes(d)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=int, default=10, help="seconds before the reference counts as hanging")
    ap.add_argument("--reference-python", default="/work/refvenv/bin/python")
    ap.add_argument("--add", nargs="*", default=[], metavar="FILE", help="more files to mutate")
    args = ap.parse_args()
    if not Path(args.reference_python).exists():
        print(f"reference interpreter not found: {args.reference_python} (pip install telfhash==0.9.8 in a venv)")
        return 1
    rng = random.Random(args.seed)
    seeds = list(SEEDS.values()) + [Path(p).read_bytes() for p in args.add]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp, "m")
        folder.mkdir()
        for k in range(args.count):
            (folder / f"m{k:05d}").write_bytes(mutate(rng, rng.choice(seeds)))
        script, out = Path(tmp, "ref.py"), Path(tmp, "ref.json")
        script.write_text(REF_SCRIPT)
        subprocess.run([args.reference_python, str(script), str(folder), str(out), str(args.timeout)], check=True)
        ref = json.loads(out.read_text())
        tally: collections.Counter = collections.Counter()
        differ = []
        for name, (value, msg) in sorted(ref.items()):
            ours = hash_file(folder / name)
            if value in ("HANG", "CRASH"):
                tally[f"reference {value.lower()}s"] += 1
                continue
            kind = "hashed" if value.startswith("t1") else value
            if (ours.reference_telfhash, ours.msg) == (value, msg):
                tally[f"agree ({kind})"] += 1
            else:
                tally["differ"] += 1
                differ.append((name, value, msg, ours.reference_telfhash, ours.msg, ours.detail))
    print(f"{args.count} mutants of {len(seeds)} fixtures, seed {args.seed}")
    for k, v in sorted(tally.items()):
        print(f"  {k:<28}{v:>6}")
    for d in differ[:20]:
        print("  differs:", d)
    return 0 if not differ else 1


if __name__ == "__main__":
    sys.exit(main())
