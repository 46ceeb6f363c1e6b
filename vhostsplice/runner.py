"""Assembles one worker from the command line's choices: host fd, placement, front-end door."""
from __future__ import annotations

from . import channel
from .backend import BackendConfig
from .cli import apply_placement
from .errors import VhostspliceError, errno_name
from .hostfd import open_tap
from .worker import Worker, WorkerConfig


def _open_door(socket_path, connect_path, inherited_fd):
    if socket_path is not None:
        return channel.Listener(socket_path)
    if connect_path is not None:
        return channel.connect(connect_path)
    return channel.inherit(inherited_fd)


def run_worker(*, socket_path, connect_path, inherited_fd, tap, mtu, bridge, placement, fault_exit, offloads,
               stats_file) -> int:
    """Set up, serve until stopped, report the counters; returns the exit code."""
    hostfd = open_tap(tap, mtu=mtu, bridge=bridge)
    door = None
    try:
        apply_placement(*placement)
        door = _open_door(socket_path, connect_path, inherited_fd)
        config = WorkerConfig(BackendConfig(offloads=offloads, fault_exit=fault_exit, mtu=hostfd.mtu), stats_file)
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
