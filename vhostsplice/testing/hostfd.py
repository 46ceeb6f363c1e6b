"""FakeHostFd: a host packet fd for tests of the back-end and the worker, with no tap and no privilege.

It is a `hostfd.HostFd` (every attribute and property the back-end and the worker read exist, with the
production meaning, and `apply` is the production one), whose kernel knobs are recorded instead of
applied: `set_offload` keeps the TUNSETOFFLOAD flags in `offload`, `set_queue_attached` keeps the last
state in `attached`, `set_packet_vnet_hdr` answers the header length a packet socket would. Every knob
call and every `apply` lands in `calls` with where it was called from, so a test can tell that the host
fd is configured in one place only. Without a socket it has no fd (fd -1: SEND_RARP skips the announce);
`FakeHostFd.datagram()` gives it one end of a SOCK_DGRAM socketpair, and `frames()` reads what the
back-end wrote to it from the other end.
"""
from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass, field

from ..host.hostfd import DEFAULT_MTU, HostFd, HostState

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _caller() -> str:
    """Where the recorded method was called from: 'vhostsplice/FILE.py:FUNCTION'."""
    code = sys._getframe(2).f_code
    path = os.path.relpath(os.path.abspath(code.co_filename), os.path.dirname(_PACKAGE))
    return f"{path}:{code.co_name}"


@dataclass
class FakeHostFd(HostFd):
    fd: int = -1
    kind: str = "tap"
    name: str = "fake0"
    vnet_hdr_len: int = 0
    mtu: int = DEFAULT_MTU
    created: bool = False
    offload: int | None = None          # the last set_offload flags (None: never called)
    attached: bool | None = None        # the last set_queue_attached state (None: never called)
    queue_knob: bool = True             # set_queue_attached's answer: False as for a single-queue tap
    calls: list[tuple[str, object, str]] = field(default_factory=list)    # (method, argument, caller)
    sock: socket.socket | None = None   # datagram(): our end (fd is its fileno) and the peer's
    peer: socket.socket | None = None

    @classmethod
    def datagram(cls, vnet_hdr_len: int = 12, stream: bool = False, name: str = "rec0", **kw) -> FakeHostFd:
        """A fake whose fd is one end of a non-blocking SOCK_DGRAM socketpair."""
        sock, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        peer.setblocking(False)
        return cls(fd=sock.fileno(), name=name, vnet_hdr_len=vnet_hdr_len, stream=stream, sock=sock, peer=peer,
                   **kw)

    def apply(self, state: HostState) -> int | None:
        self.calls.append(("apply", state, _caller()))
        return super().apply(state)

    def set_offload(self, tun_flags: int) -> None:
        self.calls.append(("set_offload", tun_flags, _caller()))
        self.offload = tun_flags

    def set_queue_attached(self, attached: bool) -> bool:
        self.calls.append(("set_queue_attached", attached, _caller()))
        self.attached = attached
        return self.queue_knob

    def set_packet_vnet_hdr(self, on: bool) -> int:
        self.calls.append(("set_packet_vnet_hdr", on, _caller()))
        return self.vnet_hdr_len if on else 0

    def knobs(self) -> list[tuple[str, object]]:
        """The kernel knobs turned so far, in order: (method, argument)."""
        return [(name, arg) for name, arg, _where in self.calls if name != "apply"]

    def frames(self) -> list[bytes]:
        """Every datagram the back-end wrote to fd since the last call (datagram() fakes only)."""
        out = []
        while self.peer is not None:
            try:
                out.append(self.peer.recv(65536))
            except BlockingIOError:
                break
        return out

    def close(self) -> None:
        """Close the fd and the peer (idempotent)."""
        if self.sock is not None:
            self.sock.close()
            self.sock, self.fd = None, -1
        if self.peer is not None:
            self.peer.close()
            self.peer = None
