"""The host fd in io_uring batches (vs_uring.c) against one readv/writev per frame: the same bytes, the
same used entries in the same order, the same counters, on split and packed rings, with IN_ORDER,
EVENT_IDX and MRG_RXBUF; a full host fd, a dropped write, a fatal error and faulty chains inside a
batch; and the fallback when no ring can be had.  Every other core test also runs both ways (conftest's
host_io fixture); these compare the two side by side.
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
import socket

import pytest

from vhostsplice.device.datapath import RX_STARVED, TX_BLOCKED, Datapath
from vhostsplice.errors import GuestFaultError, HostFdError
from vhostsplice.spec import NET_HDR_LEN

IO_URING_SETUP = 425                 # the generic syscall table's number (x86_64, arm64)
LAYOUTS = [dict(), dict(event_idx=True), dict(packed=True), dict(packed=True, in_order=True),
           dict(packed=True, event_idx=True, in_order=True)]
BATCH_BOUNDS = ("batches", "notify_sent", "notify_suppressed")    # counters that follow where batches end
LAYOUT_IDS = ["split", "split-event-idx", "packed", "packed-in-order", "packed-in-order-event-idx"]


def both(make_rig, scenario, **kw):
    """Run scenario(rig) on a rig of each path; returns {path: (what scenario returned, stats, host_io)}."""
    out = {}
    for path in ("io_uring", "readv/writev"):
        rig = make_rig(host_io=path, **kw)
        got = scenario(rig)
        out[path] = (got, rig.dp.stats(), rig.dp.host_io())
    assert out["io_uring"][2]["path"] == "io_uring" and out["readv/writev"][2]["path"] == "readv/writev"
    return out


def same(out):
    """Both paths saw the same results and counters (the batched one in fewer syscalls), all but how many
    batches (polls) that took and how often they called the driver (at each batch's end): the trickle rule
    ends a batch after its first frame's readv (VS_MORE), so that frame is published before the rest."""
    (a, sa, _), (b, sb, _) = out["io_uring"], out["readv/writev"]
    assert a == b
    assert _but_batches(sa) == _but_batches(sb)
    return out["io_uring"][2]


def _but_batches(stats):
    return {k: {f: v for f, v in ring.items() if f not in BATCH_BOUNDS} if isinstance(ring, dict) else ring
            for k, ring in stats.items()}


def frame(n, seed=0):
    return bytes((i * 7 + seed) & 0xFF for i in range(n))


def hdr(flags=0):
    return bytes([flags]) + bytes(11)


def frames(n, size=60, seed=0):
    return [frame(size + (i % 7), seed=seed + i) for i in range(n)]


@pytest.mark.parametrize("kw", LAYOUTS, ids=LAYOUT_IDS)
def test_tx_batches_send_the_same_bytes_in_the_same_order(make_rig, kw):
    sent = frames(100) + frames(3, size=1514, seed=9)

    def scenario(rig):
        heads = rig.tx.add_out(sent[:70], split=2) + rig.tx.add_out(sent[70:])
        flags = rig.poll_idle()
        return flags, rig.wire(), rig.tx.used(), heads
    io = same(both(make_rig, scenario, **kw))
    assert both(make_rig, scenario, **kw)["io_uring"][0][1] == [bytes(12) + f for f in sent]
    assert io["tx_sqes"] == len(sent) and io["enters"] <= len(sent) // 32 + 3    # one syscall per batch


@pytest.mark.parametrize("kw", LAYOUTS + [dict(mrg=True), dict(mrg=True, packed=True, in_order=True)],
                         ids=LAYOUT_IDS + ["split-mrg", "packed-in-order-mrg"])
def test_rx_batches_fill_the_same_chains_with_the_same_bytes(make_rig, kw):
    pkts = [hdr(flags=1) + f for f in frames(90, size=60) + frames(5, size=1514, seed=3)]

    def scenario(rig):
        rig.rx.add_in(120, 2048)
        rig.inject(*pkts)
        flags = rig.poll_idle()
        used = rig.rx.used()
        return flags, used, rig.rx.packets(used, mrg=kw.get("mrg", False))
    out = both(make_rig, scenario, **kw)
    io = same(out)
    flags, used, got = out["io_uring"][0]
    assert flags == 0 and [p[12:] for p in got] == [p[12:] for p in pkts]
    assert 0 < io["enters"] < len(pkts) // 4 and io["rx_sqes"] >= len(pkts) - 2    # the trickle rule: 2 readv


def _lone_frames(rig, n, seed=0):
    """n wake-ups of one frame each, every one polled until the datapath stops asking for more."""
    for i in range(n):
        rig.inject(hdr() + frame(100, seed=seed + i))
        assert rig.poll_idle() == 0


def test_a_trickle_takes_one_readv_per_look(make_rig):
    """The trickle rule: one frame per wake-up is read by one readv, never an io_uring_enter; the look
    after it (the batch that follows a batch of one frame) is one readv too, which says EAGAIN."""
    rig = make_rig(host_io="io_uring")
    rig.rx.add_in(16, 2048)
    _lone_frames(rig, 5)
    io = rig.dp.host_io()
    assert (io["enters"], io["rx_sqes"], io["confirms"]) == (0, 0, 0)
    assert (io["trickles"], io["trickle_bursts"]) == (10, 0)
    assert [n for _h, n in rig.rx.used()] == [12 + 100] * 5


def test_a_burst_goes_on_to_the_io_uring_batches(make_rig):
    """Two frames back to back (the second trickle readv got one too): the rest of the burst is read in
    io_uring batches, and the batch after a batch of several frames goes straight to the ring."""
    rig = make_rig(host_io="io_uring")
    rig.rx.add_in(64, 2048)
    pkts = [hdr() + f for f in frames(40)]
    rig.inject(*pkts)
    assert rig.poll_idle() == 0
    io = rig.dp.host_io()
    assert (io["trickles"], io["trickle_bursts"]) == (2, 1)
    assert io["rx_sqes"] >= len(pkts) - 2 and 0 < io["enters"] <= 6
    assert [p[12:] for p in rig.rx.packets(rig.rx.used())] == [p[12:] for p in pkts]
    _lone_frames(rig, 1, seed=90)                 # after the burst: one enter, no trickle readv
    after = rig.dp.host_io()
    assert after["enters"] == io["enters"] + 1 and after["trickles"] == io["trickles"]
    assert rig.dp.poll() == 0                     # the look after a batch of one frame: one readv (EAGAIN)
    _lone_frames(rig, 1, seed=91)                 # a trickle again: a readv for the frame, one for the look
    last = rig.dp.host_io()
    assert last["enters"] == after["enters"] and last["trickles"] == after["trickles"] + 3


def test_rx_chains_smaller_than_the_largest_frame_go_one_frame_at_a_time(make_rig):
    """Chains below rx_max could need merging: read one per syscall, with the same result."""
    pkts = [hdr() + f for f in frames(10, size=300)]

    def scenario(rig):
        rig.rx.add_in(12, 1024)
        rig.inject(*pkts)
        rig.poll_idle()
        used = rig.rx.used()
        return used, rig.rx.packets(used, mrg=True)
    io = same(both(make_rig, scenario, mrg=True, rx_max=2048))
    assert io["rx_sqes"] == 0


@pytest.mark.parametrize("kw", LAYOUTS, ids=LAYOUT_IDS)
def test_a_full_host_fd_mid_batch_leaves_that_chain_and_the_rest(make_rig, kw):
    """EAGAIN part-way through a batch: the chains before it complete, it and every later one wait
    (VS_TX_BLOCKED) and go out in order once the fd drains."""
    sent = frames(40, size=1400)

    def scenario(rig):
        rig.host.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        rig.tx.add_out(sent)
        flags = rig.dp.poll()
        first = rig.wire()
        used_first = len(rig.tx.used())
        last_avail = rig.stats("tx")["last_avail_idx"]
        wire = list(first)
        for _ in range(100):           # the peer reads, the fd has room again, the rest goes out
            if not rig.dp.poll() & TX_BLOCKED and len(wire) == len(sent):
                break
            wire += rig.wire()
        return flags, len(first), used_first, last_avail, wire
    out = both(make_rig, scenario, **kw)
    same(out)
    flags, n_first, used_first, _last, wire = out["io_uring"][0]
    assert flags & TX_BLOCKED and 0 < n_first < len(sent) and used_first == n_first
    assert wire == [bytes(12) + f for f in sent]


def test_a_write_the_host_fd_refuses_is_dropped_and_the_batch_goes_on(make_rig):
    """EMSGSIZE for one datagram in the middle of a batch: counted, completed, the rest sent in order."""
    sent = frames(10)
    big = frame(200_000)

    def scenario(rig):
        rig.host.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        rig.tx.add_out(sent[:4] + [big] + sent[4:])
        rig.poll_idle()
        return rig.wire(), [n for _h, n in rig.tx.used()]
    out = both(make_rig, scenario, mem_size=8 << 20)
    same(out)
    wire, used = out["io_uring"][0]
    assert wire == [bytes(12) + f for f in sent] and len(used) == 11
    assert out["io_uring"][1]["tx"]["drops_hostfd"] == 1


def test_a_fatal_host_fd_error_in_an_rx_batch_delivers_what_came_before(make_rig):
    """The peer sends three frames and closes: the three land in order, then EPIPE (exit 32)."""
    pkts = [hdr() + f for f in frames(3)]

    def scenario(rig):
        rig.rx.add_in(8, 2048)
        rig.inject(*pkts)
        rig.peer.shutdown(socket.SHUT_WR)
        with pytest.raises(HostFdError) as exc:
            rig.poll_idle()                 # the io_uring path: the trickle's readv, then the batch
        used = rig.rx.used()
        return exc.value.errno, [p[12:] for p in rig.rx.packets(used)], rig.stats("rx")["last_avail_idx"]
    out = both(make_rig, scenario)
    same(out)
    assert out["io_uring"][0][:2] == (errno.EPIPE, [p[12:] for p in pkts])


def test_a_fatal_host_fd_error_in_a_tx_batch(make_rig):
    def scenario(rig):
        rig.tx.add_out(frames(5))
        rig.peer.close()
        with pytest.raises(HostFdError) as exc:
            rig.dp.poll()
        return exc.value.errno, rig.stats("tx")["last_avail_idx"], rig.tx.used()
    out = both(make_rig, scenario)
    same(out)
    assert out["io_uring"][0][0] == errno.EPIPE


def _fault_middle(rig, count, at, writable):
    """count single-descriptor chains, the one at `at` pointing outside guest memory (split ring)."""
    q = rig.rx if writable else rig.tx
    heads = q.add_in(count, 2048, publish=False) if writable else q.add_out(frames(count), publish=False)
    q.raw_desc(heads[at], 0xDEAD_0000_0000, 64, 2 if writable else 0, 0)
    q.publish()
    return heads


@pytest.mark.parametrize("fault_exit", [False, True])
def test_faulty_chains_inside_a_tx_batch(make_rig, fault_exit):
    def scenario(rig):
        _fault_middle(rig, 12, 5, False)
        try:
            rig.poll_idle()
            res = "ok"
        except GuestFaultError as exc:
            res = exc.errno
        return res, rig.wire(), rig.tx.used()
    out = both(make_rig, scenario, fault_exit=fault_exit)
    same(out)
    res, wire, used = out["io_uring"][0]
    assert res == (errno.EFAULT if fault_exit else "ok")
    assert len(wire) == (5 if fault_exit else 11) and len(used) == (6 if fault_exit else 12)


def test_faulty_chains_and_holes_inside_an_rx_batch(make_rig):
    """A faulty chain completes with length 0 where it stands; a frame dropped as short (a hole) lets
    the next frame move up into its chain, as one readv per chain would have put it there."""
    lead = [hdr() + f for f in frames(2, seed=50)]     # the trickle rule's two readvs, then the batches
    pkts = [hdr() + f for f in frames(6)]
    short = b"\x01" * 5

    def scenario(rig):
        _fault_middle(rig, 18, 5, True)
        rig.inject(*lead, pkts[0], short, *pkts[1:3], short, short, *pkts[3:])
        rig.poll_idle()
        used = rig.rx.used()
        return [n for _h, n in used], [p[12:] for p in rig.rx.packets([u for u in used if u[1]])]
    out = both(make_rig, scenario)
    same(out)
    lens, got = out["io_uring"][0]
    assert got == [p[12:] for p in lead + pkts] and lens.count(0) == 1 and lens.index(0) == 5
    assert out["io_uring"][1]["rx"]["drops_short"] == 3 and out["io_uring"][2]["rx_copies"] > 0


def _refuse_io_uring_setup() -> None:
    """This process's io_uring_setup fails with EPERM from now on (as with kernel.io_uring_disabled): a
    seccomp filter of three BPF instructions, everything else allowed."""
    class Insn(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                    ("k", ctypes.c_uint32)]

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(Insn))]
    ld_nr, jeq, ret = 0x20, 0x15, 0x06           # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_RET|K
    insns = (Insn * 4)(Insn(ld_nr, 0, 0, 0), Insn(jeq, 0, 1, IO_URING_SETUP),
                       Insn(ret, 0, 0, 0x00050000 | errno.EPERM), Insn(ret, 0, 0, 0x7FFF0000))
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(38, 1, 0, 0, 0) == 0                                        # PR_SET_NO_NEW_PRIVS
    assert libc.prctl(22, 2, ctypes.byref(Prog(4, insns)), 0, 0) == 0             # PR_SET_SECCOMP, FILTER


def test_the_fallback_when_io_uring_cannot_be_set_up():
    """A process whose io_uring_setup fails keeps one readv/writev per frame and says why."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            _refuse_io_uring_setup()
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            dp = Datapath(a.fileno())
            os.write(w, f"{dp.enable_uring()}|{dp.host_io()['path']}|{dp.uring_fd}".encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        said = f.read().decode()
    os.waitpid(pid, 0)
    assert said == "io_uring_setup: EPERM|readv/writev|-1"
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        dp = Datapath(a.fileno())
        assert dp.host_io()["path"] == "readv/writev" and dp.host_io()["why"] == "not asked for"
        assert dp.enable_uring() == "" and dp.host_io()["path"] == "io_uring" and dp.uring_fd >= 0
        dp.close()
        assert dp.uring_fd == -1 and dp.host_io()["path"] == "readv/writev"


def test_a_byte_stream_stays_on_one_syscall_per_frame():
    a, b = socket.socketpair()
    try:
        dp = Datapath(a.fileno(), host_hdr_len=0, stream=True)
        assert dp.enable_uring() == "a byte stream" and dp.uring_fd == -1
        assert dp.host_io()["path"] == "readv/writev"
        dp.close()
    finally:
        a.close()
        b.close()


def test_rx_starved_and_broken_rings_report_as_before(make_rig):
    def scenario(rig):
        rig.inject(hdr() + frame(60))
        return rig.dp.poll()
    out = both(make_rig, scenario)
    same(out)
    assert out["io_uring"][0] & RX_STARVED


def _present(addr: int) -> bool:
    """Whether this process's page at addr is mapped (/proc/self/pagemap's bit 63)."""
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(addr // 4096 * 8)
        return bool(int.from_bytes(f.read(8), "little") >> 63)


@pytest.mark.parametrize("rx_max", [4 * 4096, NET_HDR_LEN + 1514], ids=["rx_max-chain", "rx_max-1526"])
@pytest.mark.parametrize("mrg", [False, True], ids=["single", "mrg"])
def test_a_chain_that_waits_for_a_frame_gets_its_pages_mapped(make_rig, mrg, rx_max):
    """A readv that found no frame (the trickle's, or the per-frame path's) reads one byte of each page of
    the chain left waiting, so the next frame's copy into it takes no page fault (guest memory is mapped
    lazily: a page the worker never touched faults on the first store); only as far as a frame can fill
    (rx_max): a chain the guest made larger costs no more."""
    area = mmap.mmap(-1, 4 << 20)                 # anonymous and never touched: no page is mapped yet
    ref = ctypes.c_char.from_buffer(area)
    base = ctypes.addressof(ref)
    del ref
    rig = make_rig(buf=area, mrg=mrg, rx_max=rx_max)
    head, = rig.rx.add_in(1, 4 * 4096)
    (gpa, size), = rig.rx._chains[head].bufs
    start = base + gpa - rig.mem.gpa_base
    inside = range((start + 4095) // 4096 * 4096, (start + size) // 4096 * 4096, 4096)
    assert len(inside) >= 3 and not any(_present(a) for a in inside)
    assert rig.poll_idle() == 0                   # no frame: EAGAIN
    reach = start + min(size, rx_max)
    assert [_present(a) for a in inside] == [a < reach for a in inside]
    assert _present(inside[-1]) == (rx_max >= size)         # 1526: the chain's last pages stay untouched
    rig.inject(hdr() + frame(100))
    rig.poll_idle()
    assert [n for _h, n in rig.rx.used()] == [112]
