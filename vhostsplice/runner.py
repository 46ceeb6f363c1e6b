"""Assembles one worker from the command line's choices: host fd, placement, front-end door."""
from __future__ import annotations

import logging

from . import channel
from .backend import BackendConfig
from .cli import apply_placement
from .errors import ConfigError, VhostspliceError, errno_name
from .hostfd import inspect_fd, open_packet, open_tap
from .worker import Worker, WorkerConfig

log = logging.getLogger("vhostsplice")


def _open_door(socket_path, connect_path, inherited_fd):
    if socket_path is not None:
        return channel.Listener(socket_path)
    if connect_path is not None:
        return channel.connect(connect_path)
    return channel.inherit(inherited_fd)


def open_host(*, tap=None, host_fd=None, packet=None, mtu=None, bridge=None, offloads=True, control_fd=None,
              framing="none"):
    """The host packet fd: exactly one of a tap NAME, an inherited fd N, an interface for AF_PACKET."""
    chosen = [flag for flag, value in (("--tap", tap), ("--host-fd", host_fd), ("--packet", packet))
              if value is not None]
    if len(chosen) != 1:
        raise ConfigError("give exactly one of --tap NAME, --host-fd N, --packet IFNAME"
                          + (f" (got {', '.join(chosen)})" if chosen else ""))
    if framing != "none" and host_fd is None:
        raise ConfigError("--framing applies to --host-fd only")
    if bridge is not None and tap is None:
        raise ConfigError("--bridge applies to --tap only (attach an inherited fd's interface yourself)")
    if tap is not None:
        return open_tap(tap, mtu=mtu, bridge=bridge)
    if packet is not None:
        return open_packet(packet, vnet_hdr=offloads, mtu=mtu)
    return inspect_fd(host_fd, mtu=mtu, control_fd=control_fd, framing=framing)


def run_worker(*, socket_path, connect_path, inherited_fd, tap, mtu, bridge, placement, fault_exit, offloads,
               stats_file, host_fd=None, packet=None, framing="none") -> int:
    """Set up, serve until stopped, report the counters; returns the exit code."""
    hostfd = open_host(tap=tap, host_fd=host_fd, packet=packet, mtu=mtu, bridge=bridge, offloads=offloads,
                       control_fd=inherited_fd, framing=framing)
    door = None
    try:
        if offloads and not hostfd.offloads_ok:
            log.info("%s %s carries no vnet header: offloads are not offered", hostfd.kind, hostfd.name)
        apply_placement(*placement)
        door = _open_door(socket_path, connect_path, inherited_fd)
        backend = BackendConfig(offloads=offloads and hostfd.offloads_ok, fault_exit=fault_exit, mtu=hostfd.mtu)
        config = WorkerConfig(backend, stats_file)
        worker = Worker(door, hostfd, config)
        door = None           # the worker owns it now
        code = worker.run()
        worker.report()
        if code:
            raise _Exit(code, worker.reason)
        return 0
    finally:
        if door is not None:
            door.close()
        hostfd.close()


class _Exit(VhostspliceError):
    def __init__(self, code: int, reason: str):
        super().__init__(reason or errno_name(code), code)
