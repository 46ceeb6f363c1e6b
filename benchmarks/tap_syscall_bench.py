"""The floor a tap allows: one writev/readv per 64-byte frame against io_uring batches of N, with and
without a seccomp filter (an allow-everything one: the syscall slow path alone), in a private netns.

    sudo flock /tmp/vs-heavy.lock python3 benchmarks/tap_syscall_bench.py [--reps 7] [--frames 100000]

No vhostsplice in the loop: a C program (tap_syscall_bench.c, compiled with gcc into a temporary directory) opens a tap
with IFF_VNET_HDR (12-byte header, as a worker's), brings it up and either writes --frames frames
(TX: the kernel takes them into the namespace's stack and drops them) or drains a backlog queued into
the tap from the host side through AF_PACKET (RX). Prints ns per frame, min and median over --reps runs
of each configuration, interleaved. io_uring: one io_uring_enter per batch of N READV/WRITEV SQEs with
RWF_NOWAIT on the tap as fixed file 0 (what vs_uring.c does); "link" chains them with IOSQE_IO_LINK
and "defer" makes the ring with IORING_SETUP_DEFER_TASKRUN. Measured figures: benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile

C_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tap_syscall_bench.c")

TX = [("writev", {}, "tx 0 0 {n} 64"), ("uring8", {}, "tx 8 0 {n} 64"), ("uring16", {}, "tx 16 0 {n} 64"),
      ("uring32", {}, "tx 32 0 {n} 64"), ("uring16-link", {}, "tx 16 0 {n} 64 1"),
      ("uring16-defer-link", {"DEFER": "1"}, "tx 16 0 {n} 64 1"),
      ("writev+seccomp", {}, "tx 0 1 {n} 64"), ("uring16+seccomp", {}, "tx 16 1 {n} 64")]
RX = [("readv", "0 0"), ("uring16", "16 0"), ("uring32", "32 0"), ("readv+seccomp", "0 1"),
      ("uring16+seccomp", "16 1")]


def build(tmp: str) -> str:
    exe = os.path.join(tmp, "tapbench")
    subprocess.run(["gcc", "-O2", "-Wall", "-o", exe, C_SOURCE], check=True)
    return exe


def fill(n: int, size: int) -> None:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind(("ubt0", 0))
    frame = b"\xff" * 6 + b"\x02\0\0\0\0\1" + b"\x08\x00" + bytes(size - 14)
    for _ in range(n):
        s.send(frame)
    s.close()


def ns_per_frame(out: str, want: int) -> float | None:
    m = re.search(r"(\d+) pkts ([\d.]+) ns/pkt", out)
    return float(m.group(2)) if m and int(m.group(1)) >= min(want, 10000) else None


def run_tx(exe: str, label: str, env: dict, args: str, n: int) -> float | None:
    out = subprocess.run(["taskset", "-c", "1", exe, *args.format(n=n).split()], capture_output=True, text=True,
                         env=dict(os.environ, **env)).stdout
    return ns_per_frame(out, n)


def run_rx(exe: str, args: str, n: int) -> float | None:
    batch, filt = args.split()
    p = subprocess.Popen(["taskset", "-c", "1", exe, "rxwait", batch, filt, str(n), "64"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    fill(n, 64)
    out, _ = p.communicate("go\n")
    return ns_per_frame(out, n)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--frames", type=int, default=100000)
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)   # already in the netns
    a = ap.parse_args()
    if not a.inner:
        return subprocess.run(["unshare", "-n", sys.executable, *sys.argv, "--inner"]).returncode
    got: dict[str, list[float]] = collections.defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="tapbench-") as tmp:
        exe = build(tmp)
        for _ in range(a.reps):
            for label, env, args in TX:
                got["TX 64 B " + label].append(run_tx(exe, label, env, args, a.frames))
            for label, args in RX:
                got["RX 64 B " + label].append(run_rx(exe, args, a.frames))
    print("| configuration | ns/frame, min | median | runs |\n| --- | ---: | ---: | ---: |")
    for k, vals in got.items():
        ok = [v for v in vals if v is not None]
        if ok:
            print(f"| {k} | {min(ok):.0f} | {statistics.median(ok):.0f} | {len(ok)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
