"""`vhostsplice tap create|delete|show NAME`: persistent taps for workers, through pyroute2 (netlink.py).

A tap made here outlives every queue fd (TUNSETPERSIST), is owned by a uid (so an unprivileged
`run --tap NAME` may attach to it), and is set up in one go: MTU, bridge, link state, network
namespace. A failure part-way deletes what was made. Every kernel error keeps its errno (the exit code).
"""
from __future__ import annotations

import errno
import os
import pwd
import grp
import socket
from dataclasses import dataclass

from ..errors import ConfigError, SetupError, from_oserror
from .tun import (IFF_DETACH_QUEUE, IFF_VNET_HDR, IFREQ, TAP_FLAGS, TUN_PATH, TUNSETIFF, TUNSETQUEUE, ioctl,
                  validate_ifname)
from .netlink import IFF_UP, bridge_index, iproute, kernel_error, link_setup, netlink_errors, setns

TUN_TYPES = {1: "tun", 2: "tap"}


@dataclass
class TapSpec:
    name: str
    multi_queue: bool = True
    vnet_hdr: bool = True
    owner: str | None = None       # user name or uid
    group: str | None = None       # group name or gid
    mtu: int | None = None
    bridge: str | None = None
    up: bool = True


def enter_netns(netns: str | None) -> None:
    """Move this process into network namespace NETNS (a name under /run/netns, or a path)."""
    if netns is None:
        return
    path = netns if "/" in netns else f"/run/netns/{netns}"
    if "/" not in netns:
        validate_netns_name(netns)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise kernel_error(exc, f"network namespace {netns} ({path})") from None
    try:
        setns(fd, netns)
    finally:
        os.close(fd)


def validate_netns_name(name: str) -> None:
    if not name or name in (".", "..") or "\0" in name or len(name) > 255:
        raise ConfigError(f"invalid network namespace name {name!r}")


def _resolve_id(value: str | None, kind: str) -> int | None:
    """'1000' or 'alice' -> 1000 (users via pwd, groups via grp); unknown names are EINVAL."""
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    try:
        return (pwd.getpwnam(value).pw_uid if kind == "owner" else grp.getgrnam(value).gr_gid)
    except KeyError:
        raise ConfigError(f"--{kind} {value!r}: no such {'user' if kind == 'owner' else 'group'}") from None


def create(spec: TapSpec) -> dict:
    """Create persistent tap spec.name; returns what `show` says of it afterwards."""
    validate_ifname(spec.name)
    if spec.bridge is not None:
        validate_ifname(spec.bridge)
    uid, gid = _resolve_id(spec.owner, "owner"), _resolve_id(spec.group, "group")
    with iproute() as ipr:
        if ipr.link_lookup(ifname=spec.name):
            raise SetupError(f"tap {spec.name}: an interface of that name exists", errno.EEXIST)
        master = bridge_index(ipr, spec.bridge)
        flags = {"no_pi": True, "vnet_hdr": spec.vnet_hdr, "multi_queue": spec.multi_queue}
        ids = {k: v for k, v in (("uid", uid), ("gid", gid)) if v is not None}
        try:
            ipr.link("add", ifname=spec.name, kind="tuntap", mode="tap", ifr=flags, **ids)
        except netlink_errors() as exc:
            raise kernel_error(exc, f"create tap {spec.name}") from None
        try:
            link_setup(ipr, spec.name, mtu=spec.mtu, master=master, up=spec.up)
        except BaseException:
            _quiet_delete(ipr, spec.name)
            raise
        return _describe(ipr, spec.name)


def _quiet_delete(ipr, name: str) -> None:
    try:
        found = ipr.link_lookup(ifname=name)
        if found:
            ipr.link("del", index=found[0])
    except netlink_errors():
        pass


def _tap_index(ipr, name: str) -> tuple[int, dict]:
    """The index and tun attributes of tap NAME: ENODEV if absent, EINVAL if it is not a tap."""
    validate_ifname(name)
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise SetupError(f"{name}: no such interface", errno.ENODEV)
    link = ipr.get_links(found[0])[0]
    info = link.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    if kind != "tun":
        raise ConfigError(f"{name} is not a tap (kind {kind or 'none'}); only taps are managed here")
    data = info.get_attr("IFLA_INFO_DATA")
    tun = {key: data.get_attr(attr) for key, attr in _TUN_ATTRS.items()} if data is not None else {}
    if tun.get("type") != 2:
        raise ConfigError(f"{name} is a tun (layer 3) device, not a tap")
    return found[0], {"link": link, "tun": tun}


_TUN_ATTRS = {"type": "IFLA_TUN_TYPE", "owner": "IFLA_TUN_OWNER", "group": "IFLA_TUN_GROUP",
              "pi": "IFLA_TUN_PI", "vnet_hdr": "IFLA_TUN_VNET_HDR", "persist": "IFLA_TUN_PERSIST",
              "multi_queue": "IFLA_TUN_MULTI_QUEUE", "queues": "IFLA_TUN_NUM_QUEUES"}


def _describe(ipr, name: str) -> dict:
    index, found = _tap_index(ipr, name)
    link, tun = found["link"], found["tun"]
    master = link.get_attr("IFLA_MASTER")
    master_name = ipr.get_links(master)[0].get_attr("IFLA_IFNAME") if master else None
    return {
        "name": name, "index": index, "mtu": link.get_attr("IFLA_MTU"),
        "state": "up" if link["flags"] & IFF_UP else "down", "address": link.get_attr("IFLA_ADDRESS"),
        "multi_queue": bool(tun.get("multi_queue")), "vnet_hdr": bool(tun.get("vnet_hdr")),
        "persist": bool(tun.get("persist")), "owner": tun.get("owner"), "group": tun.get("group"),
        "queues": tun.get("queues"), "bridge": master_name,
    }


def show(name: str) -> dict:
    with iproute() as ipr:
        try:
            return _describe(ipr, name)
        except netlink_errors() as exc:
            raise kernel_error(exc, f"show {name}") from None


def delete(name: str) -> None:
    """Delete tap NAME (queues still attached lose it: their workers end with EBADFD)."""
    with iproute() as ipr:
        index, _found = _tap_index(ipr, name)
        try:
            ipr.link("del", index=index)
        except netlink_errors() as exc:
            raise kernel_error(exc, f"delete tap {name}") from None


_PR_SET_PDEATHSIG = 1


def hold(name: str, report, interval: float = 0.1) -> None:
    """`vhostsplice tap hold NAME`: keep tap NAME in existence until a stop signal or our parent's death.

    Waits until NAME exists (a worker creates it), then holds a detached queue of it (hostfd.hold_queue:
    no traffic), so the tap outlives the worker that created it; if the tap is deleted, waits for the next
    one. A persistent or single-queue tap is only watched (the first needs no holder, the second admits one
    queue only). report(text) is told each change. The stop signals are taken synchronously."""
    import ctypes
    import signal
    from ..errors import STOP_SIGNALS, signals_held
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    held: tuple[int, int] | None = None          # (queue fd or -1, ifindex)
    with signals_held(drain=True):
        try:
            while True:
                if held is not None and _ifindex(name) != held[1]:
                    report(f"tap {name} (index {held[1]}) is gone: waiting for it again")
                    held = _release(held)
                if held is None:
                    held = _acquire(name, report)
                if signal.sigtimedwait(STOP_SIGNALS, interval if held is None else 1.0) is not None:
                    return
        finally:
            _release(held)


def _ifindex(name: str) -> int | None:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None


def _release(held: tuple[int, int] | None) -> None:
    if held is not None and held[0] >= 0:
        os.close(held[0])
    return None


def hold_queue(name: str, *, vnet_hdr: bool) -> int:
    """A detached queue of multi-queue tap NAME (TUNSETIFF, then TUNSETQUEUE IFF_DETACH_QUEUE): it takes no
    share of the traffic, but the kernel deletes a non-persistent tap only when its last queue closes,
    attached or not, so the interface (index, addresses, MTU, qdisc, bridge, counters) outlives every
    worker while this fd is open. Nothing else is set on the tap (no TUNSETOFFLOAD: the offloads are the
    running worker's). vnet_hdr must be the tap's own flag (it is set by the first queue only)."""
    raw = validate_ifname(name)
    flags = TAP_FLAGS if vnet_hdr else TAP_FLAGS & ~IFF_VNET_HDR
    try:
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise from_oserror(exc, f"open {TUN_PATH}") from None
    try:
        ioctl(fd, TUNSETIFF, IFREQ.pack(raw, flags), f"TUNSETIFF {name} (a queue to hold the tap)")
        ioctl(fd, TUNSETQUEUE, IFREQ.pack(b"", IFF_DETACH_QUEUE), f"TUNSETQUEUE detach on {name}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _acquire(name: str, report) -> tuple[int, int] | None:
    """Hold tap NAME if it exists: (queue fd, or -1 if it needs or admits no holder; ifindex)."""
    try:
        info = show(name)
    except SetupError as exc:
        if exc.errno == errno.ENODEV:
            return None
        raise
    if info["persist"] or not info["multi_queue"]:
        report(f"tap {name} (index {info['index']}) is {'persistent' if info['persist'] else 'single-queue'}: "
               "not held")
        return -1, info["index"]
    fd = hold_queue(name, vnet_hdr=info["vnet_hdr"])
    if _ifindex(name) != info["index"]:      # deleted in between: TUNSETIFF made a new one; let it go
        os.close(fd)
        return None
    report(f"holding tap {name} (index {info['index']}) with a detached queue")
    return fd, info["index"]
