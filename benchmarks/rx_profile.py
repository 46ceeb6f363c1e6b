#!/usr/bin/env python3
"""Where the RX path spends its time per packet: vhostsplice's worker against DPDK's back-end (issue 18).

    pip install .  &&  apt-get install -y dpdk linux-perf
    sudo flock /tmp/vs-heavy.lock python3 benchmarks/rx_profile.py [--repeat 3] [--out benchmarks/results/rx_profile]

Each sample is dpdk_bench's RX figure as it is (a backlog queued into the tap from the host, drained by the
back-end into testpmd rxonly, default options: the worker's tap carries the vnet header), with `perf record
-e cpu-clock -c 100000 -g -k CLOCK_MONOTONIC -p PID` on the back-end process (the vhostsplice worker, or
testpmd net_vhost + net_tap) for the whole drain; only the samples between the drain's 10 % and 90 % points
are counted. Each perf sample stands for 100 us of the back-end's CPU, so a bucket's samples x 100 us /
the packets the tap gave up in that window is its time per packet. The buckets (RULES, first match over
the call chain) split kernel time into the tap read (copy to the buffer, skb free, the rest of tun_do_read),
syscall entry/exit, the seccomp filter, epoll, eventfd, the scheduler, and user time by library.
The back-ends alternate sample by sample, 64 and 1500 B; three more columns profile the raw tap floor
(benchmarks/tap_floor.c: one readv per frame, nothing else) with the worker's vnet header and without one,
as DPDK's net_tap reads (what the tap costs alone, and what the header adds to it), and with the header
through io_uring, 32 reads per enter (what batching the syscalls takes off).

This VM has no hardware PMU (`perf stat -e instructions` says <not supported>): cpu-clock is a timer,
so time spent with interrupts off is charged to where they come back on; cycles and instructions are
not available. Output in --out: rx_profile.md (per-packet tables, and tun_do_read's own time by
instruction offset: where its inlined tun_put_user and header fill spend it), rx_profile.json (every sample's
buckets), and perf-BACKEND-rxSIZE-N.txt (`perf report --stdio --no-children --sort dso,sym` of a sample's
window, the top entries; spaces in a column's name become _). Needs root, dpdk-testpmd and perf. Never
used by the tests.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dpdk_bench as B
import measured
from measured import ROOT

PERIOD_NS = 100_000                 # cpu-clock: one sample per 100 us of the task's CPU
SIZES = (64, 1500)

# (bucket, where the pattern is matched, pattern), first match wins. "leaf": the sampled function; "chain":
# any frame of the call chain; "dso": the sampled function's object. The kernel's syscall dispatch is
# inlined (do_syscall_64 calls ksys_read directly), so syscalls are told apart by the functions they reach.
RULES = [
    ("kernel: seccomp filter (and the entry work it turns on)", "chain",
     r"seccomp|bpf_prog|__secure_computing|syscall_trace_enter"),
    ("kernel: tap read, hardened-usercopy checks", "tap+chain",
     r"__check_object_size|__check_heap_object|__virt_addr_valid|is_vmalloc_addr|check_stack_object"),
    ("kernel: tap read, copy to the buffer", "tap+chain",
     r"copy_to_iter|copy_user|rep_movs|memcpy|memmove|__skb_datagram_iter|skb_copy_datagram|simple_copy"),
    ("kernel: tap read, zeroing the header's last 2 bytes (iov_iter_zero)", "tap+chain", r"iov_iter_zero"),
    ("kernel: tap read, skb free", "tap+chain",
     r"consume_skb|kfree_skb|skb_release|kmem_cache_free|__slab_free|skb_free_head|page_frag_free|"
     r"free_unref|__free_pages|skb_attempt_defer_free"),
    ("kernel: tap read, rest of tun_do_read (tun_put_user and the vnet header fill are inlined)", "chain",
     r"^tun_|ptr_ring|virtio_net_hdr|skb_checksum"),
    ("kernel: tap write (TX ring, if any)", "chain", r"tun_get_user|tun_chr_write"),
    ("kernel: epoll", "chain", r"epoll|ep_poll|ep_item|ep_send"),
    ("kernel: eventfd", "chain", r"eventfd"),
    ("kernel: scheduler, sleep and wake-up", "chain",
     r"__schedule|^schedule|finish_task_switch|try_to_wake_up|pick_next|dequeue_task|enqueue_task"),
    ("kernel: readv/read/write set-up (fd, iovec, vfs)", "chain",
     r"do_readv|vfs_readv|do_iter_read|import_iovec|iovec_from_user|ksys_read|ksys_write|vfs_read|vfs_write|"
     r"fdget|__fget|rw_verify_area|security_file"),
    ("kernel: io_uring submission, prep and completion", "chain", r"^io_|^__io_|io_uring"),
    ("kernel: syscall entry/exit", "leaf",
     r"entry_SYSCALL|do_syscall_64|syscall_exit|exit_to_user_mode|syscall_return|x64_sys_call|"
     r"fpregs|switch_fpu|__x64_sys|restore_regs"),
    ("kernel: interrupts, timers", "chain", r"irq|apic|hrtimer|tick_|softirq"),
    ("kernel: other", "dso", r"kernel|vmlinux"),
    ("user: vhostsplice C core", "dso", r"_vs_core"),
    ("user: Python", "dso", r"libpython|python3"),
    ("user: libc (syscall wrappers, memcpy)", "dso", r"libc\.so|libc-"),
    ("user: DPDK vhost (enqueue to the guest ring)", "dso", r"librte_vhost|librte_net_vhost"),
    ("user: DPDK net_tap (rx burst)", "dso", r"librte_net_tap"),
    ("user: DPDK mempool/mbuf/ethdev", "dso", r"librte_mempool|librte_mbuf|librte_ethdev|librte_ring"),
    ("user: testpmd and other DPDK", "dso", r"testpmd|librte_"),
    ("user: other", "dso", r""),
]
TAP_READ = re.compile(r"^tun_do_read$|^tun_put_user$|^tun_chr_read_iter$|^tun_ring_recv$")


def classify(chain: list[tuple[str, str]]) -> str:
    """The bucket of one sample: chain[0] is the sampled (leaf) frame, each (symbol, dso)."""
    leaf_sym, leaf_dso = chain[0] if chain else ("?", "?")
    syms = [s for s, _ in chain]
    in_tap = any(TAP_READ.search(s) for s in syms)
    user = "kernel" not in leaf_dso
    for bucket, where, pattern in RULES:
        if user != bucket.startswith("user:"):
            continue
        rx = re.compile(pattern)
        if where.startswith("tap+") and not in_tap:
            continue
        where = where.removeprefix("tap+")
        if where == "leaf" and rx.search(leaf_sym):
            return bucket
        if where == "chain" and any(rx.search(s) for s in syms):
            return bucket
        if where == "dso" and rx.search(leaf_dso):
            return bucket
    return "user: other" if user else "kernel: other"


SAMPLE_RE = re.compile(r"^\s*(\d+)\s+(\d+\.\d+):\s+(\d+)\s*$")
FRAME_RE = re.compile(r"^\s*[0-9a-f]+\s+(.+?)\s+\((.*)\)\s*$")


def parse_script(text: str) -> list[tuple[float, int, list[tuple[str, str]]]]:
    """`perf script -F tid,time,period,ip,sym,dso` -> [(time, period, [(symbol, dso), ...leaf first])]."""
    out, cur = [], None
    for line in text.splitlines():
        m = SAMPLE_RE.match(line)
        if m:
            cur = (float(m[2]), int(m[3]), [])
            out.append(cur)
        elif cur is not None:
            f = FRAME_RE.match(line)
            if f:
                sym = re.sub(r"\+0x[0-9a-f]+$", "", f[1])
                cur[2].append((sym, os.path.basename(f[2])))
    return out


class PerfProbe:
    """perf record on the back-end for one sample (dpdk_bench.sample_rx's probe)."""

    def __init__(self, data: Path):
        self.data, self.proc = data, None

    def attach(self, pid: int) -> None:
        self.proc = subprocess.Popen(["taskset", "-c", str(B.FE_CPU), "perf", "record", "-q", "-e", "cpu-clock",
                                      "-c", str(PERIOD_NS), "-g", "-k", "CLOCK_MONOTONIC", "-p", str(pid),
                                      "-o", str(self.data)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.3)                 # perf has opened its events before the drain starts

    def detach(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


OWN_FUNC = "tun_do_read"             # whose own (leaf) samples are split by instruction offset
OWN_MIN_US = 0.02                   # offsets below this many us per packet are left out


def own_offsets(text: str, window: list[float], func: str = OWN_FUNC) -> dict[str, int]:
    """ns of the samples inside WINDOW whose leaf frame is FUNC itself, by offset ("func+0x412"): where in
    its inlined code (tun_put_user, the vnet header fill) the time goes (`perf script` with symoff)."""
    lo, hi = window
    out: dict[str, int] = {}
    cur, leaf = None, False
    for line in text.splitlines():
        m = SAMPLE_RE.match(line)
        if m:
            cur, leaf = (float(m[2]), int(m[3])), True
            continue
        f = FRAME_RE.match(line) if leaf and cur is not None else None
        if f is None:
            continue
        leaf = False
        if lo <= cur[0] <= hi and re.fullmatch(rf"{re.escape(func)}\+0x[0-9a-f]+", f[1]):
            out[f[1]] = out.get(f[1], 0) + cur[1]
    return out


def analyse(data: Path, window: list[float], packets: int) -> dict:
    """Buckets of the samples inside WINDOW: samples, us per packet, share; and FUNC's own time by offset."""
    text = subprocess.run(["perf", "script", "-i", str(data), "-F", "tid,time,period,ip,sym,symoff,dso"],
                          capture_output=True, text=True, timeout=600).stdout
    lo, hi = window
    counts: dict[str, int] = {}
    ns_total = 0
    for t, period, chain in parse_script(text):
        if lo <= t <= hi:
            b = classify(chain)
            counts[b] = counts.get(b, 0) + period
            ns_total += period
    return {"packets": packets, "seconds": round(hi - lo, 4), "cpu_ns": ns_total,
            "cpu_share": round(ns_total / 1e9 / (hi - lo), 3) if hi > lo else None,
            "us_per_packet": {b: round(ns / 1e3 / packets, 4) for b, ns in sorted(counts.items())} if packets else {},
            "own_us_per_packet": {o: round(ns / 1e3 / packets, 4)
                                  for o, ns in sorted(own_offsets(text, window).items())} if packets else {}}


def top_report(data: Path, window: list[float], limit: float) -> str:
    r = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", "dso,sym",
                        "--percent-limit", str(limit), "-g", "none", "--time", f"{window[0]:.6f},{window[1]:.6f}"],
                       capture_output=True, text=True, timeout=600)
    return r.stdout


def one(col: B.Column, size: int, rep: int, work: Path, out: Path, args) -> dict:
    wd = work / f"{rep}-rx{size}-{col.name}"
    wd.mkdir(parents=True, exist_ok=True)
    data = wd / "perf.data"
    probe = PerfProbe(data)
    try:
        d = B.sample_rx(col, size, wd, args, probe=probe)
    finally:
        probe.detach()
    if "drain_window" not in d:
        return {"error": f"no drain window: {d}"[:500]}
    d["profile"] = analyse(data, d["drain_window"], d["drain_window_packets"])
    (out / f"perf-{col.name.replace(' ', '_')}-rx{size}-{rep}.txt").write_text(
        f"# {col.name} RX {size} B, sample {rep}: perf report of the drain's 10-90 % window "
        f"({d['drain_window_packets']} packets, {d['mpps']} Mpps)\n" + top_report(data, d["drain_window"], 0.5))
    return d


def retried(col: B.Column, size: int, rep: int, work: Path, out: Path, args, gate, t0: float) -> dict:
    """One profiled sample, taken again (at most --retries times, within the quiet budget) while other
    processes used more than --noisy CPUs or either side got less than --min-share of its CPU."""
    for attempt in range(1 + args.retries):
        before, t = gate.wait(), time.monotonic()
        try:
            d = one(col, size, rep, work / str(attempt), out, args) | before
        except Exception as exc:        # noqa: BLE001 - one failed sample must not lose the run
            d = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        noisy = "error" not in d and (d.get("others_cpu", 0) > args.noisy or B.starved("rx", d, args.min_share))
        d.update(attempt=attempt, noisy=noisy)
        print(f"[{time.monotonic() - t0:6.1f}s] {col.name} rx{size} rep {rep}: {d.get('mpps', d.get('error'))} "
              f"Mpps, others {d.get('others_cpu')}{' NOISY' if noisy else ''}", flush=True)
        if not noisy or attempt == args.retries or gate.left < time.monotonic() - t:
            return d
        gate.left -= time.monotonic() - t
    return d


def summary(results: dict) -> dict:
    """Median us per packet per bucket, over the samples of each back-end and size (noisy ones left out
    when a clean one remains)."""
    out: dict = {}
    for key, samples in results["samples"].items():
        good = [s for s in samples if "profile" in s]
        good = [s for s in good if not s.get("noisy")] or good
        buckets = sorted({b for s in good for b in s["profile"]["us_per_packet"]})
        out[key] = {"n": len(good), "noisy": sum(bool(s.get("noisy")) for s in good),
                    "mpps": B._med([s["mpps"] for s in good]),
                    "cpu_us_per_packet": B._med([s["profile"]["cpu_ns"] / 1e3 / s["profile"]["packets"]
                                                 for s in good if s["profile"]["packets"]]),
                    "buckets": {b: B._med([s["profile"]["us_per_packet"].get(b, 0.0) for s in good])
                                for b in buckets},
                    "others_cpu": B._med([s.get("others_cpu") for s in good]),
                    "own": {o: B._med([s["profile"].get("own_us_per_packet", {}).get(o, 0.0) for s in good])
                            for o in sorted({o for s in good for o in s["profile"].get("own_us_per_packet", {})})}}
    return out


def markdown(results: dict, summ: dict) -> str:
    out = [f"# RX profile: vhostsplice against DPDK net_vhost + net_tap ({results['facts']['date']})", "",
           f"Command (as root, holding `flock /tmp/vs-heavy.lock`): `{results['command']}` "
           f"({results['elapsed_s']} s, load average at start {' '.join(results['facts']['loadavg_at_start'])}).",
           f"Machine: {results['facts']['cpu']}, kernel {results['facts']['kernel']}, DPDK {results['facts']['dpdk']}, "
           f"{results['facts']['vhostsplice']}.", "",
           "Microseconds of the back-end's CPU per packet, by where it was (perf cpu-clock samples of the drain's "
           "10-90 % window; medians over n samples). Buckets are matched in the order of the rows "
           "(benchmarks/rx_profile.py RULES).", ""]
    for size in SIZES:
        keys = [k for k in summ if k.endswith(f"rx{size}")]
        if not keys:
            continue
        cols = [k.rsplit(" ", 1)[0] for k in keys]
        buckets = [b for b, _w, _p in RULES if any(summ[k]["buckets"].get(b) for k in keys)]
        out += [f"## RX {size} B", "", "| us per packet | " + " | ".join(cols) + " |",
                "| --- |" + " ---: |" * len(cols)]
        out.append("| **Mpps under perf** | " + " | ".join(B._fmt(summ[k]["mpps"], "Mpps") for k in keys) + " |")
        out.append("| **CPU, all** | " + " | ".join(_us(summ[k]["cpu_us_per_packet"]) for k in keys) + " |")
        for part in ("kernel:", "user:"):
            out.append(f"| **{part[:-1]}** | " + " | ".join(
                _us(sum(v for b, v in summ[k]["buckets"].items() if b.startswith(part))) for k in keys) + " |")
            out += [f"| {b} | " + " | ".join(_us(summ[k]["buckets"].get(b)) for k in keys) + " |"
                    for b in buckets if b.startswith(part)]
        out.append("| n, of which noisy (others' CPU, median) | " + " | ".join(
            f"{summ[k]['n']}, {summ[k]['noisy']} ({B._fmt(summ[k]['others_cpu'])})" for k in keys) + " |")
        out += [""] + own_table(summ, keys, cols)
    return "\n".join(out) + "\n"


def own_table(summ: dict, keys: list[str], cols: list[str]) -> list[str]:
    """OWN_FUNC's own samples by instruction offset (those of OWN_MIN_US or more in some column)."""
    offs = sorted({o for k in keys for o, v in summ[k].get("own", {}).items() if v >= OWN_MIN_US},
                  key=lambda o: int(o.rsplit("+", 1)[1], 16))
    if not offs:
        return []
    return [f"{OWN_FUNC}'s own time by instruction offset (leaf samples, us per packet; offsets are this kernel "
            "build's: compare columns, not kernels):", "", "| offset | " + " | ".join(cols) + " |",
            "| --- |" + " ---: |" * len(cols),
            *[f"| {o} | " + " | ".join(_us(summ[k].get("own", {}).get(o)) for k in keys) + " |" for o in offs], ""]


def _us(v: float | None) -> str:
    return "" if v is None else f"{v:.3f}"


def parse(argv: list[str] | None):
    """This script's options, dpdk_bench's settings for the RX figure, and the floor variants asked for."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="samples per back-end and size (default 3)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "rx_profile"))
    ap.add_argument("--worker-arg", action="append", default=[], metavar="ARG", help="as dpdk_bench's")
    ap.add_argument("--rx-frames", type=int, default=500000, help="backlog for 64 B (1500 B: half)")
    ap.add_argument("--floor", default="vnet,plain,uring", metavar="VARIANT,...|none",
                    help="raw tap floor columns (tap_floor.c; dpdk_bench --floor's variants): default vnet,plain,uring "
                         "(with the worker's vnet header, without it as DPDK's net_tap, and the header with io_uring "
                         "batches of reads)")
    ap.add_argument("--keep", action="store_true", help="keep /tmp/vsprofile-PID (perf.data, logs)")
    a = ap.parse_args(argv)
    try:
        floors = [] if a.floor == "none" else B.tap_floor.parse(a.floor, False)
    except ValueError as exc:
        ap.error(f"--floor {a.floor}: {exc}")
    return a, B.parse_args(["--figures", "rx64,rx1500", "--rx-frames", str(a.rx_frames)]), floors


def profiled_columns(floors: list[str]) -> list[B.Column]:
    """The worker, DPDK, then the floors (compiled now: a compiler error stops the run here)."""
    cols = [B.Column("vhostsplice", "vhostsplice"), B.Column("dpdk", "dpdk")]
    if floors:
        try:
            B.Floor.program = B.tap_floor.build()
        except RuntimeError as exc:
            sys.exit(f"stopping before the first sample: {exc}")
    return cols + [B.Column(B.tap_floor.VARIANTS[f].column, "floor", floor=f) for f in floors]


def main(argv: list[str] | None = None) -> int:
    a, args, floors = parse(argv)
    B.WORKER_OPTS = list(a.worker_arg)
    if os.geteuid() != 0 or shutil.which("perf") is None or not B.T.available():
        sys.exit("needs root, perf (apt-get install linux-perf) and dpdk-testpmd")
    measured.preflight()
    cols = profiled_columns(floors)
    out, work = Path(a.out), Path(f"/tmp/vsprofile-{os.getpid()}")
    out.mkdir(parents=True, exist_ok=True)
    results = {"facts": B.machine_facts(), "command": " ".join(["python3", "benchmarks/rx_profile.py",
                                                                *(sys.argv[1:] if argv is None else argv)]),
               "period_ns": PERIOD_NS, "samples": {}}
    gate, t0 = B.QuietGate(args.quiet, args.quiet_wait, args.quiet_budget), time.monotonic()
    try:
        for rep in range(a.repeat):
            for size in SIZES:
                for col in cols if rep % 2 == 0 else cols[::-1]:
                    results["samples"].setdefault(f"{col.name} rx{size}", []).append(
                        retried(col, size, rep, work, out, args, gate, t0))
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    results["elapsed_s"] = round(time.monotonic() - t0, 1)
    results["summary"] = summ = summary(results)
    measured.write_results(out, "rx_profile", results, markdown(results, summ))
    empty = [k for k, v in summ.items() if not v["n"]]
    if empty or len(summ) < len(cols) * len(SIZES):
        print(f"FAILED: no profiled sample for {', '.join(empty) or 'some back-end'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
