"""hostfd_inspect.inspect_fd on fds any user can make: what each kind becomes, and what is refused (no root)."""
from __future__ import annotations

import errno
import os
import socket

import pytest

from vhostsplice.host import hostfd, hostfd_inspect
from vhostsplice.errors import ConfigError, VhostspliceError


@pytest.fixture
def closing():
    objs = []
    yield objs.append
    for o in objs:
        o.close()


def inspect(sock, **kw) -> hostfd.HostFd:
    """inspect_fd on a dup (the HostFd owns and closes it)."""
    host = hostfd_inspect.inspect_fd(os.dup(sock.fileno()), **kw)
    return host


@pytest.mark.parametrize("sock_type,kind,empty_ok", [
    (socket.SOCK_SEQPACKET, "unix-seqpacket", False),
    (socket.SOCK_DGRAM, "unix-dgram", True),
])
def test_unix_socketpair_ends(closing, sock_type, kind, empty_ok):
    a, b = socket.socketpair(socket.AF_UNIX, sock_type)
    closing(a), closing(b)
    host = inspect(a)
    closing(host)
    assert (host.kind, host.name, host.vnet_hdr_len, host.offloads_ok) == (kind, "socketpair", 0, False)
    assert (host.empty_ok, host.refused_drop, host.stream, host.mtu) == (empty_ok, False, False, 1500)
    assert os.get_blocking(host.fd) is False


def test_connected_udp_drops_refused_and_names_its_peer(closing):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closing(u)
    u.connect(("127.0.0.1", 9))
    host = inspect(u, mtu=9000)
    closing(host)
    assert (host.kind, host.name, host.empty_ok, host.refused_drop, host.mtu) == \
        ("udp", "127.0.0.1:9", True, True, 9000)


def test_stream_needs_framing_qemu(closing):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    closing(a), closing(b)
    with pytest.raises(ConfigError) as info:
        inspect(a)
    assert "--framing qemu" in str(info.value)
    host = inspect(a, framing="qemu")
    closing(host)
    assert (host.kind, host.stream, host.vnet_hdr_len) == ("unix-stream", True, 0)


def test_socket_without_vnet_header_takes_no_offloads(closing):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    closing(a), closing(b)
    host = inspect(a)
    closing(host)
    host.set_offload(0)                       # what the back-end asks when nothing was offered: fine
    with pytest.raises(ConfigError):
        host.set_offload(1)


@pytest.mark.parametrize("make,code", [
    (lambda: open("/proc/self/stat", "rb"), errno.EINVAL),
    (lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM), errno.EINVAL),
    (lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM), errno.EINVAL),
    (lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM), errno.EINVAL),
], ids=["regular-file", "unconnected-unix-dgram", "unconnected-udp", "unconnected-tcp-with-framing"])
def test_refused(closing, make, code):
    obj = make()
    closing(obj)
    fd = os.dup(obj.fileno())
    try:
        with pytest.raises(VhostspliceError) as info:
            hostfd_inspect.inspect_fd(fd, framing="qemu" if isinstance(obj, socket.socket) and
                              obj.type == socket.SOCK_STREAM else "none")
        assert info.value.errno == code
    finally:
        os.close(fd)


def test_not_open_is_ebadf_and_control_socket_is_einval(closing):
    r, w = os.pipe()
    os.close(r), os.close(w)
    with pytest.raises(VhostspliceError) as info:
        hostfd_inspect.inspect_fd(r)
    assert info.value.errno == errno.EBADF
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    closing(a), closing(b)
    with pytest.raises(ConfigError, match="control socket"):
        hostfd_inspect.inspect_fd(a.fileno(), control_fd=a.fileno())


@pytest.mark.parametrize("bad", [-1, "3", None])
def test_not_a_number_is_einval(bad):
    with pytest.raises(ConfigError):
        hostfd_inspect.inspect_fd(bad)


def test_unknown_framing_is_einval():
    with pytest.raises(ConfigError):
        hostfd_inspect.inspect_fd(0, framing="tcp")
