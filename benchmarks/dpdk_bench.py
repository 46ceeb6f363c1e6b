#!/usr/bin/env python3
"""vhostsplice against DPDK's own vhost-user back-end, side by side: packet rate, latency, footprint.

    pip install .  &&  pip install matplotlib           # matplotlib only draws the PNG (optional)
    apt-get install -y dpdk dpdk-dev iproute2 iputils-ping linux-perf   # perf is optional
    sudo python3 benchmarks/dpdk_bench.py [--quick] [--out benchmarks/results]

Both back-ends serve the same front-end, DPDK testpmd with a virtio-user port (forwarding lcore on
CPU 0), in the same run, interleaved sample by sample:
  vhostsplice   `vhostsplice run --socket-path S --tap vsk0 --cpu 1` (one worker process), the installed
                package (python -P -m vhostsplice); --tree DIR: a source tree with its core built in place
  dpdk          testpmd net_vhost0 (listening on S) + net_tap0 (vsk0) in io forwarding, lcore on CPU 1
Every sample gets a fresh private network namespace, a fresh back-end and a fresh front-end.
More columns in the same run: --busy-poll 0,50,200 (a worker with `run --busy-poll USEC` each, beside the
default worker's adaptive `--busy-poll auto`; 0 is polling off: the "Busy polling" table), --layouts
split,packed (both back-ends again under virtio-user packed_vq=1: the "Ring layouts" table), --variant
OPTIONS (the default worker with OPTIONS added, e.g. --variant=--sandbox=off: the "Worker variants" table,
variant / default) and --floor (benchmarks/tap_floor.c: one readv/writev per frame on the same tap, no
front-end, packet rates only: the "raw tap floor" table, vhostsplice / floor); the headline table stays the
default worker against DPDK on split rings.

Figures (median over --repeat samples; min..max kept in the JSON):
  tx64/tx1500   guest -> tap. testpmd txonly; Mpps = the tap's kernel rx_packets over a fixed window.
  rx64/rx1500   tap -> guest. A backlog of frames is put in the tap's queue from the host side first
                (an AF_PACKET sendmmsg sender, txqueuelen raised so nothing drops), then the back-end
                drains it into testpmd rxonly. Mpps = slope of the tap's tx_packets between 10 % and
                90 % of the backlog, times the fraction testpmd's RX-packets counted. Why a backlog and
                not a live sender: on 2 cores the front-end and the back-end each own one; a sender
                needs ~1.5 us of CPU per frame and would have to time-share a busy-polling testpmd,
                which measures the scheduler (both back-ends collapse to <0.1 Mpps that way: see
                --rx-sender live).
  latency       `ping` in the namespace to 10.211.0.2, answered by testpmd icmpecho through the back-end:
                min/avg/p50/p99 in microseconds.
  idle CPU      front-end connected (rxonly), rings up, no traffic: back-end CPU over --idle seconds.
  RSS           VmRSS of the back-end process while idle and connected (and its peak after tx1500).
  start-up      from spawning the back-end to its socket being there (every back-end start counts).
  per packet    over a separate 1 s window (perf stat, if perf works): syscalls, context switches;
                from the worker's own counters: wake-ups, batches, kicks, calls (notify_sent).
The CPU that OTHER processes used during each window is recorded ("others"): the machine is shared.

Output in --out: dpdk_bench.md (tables), dpdk_bench.json (every sample), dpdk_bench.png (plot).
Needs root (ip netns, /dev/net/tun, AF_PACKET), dpdk-testpmd, 2 CPUs. Never used by the tests.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import measured  # noqa: E402  (which vhostsplice is measured; puts tests/ on sys.path)
from measured import ROOT  # noqa: E402
from support import testpmd as T  # noqa: E402  (the interop harness: testpmd front-end, log parsing)
from support.netns import NetNs  # noqa: E402
from support.waiting import terminate  # noqa: E402
import tap_floor  # noqa: E402  (the raw tap floor: --floor)
from vhostsplice.testing.harness import live_stats  # noqa: E402

NS_PREFIX = "vsk"                 # netns vsk-PID-N, tap vsk0 (the bats suite uses vsb)
TAP = "vsk0"
FE_CPU, BE_CPU = 0, 1             # front-end forwarding lcore / back-end (worker, DPDK forwarding lcore)
TAP_IP, PEER_IP = "10.211.0.1/24", "10.211.0.2"
RX_TXQLEN = 524288                # tun's ptr_ring maximum here (4 MiB of pointers)
TICK = os.sysconf("SC_CLK_TCK")
BACKENDS = ("vhostsplice", "dpdk")   # the headline pair: default worker and DPDK, split rings
FIGURES = ("tx64", "tx1500", "rx64", "rx1500", "latency", "idle")


# ------------------------------------------------------------------------------------------ /proc helpers

def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of PID; nan once it is gone."""
    return sum(proc_cpu_split(pid))


def proc_cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of all threads of PID; nan once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return float("nan"), float("nan")
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat. Busy is user + nice +
    system: irq and softirq time is left out (the softirq work our own frames cause is in no process)."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = v[:8]
    return (user + nice + system) / TICK, steal / TICK


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile, RssShmem (/proc/PID/status) and Pss (smaps_rollup) of PID in KiB.
    RssShmem holds the guest memory a back-end has touched (the front-end's memfd, shared with it);
    Pss charges each shared page to its sharers in equal parts."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(value.split()[0])
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "Pss":
                out[key] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return out


def netdev(pid: int, ifname: str) -> dict[str, int]:
    """Kernel counters of IFNAME in PID's network namespace (/proc/PID/net/dev: no process to spawn)."""
    for line in Path(f"/proc/{pid}/net/dev").read_text().splitlines():
        name, sep, rest = line.partition(":")
        if sep and name.strip() == ifname:
            v = [int(x) for x in rest.split()]
            return {"rx_packets": v[1], "rx_dropped": v[3], "tx_packets": v[9], "tx_dropped": v[11]}
    raise LookupError(f"{ifname} not in /proc/{pid}/net/dev")


class Window:
    """Wall time, back-end CPU, the machine's busy/steal CPU and the CPU of our own processes."""

    def __init__(self, be_pid: int, own_pids: list[int], census: bool = False):
        self.be_pid, self.own = be_pid, own_pids
        self.census = proc_census() if census else None
        self.t = time.monotonic()
        self.be_user, self.be_sys = proc_cpu_split(be_pid)
        self.be = self.be_user + self.be_sys
        self.busy, self.steal = machine_cpu()
        self.own_cpu = {p: proc_cpu(p) for p in own_pids}
        self.mine = sum(self.own_cpu.values()) + _self_cpu()

    def until(self, end: "Window") -> dict:
        dt = end.t - self.t
        mine = end.mine - self.mine
        return {"seconds": round(dt, 4), "backend_cpu": round((end.be - self.be) / dt, 4),
                "backend_user_cpu": round((end.be_user - self.be_user) / dt, 4),
                "backend_sys_cpu": round((end.be_sys - self.be_sys) / dt, 4),
                "own_cpu": {p: round((end.own_cpu[p] - c) / dt, 3) for p, c in self.own_cpu.items()
                            if p in end.own_cpu},
                "others_cpu": round(max(0.0, (end.busy - self.busy) - mine) / dt, 3),
                "steal_cpu": round((end.steal - self.steal) / dt, 3),
                **(self._census_until(end, dt) if self.census and end.census else {})}

    def _census_until(self, end: "Window", dt: float) -> dict:
        """Others' CPU from per-process counters (the /proc/stat figure is kept as others_cpu_stat: over
        a window of a few hundred ms its tick sampling disagrees with per-process times by ~0.1-0.5 CPU)."""
        own = set(self.own) | set(end.own) | {os.getpid()}
        total = sum(end.census[p][1] - self.census.get(p, (None, 0.0))[1] for p in end.census if p not in own)
        return {"others_cpu": round(max(0.0, total) / dt, 3),
                "others_cpu_stat": self._stat_others(end, dt),
                "others_top": top_others(self.census, end.census, own, dt)}

    def _stat_others(self, end: "Window", dt: float) -> float:
        return round(max(0.0, (end.busy - self.busy) - (end.mine - self.mine)) / dt, 3)


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def proc_census() -> dict[int, tuple[str, float]]:
    """{pid: (name, CPU seconds)} of every process (a snapshot, to name who else used the CPU)."""
    out = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                head, _, rest = Path(f"/proc/{entry.name}/stat").read_text().rpartition(")")
                f = rest.split()
                out[int(entry.name)] = (head.partition("(")[2], (int(f[11]) + int(f[12])) / TICK)
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                pass
    return out


def top_others(a: dict, b: dict, own: set[int], dt: float, n: int = 4) -> list[str]:
    """The processes outside this benchmark that used the most CPU between two censuses."""
    used = [(b[p][1] - a.get(p, (None, 0.0))[1], b[p][0]) for p in b if p not in own]
    used = sorted((u, name) for u, name in used if u / dt >= 0.02)[::-1][:n]
    return [f"{name} {u / dt:.2f}" for u, name in used]


class QuietGate:
    """Before a sample: wait (within a per-sample and a total budget) until processes other than ours
    use less than LIMIT CPUs over half a second. Other people's QEMU runs share this machine."""

    def __init__(self, limit: float, per_sample: float, total: float):
        self.limit, self.per_sample, self.left = limit, per_sample, total

    def wait(self) -> dict:
        t0, load = time.monotonic(), float("nan")
        while True:
            b0, m0, ta = machine_cpu()[0], _self_cpu(), time.monotonic()
            time.sleep(0.5)
            load = max(0.0, (machine_cpu()[0] - b0) - (_self_cpu() - m0)) / (time.monotonic() - ta)
            waited = time.monotonic() - t0
            if load < self.limit or waited >= min(self.per_sample, self.left):
                break
        self.left = max(0.0, self.left - max(0.0, waited - 0.5))
        return {"others_before": round(load, 3), "waited_s": round(waited, 1)}


# ------------------------------------------------------------------------------------------ back-ends

WORKER_OPTS: list[str] = []         # --no-offloads, --worker-arg: every vhostsplice column's worker
PACKED_BIT = 34                     # VIRTIO_F_RING_PACKED


@dataclass(frozen=True)
class Column:
    """One column of the tables: a back-end, the worker arguments of this column only, and the ring
    layout the front-end asks for (testpmd virtio-user packed_vq=1: the back-end must offer packed)."""
    name: str
    backend: str                    # "vhostsplice" or "dpdk"
    worker_args: tuple[str, ...] = ()
    layout: str = "split"
    busy_poll: int | None = None    # a --busy-poll column's USEC (0: off); None: the default worker (auto)
    floor: str = ""                 # the floor's variant (tap_floor.VARIANTS), backend "floor"
    variant: str = ""               # --variant: this column's own worker options, as given

    def measures(self, fig: str) -> bool:
        """The floor has packet rates only (no socket, no front-end: no ping, no idle figures)."""
        return self.backend != "floor" or fig.startswith(("tx", "rx"))


def sample_dir(column: str) -> str:
    """A column's name as a folder name: the socket's path goes into virtio-user's devargs (key=value,
    comma-separated), so no space, '=' or ',' may stand in it (a --variant=--sandbox=off column's did)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", column)


def variant_column(options: str) -> Column:
    """A --variant column: the default worker with OPTIONS added (named by them: "vhostsplice --sandbox=off")."""
    return Column(f"vhostsplice {options}", "vhostsplice", tuple(shlex.split(options)), variant=options)


def columns(busy_polls: list[int], layouts: list[str], floors: list[str] = (),
            variants: list[str] = ()) -> list[Column]:
    """The headline pair first (default worker, DPDK, split), then a vhostsplice column per --busy-poll
    USEC (split; the default worker's is auto, so 0 is a column too: polling off), then one per --variant,
    then both back-ends per --layouts layout other than split, then one column per --floor variant."""
    cols = [Column("vhostsplice", "vhostsplice"), Column("dpdk", "dpdk")]
    cols += [Column(f"vhostsplice busy-poll {us}", "vhostsplice", ("--busy-poll", str(us)), busy_poll=us)
             for us in busy_polls]
    cols += [variant_column(v) for v in variants]
    cols += [Column(f"{b} {layout}", b, layout=layout) for layout in layouts if layout != "split"
             for b in BACKENDS]
    cols += [Column(tap_floor.VARIANTS[f].column, "floor", floor=f) for f in floors]
    return cols


def column_of(name: str) -> Column:
    """The Column a results key names (also for the JSON of an earlier run)."""
    if name in tap_floor.BY_COLUMN:
        return Column(name, "floor", floor=next(k for k, v in tap_floor.VARIANTS.items() if v.column == name))
    backend, _, rest = name.partition(" ")
    if rest.startswith("busy-poll "):
        us = int(rest.split()[1])
        return Column(name, backend, ("--busy-poll", str(us)), busy_poll=us)
    if rest.startswith("-"):
        return variant_column(rest)
    return Column(name, backend, layout=rest or "split")


# A column's --layouts name -> the virtio-user layout of the interop tests (support.testpmd.LAYOUTS): both
# keep virtio-user's default in_order=1, so split and packed rows differ in the layout only.
FRONT_END_LAYOUTS = {"split": T.LAYOUTS["split-in-order"], "packed": T.LAYOUTS["packed-in-order"]}


class Backend:
    """One back-end process in a namespace, listening on workdir/vhost.sock, moving frames to/from TAP."""

    name = "?"
    needs_front_end = True          # False: the floor moves frames itself (go() starts it)

    def __init__(self, ns: NetNs, workdir: Path, *, hold: bool = False, figure: tuple[str, int] = ("", 0)):
        self.ns, self.workdir = ns, workdir
        self.figure = figure                # ("tx" or "rx", frame bytes) of the sample
        self.sock = workdir / "vhost.sock"
        self.log = workdir / f"{self.name}.log"
        self.hold = hold                    # DPDK: do not forward until go() (RX backlog set-up)
        self.proc: subprocess.Popen | None = None
        self.startup_s = float("nan")

    def _wait_socket(self, t0: float, timeout: float = 60) -> None:
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if self.sock.is_socket():
                self.startup_s = time.monotonic() - t0
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.001)
        raise RuntimeError(f"{self.name} did not listen on {self.sock} (exit {self.proc.poll()}):\n"
                           + self.log.read_text(errors="replace")[-3000:])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def go(self) -> None:
        pass

    def counters(self) -> dict | None:
        return None

    def features(self) -> int | None:
        """The virtio features the front-end acked (None: not known)."""
        return None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def make_tap(ns: NetNs, txqlen: int | None) -> None:
    """The tap the worker and the floor attach a queue to (DPDK's net_tap makes its own)."""
    ns.run(["ip", "tuntap", "add", "dev", TAP, "mode", "tap", "multi_queue", "vnet_hdr"])
    ns.run(["ip", "link", "set", TAP, "up"] + (["txqueuelen", str(txqlen)] if txqlen else []))


class Vhostsplice(Backend):
    name = "vhostsplice"

    worker_args: tuple[str, ...] = ()

    def start(self, txqlen: int | None = None) -> None:
        ns = self.ns
        make_tap(ns, txqlen)
        self.stats_file = self.workdir / "stats.json"
        self.argv = [*measured.argv(), "run", "--socket-path", str(self.sock), "--tap", TAP,
                     "--cpu", str(BE_CPU), "--stats-file", str(self.stats_file), *WORKER_OPTS,
                     *self.worker_args]
        self._logf = open(self.log, "wb")
        t0 = time.monotonic()
        self.proc = ns.popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._logf, stderr=subprocess.STDOUT,
                             env=measured.env())
        self._wait_socket(t0)

    def counters(self) -> dict | None:
        """The worker's live counters (SIGUSR1 rewrites --stats-file; the signal costs it one wake-up)."""
        return live_stats(self.proc, self.stats_file, timeout=2)

    def features(self) -> int | None:
        c = self.counters()
        return int(c["features"], 16) if c and "features" in c else None

    def stop(self) -> None:
        terminate(self.proc, 30)
        self._logf.close()


class Dpdk(Backend):
    """testpmd: net_vhost0 (server on the socket) + net_tap0 in io forwarding; interactive, so the
    RX test can connect the front-end and fill the tap before forwarding starts."""

    name = "dpdk"
    _n = 0
    retry_us, retries = 1, 1000

    def start(self, txqlen: int | None = None) -> None:
        Dpdk._n += 1
        self.prefix = f"vskb{os.getpid()}x{Dpdk._n}"
        self.argv = [*T.LINE_BUFFERED, *self.ns.argv([T.TESTPMD]), "--no-pci", "--no-huge", "-m", "512",
                     f"--file-prefix={self.prefix}", "--lcores", f"0@{FE_CPU},1@{BE_CPU}",
                     "--vdev", f"net_vhost0,iface={self.sock},queues=1", "--vdev", f"net_tap0,iface={TAP}",
                     "--", "-i", "--nb-cores=1", "--total-num-mbufs=32768", "--forward-mode=io",
                     "--no-flush-rx"]       # "start" would otherwise read and drop what waits in the tap
        self._logf = open(self.log, "wb")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=self._logf,
                                     stderr=subprocess.STDOUT)
        self._wait_socket(t0)
        deadline = time.monotonic() + 30
        while self.ns.run(["ip", "link", "show", TAP], check=False).returncode != 0:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"DPDK's tap {TAP} never appeared:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.02)
        if txqlen:
            self.ns.run(["ip", "link", "set", TAP, "txqueuelen", str(txqlen)])
        # io forwarding drops what the guest's RX ring cannot take; with retries it waits for room
        # (up to 1 ms, busy), as vhostsplice does by leaving frames in the tap.
        self._cmd(f"set burst tx delay {self.retry_us} retry {self.retries}")
        if not self.hold:
            self.go()

    def _cmd(self, text: str) -> None:
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    def go(self) -> None:
        self._cmd("start")
        deadline = time.monotonic() + 30
        while "io packet forwarding" not in self.log.read_text(errors="replace"):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"DPDK back-end did not start forwarding:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.01)

    def features(self) -> int | None:
        return T.negotiated_features(self.log.read_text(errors="replace"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self._cmd("stop")
                self._cmd("quit")
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
        self._logf.close()
        shutil.rmtree(T.DPDK_RUNTIME / self.prefix, ignore_errors=True)

    def kill(self) -> None:
        super().kill()
        shutil.rmtree(T.DPDK_RUNTIME / getattr(self, "prefix", "-"), ignore_errors=True)


class Floor(Backend):
    """The raw tap floor (--floor): tap_floor.c on the back-end's CPU, a queue of the same tap, one readv or
    writev per frame (or a share of an io_uring batch); no socket and no front-end. It attaches, says
    "ready", and moves frames from go() until stop() (SIGTERM), which reads its counts (self.result)."""

    name = "floor"
    needs_front_end = False
    program: Path | None = None         # tap_floor.build(), once before the first sample
    variant = "vnet"
    result: dict = {}

    def start(self, txqlen: int | None = None) -> None:
        make_tap(self.ns, txqlen)
        mode, size = self.figure
        self.argv = ["taskset", "-c", str(BE_CPU),
                     *tap_floor.argv(Floor.program, mode, TAP, tap_floor.VARIANTS[self.variant], size)]
        self._logf = open(self.log, "wb")
        t0 = time.monotonic()
        self.proc = self.ns.popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._logf,
                                  text=True)
        if self.proc.stdout.readline().strip() != "ready":
            self.proc.wait(30)
            raise RuntimeError(f"the floor did not start (exit {self.proc.returncode}): "
                               + self.log.read_text(errors="replace")[-3000:])
        self.startup_s = time.monotonic() - t0

    def go(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        out, _ = self.proc.communicate(timeout=30)
        lines = out.strip().splitlines()
        self.result = json.loads(lines[-1]) if lines else {}
        self._logf.close()
        if self.proc.returncode != 0 or not self.result:
            raise RuntimeError(f"the floor exited {self.proc.returncode}: "
                               + self.log.read_text(errors="replace")[-3000:])


BACKEND_CLASSES = {"vhostsplice": Vhostsplice, "dpdk": Dpdk, "floor": Floor}


# ------------------------------------------------------------------------------------------ perf

def perf_works() -> bool:
    if shutil.which("perf") is None:
        return False
    r = subprocess.run(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "true"],
                       capture_output=True, text=True)
    return r.returncode == 0 and re.search(r"^\d+,", r.stderr, re.M) is not None


def perf_counts(pid: int, seconds: float) -> dict[str, int]:
    """System calls and context switches of every thread of PID over SECONDS."""
    r = subprocess.run(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter,context-switches",
                        "-p", str(pid), "--", "sleep", str(seconds)], capture_output=True, text=True)
    out = {}
    for line in r.stderr.splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[0].isdigit():
            out["syscalls" if "sys_enter" in parts[2] else "ctxsw"] = int(parts[0])
    return out


# ------------------------------------------------------------------------------------------ one sample

class Sample:
    """A fresh namespace + back-end (+ front-end) for one figure; cleans up everything it started."""

    def __init__(self, col: Column, workdir: Path, *, hold: bool = False, figure: tuple[str, int] = ("", 0)):
        self.workdir, self.col = workdir, col
        workdir.mkdir(parents=True, exist_ok=True)
        self.ns = NetNs(NS_PREFIX)
        self.be: Backend = BACKEND_CLASSES[col.backend](self.ns, workdir, hold=hold, figure=figure)
        self.be.worker_args = col.worker_args
        self.be.variant = col.floor
        self.fe: T.Testpmd | None = None
        self.extra: list = []          # other processes to kill

    def __enter__(self) -> "Sample":
        return self

    def front_end(self, mode: str, txpkts: int | None = None, stats_period: int | None = None) -> T.Testpmd:
        """testpmd virtio-user as support.testpmd.virtio_user() starts it, plus --no-flush-rx: at start
        testpmd otherwise reads and discards what already waits in its RX ring (uncounted). The column's
        layout gives packed_vq and in_order (FRONT_END_LAYOUTS)."""
        devargs = FRONT_END_LAYOUTS[self.col.layout].devargs
        self.fe = T.Testpmd([f"net_virtio_user0,path={self.be.sock},queues=1,queue_size={T.QUEUE_SIZE},{devargs}"],
                            mode=mode, log=self.workdir / "frontend.log", lcores=f"0@{BE_CPU},1@{FE_CPU}",
                            txpkts=txpkts, stats_period=stats_period, extra=["--no-flush-rx"])
        self.fe.wait_started()
        return self.fe

    def check_layout(self) -> dict:
        """The ring layout the front-end and the back-end agreed on, from the features acked; a sample
        whose layout is not its column's fails (so a packed row cannot silently be a split one)."""
        features = self.be.features()
        if features is None:
            return {"layout": "?"}
        layout = "packed" if features >> PACKED_BIT & 1 else "split"
        if layout != self.col.layout:
            raise RuntimeError(f"{self.col.name}: the rings run {layout} (features {features:#x}), "
                               f"not {self.col.layout}")
        return {"layout": layout, "features": f"{features:#x}"}

    def own_pids(self) -> list[int]:
        return [p.pid for p in ([self.be.proc] + ([self.fe.proc] if self.fe else []) + self.extra)
                if p is not None]

    def __exit__(self, *exc) -> None:
        for p in self.extra:
            if p.poll() is None:
                p.kill()
                p.wait(30)
        if self.fe is not None:
            try:
                self.fe.kill()
            except Exception:       # noqa: BLE001 - cleanup must go on
                pass
        self.be.kill()
        self.ns.close()


def _rates(d: dict, packets: int, w: dict, c0: dict | None, c1: dict | None) -> dict:
    """Per-packet figures of a window: back-end CPU, and the worker's own counters if it has them."""
    for key, cpu in (("cpu_us_per_packet", "backend_cpu"), ("user_us_per_packet", "backend_user_cpu"),
                     ("sys_us_per_packet", "backend_sys_cpu")):
        d[key] = round(w[cpu] * w["seconds"] / packets * 1e6, 3) if packets else None
    if c0 and c1:
        delta = {"wakeups": c1["wakeups"] - c0["wakeups"] - 1}   # our SIGUSR1 woke it once
        for ring in ("rx", "tx"):
            for k in ("batches", "kicks", "notify_sent", "notify_suppressed", "rx_starved"):
                delta[f"{ring}_{k}"] = c1["rings"][ring][k] - c0["rings"][ring][k]
        d["worker_counters"] = delta
        if packets:
            d["per_packet"] = {k: round(v / packets, 5) for k, v in delta.items()}
    return d


def sample_tx(col: Column, size: int, workdir: Path, args) -> dict:
    with Sample(col, workdir, figure=("tx", size)) as s:
        s.be.start()
        fe = s.front_end("txonly", txpkts=size) if s.be.needs_front_end else None
        if fe is None:
            s.be.go()
        layout = s.check_layout()
        time.sleep(args.warmup)
        c0, n0, w0 = s.be.counters(), netdev(s.be.pid, TAP), Window(s.be.pid, s.own_pids(), True)
        time.sleep(args.window)
        w1, n1, c1 = Window(s.be.pid, s.own_pids(), True), netdev(s.be.pid, TAP), s.be.counters()
        w = w0.until(w1)
        pk = n1["rx_packets"] - n0["rx_packets"]
        d = {"mpps": round(pk / w["seconds"] / 1e6, 4), "tap_rx_dropped": n1["rx_dropped"] - n0["rx_dropped"],
             **w, "frontend_cpu": w["own_cpu"].get(fe.proc.pid) if fe else None, "startup_s": s.be.startup_s,
             **layout}
        _rates(d, pk, w, c0, c1)
        if args.perf:
            a = netdev(s.be.pid, TAP)
            pc = perf_counts(s.be.pid, 1.0)
            b = netdev(s.be.pid, TAP)
            npk = b["rx_packets"] - a["rx_packets"]
            if npk and pc:
                d["perf"] = {k: round(v / npk, 4) for k, v in pc.items()} | {"packets": npk}
        d["rss_kib_after"] = proc_status(s.be.pid)
        if fe is not None:
            totals = fe.stop()["all"]
            d["testpmd_tx_packets"], d["testpmd_tx_dropped"] = totals.tx_packets, totals.tx_dropped
            s.fe = None
        s.be.stop()
        if fe is None:
            d["floor"] = s.be.result
    return d


def _fill(ns: NetNs, size: int, count: int) -> dict:
    """Put COUNT frames of SIZE bytes into TAP's queue (host -> tap direction) from inside NS."""
    r = ns.run(["taskset", "-c", str(BE_CPU), sys.executable, str(Path(__file__).resolve()), "_fill",
                TAP, str(size), str(count)], timeout=120)
    return json.loads(r.stdout.strip().splitlines()[-1])


def sample_rx(col: Column, size: int, workdir: Path, args, probe=None) -> dict:
    """probe (rx_profile.py): probe.attach(pid) once the back-end runs, probe.detach() after the drain; the
    sample's drain_window (monotonic seconds of its 10 % and 90 % points) says what to look at."""
    count = args.rx_frames if size <= 64 else args.rx_frames // 2
    with Sample(col, workdir, hold=True, figure=("rx", size)) as s:
        s.be.start(txqlen=RX_TXQLEN)
        if probe is not None:
            probe.attach(s.be.pid)
        n_start = netdev(s.be.pid, TAP)
        if col.backend == "dpdk":        # front-end first (DPDK reads the tap only once forwarding)
            s.front_end("rxonly")
        filled = _fill(s.ns, size, count)
        samples: list[tuple[int, float, Window | None]] = []
        stop = threading.Event()
        pids = s.own_pids

        def sampler() -> None:
            """Every 5 ms the tap's tx_packets (one pread), every 20 ms also the CPU counters. It must be
            cheap: both CPUs are busy (front-end, back-end) and it steals from one of them (measured: a
            sampler taking a full Window every 4 ms used ~0.6 CPU and starved the front-end)."""
            os.sched_setaffinity(0, {FE_CPU})     # this thread only: stay off the back-end's CPU
            fd = os.open(f"/proc/{s.be.pid}/net/dev", os.O_RDONLY)
            try:
                i = 0
                while not stop.is_set():
                    n = _tap_tx_packets(os.pread(fd, 65536, 0))
                    samples.append((n, time.monotonic(), Window(s.be.pid, pids()) if i % 4 == 0 else None))
                    i += 1
                    time.sleep(0.005)
            finally:
                os.close(fd)

        th = threading.Thread(target=sampler, daemon=True)
        th.start()
        census0 = Window(s.be.pid, pids(), True)
        if col.backend == "dpdk" or not s.be.needs_front_end:
            s.be.go()                    # DPDK's forwarding, or the floor's reads
        else:                            # the worker reads the tap once the front-end's rings run
            s.front_end("rxonly")
        base = n_start["tx_packets"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if samples and samples[-1][0] - base >= filled["queued"]:
                break
            if len(samples) > 100 and samples[-1][0] == samples[-50][0] and samples[-1][0] > base:
                break                    # drained (what is left never comes: dropped somewhere)
        stop.set()
        th.join()
        if probe is not None:
            probe.detach()
        census1 = Window(s.be.pid, pids(), True)
        time.sleep(0.3)                  # the last frames reach the front-end
        c_end = s.be.counters()
        layout = s.check_layout()
        read = samples[-1][0] - base
        fe_pid = s.fe.proc.pid if s.fe else None
        delivered_to = s.fe.stop()["all"].rx_packets if s.fe else None
        s.fe = None
        s.be.stop()
        if delivered_to is None:         # the floor: what its reads got
            delivered_to = s.be.result["frames"]
    lo, hi = base + 0.1 * read, base + 0.9 * read
    pts = [(n, t) for n, t, _w in samples if lo <= n <= hi]
    wins = [(n, w) for n, _t, w in samples if w is not None and lo <= n <= hi]
    slope = _slope([(t, n) for n, t in pts])
    delivered = delivered_to / read if read else 0.0
    d = {"mpps": round(slope * min(1.0, delivered) / 1e6, 4), "tap_read_mpps": round(slope / 1e6, 4),
         "frames_queued": filled["queued"], "fill_mpps": filled["mpps"], "read_by_backend": read,
         "testpmd_rx_packets" if fe_pid else "floor_frames": delivered_to,
         "delivered_fraction": round(delivered, 5),
         "drain_points": len(pts), "startup_s": s.be.startup_s, **layout}
    if len(pts) >= 2:
        d["drain_window"] = [pts[0][1], pts[-1][1]]
        d["drain_window_packets"] = pts[-1][0] - pts[0][0]
    if len(wins) >= 2:                   # CPU and others' load over (about) the 10..90 % part of the drain
        d.update(wins[0][1].until(wins[-1][1]))
        d["frontend_cpu"] = d["own_cpu"].get(fe_pid)
        _rates(d, wins[-1][0] - wins[0][0], d, None, None)
    whole = census0.until(census1)      # the whole drain, front-end start-up included: per-process others
    d["others_cpu_drain_stat"] = d.get("others_cpu")
    d.update(others_cpu=whole["others_cpu"], others_top=whole["others_top"])
    if not s.be.needs_front_end:
        d["floor"] = s.be.result
    if c_end:
        rx = c_end["rings"]["rx"]
        io = c_end.get("host", {}).get("io", {})       # how the frames were read (io_uring batches, readv)
        d["worker_counters"] = {"wakeups": c_end["wakeups"] - 1, "rx_packets": rx["packets"],
                                **{f"rx_{k}": rx[k] for k in ("batches", "kicks", "notify_sent", "rx_starved")},
                                **{f"io_{k}": io[k] for k in ("enters", "rx_sqes", "trickles") if k in io}}
        if rx["packets"]:
            d["per_packet"] = {k: round(v / rx["packets"], 5)
                               for k, v in d["worker_counters"].items() if k != "rx_packets"}
    return d


def _tap_tx_packets(text: bytes) -> int:
    """tx_packets of TAP from the bytes of /proc/PID/net/dev."""
    for line in text.decode().splitlines():
        name, sep, rest = line.partition(":")
        if sep and name.strip() == TAP:
            return int(rest.split()[9])
    raise LookupError(f"{TAP} not in net/dev")


def _slope(pts: list[tuple[float, int]]) -> float:
    """Least-squares packets per second through (t, count) points."""
    if len(pts) < 3:
        return 0.0
    mt = statistics.fmean(t for t, _ in pts)
    mn = statistics.fmean(n for _, n in pts)
    num = sum((t - mt) * (n - mn) for t, n in pts)
    den = sum((t - mt) ** 2 for t, _ in pts)
    return num / den if den else 0.0


def sample_rx_live(col: Column, size: int, workdir: Path, args) -> dict:
    """The other RX method: testpmd net_af_packet txonly on the tap, its lcore on the front-end's CPU."""
    with Sample(col, workdir) as s:
        s.be.start()
        fe = s.front_end("rxonly", stats_period=1)
        snd = T.Testpmd([f"net_af_packet0,iface={TAP}"], mode="txonly", txpkts=size,
                        log=workdir / "sender.log", lcores=f"0@{BE_CPU},1@{FE_CPU}",
                        argv_prefix=(*T.LINE_BUFFERED, *s.ns.argv([])))
        s.extra.append(snd.proc)
        snd.wait_started()
        time.sleep(args.warmup)
        n0, w0, l0 = netdev(s.be.pid, TAP), Window(s.be.pid, s.own_pids()), _live_blocks(fe)
        time.sleep(args.window)
        w1, n1, l1 = Window(s.be.pid, s.own_pids()), netdev(s.be.pid, TAP), _live_blocks(fe)
        snd.stop()
        fe.stop()
        s.fe = None
        s.be.stop()
    w = w0.until(w1)
    pps = [p for p in l1[len(l0):]]
    return {"mpps": round(statistics.fmean(pps) / 1e6, 4) if pps else 0.0,
            "tap_read_mpps": round((n1["tx_packets"] - n0["tx_packets"]) / w["seconds"] / 1e6, 4),
            "tap_tx_dropped_mpps": round((n1["tx_dropped"] - n0["tx_dropped"]) / w["seconds"] / 1e6, 4),
            "startup_s": s.be.startup_s, **w}


def _live_blocks(fe: T.Testpmd) -> list[int]:
    """Rx-pps of every 'NIC statistics' block testpmd printed so far (its own clock, port 0)."""
    return [int(m) for m in re.findall(r"Rx-pps:\s+(\d+)", fe.text())]


def sample_latency(col: Column, workdir: Path, args) -> dict:
    """ping -i --ping-interval through the back-end to testpmd icmpecho; the back-end's CPU (utime + stime of
    /proc/PID/stat) over the pings, and the worker's busy-poll counters over the same window."""
    with Sample(col, workdir) as s:
        s.be.start()
        s.ns.run(["ip", "addr", "add", TAP_IP, "dev", TAP])
        s.front_end("icmpecho")
        s.ns.run(["ping", "-c", "5", "-i", "0.05", "-W", "2", PEER_IP], check=False)   # ARP, warm-up
        layout = s.check_layout()
        c0 = s.be.counters()
        w0 = Window(s.be.pid, s.own_pids(), True)
        pin = ["taskset", "-c", str(args.ping_cpu)] if args.ping_cpu is not None else []
        r = s.ns.run([*pin, "ping", "-c", str(args.pings), "-i", str(args.ping_interval), "-W", "1", PEER_IP],
                     check=False, timeout=60 + args.pings * (args.ping_interval + 0.1))
        w1 = Window(s.be.pid, s.own_pids(), True)
        c1 = s.be.counters()
        s.fe.stop()
        s.fe = None
        s.be.stop()
    rtts = sorted(float(x) * 1000 for x in re.findall(r"time=([\d.]+) ms", r.stdout))
    if not rtts:
        raise RuntimeError(f"no ping replies through {col.name}:\n{r.stdout}\n{r.stderr}")
    d = {"min_us": round(rtts[0], 1), "avg_us": round(statistics.fmean(rtts), 1),
         "p50_us": round(_pct(rtts, 50), 1), "p99_us": round(_pct(rtts, 99), 1),
         "max_us": round(rtts[-1], 1), "replies": len(rtts), "sent": args.pings,
         "startup_s": s.be.startup_s, **layout, **w0.until(w1)}
    if c0 and c1:
        busy0, busy1 = c0.get("busy_poll", {}), c1.get("busy_poll", {})
        d["busy_poll"] = {k: busy1[k] - busy0.get(k, 0) if k in BUSY_COUNTS else busy1[k] for k in busy1}
        d["wakeups_per_ping"] = round((c1["wakeups"] - c0["wakeups"] - 1) / len(rtts), 3)
        d["recheck_found_per_ping"] = round((c1["rechecks"]["found_work"] - c0["rechecks"]["found_work"])
                                            / len(rtts), 3)
    return d


def _pct(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    k = max(0, min(len(sorted_values) - 1, int(round(p / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def sample_idle(col: Column, workdir: Path, args) -> dict:
    with Sample(col, workdir) as s:
        s.be.start()
        s.front_end("rxonly")
        layout = s.check_layout()
        time.sleep(1.0)
        c0, w0 = s.be.counters(), Window(s.be.pid, s.own_pids(), True)
        time.sleep(args.idle)
        w1, c1 = Window(s.be.pid, s.own_pids(), True), s.be.counters()
        rss = proc_status(s.be.pid)
        s.fe.stop()
        s.fe = None
        s.be.stop()
    d = {"cpu_percent": round(100 * w0.until(w1)["backend_cpu"], 3), "rss_kib": rss,
         "startup_s": s.be.startup_s, **layout, **w0.until(w1)}
    if c0 and c1:
        d["wakeups"] = c1["wakeups"] - c0["wakeups"] - 1
    return d


# ------------------------------------------------------------------------------------------ the sender

def fill_main(tap: str, size: int, count: int) -> int:
    """(In the namespace) queue COUNT UDP frames of SIZE bytes into TAP's tx queue (mmsg_sender)."""
    from mmsg_sender import send_frames, udp_frame
    queued, refused, dt = send_frames(tap, udp_frame(size), count, burst=1024)
    print(json.dumps({"queued": queued, "refused": refused, "mpps": round(queued / dt / 1e6, 3)}))
    return 0


# ------------------------------------------------------------------------------------------ the run

def machine_facts() -> dict:
    def cmd(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "?")
    os_name = next((line.split("=", 1)[1].strip('"') for line in Path("/etc/os-release").read_text().splitlines()
                    if line.startswith("PRETTY_NAME=")), "?")
    worker = measured.argv()
    try:
        where = subprocess.run([*worker, "--version"], capture_output=True, text=True, timeout=10,
                               env=measured.env()).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        where = "?"
    pkg = measured.package_dir()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{os.cpu_count()} x {model}", "memory_gib": round(os.sysconf("SC_PHYS_PAGES")
                                                                  * os.sysconf("SC_PAGE_SIZE") / 2**30, 1),
        "kernel": platform.release(), "os": os_name, "python": platform.python_version(),
        "dpdk": cmd("dpkg-query", "-W", "-f", "${Version}", "dpdk"),
        "vhostsplice": f"{where} from {pkg}{_tree_rev(Path(pkg).parent) if pkg != '?' else ''}",
        "worker_command": " ".join([*worker, "run", "...", *WORKER_OPTS]),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def _tree_rev(tree: Path) -> str:
    """', git abc1234 (+ uncommitted changes)' for a checkout, the core's sha256 prefix for a copy."""
    def git(*a: str) -> str:
        r = subprocess.run(["git", "-C", str(tree), *a], capture_output=True, text=True, timeout=10)
        return r.stdout.strip() if r.returncode == 0 else ""
    rev = git("rev-parse", "--short", "HEAD") if (tree / ".git").exists() else ""
    if rev:
        dirty = git("status", "--porcelain", "-uno", "--", "vhostsplice")
        return f", git {rev}{' + uncommitted changes in vhostsplice/' if dirty else ''}"
    cores = sorted((tree / "vhostsplice").glob("_vs_core*.so"))
    if cores:
        return f", core {cores[0].name} sha256 {hashlib.sha256(cores[0].read_bytes()).hexdigest()[:12]}"
    return ""


def run(args) -> dict:
    facts = machine_facts()
    args.perf = args.perf and perf_works()
    work = Path(args.workdir or f"/tmp/vsbench-{os.getpid()}")
    results: dict = {"facts": facts, "command": " ".join(["python3", "benchmarks/dpdk_bench.py", *sys.argv[1:]]),
                     "settings": {k: getattr(args, k) for k in ("repeat", "window", "warmup", "idle", "pings",
                                                                 "rx_frames", "rx_sender", "ping_interval", "ping_cpu",
                                                                 "perf", "quiet", "min_share",
                                                                 "quiet_wait", "quiet_budget", "noisy",
                                                                 "retries", "busy_poll", "layouts", "floor",
                                                                 "variant", "no_offloads")}
                     | {"default_busy_poll": "auto"},     # the default worker's (before 2026-12-07: 0)
                     "columns": [c.name for c in args.columns],
                     "samples": {c.name: {f: [] for f in args.figures if c.measures(f)} for c in args.columns}}
    t_start = time.monotonic()
    gate = QuietGate(args.quiet, args.quiet_wait, args.quiet_budget)
    for rep in range(args.repeat):
        for fig in args.figures:
            cols = [c for c in args.columns if c.measures(fig)]
            order = cols if (rep + FIGURES.index(fig)) % 2 == 0 else cols[::-1]
            for col in order:
                backend = col.name
                for attempt in range(1 + args.retries):
                    wd = work / f"{rep}-{fig}-{sample_dir(backend)}-{attempt}"
                    before = gate.wait() if args.quiet > 0 else {}
                    t0 = time.monotonic()
                    d = one_sample(fig, col, wd, args)
                    d.update(before, repeat=rep, attempt=attempt)
                    took = time.monotonic() - t0
                    noisy = (d.get("others_cpu", 0) > args.noisy
                             or starved(fig, d, args.min_share, col.backend == "dpdk"))
                    retry = noisy and attempt < args.retries and gate.left >= took
                    if retry:
                        d["discarded"] = f"others used {d['others_cpu']} CPUs during the window"
                        gate.left -= took
                    elif noisy:
                        d["noisy"] = True       # no retry left: kept in the medians, counted in the md
                    results["samples"][backend][fig].append(d)
                    print(f"[{time.monotonic() - t_start:6.1f}s] rep {rep} {fig:8} {backend:26} "
                          f"{_brief(fig, d)} ({took:.1f}s){' NOISY, again' if retry else ''}", flush=True)
                    if not retry:
                        break
    results["elapsed_s"] = round(time.monotonic() - t_start, 1)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return results


def starved(fig: str, d: dict, share: float, backend_polls: bool = True) -> bool:
    """A rate sample whose front-end (testpmd: it runs flat out, one CPU) or busy-polling back-end (DPDK)
    got less than SHARE of a CPU: someone else ran on that CPU (short-lived processes escape the others'
    CPU census). A vhostsplice worker sleeps when it has caught up with the front-end (with io_uring
    batches it does at TX 64 B), so its share says nothing about others: not judged by it (a worker that
    did lose CPU only lowers its own figure)."""
    if not fig.startswith(("tx", "rx")) or "error" in d or "backend_cpu" not in d:
        return False
    fe = d.get("frontend_cpu")
    return (backend_polls and d["backend_cpu"] < share) or (fe is not None and fe < share)


def one_sample(fig: str, col: Column, wd: Path, args) -> dict:
    try:
        if fig.startswith("tx"):
            return sample_tx(col, int(fig[2:]), wd, args)
        if fig.startswith("rx"):
            fn = sample_rx if args.rx_sender == "backlog" else sample_rx_live
            return fn(col, int(fig[2:]), wd, args)
        if fig == "latency":
            return sample_latency(col, wd, args)
        return sample_idle(col, wd, args)
    except Exception as exc:        # noqa: BLE001 - one failed sample must not lose the run
        return {"error": f"{type(exc).__name__}: {exc}"[:2000]}


def _brief(fig: str, d: dict) -> str:
    if "error" in d:
        return "ERROR " + d["error"].splitlines()[0][:150]
    others = (f"others {d.get('others_cpu', float('nan')):.2f} CPU "
              f"(before {d.get('others_before', float('nan')):.2f}, waited {d.get('waited_s', 0):.0f}s)")
    if fig.startswith(("tx", "rx")):
        fe = d.get("frontend_cpu")
        return (f"{d['mpps']:.3f} Mpps  backend {d.get('backend_cpu', float('nan')):.2f} CPU  front-end "
                f"{fe if fe is not None else float('nan'):.2f}  {others}")
    if fig == "latency":
        return (f"p50 {d['p50_us']} us  p99 {d['p99_us']} us  backend {d.get('backend_cpu', float('nan')):.3f} CPU"
                f"  {others}")
    return f"{d['cpu_percent']:.2f} % CPU  RSS {d['rss_kib'].get('VmRSS', 0) / 1024:.1f} MiB  {others}"


# ------------------------------------------------------------------------------------------ summary

def _med(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and v == v]
    return statistics.median(values) if values else None


def summarize(results: dict) -> dict:
    """Median per back-end and figure, with min and max. A noisy sample (kept after its last retry, or
    one that fails the noise rules of this version: samples of older runs are judged again) is left out of
    the median when at least two clean samples remain in its cell; min..max and n cover all of them."""
    S, st = results["samples"], results["settings"]
    rows: dict[str, dict] = {}

    def is_noisy(f: str, d: dict, b: str) -> bool:
        return bool(d.get("noisy") or d.get("others_cpu", 0) > st.get("noisy", 0.25)
                    or starved(f, d, st.get("min_share", 0.85), b.split(" ")[0] == "dpdk"))

    def add(key: str, getter, figs: list[str]) -> None:
        for b in S:
            vals, clean = [], []
            for f in figs:
                for d in S[b].get(f, []):
                    if "error" not in d and "discarded" not in d:
                        try:
                            v = getter(d)
                        except (KeyError, TypeError):
                            v = None
                        if v is not None:
                            vals.append(v)
                            if not is_noisy(f, d, b):
                                clean.append(v)
            rows.setdefault(key, {})[b] = {"median": _med(clean if len(clean) >= 2 else vals),
                                           "min": min(vals) if vals else None,
                                           "max": max(vals) if vals else None, "n": len(vals),
                                           "noisy": len(vals) - len(clean),
                                           "noisy_left_out": len(clean) >= 2 and len(clean) < len(vals)}

    for f in ("tx64", "tx1500", "rx64", "rx1500"):
        add(f"{f}_mpps", lambda d: d["mpps"], [f])
        add(f"{f}_backend_cpu", lambda d: d["backend_cpu"], [f])
        add(f"{f}_cpu_us_per_packet", lambda d: d.get("cpu_us_per_packet"), [f])
        add(f"{f}_user_us_per_packet", lambda d: d.get("user_us_per_packet"), [f])
        add(f"{f}_sys_us_per_packet", lambda d: d.get("sys_us_per_packet"), [f])
        add(f"{f}_syscalls_per_packet", lambda d: d["perf"]["syscalls"], [f])
        add(f"{f}_ctxsw_per_packet", lambda d: d["perf"]["ctxsw"], [f])
        add(f"{f}_wakeups_per_packet", lambda d: d["per_packet"]["wakeups"], [f])
        ring = "tx" if f.startswith("tx") else "rx"
        add(f"{f}_batches_per_packet", lambda d, r=ring: d["per_packet"][f"{r}_batches"], [f])
        add(f"{f}_kicks_per_packet", lambda d, r=ring: d["per_packet"][f"{r}_kicks"], [f])
        add(f"{f}_calls_per_packet", lambda d, r=ring: d["per_packet"][f"{r}_notify_sent"], [f])
        add(f"{f}_others_cpu", lambda d: d["others_cpu"], [f])
    for k in ("min_us", "avg_us", "p50_us", "p99_us"):
        add(f"latency_{k}", lambda d, k=k: d[k], ["latency"])
    add("latency_others_cpu", lambda d: d["others_cpu"], ["latency"])
    add("latency_backend_cpu", lambda d: d["backend_cpu"], ["latency"])
    for k in ("polls", "found_work", "timed_out"):
        add(f"latency_busy_{k}_per_ping", lambda d, k=k: d["busy_poll"][k] / d["replies"], ["latency"])
    add("latency_wakeups_per_ping", lambda d: d["wakeups_per_ping"], ["latency"])
    add("latency_recheck_found_per_ping", lambda d: d["recheck_found_per_ping"], ["latency"])
    add("idle_cpu_percent", lambda d: d["cpu_percent"], ["idle"])
    add("idle_wakeups_per_s", lambda d: d["wakeups"] / d["seconds"], ["idle"])
    add("idle_others_cpu", lambda d: d["others_cpu"], ["idle"])
    add("rss_idle_mib", lambda d: d["rss_kib"]["VmRSS"] / 1024, ["idle"])
    add("rss_idle_anon_mib", lambda d: d["rss_kib"]["RssAnon"] / 1024, ["idle"])
    add("rss_idle_file_mib", lambda d: d["rss_kib"]["RssFile"] / 1024, ["idle"])
    add("rss_idle_shmem_mib", lambda d: d["rss_kib"]["RssShmem"] / 1024, ["idle"])
    add("pss_idle_mib", lambda d: d["rss_kib"]["Pss"] / 1024, ["idle"])
    add("rss_after_tx1500_mib", lambda d: d["rss_kib_after"]["VmRSS"] / 1024, ["tx1500"])
    add("startup_ms", lambda d: d["startup_s"] * 1000, list(FIGURES))
    return rows


GOALS = [  # key, label, unit, kind ("ratio>=", "ratio<=", "abs<"), target
    ("tx64_mpps", "TX 64 B (guest -> tap)", "Mpps", "ratio>=", 1.0),
    ("tx1500_mpps", "TX 1500 B (guest -> tap)", "Mpps", "ratio>=", 1.0),
    ("rx64_mpps", "RX 64 B (tap -> guest)", "Mpps", "ratio>=", 1.0),
    ("rx1500_mpps", "RX 1500 B (tap -> guest)", "Mpps", "ratio>=", 1.0),
    ("latency_min_us", "ping RTT min", "us", None, None),
    ("latency_avg_us", "ping RTT avg", "us", None, None),
    ("latency_p50_us", "ping RTT p50", "us", "ratio<=", 1.0),          # issue 18 (LATENCY_GOALS[None])
    ("latency_p99_us", "ping RTT p99", "us", None, None),
    ("rss_idle_mib", "RSS, idle and connected", "MiB", "abs<", 30.0),
    ("rss_idle_anon_mib", "  of which RssAnon (private heap)", "MiB", None, None),
    ("rss_idle_shmem_mib", "  of which RssShmem (guest memory touched, own memfds)", "MiB", None, None),
    ("pss_idle_mib", "PSS, idle and connected (shared pages split)", "MiB", None, None),
    ("rss_after_tx1500_mib", "RSS after the 1500 B TX run", "MiB", None, None),
    ("idle_cpu_percent", "CPU while idle (rings up, no traffic)", "%", "abs<", 0.5),
    ("idle_wakeups_per_s", "wake-ups/s while idle", "/s", None, None),
    ("startup_ms", "start-up to listening", "ms", None, None),
]


# issue 18: ping p50 / DPDK's at most this, by --busy-poll USEC (None: the default worker, auto)
LATENCY_GOALS = {None: 1.0, 50: 0.7}
BUSY_COUNTS = ("polls", "found_work", "timed_out")     # the worker's busy_poll counters (the rest: settings)


def _fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "n/a"
    if unit == "Mpps":
        return f"{v:.3f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}" if abs(v) >= 0.001 else f"{v:.2g}"


def markdown(results: dict, rows: dict) -> str:
    f, st = results["facts"], results["settings"]
    runs = results.get("runs") or [{"command": results["command"], "elapsed_s": results["elapsed_s"],
                                    "date": f["date"], "loadavg_at_start": f["loadavg_at_start"]}]
    out = [f"# vhostsplice vs DPDK net_vhost + net_tap ({f['date']})", "",
           "Command%s (run as root, holding `flock /tmp/vs-heavy.lock`):" % ("s" if len(runs) > 1 else ""), ""]
    out += [f"- `{r['command']}` ({r['date']}, {r['elapsed_s']} s, load average at start "
            f"{' '.join(r['loadavg_at_start'])}{'; ' + r['vhostsplice'] if len(runs) > 1 else ''}"
            f"{'; figures used: ' + ', '.join(r['used']) if isinstance(r.get('used'), list) else ''})"
            for r in runs]
    if len(runs) > 1:
        out += [f"- `{results['command']}` (medians over all of them)"]
    out += ["", f"Machine: {f['cpu']}, {f['memory_gib']} GiB, {f['os']}, kernel {f['kernel']}, DPDK {f['dpdk']}, "
            f"Python {f['python']}, {f['vhostsplice']}. Front-end: testpmd virtio-user "
            f"(forwarding lcore on CPU {FE_CPU}); back-end on CPU {BE_CPU}.", "",
            f"Each cell is the median over n samples (n and min..max in the spread table below); every sample "
            f"has its own namespace, back-end and front-end. A sample during which processes outside the "
            f"benchmark used more than {st['noisy']} CPUs, or (packet rates) whose front-end or busy-polling "
            f"back-end (DPDK; a vhostsplice worker sleeps once it has caught up) got less "
            f"than {st.get('min_share', 0.85)} of a CPU, was taken again (at most {st['retries']} times); "
            f"'noisy' samples are ones kept after the last retry; they are left out of a median when at least two "
            f"clean samples remain in the cell.", "",
            "| figure | vhostsplice | DPDK | vhostsplice / DPDK | goal | met |",
           "| --- | ---: | ---: | ---: | --- | --- |"]
    for key, label, unit, kind, target in GOALS:
        r = rows.get(key)
        if not r:
            continue
        v, d = r["vhostsplice"]["median"], r["dpdk"]["median"]
        ratio = v / d if v is not None and d else None
        goal, met = "", ""
        if kind and (v is None or (kind.startswith("ratio") and ratio is None)):
            goal, met = {"ratio>=": f"ratio >= {target}", "ratio<=": f"ratio <= {target}",
                         "abs<": f"< {target} {unit}"}[kind], None
        elif kind == "ratio>=":
            goal, met = f"ratio >= {target}", ratio is not None and ratio >= target
        elif kind == "ratio<=":
            goal, met = f"ratio <= {target}", ratio is not None and ratio <= target
        elif kind == "abs<":
            goal, met = f"< {target} {unit}", v is not None and v < target
        out.append(f"| {label} ({unit}) | {_fmt(v, unit)} | {_fmt(d, unit)} | "
                   f"{'%.2f' % ratio if ratio is not None else 'n/a'} | {goal} | "
                   f"{('n/a' if met is None else 'yes' if met else '**no**') if goal else ''} |")
    out += ["", "## Cost per packet (medians)", "",
            "| figure | back-end | CPU used (cores) | CPU us/packet | of which user | of which kernel |"
            " syscalls/packet | context switches/packet | wake-ups/packet | batches/packet | kicks/packet |"
            " calls/packet | others' CPU |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    cols = results.get("columns") or list(results["samples"])
    for fig in ("tx64", "tx1500", "rx64", "rx1500"):
        for b in [c for c in cols if results["samples"][c].get(fig)]:
            cells = [_fmt(rows.get(f"{fig}_{k}", {}).get(b, {}).get("median"))
                     for k in ("backend_cpu", "cpu_us_per_packet", "user_us_per_packet", "sys_us_per_packet",
                               "syscalls_per_packet", "ctxsw_per_packet",
                               "wakeups_per_packet", "batches_per_packet", "kicks_per_packet",
                               "calls_per_packet", "others_cpu")]
            out.append(f"| {fig} | {b} | " + " | ".join(cells) + " |")
    out += ["", "Syscalls and context switches come from `perf stat -e raw_syscalls:sys_enter,context-switches "
            "-p PID` over a separate 1 s window (all threads of the back-end process); wake-ups, batches, kicks "
            "(eventfd kicks the front-end sent) and calls (used-buffer notifications the worker sent) come from "
            "the worker's own counters (DPDK has none: n/a). RX per-packet counters cover the whole drain. "
            "'others' CPU' is what processes outside this benchmark used during the window.", "",
            *_floor_table(results, rows), *_busy_poll_table(results, rows), *_variant_table(results, rows),
            *_layout_table(results, rows),
            "## Spread (min..max over samples)", "", "| figure | " + " | ".join(cols) + " |",
            "| --- |" + " --- |" * len(cols)]
    for key, label, unit, _kind, _t in GOALS:
        r = rows.get(key)
        if r and any(r[b]["n"] for b in cols):
            out.append(f"| {label} ({unit}) | " + " | ".join(
                (f"{_fmt(r[b]['min'], unit)}..{_fmt(r[b]['max'], unit)} (n={r[b]['n']}"
                 f"{', %d noisy' % r[b]['noisy'] if r[b].get('noisy') else ''}"
                 f"{', left out of the median' if r[b].get('noisy_left_out') else ''})") if r[b]["n"] else ""
                for b in cols) + " |")
    errors = [(b, fig, d["repeat"], d["error"]) for b in cols for fig, ds in results["samples"][b].items()
              for d in ds if "error" in d]
    if errors:
        out += ["", "## Failed samples", ""] + [f"- {b} {fig} rep {rep}: `{e.splitlines()[0][:300]}`"
                                                 for b, fig, rep, e in errors]
    return "\n".join(out) + "\n"


def _median(rows: dict, key: str, col: str) -> float | None:
    return rows.get(key, {}).get(col, {}).get("median")


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "n/a"


def _variant_table(results: dict, rows: dict) -> list[str]:
    """Each --variant column against the default worker and DPDK, same run (medians)."""
    variants = [c for c in results.get("columns") or list(results["samples"]) if column_of(c).variant]
    if not variants:
        return []
    out = ["## Worker variants: the default worker with options added, same run (medians)", "",
           "| figure | worker | vhostsplice | DPDK | vhostsplice / DPDK | variant / default |",
           "| --- | --- |" + " ---: |" * 4]
    for fig, unit in (("tx64_mpps", "Mpps"), ("tx1500_mpps", "Mpps"), ("rx64_mpps", "Mpps"),
                      ("rx1500_mpps", "Mpps"), ("latency_p50_us", "us")):
        base, d = _median(rows, fig, "vhostsplice"), _median(rows, fig, "dpdk")
        for c in ["vhostsplice", *variants]:
            v = _median(rows, fig, c)
            if v is None:
                continue
            label = "default" if c == "vhostsplice" else f"`{column_of(c).variant}`"
            out.append(f"| {fig.replace('_mpps', '').replace('_us', '')} ({unit}) | {label} | {_fmt(v, unit)} | "
                       f"{_fmt(d, unit)} | {_ratio(v, d)} | {'' if c == 'vhostsplice' else _ratio(v, base)} |")
    return out + [""]


def _busy_poll_table(results: dict, rows: dict) -> list[str]:
    """Ping RTT and the back-end's CPU per --busy-poll column, against DPDK's (same run)."""
    cols = [c for c in results.get("columns") or list(results["samples"])
            if column_of(c).layout == "split" and results["samples"][c].get("latency")]
    if not any(column_of(c).busy_poll is not None for c in cols):
        return []
    out = ["## Busy polling: ping RTT and CPU (medians)", "",
           "| back-end | p50 (us) | p99 (us) | min (us) | avg (us) | p50 / DPDK | goal | met | p99 / DPDK |"
           " back-end CPU during the pings (cores) | idle CPU (%) | busy polls / ping | found work / ping |"
           " timed out / ping | recheck found work / ping | wake-ups / ping |",
           "| --- |" + " ---: |" * 5 + " --- | --- |" + " ---: |" * 8]
    for c in cols:
        col = column_of(c)
        med = {k: _median(rows, f"latency_{k}", c) for k in ("p50_us", "p99_us", "min_us", "avg_us")}
        goal = LATENCY_GOALS.get(col.busy_poll) if col.backend == "vhostsplice" else None
        d50, d99 = _median(rows, "latency_p50_us", "dpdk"), _median(rows, "latency_p99_us", "dpdk")
        met = "" if goal is None or med["p50_us"] is None or not d50 else (
            "yes" if med["p50_us"] / d50 <= goal else "**no**")
        extra = [_fmt(_median(rows, k, c)) if col.backend == "vhostsplice" else ""
                 for k in ("latency_busy_polls_per_ping", "latency_busy_found_work_per_ping",
                           "latency_busy_timed_out_per_ping", "latency_recheck_found_per_ping",
                           "latency_wakeups_per_ping")]
        out.append(f"| {c} | " + " | ".join(_fmt(med[k]) for k in med)
                   + f" | {_ratio(med['p50_us'], d50) if col.backend != 'dpdk' else ''}"
                   + f" | {'<= %.1f (issue 18)' % goal if goal is not None else ''} | {met}"
                   + f" | {_ratio(med['p99_us'], d99) if col.backend != 'dpdk' else ''}"
                   + f" | {_fmt(_median(rows, 'latency_backend_cpu', c))}"
                   + f" | {_fmt(_median(rows, 'idle_cpu_percent', c))} | "
                   + " | ".join(extra) + " |")
    st = results["settings"]
    out += ["", f"`ping -i {st.get('ping_interval', 0.005)}` ({st['pings']} per sample) from the tap's namespace "
            "to testpmd icmpecho behind the back-end. The back-end's CPU is utime + stime of /proc/PID/stat "
            "(all its threads) over the pings, per second of wall time; busy polls, windows that found work or "
            "timed out (ran out), and wake-ups (epoll returns) come from the worker's counters over the same "
            "window (SIGUSR1: one wake-up, subtracted); 'recheck found work' counts the one extra pass after a "
            "batch that published (every worker makes it) finding work, e.g. the echo reply already in the TX "
            "ring.", ""]
    return out


FLOOR_GOAL = {"rx64_mpps": 1 / 1.15, "rx1500_mpps": 1 / 1.15}   # issue 18: RX within 1.15x of the floor


def _floor_table(results: dict, rows: dict) -> list[str]:
    """Packet rates against the raw tap floor: every floor column, vhostsplice / the floor with the worker's
    header (issue 18's goal on RX), DPDK / the header-less floor (DPDK's net_tap carries none)."""
    floors = [c for c in results.get("columns") or list(results["samples"]) if column_of(c).backend == "floor"]
    if not floors:
        return []
    same = tap_floor.VARIANTS[tap_floor.same_as_worker(results["settings"].get("no_offloads", False))].column
    plain = tap_floor.VARIANTS["plain"].column
    out = ["## The raw tap floor: one readv/writev per frame on the same tap (medians, Mpps)", "",
           "| figure | vhostsplice | DPDK | " + " | ".join(floors) + f" | vhostsplice / DPDK | vhostsplice / "
           f"{same} | goal | met | DPDK / {plain} |", "| --- |" + " ---: |" * (3 + len(floors)) + " --- | --- | ---: |"]
    for key in ("tx64_mpps", "tx1500_mpps", "rx64_mpps", "rx1500_mpps"):
        v, d = _median(rows, key, "vhostsplice"), _median(rows, key, "dpdk")
        f, goal = _median(rows, key, same), FLOOR_GOAL.get(key)
        met = "" if goal is None or v is None or not f else ("yes" if v / f >= goal else "**no**")
        out.append(f"| {key.replace('_mpps', '')} | {_fmt(v, 'Mpps')} | {_fmt(d, 'Mpps')} | "
                   + " | ".join(_fmt(_median(rows, key, c), "Mpps") for c in floors)
                   + f" | {_ratio(v, d)} | {_ratio(v, f)} | {'>= %.2f (1.15x)' % goal if goal else ''} | {met} | "
                   f"{_ratio(d, _median(rows, key, plain))} |")
    out += ["", f"The floor (benchmarks/tap_floor.c, compiled at run time) attaches a queue of the same tap with the "
            "same flags as the worker (IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE, IFF_VNET_HDR and TUNSETVNETHDRSZ 12 "
            "for a vnet-hdr column, TUNSETOFFLOAD 0) on the back-end's CPU and does one readv (RX, into 256 "
            "buffers of 2 KiB used in turn) or writev (TX, a testpmd-txonly-like IPv4/UDP frame) per frame; "
            f"io_uring columns submit {tap_floor.URING_BATCH} READV (RWF_NOWAIT) or WRITEV per io_uring_enter. "
            "Same sender, same drain, same counters as the back-ends' samples; no front-end runs.", ""]
    return out


def _layout_table(results: dict, rows: dict) -> list[str]:
    """Packet rates per ring layout (testpmd virtio-user packed_vq=1 for packed), both back-ends."""
    layouts = []
    for c in results.get("columns") or list(results["samples"]):
        if (column_of(c).layout not in layouts and column_of(c).busy_poll is None
                and not column_of(c).variant):
            layouts.append(column_of(c).layout)
    if layouts == ["split"]:
        return []
    out = ["## Ring layouts: split (the default front-end) and packed (`packed_vq=1`) (medians)", "",
           "| figure | layout | vhostsplice | DPDK | vhostsplice / DPDK | vhostsplice packed / split |"
           " DPDK packed / split |", "| --- | --- |" + " ---: |" * 5]
    for fig, unit in (("tx64_mpps", "Mpps"), ("tx1500_mpps", "Mpps"), ("rx64_mpps", "Mpps"),
                      ("rx1500_mpps", "Mpps"), ("latency_p50_us", "us")):
        for layout in layouts:
            name = {b: b if layout == "split" else f"{b} {layout}" for b in BACKENDS}
            v, d = (_median(rows, fig, name[b]) for b in BACKENDS)
            if v is None and d is None:
                continue
            vs, ds = (_median(rows, fig, b) for b in BACKENDS)
            same = layout == "split"
            out.append(f"| {fig.replace('_mpps', '').replace('_us', '')} ({unit}) | {layout} | {_fmt(v, unit)} | "
                       f"{_fmt(d, unit)} | {_ratio(v, d)} | {'' if same else _ratio(v, vs)} | "
                       f"{'' if same else _ratio(d, ds)} |")
    out += ["", "Every sample checks the layout its rings ran (VIRTIO_F_RING_PACKED in the features acked: the "
            "worker's counters, DPDK's `negotiated Virtio features` log line) and fails if it is not its column's.",
            ""]
    return out


def plot(results: dict, rows: dict, path: Path) -> str | None:
    """Four panels: packet rates, ping RTT, footprint (log scale), and each goal's ratio or value."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed (pip install matplotlib): no plot"
    panels = [("Packet rate (Mpps, higher is better)", False,
               [("tx64_mpps", "TX 64"), ("tx1500_mpps", "TX 1500"), ("rx64_mpps", "RX 64"),
                ("rx1500_mpps", "RX 1500")]),
              ("ping RTT (us, lower is better)", False,
               [("latency_min_us", "min"), ("latency_p50_us", "p50"), ("latency_avg_us", "avg"),
                ("latency_p99_us", "p99")]),
              ("Footprint (log scale, lower is better)", True,
               [("rss_idle_mib", "RSS idle\n(MiB)"), ("rss_idle_anon_mib", "RssAnon\n(MiB)"),
                ("idle_cpu_percent", "idle CPU\n(%)"), ("startup_ms", "start-up\n(ms)")])]
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.8), gridspec_kw={"width_ratios": [4, 4, 4, 3.2]})
    colors = {"vhostsplice": "#1f77b4", "dpdk": "#d62728"}
    for ax, (title, log, items) in zip(axes, panels):
        floor = 0.01 if log else 0.0            # a 0 on a log axis: drawn at the floor, labelled 0
        for i, b in enumerate(BACKENDS):
            xs, ys, lo, hi, labels = [], [], [], [], []
            for j, (key, _label) in enumerate(items):
                r = rows.get(key, {}).get(b, {})
                if r.get("median") is None:
                    continue
                med = max(r["median"], floor)
                xs.append(j + (i - 0.5) * 0.38)
                ys.append(med)
                lo.append(max(0.0, med - max(r["min"], floor)))
                hi.append(max(0.0, max(r["max"], floor) - med))
                labels.append(_fmt(r["median"]))
            ax.bar(xs, ys, width=0.38, color=colors[b], label=b, yerr=[lo, hi], capsize=3)
            for x, y, text in zip(xs, ys, labels):
                ax.annotate(text, (x, y), ha="center", va="bottom", fontsize=7, xytext=(0, 2),
                            textcoords="offset points")
        if log:
            ax.set_yscale("log")
        ax.set_xticks(range(len(items)))
        ax.set_xticklabels([label for _k, label in items])
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    _plot_goals(axes[3], rows)
    f = results["facts"]
    n = max((rows[k][b]["n"] for k in rows if k.endswith("_mpps") for b in BACKENDS), default=0)
    fig.suptitle(f"vhostsplice vs DPDK net_vhost+net_tap, testpmd virtio-user front-end; medians of up to {n} "
                 f"samples, bars min..max - {f['cpu']}, {f['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def _plot_goals(ax, rows: dict) -> None:
    """Horizontal bars: vhostsplice / DPDK for ratio goals (with the goal line), value/limit for absolute ones."""
    labels, values, oks = [], [], []
    for key, label, unit, kind, target in GOALS:
        r = rows.get(key)
        if not kind or not r or r["vhostsplice"]["median"] is None:
            continue
        v, d = r["vhostsplice"]["median"], r["dpdk"]["median"]
        if kind == "ratio>=" and d:
            value, ok = v / d / target, v / d >= target
        elif kind == "ratio<=" and d:
            value, ok = v / d / target, v / d <= target
        elif kind == "abs<":
            value, ok = v / target, v < target
        else:
            continue
        labels.append(label.split(" (")[0].replace("RSS, idle and connected", "RSS idle")
                      .replace("CPU while idle", "idle CPU"))
        values.append(value)
        oks.append(ok)
    ys = range(len(values))
    ax.barh(list(ys), values, color=["#2ca02c" if ok else "#ff7f0e" for ok in oks])
    ax.axvline(1.0, color="k", lw=1)
    for y, val in zip(ys, values):
        ax.annotate(f"{val:.2f}", (val, y), va="center", fontsize=7, xytext=(3, 0), textcoords="offset points")
    ax.set_yticks(list(ys))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_title("vs goal (1.0 = at the goal; green = met)", fontsize=10)
    ax.set_xlabel("rate: (vs/DPDK)/goal ; latency, RSS, CPU: value/limit", fontsize=7)
    ax.grid(axis="x", alpha=0.3)


# ------------------------------------------------------------------------------------------ main

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one sample each, shorter windows (~2-3 min)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for md/json/png")
    p.add_argument("--repeat", type=int, help="samples per figure and back-end (default 3, quick 1)")
    p.add_argument("--window", type=float, help="TX measuring window, s (default 3, quick 1.5)")
    p.add_argument("--warmup", type=float, default=1.0, help="traffic before a TX window starts, s")
    p.add_argument("--idle", type=float, default=5.0, help="idle CPU window, s")
    p.add_argument("--pings", type=int, help="pings per latency sample (default 400, quick 150)")
    p.add_argument("--ping-interval", type=float, default=0.005, metavar="S",
                   help="seconds between pings (ping -i; default 0.005): the gap a busy-poll window must span")
    p.add_argument("--ping-cpu", type=int, choices=(FE_CPU, BE_CPU), metavar="CPU",
                   help="run ping on this CPU (default: where the scheduler puts it; %d: the front-end's, %d: "
                        "the back-end's)" % (FE_CPU, BE_CPU))
    p.add_argument("--rx-frames", type=int, help="backlog for RX 64 B (1500 B: half) (default 500000, "
                                                  "quick 250000)")
    p.add_argument("--rx-sender", choices=("backlog", "live"), default="backlog",
                   help="RX method: drain a backlog (default) or a live testpmd net_af_packet sender "
                        "sharing CPU %d with the front-end" % FE_CPU)
    p.add_argument("--figures", default=",".join(FIGURES), help="subset, comma-separated: " + ",".join(FIGURES))
    p.add_argument("--quiet", type=float, default=0.2,
                   help="before each sample wait until other processes use less than this many CPUs "
                        "(0: never wait)")
    p.add_argument("--quiet-wait", type=float, help="longest wait per sample, s (default 20, quick 8)")
    p.add_argument("--quiet-budget", type=float, help="longest time spent waiting for quiet and taking noisy "
                                                      "samples again, s (default 200, quick 40)")
    p.add_argument("--noisy", type=float, default=0.25,
                   help="a sample during which other processes used more CPUs than this is taken again "
                        "(within the wait budget), the noisy one kept in the JSON but left out of medians")
    p.add_argument("--min-share", type=float, default=0.85,
                   help="a rate sample whose front-end or busy-polling back-end (DPDK) got less than this "
                        "share of a CPU is taken again like a noisy one (both run flat out in a clean sample; "
                        "a vhostsplice worker sleeps once it has caught up, so its share is not judged)")
    p.add_argument("--retries", type=int, default=2, help="noisy samples taken again at most this often")
    p.add_argument("--no-perf", dest="perf", action="store_false", help="skip the perf stat windows")
    p.add_argument("--tree", metavar="DIR",
                   help="measure the vhostsplice of this source tree (its core built in place: git archive HEAD | "
                        "tar -x -C DIR; cd DIR; python3 setup.py build_ext --inplace) instead of the installed "
                        "package (pip install .), which is the default")
    p.add_argument("--no-offloads", action="store_true",
                   help="run the vhostsplice worker with --no-offloads: its tap then carries no vnet header, "
                        "as DPDK's net_tap's does not (testpmd's virtio-user acks no offload either way)")
    p.add_argument("--worker-arg", action="append", default=[], metavar="ARG",
                   help="one more `vhostsplice run` argument (repeatable), e.g. --worker-arg=--sandbox=off; "
                        "compare the vhostsplice/DPDK ratios of two runs, each against its own DPDK samples")
    p.add_argument("--busy-poll", default="", metavar="USEC,...",
                   help="a vhostsplice column per value, `run --busy-poll USEC` (0: polling off; the default "
                        "worker, --busy-poll auto, is always measured), e.g. 0,50,200 with --figures "
                        "latency,idle; a table of ping RTT and CPU")
    p.add_argument("--layouts", default="split", metavar="LAYOUT,...",
                   help="ring layouts the front-end asks for: split (default, the headline), packed (testpmd "
                        "virtio-user packed_vq=1, against both back-ends; in_order=1 on both, virtio-user's "
                        "default); a table of layouts")
    p.add_argument("--floor", nargs="?", const="same", default="", metavar="VARIANT,...",
                   help="add the raw tap floor (benchmarks/tap_floor.c, compiled now) as columns: same (the "
                        "default value: the worker's header), vnet (12-byte header), plain (no header), uring, "
                        f"uring-plain (io_uring, {tap_floor.URING_BATCH} reads or writes per enter); packet rates "
                        "only; a table of vhostsplice / floor")
    p.add_argument("--variant", action="append", default=[], metavar="OPTIONS",
                   help="a vhostsplice column whose worker runs with these options added to the default ones, "
                        "measured in the same run beside the default worker (repeatable), e.g. "
                        "--variant=--sandbox=off --variant=--host-io=plain; a table of each against the default "
                        "and DPDK")
    p.add_argument("--combine", nargs="+", metavar="JSON",
                   help="run nothing: medians over the samples of these earlier dpdk_bench.json files")
    p.add_argument("--workdir", help="where logs go (default /tmp/vsbench-PID, deleted unless --keep)")
    p.add_argument("--keep", action="store_true", help="keep the logs of every process")
    args = p.parse_args(argv)
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.window = args.window or (1.5 if args.quick else 3.0)
    args.pings = args.pings or (150 if args.quick else 400)
    args.rx_frames = args.rx_frames or (250000 if args.quick else 500000)
    args.quiet_wait = args.quiet_wait if args.quiet_wait is not None else (8.0 if args.quick else 20.0)
    args.quiet_budget = args.quiet_budget if args.quiet_budget is not None else (40.0 if args.quick else 200.0)
    args.figures = [f.strip() for f in args.figures.split(",") if f.strip()]
    bad = set(args.figures) - set(FIGURES)
    if bad:
        p.error(f"unknown figure(s) {sorted(bad)}")
    try:
        busy = sorted({int(v) for v in args.busy_poll.split(",") if v.strip()})
    except ValueError:
        p.error(f"--busy-poll {args.busy_poll}: comma-separated microseconds")
    layouts = [v.strip() for v in args.layouts.split(",") if v.strip()]
    if set(layouts) - set(FRONT_END_LAYOUTS) or "split" not in layouts:
        p.error(f"--layouts {args.layouts}: split (always measured) and packed")
    try:
        floors = tap_floor.parse(args.floor, args.no_offloads)
    except ValueError as exc:
        p.error(f"--floor {args.floor}: {exc}")
    for v in args.variant:
        try:
            opts = shlex.split(v)
        except ValueError as exc:
            p.error(f"--variant {v!r}: {exc}")
        if not opts or not opts[0].startswith("-"):
            p.error(f"--variant {v!r}: worker options, e.g. --variant=--sandbox=off")
    args.columns = columns(busy, layouts, floors, list(dict.fromkeys(args.variant)))
    return args


READING = ("<!-- reading: kept when the file is written again -->", "<!-- /reading -->")


def _kept_reading(md_path: Path) -> str:
    """A hand-written block between the READING markers of an earlier md, so a rerun keeps it."""
    try:
        text = md_path.read_text()
    except FileNotFoundError:
        return ""
    a, b = text.find(READING[0]), text.find(READING[1])
    return "\n" + text[a:b + len(READING[1])] + "\n" if 0 <= a < b else ""


def _combined_column(name: str, settings: dict) -> str:
    """A run's column as a combined result names it: the default worker of a run made before `--busy-poll
    auto` was the default (its settings lack default_busy_poll) ran with polling off, `busy-poll 0`."""
    if name == "vhostsplice" and "default_busy_poll" not in settings:
        return "vhostsplice busy-poll 0"
    return name


def combine(paths: list[str]) -> dict:
    """Samples of several runs (their JSON files) as one result; facts from the first run. PATH:FIG,FIG
    takes only those figures from that file (say, a run whose RX method was since fixed)."""
    parts, only = [], []
    for spec in paths:
        path, _, figs = spec.partition(":")
        parts.append(json.loads(Path(path).read_text()))
        only.append(set(figs.split(",")) if figs else None)
    out = {"facts": parts[0]["facts"], "settings": parts[0]["settings"],
           "command": " ".join(["python3", "benchmarks/dpdk_bench.py", *sys.argv[1:]]),
           "elapsed_s": round(sum(p["elapsed_s"] for p in parts), 1), "runs": [],
           "columns": [], "samples": {}}
    for i, p in enumerate(parts):
        for r in p.get("runs") or [{"command": p["command"], "elapsed_s": p["elapsed_s"],
                                    "date": p["facts"]["date"], "loadavg_at_start": p["facts"]["loadavg_at_start"],
                                    "vhostsplice": p["facts"]["vhostsplice"], "settings": p["settings"]}]:
            out["runs"].append(dict(r, used=sorted(only[i]) if only[i] else "all"))
        for b in p.get("columns") or list(p["samples"]):
            ours = _combined_column(b, p["settings"])
            if ours not in out["columns"]:
                out["columns"].append(ours)
            for fig, ds in p["samples"][b].items():
                if only[i] is not None and fig not in only[i]:
                    continue
                out["samples"].setdefault(ours, {}).setdefault(fig, []).extend(dict(d, run=d.get("run", i))
                                                                           for d in ds)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_fill"]:
        return fill_main(argv[1], int(argv[2]), int(argv[3]))
    args = parse_args(argv)
    global WORKER_OPTS
    measured.use_tree(args.tree)
    WORKER_OPTS = (["--no-offloads"] if args.no_offloads else []) + args.worker_arg
    if args.combine:
        pass
    elif os.geteuid() != 0:
        sys.exit("needs root: ip netns, /dev/net/tun, AF_PACKET")
    elif not T.available():
        sys.exit(f"{T.TESTPMD} not found: apt-get install dpdk dpdk-dev")
    elif os.cpu_count() < 2 or not {FE_CPU, BE_CPU} <= os.sched_getaffinity(0):
        sys.exit(f"needs CPUs {FE_CPU} and {BE_CPU}")
    else:
        measured.preflight()
        if any(c.backend == "floor" for c in args.columns):
            try:
                Floor.program = tap_floor.build()
            except RuntimeError as exc:
                sys.exit(f"stopping before the first sample: {exc}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = combine(args.combine) if args.combine else run(args)
    rows = summarize(results)
    results["summary"] = rows
    (out / "dpdk_bench.json").write_text(json.dumps(results, indent=1) + "\n")
    md = markdown(results, rows)
    note = plot(results, rows, out / "dpdk_bench.png")
    md += f"\n({note})\n" if note else "\n![plot](dpdk_bench.png)\n"
    md += _kept_reading(out / "dpdk_bench.md")
    (out / "dpdk_bench.md").write_text(md)
    print(md)
    print(f"wrote {out / 'dpdk_bench.md'}, {out / 'dpdk_bench.json'}" + ("" if note else f", {out / 'dpdk_bench.png'}"))
    empty = figures_without_samples(results, rows)
    if empty:
        print(f"FAILED: no sample for {', '.join(empty)} (the logs: --keep --workdir DIR)", file=sys.stderr)
        return 1
    return 0


HEADLINE = {"tx64": "tx64_mpps", "tx1500": "tx1500_mpps", "rx64": "rx64_mpps", "rx1500": "rx1500_mpps",
            "latency": "latency_p50_us", "idle": "idle_cpu_percent"}


def figures_without_samples(results: dict, rows: dict) -> list[str]:
    """'FIGURE (BACKEND)' for every figure the run asked for whose headline row got no usable sample."""
    return [f"{f} ({b})" for b, figs in results["samples"].items() for f in FIGURES
            if f in figs and not rows[HEADLINE[f]][b]["n"]]


if __name__ == "__main__":
    sys.exit(main())
