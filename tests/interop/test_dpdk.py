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
- testpmd rxonly "RX-packets" counts frames the back-end put in the RX ring. The sender keeps at most
  RX_WINDOW frames in flight (sent, not yet read from the tap by the back-end: the tap's tx_packets,
  which the kernel counts as a reader takes a frame), far below ring and tap-queue capacity, so
  nothing is dropped anywhere:
      frames sent into the tap == tap tx_packets == worker rings.rx.packets == testpmd RX-packets

Every test runs on the ring layouts of testpmd.LAYOUTS (virtio-user packed_vq/in_order), and checks
from the worker's acked features that the rings ran that layout: a front-end or back-end falling back
to split rings (or dropping IN_ORDER) fails instead of passing as a split run.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from support import testpmd
from support.waiting import wait_for
from vhostsplice.spec import Feature as F

pytestmark = [pytest.mark.root, pytest.mark.interop, pytest.mark.slow,
              pytest.mark.usefixtures("needs_testpmd")]

TAP = "vst0"
SOCKET_TIMEOUT = 60
# txonly runs until the tap has this many frames from the worker: more than 2**16, so a split ring's
# 16-bit indices wrap, and 390 times the 256-entry ring, so a packed ring's wrap counters flip as often.
TX_FRAMES = 100_000
TX_TIMEOUT = 60
RX_FRAMES = 2000
RX_WINDOW = testpmd.QUEUE_SIZE // 2   # frames in flight at most: below the ring and the tap queue (1000)
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
        wait_for(lambda: self.sock.is_socket() or self.proc.poll() is not None, timeout)
        if not self.sock.is_socket():
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


def assert_layout(stats: dict, layout: testpmd.Layout) -> None:
    """The worker's acked features name LAYOUT: RING_PACKED and IN_ORDER acked exactly as it asked."""
    assert "features" in stats, stats
    acked = int(stats["features"], 16)
    ran = {"packed": bool(acked >> F.F_RING_PACKED & 1), "in_order": bool(acked >> F.F_IN_ORDER & 1)}
    assert ran == {"packed": layout.packed_vq, "in_order": layout.in_order}, \
        f"{layout.id} ({layout.devargs}) negotiated features {stats['features']}: {ran}"


# txonly: 64 B frames (the most chains per second) on every layout; 1500 B (a full-MTU buffer: each layout's
# descriptor lengths and copy) on split and packed; packed with IN_ORDER differs from packed only in how
# used descriptors are written and freed, which the frame size does not change: 64 B only.
TX_CASES = [("split-in-order", 64), ("split-in-order", 1500), ("packed", 64), ("packed", 1500),
            ("packed-in-order", 64)]


@pytest.mark.parametrize("layout,size", [(testpmd.LAYOUTS[name], size) for name, size in TX_CASES],
                         ids=[f"{name}-{size}B" for name, size in TX_CASES])
def test_txonly_frames_reach_the_tap(tap_ns, worker, tmp_path, layout, size):
    before = tap_ns.counters(TAP, *RX_COUNTERS)

    def at_tap() -> int:
        after = tap_ns.counters(TAP, *RX_COUNTERS)
        return sum(after[k] - before[k] for k in RX_COUNTERS)

    with testpmd.virtio_user(worker.sock, mode="txonly", txpkts=size, layout=layout,
                             log=tmp_path / "testpmd.log") as fe:
        fe.wait_started()
        reached = wait_for(lambda: at_tap() >= TX_FRAMES, timeout=TX_TIMEOUT, interval=0.1)
        sent = fe.stop()["all"]
    stats = worker.stop()
    after = tap_ns.counters(TAP, *RX_COUNTERS)
    kernel = sum(after[k] - before[k] for k in RX_COUNTERS)
    consumed = stats["rings"]["tx"]["packets"]
    print(f"{layout.id} size {size}: testpmd TX-packets {sent.tx_packets} (TX-dropped {sent.tx_dropped}), "
          f"worker tx {consumed}, tap rx {after['rx_packets'] - before['rx_packets']} "
          f"+ dropped {after['rx_dropped'] - before['rx_dropped']}, "
          f"left in ring {sent.tx_packets - consumed}")
    assert_layout(stats, layout)
    assert reached, f"the tap got {kernel} frames in {TX_TIMEOUT} s, not {TX_FRAMES}: {sent}, {stats['rings']}"
    assert sent.tx_packets - testpmd.QUEUE_SIZE <= consumed <= sent.tx_packets, (consumed, sent)
    assert kernel == consumed, (kernel, consumed, before, after)


SENDER = textwrap.dedent("""
    import json, socket, struct, sys, time
    tap, count, window = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

    def wait(condition, what, timeout=30):
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                sys.exit(f"timed out waiting for {what}")
            time.sleep(0.0002)

    def read(attr):
        with open(f"/sys/class/net/{tap}/{attr}") as f:
            return f.read().strip()

    wait(lambda: read("carrier") == "1", "the tap's carrier (a queue fd attached)")
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((tap, 0))
    head = bytes.fromhex("02aabbccdd01" "02aabbccdd02") + struct.pack("!H", 0x88B5)
    base = int(read("statistics/tx_packets"))     # frames a reader (the back-end) has taken from the tap
    for n in range(count):
        wait(lambda: n - (int(read("statistics/tx_packets")) - base) < window,
             f"the back-end to take frame {n - window} from the tap")
        s.send(head + n.to_bytes(4, "big") + bytes(46))
    print(json.dumps({"sent": count}))
""")


@pytest.mark.parametrize("layout", list(testpmd.LAYOUTS.values()), ids=list(testpmd.LAYOUTS))
def test_rxonly_frames_from_the_tap_reach_testpmd(tap_ns, worker, tmp_path, layout):
    before = tap_ns.counters(TAP, *TX_COUNTERS)
    with testpmd.virtio_user(worker.sock, mode="rxonly", stats_period=1, layout=layout,
                             log=tmp_path / "testpmd.log") as fe:
        fe.wait_started()
        proc = tap_ns.run([sys.executable, "-c", SENDER, TAP, str(RX_FRAMES), str(RX_WINDOW)], timeout=120)
        sent = json.loads(proc.stdout.strip().splitlines()[-1])["sent"]
        live = fe.wait_live(lambda c: c[0] >= sent, timeout=60)
        totals = fe.stop()["all"]
    stats = worker.stop()
    after = tap_ns.counters(TAP, *TX_COUNTERS)
    tap_tx = after["tx_packets"] - before["tx_packets"]
    print(f"{layout.id}: sent {sent}, tap tx {tap_tx} (dropped {after['tx_dropped'] - before['tx_dropped']}), "
          f"worker rx {stats['rings']['rx']['packets']}, testpmd RX-packets {totals.rx_packets} "
          f"(live {live})")
    assert_layout(stats, layout)
    assert after["tx_dropped"] == before["tx_dropped"], (before, after)
    assert tap_tx == sent
    assert totals.rx_packets == sent, (totals, live)
    assert stats["rings"]["rx"]["packets"] == sent, stats
