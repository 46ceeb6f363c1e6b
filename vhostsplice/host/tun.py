"""The kernel's numbers for tap queues and packet sockets, and the ioctls that use them.

linux/if_tun.h (TUNSETIFF and friends, the IFF_* queue flags), linux/if_packet.h (PACKET_VNET_HDR),
linux/sockios.h (SIOCGIFFLAGS, SIOCGIFMTU), the struct ifreq layouts they take, the kernel's rules for an
interface name, and ioctl helpers that keep each failure's errno (errors.from_oserror). What is done with
them is hostfd.py's (taps), hostfd_inspect.py's (inherited fds, AF_PACKET) and tapctl.py's (`tap`).
"""
from __future__ import annotations

import fcntl
import socket
import struct

from ..errors import ConfigError, from_oserror

TUN_PATH = "/dev/net/tun"
IFNAMSIZ = 16


def _ioc(direction: int, kind: str, nr: int, size: int) -> int:
    """asm-generic/ioctl.h encoding, as used on x86_64: dir:2 | size:14 | type:8 | nr:8."""
    return (direction << 30) | (size << 16) | (ord(kind) << 8) | nr


_IOC_WRITE, _IOC_READ = 1, 2
_INT = 4  # sizeof(int) == sizeof(unsigned int) on x86_64

# linux/if_tun.h
TUNSETIFF = _ioc(_IOC_WRITE, "T", 202, _INT)
TUNGETFEATURES = _ioc(_IOC_READ, "T", 207, _INT)
TUNSETOFFLOAD = _ioc(_IOC_WRITE, "T", 208, _INT)
TUNGETIFF = _ioc(_IOC_READ, "T", 210, _INT)
TUNGETVNETHDRSZ = _ioc(_IOC_READ, "T", 215, _INT)
TUNSETVNETHDRSZ = _ioc(_IOC_WRITE, "T", 216, _INT)
TUNSETQUEUE = _ioc(_IOC_WRITE, "T", 217, _INT)
IFF_ATTACH_QUEUE = 0x0200
IFF_DETACH_QUEUE = 0x0400

IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TAP_FLAGS = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE
TUN_MISC = (10, 200)            # /dev/net/tun: misc major 10, minor 200; macvtap/ipvtap have their own

VNET_HDR_LENS = (10, 12)  # virtio_net_hdr (legacy) and virtio_net_hdr_v1 / _mrg_rxbuf
NET_HDR_V1_LEN = 12
IFREQ = struct.Struct("16sH22x")  # struct ifreq: ifr_name + ifr_flags, 40 bytes
IFREQ_MTU = struct.Struct("16si20x")   # struct ifreq: ifr_name + ifr_mtu

# linux/sockios.h: struct ifreq with ifr_flags (SIOCGIFFLAGS/SIOCSIFFLAGS) or ifr_mtu (SIOCGIFMTU)
SIOCGIFFLAGS, SIOCSIFFLAGS, SIOCGIFMTU = 0x8913, 0x8914, 0x8921

# linux/if_packet.h
SOL_PACKET = 263
PACKET_VNET_HDR, PACKET_IGNORE_OUTGOING, PACKET_VNET_HDR_SZ = 15, 23, 24
ETH_P_ALL = 0x0003


def validate_ifname(name: str) -> bytes:
    """The kernel's dev_valid_name rules, checked before any syscall: -> ConfigError (EINVAL)."""
    if not isinstance(name, str):
        raise ConfigError(f"interface name must be a string, not {type(name).__name__}")
    raw = name.encode("utf-8", "surrogateescape")
    bad = ("/" in name or ":" in name or any(c.isspace() for c in name)
           or name in (".", "..") or "\0" in name)
    if not 1 <= len(raw) < IFNAMSIZ or bad:
        raise ConfigError(f"invalid interface name {name!r}: 1..15 bytes, no '/', ':' or whitespace")
    return raw


def ioctl(fd: int, request: int, arg: bytes | int, what: str) -> None:
    try:
        fcntl.ioctl(fd, request, arg)
    except OSError as exc:
        raise from_oserror(exc, what) from None


def ifreq_ioctl(sock: socket.socket, request: int, arg: bytes, name: str) -> bytes:
    """SIOCGIFFLAGS, SIOCSIFFLAGS or SIOCGIFMTU on interface NAME through SOCK: the ifreq it returns."""
    try:
        return fcntl.ioctl(sock, request, arg)
    except OSError as exc:
        what = {SIOCGIFFLAGS: "SIOCGIFFLAGS", SIOCSIFFLAGS: "set link up", SIOCGIFMTU: "SIOCGIFMTU"}[request]
        raise from_oserror(exc, f"{what} on {name}") from None


def read_tap_info(fd: int) -> tuple[str, int, int]:
    """(name, TUNGETIFF flags, TUNGETVNETHDRSZ) of an attached tun/tap fd."""
    try:
        raw_name, flags = IFREQ.unpack(fcntl.ioctl(fd, TUNGETIFF, bytes(IFREQ.size)))
        hdr_len = struct.unpack("i", fcntl.ioctl(fd, TUNGETVNETHDRSZ, bytes(4)))[0]
    except OSError as exc:
        raise from_oserror(exc, "TUNGETIFF/TUNGETVNETHDRSZ") from None
    return raw_name.rstrip(b"\0").decode("utf-8", "surrogateescape"), flags, hdr_len


def sockopt(sock: socket.socket, level: int, opt: int) -> int | None:
    try:
        return sock.getsockopt(level, opt)
    except OSError:
        return None


def link_mtu(name: str, via: int = -1) -> int | None:
    """The MTU of interface NAME in this network namespace (SIOCGIFMTU), or None. `via`: a socket fd to
    ask through (any socket answers SIOCGIF*): a confined worker may not make a new socket."""
    try:
        raw = validate_ifname(name)
        if via >= 0:
            res = fcntl.ioctl(via, SIOCGIFMTU, IFREQ_MTU.pack(raw, 0))
        else:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                res = fcntl.ioctl(s.fileno(), SIOCGIFMTU, IFREQ_MTU.pack(raw, 0))
    except (OSError, ConfigError):
        return None
    return IFREQ_MTU.unpack(res)[1]
