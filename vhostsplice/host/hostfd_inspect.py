"""Host packet fds other than the taps we open: inherited fds (`run --host-fd N`) and AF_PACKET sockets.

`inspect_fd` says what an inherited fd is and how to use it: a tap or macvtap queue, an AF_PACKET
socket, a connected AF_UNIX datagram/seqpacket socket, a connected UDP socket, or (with `--framing
qemu`) a connected stream socket carrying QEMU's length-prefixed frames; anything else is refused with
the reason. `open_packet` makes the AF_PACKET socket of `run --packet IFNAME`. Every kernel failure
keeps its errno (errors.from_oserror); bad arguments are ConfigError (EINVAL).
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
import struct
from collections.abc import Callable

from ..errors import ConfigError, from_oserror
from .hostfd import DEFAULT_MTU, TUN_KINDS, HostFd, errno_text
from .tun import (ETH_P_ALL, IFF_NO_PI, IFF_TAP, IFF_VNET_HDR, IFREQ, NET_HDR_V1_LEN, PACKET_IGNORE_OUTGOING,
                  PACKET_VNET_HDR, PACKET_VNET_HDR_SZ, SOL_PACKET, TUN_MISC, TUNGETIFF, TUNGETVNETHDRSZ, VNET_HDR_LENS,
                  link_mtu, sockopt, validate_ifname)


FRAMINGS = ("none", "qemu")


def inspect_fd(fd: int, *, mtu: int | None = None, control_fd: int | None = None, framing: str = "none") -> HostFd:
    """What inherited fd N is, and how to use it: -> HostFd (owning fd), or an error that says why not.

    EBADF: not an open fd. EINVAL: an fd that cannot carry Ethernet frames one per call (a regular
    file, a pipe, an eventfd, a stream socket without framing, an unconnected or layer-3 socket, the
    control socket). mtu: the largest frame payload to accept (default: the interface's MTU, else 1500).
    framing "qemu": a connected stream socket carries QEMU's length-prefixed frames (-netdev stream).
    """
    if framing not in FRAMINGS:
        raise ConfigError(f"--framing {framing!r}: one of {', '.join(FRAMINGS)}")
    if not isinstance(fd, int) or fd < 0:
        raise ConfigError(f"--host-fd {fd!r}: not a file descriptor number")
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise from_oserror(exc, f"--host-fd {fd}: not an open file descriptor") from None
    if control_fd is not None and _same_file(st, control_fd):
        raise ConfigError(f"--host-fd {fd} is the worker's own vhost-user control socket")
    if stat.S_ISCHR(st.st_mode):
        host = _inspect_tun(fd, st)
    elif stat.S_ISSOCK(st.st_mode):
        host = _inspect_socket(fd, framing)
    else:
        raise ConfigError(f"--host-fd {fd} is {_describe(fd, st)}: it cannot carry packets (need a tap or "
                          f"macvtap queue, or an AF_PACKET, unix datagram/seqpacket or connected UDP socket)")
    if framing == "qemu" and not host.stream:
        raise ConfigError(f"--framing qemu applies to stream sockets; --host-fd {fd} is a {host.kind} fd")
    _set_nonblocking(fd)
    host.mtu = mtu or (link_mtu(host.name) if host.kind in (*TUN_KINDS, "packet") else None) or DEFAULT_MTU
    return host


def _same_file(st: os.stat_result, other_fd: int) -> bool:
    try:
        other = os.fstat(other_fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (other.st_dev, other.st_ino)


def _describe(fd: int, st: os.stat_result) -> str:
    """'a regular file', 'a pipe', 'anon_inode:[eventfd]'... for error messages."""
    for test, text in ((stat.S_ISREG, "a regular file"), (stat.S_ISFIFO, "a pipe"),
                       (stat.S_ISDIR, "a directory"), (stat.S_ISBLK, "a block device")):
        if test(st.st_mode):
            return text
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"a file of mode {st.st_mode:#o}"


def _inspect_tun(fd: int, st: os.stat_result) -> HostFd:
    """A tun/tap or macvtap queue: TUNGETIFF says which interface and flags, TUNGETVNETHDRSZ the header."""
    is_tun = (os.major(st.st_rdev), os.minor(st.st_rdev)) == TUN_MISC
    try:
        raw_name, flags = IFREQ.unpack(fcntl.ioctl(fd, TUNGETIFF, bytes(IFREQ.size)))
    except OSError as exc:
        why = {errno.EBADFD: "a /dev/net/tun fd not attached to an interface (no TUNSETIFF yet)",
               errno.ENOLINK: "a macvtap queue whose interface is gone"}.get(
            exc.errno, f"a character device that is not a tap or macvtap queue ({errno_text(exc)})")
        raise ConfigError(f"--host-fd {fd}: {why}") from None
    name = raw_name.rstrip(b"\0").decode("utf-8", "surrogateescape")
    if not flags & IFF_TAP:
        raise ConfigError(f"--host-fd {fd}: {name} is a tun (layer 3) device; Ethernet frames need a tap")
    if not flags & IFF_NO_PI:
        raise ConfigError(f"--host-fd {fd}: tap {name} was attached without IFF_NO_PI (packet information "
                          f"prefix); attach it with IFF_NO_PI")
    hdr_len = 0
    if flags & IFF_VNET_HDR:
        try:
            hdr_len = struct.unpack("i", fcntl.ioctl(fd, TUNGETVNETHDRSZ, bytes(4)))[0]
        except OSError as exc:
            raise from_oserror(exc, f"--host-fd {fd}: TUNGETVNETHDRSZ on {name}") from None
        if hdr_len not in VNET_HDR_LENS:
            raise ConfigError(f"--host-fd {fd}: {name} has a {hdr_len}-byte vnet header; "
                              f"supported: {VNET_HDR_LENS} (TUNSETVNETHDRSZ)")
    return HostFd(fd=fd, kind="tap" if is_tun else "macvtap", name=name, vnet_hdr_len=hdr_len,
                  mtu=0, created=False)


def _inspect_socket(fd: int, framing: str) -> HostFd:
    sock = socket.socket(fileno=fd)       # only to ask; detached before returning
    try:
        family, kind = sock.family, sock.type
        inspect = _SOCKET_KINDS.get((family, kind))
        if kind == socket.SOCK_STREAM and framing == "qemu" and family in _STREAM_KINDS:
            inspect = _inspect_stream
        if inspect is None:
            raise ConfigError(f"--host-fd {fd}: {_sock_text(family, kind)} cannot carry Ethernet frames one per "
                              f"call{_STREAM_HINT if kind == socket.SOCK_STREAM else ''}")
        return inspect(fd, sock)
    finally:
        sock.detach()


_STREAM_HINT = (" (a stream socket has no frame boundaries: add --framing qemu for QEMU's 4-byte length-"
                "prefixed framing, as -netdev stream sends it, or use a SOCK_SEQPACKET or SOCK_DGRAM socket)")


_STREAM_KINDS = {socket.AF_UNIX: "unix-stream", socket.AF_INET: "tcp", socket.AF_INET6: "tcp"}


def _inspect_stream(fd: int, sock: socket.socket) -> HostFd:
    kind = _STREAM_KINDS[sock.family]
    peer = _peer(fd, sock, f"{kind} socket")
    return HostFd(fd=fd, kind=kind, name=peer, vnet_hdr_len=0, mtu=0, created=False, stream=True)


def _sock_text(family: int, kind: int) -> str:
    fam = getattr(family, "name", str(family))
    typ = getattr(kind, "name", str(kind))
    return f"socket {fam}/{typ}"


def _peer(fd: int, sock: socket.socket, what: str) -> str:
    try:
        peer = sock.getpeername()
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise ConfigError(f"--host-fd {fd}: {what} is not connected to a peer (connect it first, "
                              f"or use a socketpair)") from None
        raise from_oserror(exc, f"--host-fd {fd}: getpeername") from None
    if isinstance(peer, tuple):
        return f"{peer[0]}:{peer[1]}"
    return str(peer or "socketpair")


def _inspect_unix(fd: int, sock: socket.socket) -> HostFd:
    kind = "unix-seqpacket" if sock.type == socket.SOCK_SEQPACKET else "unix-dgram"
    peer = _peer(fd, sock, f"unix {kind[5:]} socket")
    return HostFd(fd=fd, kind=kind, name=peer, vnet_hdr_len=0, mtu=0, created=False,
                  empty_ok=kind == "unix-dgram")


def _inspect_udp(fd: int, sock: socket.socket) -> HostFd:
    if sockopt(sock, socket.SOL_SOCKET, socket.SO_PROTOCOL) != socket.IPPROTO_UDP:
        raise ConfigError(f"--host-fd {fd}: {_sock_text(sock.family, sock.type)} is not UDP")
    peer = _peer(fd, sock, "UDP socket")
    return HostFd(fd=fd, kind="udp", name=peer, vnet_hdr_len=0, mtu=0, created=False,
                  empty_ok=True, refused_drop=True)


def _inspect_packet(fd: int, sock: socket.socket) -> HostFd:
    """AF_PACKET SOCK_RAW bound to one interface; its vnet header state is asked, not assumed."""
    name = sock.getsockname()[0]
    if not name:
        raise ConfigError(f"--host-fd {fd}: AF_PACKET socket not bound to an interface "
                          f"(bind it to one, protocol ETH_P_ALL)")
    try:   # our own TX must not come back as RX
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    except OSError as exc:
        raise from_oserror(exc, f"--host-fd {fd}: PACKET_IGNORE_OUTGOING") from None
    hdr_len = 0
    if sockopt(sock, SOL_PACKET, PACKET_VNET_HDR):
        hdr_len = sockopt(sock, SOL_PACKET, PACKET_VNET_HDR_SZ) or 10
    return HostFd(fd=fd, kind="packet", name=name, vnet_hdr_len=hdr_len, mtu=0, created=False)


def open_packet(name: str, *, vnet_hdr: bool, mtu: int | None = None) -> HostFd:
    """An AF_PACKET SOCK_RAW socket bound to interface NAME for every protocol (ETH_P_ALL).

    vnet_hdr: PACKET_VNET_HDR on (12 bytes with PACKET_VNET_HDR_SZ, else the 10-byte legacy header),
    so checksum/GSO offloads pass through. Our own transmissions are not read back
    (PACKET_IGNORE_OUTGOING). Kernel errors keep their errno (ENODEV: no such interface)."""
    raw = validate_ifname(name)
    try:   # protocol 0 until bound: nothing from other interfaces is queued in between
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, 0)
    except OSError as exc:
        raise from_oserror(exc, "socket(AF_PACKET, SOCK_RAW)") from None
    try:
        hdr_len = _packet_setup(sock, raw, name, vnet_hdr)
    except BaseException:
        sock.close()
        raise
    fd = sock.detach()
    return HostFd(fd=fd, kind="packet", name=name, vnet_hdr_len=hdr_len, created=False,
                  mtu=mtu or link_mtu(name) or DEFAULT_MTU, vnet_hdr_switchable=hdr_len > 0)


def _packet_setup(sock: socket.socket, raw: bytes, name: str, vnet_hdr: bool) -> int:
    steps = [(PACKET_IGNORE_OUTGOING, 1, "PACKET_IGNORE_OUTGOING")]
    if vnet_hdr:
        steps.append((PACKET_VNET_HDR, 1, "PACKET_VNET_HDR"))
    try:
        for opt, value, what in steps:
            sock.setsockopt(SOL_PACKET, opt, value)
        hdr_len = 0
        if vnet_hdr:
            hdr_len = 10
            try:
                sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR_SZ, NET_HDR_V1_LEN)
                hdr_len = NET_HDR_V1_LEN
            except OSError as exc:
                if exc.errno != errno.ENOPROTOOPT:    # kernels before 6.2: the 10-byte header
                    raise
        what = f"bind to {name}"
        sock.bind((raw.decode("utf-8", "surrogateescape"), ETH_P_ALL))
    except OSError as exc:
        raise from_oserror(exc, f"AF_PACKET socket: {what}") from None
    return hdr_len


def _refuse_packet_dgram(fd: int, sock: socket.socket) -> HostFd:
    raise ConfigError(f"--host-fd {fd}: an AF_PACKET SOCK_DGRAM socket strips the Ethernet header; "
                      f"use SOCK_RAW")


_SOCKET_KINDS: dict[tuple[int, int], Callable[[int, socket.socket], HostFd]] = {
    (socket.AF_UNIX, socket.SOCK_DGRAM): _inspect_unix,
    (socket.AF_UNIX, socket.SOCK_SEQPACKET): _inspect_unix,
    (socket.AF_INET, socket.SOCK_DGRAM): _inspect_udp,
    (socket.AF_INET6, socket.SOCK_DGRAM): _inspect_udp,
    (socket.AF_PACKET, socket.SOCK_RAW): _inspect_packet,
    (socket.AF_PACKET, socket.SOCK_DGRAM): _refuse_packet_dgram,
}


def _set_nonblocking(fd: int) -> None:
    """The datapath never blocks: O_NONBLOCK on the fd (its open file description, shared with the parent)."""
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    except OSError as exc:
        raise from_oserror(exc, f"--host-fd {fd}: O_NONBLOCK") from None
