"""Host packet fds: the host side of a queue pair.

Tap queues: we open /dev/net/tun ourselves (pyroute2 can create taps but cannot hand us the queue fd)
and attach with TUNSETIFF; pyroute2 only does link set-up (MTU, up, bridge master: netlink.py). `HostFd`
is what every kind of host fd becomes; inherited fds and AF_PACKET sockets are hostfd_inspect.py's; the
kernel's numbers and the ioctl helpers are tun.py's.
Every kernel failure keeps its errno (errors.from_oserror); bad arguments are ConfigError (EINVAL).
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import struct
from dataclasses import dataclass, field

from ..errors import ConfigError, HostFdError, SetupError, from_oserror
from .netlink import IFF_UP, bridge_index, iproute, link_setup
from .tun import (IFF_ATTACH_QUEUE, IFF_DETACH_QUEUE, IFF_VNET_HDR, IFREQ, IFREQ_MTU, NET_HDR_V1_LEN, PACKET_VNET_HDR,
                  PACKET_VNET_HDR_SZ, SIOCGIFFLAGS, SIOCGIFMTU, SIOCSIFFLAGS, SOL_PACKET, TAP_FLAGS, TUN_PATH,
                  TUNSETIFF, TUNSETOFFLOAD, TUNSETQUEUE, TUNSETVNETHDRSZ, VNET_HDR_LENS, ifreq_ioctl, ioctl,
                  link_mtu, read_tap_info, sockopt, validate_ifname)

log = logging.getLogger("vhostsplice")

TUN_KINDS = ("tap", "macvtap")     # char devices that take TUNSETOFFLOAD
DEFAULT_MTU = 1500                 # assumed where neither --mtu nor the interface says


@dataclass(frozen=True)
class HostState:
    """What the negotiated state asks of the host fd (backend.py's Backend.host_state, after each request).

    offload: the TUNSETOFFLOAD flags of the acked guest offloads (None: features with VERSION_1 not set
    yet, the fd keeps what it has); vnet_hdr: an offload is acked, so a --packet socket carries its vnet
    header (None: no SET_FEATURES yet); attached: the pair's tap queue takes host flows (False while the
    front-end has disabled every ring of a pair it had enabled)."""
    offload: int | None = None
    vnet_hdr: bool | None = None
    attached: bool = True


@dataclass
class HostFd:
    """An open host packet fd. `created` is True when opening it created the interface.

    vnet_hdr_len: virtio-net header bytes the fd carries in front of each frame (12, 10 or 0); with 0
    no offload can be honoured. empty_ok: a 0-byte read is an empty datagram, not the peer closing;
    refused_drop: ECONNREFUSED loses one packet (connected UDP) instead of ending the worker.
    stream: a stream socket framed as QEMU's -netdev stream (`--framing qemu`).
    """

    fd: int
    kind: str
    name: str
    vnet_hdr_len: int
    mtu: int
    created: bool
    empty_ok: bool = False
    refused_drop: bool = False
    stream: bool = False        # a byte stream in QEMU's -netdev stream framing (4-byte length, frame)
    vnet_hdr_switchable: bool = False   # --packet with a vnet header: it follows the negotiated offloads
    uso_ok: bool = False        # its kernel path takes GSO_UDP_L4 both ways (offloads.probe_uso)
    # what apply() has made of the fd: its TUNSETOFFLOAD flags (None: not set through apply yet), whether
    # its tap queue is attached (it is when opened) and can be detached, whether a --packet socket
    # carries its vnet header (it does when opened with one)
    offload_now: int | None = field(default=None, repr=False)
    queue_attached: bool = field(default=True, repr=False)
    detachable: bool = field(default=True, repr=False)
    hdr_on: bool = field(default=True, repr=False)

    @property
    def offloads_ok(self) -> bool:
        """Whether checksum/GSO offloads can be offered: only with a vnet header to carry them."""
        return self.vnet_hdr_len > 0

    @property
    def is_socket(self) -> bool:
        return self.kind not in TUN_KINDS

    def apply(self, state: HostState) -> int | None:
        """Make the fd what the negotiated state asks: the one place it is configured, after every request
        (Backend.handle). Only what differs from what the fd is now is done: a request that changes
        nothing costs no syscall.

        - offload: TUNSETOFFLOAD (set_offload).
        - attached: a tap queue is attached while the front-end has a ring of the pair enabled; when it
          disables both (a guest going from 4 pairs to 1) the queue is detached so the kernel steers no
          host flow to it, and attached again before a ring runs (set_queue_attached). A queue without
          the knob (not a tap, a single-queue tap) stays attached and is not asked again.
        - vnet_hdr: --packet: the socket carries a vnet header only while the driver acked an offload
          (checksum, TSO, UFO, ECN, either direction); with none acked it carries bare frames, which spares
          the kernel the header on every frame (set_packet_vnet_hdr). The rings' first batch runs only
          after the request is handled, and SET_FEATURES cannot change offloads while rings run, so no
          frame is read or written with the other header layout.

        Returns the header bytes the fd carries from now on when that changed (the datapath follows), else None."""
        if state.offload is not None and state.offload != self.offload_now:
            self.set_offload(state.offload)
            self.offload_now = state.offload
        if state.attached != self.queue_attached and self.detachable:
            if self.set_queue_attached(state.attached) or state.attached:
                self.queue_attached = state.attached
                log.info("tap queue %s (rings %s)", "attached" if state.attached else "detached",
                         "enabled" if state.attached else "disabled")
            else:
                self.detachable = False
        if state.vnet_hdr is None or not self.vnet_hdr_switchable or state.vnet_hdr == self.hdr_on:
            return None
        now = self.set_packet_vnet_hdr(state.vnet_hdr)
        self.hdr_on = state.vnet_hdr
        log.info("packet socket %s: vnet header %d bytes (offloads %s)", self.name, now,
                 "acked" if state.vnet_hdr else "not acked")
        return now

    def set_offload(self, tun_flags: int) -> None:
        """TUNSETOFFLOAD with spec.TUN_F_* flags: the offloads the guest side can take.

        Only tap/macvtap queues have the knob; an AF_PACKET socket's vnet header is all or nothing
        (set_packet_vnet_hdr, which apply calls after SET_FEATURES), and a socket without one is
        never offered offloads (flags 0 is all it can be asked)."""
        if self.is_socket and (self.vnet_hdr_len or not tun_flags):
            return
        if self.is_socket:
            raise ConfigError(f"{self.kind} {self.name}: offloads {tun_flags:#x} asked of an fd without vnet header")
        if self.fd < 0:
            raise SetupError(f"TUNSETOFFLOAD on {self.name}: the fd is closed", errno.EBADF)
        try:
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, tun_flags)
        except OSError as exc:
            raise from_oserror(exc, f"TUNSETOFFLOAD {tun_flags:#x} on {self.name}") from None

    def set_packet_vnet_hdr(self, on: bool) -> int:
        """--packet: carry the vnet header (vnet_hdr_len bytes) or not, from the next frame on; returns
        the header length the socket now carries. The kernel allows changing PACKET_VNET_HDR(_SZ) on a
        bound socket as long as it has no PACKET_MMAP ring (EBUSY then); a frame already queued gets the
        header state of the recvmsg that takes it. Only a socket we opened is switched (an inherited one
        may be shared)."""
        if not self.vnet_hdr_switchable or self.fd < 0:
            raise ConfigError(f"{self.kind} {self.name}: its vnet header cannot be switched")
        with socket.socket(fileno=os.dup(self.fd)) as sock:
            try:
                if not on:
                    sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 0)
                elif self.vnet_hdr_len == NET_HDR_V1_LEN:
                    sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR_SZ, NET_HDR_V1_LEN)
                else:
                    sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
                now = sockopt(sock, SOL_PACKET, PACKET_VNET_HDR_SZ)
                if now is None:       # kernels before 6.2: only the on/off option
                    now = 10 if sockopt(sock, SOL_PACKET, PACKET_VNET_HDR) else 0
            except OSError as exc:
                raise from_oserror(exc, f"PACKET_VNET_HDR {int(on)} on {self.name}") from None
        if now != (self.vnet_hdr_len if on else 0):
            raise SetupError(f"packet socket on {self.name}: vnet header is {now} bytes after asking for "
                             f"{self.vnet_hdr_len if on else 0}", errno.EIO)
        return now

    def set_queue_attached(self, attached: bool) -> bool:
        """TUNSETQUEUE: attach or detach this queue of a multi-queue tap (the fd stays open). A detached
        queue takes no share of the host's flows, which the kernel would otherwise steer to a queue no
        ring reads. Returns False where there is no such knob (not a tap, a single-queue tap)."""
        if self.kind != "tap" or self.fd < 0:
            return False
        flags = IFF_ATTACH_QUEUE if attached else IFF_DETACH_QUEUE
        try:
            fcntl.ioctl(self.fd, TUNSETQUEUE, IFREQ.pack(b"", flags))
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                return False            # not multi-queue, or already in that state
            raise from_oserror(exc, f"TUNSETQUEUE {'attach' if attached else 'detach'} on {self.name}") from None
        return True

    def socket_error(self) -> None:
        """A socket reported EPOLLERR: take its pending error (SO_ERROR, which clears it) and decide.

        Transient (counted by the caller as nothing): ECONNREFUSED on UDP (an ICMP for an earlier
        datagram), ENETDOWN while the interface of an AF_PACKET socket still exists. Else HostFdError."""
        try:
            with socket.socket(fileno=os.dup(self.fd)) as sock:
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError as exc:
            code = exc.errno or errno.EIO
        if code == 0 or (code == errno.ECONNREFUSED and self.refused_drop):
            return
        if code == errno.ENETDOWN and self.kind == "packet":
            if link_mtu(self.name, via=self.fd) is not None:
                return          # the link went down; frames are dropped until it is up again
            raise HostFdError(f"packet socket on {self.name}: the interface was deleted", errno.EBADFD)
        fatal = errno.EPIPE if code in (errno.ECONNREFUSED, errno.ECONNRESET, errno.ENOTCONN) else errno.EIO
        raise HostFdError(f"{self.kind} {self.name}: {os.strerror(code)} ({errno.errorcode.get(code, code)})",
                          fatal)

    def close(self) -> None:
        """Close the queue fd (idempotent). A tap we created vanishes with its last queue."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


def open_tap(name: str, *, create: bool = True, mtu: int | None = None, bridge: str | None = None,
             up: bool = True, vnet_hdr_len: int = 12) -> HostFd:
    """Open one queue of tap NAME (creating the tap unless create=False) and set its link up."""
    raw = validate_ifname(name)
    _validate_options(mtu, bridge, vnet_hdr_len)
    if mtu is None and bridge is None:
        return _open_tap_plain(raw, name, create=create, up=up, vnet_hdr_len=vnet_hdr_len)
    with iproute() as ipr:
        existed = bool(ipr.link_lookup(ifname=name))
        if not existed and not create:
            raise SetupError(f"tap {name}: no such interface (and create=False)", errno.ENODEV)
        master = bridge_index(ipr, bridge)
        fd, hdr_len = _attach_queue(raw, name, vnet_hdr_len)
        try:
            actual_mtu = link_setup(ipr, name, mtu=mtu, master=master, up=up)
        except BaseException:
            os.close(fd)
            raise
    return HostFd(fd=fd, kind="tap", name=name, vnet_hdr_len=hdr_len, mtu=actual_mtu,
                  created=not existed)


def _open_tap_plain(raw: bytes, name: str, *, create: bool, up: bool, vnet_hdr_len: int) -> HostFd:
    """open_tap without --mtu or --bridge: link up and MTU through two ioctls, no netlink library.

    Importing pyroute2 alone takes a worker from ~14 to ~34 MiB RSS (benchmarks/results/dpdk_bench.md);
    the common case needs none of it. Like the netlink path, the link is changed only if it is not up
    already, so a tap's owner attaches without CAP_NET_ADMIN."""
    try:
        socket.if_nametoindex(name)
        existed = True
    except OSError:
        existed = False
    if not existed and not create:
        raise SetupError(f"tap {name}: no such interface (and create=False)", errno.ENODEV)
    fd, hdr_len = _attach_queue(raw, name, vnet_hdr_len)
    try:
        # any socket answers SIOCGIF*/SIOCSIFFLAGS: a unix one, the only family serve's filter allows
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            flags = IFREQ.unpack(ifreq_ioctl(sock, SIOCGIFFLAGS, IFREQ.pack(raw, 0), name))[1]
            if up and not flags & IFF_UP:
                ifreq_ioctl(sock, SIOCSIFFLAGS, IFREQ.pack(raw, flags | IFF_UP), name)
            actual_mtu = IFREQ_MTU.unpack(ifreq_ioctl(sock, SIOCGIFMTU, IFREQ_MTU.pack(raw, 0), name))[1]
    except BaseException:
        os.close(fd)
        raise
    return HostFd(fd=fd, kind="tap", name=name, vnet_hdr_len=hdr_len, mtu=actual_mtu, created=not existed)


def _validate_options(mtu: int | None, bridge: str | None, vnet_hdr_len: int) -> None:
    if mtu is not None and not 68 <= mtu <= 65535:
        raise ConfigError(f"invalid MTU {mtu}: 68..65535")
    if bridge is not None:
        validate_ifname(bridge)
    if vnet_hdr_len not in (0, *VNET_HDR_LENS):
        raise ConfigError(f"invalid vnet header length {vnet_hdr_len}: 0 (none) or one of {VNET_HDR_LENS}")


def _attach_queue(raw_name: bytes, name: str, vnet_hdr_len: int) -> tuple[int, int]:
    """open /dev/net/tun, TUNSETIFF, TUNSETVNETHDRSZ, TUNSETOFFLOAD 0 -> (queue fd, header bytes it carries).

    vnet_hdr_len 0 attaches without IFF_VNET_HDR: bare frames, and the kernel builds no header for
    each frame it hands over (measured here: 0.12-0.17 us less kernel time per received frame). The
    flags are the tap's, not the queue's: the first queue attached sets them and a later one gets
    them as they are, so the header is read back (TUNGETIFF, TUNGETVNETHDRSZ) instead of assumed."""
    try:
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise from_oserror(exc, f"open {TUN_PATH}") from None
    flags = TAP_FLAGS if vnet_hdr_len else TAP_FLAGS & ~IFF_VNET_HDR
    steps = [(TUNSETIFF, IFREQ.pack(raw_name, flags),
              f"TUNSETIFF {name} (tap, multi-queue{', vnet_hdr' if vnet_hdr_len else ''})")]
    if vnet_hdr_len:
        steps.append((TUNSETVNETHDRSZ, struct.pack("i", vnet_hdr_len), f"TUNSETVNETHDRSZ {vnet_hdr_len} on {name}"))
    steps.append((TUNSETOFFLOAD, 0, f"TUNSETOFFLOAD 0 on {name}"))
    try:
        for request, arg, what in steps:
            ioctl(fd, request, arg, what)
        actual = read_tap_info(fd)
    except BaseException:
        os.close(fd)
        raise
    hdr_len = actual[2] if actual[1] & IFF_VNET_HDR else 0
    if hdr_len not in (0, *VNET_HDR_LENS):
        os.close(fd)
        raise ConfigError(f"tap {name} has a {hdr_len}-byte vnet header (set by a queue attached before this "
                          f"one); supported: {VNET_HDR_LENS}")
    if hdr_len != vnet_hdr_len:
        log.info("tap %s: other queues attached it with %s vnet header: this queue follows", name,
                 f"a {hdr_len}-byte" if hdr_len else "no")
    return fd, hdr_len


def errno_text(exc: OSError) -> str:
    code = exc.errno or errno.EIO
    return f"{os.strerror(code)}, {errno.errorcode.get(code, code)}"
