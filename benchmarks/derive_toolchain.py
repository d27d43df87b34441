#!/usr/bin/env python3
"""Derive tx2's toolchain strings from Debian's cross toolchains (and musl).

Writes ``telfhash_core/companion/toolchain_strings.npz``: the 64-bit keys of every string
found in the allocated data sections of the static C library archives and start files of
every CPU for which Debian ships a cross C library (and of each string with CPU names and
target triplets normalised, as tx2 compares them), with, per key, which toolchains (CPUs)
and which archives contain it (the evidence).

Recipe (Debian 12, bookworm; no package is installed, the .deb files are only unpacked):

    mkdir -p DEBS && cd DEBS
    apt-get download $(apt-cache search --names-only '^(libc6|libc6\\.1)-dev-[a-z0-9]+-cross$' | cut -d' ' -f1) \\
                     $(apt-cache search --names-only '^libgcc-12-dev-[a-z0-9]+-cross$' | cut -d' ' -f1) \\
                     musl-dev libc6-dev libgcc-12-dev
    python benchmarks/derive_toolchain.py DEBS            # unpacks into DEBS/root, derives, writes
    python benchmarks/derive_toolchain.py DEBS --exclude mips,sh4 --out /tmp/x.npz   # a CPU held out

The package name gives the toolchain: ``libc6-dev-ARCH-cross`` and ``libgcc-12-dev-ARCH-cross``
are ``ARCH`` (glibc); the native ``libc6-dev`` and ``libgcc-12-dev`` (a newer point release than the
cross packages) are the build machine's CPU; ``musl-dev`` is ``musl-HOSTARCH``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from telfhash_core.companion import toolchain as tc
from telfhash_core.companion import tx2

# The archives a static C program links from the toolchain (sanitizers, OpenMP, gcov are left out).
ARCHIVES = [
    "libc.a",
    "libm.a",
    "libpthread.a",
    "librt.a",
    "libdl.a",
    "libresolv.a",
    "libutil.a",
    "libanl.a",
    "libc_nonshared.a",
    "libpthread_nonshared.a",
    "libBrokenLocale.a",
    "libmcheck.a",
    "libg.a",
    "libmvec.a",
    "libcrypt.a",
    "libxnet.a",
    "libgcc.a",
    "libgcc_eh.a",
    "libatomic.a",
    "libssp_nonshared.a",
]
KIND_CRT = "crt*.o"
KINDS = ARCHIVES + [KIND_CRT]

_PKG_RE = re.compile(r"^(?:libc6(?:\.1)?-dev|libgcc-\d+-dev)(?:-(?P<arch>[a-z0-9]+)-cross)?$")


def toolchain_of(pkg: str, host_arch: str) -> str | None:
    if pkg == "musl-dev":
        return f"musl-{host_arch}"
    m = _PKG_RE.match(pkg)
    if m is None:
        return None
    return m["arch"] or host_arch  # the native libc6-dev / libgcc-12-dev: the build machine's CPU


def unpack(debs: Path) -> Path:
    root = debs / "root"
    for deb in sorted(debs.glob("*.deb")):
        pkg = deb.name.split("_")[0]
        dest = root / pkg
        if not dest.exists():
            dest.mkdir(parents=True)
            subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
    return root


def package_versions(debs: Path) -> dict[str, str]:
    return {d.name.split("_")[0]: d.name.split("_")[1] for d in sorted(debs.glob("*.deb"))}


def derive(
    root: Path, exclude=(), host_arch: str = "amd64", versions: dict | None = None, log=print
) -> tc.ToolchainData:
    per_key_libc: dict[int, int] = defaultdict(int)
    per_key_kind: dict[int, int] = defaultdict(int)
    libcs: list[str] = []
    sources: dict[str, list[str]] = defaultdict(list)
    for pkgdir in sorted(p for p in root.iterdir() if p.is_dir()):
        chain = toolchain_of(pkgdir.name, host_arch)
        if chain is None or chain in exclude:
            continue
        if chain not in libcs:
            libcs.append(chain)
        bit = 1 << libcs.index(chain)
        sources[chain].append(
            pkgdir.name + ("=" + versions[pkgdir.name] if versions and pkgdir.name in versions else "")
        )
        t0, found = time.perf_counter(), 0
        for path in sorted(pkgdir.rglob("*")):
            if not path.is_file() or path.is_symlink():
                continue
            if path.name in ARCHIVES:
                kind = KINDS.index(path.name)
                try:
                    members = [m for _n, m in tc.ar_members(path.read_bytes())]
                except ValueError:  # a linker script named libc.a on some systems
                    continue
            elif path.suffix == ".o" and ("crt" in path.name or path.parent.name in ("lib", "lib64", "lib32")):
                kind = KINDS.index(KIND_CRT)
                members = [path.read_bytes()]
            else:
                continue
            for obj in members:
                strings = sorted(tc.object_strings(obj))
                # also each string with CPU names and target triplets normalised, as tx2 compares them
                text = [x.decode("ascii", "replace") for x in strings]
                strings += sorted(
                    {n.encode("ascii", "replace") for n, t in zip(tx2.normalise_all(text), text) if n != t}
                )
                for k in tc.string_keys(strings).tolist():
                    per_key_libc[k] |= bit
                    per_key_kind[k] |= 1 << kind
                    found += 1
        log(f"  {pkgdir.name:<40} {chain:<12} {found:>8} strings ({time.perf_counter() - t0:.1f} s)")
    if len(libcs) > 64:
        raise SystemExit("more than 64 toolchains: the evidence mask has 64 bits")
    keys = np.fromiter(per_key_libc.keys(), dtype=np.uint64, count=len(per_key_libc))
    lm = np.fromiter((per_key_libc[int(k)] for k in keys), dtype=np.uint64, count=keys.size)
    km = np.fromiter((per_key_kind[int(k)] for k in keys), dtype=np.uint32, count=keys.size)
    meta = {
        "libcs": libcs,
        "kinds": KINDS,
        "min_string": tc.MIN_TOOLCHAIN,
        "key": "toolchain.string_key: polynomial hash mod 2**64, length mixed in",
        "sources": {k: sorted(v) for k, v in sources.items()},
    }
    return tc.ToolchainData(keys, lm, km, meta)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("debs", type=Path, help="folder with the downloaded .deb files")
    ap.add_argument("--exclude", default="", help="toolchains to leave out, comma-separated (e.g. mips,sh4)")
    ap.add_argument("--host-arch", default="amd64", help="the architecture of musl-dev's .deb")
    ap.add_argument("--out", type=Path, default=tc.DATA_FILE)
    args = ap.parse_args(argv)
    root = unpack(args.debs)
    exclude = {x for x in args.exclude.split(",") if x}
    data = derive(root, exclude, args.host_arch, package_versions(args.debs))
    data.save(args.out)
    print(
        f"wrote {args.out}: {len(data)} strings from {len(data.libcs)} toolchains ({args.out.stat().st_size / 1e6:.2f} MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
