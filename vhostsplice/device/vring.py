"""Per-ring control state: what the front-end has told us about one ring, and when it may run.

A ring runs in the datapath once it has a size, addresses, a kick fd (or a polling request), a memory
table, and is enabled (vhost-user.rst, "Starting and stopping rings": without PROTOCOL_FEATURES a ring is
enabled as soon as it starts; with them it waits for SET_VRING_ENABLE 1).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..vhostuser.channel import close_fd
from ..vhostuser.protocol import VringAddr


@dataclass
class RingState:
    index: int
    num: int = 0
    addr: VringAddr | None = None
    base: int = 0
    kick_fd: int | None = None
    call_fd: int | None = None
    err_fd: int | None = None
    kicked: bool = False        # SET_VRING_KICK received: the ring has started
    enabled: bool = False
    running: bool = False       # handed to the datapath
    kicks: int = 0

    def ready(self, have_memory: bool) -> bool:
        return bool(self.kicked and self.enabled and self.num and self.addr and have_memory)

    def replace_fd(self, attr: str, fd: int | None) -> None:
        close_fd(getattr(self, attr))
        setattr(self, attr, fd)

    def reset(self) -> None:
        for attr in ("kick_fd", "call_fd", "err_fd"):
            self.replace_fd(attr, None)
        self.num, self.addr, self.base = 0, None, 0
        self.kicked = self.enabled = self.running = False
