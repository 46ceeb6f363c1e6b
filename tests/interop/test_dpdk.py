"""DPDK testpmd (virtio-user front-end) against the `vhostsplice run` worker and a tap in a netns.

The worker is started as a user would start it:
    ip netns exec NS vhostsplice run --socket-path SOCK --tap TAP --stats-file STATS.json
The tap is created persistent (multi_queue, vnet_hdr) before the worker starts, so its kernel
counters survive the worker's exit and are read after every process has stopped.

Counting rules (measured with DPDK's own back-end, net_vhost, in place of the worker):
- testpmd txonly "TX-packets" is what rte_eth_tx_burst put into the TX ring; "TX-dropped" is what
  it refused because the ring was full (never seen by any back-end). On SIGINT testpmd stops its
  forwarding core, prints its totals, and only then stops the port (SET_VRING_ENABLE 0,
  GET_VRING_BASE): a back-end keeps consuming in that gap, but the vhost-user protocol does not make
  it drain the ring before it answers GET_VRING_BASE. Measured: vhostsplice consumed exactly
  TX-packets in every run; DPDK's net_vhost usually did, once it left part of a full ring behind
  (its net_tap writes one frame per writev, ~0.8 Mpps). So the rule is:
      TX-packets - queue size <= worker rings.tx.packets <= TX-packets
      worker rings.tx.packets == tap rx_packets + rx_dropped   (exactly)
  (every frame the worker writes to the tap is counted by the kernel as received or dropped).
- testpmd rxonly "RX-packets" counts frames the back-end put in the RX ring. With the frames paced
  well below ring and tap-queue capacity nothing is dropped anywhere, so:
      frames sent into the tap == tap tx_packets == worker rings.rx.packets == testpmd RX-packets
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from support import testpmd

pytestmark = [pytest.mark.root, pytest.mark.interop, pytest.mark.slow,
              pytest.mark.usefixtures("needs_testpmd")]

TAP = "vst0"
SOCKET_TIMEOUT = 60
RUN_SECONDS = 2.0
RX_FRAMES = 2000
RX_COUNTERS = ("rx_packets", "rx_dropped")
TX_COUNTERS = ("tx_packets", "tx_dropped")


class Worker:
    """The back-end under test, in the namespace; its own PID only is signalled or killed."""

    def __init__(self, netns, cmd: list[str], workdir: Path):
        self.sock = workdir / "vhost.sock"
        self.stats_file = workdir / "stats.json"
        self.log = workdir / "worker.log"
        argv = [*cmd, "run", "--socket-path", str(self.sock), "--tap", TAP,
                "--stats-file", str(self.stats_file)]
        self._logf = open(self.log, "wb")
        self.proc = netns.popen(argv, stdin=subprocess.DEVNULL, stdout=self._logf,
                                stderr=subprocess.STDOUT)
        self.argv = argv

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait_socket(self, timeout: float = SOCKET_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sock.is_socket():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"worker {self.argv} did not listen on {self.sock} "
                             f"(exit {self.proc.poll()}):\n{self.output()}")

    def stop(self, timeout: float = 60) -> dict:
        """SIGTERM (unless it already exited), expect exit 0, return its stats JSON."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"worker ignored SIGTERM for {timeout}s:\n{self.output()}") from None
        self._logf.close()
        assert rc == 0, f"worker exited {rc}:\n{self.output()}"
        stats = json.loads(self.stats_file.read_text())
        assert stats["exit"] == 0 and stats["errno"] == "OK", stats
        return stats

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self._logf.close()


@pytest.fixture
def tap_ns(netns):
    """The namespace with a persistent, up, multi-queue vnet_hdr tap TAP."""
    netns.run(["ip", "tuntap", "add", "dev", TAP, "mode", "tap", "multi_queue", "vnet_hdr"])
    netns.run(["ip", "link", "set", TAP, "up"])
    return netns


@pytest.fixture
def worker(tap_ns, vhostsplice_cmd, tmp_path):
    w = Worker(tap_ns, vhostsplice_cmd, tmp_path)
    try:
        w.wait_socket()
        yield w
    finally:
        w.kill()


@pytest.mark.parametrize("size", [64, 1500])
def test_txonly_frames_reach_the_tap(tap_ns, worker, tmp_path, size):
    before = tap_ns.counters(TAP, *RX_COUNTERS)
    with testpmd.virtio_user(worker.sock, mode="txonly", txpkts=size,
                             log=tmp_path / "testpmd.log") as fe:
        fe.wait_started()
        time.sleep(RUN_SECONDS)
        sent = fe.stop()["all"]
    stats = worker.stop()
    after = tap_ns.counters(TAP, *RX_COUNTERS)
    kernel = sum(after[k] - before[k] for k in RX_COUNTERS)
    consumed = stats["rings"]["tx"]["packets"]
    print(f"size {size}: testpmd TX-packets {sent.tx_packets} (TX-dropped {sent.tx_dropped}), "
          f"worker tx {consumed}, tap rx {after['rx_packets'] - before['rx_packets']} "
          f"+ dropped {after['rx_dropped'] - before['rx_dropped']}, "
          f"left in ring {sent.tx_packets - consumed}")
    assert sent.tx_packets > 1000, sent
    assert sent.tx_packets - testpmd.QUEUE_SIZE <= consumed <= sent.tx_packets, (consumed, sent)
    assert kernel == consumed, (kernel, consumed, before, after)


SENDER = textwrap.dedent("""
    import json, os, socket, struct, sys, time
    tap, count = sys.argv[1], int(sys.argv[2])
    deadline = time.monotonic() + 30
    while open(f"/sys/class/net/{tap}/carrier").read().strip() != "1":  # a queue fd is attached
        if time.monotonic() > deadline:
            sys.exit("tap carrier never came up")
        time.sleep(0.05)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((tap, 0))
    head = bytes.fromhex("02aabbccdd01" "02aabbccdd02") + struct.pack("!H", 0x88B5)
    for n in range(count):
        s.send(head + n.to_bytes(4, "big") + bytes(46))
        if n % 32 == 31:
            time.sleep(0.005)  # ~6 kframes/s: far below ring (256) and tap queue (1000) capacity
    print(json.dumps({"sent": count}))
""")


def test_rxonly_frames_from_the_tap_reach_testpmd(tap_ns, worker, tmp_path):
    before = tap_ns.counters(TAP, *TX_COUNTERS)
    with testpmd.virtio_user(worker.sock, mode="rxonly", stats_period=1,
                             log=tmp_path / "testpmd.log") as fe:
        fe.wait_started()
        time.sleep(0.5)  # let the worker start its rings before frames arrive
        proc = tap_ns.run([sys.executable, "-c", SENDER, TAP, str(RX_FRAMES)], timeout=120)
        sent = json.loads(proc.stdout.strip().splitlines()[-1])["sent"]
        live = fe.wait_live(lambda c: c[0] >= sent, timeout=60)
        totals = fe.stop()["all"]
    stats = worker.stop()
    after = tap_ns.counters(TAP, *TX_COUNTERS)
    tap_tx = after["tx_packets"] - before["tx_packets"]
    print(f"sent {sent}, tap tx {tap_tx} (dropped {after['tx_dropped'] - before['tx_dropped']}), "
          f"worker rx {stats['rings']['rx']['packets']}, testpmd RX-packets {totals.rx_packets} "
          f"(live {live})")
    assert after["tx_dropped"] == before["tx_dropped"], (before, after)
    assert tap_tx == sent
    assert totals.rx_packets == sent, (totals, live)
    assert stats["rings"]["rx"]["packets"] == sent, stats
