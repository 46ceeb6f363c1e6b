#!/usr/bin/env python3
"""Guest throughput: iperf3 inside a real Linux guest (QEMU, TCG) over three virtio-net back-ends.

    python3 benchmarks/guest_bench.py --compare --quick     # the three-way run in ~3 min (2 s tests, 1 boot)
    python3 benchmarks/guest_bench.py --compare             # the figures of benchmarks/results (~10 min)
    python3 benchmarks/guest_bench.py                       # vhostsplice only: TCP each way, one boot
    python3 benchmarks/guest_bench.py --backends qemu,vhostsplice --udp --repeat 3 --json out.json
    python3 benchmarks/guest_bench.py --device-opts mrg_rxbuf=off --worker-arg=--no-offloads
    python3 benchmarks/guest_bench.py --report benchmarks/results/guest_bench.json   # redraw .md/.png only

Run as root from the repository root; hold `flock /tmp/vs-heavy.lock` on a shared machine.

Back-ends (the same guest image, tap name and addresses; a fresh private netns per boot):
  qemu         QEMU's built-in virtio-net on a tap (`-netdev tap,vhost=off`; /dev/vhost-net is absent here)
  dpdk         DPDK testpmd as the vhost-user back-end: net_vhost0 (iface=SOCK, queues=1) bridged to
               net_tap0 (iface=the tap) in --forward-mode=io, forwarding lcore pinned (--dpdk-lcores)
  vhostsplice  `vhostsplice run --socket-path SOCK --tap TAP` (the installed package)
The guest's iperf3 client runs against `iperf3 -s` on the tap in the host's netns: TCP guest->host
(tx) and host->guest (rx, -R), single stream, receiver's Gbit/s; with --udp, UDP at each --udp-sizes
payload (-u -l N -b --udp-rate) both ways, as the RECEIVER's packets per second (iperf3 sum_received:
packets - lost_packets over its seconds).

--compare (alias --three-way) runs all three back-ends with UDP, --repeat times each (default 3),
interleaved (the order rotates every round), and writes to --out (default benchmarks/results):
NAME.md (medians, min-max, ratios vhostsplice/QEMU and vhostsplice/DPDK, CPU use, UDP packet funnel),
NAME.json (every boot: iperf3 figures, per-test CPU, tap/guest/back-end counters) and NAME.png
(needs matplotlib). NAME is --name (default guest_bench). A hand-written "## Reading" section at the
end of an existing NAME.md is kept when the file is rewritten. --quick = --seconds 2 --repeat 1 --pause 0.5.

Measured per test on the host, over the time the iperf3 server holds the data stream: CPU seconds per
second of the back-end process (worker or testpmd), QEMU's vCPU thread ("CPU 0/TCG": QEMU runs with
-name debug-threads=on), QEMU's other threads (where its own virtio-net runs), the iperf3 server, and
the rest of the machine (it is shared); the tap's kernel counters; the worker's counters (SIGUSR1 ->
stats file) or testpmd's live port counters. In the guest: eth0 and UDP counters around each test.
Needs qemu-system-x86, iperf3 (apt-get install $(tests/guest/build.sh --deps)) and, for dpdk,
dpdk-testpmd (apt-get install dpdk dpdk-dev). The single TCG vCPU is the bottleneck on a small machine:
compare the columns of one run, do not quote absolutes.

Exit status: 0 every boot and test ran; 3 some failed (listed, and in NAME.md under "Failures"; the
other figures are still written); 1 not root or a tool is missing; 2 a usage error.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The installed vhostsplice (pip install .), never the checkout's uncompiled sources; its worker is
# started from the same place (vhostsplice.serve.selfexec).
import measured  # noqa: E402  (puts tests/ on sys.path; preflight)
from measured import ROOT  # noqa: E402
from support import guest as G  # noqa: E402
from support import testpmd as T  # noqa: E402
from support.peers import COLUMNS  # noqa: E402
from vhostsplice.testing.harness import live_stats  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
BACKENDS = {
    "qemu": "QEMU virtio-net + tap",
    "dpdk": "DPDK net_vhost + net_tap",
    "vhostsplice": "vhostsplice",
}
COLORS = {"qemu": "#8c8c8c", "dpdk": "#e08a2c", "vhostsplice": "#2a6fb0"}
DIRS = {"tx": "guest->host", "rx": "host->guest"}
NAMED = ("-name", "bench,debug-threads=on")    # QEMU names its threads: "CPU 0/TCG" is the vCPU


# -- tests ------------------------------------------------------------------------------------------------
def tests_for(seconds: int, udp_sizes: list[int], udp_rate: str) -> list[dict]:
    """Each test: name, kind (tcp|udp), direction (tx|rx), payload size, iperf3 client arguments."""
    out = []
    for d in ("tx", "rx"):
        out.append({"name": f"tcp_{d}", "kind": "tcp", "dir": d, "size": None,
                    "args": f"-t {seconds}" + (" -R" if d == "rx" else "")})
    for size in udp_sizes:
        for d in ("tx", "rx"):
            out.append({"name": f"udp{size}_{d}", "kind": "udp", "dir": d, "size": size,
                        "args": f"-t {seconds} -u -l {size} -b {udp_rate}" + (" -R" if d == "rx" else "")})
    return out


def guest_script(tests: list[dict], pause: float) -> str:
    """The guest's test script: per test, counters, TS marker, iperf3, TE marker, counters."""
    lines = ["vs_ping warmup 3", "vs_mark BENCH-START"]
    for t in tests:
        n = t["name"]
        lines += [f"sleep {pause}", f"vs_check ga_{n} cat /proc/net/dev /proc/net/snmp", f"vs_mark TS {n}",
                  f"vs_iperf {n} {t['args']}", f"vs_mark TE {n}", f"vs_check gb_{n} cat /proc/net/dev /proc/net/snmp"]
    lines.append("vs_mark BENCH-END")
    return "\n".join(lines) + "\n"


# -- host-side probes -------------------------------------------------------------------------------------
def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """user + system CPU time of one process (all threads) or one of its threads."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / TICK


def qemu_threads(pid: int) -> dict[str, float]:
    """QEMU's CPU seconds split: the TCG vCPU thread(s) (named "CPU n/TCG": QEMU runs with
    -name debug-threads=on), the main loop thread, and the rest (the process total minus those two, so
    threads that came and went still count)."""
    total = cpu_seconds(pid)
    vcpu = main = 0.0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        tids = []
    for tid in tids:
        try:
            comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        except FileNotFoundError:
            continue
        if int(tid) == pid:
            main += cpu_seconds(pid, int(tid))
        elif comm.startswith("CPU "):
            vcpu += cpu_seconds(pid, int(tid))
    return {"vcpu": vcpu, "main": main, "other": total - vcpu - main}


def machine_cpu() -> dict[str, float]:
    """Machine-wide CPU seconds from /proc/stat: user+nice+system, irq+softirq, steal."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return {"task": (f[0] + f[1] + f[2]) / TICK, "irq": (f[5] + f[6]) / TICK, "steal": f[7] / TICK}


def worker_stats_now(worker, timeout: float = 2.0) -> dict | None:
    """The running worker's counters (SIGUSR1 makes it rewrite its --stats-file), or None."""
    return live_stats(worker.proc, worker.stats_file, timeout)


_NIC_BLOCK = re.compile(r"NIC statistics for port (\d+)[^\n]*\n\s*RX-packets:\s*(\d+)\s+RX-missed:\s*(\d+)"
                        r"(?:.*\n)*?\s*TX-packets:\s*(\d+)\s+TX-errors:\s*(\d+)")


def testpmd_live(pmd) -> dict:
    """testpmd's latest --stats-period counters per port (1 s resolution)."""
    out = {}
    for m in _NIC_BLOCK.finditer(pmd.text()):
        out[f"port{m[1]}"] = {"rx_packets": int(m[2]), "rx_missed": int(m[3]), "tx_packets": int(m[4]),
                              "tx_errors": int(m[5])}
    return out


def _ring_delta(a: dict, b: dict) -> dict:
    keys = ("packets", "bytes", "chains", "batches", "kicks", "notify_sent", "notify_suppressed", "rx_starved",
            "drops_hostfd", "drops_oversize", "drops_fault", "drops_bad_desc", "drops_short")
    return {k: b[k] - a[k] for k in keys if k in a and k in b}


def delta(a, b):
    """b - a for nested dicts of numbers (keys present in both)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: delta(a[k], b[k]) for k in a if k in b and delta(a[k], b[k]) is not None}
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return b - a
    return None


def parse_guest_counters(text: str) -> dict:
    """eth0 line of /proc/net/dev and the Udp: lines of /proc/net/snmp (as printed by cat)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("eth0:"):
            v = [int(x) for x in line.split(":", 1)[1].split()]
            out["eth0"] = {"rx_bytes": v[0], "rx_packets": v[1], "rx_errs": v[2], "rx_drop": v[3],
                           "tx_bytes": v[8], "tx_packets": v[9], "tx_errs": v[10], "tx_drop": v[11]}
    udp = [line.split()[1:] for line in text.splitlines() if line.startswith("Udp:")]
    if len(udp) >= 2:
        out["udp"] = {k: int(v) for k, v in zip(udp[0], udp[1])}
    return out


class Probe:
    """Snapshots of everything measured around one test (host side)."""

    def __init__(self, net, guest, *, worker=None, pmd=None, iperf_server=None):
        self.net, self.guest, self.worker, self.pmd, self.iperf_server = net, guest, worker, pmd, iperf_server

    def snap(self) -> dict:
        s = {"t": time.monotonic(), "machine": machine_cpu(), "self": cpu_seconds(os.getpid()),
             "qemu": qemu_threads(self.guest.proc.pid),
             "iperf3_server": cpu_seconds(self.iperf_server.pid) if self.iperf_server else 0.0}
        if self.worker is not None:
            s["backend"] = cpu_seconds(self.worker.proc.pid)
            st = worker_stats_now(self.worker)
            s["worker"] = st["rings"] if st else None
            s["wakeups"] = st.get("wakeups") if st else None
        elif self.pmd is not None:
            s["backend"] = cpu_seconds(self.pmd.proc.pid)
            s["testpmd"] = testpmd_live(self.pmd)
        else:
            s["backend"] = 0.0
        try:
            s["tap"] = self.net.tap_counters()
        except AssertionError:
            s["tap"] = None
        return s

    @staticmethod
    def window(a: dict, b: dict) -> dict:
        wall = b["t"] - a["t"]
        per_s = lambda x: round(x / wall, 3)  # noqa: E731
        q = {k: per_s(b["qemu"][k] - a["qemu"][k]) for k in a["qemu"]}
        ours = (b["backend"] - a["backend"]) + sum(b["qemu"][k] - a["qemu"][k] for k in a["qemu"]) \
            + (b["iperf3_server"] - a["iperf3_server"]) + (b["self"] - a["self"])
        m = {k: b["machine"][k] - a["machine"][k] for k in a["machine"]}
        out = {"wall_s": round(wall, 3),
               "cpu": {"backend": per_s(b["backend"] - a["backend"]), "qemu_vcpu": q["vcpu"],
                       "qemu_main": q["main"], "qemu_other": q["other"],
                       "iperf3_server": per_s(b["iperf3_server"] - a["iperf3_server"]),
                       "bench": per_s(b["self"] - a["self"]),
                       "machine_task": per_s(m["task"]), "others": per_s(max(0.0, m["task"] - ours)),
                       "irq_softirq": per_s(m["irq"]), "steal": per_s(m["steal"])}}
        if a.get("tap") and b.get("tap"):
            out["tap"] = delta(a["tap"], b["tap"])
        if a.get("worker") and b.get("worker"):
            out["worker"] = {r: _ring_delta(a["worker"][r], b["worker"][r]) for r in ("rx", "tx")}
            if a.get("wakeups") is not None and b.get("wakeups") is not None:
                out["worker"]["wakeups"] = b["wakeups"] - a["wakeups"]
        if a.get("testpmd") and b.get("testpmd"):
            out["testpmd_live"] = delta(a["testpmd"], b["testpmd"])
        return out


# -- test boundaries as the host's iperf3 server sees them -------------------------------------------------
# The guest's own markers (vs_mark on the serial console) are late by seconds while a host->guest flood
# keeps its vCPU busy in softirq, and the server's text log is no better: sending UDP at full speed,
# iperf3 writes its "connected to" line only when the test is over. So each test's window is taken from
# the server's open sockets (/proc/PID/fd, polled every 5 ms): between tests it holds its listening
# socket (and, while the next client negotiates, the control connection); while a test's data stream
# exists it holds three or more (listener, control, data; UDP adds a second listener).
IN_TEST_SOCKETS = 3


def open_sockets(pid: int) -> int:
    """How many sockets process PID holds (-1 once it is gone)."""
    n = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
            except FileNotFoundError:
                pass
    except (FileNotFoundError, ProcessLookupError):
        return -1
    return n


def start_iperf3_server(net, workdir: Path):
    """`iperf3 -s` on the tap's address inside the netns (log in WORKDIR); returns the process."""
    with open(workdir / "iperf3-server.log", "wb") as f:
        proc = net.popen(["iperf3", "-s", "-B", net.host_ip], stdin=subprocess.DEVNULL, stdout=f,
                         stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and ":5201 " not in net.run(["ss", "-Htln"], check=False).stdout:
        time.sleep(0.05)
    return proc


def wait_data_stream(server_pid: int, guest, present: bool, test_index: int, timeout: float) -> bool:
    """Until the server holds a data stream (present) or no longer does: True. False when the guest
    says test `test_index` ended (its TE marker) and 2 s passed without it (that iperf3 run failed),
    when QEMU or the server exited, or after TIMEOUT."""
    deadline, gave_up, polls = time.monotonic() + timeout, None, 0
    while True:
        n = open_sockets(server_pid)
        if n < 0:
            return False
        if (n >= IN_TEST_SOCKETS) == present:
            return True
        polls += 1
        if present and polls % 20 == 0 and gave_up is None \
                and sum(1 for m, _ in guest.markers() if m == "TE") > test_index:
            gave_up = time.monotonic() + 2
        if (gave_up and time.monotonic() > gave_up) or time.monotonic() > deadline \
                or (polls % 20 == 0 and not guest.running()):
            return False
        time.sleep(0.005)


# -- one boot ---------------------------------------------------------------------------------------------
def iperf_figures(doc: dict, kind: str) -> dict:
    """Receiver-side figures of one iperf3 -J document: Gbit/s, and for UDP packets per second."""
    end = doc.get("end", {})
    out = {"error": doc.get("error")}
    rcv, snt = end.get("sum_received", {}), end.get("sum_sent", {})
    cpu = end.get("cpu_utilization_percent", {})
    out["client_cpu_pct"] = cpu.get("host_total")       # the guest side (iperf3 -c runs in the guest)
    out["server_cpu_pct"] = cpu.get("remote_total")
    if kind == "udp":
        rcv = rcv or end.get("sum", {})
        got = rcv.get("packets", 0) - rcv.get("lost_packets", 0)
        secs = rcv.get("seconds") or 1
        out.update(gbps=rcv.get("bits_per_second", 0) / 1e9, rx_packets=got, pps=got / secs,
                   tx_packets=snt.get("packets"), tx_pps=(snt.get("packets") or 0) / (snt.get("seconds") or 1),
                   lost_percent=rcv.get("lost_percent"), seconds=secs)
    else:
        out.update(gbps=rcv.get("bits_per_second", 0) / 1e9, bytes=rcv.get("bytes"),
                   retransmits=snt.get("retransmits"), seconds=rcv.get("seconds"))
    return out


def one_run(image, workdir: Path, *, backend: str, tests: list[dict], seconds: int, pause: float,
            device_opts: str, worker_args: list[str], worker_cpu: str | None, qemu_cpu: str | None,
            dpdk_lcores: str) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    text = guest_script(tests, pause)
    worker = pmd = None
    with G.HostNet(workdir, multi_queue=backend != "qemu") as net:
        try:
            if backend == "vhostsplice":
                extra = list(worker_args) + (["--cpu", worker_cpu] if worker_cpu else [])
                worker = net.start_worker(*extra)
                guest = G.Guest(image, worker.sock, workdir, text, device_opts=device_opts, qemu_extra=NAMED)
            elif backend == "dpdk":
                sock = workdir / "dpdk.sock"
                with net.ns.entered():
                    pmd = T.Testpmd([f"net_vhost0,iface={sock},queues=1", f"net_tap0,iface={net.tap}"],
                                    mode="io", log=workdir / "testpmd.log", lcores=dpdk_lcores, stats_period=1)
                pmd.wait_started(60)
                guest = G.Guest(image, sock, workdir, text, device_opts=device_opts, qemu_extra=NAMED)
            else:     # QEMU's built-in virtio-net back-end in its main loop, on the same kind of tap
                guest = G.Guest(image, "", workdir, text, device_opts=device_opts,
                                netdev=f"tap,id=n0,ifname={net.tap},script=no,downscript=no,vhost=off",
                                qemu_extra=NAMED)
            server = start_iperf3_server(net, workdir)
            t0 = time.monotonic()
            guest.start(net.ns if backend == "qemu" else None)
            with guest:
                if qemu_cpu:          # every thread QEMU has by now (vCPU included)
                    for tid in os.listdir(f"/proc/{guest.proc.pid}/task"):
                        os.sched_setaffinity(int(tid), parse_cpus(qemu_cpu))
                guest.wait_marker("BOOT", G.BOOT_TIMEOUT)
                boot = time.monotonic() - t0
                guest.wait_marker("BENCH-START", 120)
                probe = Probe(net, guest, worker=worker, pmd=pmd, iperf_server=server)
                windows = []
                for i, t in enumerate(tests):
                    if not wait_data_stream(server.pid, guest, True, i, seconds + 120):
                        windows.append(None)
                        continue
                    a = probe.snap()
                    wait_data_stream(server.pid, guest, False, i, seconds + 60)
                    win = Probe.window(a, probe.snap())
                    # a snapshot that took most of the test (a stalled SIGUSR1 answer) leaves no window
                    win["short"] = win["wall_s"] < 0.5 * seconds
                    windows.append(win)
                guest.wait_marker("BENCH-END", 120)
                rc = guest.wait_done(60)
                features = guest.features()
            final = {}
            if worker is not None:
                code, final = G.stop_worker(worker)
                final["exit_code"] = code
            if pmd is not None:
                final = stop_testpmd(pmd)
        finally:
            if pmd is not None:
                pmd.kill()
    out = {"backend": backend, "boot_s": round(boot, 2), "guest_rc": rc, "guest_features": G.feature_names(features),
           "backend_stats": final, "workdir": str(workdir), "tests": {}}
    for t, win in zip(tests, windows):
        n = t["name"]
        r = {"window": win}
        try:
            r.update(iperf_figures(guest.iperf(n), t["kind"]))
        except G.GuestError as exc:
            r["error"] = str(exc).splitlines()[0]
        ga, gb = parse_guest_counters(guest.section(f"ga_{n}")), parse_guest_counters(guest.section(f"gb_{n}"))
        r["guest"] = delta(ga, gb)
        out["tests"][n] = r
    return out


def stop_testpmd(pmd, grace: float = 5.0) -> dict:
    """SIGINT to our testpmd; its totals if it exits within GRACE seconds, else SIGKILL. After the guest
    has gone, testpmd 22.11 has taken 20-60 s to act on SIGINT here: the per-test figures come from its
    live counters, so its totals are a nicety not worth a minute per boot."""
    if pmd.proc.poll() is None:
        pmd.proc.send_signal(signal.SIGINT)
    try:
        code = pmd.proc.wait(grace)
    except subprocess.TimeoutExpired:
        pmd.kill()
        return {"exit_code": None, "stopped": f"SIGKILL after {grace:.0f} s (no exit on SIGINT)"}
    pmd.kill()         # closes its stdin and log, removes its runtime directory
    totals = T.parse_totals(pmd.text())
    return {"exit_code": code, "stopped": "SIGINT", "totals": {str(k): v.__dict__ for k, v in totals.items()}}


def parse_cpus(text: str) -> set[int]:
    cpus = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


# -- summary ----------------------------------------------------------------------------------------------
def value(r: dict, t: dict) -> float | None:
    """The headline figure of test t in run r: TCP Gbit/s or UDP receiver kpps."""
    x = r["tests"].get(t["name"], {})
    if x.get("error") or "gbps" not in x:
        return None
    return x["gbps"] if t["kind"] == "tcp" else x["pps"] / 1e3


def unit(t: dict) -> str:
    return "Gbit/s" if t["kind"] == "tcp" else "kpps"


def label(t: dict) -> str:
    what = "TCP" if t["kind"] == "tcp" else f"UDP {t['size']} B"
    return f"{what} {DIRS[t['dir']]}"


def stats_of(values: list[float]) -> dict | None:
    v = [x for x in values if x is not None]
    if not v:
        return None
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v), "all": v}


def summarize(results: list[dict], backends: list[str], tests: list[dict]) -> dict:
    out = {}
    for b in backends:
        rs = [r for r in results if r["backend"] == b and "tests" in r]
        out[b] = {t["name"]: stats_of([value(r, t) for r in rs]) for t in tests}
    return out


def fmt(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "n/a"
    return f"{x:.{digits}f}" if x < 100 else f"{x:.0f}"


def cell(s: dict | None) -> str:
    if s is None:
        return "n/a"
    if s["n"] == 1:
        return fmt(s["median"])
    return f"**{fmt(s['median'])}** ({fmt(s['min'])}-{fmt(s['max'])})"


def ratio(a: dict | None, b: dict | None) -> float | None:
    if not a or not b or not b["median"]:
        return None
    return a["median"] / b["median"]


def median_of(results, backend, test, path) -> float | None:
    """Median over the boots of one number at PATH in test TEST's results (short windows left out)."""
    vals = []
    for r in results:
        if r["backend"] != backend or test not in r.get("tests", {}):
            continue
        x = r["tests"][test]
        if path[0] == "window" and (not x.get("window") or x["window"].get("short")):
            continue
        for p in path:
            x = x.get(p) if isinstance(x, dict) else None
        if isinstance(x, (int, float)):
            vals.append(x)
    return statistics.median(vals) if vals else None


def machine_facts(qemu: str = "qemu-system-x86_64") -> dict:
    def first(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.splitlines()[0].strip()
        except (OSError, IndexError, subprocess.SubprocessError):
            return "?"
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    try:
        import vhostsplice
        vs_path = str(Path(vhostsplice.__file__).parent)
    except ImportError:
        vs_path = "?"
    commit = first(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return {"host_kernel": platform.release(), "cpu_model": cpu, "cpus": os.cpu_count(), "mem_gib": round(mem, 1),
            "os": first(["sh", "-c", ". /etc/os-release; echo $PRETTY_NAME"]),
            "qemu": first([qemu, "--version"]),
            "dpdk": first(["dpkg-query", "-W", "-f", "${Version}", "dpdk"]),
            "iperf3": first(["iperf3", "--version"]).split(" (")[0],
            "python": platform.python_version(), "vhostsplice_module": vs_path,
            "git": commit + (" (+ uncommitted changes)" if dirty else "")}


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def write_markdown(path: Path, doc: dict, tests: list[dict], backends: list[str], png: Path | None) -> str:
    """Write PATH from one run; a "## Reading" section (hand-written) of the old file is kept at the end."""
    res, summ, facts = doc["results"], doc["summary"], doc["machine"]
    L = []
    a = doc["args"]
    L.append(f"Command (as root, from the repository root): `{doc['command']}`  ")
    L.append(f"Run {doc['started']} .. {doc['finished']} ({doc['elapsed_s'] / 60:.1f} min): {a['repeat']} boot(s) "
             f"per back-end, interleaved; {a['seconds']} s per iperf3 run; UDP at `-b {a['udp_rate']}`. "
             f"Cells: **median** (min-max) over the boots.")
    L.append("")
    L.append(f"Machine: {facts['os']}, host kernel {facts['host_kernel']}, {facts['cpus']} x {facts['cpu_model']}, "
             f"{facts['mem_gib']} GiB; load average {doc['load_before']} before, {doc['load_after']} after; "
             f"{facts['qemu']}; DPDK {facts['dpdk']}; {facts['iperf3']}; guest kernel {doc['guest_kernel']} "
             f"(TCG, `-smp 1,maxcpus=2`); vhostsplice from {facts['vhostsplice_module']} (git {facts['git']}).")
    L.append("")
    hdr = "| test | " + " | ".join(BACKENDS[b] for b in backends)
    both = "qemu" in backends and "dpdk" in backends and "vhostsplice" in backends
    if both:
        hdr += " | vhostsplice / QEMU | vhostsplice / DPDK"
    L.append(hdr + " |")
    L.append("|" + " --- |" * (1 + len(backends) + (2 if both else 0)))
    for t in tests:
        row = f"| {label(t)} ({unit(t)}) | " + " | ".join(cell(summ[b][t["name"]]) for b in backends)
        if both:
            vs = summ["vhostsplice"][t["name"]]
            row += f" | {fmt(ratio(vs, summ['qemu'][t['name']]))}x | {fmt(ratio(vs, summ['dpdk'][t['name']]))}x"
        L.append(row + " |")
    L.append("")
    if both:
        L.append("Targets (TCP, medians):")
        L.append("")
        for t in [t for t in tests if t["kind"] == "tcp"]:
            vs = summ["vhostsplice"][t["name"]]
            rq, rd = ratio(vs, summ["qemu"][t["name"]]), ratio(vs, summ["dpdk"][t["name"]])
            ok_q = "met" if rq is not None and rq >= 1 else "NOT met"
            ok_d = "met" if rd is not None and rd >= 2 else "NOT met"
            L.append(f"- {label(t)}: vhostsplice >= QEMU: {fmt(rq)}x, {ok_q}; vhostsplice >= 2x DPDK: "
                     f"{fmt(rd)}x, {ok_d}.")
        L.append("")
    # CPU use
    L.append("Host CPU (CPU-seconds per second, medians over boots, while iperf3 ran): back-end process "
             "(worker / testpmd; QEMU's own virtio-net runs in QEMU's main loop) | QEMU vCPU thread | QEMU main "
             "loop + other threads | iperf3 server | other processes on the machine | steal.")
    L.append("")
    L.append("| test | " + " | ".join(BACKENDS[b] for b in backends) + " |")
    L.append("|" + " --- |" * (1 + len(backends)))
    for t in tests:
        cells = []
        for b in backends:
            g = lambda k: median_of(res, b, t["name"], ("window", "cpu", k))  # noqa: E731
            main = (g("qemu_main") or 0) + (g("qemu_other") or 0)
            cells.append(f"{fmt(g('backend'))} / {fmt(g('qemu_vcpu'))} / {fmt(main)} / {fmt(g('iperf3_server'))}"
                         f" / {fmt(g('others'))} / {fmt(g('steal'))}")
        L.append(f"| {label(t)} | " + " | ".join(cells) + " |")
    L.append("")
    # packet funnel for UDP
    L.append("UDP packet funnel (kpps, medians): sender app -> sender NIC -> receiver NIC -> receiver app. "
             "guest->host: guest iperf3 sent, guest eth0 tx, tap rx (what the back-end wrote), host iperf3 "
             "received. host->guest: host iperf3 sent, tap tx (what the back-end read; + tap tx_dropped: "
             "not read in time), guest eth0 rx, guest iperf3 received (+ guest UDP RcvbufErrors).")
    L.append("")
    L.append("| test | back-end | app sent | sender side | receiver side | app received | drops |")
    L.append("| --- | --- | --- | --- | --- | --- | --- |")
    for t in [t for t in tests if t["kind"] == "udp"]:
        for b in backends:
            m = lambda *p: median_of(res, b, t["name"], p)  # noqa: E731
            wall = m("window", "wall_s") or 1
            k = lambda x: None if x is None else x / wall / 1e3  # noqa: E731
            if t["dir"] == "tx":
                snd, rcv = k(m("guest", "eth0", "tx_packets")), k(m("window", "tap", "rx_packets"))
                drops = f"tap rx_dropped {fmt(k(m('window', 'tap', 'rx_dropped')))}"
            else:
                snd, rcv = k(m("window", "tap", "tx_packets")), k(m("guest", "eth0", "rx_packets"))
                drops = (f"tap tx_dropped {fmt(k(m('window', 'tap', 'tx_dropped')))}, guest RcvbufErrors "
                         f"{fmt(k(m('guest', 'udp', 'RcvbufErrors')))}")
            L.append(f"| {label(t)} | {BACKENDS[b]} | {fmt(m('tx_pps') and m('tx_pps') / 1e3)} | {fmt(snd)} | "
                     f"{fmt(rcv)} | {fmt(m('pps') and m('pps') / 1e3)} | {drops} |")
    L.append("")
    # back-end counters
    if "vhostsplice" in backends:
        L.append("vhostsplice worker counters per test (medians; from SIGUSR1 snapshots of its stats JSON): "
                 "packets/s per ring, chains per RX packet, packets per wake-up, guest kicks per TX packet, RX "
                 "starvations, calls sent.")
        L.append("")
        L.append("| test | tx pkts/s | rx pkts/s | rx chains/pkt | pkts/wake-up | tx kicks/pkt | rx_starved | "
                 "calls rx/tx | worker us/pkt |")
        L.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for t in tests:
            m = lambda *p: median_of(res, "vhostsplice", t["name"], ("window",) + p)  # noqa: E731
            wall = m("wall_s") or 1
            tx, rx = m("worker", "tx", "packets") or 0, m("worker", "rx", "packets") or 0
            ch, wk = m("worker", "rx", "chains") or 0, m("worker", "wakeups") or 0
            cpu = m("cpu", "backend")
            us = cpu * wall / (tx + rx) * 1e6 if cpu is not None and tx + rx else None
            L.append(f"| {label(t)} | {fmt(tx / wall / 1e3)}k | {fmt(rx / wall / 1e3)}k | "
                     f"{fmt(ch / rx if rx else None)} | {fmt((tx + rx) / wk if wk else None)} | "
                     f"{fmt((m('worker', 'tx', 'kicks') or 0) / tx if tx > 100 else None)} | "
                     f"{fmt(m('worker', 'rx', 'rx_starved'), 0)} | {fmt(m('worker', 'rx', 'notify_sent'), 0)}/"
                     f"{fmt(m('worker', 'tx', 'notify_sent'), 0)} | {fmt(us)} |")
        L.append("")
    feats = {b: next((r["guest_features"] for r in res if r["backend"] == b and "guest_features" in r), None)
             for b in backends}
    L.append("Virtio features the guest driver accepted: " + "; ".join(
        f"{BACKENDS[b]}: {' '.join(f for f in (feats[b] or []) if not f.startswith('other'))}" for b in backends))
    L.append("")
    fails = [r for r in res if r.get("failed")]
    fails += [dict(r, failed=f"{n}: {x['error']}") for r in res for n, x in r.get("tests", {}).items()
              if x.get("error")]
    if fails:
        L.append("Failures: " + "; ".join(f"{r['backend']} boot {r.get('round', 0) + 1}: {r['failed']}" for r in fails))
        L.append("")
    text = "\n".join(L) + "\n"
    head = "# Guest throughput: one Linux guest (QEMU TCG), three virtio-net back-ends\n\n"
    head += ("_Written by `benchmarks/guest_bench.py --compare` (or `--report` from its JSON); everything above "
             "\"## Reading\" is rewritten by the next run._\n\n")
    if png is not None:
        head += f"![guest throughput]({os.path.relpath(png, path.parent)})\n\n"
    keep = ""
    if path.exists():
        old = path.read_text()
        if (i := old.find("\n## Reading")) >= 0:
            keep = "\n" + old[i + 1:].rstrip("\n") + "\n"
    path.write_text(head + text + keep)
    return text


def plot(path: Path, doc: dict, tests: list[dict], backends: list[str]) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing (pip install matplotlib): no plot", file=sys.stderr)
        return False
    res, summ = doc["results"], doc["summary"]
    groups = [("TCP throughput", "Gbit/s", [t for t in tests if t["kind"] == "tcp"])]
    for size in sorted({t["size"] for t in tests if t["kind"] == "udp"}):
        groups.append((f"UDP {size} B payload: receiver's packet rate", "kpps",
                       [t for t in tests if t["kind"] == "udp" and t["size"] == size]))
    fig, axes = plt.subplots(1, len(groups) + 1, figsize=(4.6 * (len(groups) + 1), 5.2))
    width = 0.8 / len(backends)
    for ax, (title, ylabel, ts) in zip(axes, groups):
        for j, b in enumerate(backends):
            xs = [i + (j - (len(backends) - 1) / 2) * width for i in range(len(ts))]
            st = [summ[b][t["name"]] for t in ts]
            med = [s["median"] if s else 0 for s in st]
            lo = [s["median"] - s["min"] if s else 0 for s in st]
            hi = [s["max"] - s["median"] if s else 0 for s in st]
            ax.bar(xs, med, width * 0.92, color=COLORS[b], label=BACKENDS[b], yerr=[lo, hi], capsize=3,
                   error_kw={"elinewidth": 1, "ecolor": "#333333"})
            for x, s in zip(xs, st):
                if s:
                    ax.scatter([x] * len(s["all"]), s["all"], s=9, color="black", zorder=3)
                    ax.annotate(fmt(s["median"], 2 if s["median"] < 10 else 0), (x, s["max"]),
                                textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
        if "vhostsplice" in backends and "qemu" in backends and "dpdk" in backends:
            names = []
            for t in ts:
                vs = summ["vhostsplice"][t["name"]]
                names.append(f"{DIRS[t['dir']]}\n{fmt(ratio(vs, summ['qemu'][t['name']]))}x QEMU, "
                             f"{fmt(ratio(vs, summ['dpdk'][t['name']]))}x DPDK")
        else:
            names = [DIRS[t["dir"]] for t in ts]
        ax.set_xticks(range(len(ts)))
        ax.set_xticklabels(names, fontsize=9)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.1)
        ax.grid(axis="y", alpha=0.3)
    # CPU: medians over every test window, stacked
    ax = axes[-1]
    parts = [("backend", "back-end process", "/"), ("qemu_vcpu", "QEMU vCPU thread", ""),
             ("qemu_main+", "QEMU main loop + other threads", "."), ("iperf3_server", "iperf3 server", "x")]
    xs = range(len(backends))
    bottom = [0.0] * len(backends)
    for key, name, hatch in parts:
        vals = []
        for b in backends:
            ws = [x["window"]["cpu"] for r in res if r["backend"] == b for x in r.get("tests", {}).values()
                  if x.get("window") and not x["window"].get("short")]
            if key == "qemu_main+":
                v = [w["qemu_main"] + w["qemu_other"] for w in ws]
            else:
                v = [w[key] for w in ws]
            vals.append(statistics.median(v) if v else 0)
        ax.bar(xs, vals, 0.6, bottom=bottom, color=[COLORS[b] for b in backends], hatch=hatch,
               edgecolor="white", label=name)
        bottom = [x + y for x, y in zip(bottom, vals)]
    ax.axhline(os.cpu_count() or 2, color="#aa0000", lw=1, ls="--")
    ax.text(-0.4, (os.cpu_count() or 2) - 0.08, f"{os.cpu_count()} CPUs", color="#aa0000", fontsize=8, va="top")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([BACKENDS[b].replace(" + ", "\n+ ") for b in backends], fontsize=9)
    ax.set_ylabel("CPU-seconds per second")
    ax.set_title("Host CPU while iperf3 ran (median over tests)", fontsize=10)
    from matplotlib.patches import Patch
    ax.legend(handles=[Patch(facecolor="#cccccc", hatch=h, edgecolor="white", label=n) for _, n, h in parts],
              fontsize=7, loc="upper right")
    ax.set_ylim(0, (os.cpu_count() or 2) + 0.4)
    handles, names = axes[0].get_legend_handles_labels()      # one legend for the back-ends, above the panels
    fig.legend(handles, names, loc="upper center", ncol=len(backends), fontsize=9, frameon=False,
               bbox_to_anchor=(0.5, 0.905))
    f = doc["machine"]
    fig.suptitle(f"Same guest (Linux {doc['guest_kernel']}, QEMU TCG), three virtio-net back-ends; "
                 f"median of {doc['args']['repeat']} boot(s) each, bars min-max, dots = boots\n"
                 f"host {f['host_kernel']}, {f['cpus']} x {f['cpu_model']}, load {doc['load_before']} "
                 f"(shared machine); {doc['started']}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.87))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# -- main -------------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    g = ap.add_argument_group("what to run")
    g.add_argument("--compare", "--three-way", action="store_true",
                   help="qemu, dpdk and vhostsplice side by side, TCP and UDP; write --out/NAME.{md,json,png}")
    g.add_argument("--quick", action="store_true", help="short run: --seconds 2 --repeat 1 --pause 0.5")
    g.add_argument("--backends", help="comma-separated subset of qemu,dpdk,vhostsplice, in column order "
                   "(default: all three with --compare, else vhostsplice)")
    g.add_argument("--baseline", action="store_true", help="same as adding qemu to the back-ends")
    g.add_argument("--udp", action="store_true", help="also UDP both ways at each --udp-sizes (implied by --compare)")
    g = ap.add_argument_group("test shape")
    g.add_argument("--seconds", type=int, help="iperf3 duration of each test (default 5; 2 with --quick)")
    g.add_argument("--repeat", type=int, help="guest boots per back-end (default 3 with --compare, else 1)")
    g.add_argument("--pause", type=float, help="guest sleeps this long before each test (default 1)")
    g.add_argument("--udp-sizes", default="64,1400", help="UDP payload sizes, iperf3 -l (default 64,1400)")
    g.add_argument("--udp-rate", default="10G", help="iperf3 -b for UDP (default 10G: as fast as the sender goes)")
    g.add_argument("--device-opts", default="", help="extra virtio-net-pci properties, e.g. mrg_rxbuf=off")
    g.add_argument("--worker-arg", action="append", default=[], help="extra `vhostsplice run` argument (repeatable)")
    g.add_argument("--peer", default=COLUMNS[0].id, choices=[c.id for c in COLUMNS],
                   help="QEMU and guest kernel: a column of the test matrix, tests/support/peers.py (default "
                        f"{COLUMNS[0].id}, the system QEMU; the backports one is unpacked by tests/guest/qemu.sh)")
    g = ap.add_argument_group("placement")
    g.add_argument("--worker-cpu", help="pin the worker (vhostsplice run --cpu)")
    g.add_argument("--qemu-cpu", help="pin QEMU (its threads right after start) to these CPUs")
    g.add_argument("--dpdk-lcores", default="0@0,1@1",
                   help="testpmd --lcores: main lcore 0, forwarding lcore 1 (default 0@0,1@1)")
    g = ap.add_argument_group("output")
    g.add_argument("--out", default=str(ROOT / "benchmarks" / "results"),
                   help="--compare: directory for the result files (default benchmarks/results)")
    g.add_argument("--name", default="guest_bench", help="--compare: base name of the result files")
    g.add_argument("--json", help="also write every result here (any mode)")
    g.add_argument("--workdir", help="logs of every boot here (default: a new temporary directory, kept)")
    g.add_argument("--report", metavar="JSON",
                   help="boot nothing: rewrite --out/NAME.md and .png from a saved NAME.json (same figures)")
    args = ap.parse_args()
    if args.report:
        doc = json.loads(Path(args.report).read_text())
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        md_path, png_path = out / f"{args.name}.md", out / f"{args.name}.png"
        drew = plot(png_path, doc, doc["tests"], doc["backends"])
        write_markdown(md_path, doc, doc["tests"], doc["backends"], png_path if drew else None)
        print(f"wrote {md_path}" + (f", {png_path}" if drew else "") + f" from {args.report}")
        return 0
    if args.seconds is None:
        args.seconds = 2 if args.quick else 5
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3 if args.compare else 1
    args.pause = args.pause if args.pause is not None else (0.5 if args.quick else 1.0)
    if args.seconds < 1 or args.repeat < 1 or args.pause < 0:
        ap.error("--seconds and --repeat must be >= 1, --pause >= 0")
    if args.backends:
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    elif args.compare:
        backends = ["qemu", "dpdk", "vhostsplice"]
    else:
        backends = ["vhostsplice"]
    if args.baseline and "qemu" not in backends:
        backends.insert(0, "qemu")
    if any(b not in BACKENDS for b in backends) or len(set(backends)) != len(backends) or not backends:
        ap.error(f"--backends: each of {', '.join(BACKENDS)} at most once (got {args.backends!r})")
    try:
        sizes = [int(x) for x in args.udp_sizes.split(",")] if (args.udp or args.compare) else []
    except ValueError:
        ap.error(f"--udp-sizes: comma-separated integers (got {args.udp_sizes!r})")
    if any(not 16 <= n <= 1472 for n in sizes):
        ap.error("--udp-sizes: each payload between 16 and 1472 bytes (one frame at MTU 1500)")
    if os.geteuid() != 0:
        print("needs root (netns, tap)", file=sys.stderr)
        return 1
    if G.missing_tools():
        print(f"missing: {G.missing_tools()} (apt-get install $(tests/guest/build.sh --deps))", file=sys.stderr)
        return 1
    if "dpdk" in backends and not T.available():
        print(f"{T.TESTPMD} not found (apt-get install dpdk dpdk-dev)", file=sys.stderr)
        return 1
    if "vhostsplice" in backends:
        measured.preflight()
    repeat = args.repeat
    tests = tests_for(args.seconds, sizes, args.udp_rate)

    column = next(c for c in COLUMNS if c.id == args.peer)
    found, missing = measured.peer_image(column)
    if found is None:
        print(f"--peer {column.id}: {missing}", file=sys.stderr)
        return 1
    image, qemu = found
    print(f"QEMU {qemu.version}; guest kernel {image.kver}; image ready in {image.build_seconds:.1f} s; "
          f"back-ends {backends}; "
          f"{repeat} boot(s) each; tests {[t['name'] for t in tests]}; load {loadavg()}", flush=True)
    base = Path(args.workdir or tempfile.mkdtemp(prefix="guest-bench-"))
    started, t_start, load_before = datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), time.monotonic(), loadavg()
    results = []
    for rnd in range(repeat):
        order = backends[rnd % len(backends):] + backends[:rnd % len(backends)]   # rotate: no fixed position
        for backend in order:
            wd = base / f"{backend}-{rnd}"
            try:
                r = one_run(image, wd, backend=backend, tests=tests, seconds=args.seconds, pause=args.pause,
                            device_opts=args.device_opts, worker_args=args.worker_arg, worker_cpu=args.worker_cpu,
                            qemu_cpu=args.qemu_cpu, dpdk_lcores=args.dpdk_lcores)
            except (G.GuestError, AssertionError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
                print(f"{backend:12} round {rnd + 1}: FAILED: {exc}", file=sys.stderr, flush=True)
                results.append({"backend": backend, "round": rnd, "failed": str(exc).splitlines()[0],
                                "workdir": str(wd)})
                continue
            r["round"] = rnd
            results.append(r)
            cols = []
            for t in tests:
                x = r["tests"][t["name"]]
                cpu = (x["window"] or {}).get("cpu")
                cols.append(f"{t['name']} {fmt(value(r, t))} {unit(t)}" + (
                    f" (be {cpu['backend']:.2f} vcpu {cpu['qemu_vcpu']:.2f})" if cpu else ""))
            print(f"{backend:12} round {rnd + 1} [{(time.monotonic() - t_start) / 60:.1f} min]: boot "
                  f"{r['boot_s']:.1f} s | " + " | ".join(cols), flush=True)
    summ = summarize(results, backends, tests)
    print(f"\nmedians over {repeat} boot(s), {args.seconds} s each (TCP Gbit/s, UDP receiver kpps):")
    for b in backends:
        print(f"  {b:12} " + "  ".join(f"{t['name']} {fmt(summ[b][t['name']] and summ[b][t['name']]['median'])}"
                                       for t in tests))
    script = os.path.relpath(Path(__file__).resolve(), Path.cwd())
    doc = {"command": shlex.join(["python3", script, *sys.argv[1:]]), "args": vars(args), "backends": backends,
           "tests": tests, "guest_kernel": image.kver, "peer": column.id, "machine": machine_facts(qemu.binary),
           "started": started,
           "finished": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
           "elapsed_s": round(time.monotonic() - t_start, 1), "load_before": load_before, "load_after": loadavg(),
           "logs": str(base), "summary": summ, "results": results}
    if args.compare:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        md_path, json_path, png_path = (out / f"{args.name}{ext}" for ext in (".md", ".json", ".png"))
        json_path.write_text(json.dumps(doc, indent=1) + "\n")
        drew = plot(png_path, doc, tests, backends)
        write_markdown(md_path, doc, tests, backends, png_path if drew else None)
        print(f"wrote {md_path}, {json_path}" + (f", {png_path}" if drew else ""))
    if args.json:                   # its folder too: a missing one lost every boot's figures at the end
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"logs: {base}")
    bad = [r for r in results if r.get("failed") or any(x.get("error") for x in r.get("tests", {}).values())]
    return 3 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
