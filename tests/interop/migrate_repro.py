"""REPRODUCTION, not collected by default (docs/migration.md, "Open"): run it with
`python3 -m pytest -q -s tests/interop/migrate_repro.py`.

Live migration of a running guest between two QEMU 7.2 processes, each on its own `vhostsplice run`
(issue 8; the protocol side is in docs/migration.md).

Topology, in a private netns `vsm-PID-N`: bridge br0 with HOST_IP; tap vsm0 (worker A, source QEMU) and
tap vsm1 (worker B, destination QEMU started with `-incoming unix:...`) are its ports, like two hosts on
one L2. The guest pings the host every 20 ms and streams TCP to it (iperf3, paced) across the move. Asserted: QMP says `completed` and the
destination runs; worker B's rings run after the move (its counters are 0 before, and grow after);
worker A logged dirty pages (dirty_log.log_writes > 0) and exits 0 when its QEMU quits (its rings were
stopped by GET_VRING_BASE); B announced the guest MAC on vsm1 (SEND_RARP: the guest has no
GUEST_ANNOUNCE); the guest's lost pings form one window (the switch-over) and pings answer after it.
Printed: QMP downtime, lost pings. Needs root, QEMU; run under `flock /tmp/vs-heavy.lock`.
"""
from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import time
from pathlib import Path

import pytest

from support import guest as G

pytestmark = [pytest.mark.root, pytest.mark.interop, pytest.mark.slow]

GUEST_MAC = bytes.fromhex("525400123456")     # QEMU's default for the first NIC, the same on both sides
ETH_P_ALL = 0x0003
SO_RCVBUFFORCE = 33                          # <asm-generic/socket.h>: root may exceed rmem_max
PING_SECONDS = 16
STREAM_MBITS = 50                            # a TCP stream across the move, paced so TCG's dirty rate converges
SCRIPT = f"""
vs_ping ping_before 5
vs_mark PINGING
iperf3 -c "$VS_PEER" -t {PING_SECONDS} -b {STREAM_MBITS}M -J -i 0 > /tmp/mig.iperf 2>&1 &
ping -i 0.02 -w {PING_SECONDS} "$VS_PEER" > /tmp/mig.ping 2>&1
wait
vs_check mig_ping cat /tmp/mig.ping
vs_check mig_stream cat /tmp/mig.iperf
vs_ping ping_after 5
"""


class Qmp:
    """A minimal QMP client over QEMU's `-qmp unix:PATH,server=on,wait=off` socket."""

    def __init__(self, path: Path, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.sock.settimeout(timeout)
        self.file = self.sock.makefile("rb")
        self._read()                            # the greeting
        self.cmd("qmp_capabilities")

    def _read(self) -> dict:
        line = self.file.readline()
        if not line:
            raise ConnectionError("QMP socket closed")
        return json.loads(line)

    def cmd(self, name: str, **arguments) -> object:
        self.sock.sendall(json.dumps({"execute": name, **({"arguments": arguments} if arguments else {})}).encode())
        while True:
            msg = self._read()
            if "return" in msg:
                return msg["return"]
            if "error" in msg:
                raise AssertionError(f"QMP {name}: {msg['error']}")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def snapshot(worker) -> dict:
    """The running worker's statistics (SIGUSR1 makes it rewrite its --stats-file)."""
    before = os.stat(worker.stats_file).st_mtime_ns if os.path.exists(worker.stats_file) else 0
    worker.proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if os.path.exists(worker.stats_file) and os.stat(worker.stats_file).st_mtime_ns != before:
            try:
                with open(worker.stats_file) as f:
                    return json.load(f)
            except ValueError:
                pass
        time.sleep(0.05)
    raise AssertionError(f"no statistics from worker {worker.sock}")


def packets(stats: dict) -> tuple[int, int]:
    return stats["rings"]["rx"]["packets"], stats["rings"]["tx"]["packets"]


def ping_losses(text: str) -> tuple[int, list[int]]:
    """busybox ping output -> (transmitted, the lost sequence numbers)."""
    m = re.search(r"(\d+) packets transmitted, (\d+) packets received", text)
    assert m, f"no ping summary:\n{text[-2000:]}"
    sent = int(m[1])
    got = {int(s) for s in re.findall(r"seq=(\d+)", text)}
    return sent, sorted(set(range(sent)) - got)


def test_live_migration_keeps_the_guest_network(image, tmp_path):
    with G.HostNet(tmp_path, tap="vsm0", ns_prefix="vsm") as net:
        net.run(["ip", "addr", "del", f"{G.HOST_IP}/{G.PREFIX}", "dev", "vsm0"])
        net.run(["ip", "tuntap", "add", "dev", "vsm1", "mode", "tap", "multi_queue", "vnet_hdr"])
        net.run(["ip", "link", "add", "br0", "type", "bridge"])
        for tap in ("vsm0", "vsm1"):
            net.run(["ip", "link", "set", tap, "master", "br0"])
            net.run(["ip", "link", "set", tap, "up"])
        net.run(["ip", "addr", "add", f"{G.HOST_IP}/{G.PREFIX}", "dev", "br0"])
        net.run(["ip", "link", "set", "br0", "up"])
        server = net.iperf3_server()                                 # the guest streams to it across the move
        wa = net.start_worker(name="a", tap="vsm0")
        wb = net.start_worker(name="b", tap="vsm1")
        with net.ns.entered():
            # ETH_P_ALL: a bridge port hands its frames to the bridge before protocol-specific sockets
            rarp = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            rarp.bind(("vsm1", ETH_P_ALL))
            rarp.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
        mig = tmp_path / "mig.sock"
        src = G.Guest(image, wa.sock, tmp_path, SCRIPT, name="src",
                      qemu_extra=["-qmp", f"unix:{tmp_path}/src.qmp,server=on,wait=off"])
        dst = G.Guest(image, wb.sock, tmp_path, SCRIPT, name="dst",
                      qemu_extra=["-qmp", f"unix:{tmp_path}/dst.qmp,server=on,wait=off", "-incoming", f"unix:{mig}"])
        with src, dst, rarp:
            qs, qd = Qmp(tmp_path / "src.qmp"), Qmp(tmp_path / "dst.qmp")
            src.wait_marker("PINGING", G.BOOT_TIMEOUT)
            src.check("ping_before")
            assert packets(snapshot(wb)) == (0, 0)                  # B's rings do not run before the move
            time.sleep(2)                                             # pings flowing through worker A
            qs.cmd("migrate-set-parameters", **{"max-bandwidth": 4 << 30})
            qs.cmd("migrate", uri=f"unix:{mig}")
            deadline = time.monotonic() + 120
            while True:
                info = qs.cmd("query-migrate")
                if info.get("status") in ("completed", "failed", "cancelled") or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert info.get("status") == "completed", info
            deadline = time.monotonic() + 30
            while qd.cmd("query-status")["status"] != "running" and time.monotonic() < deadline:
                time.sleep(0.1)
            assert qd.cmd("query-status")["status"] == "running"
            after_move = packets(snapshot(wb))

            qs.cmd("quit")                                            # the source QEMU goes away
            code_a, stats_a = wa.wait(30)
            assert code_a == 0 and stats_a["errno"] == "OK", (code_a, stats_a, wa.stderr[-2000:])
            assert stats_a["dirty_log"]["log_writes"] > 0, stats_a["dirty_log"]
            assert stats_a["dirty_log"]["log_overflow"] == 0, stats_a["dirty_log"]

            rc = dst.wait_done(G.BOOT_TIMEOUT)                       # the guest finishes on the destination
            ping_text = dst.check("mig_ping").output
            stream = G.iperf_summary(dst.iperf("mig_stream"))
            dst.check("ping_after")
            assert rc == 0, dst.describe()
            announces = []
            while select.select([rarp], [], [], 0)[0]:
                frame = rarp.recv(65536)
                if frame[12:14] == b"\x80\x35":              # RARP
                    announces.append(frame)
        qs.close()
        qd.close()
        code_b, stats_b = G.stop_worker(wb)
        assert code_b == 0 and stats_b["errno"] == "OK", (code_b, stats_b)
        rx, tx = packets(stats_b)
        assert rx > after_move[0] and tx > after_move[1], (after_move, (rx, tx))
        assert "taken from used->idx" not in wb.stderr, wb.stderr[-2000:]   # B started where A stopped
        assert announces and all(f[6:12] == GUEST_MAC and f[22:28] == GUEST_MAC for f in announces), announces

        server.terminate()
        server.wait(10)
        # the TCP stream survived the move: no error, and it carried most of what its pace allowed
        assert stream["error"] is None and stream["bytes_received"] > STREAM_MBITS * 1e6 / 8 * PING_SECONDS / 2, stream
        sent, lost = ping_losses(ping_text)
        window = [s for s in lost if s != sent - 1]                  # the last one may just be cut by -w
        print(f"\nmigration: status {info['status']}, QMP downtime {info.get('downtime')} ms, total "
              f"{info.get('total-time')} ms, ram {info.get('ram', {}).get('transferred')} B; TCP stream "
              f"{stream['bytes_received']} B received ({stream.get('retransmits')} retransmits); guest pings "
              f"(every 20 ms) sent {sent}, lost {len(lost)} {lost}; RARP frames on vsm1 {len(announces)}; "
              f"worker A log_writes {stats_a['dirty_log']['log_writes']}; worker B rx/tx at the move "
              f"{after_move}, at the end {(rx, tx)}")
        assert sent > 0 and len(lost) < sent
        if window:                                                     # loss only in one switch-over window
            assert window == list(range(window[0], window[-1] + 1)), lost
            assert window[-1] < sent - 2, lost                         # and answers again after it
