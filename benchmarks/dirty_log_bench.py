"""Packets per second of the C core with dirty logging on vs off (issue 8), in-process, no guest.

The core test rig's set-up: bytearray guest memory, a Python driver, a SOCK_SEQPACKET socketpair as the
tap. Only the datapath polls are timed (the driver's Python work and the socket sends are not), for RX
(host -> guest: the direction that logs data pages) and TX (logs only the used ring). Logging off and
on alternate round by round in the same process, so the ratio compares like with like.

    flock /tmp/vs-heavy.lock python3 benchmarks/dirty_log_bench.py [--rounds 30] [--size 64]
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import time

from vhostsplice.device.datapath import MORE, Datapath
from vhostsplice.testing.virtq import NET_HDR_LEN, DriverQueue, GuestMemory

GPA, UVA = 0x4000_0000, 0x7F12_3400_0000
BATCH = 128


class Bench:
    def __init__(self, size: int, mrg: bool):
        self.mem = GuestMemory(bytearray(16 << 20), GPA, UVA)
        self.host, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (self.host, self.peer):
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, 32, 8 << 20)      # SO_SNDBUFFORCE (root)
            s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)      # SO_RCVBUFFORCE
        self.dp = Datapath(self.host.fileno())
        self.dp.configure(mrg_rxbuf=mrg, event_idx=True, indirect=False, rx_max=NET_HDR_LEN + 1514)
        self.dp.set_memory(self.mem.regions())
        self.rx = DriverQueue(self.mem, 256, event_idx=True)
        self.tx = DriverQueue(self.mem, 256, event_idx=True)
        for i, q in ((0, self.rx), (1, self.tx)):
            self.dp.start_ring(i, num=q.num, desc=q.desc_uva, avail=q.avail_uva, used=q.used_uva)
        self.log = bytearray((GPA + (16 << 20)) // 4096 // 8)
        self.dp.set_log(self.log)
        self.dp.set_ring_log(0, True, self.rx.used_gpa)
        self.dp.set_ring_log(1, True, self.tx.used_gpa)
        self.pkt = bytes(NET_HDR_LEN) + bytes(range(256)) * (size // 256) + bytes(size % 256)
        self.frame = self.pkt[NET_HDR_LEN:]

    def poll(self) -> float:
        t = time.perf_counter()
        while self.dp.poll() & MORE:
            pass
        return time.perf_counter() - t

    def rx_round(self) -> float:
        self.rx.add_in(BATCH, 2048)
        for _ in range(BATCH):
            self.peer.send(self.pkt)
        dt = self.poll()
        assert len(self.rx.used()) == BATCH
        return dt

    def tx_round(self) -> float:
        self.tx.add_out([self.frame] * BATCH)
        dt = self.poll()
        assert len(self.tx.used()) == BATCH
        while True:
            try:
                self.peer.recv(4096)
            except BlockingIOError:
                break
        return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--size", type=int, default=64, help="frame bytes (without the virtio-net header)")
    ap.add_argument("--mrg", action="store_true", help="MRG_RXBUF")
    args = ap.parse_args()
    b = Bench(args.size, args.mrg)
    times = {(d, on): [] for d in ("rx", "tx") for on in (False, True)}
    for r in range(args.rounds + 3):
        for on in ((False, True) if r % 2 else (True, False)):
            b.dp.set_log_all(on)
            for d, fn in (("rx", b.rx_round), ("tx", b.tx_round)):
                dt = fn()
                if r >= 3:                                  # warm-up rounds are not counted
                    times[(d, on)].append(dt)
    out = {"frame_bytes": args.size, "mrg": args.mrg, "batch": BATCH, "rounds": args.rounds,
           "log_stats": b.dp.log_stats(), "dirty_pages": sum(bin(x).count("1") for x in b.log)}
    for d in ("rx", "tx"):
        off = BATCH / statistics.median(times[(d, False)])
        on = BATCH / statistics.median(times[(d, True)])
        out[d] = {"pps_log_off": round(off), "pps_log_on": round(on), "on_over_off": round(on / off, 3)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
