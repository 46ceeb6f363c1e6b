"""The protocol corpus replayed by a process confined exactly like a worker (issue 17, docs/security.md).

A confined worker makes no fd of its own: every fd it handles arrives over its socket. So here the fuzz
Session's fds (memfds, eventfds, pipes, socketpairs, /dev/null) are made by the unconfined parent and
sent over SCM_RIGHTS on request, as a front-end's would be; the child then runs every input through the
real Channel, Backend, memory table and Datapath under the worker's own Landlock and seccomp filter
(`Sandbox("strict").confine`). A syscall the backend makes on any path the corpus reaches and the
allow-list forgot kills the child with SIGSYS, and the test says which input it was.

    parent: serve_fds(sock, proc)            child: python3 confined.py FD CORPUS_DIR
"""
from __future__ import annotations

import array
import fcntl
import json
import os
import socket
import sys

MAX_FD_PROBE = 4096


def _fds_of(anc) -> list[int]:
    fds = array.array("i")
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % 4])
    return list(fds)


def _recv_fds(sock: socket.socket) -> list[int]:
    return _fds_of(sock.recvmsg(64, socket.CMSG_SPACE(2 * 4))[1])


def _shutdown(fd: int, how: int) -> None:
    with socket.socket(fileno=fd) as peer:
        peer.shutdown(how)


# What the parent does to an fd the child sends it (then closes its copy): the child's act done outside.
ON_SENT_FD = {
    "truncate": lambda fd, size: (os.ftruncate(fd, size), os.close(fd)),   # a memfd the child holds
    "shutdown": _shutdown,      # the front-end's end of the channel stops writing (acts on the socket)
}


def _make(request: list[str]) -> list[int]:
    """The parent's factory: the fds one request names (they are closed here once sent)."""
    kind = request[0]
    if kind == "memfd":
        return [os.memfd_create("fuzz", os.MFD_CLOEXEC)]
    if kind == "eventfd":
        return [os.eventfd(int(request[1]), int(request[2]) | os.EFD_CLOEXEC)]
    if kind == "pipe":
        return list(os.pipe())
    if kind == "socketpair":
        a, b = socket.socketpair(int(request[1]), int(request[2]))
        return [a.detach(), b.detach()]
    if kind == "devnull":
        return [os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)]
    raise ValueError(f"unknown fd request {request!r}")


def serve_fds(sock: socket.socket, on_line) -> None:
    """Answer the child's requests until it closes its end; `on_line(text)` gets its other lines."""
    while True:
        data, anc, _flags, _ = sock.recvmsg(256, socket.CMSG_SPACE(4))
        if not data:
            return
        words = data.decode().split()
        if words[0] in ON_SENT_FD:
            ON_SENT_FD[words[0]](_fds_of(anc)[0], int(words[1]))
            sock.sendmsg([b"ok"])
            continue
        if words[0] == "say":
            on_line(data.decode()[4:])
            continue
        fds = _make(words)
        try:
            sock.sendmsg([b"fds"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())])
        finally:
            for fd in fds:
                os.close(fd)


class Factory:
    """The child's side: what the fuzz Session would have made itself, asked of the parent."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def ask(self, *words) -> list[int]:
        self.sock.sendmsg([" ".join(map(str, words)).encode()])
        return _recv_fds(self.sock)

    def say(self, text: str) -> None:
        self.sock.sendmsg([f"say {text}".encode()])

    def outside(self, act: str, fd: int, arg: int) -> None:
        """ON_SENT_FD[act](fd, arg), done by the parent on a copy of fd."""
        self.sock.sendmsg([f"{act} {arg}".encode()],
                          [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())])
        self.sock.recv(8)

    def install(self, proto) -> None:
        """Route the fd-making calls of tests/fuzz/proto.py here (only this child process is patched)."""
        real_open = os.open
        os.memfd_create = lambda name, flags=0: self.ask("memfd")[0]
        os.ftruncate = lambda fd, size: self.outside("truncate", fd, size)
        os.eventfd = lambda initval=0, flags=0: self.ask("eventfd", initval, flags)[0]
        os.pipe = lambda: tuple(self.ask("pipe"))
        os.open = lambda path, flags, *a, **kw: (self.ask("devnull")[0] if path == "/dev/null"
                                                 else real_open(path, flags, *a, **kw))
        socket.socketpair = lambda family=socket.AF_UNIX, type=socket.SOCK_STREAM, proto=0: tuple(
            socket.socket(fileno=fd) for fd in self.ask("socketpair", int(family), int(type)))
        session_init, factory = proto.Session.__init__, self

        def init(session, src):
            session_init(session, src)
            session.b = FrontEnd(session.b, factory)
        proto.Session.__init__ = init


class FrontEnd:
    """The Session's front-end end of the channel: shutdown is the front-end's act, done by the parent
    (on a copy of the fd: shutdown acts on the socket); everything else as the socket does it."""

    def __init__(self, sock: socket.socket, factory: Factory):
        self._sock, self._factory = sock, factory

    def shutdown(self, how: int) -> None:
        self._factory.outside("shutdown", self._sock.fileno(), how)

    def __getattr__(self, name):
        return getattr(self._sock, name)


def open_fds_probe() -> set[int]:
    """proto.open_fds without /proc (Landlock closes it): every fd that answers F_GETFD."""
    found = set()
    for fd in range(MAX_FD_PROBE):
        try:
            fcntl.fcntl(fd, fcntl.F_GETFD)
            found.add(fd)
        except OSError:
            pass
    return found


def child(fd: int, corpus_dir: str) -> int:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import proto
    # what proto imports lazily, imported now: after confinement no file can be opened
    from vhostsplice.device import backend, datapath  # noqa: F401
    from vhostsplice import errors, spec  # noqa: F401
    from vhostsplice.vhostuser import channel, protocol  # noqa: F401
    from vhostsplice.testing import hostfd  # noqa: F401  (the Session's FakeHostFd)
    from vhostsplice.sandbox import Facts, Sandbox
    inputs = []
    for name in sorted(os.listdir(corpus_dir)):
        with open(os.path.join(corpus_dir, name), "rb") as f:
            inputs.append((name, f.read()))
    sock = socket.socket(fileno=fd)
    factory = Factory(sock)
    box = Sandbox("strict")
    box.prepare()
    box.confine(Facts())
    factory.install(proto)
    proto.open_fds = open_fds_probe
    factory.say("confined")
    sock.recv(8)                    # the parent has looked at /proc/PID/status
    for name, data in inputs:
        factory.say(f"input {name}")
        proto.run_one(data)
    factory.say(json.dumps({"replayed": len(inputs)}))
    return 0


if __name__ == "__main__":
    sys.exit(child(int(sys.argv[1]), sys.argv[2]))
