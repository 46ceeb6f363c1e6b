"""FakeHostFd: a host packet fd for tests of the back-end, with no tap and no privilege.

It is a `hostfd.HostFd` (every attribute and property the back-end and the worker read exist, with the
production meaning), whose kernel knobs are recorded instead of applied: `set_offload` keeps the
TUNSETOFFLOAD flags in `offload`, `set_queue_attached` keeps the last state in `attached`. Without a
socket it has no fd (fd -1: SEND_RARP skips the announce); `FakeHostFd.datagram()` gives it one end of
a SOCK_DGRAM socketpair, and `frames()` reads what the back-end wrote to it from the other end.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass

from ..hostfd import DEFAULT_MTU, HostFd


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
    sock: socket.socket | None = None   # datagram(): our end (fd is its fileno) and the peer's
    peer: socket.socket | None = None

    @classmethod
    def datagram(cls, vnet_hdr_len: int = 12, stream: bool = False, name: str = "rec0") -> FakeHostFd:
        """A fake whose fd is one end of a non-blocking SOCK_DGRAM socketpair."""
        sock, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        peer.setblocking(False)
        return cls(fd=sock.fileno(), name=name, vnet_hdr_len=vnet_hdr_len, stream=stream, sock=sock, peer=peer)

    def set_offload(self, tun_flags: int) -> None:
        self.offload = tun_flags

    def set_queue_attached(self, attached: bool) -> bool:
        self.attached = attached
        return True

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
