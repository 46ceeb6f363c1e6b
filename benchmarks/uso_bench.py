#!/usr/bin/env python3
"""Guest UDP send throughput with and without UDP segmentation offload (issue 16), on demand.

    sudo python3 benchmarks/uso_bench.py                   # 3 rounds, 64 MiB per test, writes RESULTS.md's table
    sudo python3 benchmarks/uso_bench.py --repeat 1 --mbytes 16 --no-write      # a quick look

One QEMU 10.0 + Linux 6.12 guest (the 10.0 column of tests/support/peers.py, TCG, one vCPU) per boot,
on each back-end, the order rotating every round:
  vhostsplice              `vhostsplice run --tap TAP` (offers HOST_USO/GUEST_USO4/6 where the tap takes them)
  vhostsplice-no-offloads  the same with `--no-offloads` (no checksum, TSO or USO offload at all)
  qemu-tap                 QEMU's own virtio-net on the same kind of tap, `-netdev tap,vhost=off`
  qemu-vhost-net           the same with vhost=on, only when /dev/vhost-net exists
In each boot the guest sends --mbytes MiB of 1400-byte UDP datagrams to the host twice with
tests/guest/vs-udpsend.c (handed over through fw_cfg): "gso" (UDP_SEGMENT, 46 datagrams per send)
and "plain" (sendmmsg of 64 datagrams). A receiver in the host's netns counts what arrives; the
figure is received payload over the time from the first datagram to the last, in Mbit/s (and the
share of the sent payload that never arrived). The guest's
negotiated features are recorded per back-end: whether HOST_USO reached the guest explains the gso
column. The machine is shared: the table gives medians, the ratios to qemu-tap of the same rounds and
the load average before and after; compare ratios, not absolutes.

Writes the table (and the command that made it) into benchmarks/RESULTS.md between its USO markers,
unless --no-write; --json FILE keeps every sample. Exit 0, or 1 when a boot or a send failed.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import measured  # noqa: E402  (puts tests/ on sys.path; peer_image, preflight)
from measured import ROOT  # noqa: E402
from support import guest as G  # noqa: E402
from support.peers import COLUMNS  # noqa: E402

SENDER = "vs-udpsend"
SIZE = 1400
PORTS = {"gso": 5001, "plain": 5002}
USO_BITS = ("GUEST_USO4", "GUEST_USO6", "HOST_USO")
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- uso_bench:begin -->", "<!-- uso_bench:end -->"
# Counts what arrives on each port: bytes, datagrams, first and last arrival; prints JSON on SIGTERM.
RECEIVER = r"""
import json, select, signal, socket, sys, time
ports = [int(p) for p in sys.argv[2:]]
socks = {}
for p in ports:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    s.bind((sys.argv[1], p)); s.setblocking(False); socks[s.fileno()] = (p, s)
got = {p: [0, 0, None, None] for p in ports}
def done(*_):
    print(json.dumps({p: dict(zip(("bytes", "datagrams", "first", "last"), v)) for p, v in got.items()}))
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
print("ready", flush=True)
buf = bytearray(65536)
while True:
    for fd in select.select(list(socks), [], [])[0]:
        p, s = socks[fd]
        while True:
            try:
                n = s.recv_into(buf)
            except BlockingIOError:
                break
            g = got[p]; t = time.monotonic()
            g[0] += n; g[1] += 1; g[3] = t
            if g[2] is None: g[2] = t
"""


def backends() -> list[str]:
    out = ["vhostsplice", "vhostsplice-no-offloads", "qemu-tap"]
    return out + (["qemu-vhost-net"] if os.path.exists("/dev/vhost-net") else [])


def guest_script(mbytes: int) -> str:
    lines = [f"vs_fwcfg_bin {SENDER}", "vs_ping warm 3"]
    for mode, port in PORTS.items():
        lines += [f"vs_check {mode} /tmp/bin/{SENDER} {G.HOST_IP} {port} {mbytes} {SIZE} {mode}", "sleep 1"]
    return "\n".join(lines) + "\n"


def boot(image, backend: str, mbytes: int, sender: Path) -> dict:
    """One guest on BACKEND: the two sends, what the receiver counted, the guest's features."""
    workdir = Path(tempfile.mkdtemp(prefix=f"uso-{backend}-"))
    qemu_backend = backend.startswith("qemu")
    with G.HostNet(workdir, multi_queue=not qemu_backend) as net:
        rx = net.popen([sys.executable, "-c", RECEIVER, G.HOST_IP, *map(str, PORTS.values())],
                       stdout=subprocess.PIPE, text=True)
        assert rx.stdout.readline().strip() == "ready"
        extra = G.fw_cfg_file(SENDER, sender)
        if qemu_backend:
            vhost = "on" if backend == "qemu-vhost-net" else "off"
            guest = G.Guest(image, "", workdir, guest_script(mbytes), qemu_extra=extra,
                            netdev=f"tap,id=n0,ifname={net.tap},script=no,downscript=no,vhost={vhost}")
            worker = None
        else:
            worker = net.start_worker(*(["--no-offloads"] if backend.endswith("no-offloads") else []))
            guest = G.Guest(image, worker.sock, workdir, guest_script(mbytes), qemu_extra=extra)
        guest.start(net.ns if qemu_backend else None)
        with guest:
            guest.wait_marker("BOOT", G.BOOT_TIMEOUT)
            rc = guest.wait_done(600)
            features = G.feature_names(guest.features())
        if worker is not None:
            G.stop_worker(worker)
        rx.send_signal(signal.SIGTERM)
        counted = json.loads(rx.communicate(timeout=30)[0])
    out = {"backend": backend, "rc": rc, "features": features, "modes": {}}
    for mode, port in PORTS.items():
        c, sent = counted[str(port)], _kv(guest.section(mode))
        span = (c["last"] - c["first"]) if c["first"] is not None else 0
        sent_bytes = int(sent.get("bytes", 0))
        out["modes"][mode] = {"received": c["bytes"], "datagrams": c["datagrams"], "span_s": span,
                              "mbps": c["bytes"] * 8 / span / 1e6 if span > 0 else 0.0, "sender": sent,
                              "lost_pct": 100 * (1 - c["bytes"] / sent_bytes) if sent_bytes else 100.0}
    return out


def _kv(text: str) -> dict:
    return dict(w.split("=", 1) for w in text.split() if "=" in w)


def table(samples: list[dict], args, load: tuple, cmd: str) -> str:
    med, lost, spread = {}, {}, {}
    for b in backends():
        for mode in PORTS:
            mine = [s["modes"][mode] for s in samples if s["backend"] == b]
            med[b, mode] = statistics.median(m["mbps"] for m in mine) if mine else 0.0
            spread[b, mode] = f"{min(m['mbps'] for m in mine):.0f}-{max(m['mbps'] for m in mine):.0f}" if mine else "-"
            lost[b, mode] = statistics.median(m["lost_pct"] for m in mine) if mine else 100.0
    base = {mode: med.get(("qemu-tap", mode)) or 0.0 for mode in PORTS}
    rows = ["| back-end | USO bits in the guest | gso Mbit/s (min-max) | plain Mbit/s (min-max) | gso / plain "
            "| gso vs qemu-tap | plain vs qemu-tap | lost gso / plain |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for b in backends():
        feats = next((s["features"] for s in samples if s["backend"] == b), [])
        uso = ", ".join(f for f in USO_BITS if f in feats) or "none"
        g, p = med[b, "gso"], med[b, "plain"]
        rows.append(f"| {b} | {uso} | {g:.0f} ({spread[b, 'gso']}) | {p:.0f} ({spread[b, 'plain']}) | "
                    f"{g / p if p else 0:.2f} | "
                    f"{g / base['gso'] if base['gso'] else 0:.2f} | {p / base['plain'] if base['plain'] else 0:.2f} | "
                    f"{lost[b, 'gso']:.1f} % / {lost[b, 'plain']:.1f} % |")
    head = (f"`{cmd}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}): QEMU {args.qemu_version} + Linux "
            f"{args.kver} guest (TCG, 1 vCPU), {args.mbytes} MiB of {SIZE}-byte UDP payload per test, medians of "
            f"{args.repeat} rounds (order rotating), received Mbit/s. Load average before / after: "
            f"{load[0]:.2f} / {load[1]:.2f} on {os.cpu_count()} CPUs (a shared machine: read the ratios).")
    return "\n".join([head, "", *rows])


def write_results(text: str) -> None:
    doc = RESULTS.read_text()
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in doc:
        doc = doc[:doc.index(BEGIN)] + block + doc[doc.index(END) + len(END):]
    else:
        doc = doc.rstrip("\n") + "\n\n## UDP segmentation offload: guest UDP send (issue 16)\n\n" + block + "\n"
    RESULTS.write_text(doc)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="rounds (each boots every back-end once)")
    ap.add_argument("--mbytes", type=int, default=64, help="MiB of payload per send test")
    ap.add_argument("--json", type=Path, help="write every sample here")
    ap.add_argument("--no-write", action="store_true", help="print the table, leave RESULTS.md alone")
    args = ap.parse_args(argv)
    column = next(c for c in COLUMNS if c.qemu == "10.0")
    found, missing = measured.peer_image(column)
    if found is None:
        print(f"uso_bench: {missing}", file=sys.stderr)
        return 1
    image, qemu = found
    measured.preflight()            # a worker that cannot start stops the run here, with its stderr
    args.qemu_version, args.kver = qemu.version, image.kver
    sender = G.build_guest_tool(SENDER, tempfile.mkdtemp(prefix="uso-sender-"), "-static")
    load0, samples, failed = os.getloadavg()[0], [], 0
    for r in range(args.repeat):
        order = backends()[r % len(backends()):] + backends()[:r % len(backends())]
        for b in order:
            s = boot(image, b, args.mbytes, sender)
            failed += s["rc"] != 0 or any(m["received"] == 0 for m in s["modes"].values())
            samples.append(s)
            print(json.dumps({k: s[k] for k in ("backend", "rc")} | {m: round(v["mbps"]) for m, v in
                                                                      s["modes"].items()}), flush=True)
    cmd = "sudo python3 benchmarks/uso_bench.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    text = table(samples, args, (load0, os.getloadavg()[0]), cmd.strip())
    print(text)
    if args.json:
        args.json.write_text(json.dumps(samples, indent=1))
    if not args.no_write:
        write_results(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
