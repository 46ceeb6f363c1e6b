import os

import pytest

from vhostsplice.errors import ProtocolError
from vhostsplice.device.memory import GuestMemory
from vhostsplice.vhostuser.protocol import MemRegion, MemTable


@pytest.fixture
def memfd():
    fds = []

    def make(size):
        fd = os.memfd_create("t")
        os.ftruncate(fd, size)
        fds.append(fd)
        return fd
    yield make
    for fd in fds:
        os.close(fd)


def test_maps_region_with_offset(memfd):
    fd = memfd(8192)
    os.pwrite(fd, b"hello", 4096)
    mem = GuestMemory(MemTable((MemRegion(0x1000, 4096, 0x7000, 4096),)), (fd,))
    try:
        region = mem.regions[0]
        assert bytes(region.buf[:5]) == b"hello"
        # what Datapath.set_memory hands the core, which translates uva 0x7005 to gpa 0x1005, 0x8000 to none
        assert (region.gpa, region.uva, region.size, len(region.buf)) == (0x1000, 0x7000, 4096, 4096)
    finally:
        mem.close()


def test_fd_smaller_than_region_is_refused(memfd):
    # Touching a mapping past the end of its file would be SIGBUS: refuse at SET_MEM_TABLE.
    with pytest.raises(ProtocolError, match="holds 4096 bytes"):
        GuestMemory(MemTable((MemRegion(0, 8192, 0x7000, 0),)), (memfd(4096),))


@pytest.mark.parametrize("regions", [
    (MemRegion(0, 8192, 0x10000, 0), MemRegion(4096, 4096, 0x20000, 0)),      # gpa overlap
    (MemRegion(0, 4096, 0x10000, 0), MemRegion(8192, 4096, 0x10000, 0)),      # uva overlap
])
def test_overlapping_regions_are_refused(memfd, regions):
    with pytest.raises(ProtocolError, match="overlap"):
        GuestMemory(MemTable(regions), tuple(memfd(8192) for _ in regions))


def test_zero_and_wrapping_sizes_are_refused(memfd):
    with pytest.raises(ProtocolError, match="size 0"):
        GuestMemory(MemTable((MemRegion(0, 0, 0, 0),)), (memfd(4096),))
    with pytest.raises(ProtocolError, match="wraps"):
        GuestMemory(MemTable((MemRegion((1 << 64) - 4096, 8192, 0, 0),)), (memfd(8192),))


def test_fd_count_must_match(memfd):
    with pytest.raises(ProtocolError, match="fds"):
        GuestMemory(MemTable((MemRegion(0, 4096, 0, 0),)), ())


def test_unmappable_fd_is_a_protocol_error():
    r, w = os.pipe()
    try:
        with pytest.raises(ProtocolError, match="cannot map"):
            GuestMemory(MemTable((MemRegion(0, 4096, 0, 0),)), (r,))
    finally:
        os.close(r)
        os.close(w)
