"""Netlink through pyroute2: the one module that imports it.

pyroute2 does the link set-up of a tap (MTU, bridge master, link up: `run --tap --mtu/--bridge`), the
persistent taps of `vhostsplice tap` (tapctl.py) and entering a network namespace. It cannot hand out a
tap's queue fd: hostfd.py opens /dev/net/tun itself. It is imported on first use only: importing it takes
a worker from ~14 to ~34 MiB RSS (benchmarks/results/dpdk_bench.md), and a plain `run --tap` needs none of
it. Its NetlinkError is not an OSError (the kernel errno is its .code): kernel_error keeps either's errno.
"""
from __future__ import annotations

import errno
import os

from ..errors import SetupError, errno_name

IFF_UP = 0x0001       # net_device flags (struct ifinfomsg ifi_flags)


def kernel_error(exc: BaseException, what: str) -> SetupError:
    """An OSError or a NetlinkError as a SetupError with the kernel's errno and the step that failed."""
    code = getattr(exc, "code", None) or getattr(exc, "errno", None) or errno.EIO
    return SetupError(f"{what}: {os.strerror(code)} ({errno_name(code)})", code)


def netlink_errors() -> tuple[type[BaseException], ...]:
    """What a pyroute2 call raises for a kernel refusal: catch these, convert with kernel_error."""
    from pyroute2 import NetlinkError  # not an OSError; carries the kernel errno in .code
    return (OSError, NetlinkError)


def iproute():
    """A pyroute2 IPRoute (a netlink socket; use it as a context manager)."""
    try:
        from pyroute2 import IPRoute
    except ImportError as exc:  # pragma: no cover - a packaging error, not a runtime one
        raise SetupError(f"pyroute2 is required for netlink (tap link set-up, `vhostsplice tap`): {exc}",
                         errno.ENOPKG) from None
    try:
        return IPRoute()
    except OSError as exc:
        raise kernel_error(exc, "netlink socket") from None


def setns(fd: int, what: str) -> None:
    """Move this process into the network namespace of FD (an open /run/netns/NAME or /proc/PID/ns/net)."""
    from pyroute2.netns import setns as pyroute2_setns
    try:
        pyroute2_setns(fd)
    except netlink_errors() as exc:
        raise kernel_error(exc, f"setns {what}") from None


def bridge_index(ipr, bridge: str | None) -> int | None:
    """The ifindex of BRIDGE (None for None); ENODEV if there is no such interface."""
    if bridge is None:
        return None
    found = ipr.link_lookup(ifname=bridge)
    if not found:
        raise SetupError(f"bridge {bridge}: no such interface; create it first "
                         f"(ip link add {bridge} type bridge)", errno.ENODEV)
    return found[0]


def link_setup(ipr, name: str, *, mtu: int | None, master: int | None, up: bool) -> int:
    """Apply MTU, master and up state to NAME; return the MTU the link now has. Only what differs is
    changed: the owner of a tap made with `tap create --owner` attaches without CAP_NET_ADMIN."""
    changes: dict = {}
    try:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise SetupError(f"link set-up of {name}: the tap vanished", errno.ENODEV)
        link = ipr.get_links(found[0])[0]
        wanted = {"mtu": (mtu, link.get_attr("IFLA_MTU")), "master": (master, link.get_attr("IFLA_MASTER")),
                  "state": ("up" if up else None, "up" if link["flags"] & IFF_UP else "down")}
        changes = {k: want for k, (want, have) in wanted.items() if want is not None and want != have}
        if changes:
            ipr.link("set", index=found[0], **changes)
            link = ipr.get_links(found[0])[0]
        return int(link.get_attr("IFLA_MTU"))
    except netlink_errors() as exc:
        raise kernel_error(exc, f"link set-up of {name} ({changes})") from None
