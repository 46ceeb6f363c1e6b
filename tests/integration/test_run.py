"""`vhostsplice run` end to end, as root: a real tap in a private netns, the built-in front-end as guest."""
from __future__ import annotations

import errno
import json
import os
import signal
import socket
import struct
import subprocess
import time

import pytest

from vhostsplice.host.hostfd import open_tap
from vhostsplice.host.tun import IFF_VNET_HDR, read_tap_info
from vhostsplice.spec import Feature as F, bit
from vhostsplice.testing.frontend import DEFAULT_FEATURES, Frontend
from vhostsplice.serve.selfexec import self_argv, self_env
from vhostsplice.testing.harness import WorkerProcess, collect, demo_frame, live_stats, quiet_tap, tap_socket

from support.waiting import accept_queue, asleep_in_epoll, wait_for

pytestmark = pytest.mark.root
TAP = "vst0"
NETNS = "vsr"        # the ns fixture's namespace prefix (conftest.py)
GUEST_MAC = bytes.fromhex("020000000002")
HOST_IP, GUEST_IP = "10.77.0.1", "10.77.0.2"
OFFLOADS = bit(F.NET_F_CSUM) | bit(F.NET_F_GUEST_CSUM)


@pytest.fixture
def worker(ns, tmp_path):
    with WorkerProcess(str(tmp_path), TAP) as w:
        yield w


def start(worker, features=DEFAULT_FEATURES) -> Frontend:
    return Frontend.connect(worker.sock, features=features).start()


def finish(worker, fe) -> tuple[int, dict]:
    fe.stop()
    fe.close()
    return worker.wait()


def settled(worker) -> bool:
    """The worker has dealt with every connection made to it so far: none waits to be accepted and none
    is attached (its live statistics name no front-end's messages). True also once it is gone: the
    caller asserts it lives."""
    queued = accept_queue(worker.sock)
    if queued is None or queued:
        return queued is None
    stats = live_stats(worker.proc, worker.stats_file)
    return stats is None or "messages" not in stats


@pytest.mark.parametrize("size", [60, 1514])
def test_frames_both_ways_byte_exact(worker, size):
    tap = tap_socket(TAP)
    fe = start(worker)
    sent = [demo_frame(i, size) for i in range(100)]
    fe.send(sent)
    assert len(fe.wait_used(fe.tx, 100)) == 100
    assert collect(tap, 100) == sent
    back = [demo_frame(i, size, src=b"\x02\0\0\0\0\x09") for i in range(100)]
    fe.post_rx(100, 2048)
    for frame in back:
        tap.send(frame)
    assert fe.receive(100) == back
    code, stats = finish(worker, fe)
    assert code == 0 and stats["errno"] == "OK"
    assert stats["rings"]["tx"]["packets"] == 100 and stats["rings"]["rx"]["packets"] == 100
    assert stats["rings"]["tx"]["bytes"] == 100 * size
    assert stats["dirty_log"] == {"log_all": False, "log_size": 0, "log_writes": 0, "log_overflow": 0}


def test_mergeable_rx_spreads_a_large_frame_over_small_buffers(ns, tmp_path):
    w = WorkerProcess(str(tmp_path), TAP, "--mtu", "9000")
    try:
        w.wait_listening()
        tap = tap_socket(TAP)
        fe = start(w)
        fe.post_rx(16, 1024)
        frame = demo_frame(7, 9014)
        tap.send(frame)
        assert fe.receive(1) == [frame]
        code, stats = finish(w, fe)
        assert code == 0 and stats["rings"]["rx"]["chains"] >= 9      # ceil((9014 + 12) / 1024) buffers
    finally:
        w.kill()


def _udp_frame(dst_mac: bytes, payload: bytes, csum: int) -> bytes:
    src, dst = socket.inet_aton(GUEST_IP), socket.inet_aton(HOST_IP)
    udp = struct.pack("!HHHH", 40000, 9999, 8 + len(payload), csum) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", _ip_checksum(ip)) + ip[12:]
    return dst_mac + GUEST_MAC + b"\x08\x00" + ip + udp


def _ip_checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ip_setup():
    subprocess.run(["ip", "addr", "add", f"{HOST_IP}/24", "dev", TAP], check=True)
    subprocess.run(["ip", "neigh", "replace", GUEST_IP, "lladdr", GUEST_MAC.hex(":"), "dev", TAP], check=True)
    link = subprocess.run(["ip", "-j", "link", "show", TAP], check=True, capture_output=True, text=True).stdout
    return bytes.fromhex(json.loads(link)[0]["address"].replace(":", ""))


def test_tx_offload_header_reaches_the_kernel(worker):
    """A UDP packet with a wrong checksum is delivered only because its header says NEEDS_CSUM."""
    fe = start(worker, DEFAULT_FEATURES | OFFLOADS)
    tap_mac = _ip_setup()
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind((HOST_IP, 9999))
    rx.settimeout(2)
    # virtio_net_hdr_v1: flags NEEDS_CSUM, gso none, hdr_len, gso_size, csum_start 34, csum_offset 6
    needs_csum = struct.pack("<BBHHHHH", 1, 0, 0, 0, 34, 6, 0)
    fe.send([_udp_frame(tap_mac, b"partial-ok", 0x1234)], hdr=needs_csum)
    assert rx.recvfrom(100)[0] == b"partial-ok"
    fe.send([_udp_frame(tap_mac, b"bad-csum", 0x1234)])          # plain header: the kernel drops it
    with pytest.raises(socket.timeout):
        rx.recvfrom(100)
    assert finish(worker, fe)[0] == 0


@pytest.mark.parametrize("guest_csum", [True, False])
def test_rx_offload_header_follows_what_the_driver_acked(worker, guest_csum):
    features = DEFAULT_FEATURES | (OFFLOADS if guest_csum else 0)
    fe = start(worker, features)
    _ip_setup()
    fe.post_rx(8, 2048)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.sendto(b"to-the-guest", (GUEST_IP, 7777))
    frame = fe.receive(1, header=True)[0]
    flags, csum_start, csum_offset = frame[0], *struct.unpack_from("<HH", frame, 6)
    assert frame.endswith(b"to-the-guest")
    if guest_csum:          # TUNSETOFFLOAD got TUN_F_CSUM: the checksum is left to the guest
        assert flags & 1 and (csum_start, csum_offset) == (34, 6)
    else:
        assert flags == 0
    assert finish(worker, fe)[0] == 0


def test_no_offloads_tap_carries_no_vnet_header(ns, tmp_path):
    """--no-offloads: the tap is attached without IFF_VNET_HDR (the kernel builds no header per frame),
    frames still pass byte-exact both ways, and the guest's RX header is zero but for num_buffers."""
    w = WorkerProcess(str(tmp_path), TAP, "--no-offloads")
    try:
        w.wait_listening()
        probe = open_tap(TAP, create=False)              # a later queue gets the tap's flags as they are
        assert probe.vnet_hdr_len == 0 and not read_tap_info(probe.fd)[1] & IFF_VNET_HDR
        probe.close()                                    # before traffic: no flow may be steered to it
        tap = tap_socket(TAP)
        fe = start(w, DEFAULT_FEATURES | OFFLOADS)       # asked, not offered: no offload acked
        assert not fe.acked & OFFLOADS
        sent = [demo_frame(i, 1514) for i in range(20)]
        fe.send(sent)
        assert len(fe.wait_used(fe.tx, 20)) == 20
        assert collect(tap, 20) == sent
        back = [demo_frame(i, size, src=b"\x02\0\0\0\0\x09") for i, size in enumerate((60, 1514) * 5)]
        fe.post_rx(10, 2048)
        for frame in back:
            tap.send(frame)
        got = fe.receive(10, header=True)
        assert [g[12:] for g in got] == back
        assert all(g[:10] == bytes(10) and g[10:12] == b"\x01\x00" for g in got)
        code, stats = finish(w, fe)
        assert code == 0 and stats["host"]["vnet_hdr_len"] == 0
        assert stats["rings"]["rx"]["packets"] == 10 and stats["rings"]["tx"]["packets"] == 20
    finally:
        w.kill()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_exits_0_with_stats(worker, sig):
    fe = start(worker)
    fe.send([demo_frame(1, 100)])
    fe.wait_used(fe.tx, 1)
    code, stats = worker.stop(sig)
    assert code == 0
    assert stats["reason"] == "stopped by signal" and stats["rings"]["tx"]["packets"] == 1
    fe.close()


def test_frontend_vanishing_while_rings_run_is_econnreset(worker):
    fe = start(worker)
    fe.close()
    code, stats = worker.wait()
    assert code == errno.ECONNRESET and stats["errno"] == "ECONNRESET"


@pytest.mark.parametrize("rx_buffers", [8, 0])
def test_deleted_tap_is_ebadfd(worker, rx_buffers):
    """Also when the RX ring is starved (no buffers posted) and TX is idle: EPOLLERR tells."""
    fe = start(worker)
    if rx_buffers:
        fe.post_rx(rx_buffers, 2048)
    subprocess.run(["ip", "link", "del", TAP], check=True)
    code, stats = worker.wait(timeout=10)
    assert code == errno.EBADFD, worker.stderr
    fe.close()


def test_second_frontend_is_refused_and_first_keeps_working(worker):
    tap = tap_socket(TAP)
    fe = start(worker)
    intruder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    intruder.connect(worker.sock)
    intruder.settimeout(5)
    assert intruder.recv(1) == b""          # closed by the worker without a word
    fe.send([demo_frame(3, 200)])
    assert collect(tap, 1) == [demo_frame(3, 200)]
    assert finish(worker, fe)[0] == 0


def test_socket_is_mode_0600(worker):
    assert os.stat(worker.sock).st_mode & 0o777 == 0o600


def test_sigusr1_writes_counters_while_running(worker):
    fe = start(worker)
    fe.send([demo_frame(1, 100)] * 3)
    fe.wait_used(fe.tx, 3)
    live = live_stats(worker.proc, worker.stats_file)
    assert live is not None
    assert worker.proc.poll() is None                      # still serving
    assert live["rings"]["tx"]["packets"] == 3 and live["reason"] == ""
    assert finish(worker, fe)[0] == 0


def test_connect_and_close_before_the_frontend_does_not_end_the_worker(worker):
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.connect(worker.sock)
    assert wait_for(lambda: "messages" in (live_stats(worker.proc, worker.stats_file) or {}), 10)   # taken
    probe.close()
    assert wait_for(lambda: settled(worker), 10)         # and dropped
    assert worker.proc.poll() is None
    tap = tap_socket(TAP)
    fe = start(worker)
    fe.send([demo_frame(4, 80)])
    assert collect(tap, 1) == [demo_frame(4, 80)]
    assert finish(worker, fe)[0] == 0


def test_served_socket_is_eaddrinuse(worker, tmp_path):
    second = subprocess.run([*self_argv(), "run",
                             "--socket-path", worker.sock, "--tap", "vst1"], capture_output=True, text=True,
                            env=self_env(), timeout=30)
    assert second.returncode == errno.EADDRINUSE, second.stderr
    assert wait_for(lambda: settled(worker), 10)         # the second one's probe, connected and closed
    assert worker.proc.poll() is None, "the served worker must survive the second one's probe"


def test_cpu_outside_allowed_set_is_einval(ns, tmp_path):
    w = WorkerProcess(str(tmp_path), TAP, "--cpu", "4095")
    code, _ = w.wait()
    assert code == errno.EINVAL


def test_tap_link_down_drops_tx_and_recovers(worker):
    """A downed tap answers writes with EIO: counted as drops, the worker keeps serving."""
    fe = start(worker)
    subprocess.run(["ip", "link", "set", TAP, "down"], check=True)
    fe.send([demo_frame(i, 100) for i in range(5)])
    fe.wait_used(fe.tx, 5)
    subprocess.run(["ip", "link", "set", TAP, "up"], check=True)
    tap = tap_socket(TAP)
    fe.send([demo_frame(9, 100)])
    assert collect(tap, 1) == [demo_frame(9, 100)]
    code, stats = finish(worker, fe)
    assert code == 0
    assert stats["rings"]["tx"]["drops_hostfd"] == 5 and stats["rings"]["tx"]["packets"] == 1


def test_a_lost_kick_heals_within_the_safety_poll(worker):
    """A chain published without a kick (a lost notification) still goes out, and is counted."""
    tap = tap_socket(TAP)
    fe = start(worker)
    fe.send([demo_frame(1, 100)])
    assert collect(tap, 1) == [demo_frame(1, 100)]
    fe.wait_used(fe.tx, 1)
    # Lost means published while the worker sleeps in epoll: let it finish the batch and its re-check of
    # the ring after re-enabling notifications (which would rightly take a chain published meanwhile).
    assert wait_for(lambda: asleep_in_epoll(worker.proc.pid), 10)
    fe.tx.add_out([demo_frame(2, 100)])                 # published, never kicked
    assert collect(tap, 1, timeout=5) == [demo_frame(2, 100)]
    code, stats = finish(worker, fe)
    assert code == 0 and stats["lost_kicks"] == 1


def test_an_idle_connected_pair_makes_no_wake_ups(worker):
    """After traffic one safety poll looks at the rings; finding nothing it disarms, so an idle ring
    costs no wake-up (issue 18; before, one a second). Each SIGUSR1 sample is one wake-up itself."""
    quiet_tap(TAP)
    tap = tap_socket(TAP)
    fe = start(worker)
    fe.post_rx(8, 2048)
    fe.send([demo_frame(1, 100)])
    assert collect(tap, 1) == [demo_frame(1, 100)]
    fe.wait_used(fe.tx, 1)

    def idle_growth(window: float = 2.5) -> int:
        first = live_stats(worker.proc, worker.stats_file)["wakeups"]
        time.sleep(window)              # stays: no wake-up in an idle window is the behaviour under test
        return live_stats(worker.proc, worker.stats_file)["wakeups"] - first
    growth = [idle_growth() for _ in range(3)]
    assert growth[-1] == 1, growth      # the sample's own SIGUSR1, nothing else
    fe.send([demo_frame(2, 100)])       # and a kick still wakes it
    assert collect(tap, 1) == [demo_frame(2, 100)]
    code, stats = finish(worker, fe)
    assert code == 0 and stats["lost_kicks"] == 0


def test_busy_poll_polls_after_a_batch_and_still_sleeps_when_idle(ns, tmp_path):
    """--busy-poll 2000: after each batch the worker keeps polling (counted), frames still go both ways
    byte-exact, and once traffic ends it sleeps: the one window after the last batch runs out in the quiet
    that follows, and no window opens without a batch before it (the safety poll and SIGUSR1 open none)."""
    with WorkerProcess(str(tmp_path), TAP, "--busy-poll", "2000") as w:
        quiet_tap(TAP)
        tap = tap_socket(TAP)
        fe = start(w)
        sent = [demo_frame(i, 300) for i in range(20)]
        fe.send(sent)
        assert collect(tap, 20) == sent
        fe.post_rx(20, 2048)
        back = [demo_frame(i, 300, src=b"\x02\0\0\0\0\x09") for i in range(20)]
        for frame in back:
            tap.send(frame)
        assert fe.receive(20) == back
        first = live_stats(w.proc, w.stats_file)
        last = demo_frame(99, 300)
        fe.send([last])                 # one more batch: its window, with nothing after it, runs out
        assert collect(tap, 1) == [last]
        time.sleep(2.5)                 # stays: no busy poll in an idle window is the behaviour under test
        second = live_stats(w.proc, w.stats_file)
        code, stats = finish(w, fe)
    busy = stats["busy_poll"]
    assert code == 0 and busy["usec"] == 2000 and busy["polls"] > 0 and busy["timed_out"] > 0, busy
    windows = {k: second["busy_poll"][k] - first["busy_poll"][k] for k in ("found_work", "timed_out")}
    assert windows == {"found_work": 0, "timed_out": 1}, (first["busy_poll"], second["busy_poll"])


def _udp_flows(count: int, dst_port: int) -> list[bytes]:
    """Ethernet/IPv4/UDP frames from `count` source ports: as many flows for the tap's queue steering."""
    frames = []
    for port in range(20000, 20000 + count):
        udp = struct.pack("!HHHH", port, dst_port, 8 + 4, 0) + port.to_bytes(4, "big")
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                         socket.inet_aton(HOST_IP), socket.inet_aton(GUEST_IP))
        frames.append(GUEST_MAC + b"\x02\0\0\0\0\x09" + b"\x08\x00" + ip + udp)
    return frames


def _drain(fd: int) -> int:
    n = 0
    while True:
        try:
            os.read(fd, 65536)
        except BlockingIOError:
            return n
        n += 1


def test_tap_queue_is_detached_while_the_frontend_disables_the_pair(worker):
    """SET_VRING_ENABLE 0 on both rings (a guest going from 4 pairs to 1) detaches the worker's tap queue,
    so the kernel steers no host flow to a queue no ring reads; enabling attaches it again. Seen with
    QEMU: without it, host flows hashed to a disabled pair's queue were lost."""
    from vhostsplice.host.hostfd import open_tap
    from vhostsplice.vhostuser.protocol import Req, VringState, encode_vring_state

    fe = start(worker)
    other = open_tap(TAP, create=False)          # a second queue of the same tap, read by the test
    tap = tap_socket(TAP)
    try:
        def enable(on: int) -> None:
            for index in (0, 1):
                fe.command(Req.SET_VRING_ENABLE, encode_vring_state(VringState(index, on)))
            fe.request(Req.GET_FEATURES)         # a round trip: the worker has acted on both

        enable(0)
        _drain(other.fd)
        for frame in _udp_flows(64, 9):
            tap.send(frame)
        seen = {"other": 0, "worker": 0}

        def arrived() -> bool:
            seen["other"] += _drain(other.fd)
            seen["worker"] += len(fe.take_received())
            return sum(seen.values()) >= 64
        wait_for(arrived, 5)            # a flow sent to the disabled pair's queue never arrives: a timeout
        assert seen == {"other": 64, "worker": 0}, "a flow went to the disabled pair's queue"
        enable(1)
        fe.post_rx(64, 2048)
        fe.notify(0)
        seen.update(other=0, worker=0)
        for frame in _udp_flows(64, 10):
            tap.send(frame)
        assert wait_for(arrived, 10), seen
        assert 0 < seen["other"] < 64 and seen["worker"] == 64 - seen["other"]     # both queues take flows again
    finally:
        other.close()
        tap.close()
    assert finish(worker, fe)[0] == 0
