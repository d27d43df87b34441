#!/usr/bin/env python3
"""Every tx2 value of both shared corpora, written to or checked against a JSON file
(path -> value): the guard for changes to tx2's implementation, which must not move a value.

    python benchmarks/tx2_values.py write BASELINE.json
    python benchmarks/tx2_values.py check BASELINE.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from telfhash_core.companion import tx2


def values() -> dict[str, str | None]:
    import corpus

    out = {}
    for group in (corpus.files, corpus.static_files):
        for f in group():
            out[f["path"] if group is corpus.files else "static/" + f["path"]] = tx2.value_of(
                Path(f["abspath"]).read_bytes()
            )
    return out


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("write", "check"):
        print(__doc__, file=sys.stderr)
        return 2
    now = values()
    if args[0] == "write":
        Path(args[1]).write_text(json.dumps(now, indent=0, sort_keys=True))
        print(f"{len(now)} values written")
        return 0
    base = json.loads(Path(args[1]).read_text())
    diff = [p for p in sorted(set(base) | set(now)) if base.get(p, "<absent>") != now.get(p, "<absent>")]
    for p in diff[:20]:
        print(f"{p}: {base.get(p, '<absent>')} -> {now.get(p, '<absent>')}")
    print(f"{len(now)} values, {len(diff)} differ")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
