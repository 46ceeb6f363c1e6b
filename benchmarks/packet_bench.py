#!/usr/bin/env python3
"""`run --packet` (AF_PACKET readv/writev on a veth) against `run --tap`: is PACKET_MMAP worth building?

    sudo flock /tmp/vs-heavy.lock python3 benchmarks/packet_bench.py [--rounds 3] [--window 3]

Front-end: DPDK testpmd with a virtio-user port (forwarding lcore on CPU 0, as dpdk_bench.py starts it);
back-end: one `vhostsplice run` worker (the installed package) on CPU 1, host side either
  tap     `--tap vshT0`            a tap in a private netns
  packet  `--packet vshP0`         an AF_PACKET socket on one end of a veth pair (vshP0/vshP1)
The two are measured in the same run, interleaved (tap, packet, tap, packet, ...), frames of --size bytes.
  tx  testpmd txonly -> worker -> host fd. Mpps = the worker's TX-ring packets (minus host-fd drops)
      over --window seconds.
  rx  a backlog of --rx-frames frames is queued first (sendmmsg on an AF_PACKET socket bound to the tap
      / to the veth peer vshP1; the tap's txqueuelen and, through a pidfd_getfd copy, the worker's
      socket receive buffer made large enough), then testpmd rxonly starts and the worker drains it
      alone on CPU 1. Mpps = slope of the worker's RX-ring packets between 10 % and 90 % of the drain.
Per figure: worker CPU (user, system) per packet from /proc/PID/stat, and system calls per packet
(perf stat -e raw_syscalls:sys_enter -p PID over one extra second). `perf bench syscall basic`
gives the cost of one bare syscall on this machine, so syscalls/packet x that cost / worker CPU per
packet is the share of the worker's time that a PACKET_MMAP ring (no syscall per batch) could save.
Writes --out/packet_bench.md and packet_bench.json. Needs root, dpdk-testpmd, perf, 2 CPUs.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import measured  # noqa: E402  (the installed vhostsplice; puts tests/ on sys.path)
from measured import ROOT  # noqa: E402
from support import testpmd as T  # noqa: E402
from support.netns import NetNs  # noqa: E402
from support.waiting import terminate  # noqa: E402
from vhostsplice.testing.harness import live_stats  # noqa: E402

FE_CPU, BE_CPU = 0, 1
TAP, VETH, PEER = "vshT0", "vshP0", "vshP1"
TICK = os.sysconf("SC_CLK_TCK")
HOSTS = ("tap", "packet")


def cpu_split(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def perf_syscalls(pid: int, seconds: float) -> int | None:
    r = subprocess.run(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p", str(pid), "--",
                        "sleep", str(seconds)], capture_output=True, text=True)
    m = re.search(r"^(\d+),", r.stderr, re.M)
    return int(m.group(1)) if m else None


def bare_syscall_us() -> float | None:
    r = subprocess.run(["perf", "bench", "syscall", "basic"], capture_output=True, text=True)
    m = re.search(r"([\d.]+) usecs/op", r.stdout)
    return float(m.group(1)) if m else None


class Worker:
    def __init__(self, ns: NetNs, workdir: Path, host: str):
        self.sock, self.stats_file = workdir / f"{host}.sock", workdir / f"{host}.stats.json"
        hostarg = ["--tap", TAP] if host == "tap" else ["--packet", VETH]
        self.log = open(workdir / f"{host}.log", "wb")
        self.proc = ns.popen([*measured.argv(), "run", "--socket-path", str(self.sock),
                              *hostarg, "--cpu", str(BE_CPU), "--stats-file", str(self.stats_file)],
                             stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, env=measured.env())
        deadline = time.monotonic() + 60
        while not self.sock.is_socket():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not listen: {(workdir / f'{host}.log').read_text()[-2000:]}")
            time.sleep(0.01)

    def counters(self) -> dict:
        stats = live_stats(self.proc, self.stats_file, timeout=5)
        if stats is None:
            raise RuntimeError("worker wrote no stats")
        return stats

    def stop(self) -> None:
        terminate(self.proc, 30)
        self.log.close()


def ring_packets(c: dict, ring: str) -> int:
    r = c["rings"][ring]
    return r["packets"] - r.get("drops_hostfd", 0)


def _host_socket_fd(pid: int) -> int:
    """The fd number of the worker's AF_PACKET socket (matched by inode in its /proc/PID/net/packet)."""
    inodes = {line.split()[-1] for line in Path(f"/proc/{pid}/net/packet").read_text().splitlines()[1:]}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        link = os.readlink(f"/proc/{pid}/fd/{fd}")
        if link.startswith("socket:[") and link[8:-1] in inodes:
            return int(fd)
    raise RuntimeError("the worker has no AF_PACKET socket")


def grow_rcvbuf(pid: int, nbytes: int) -> None:
    """SO_RCVBUFFORCE on the worker's packet socket, through a copy of it taken with pidfd_getfd (the
    worker is not changed): a 64-byte frame costs ~1 KiB of receive buffer, so the default 208 KiB
    holds ~200 frames, far too few for a backlog that outlasts the measurement."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        fd = libc.syscall(438, pidfd, _host_socket_fd(pid), 0)      # SYS_pidfd_getfd (x86_64, arm64)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "pidfd_getfd")
    finally:
        os.close(pidfd)
    with socket.socket(fileno=fd) as sock:
        sock.setsockopt(socket.SOL_SOCKET, 33, nbytes)             # SO_RCVBUFFORCE


def sample(host: str, direction: str, workdir: Path, args, perf_ok: bool) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    with NetNs("vsh") as ns:
        if host == "tap":
            ns.run(["ip", "tuntap", "add", "dev", TAP, "mode", "tap", "multi_queue", "vnet_hdr"])
            ns.run(["ip", "link", "set", TAP, "up", "txqueuelen", "524288"])
            send_dev = TAP
        else:
            ns.run(["ip", "link", "add", VETH, "type", "veth", "peer", "name", PEER])
            ns.run(["ip", "link", "set", VETH, "up"])
            ns.run(["ip", "link", "set", PEER, "up"])
            send_dev = PEER
        w = Worker(ns, workdir, host)
        fe = perf = None
        try:
            mode = "txonly" if direction == "tx" else "rxonly"
            if direction == "rx":
                if host == "packet":
                    grow_rcvbuf(w.proc.pid, 1 << 30)
                r = ns.run(["taskset", "-c", str(BE_CPU), sys.executable, str(Path(__file__).resolve()),
                            "_fill", send_dev, str(args.size), str(args.rx_frames)], timeout=120)
                filled = json.loads(r.stdout.strip().splitlines()[-1])
                c0, u0 = w.counters(), cpu_split(w.proc.pid)
                if perf_ok:
                    perf = subprocess.Popen(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p",
                                             str(w.proc.pid)], stderr=subprocess.PIPE, text=True)
                    time.sleep(0.3)
            fe = T.Testpmd([f"net_virtio_user0,path={w.sock},queues=1,queue_size={T.QUEUE_SIZE}"],
                           mode=mode, log=workdir / f"{host}-{direction}.tpmd",
                           lcores=f"0@{BE_CPU},1@{FE_CPU}", txpkts=args.size if direction == "tx" else None)
            fe.wait_started()
            if direction == "rx":
                d = drain(w, c0, u0, filled, perf)
            else:
                d = measure_tx(w, args, perf_ok)
            d = {"host": host, "dir": direction, **d,
                 "vnet_hdr_len": w.counters()["host"]["vnet_hdr_len"]}
        finally:
            if perf is not None and perf.poll() is None:
                perf.kill()
                perf.wait(30)
            if fe is not None:
                fe.kill()
            w.stop()
    return d


def measure_tx(w: Worker, args, perf_ok: bool) -> dict:
    time.sleep(args.warmup)
    c0, u0, t0 = w.counters(), cpu_split(w.proc.pid), time.monotonic()
    time.sleep(args.window)
    c1, u1, t1 = w.counters(), cpu_split(w.proc.pid), time.monotonic()
    d = _figures(c0, c1, u0, u1, "tx")
    d.update(mpps=round(d["packets"] / (t1 - t0) / 1e6, 4), seconds=round(t1 - t0, 3))
    if perf_ok:
        a = w.counters()
        n = perf_syscalls(w.proc.pid, 1.0)
        b = w.counters()
        ppk = ring_packets(b, "tx") - ring_packets(a, "tx")
        d["syscalls_per_pkt"] = round(n / ppk, 4) if n and ppk else None
    return d


def drain(w: Worker, c0: dict, u0: tuple, filled: dict, perf) -> dict:
    """The worker empties the backlog into testpmd rxonly: Mpps is the slope between 10 % and 90 % of it
    (the worker's RX counter read every ~20 ms); CPU and syscalls are over the whole drain."""
    base, pts = ring_packets(c0, "rx"), []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        n = ring_packets(w.counters(), "rx") - base
        pts.append((time.monotonic(), n))
        if len(pts) > 10 and n == pts[-10][1] and n > 0:
            break                       # no more for ~0.2 s: drained
        time.sleep(0.02)
    total = pts[-1][1]
    mid = [(t, n) for t, n in pts if 0.1 * total <= n <= 0.9 * total]
    slope = (mid[-1][1] - mid[0][1]) / (mid[-1][0] - mid[0][0]) if len(mid) >= 2 and mid[-1][0] > mid[0][0] else 0
    c1, u1 = w.counters(), cpu_split(w.proc.pid)
    d = _figures(c0, c1, u0, u1, "rx")
    d.update(mpps=round(slope / 1e6, 4), queued=filled["queued"], slope_points=len(mid))
    if perf is not None:
        perf.send_signal(signal.SIGINT)
        err = perf.communicate(timeout=30)[1]
        m = re.search(r"^(\d+),", err, re.M)
        if m and d["packets"]:
            d["syscalls_per_pkt"] = round(int(m.group(1)) / d["packets"], 4)
    return d


def _figures(c0: dict, c1: dict, u0: tuple, u1: tuple, ring: str) -> dict:
    pk = ring_packets(c1, ring) - ring_packets(c0, ring)
    d = {"packets": pk, "worker_cpu_s": round(u1[0] + u1[1] - u0[0] - u0[1], 3),
         "user_us_per_pkt": round((u1[0] - u0[0]) / pk * 1e6, 4) if pk else None,
         "sys_us_per_pkt": round((u1[1] - u0[1]) / pk * 1e6, 4) if pk else None,
         "hostfd_drops": c1["rings"][ring]["drops_hostfd"] - c0["rings"][ring]["drops_hostfd"],
         "batches": c1["rings"][ring]["batches"] - c0["rings"][ring]["batches"]}
    d["pkts_per_batch"] = round(pk / d["batches"], 2) if d["batches"] else None
    return d


def fill_main(ifname: str, size: int, count: int) -> int:
    """(In the namespace) COUNT frames of SIZE bytes on IFNAME (mmsg_sender): into the tap's queue, or
    through the veth into the worker's packet socket."""
    from mmsg_sender import send_frames
    frame = bytes.fromhex("02aabbccdd02" "02aabbccdd01" "88b5") + bytes(size - 14)
    queued, refused, _seconds = send_frames(ifname, frame, count, burst=256)
    print(json.dumps({"queued": queued, "refused": refused}))
    return 0


def median(rows: list[dict], key: str):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return round(statistics.median(vals), 4) if vals else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--window", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--rx-frames", type=int, default=400000, help="RX backlog queued before the front-end starts")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    out, work = Path(args.out), Path("/tmp") / f"vsh-packet-bench-{os.getpid()}"
    perf_ok = subprocess.run(["perf", "stat", "-e", "raw_syscalls:sys_enter", "true"],
                             capture_output=True).returncode == 0
    syscall_us = bare_syscall_us() if perf_ok else None
    measured.preflight()
    rows = []
    for r in range(args.rounds):
        for direction in ("tx", "rx"):
            for host in HOSTS:
                d = sample(host, direction, work / f"{r}-{host}-{direction}", args, perf_ok)
                d["round"] = r
                print(json.dumps(d), flush=True)
                rows.append(d)
    out.mkdir(parents=True, exist_ok=True)
    cmd = "sudo flock /tmp/vs-heavy.lock python3 benchmarks/packet_bench.py " + " ".join(sys.argv[1:])
    (out / "packet_bench.json").write_text(json.dumps({"command": cmd, "bare_syscall_us": syscall_us,
                                                       "samples": rows}, indent=1) + "\n")
    lines = [f"# `run --packet` vs `run --tap` ({args.size}-byte frames)", "",
             f"Command: `{cmd.strip()}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"kernel {os.uname().release}, {os.cpu_count()} CPUs; median of {args.rounds} interleaved rounds, "
             f"{args.window} s windows). One bare syscall (`perf bench syscall basic`): {syscall_us} us.", "",
             "| dir | host | Mpps | worker CPU s | user us/pkt | sys us/pkt | pkts/batch | syscalls/pkt |"
             " syscall share of worker CPU |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for direction in ("tx", "rx"):
        for host in HOSTS:
            sel = [x for x in rows if x["host"] == host and x["dir"] == direction]
            u, s_, sc = median(sel, "user_us_per_pkt"), median(sel, "sys_us_per_pkt"), median(sel, "syscalls_per_pkt")
            share = (f"{sc * syscall_us / (u + s_) * 100:.1f} %" if None not in (u, s_, sc, syscall_us) and u + s_
                     else "?")
            lines.append(f"| {direction} | {host} | {median(sel, 'mpps')} | {median(sel, 'worker_cpu_s')} | {u} |"
                         f" {s_} | {median(sel, 'pkts_per_batch')} | {sc} | {share} |")
    lines += ["", "Every sample is in packet_bench.json. Columns: worker CPU s = CPU seconds the worker used"
              " (TX: over the window; RX: over the whole drain);"
              " us/pkt from /proc/PID/stat (tick-sampled); syscall share = syscalls/pkt x bare syscall cost /"
              " (user + sys us/pkt), the part of the worker's time a PACKET_MMAP ring's batching would save.", ""]
    md = out / "packet_bench.md"
    keep = md.read_text().split("## Conclusion", 1) if md.exists() else []
    if len(keep) == 2:       # a written conclusion survives a re-run (check it still matches the table)
        lines.append("## Conclusion" + keep[1].rstrip("\n"))
    md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    empty = [f"{d} {h}" for d in ("tx", "rx") for h in HOSTS
             if median([x for x in rows if x["host"] == h and x["dir"] == d], "mpps") is None]
    if empty:
        print(f"FAILED: no sample for {', '.join(empty)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_fill":
        sys.exit(fill_main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    sys.exit(main())
