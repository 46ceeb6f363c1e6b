#!/usr/bin/env python3
"""How the cost of vhostsplice grows with the number of queue pairs on one host (issue 18): N idle pairs,
connected, each a `vhostsplice run` worker with its own front-end, or one `serve --queues N` device.

For each N (--pairs, default 1,8,32), and each shape (--shapes):
  run     N `vhostsplice run --socket-path S --host-fd F` workers (F: one end of a unix datagram
          socketpair: no tap or root needed), each connected to a pure-Python front-end (rings running,
          RX buffers posted, one frame sent each way so every worker has done a batch), then left idle;
  serve   one `serve --queues N --tap T` in a private netns driven by DPDK testpmd virtio-user queues=N in
          rxonly mode (root and dpdk-testpmd needed; skipped with a reason otherwise), idle; DPDK 22.11
          drives at most 8 pairs;
  serve-py  the same `serve`, driven by a pure-Python multi-queue front-end (any N: the issue's goal is at
          32 pairs): every pair's rings running, RX buffers posted, one frame sent on each TX ring (the tap is
          up), then idle (root needed).
Measured after a settling second, over --window seconds: start-up to all listening (run) or to every
worker started (serve); total PSS (smaps_rollup) of the measured processes; PSS per extra pair (the slope
between the smallest and the largest N); wake-ups per second (voluntary context switches of all measured
processes: each is one sleep that ended); CPU (utime+stime). The front-ends are not measured.

Results: a markdown table and JSON in --out (default benchmarks/results/density-<time>), the command
line in both. Benchmarks, never timed tests: the figures depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import measured  # noqa: E402  (the installed vhostsplice; puts tests/ on sys.path)
from measured import ROOT  # noqa: E402
from vhostsplice.spec import Feature, Req, bit  # noqa: E402
from vhostsplice.testing.frontend import DEFAULT_FEATURES, Frontend  # noqa: E402
from vhostsplice.testing.harness import demo_frame  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
VIRTIO_USER_MAX_QUEUES = 8      # DPDK 22.11 virtio_user_pmd_probe: "arg queues N exceeds the limit 8"


def proc_figures(pid: int) -> dict[str, int]:
    """Pss (KiB), voluntary context switches, CPU ticks of PID (0s if it is gone)."""
    out = {"pss": 0, "wakeups": 0, "ticks": 0}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                out["pss"] = int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                out["wakeups"] = int(line.split()[1])
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        out["ticks"] = int(fields[11]) + int(fields[12])
    except (FileNotFoundError, ProcessLookupError, IndexError):
        pass
    return out


def descendants(pid: int) -> list[int]:
    """PID's children, grandchildren...: serve's template and the workers it forked."""
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                ppid = int(Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(name))
    out, todo = [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def confined(pid: int) -> bool:
    """A worker past its set-up (the sandbox is loaded last, right before its first message); serve's
    template is never confined (it is not measured for that)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
        return "Seccomp:\t2" in text or "Name:\tvs-template" in text
    except FileNotFoundError:
        return True


def measure_idle(pids_fn, window: float) -> dict:
    deadline = time.monotonic() + 60
    while not all(confined(p) for p in pids_fn()) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2.0)                       # settle: the one safety poll after the last batch
    pids = pids_fn()
    a, t0 = [proc_figures(p) for p in pids], time.monotonic()
    time.sleep(window)
    b, dt = [proc_figures(p) for p in pids], time.monotonic() - t0
    wake = [round((y["wakeups"] - x["wakeups"]) / dt, 2) for x, y in zip(a, b)]
    return {"processes": len(pids), "pss_mib": round(sum(y["pss"] for y in b) / 1024, 1),
            "wakeups_per_s": round(sum(wake), 2), "wakeups_max_process": max(wake),
            "cpu_percent": round(100 * sum(y["ticks"] - x["ticks"] for x, y in zip(a, b)) / TICK / dt, 2)}


@contextlib.contextmanager
def idle_pairs(n: int, workdir: Path):
    """N `run` workers on socketpairs, each with its own connected front-end that has moved one frame each
    way; yields (their pids, start-up seconds to all listening), stops them all at the end."""
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(n)]
    procs, fronts = [], []
    try:
        t0 = time.monotonic()
        for i, (_ours, theirs) in enumerate(pairs):
            sock = workdir / f"w{i}.sock"
            procs.append((subprocess.Popen([*measured.argv(), "run", "--socket-path", str(sock), "--host-fd",
                                            str(theirs.fileno()), "--stats-file", str(workdir / f"w{i}.json")],
                                           pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL, env=measured.env()), sock))
        while not all(sock.is_socket() for _p, sock in procs):
            if any(p.poll() is not None for p, _s in procs):
                sys.exit(f"a worker exited while starting: {[p.returncode for p, _s in procs]}")
            time.sleep(0.01)
        startup = time.monotonic() - t0
        for (ours, _theirs), (_proc, sock) in zip(pairs, procs):
            fe = Frontend.connect(str(sock), mem_size=2 << 20, queue_size=256).start()
            fe.post_rx(16, 2048)
            fe.send([demo_frame(1, 60)])
            ours.send(demo_frame(2, 60))
            fronts.append(fe)
        for fe in fronts:
            fe.wait_used(fe.tx, 1)
        yield [p.pid for p, _s in procs], startup
    finally:
        for fe in fronts:
            fe.close()
        for proc, _sock in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _sock in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for a, b in pairs:
            a.close()
            b.close()


def shape_run(n: int, workdir: Path, window: float) -> dict:
    """N `run` workers on socketpairs, each with its own connected front-end."""
    with idle_pairs(n, workdir) as (pids, startup):
        d = measure_idle(lambda: pids, window)
        return {"startup_s": round(startup, 2), **d}


def wait_started(events: Path, n: int, t0: float, timeout: float = 120) -> tuple[int, float]:
    """Until serve's --events file names N started workers (or TIMEOUT): how many it names, and the seconds
    since T0 (serve started) when the last one did."""
    def started() -> int:
        lines = events.read_text().splitlines() if events.exists() else []
        return sum(1 for e in map(json.loads, lines) if e["event"] == "start")
    deadline = time.monotonic() + timeout
    while started() < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return started(), time.monotonic() - t0


def shape_serve(n: int, workdir: Path, window: float) -> dict:
    """serve --queues N driven by testpmd virtio-user queues=N (rxonly: idle from the back-end's side)."""
    import support.testpmd as tp
    from support.netns import entered_netns
    if os.geteuid() != 0 or not tp.available():
        return {"skipped": "needs root and dpdk-testpmd"}
    if n > VIRTIO_USER_MAX_QUEUES:
        return {"skipped": f"DPDK virtio-user drives at most {VIRTIO_USER_MAX_QUEUES} queue pairs"}
    sock, events = workdir / f"serve{n}.sock", workdir / f"serve{n}.events"
    with entered_netns("vsd"):
        t0 = time.monotonic()
        sup = subprocess.Popen([*measured.argv(), "serve", "--socket-path", str(sock), "--tap", "vsd0",
                                "--queues", str(n), "--events", str(events)], stdin=subprocess.DEVNULL,
                               env=measured.env())
        try:
            while not sock.is_socket():
                if sup.poll() is not None:
                    sys.exit(f"serve exited {sup.returncode} before listening")
                time.sleep(0.01)
            pmd = tp.Testpmd([f"net_virtio_user0,path={sock},queues={n},queue_size={tp.QUEUE_SIZE}"], mode="rxonly",
                             log=workdir / f"testpmd{n}.log", extra=[f"--rxq={n}", f"--txq={n}"])
            with pmd:
                pmd.wait_started()

                started, startup = wait_started(events, n, t0)
                d = measure_idle(lambda: [sup.pid, *descendants(sup.pid)], window)
                pmd.stop()
            return {"startup_s": round(startup, 2), "workers_started": started, **d}
        finally:
            if sup.poll() is None:
                sup.send_signal(signal.SIGTERM)
            sup.wait(60)


class MultiQueueFrontend(Frontend):
    """The pure-Python front-end with N queue pairs (MQ): rings 2k and 2k+1 are pair k's, in one memory."""

    def __init__(self, sock: socket.socket, pairs: int, **kw):
        super().__init__(sock, features=DEFAULT_FEATURES | bit(Feature.NET_F_MQ), **kw)
        for fds in (self.kick, self.call, self.err):
            fds.extend(os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(2 * pairs - 2))
        self.pairs, self.queues = pairs, []

    def start(self) -> "MultiQueueFrontend":
        self.negotiate()
        self.request(Req.GET_QUEUE_NUM)
        self.share_memory()
        self.queues = [(self.setup_ring(2 * k), self.setup_ring(2 * k + 1)) for k in range(self.pairs)]
        return self

    def one_frame_each(self, timeout: float = 30.0) -> None:
        """RX buffers posted and one frame sent on every pair; returns when every TX frame was used."""
        for k, (rx, tx) in enumerate(self.queues):
            rx.add_in(16, 2048)
            self.notify(2 * k)
            tx.add_out([demo_frame(k, 60)])
            self.notify(2 * k + 1)
        deadline = time.monotonic() + timeout
        for k, (_rx, tx) in enumerate(self.queues):
            while not tx.used():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"pair {k}: the TX frame was not used in {timeout} s")
                time.sleep(0.01)

    def close(self) -> None:
        self.queues = []        # the driver queues hold views of the memory closed below
        super().close()


def shape_serve_py(n: int, workdir: Path, window: float) -> dict:
    """serve --queues N driven by MultiQueueFrontend (any N)."""
    from support.netns import entered_netns
    if os.geteuid() != 0:
        return {"skipped": "needs root"}
    sock, events = workdir / f"serve{n}.sock", workdir / f"serve{n}.events"
    with entered_netns("vsp"):
        t0 = time.monotonic()
        sup = subprocess.Popen([*measured.argv(), "serve", "--socket-path", str(sock), "--tap", "vsp0",
                                "--queues", str(n), "--events", str(events)], stdin=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=measured.env())
        fe = None
        try:
            while not sock.is_socket():
                if sup.poll() is not None:
                    sys.exit(f"serve exited {sup.returncode} before listening")
                time.sleep(0.01)
            subprocess.run(["ip", "link", "set", "vsp0", "up"], check=True, capture_output=True, timeout=30)
            fe = MultiQueueFrontend(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), n, mem_size=16 << 20,
                                    queue_size=256)
            fe.chan.sock.connect(str(sock))
            fe.start()

            started, startup = wait_started(events, n, t0)
            fe.one_frame_each()
            d = measure_idle(lambda: [sup.pid, *descendants(sup.pid)], window)
            return {"startup_s": round(startup, 2), "workers_started": started, **d}
        finally:
            if fe is not None:
                fe.close()
            if sup.poll() is None:
                sup.send_signal(signal.SIGTERM)
            sup.wait(60)


SHAPES = {"run": shape_run, "serve": shape_serve, "serve-py": shape_serve_py}


def slope(rows: list[dict], key: str) -> tuple[float, int, int] | None:
    """(per extra pair, from, to) between the smallest and the largest measured N."""
    ok = [r for r in rows if key in r]
    if len(ok) < 2 or ok[-1]["pairs"] == ok[0]["pairs"]:
        return None
    return round((ok[-1][key] - ok[0][key]) / (ok[-1]["pairs"] - ok[0]["pairs"]), 2), ok[0]["pairs"], ok[-1]["pairs"]


def markdown(results: dict) -> str:
    out = [f"Command: `{results['command']}`  ", f"When: {results['when']}; load average before: "
           f"{results['loadavg']}; package: {results['package']}", "",
           "| shape | pairs | processes | start-up s | PSS MiB | wake-ups/s | CPU % |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for shape, rows in results["shapes"].items():
        for r in rows:
            if "skipped" in r:
                out.append(f"| {shape} | {r['pairs']} | skipped: {r['skipped']} | | | | |")
                continue
            out.append(f"| {shape} | {r['pairs']} | {r['processes']} | {r['startup_s']} | {r['pss_mib']} | "
                       f"{r['wakeups_per_s']} | {r['cpu_percent']} |")
    out.append("")
    for shape, rows in results["shapes"].items():
        per = slope(rows, "pss_mib")
        if per is not None:
            out.append(f"- {shape}: PSS per extra pair {per[0]} MiB (slope from {per[1]} to {per[2]} pairs)")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default="1,8,32", help="comma-separated pair counts (default 1,8,32; try 128)")
    ap.add_argument("--shapes", default="run,serve,serve-py",
                    help="run, serve, serve-py, comma-separated (default all three)")
    ap.add_argument("--window", type=float, default=5.0, help="idle measuring window, s (default 5)")
    ap.add_argument("--out", help="folder for md/json (default benchmarks/results/density-<time>)")
    args = ap.parse_args()
    counts = sorted({int(x) for x in args.pairs.split(",") if x})
    shapes = [s for s in args.shapes.split(",") if s]
    if not counts or min(counts) < 1 or any(s not in SHAPES for s in shapes):
        ap.error(f"--pairs: positive integers; --shapes: from {', '.join(SHAPES)}")
    measured.preflight()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"density-{stamp}")
    out.mkdir(parents=True, exist_ok=True)
    results = {"command": " ".join(["python3", "benchmarks/density_bench.py", *sys.argv[1:]]),
               "when": stamp, "loadavg": open("/proc/loadavg").read().split()[:3],
               "package": measured.package_dir(), "shapes": {}}
    for shape in shapes:
        rows = results["shapes"][shape] = []
        for n in counts:
            work = Path(tempfile.mkdtemp(prefix=f"vsdensity-{shape}{n}-"))
            try:
                print(f"density: {shape} {n} pair(s)...", file=sys.stderr, flush=True)
                row = {"pairs": n, **SHAPES[shape](n, work, args.window)}
                print(f"density: {shape} {n}: {row}", file=sys.stderr, flush=True)
                rows.append(row)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    measured.write_results(out, "density", results, markdown(results))
    print(f"written: {out}/density.md, density.json", file=sys.stderr)
    failed = [r for rows in results["shapes"].values() for r in rows if "processes" not in r and "skipped" not in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
