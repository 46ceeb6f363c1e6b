#!/usr/bin/env python3
"""Traffic on a few queue pairs while many are idle, and 2 pairs on 2 CPUs against 1 pair on 1 CPU (issue 18).

    pip install .
    sudo flock /tmp/vs-heavy.lock python3 benchmarks/density_traffic.py [--idle-pairs 32] [--rounds 15]

Two `vhostsplice run --tap vsdK --cpu K` workers (default options: the tap carries the vnet header) in a
private netns, each driven by the pure-Python front-end (vhostsplice.testing.frontend) with an RX ring of
--queue-size buffers of 2 KiB. One round of a configuration, for each active pair: queue as many frames
as the ring holds into its tap from the host (AF_PACKET sendmmsg, mmsg_sender) while the ring is empty
(a starved worker does not watch its tap: it sleeps), post that many buffers with used_event set so
that the worker signals the call eventfd for the last one only (EVENT_IDX), then kick every active
ring back to back and sleep in select until each call comes. A pair's rate is its frames over (its
call - the kick). Nothing else runs while the workers drain: this machine has 2 CPUs, and a polling
front-end (testpmd) or a live sender would take one of them, so neither 2 workers on 2 CPUs nor the
cost of idle pairs next to busy ones could be seen. What this leaves out: the front-end's share of the
work (a real guest's RX processing), so the figures are the back-end's own rate and its scaling.

Configurations, interleaved round by round, in three phases (alone, among --idle-pairs idle connected
`run` workers, alone again):
  1 pair, CPU 0 / CPU 1     one worker drains, the other idles
  2 pairs, CPUs 0 and 1     both drain, one on each CPU
  2 pairs, both on CPU 1    both drain, the CPU 0 worker moved to CPU 1 for the round (sched_setaffinity):
                            the control (the same work on half the CPUs)
For the idle pairs: wake-ups (voluntary context switches) and CPU over the phase. Results: density_traffic.md
and .json in --out (default benchmarks/results/density). Benchmarks, never timed tests.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import measured  # noqa: E402  (the installed vhostsplice; puts tests/ on sys.path)
from density_bench import TICK, confined, idle_pairs, proc_figures  # noqa: E402
from dpdk_bench import QuietGate  # noqa: E402
from measured import ROOT  # noqa: E402
from mmsg_sender import send_frames, udp_frame  # noqa: E402
from vhostsplice.testing.frontend import Frontend  # noqa: E402
from vhostsplice.testing.netns import PrivateNetns  # noqa: E402

BUF = 2048
CONFIGS = {                         # name -> (active pairs, CPU of pair 0 for the round)
    "1 pair, CPU 0": ((0,), 0),
    "1 pair, CPU 1": ((1,), 0),
    "2 pairs, CPUs 0 and 1": ((0, 1), 0),
    "2 pairs, both on CPU 1": ((0, 1), 1),
}
ONE, TWO, CONTROL = ("1 pair, CPU 0", "1 pair, CPU 1"), "2 pairs, CPUs 0 and 1", "2 pairs, both on CPU 1"
PHASES = ("alone", "among idle", "alone again")


class Pair:
    """A `run --tap` worker pinned to CPU k and its front-end, with a big RX ring and nothing else."""

    def __init__(self, k: int, workdir: Path, queue_size: int):
        self.k, self.tap, self.q = k, f"vsd{k}", queue_size
        subprocess.run(["ip", "tuntap", "add", "dev", self.tap, "mode", "tap", "multi_queue", "vnet_hdr"], check=True)
        subprocess.run(["ip", "link", "set", self.tap, "up", "txqueuelen", str(4 * queue_size)], check=True)
        sock, self.stats = workdir / f"t{k}.sock", workdir / f"t{k}.json"
        self.log = open(workdir / f"t{k}.log", "wb")
        self.proc = subprocess.Popen([*measured.argv(), "run", "--socket-path", str(sock), "--tap", self.tap,
                                      "--cpu", str(k), "--stats-file", str(self.stats)], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT, env=measured.env())
        self.fe = Frontend.connect(str(sock), timeout=30, mem_size=queue_size * (BUF + 64) + (4 << 20),
                                   queue_size=queue_size).start()
        if not self.fe.rx.event_idx:
            raise RuntimeError("the front-end needs VIRTIO_RING_F_EVENT_IDX (one call for the last buffer)")
        self.fe.rx.auto_used_event = False

    def load(self, frame: bytes) -> int:
        """Queue a ring's worth of frames into the tap, write as many buffers (published by go()), one call
        for the last. Not published yet: the worker's safety poll could find them before the kick."""
        queued, _refused, _dt = send_frames(self.tap, frame, self.q, burst=1024)
        self.fe.rx.add_in(queued, BUF, publish=False)
        self.fe.rx.used_event = (self.fe.rx.last_used + queued - 1) & 0xFFFF
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.fe.call[0])
        return queued

    def drained(self, frames: int) -> bool:
        """Whether the worker has used every buffer of this round (used->idx in guest memory)."""
        return (self.fe.rx.used_idx - self.fe.rx.last_used) & 0xFFFF >= frames

    def collect(self) -> int:
        return len(self.fe.rx.used())

    def pin(self, cpu: int) -> None:
        for tid in os.listdir(f"/proc/{self.proc.pid}/task"):
            os.sched_setaffinity(int(tid), {cpu})

    def cpu_ns(self) -> int:
        return sum(int(Path(f"/proc/{self.proc.pid}/task/{t}/schedstat").read_text().split()[0])
                   for t in os.listdir(f"/proc/{self.proc.pid}/task"))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.fe.close()
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def one_round(pairs: list[Pair], config: str, frame: bytes) -> dict:
    """Load the active pairs, kick them back to back, wait for each one's last call."""
    active, cpu0 = CONFIGS[config]
    act = [pairs[i] for i in active]
    pairs[0].pin(cpu0)
    try:
        frames = [p.load(frame) for p in act]
        cpu = [p.cpu_ns() for p in act]
        pending = {p.fe.call[0]: i for i, p in enumerate(act)}
        done: dict[int, float] = {}
        t0 = time.monotonic()
        for p in act:
            p.fe.rx.publish()
            os.eventfd_write(p.fe.kick[0], 1)
        while pending:
            ready, _, _ = select.select(list(pending), [], [], 10.0)
            now = time.monotonic()
            if not ready:
                raise RuntimeError(f"{config}: no call within 10 s from pair(s) {sorted(pending.values())}")
            for fd in ready:
                os.eventfd_read(fd)
                i = pending[fd]
                if act[i].drained(frames[i]):   # else an early call (the first batch after start always calls)
                    done[pending.pop(fd)] = now
        cpu = [p.cpu_ns() - c for p, c in zip(act, cpu)]
        used = [p.collect() for p in act]
    finally:
        pairs[0].pin(0)
    if used != frames:
        raise RuntimeError(f"{config}: the workers used {used} buffers for {frames} frames")
    secs = [done[i] - t0 for i in range(len(act))]
    mpps = [n / s / 1e6 for n, s in zip(frames, secs)]
    return {"mpps": [round(m, 4) for m in mpps], "aggregate_mpps": round(sum(mpps), 4),
            "makespan_mpps": round(sum(frames) / max(secs) / 1e6, 4), "seconds": [round(s, 5) for s in secs],
            "cpu_share": [round(c / 1e9 / s, 3) for c, s in zip(cpu, secs)], "frames": frames}


def run_phase(pairs: list[Pair], frame: bytes, rounds: int, idle: list[int], gate: QuietGate) -> dict:
    """ROUNDS rounds of every configuration (order rotating), the idle workers' wake-ups and CPU meanwhile.
    Before each round: wait (within the gate's budget) until other processes use less than 0.2 CPU."""
    names = list(CONFIGS)
    out: dict = {c: [] for c in names}
    deadline = time.monotonic() + 60
    while not all(confined(p) for p in idle) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2.0 if idle else 0)          # settle: the idle workers' one safety poll after their frames
    a, t0 = [proc_figures(p) for p in idle], time.monotonic()
    for r in range(rounds + 1):             # round 0 warms up (the workers fault the guest's pages in)
        for c in names[r % len(names):] + names[:r % len(names)]:
            before = gate.wait() if r else {}
            d = one_round(pairs, c, frame) | before
            if r:
                out[c].append(d)
    b, dt = [proc_figures(p) for p in idle], time.monotonic() - t0
    if idle:
        out["idle"] = {"pairs": len(idle), "seconds": round(dt, 2),
                       "wakeups_per_s": round(sum(y["wakeups"] - x["wakeups"] for x, y in zip(a, b)) / dt, 2),
                       "cpu_percent": round(100 * sum(y["ticks"] - x["ticks"] for x, y in zip(a, b)) / TICK / dt, 3),
                       "pss_mib": round(sum(y["pss"] for y in b) / 1024, 1)}
    return out


def med(rows: list[dict], key: str, i: int | None = None) -> float | None:
    vals = [r[key] if i is None else r[key][i] for r in rows]
    return round(statistics.median(vals), 4) if vals else None


def markdown(results: dict) -> str:
    out = [f"Command (as root, holding `flock /tmp/vs-heavy.lock`): `{results['command']}`  ",
           f"When: {results['when']}; load average before: {results['loadavg']}; package: {results['package']}; "
           f"RX ring {results['queue_size']} x 2 KiB per traffic pair; {results['rounds']} rounds per "
           "configuration and phase (medians; the min..max of the aggregate in brackets).", ""]
    for size, phases in results["sizes"].items():
        one = {ph: statistics.fmean(med(phases[ph][c], "aggregate_mpps") for c in ONE) for ph in phases}
        out += [f"### RX {size} B", "", "| phase | configuration | Mpps per pair | aggregate Mpps |"
                " vs 1 pair (mean of both CPUs) | worker CPU share (each) | idle pairs: wake-ups/s, CPU % |"
                " rounds started while others used > 0.25 CPU |",
                "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: |"]
        for ph, rows in phases.items():
            idle = rows.get("idle")
            for c in CONFIGS:
                rs = rows[c]
                n = len(rs[0]["mpps"]) if rs else 0
                agg = med(rs, "aggregate_mpps")
                lo, hi = min(r["aggregate_mpps"] for r in rs), max(r["aggregate_mpps"] for r in rs)
                each = " / ".join(f"{med(rs, 'mpps', i):.3f}" for i in range(n))
                share = " / ".join(f"{med(rs, 'cpu_share', i):.2f}" for i in range(n))
                idles = f"{idle['pairs']} pairs: {idle['wakeups_per_s']} /s, {idle['cpu_percent']} %" if idle else ""
                busy = sum(r.get("others_before", 0) > 0.25 for r in rs)
                out.append(f"| {ph} | {c} | {each} | {agg:.3f} ({lo:.3f}..{hi:.3f}) | {agg / one[ph]:.2f} | "
                           f"{share} | {idles} | {busy} |")
        alone = {c: med(phases["alone"][c], "aggregate_mpps") for c in CONFIGS}
        among = {c: med(phases["among idle"][c], "aggregate_mpps") for c in CONFIGS}
        base = statistics.fmean(alone[c] for c in ONE)
        out += ["", f"- 2 pairs on 2 CPUs / 1 pair on 1 CPU (alone; the mean of the single pair on CPU 0 and on "
                f"CPU 1): **{alone[TWO] / base:.2f}** (issue 18's goal: at least 1.7); the control, 2 pairs on 1 CPU: "
                f"{alone[CONTROL] / base:.2f}",
                f"- the traffic pairs among {results['idle_pairs']} idle connected pairs / alone: "
                + ", ".join(f"{c} {among[c] / alone[c]:.2f}" for c in CONFIGS), ""]
    return "\n".join(out) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--idle-pairs", type=int, default=32, help="idle connected `run` workers in the middle phase")
    ap.add_argument("--rounds", type=int, default=15, help="rounds per configuration and phase (default 15)")
    ap.add_argument("--sizes", default="64,1500", help="frame sizes, comma-separated (default 64,1500)")
    ap.add_argument("--queue-size", type=int, default=32768, help="RX ring of each traffic pair (default 32768)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "density"))
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    if os.geteuid() != 0 or not {0, 1} <= os.sched_getaffinity(0):
        sys.exit("needs root (netns, taps) and CPUs 0 and 1")
    measured.preflight()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    cmd = ["python3", "benchmarks/density_traffic.py", *(sys.argv[1:] if argv is None else argv)]
    results = {"command": " ".join(cmd),
               "when": stamp, "loadavg": open("/proc/loadavg").read().split()[:3], "package": measured.package_dir(),
               "queue_size": a.queue_size, "rounds": a.rounds, "idle_pairs": a.idle_pairs, "sizes": {}}
    work = Path(tempfile.mkdtemp(prefix="vsdensity-traffic-"))
    pairs: list[Pair] = []
    gate = QuietGate(0.2, 5.0, 300.0)
    try:
        with PrivateNetns("vsd") as ns, ns.entered():
            pairs = [Pair(k, work, a.queue_size) for k in (0, 1)]
            for size in [int(s) for s in a.sizes.split(",") if s]:
                frame, phases = udp_frame(size), {}
                for ph in PHASES:
                    print(f"density_traffic: {size} B, {ph}...", file=sys.stderr, flush=True)
                    if ph == "among idle":
                        with idle_pairs(a.idle_pairs, work) as (pids, _startup):
                            phases[ph] = run_phase(pairs, frame, a.rounds, pids, gate)
                    else:
                        phases[ph] = run_phase(pairs, frame, a.rounds, [], gate)
                results["sizes"][size] = phases
    finally:
        for p in pairs:
            p.close()
        shutil.rmtree(work, ignore_errors=True)
    measured.write_results(a.out, "density_traffic", results, markdown(results))
    empty = missing(results)
    if empty:
        print(f"FAILED: no sample for {', '.join(empty)}", file=sys.stderr)
        return 1
    return 0


def missing(results: dict) -> list[str]:
    """'SIZE PHASE CONFIGURATION' for every cell without a round (or 'any size' when none ran)."""
    if not results["sizes"]:
        return ["any size"]
    return [f"{s} B {ph}: {c}" for s, phs in results["sizes"].items() for ph in PHASES for c in CONFIGS
            if not phs.get(ph, {}).get(c)]


if __name__ == "__main__":
    sys.exit(main())
