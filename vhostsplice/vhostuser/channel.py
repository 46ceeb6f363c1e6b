"""The vhost-user control socket: listen/connect/inherit, messages with SCM_RIGHTS fds.

OSError is classified here, once: set-up failures keep the kernel's errno (SetupError), a peer that
resets the connection becomes FrontendGone, and a clean end of stream is `None` from `recv()`.
"""
from __future__ import annotations

import array
import errno
import os
import socket
import stat
import struct

from ..errors import ConfigError, FrontendGone, ProtocolError, SetupError, from_oserror
from .protocol import HEADER, Message, decode_header, encode
from ..spec import MAX_FDS

RECV_TIMEOUT = 5.0   # a front-end that starts a message must finish it; a stalled one is a violation
_GONE = (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ECONNABORTED)


def close_fd(fd: int | None) -> None:
    if fd is not None and fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass


def close_fds(fds) -> None:
    """Close every fd of a message (or any iterable of fds); errors are ignored, as for close_fd."""
    for fd in fds:
        close_fd(fd)


class Channel:
    """One connected front-end."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.refused_files: set[tuple[int, int]] = set()   # (st_dev, st_ino) no message may carry
        sock.settimeout(RECV_TIMEOUT)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def peer_cred(self) -> tuple[int, int, int]:
        """(pid, uid, gid) of the front-end, as the kernel recorded them at connect (SO_PEERCRED)."""
        pid, uid, gid = struct.unpack("iII", self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        return pid, uid, gid

    def refuse_file_of(self, fd: int) -> None:
        """Refuse (EPROTO) any later message carrying an fd that is the same file as fd (by st_dev/st_ino):
        the front-end must never hand the worker its own host packet fd as a kick, call, err or memory fd.
        All /dev/net/tun fds share one inode, so for a tap any tun fd is refused: no request carries one."""
        st = os.fstat(fd)
        self.refused_files.add((st.st_dev, st.st_ino))

    def recv(self) -> Message | None:
        """The next message, or None when the front-end closed the connection cleanly."""
        fds: list[int] = []
        try:
            data, anc, flags, _ = self.sock.recvmsg(HEADER.size, socket.CMSG_SPACE(MAX_FDS * 4))
            fds = _collect_fds(anc)
            if not data:
                close_fds(fds)
                return None
            if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
                raise ProtocolError("too many file descriptors in one message")
            if len(data) < HEADER.size:
                data += self._recv_exact(HEADER.size - len(data))
            hdr = decode_header(data)
            payload = self._recv_exact(hdr.size) if hdr.size else b""
            self._check_fds(fds, hdr.request)
            return Message(hdr.request, hdr.flags, payload, tuple(fds))
        except BaseException:
            close_fds(fds)
            raise

    def _check_fds(self, fds: list[int], request: int) -> None:
        for fd in fds:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) in self.refused_files:
                raise ProtocolError(f"request {request}: the front-end sent the worker's own host packet fd "
                                    f"(or another fd of the same file) as one of its file descriptors")

    def _recv_exact(self, size: int) -> bytes:
        buf = bytearray()
        while len(buf) < size:
            chunk = self._io(self.sock.recv, size - len(buf))
            if not chunk:
                raise ProtocolError("connection closed in the middle of a message")
            buf += chunk
        return bytes(buf)

    def _io(self, fn, *args):
        try:
            return fn(*args)
        except socket.timeout:
            raise ProtocolError(f"front-end stalled for {RECV_TIMEOUT:.0f} s in the middle of a message") from None
        except OSError as exc:
            if exc.errno in _GONE:
                raise FrontendGone(f"front-end connection lost: {os.strerror(exc.errno)}") from None
            raise

    def send(self, request: int, payload: bytes = b"", fds: tuple[int, ...] = (), *, reply: bool = False,
             need_reply: bool = False) -> None:
        data = encode(request, payload, reply=reply, need_reply=need_reply)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
        self._io(self.sock.sendmsg, [data], anc)


def _collect_fds(anc) -> list[int]:
    fds: list[int] = []
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - len(data) % arr.itemsize])
            fds.extend(arr)
    return fds


class Listener:
    """A listening unix socket (mode 0600 unless told) that hands out one front-end at a time.

    The file is bound under umask 0177, so it is never more open than 0600 even for an instant. When
    it is to get another `owner`/`group` (uid, gid; -1 keeps) or `mode` (a peer needs w to connect), it
    is bound under a temporary name, given them, listened on and renamed into place: PATH appears
    only once it is final and accepting."""

    def __init__(self, path: str, mode: int = 0o600, owner: int = -1, group: int = -1):
        self.path = path
        _clear_stale(path)
        # The file is removed on exit through its directory, opened now (a confined worker opens nothing)
        try:
            self.dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise from_oserror(exc, f"cannot listen on {path}") from None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        plain = mode == 0o600 and owner == -1 and group == -1
        where = path if plain else os.path.join(os.path.dirname(path), f".{os.getpid()}.vhostsplice.tmp")
        old, bound = os.umask(0o177), False
        try:
            if not plain:
                _unlink_socket(where)       # a leftover of a crashed run that had our pid
            self.sock.bind(where)
            bound = True
            if not plain:
                os.chown(where, owner, group)
                os.chmod(where, mode)
            self.sock.listen(1)
            if not plain:
                _link_into_place(where, path)
        except BaseException as exc:
            self.sock.close()
            os.close(self.dir_fd)
            if bound:
                _unlink_socket(where)
            if isinstance(exc, OSError):
                raise from_oserror(exc, f"cannot listen on {path}") from None
            raise
        finally:
            os.umask(old)

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self) -> Channel:
        conn, _ = self.sock.accept()
        conn.setblocking(True)
        return Channel(conn)

    def close(self) -> None:
        self.sock.close()
        if self.dir_fd >= 0:
            _unlink_socket(os.path.basename(self.path), self.dir_fd)
            os.close(self.dir_fd)
            self.dir_fd = -1


def _link_into_place(tmp: str, path: str) -> None:
    """link(2), not rename(2): a socket file that appeared at PATH since the stale check is not replaced."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise SetupError(f"{path} appeared while this worker was binding it", errno.EADDRINUSE) from None
    finally:
        _unlink_socket(tmp)


def _unlink_socket(path: str, dir_fd: int | None = None) -> None:
    try:
        if stat.S_ISSOCK(os.lstat(path, dir_fd=dir_fd).st_mode):
            os.unlink(path, dir_fd=dir_fd)
    except OSError:
        pass


def _clear_stale(path: str) -> None:
    """Remove a socket file nobody listens on; refuse one that is served (EADDRINUSE) or not a socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SetupError(f"{path} exists and is not a socket", errno.EEXIST)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        return
    except OSError as exc:
        raise from_oserror(exc, f"cannot probe {path}") from None
    finally:
        probe.close()
    raise SetupError(f"{path} is already served by another process", errno.EADDRINUSE)


def connect(path: str) -> Channel:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise from_oserror(exc, f"cannot connect to {path}") from None
    return Channel(sock)


def inherit(fd: int) -> Channel:
    """A connected unix stream socket passed down by the parent (QEMU's backend-program --fd)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise from_oserror(exc, f"--fd {fd}", ConfigError) from None
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise ConfigError(f"--fd {fd} is not a unix stream socket")
    return Channel(sock)
