"""Host packet fds: the host side of a queue pair.

Now: tap queues. We open /dev/net/tun ourselves (pyroute2 can create taps but cannot hand us the
queue fd) and attach with TUNSETIFF; pyroute2 only does link set-up (MTU, up, bridge master).
Every kernel failure keeps its errno (errors.from_oserror); bad arguments are ConfigError (EINVAL).
"""
from __future__ import annotations

import errno
import fcntl
import os
import struct
from dataclasses import dataclass

from .errors import ConfigError, SetupError, from_oserror

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

IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TAP_FLAGS = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE

VNET_HDR_LENS = (10, 12)  # virtio_net_hdr (legacy) and virtio_net_hdr_v1 / _mrg_rxbuf
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: ifr_name + ifr_flags, 40 bytes


@dataclass
class HostFd:
    """An open host packet fd. `created` is True when opening it created the interface."""

    fd: int
    kind: str
    name: str
    vnet_hdr_len: int
    mtu: int
    created: bool

    def set_offload(self, tun_flags: int) -> None:
        """TUNSETOFFLOAD with spec.TUN_F_* flags: the offloads the guest side can take."""
        if self.fd < 0:
            raise SetupError(f"TUNSETOFFLOAD on {self.name}: the fd is closed", errno.EBADF)
        try:
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, tun_flags)
        except OSError as exc:
            raise from_oserror(exc, f"TUNSETOFFLOAD {tun_flags:#x} on {self.name}") from None

    def close(self) -> None:
        """Close the queue fd (idempotent). A tap we created vanishes with its last queue."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


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


def open_tap(name: str, *, create: bool = True, mtu: int | None = None, bridge: str | None = None,
             up: bool = True, vnet_hdr_len: int = 12) -> HostFd:
    """Open one queue of tap NAME (creating the tap unless create=False) and set its link up."""
    raw = validate_ifname(name)
    _validate_options(mtu, bridge, vnet_hdr_len)
    with _iproute() as ipr:
        existed = bool(ipr.link_lookup(ifname=name))
        if not existed and not create:
            raise SetupError(f"tap {name}: no such interface (and create=False)", errno.ENODEV)
        master = _bridge_index(ipr, bridge)
        fd = _attach_queue(raw, name, vnet_hdr_len)
        try:
            actual_mtu = _link_setup(ipr, name, mtu=mtu, master=master, up=up)
        except BaseException:
            os.close(fd)
            raise
    return HostFd(fd=fd, kind="tap", name=name, vnet_hdr_len=vnet_hdr_len, mtu=actual_mtu,
                  created=not existed)


def _validate_options(mtu: int | None, bridge: str | None, vnet_hdr_len: int) -> None:
    if mtu is not None and not 68 <= mtu <= 65535:
        raise ConfigError(f"invalid MTU {mtu}: 68..65535")
    if bridge is not None:
        validate_ifname(bridge)
    if vnet_hdr_len not in VNET_HDR_LENS:
        raise ConfigError(f"invalid vnet header length {vnet_hdr_len}: one of {VNET_HDR_LENS}")


def _attach_queue(raw_name: bytes, name: str, vnet_hdr_len: int) -> int:
    """open /dev/net/tun, TUNSETIFF, TUNSETVNETHDRSZ, TUNSETOFFLOAD 0 -> the queue fd."""
    try:
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise from_oserror(exc, f"open {TUN_PATH}") from None
    steps = (
        (TUNSETIFF, _IFREQ.pack(raw_name, TAP_FLAGS), f"TUNSETIFF {name} (tap, multi-queue, vnet_hdr)"),
        (TUNSETVNETHDRSZ, struct.pack("i", vnet_hdr_len), f"TUNSETVNETHDRSZ {vnet_hdr_len} on {name}"),
        (TUNSETOFFLOAD, 0, f"TUNSETOFFLOAD 0 on {name}"),
    )
    try:
        for request, arg, what in steps:
            _ioctl(fd, request, arg, what)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _ioctl(fd: int, request: int, arg: bytes | int, what: str) -> None:
    try:
        fcntl.ioctl(fd, request, arg)
    except OSError as exc:
        raise from_oserror(exc, what) from None


def read_tap_info(fd: int) -> tuple[str, int, int]:
    """(name, TUNGETIFF flags, TUNGETVNETHDRSZ) of an attached tun/tap fd."""
    try:
        raw_name, flags = _IFREQ.unpack(fcntl.ioctl(fd, TUNGETIFF, bytes(_IFREQ.size)))
        hdr_len = struct.unpack("i", fcntl.ioctl(fd, TUNGETVNETHDRSZ, bytes(4)))[0]
    except OSError as exc:
        raise from_oserror(exc, "TUNGETIFF/TUNGETVNETHDRSZ") from None
    return raw_name.rstrip(b"\0").decode("utf-8", "surrogateescape"), flags, hdr_len


# -- link set-up through pyroute2 ---------------------------------------------------------------

def _iproute():
    try:
        from pyroute2 import IPRoute
    except ImportError as exc:  # pragma: no cover - a packaging error, not a runtime one
        raise SetupError(f"pyroute2 is required for tap link set-up: {exc}", errno.ENOPKG) from None
    try:
        return IPRoute()
    except OSError as exc:
        raise from_oserror(exc, "netlink socket") from None


def _netlink_errors() -> tuple[type[BaseException], ...]:
    from pyroute2 import NetlinkError  # not an OSError; carries the kernel errno in .code
    return (OSError, NetlinkError)


def _bridge_index(ipr, bridge: str | None) -> int | None:
    if bridge is None:
        return None
    found = ipr.link_lookup(ifname=bridge)
    if not found:
        raise SetupError(f"bridge {bridge}: no such interface; create it first "
                         f"(ip link add {bridge} type bridge)", errno.ENODEV)
    return found[0]


def _link_setup(ipr, name: str, *, mtu: int | None, master: int | None, up: bool) -> int:
    """Apply MTU, master and up state to NAME; return the MTU the link now has."""
    changes: dict = {"mtu": mtu, "master": master, "state": "up" if up else None}
    changes = {k: v for k, v in changes.items() if v is not None}
    try:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise SetupError(f"link set-up of {name}: the tap vanished", errno.ENODEV)
        if changes:
            ipr.link("set", index=found[0], **changes)
        return int(ipr.get_links(found[0])[0].get_attr("IFLA_MTU"))
    except _netlink_errors() as exc:
        code = getattr(exc, "code", None) or getattr(exc, "errno", None) or errno.EIO
        raise SetupError(f"link set-up of {name} ({changes}): {os.strerror(code)} "
                         f"({errno.errorcode.get(code, code)})", code) from None
