"""`vhostsplice run --host-fd N`: inherited host fds of every kind, end to end.

Two workers joined by a socketpair form an L2 link between two pure-Python front-ends (no root
needed); an inherited tap fd opened by the test (root, private netns); and the table of fds that
cannot serve, each with its exit code and a message that says why.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import subprocess

import pytest

from vhostsplice.serve.selfexec import self_argv, self_env
from vhostsplice.spec import Feature as F, bit
from vhostsplice.testing.frontend import DEFAULT_FEATURES, Frontend
from vhostsplice.testing.harness import WorkerProcess, collect, demo_frame, tap_socket

OFFLOADS = (F.NET_F_CSUM, F.NET_F_GUEST_CSUM, F.NET_F_HOST_TSO4, F.NET_F_GUEST_TSO4)


class HostFdWorker(WorkerProcess):
    """`vhostsplice run --socket-path SOCK --host-fd N ...`, fd N passed down with pass_fds."""

    def __init__(self, workdir: str, fd: int, *extra: str, name: str = "w"):
        self.sock = os.path.join(workdir, f"{name}.sock")
        self.stats_file = os.path.join(workdir, f"{name}.stats.json")
        self.argv = [*self_argv(), "run", "--socket-path", self.sock, "--host-fd", str(fd),
                     "--stats-file", self.stats_file, *extra]
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env=self_env(), pass_fds=(fd,))


def frames_from(mac_byte: int, count: int, size: int) -> list[bytes]:
    return [demo_frame(i, size, src=bytes([2, 0, 0, 0, 0, mac_byte])) for i in range(count)]


@pytest.fixture
def link(tmp_path, request):
    """Two workers on the two ends of a socketpair of the parametrized type, each with a front-end."""
    sock_type, extra = request.param
    a_end, b_end = socket.socketpair(socket.AF_UNIX, sock_type)
    workers, fronts = [], []
    try:
        for name, end in (("a", a_end), ("b", b_end)):
            workers.append(HostFdWorker(str(tmp_path), end.fileno(), *extra, name=name))
        a_end.close()
        b_end.close()               # the workers hold the only copies now
        for w in workers:
            w.wait_listening()
            fronts.append(Frontend.connect(w.sock, features=DEFAULT_FEATURES | _offload_mask()).start())
        yield workers, fronts
    finally:
        for fe in fronts:
            close_once(fe)
        for w in workers:
            w.kill()
        a_end.close()
        b_end.close()


def _offload_mask() -> int:
    out = 0
    for f in OFFLOADS:
        out |= bit(f)
    return out


def finish(workers, fronts) -> list[tuple[int, dict]]:
    """Stop every front-end's rings first (a worker whose peer goes while its rings run ends with EPIPE)."""
    for fe in fronts:
        fe.stop()
    for fe in fronts:
        close_once(fe)
    return [w.wait() for w in workers]


def close_once(fe: Frontend) -> None:
    if not getattr(fe, "_closed_by_test", False):
        fe._closed_by_test = True
        fe.close()


LINKS = [pytest.param((socket.SOCK_SEQPACKET, ()), id="seqpacket"), pytest.param((socket.SOCK_DGRAM, ()), id="dgram"),
         pytest.param((socket.SOCK_STREAM, ("--framing", "qemu")), id="stream-qemu")]


@pytest.mark.parametrize("link", LINKS, indirect=True)
@pytest.mark.parametrize("size", [60, 1514])
def test_socketpair_is_an_l2_link_between_two_frontends(link, size):
    (wa, wb), (fa, fb) = link
    fa.post_rx(64, 2048)
    fb.post_rx(64, 2048)
    a_to_b, b_to_a = frames_from(0xA, 50, size), frames_from(0xB, 50, size)
    fa.send(a_to_b)
    fb.send(b_to_a)
    assert fb.receive(50) == a_to_b
    assert fa.receive(50) == b_to_a
    (code_a, st_a), (code_b, st_b) = finish((wa, wb), (fa, fb))
    assert (code_a, code_b) == (0, 0)
    for st in (st_a, st_b):
        assert st["rings"]["tx"]["packets"] == 50 and st["rings"]["tx"]["bytes"] == 50 * size
        assert st["rings"]["rx"]["packets"] == 50 and st["rings"]["rx"]["drops_hostfd"] == 0


@pytest.mark.parametrize("link", LINKS, indirect=True)
def test_no_offloads_offered_and_received_header_is_zero(link):
    (wa, wb), (fa, fb) = link
    for fe in (fa, fb):
        assert fe.offered & _offload_mask() == 0, "a socket without vnet header cannot honour offloads"
        assert fe.acked & bit(F.F_VERSION_1)
    fb.post_rx(4, 2048)
    sent = frames_from(0xA, 3, 200)
    # a hostile or confused driver sets header fields anyway: they must not reach the peer
    fa.send(sent, hdr=bytes([1, 1]) + bytes(8) + b"\x05\x00")
    got = fb.receive(3, header=True)
    assert [g[12:] for g in got] == sent
    assert all(g[:10] == bytes(10) and g[10:12] == b"\x01\x00" for g in got)
    finish((wa, wb), (fa, fb))


@pytest.mark.parametrize("link", [LINKS[0]], indirect=True)
def test_peer_worker_killed_ends_seqpacket_worker_with_epipe(link):
    (wa, wb), (fa, fb) = link
    fa.post_rx(4, 2048)
    wb.kill()
    close_once(fb)
    code, stats = wa.wait()
    assert code == errno.EPIPE and stats["errno"] == "EPIPE"


# -- fds that cannot serve ------------------------------------------------------------------------

def _run_with(fd: int | None, *extra: str, pass_fds=()) -> subprocess.CompletedProcess:
    argv = [*self_argv(), "run", "--socket-path", "/nonexistent-dir/w.sock", *extra]
    if fd is not None:
        argv += ["--host-fd", str(fd)]
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=self_env(),
                          pass_fds=pass_fds, timeout=60)


def _bad_fds():
    """(id, factory) -> factory() gives (fd, keepalive objects, expected exit, words in the message)."""
    def regular():
        f = open("/proc/self/stat", "rb")
        return f.fileno(), [f], errno.EINVAL, "regular file"

    def pipe():
        r, w = os.pipe()
        return r, [_Fd(r), _Fd(w)], errno.EINVAL, "pipe"

    def eventfd():
        e = os.eventfd(0)
        return e, [_Fd(e)], errno.EINVAL, "eventfd"

    def stream():
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        return a.fileno(), [a, b], errno.EINVAL, "--framing qemu"

    def unconnected_dgram():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        return s.fileno(), [s], errno.EINVAL, "not connected"

    def unconnected_udp():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        return s.fileno(), [s], errno.EINVAL, "not connected"

    def tcp():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        return s.fileno(), [s], errno.EINVAL, "stream socket"

    def devnull():
        fd = os.open("/dev/null", os.O_RDWR)
        return fd, [_Fd(fd)], errno.EINVAL, "not a tap"

    return [regular, pipe, eventfd, stream, unconnected_dgram, unconnected_udp, tcp, devnull]


class _Fd:
    def __init__(self, fd: int):
        self.fd = fd

    def close(self) -> None:
        os.close(self.fd)


@pytest.mark.parametrize("factory", _bad_fds(), ids=lambda f: f.__name__)
def test_fd_that_cannot_serve_is_refused_with_its_errno(factory):
    fd, keep, code, words = factory()
    try:
        res = _run_with(fd, pass_fds=(fd,))
    finally:
        for k in keep:
            k.close()
    assert res.returncode == code, res.stderr
    assert words in res.stderr and f"--host-fd {fd}" in res.stderr
    assert "Traceback" not in res.stderr


def test_fd_not_open_is_ebadf():
    fd = 1000
    res = _run_with(fd)
    assert res.returncode == errno.EBADF, res.stderr
    assert "not an open file descriptor" in res.stderr


def test_host_fd_that_is_the_control_socket_is_einval():
    ctl, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        argv = [*self_argv(), "run", "--fd", str(ctl.fileno()), "--host-fd", str(ctl.fileno())]
        res = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=self_env(),
                             pass_fds=(ctl.fileno(),), timeout=60)
    finally:
        ctl.close()
        other.close()
    assert res.returncode == errno.EINVAL, res.stderr
    assert "control socket" in res.stderr


@pytest.mark.parametrize("args,words", [
    (["--tap", "vsh0", "--host-fd", "0"], "exactly one of"),
    (["--packet", "lo", "--host-fd", "0"], "exactly one of"),
    (["--host-fd", "0", "--bridge", "br0"], "--bridge applies to --tap only"),
    (["--tap", "vsh0", "--framing", "qemu"], "--framing applies to --host-fd only"),
    (["--host-fd", "0", "--framing", "tcp"], "Invalid value for '--framing'"),
    ([], "--tap NAME, --host-fd N or --packet IFNAME"),
])
def test_host_side_options_conflict_is_einval(args, words):
    res = _run_with(None, *args)
    assert res.returncode == errno.EINVAL, res.stderr
    assert words in res.stderr


# -- an inherited tap fd (root) ---------------------------------------------------------------------

TUNSETIFF, TUNSETVNETHDRSZ = 0x400454CA, 0x400454D8
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
TAP = "vsh0"
NETNS = "vsh"        # the ns fixture's namespace prefix (conftest.py)


def open_tap_fd(name: str, flags: int, hdr_len: int | None = None) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
    if hdr_len is not None:
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", hdr_len))
    subprocess.run(["ip", "link", "set", name, "up"], check=True, timeout=30)
    return fd


@pytest.mark.root
@pytest.mark.parametrize("flags,hdr_len,offloads", [
    (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, 12, True),
    (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, 10, True),
    (IFF_TAP | IFF_NO_PI, None, False),
], ids=["vnet12", "vnet10", "no-vnet"])
def test_inherited_tap_fd_carries_frames_both_ways(ns, tmp_path, flags, hdr_len, offloads):
    fd = open_tap_fd(TAP, flags, hdr_len)
    try:
        w = HostFdWorker(str(tmp_path), fd)
    finally:
        os.close(fd)
    try:
        w.wait_listening()
        tap = tap_socket(TAP)
        fe = Frontend.connect(w.sock, features=DEFAULT_FEATURES | _offload_mask()).start()
        assert bool(fe.offered & bit(F.NET_F_GUEST_CSUM)) == offloads
        sent = frames_from(0x1, 20, 1514)
        fe.send(sent)
        assert len(fe.wait_used(fe.tx, 20)) == 20
        assert collect(tap, 20) == sent
        back = frames_from(0x9, 20, 600)
        fe.post_rx(64, 2048)        # with guest TSO the device waits for room for a 64 KiB frame
        for frame in back:
            tap.send(frame)
        got = fe.receive(20, header=True)
        assert [g[12:] for g in got] == back
        assert all(g[10:12] == b"\x01\x00" for g in got)       # num_buffers, written by the device
        fe.stop()
        fe.close()
        code, stats = w.wait()
        assert code == 0, w.stderr
        assert stats["rings"]["tx"]["packets"] == 20 and stats["rings"]["rx"]["packets"] == 20
        io = stats["host"].pop("io")              # the inherited tap in io_uring batches
        assert stats["host"] == {"kind": "tap", "name": TAP, "vnet_hdr_len": hdr_len or 0}
        assert io["path"] == "io_uring" and io["tx_sqes"] == 20, io
        # RX batches need chains that hold the largest frame: with guest TSO (64 KiB) these 2 KiB ones
        # are merged per frame instead, one readv each (else each frame read by an SQE or a trickle's readv)
        assert io["rx_sqes"] == 0 if offloads else io["rx_sqes"] + io["trickles"] >= 20, io
    finally:
        w.kill()


@pytest.mark.root
def test_tun_fd_is_einval(ns):
    """A layer-3 tun carries IP packets, not Ethernet frames. (A tap without IFF_NO_PI is refused too,
    but this kernel, 6.18, reports IFF_NO_PI from TUNGETIFF whatever was asked, so it is not tested.)"""
    fd = open_tap_fd(TAP, 0x0001 | IFF_NO_PI)
    try:
        res = _run_with(fd, pass_fds=(fd,))
    finally:
        os.close(fd)
    assert res.returncode == errno.EINVAL, res.stderr
    assert "tun (layer 3)" in res.stderr


# -- QEMU's -netdev stream framing ----------------------------------------------------------------------

def test_stream_framing_speaks_qemu_wire_format(tmp_path):
    """The test is the QEMU end: it writes and reads 4-byte big-endian lengths and frames itself."""
    ours, qemu = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    w = HostFdWorker(str(tmp_path), ours.fileno(), "--framing", "qemu")
    ours.close()
    try:
        w.wait_listening()
        fe = Frontend.connect(w.sock).start()
        sent = frames_from(0x1, 10, 700)
        fe.send(sent)
        assert len(fe.wait_used(fe.tx, 10)) == 10
        want = b"".join(len(f).to_bytes(4, "big") + f for f in sent)
        qemu.settimeout(5)
        got = b""
        while len(got) < len(want):
            got += qemu.recv(65536)
        assert got == want
        back = frames_from(0x2, 10, 300)
        fe.post_rx(16, 2048)
        wire = b"".join(len(f).to_bytes(4, "big") + f for f in back)
        for i in range(0, len(wire), 997):          # arbitrary stream splits
            qemu.sendall(wire[i:i + 997])
        assert fe.receive(10) == back
        fe.stop()
        qemu.close()                                 # QEMU goes: rings are stopped, so no error yet
        close_once(fe)
        code, stats = w.wait()
        assert code == 0, w.stderr
        io = stats["host"].pop("io")              # a byte stream: one syscall per frame, and why
        assert stats["host"] == {"kind": "unix-stream", "name": "socketpair", "vnet_hdr_len": 0}
        assert (io["path"], io["why"], io["enters"]) == ("readv/writev", "a byte stream", 0), io
    finally:
        w.kill()
        qemu.close()


def test_framing_qemu_on_a_datagram_socket_is_einval():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        res = _run_with(a.fileno(), "--framing", "qemu", pass_fds=(a.fileno(),))
    finally:
        a.close()
        b.close()
    assert res.returncode == errno.EINVAL, res.stderr
    assert "applies to stream sockets" in res.stderr


def test_a_kick_and_the_get_vring_base_that_closes_its_fd_in_one_epoll_round_are_both_handled(tmp_path):
    """GET_VRING_BASE closes the ring's kick fd; a kick already reported by the same epoll round must not
    be read from the closed fd. The worker is stopped (SIGSTOP) while the message and then the kick are
    sent, so one epoll round returns both, the message first. It used to die there (EBADF: exit 1, a
    traceback), 3 in 40 runs of the L2-link tests hit it by chance under load."""
    import signal
    import struct

    from support.waiting import wait_for
    from vhostsplice.vhostuser import protocol as P
    from vhostsplice.spec import Req
    host, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    w = HostFdWorker(str(tmp_path), host.fileno())
    host.close()
    try:
        w.wait_listening()
        fe = Frontend.connect(w.sock).start()
        os.kill(w.proc.pid, signal.SIGSTOP)
        stat = f"/proc/{w.proc.pid}/stat"
        assert wait_for(lambda: open(stat).read().rsplit(")", 1)[1].split()[0] == "T", 10), "not stopped"
        try:
            fe.send_raw(Req.GET_VRING_BASE, P.encode_vring_state(P.VringState(1, 0)))
            os.write(fe.kick[1], struct.pack("<Q", 1))
        finally:
            os.kill(w.proc.pid, signal.SIGCONT)
        assert P.decode_vring_state(fe._reply(Req.GET_VRING_BASE)).num == 0
        assert w.proc.poll() is None, w.proc.stderr.read()
        fe.stop()
        fe.close()
        code, _ = w.wait()
        assert code == 0, w.stderr
    finally:
        w.kill()
        peer.close()
