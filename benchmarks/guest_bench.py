#!/usr/bin/env python3
"""Guest throughput: iperf3 inside a real Linux guest (QEMU, TCG) over `vhostsplice run`, both directions.

    sudo python3 benchmarks/guest_bench.py                      # vhostsplice, 5 s TCP each way
    sudo python3 benchmarks/guest_bench.py --baseline           # + QEMU's own virtio-net on the same tap
    sudo python3 benchmarks/guest_bench.py --seconds 10 --repeat 3 --udp --json out.json
    sudo python3 benchmarks/guest_bench.py --device-opts mrg_rxbuf=off --worker-arg=--no-offloads

One guest boot per configuration and repetition; the guest's iperf3 client runs against `iperf3 -s` in
the host's private namespace (-R for host->guest). Uses the same pieces as tests/interop/test_qemu.py
(tests/support/guest.py, tests/guest/build.sh). Needs root, qemu-system-x86 and iperf3.

Printed per run: Gbit/s as the receiver counted it, TCP retransmits, and the CPU seconds the worker and
QEMU used per second of test (from /proc/PID/stat, between the first and the last iperf3 run). On a
2-core machine the TCG guest's vCPU is the bottleneck: numbers are relative, compare configurations.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support import guest as G  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of one process (all threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / TICK


def script(seconds: int, udp: bool, udp_rate: str) -> str:
    lines = ["vs_ping warmup 3", "vs_mark BENCH-START",
             f"vs_iperf tcp_tx -t {seconds}", f"vs_iperf tcp_rx -t {seconds} -R"]
    if udp:
        lines += [f"vs_iperf udp_tx -t {seconds} -u -b {udp_rate}", f"vs_iperf udp_rx -t {seconds} -u -b {udp_rate} -R"]
    lines.append("vs_mark BENCH-END")
    return "\n".join(lines) + "\n"


def one_run(image, workdir: Path, *, backend: str, seconds: int, udp: bool, udp_rate: str, device_opts: str,
            worker_args: list[str], worker_cpu: str | None, qemu_cpu: str | None) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    text = script(seconds, udp, udp_rate)
    names = ["tcp_tx", "tcp_rx"] + (["udp_tx", "udp_rx"] if udp else [])
    with G.HostNet(workdir, multi_queue=backend == "vhostsplice") as net:
        worker = None
        if backend == "vhostsplice":
            extra = list(worker_args) + (["--cpu", worker_cpu] if worker_cpu else [])
            worker = net.start_worker(*extra)
            guest = G.Guest(image, worker.sock, workdir, text, device_opts=device_opts)
        else:     # QEMU's built-in virtio-net back-end in its main loop, on the same kind of tap
            guest = G.Guest(image, "", workdir, text, device_opts=device_opts,
                            netdev=f"tap,id=n0,ifname={net.tap},script=no,downscript=no,vhost=off")
        net.iperf3_server()
        t0 = time.monotonic()
        guest.start(net.ns if backend != "vhostsplice" else None)
        with guest:
            if qemu_cpu:          # every thread QEMU has by now (vCPU included)
                for tid in os.listdir(f"/proc/{guest.proc.pid}/task"):
                    os.sched_setaffinity(int(tid), parse_cpus(qemu_cpu))
            guest.wait_marker("BOOT", G.BOOT_TIMEOUT)
            boot = time.monotonic() - t0
            guest.wait_marker("BENCH-START", 120)
            c0 = (cpu_seconds(worker.proc.pid) if worker else 0.0, cpu_seconds(guest.proc.pid), time.monotonic())
            guest.wait_marker("BENCH-END", 60 + 4 * len(names) * (seconds + 10))
            c1 = (cpu_seconds(worker.proc.pid) if worker else 0.0, cpu_seconds(guest.proc.pid), time.monotonic())
            rc = guest.wait_done(60)
        stats = G.stop_worker(worker)[1] if worker else {}
    if rc != 0:
        raise SystemExit(f"guest reported {rc} failed checks:\n{guest.describe()}")
    wall = c1[2] - c0[2]
    out = {"backend": backend, "boot_s": round(boot, 2), "features": stats.get("features"),
           "worker_cpu": round((c1[0] - c0[0]) / wall, 2) if worker else None,
           "qemu_cpu": round((c1[1] - c0[1]) / wall, 2)}
    for n in names:
        out[n] = G.iperf_summary(guest.iperf(n))
    return out


def parse_cpus(text: str) -> set[int]:
    cpus = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=5, help="iperf3 duration of each direction (default 5)")
    ap.add_argument("--repeat", type=int, default=1, help="guest boots per configuration (default 1)")
    ap.add_argument("--udp", action="store_true", help="also UDP both ways at --udp-rate")
    ap.add_argument("--udp-rate", default="1G", help="iperf3 -b for UDP (default 1G)")
    ap.add_argument("--baseline", action="store_true", help="also QEMU's own virtio-net on a tap (no vhost)")
    ap.add_argument("--device-opts", default="", help="extra virtio-net-pci properties, e.g. mrg_rxbuf=off")
    ap.add_argument("--worker-arg", action="append", default=[], help="extra `vhostsplice run` argument")
    ap.add_argument("--worker-cpu", help="pin the worker (vhostsplice run --cpu)")
    ap.add_argument("--qemu-cpu", help="pin QEMU (its threads right after start) to these CPUs")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--workdir", help="keep logs here (default: a temporary directory)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (netns, tap)", file=sys.stderr)
        return 1
    if G.missing_tools():
        print(f"missing: {G.missing_tools()} (apt-get install $(tests/guest/build.sh --deps))", file=sys.stderr)
        return 1
    image = G.build_image()
    print(f"guest kernel {image.kver}; image ready in {image.build_seconds:.1f} s", flush=True)
    base = Path(args.workdir or tempfile.mkdtemp(prefix="guest-bench-"))
    backends = ["vhostsplice"] + (["qemu-tap"] if args.baseline else [])
    results = []
    for backend in backends:
        for i in range(args.repeat):
            r = one_run(image, base / f"{backend}-{i}", backend=backend, seconds=args.seconds, udp=args.udp,
                        udp_rate=args.udp_rate, device_opts=args.device_opts, worker_args=args.worker_arg,
                        worker_cpu=args.worker_cpu, qemu_cpu=args.qemu_cpu)
            results.append(r)
            cols = [f"{n} {r[n]['gbps']:.2f} Gbit/s" + (f" (retr {r[n]['retransmits']})" if "retransmits" in r[n]
                                                        else f" (lost {r[n].get('lost_percent', 0):.1f}%)")
                    for n in ("tcp_tx", "tcp_rx", "udp_tx", "udp_rx") if n in r]
            cpu = f"worker {r['worker_cpu']} qemu {r['qemu_cpu']}" if r["worker_cpu"] is not None else \
                f"qemu {r['qemu_cpu']}"
            print(f"{backend:12} run {i + 1}: boot {r['boot_s']:.2f} s | " + " | ".join(cols) + f" | cpu/s: {cpu}",
                  flush=True)
    print(f"\nmedian Gbit/s over {args.repeat} run(s), {args.seconds} s each, guest->host (tx) / host->guest (rx):")
    for backend in backends:
        rs = [r for r in results if r["backend"] == backend]
        med = {n: statistics.median(r[n]["gbps"] for r in rs) for n in ("tcp_tx", "tcp_rx", "udp_tx", "udp_rx")
               if n in rs[0]}
        print(f"  {backend:12} " + "  ".join(f"{n} {v:.2f}" for n, v in med.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "kernel": image.kver, "results": results},
                                              indent=1))
    print(f"logs: {base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
