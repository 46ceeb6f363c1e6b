"""Guest-physical lookup cost of the C core's region table (vs_mem.c), per table size.

Compiles a small C driver against vs_mem.c of this tree and of a git revision (default: main, or
origin/main in a clone whose checked-out branch is another; its header is widened to 509 regions so an
old table that was always walked, such as the one before memory slots, can be timed on large tables
too), then times vs_gpa_to_iov for 64-byte buffers at random guest addresses spread over every region of
a table of N adjacent 64 KiB regions. Prints ns per lookup
(the best of --repeat runs) and, with valgrind installed, instructions per lookup (counted, so not
disturbed by a loaded machine the way the times are; branch mispredictions are not in them) for each N and each build.

    python3 benchmarks/mem_lookup_bench.py [--rev REV] [--sizes 1,3,8,9,40,509] [--repeat 5]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
CORE = os.path.join(HERE, "..", "vhostsplice", "_core")
DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <sys/uio.h>
#include "vs_api.h"
int main(int argc, char **argv) {
    uint32_t n = (uint32_t)atoi(argv[1]);
    long iters = atol(argv[2]);
    static struct vs_mem m;
    uint64_t chunk = 64 << 10, base = 0x40000000;
    uint8_t *buf = malloc(n * chunk);
    for (uint32_t i = 0; i < n; i++) {
        m.r[i].gpa = base + i * chunk; m.r[i].uva = 0x7f0000000000ull + i * chunk;
        m.r[i].size = chunk; m.r[i].hva = buf + i * chunk;
    }
    m.n = n;
    uint64_t x = 88172645463325252ull, sink = 0;
    struct iovec iov[4];
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long k = 0; k < iters; k++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        uint32_t niov = 0;
        uint64_t gpa = base + (x % (n * chunk - 64));
        if (vs_gpa_to_iov(&m, gpa, 64, iov, NULL, &niov, 4) == 0)
            sink += (uintptr_t)iov[0].iov_base;
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / iters;
    printf("%.2f %llu\n", ns, (unsigned long long)(sink & 1));
    return 0;
}
"""


def build(src_dir: str, out: str) -> str:
    exe = os.path.join(out, "bench")
    with open(os.path.join(out, "driver.c"), "w") as f:
        f.write(DRIVER)
    subprocess.run(["gcc", "-O2", "-std=gnu11", "-I", src_dir, os.path.join(out, "driver.c"),
                    os.path.join(src_dir, "vs_mem.c"), "-o", exe], check=True)
    return exe


def resolve(rev: str) -> str:
    """REV as git knows it here, else origin/REV (a fresh clone has a local branch for its HEAD only)."""
    for name in (rev, f"origin/{rev}"):
        if subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}"], capture_output=True,
                          cwd=HERE).returncode == 0:
            return name
    sys.exit(f"--rev {rev}: no such revision here, nor origin/{rev} (git fetch, or name another with --rev)")


def revision_core(rev: str, out: str) -> str:
    os.makedirs(out, exist_ok=True)
    for name in ("vs_api.h", "vs_mem.c"):
        text = subprocess.run(["git", "show", f"{rev}:vhostsplice/_core/{name}"], capture_output=True, text=True,
                              check=True, cwd=HERE).stdout
        if name == "vs_api.h":
            text = re.sub(r"#define VS_MAX_REGIONS \d+", "#define VS_MAX_REGIONS 509", text)
        with open(os.path.join(out, name), "w") as f:
            f.write(text)
    return out


def nanoseconds(exe: str, n: int, iters: int, repeat: int) -> float:
    return min(float(subprocess.run([exe, str(n), str(iters)], capture_output=True, text=True,
                                    check=True).stdout.split()[0]) for _ in range(repeat))


def instructions(exe: str, n: int, iters: int) -> float | None:
    """Instructions per lookup, counted by valgrind (callgrind's Ir): a run of `iters` less one of a
    tenth of that, over the difference."""
    if shutil.which("valgrind") is None:
        return None
    counts = []
    for k in (iters, iters // 10):
        out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", exe, str(n),
                              str(k)], capture_output=True, text=True).stderr
        m = re.search(r"Collected : (\d+)", out)
        if m is None:
            return None
        counts.append(int(m[1]))
    return (counts[0] - counts[1]) / (iters - iters // 10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default="main", help="the revision to compare with (default: main, else origin/main)")
    ap.add_argument("--sizes", default="1,3,8,9,40,509")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20_000_000, help="lookups per timed run")
    ap.add_argument("--instr-iters", type=int, default=200_000, help="lookups per valgrind run")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        builds = {"tree": build(CORE, tmp)}
        old = os.path.join(tmp, "rev")
        rev = resolve(args.rev)
        builds[rev] = build(revision_core(rev, old), old)
        print(f"| regions | {' | '.join(f'{k} ns | {k} instr' for k in builds)} |")
        print(f"| --- | {' | '.join('--- | ---' for _ in builds)} |")
        for n in map(int, args.sizes.split(",")):
            row = []
            for exe in builds.values():
                ins = instructions(exe, n, args.instr_iters)
                row.append(f"{nanoseconds(exe, n, args.iters, args.repeat):.2f} | "
                           f"{'-' if ins is None else f'{ins:.1f}'}")
            print(f"| {n} | {' | '.join(row)} |")

if __name__ == "__main__":
    main()
