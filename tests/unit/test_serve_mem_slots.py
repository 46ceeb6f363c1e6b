"""serve's memory slots (serve_device.ServeDevice.mem_slot, device_memory.DeviceMemory): checked as a worker
checks them, kept for replacements, repeats (QEMU 7.2: once per queue pair) counted, every fd kept or closed."""
import os

import pytest

from support.fds import same_fds
from unit.test_supervisor import _lazy_device, _memfd
from vhostsplice.vhostuser import protocol as P
from vhostsplice.errors import ProtocolError
from vhostsplice.spec import ProtocolFeature as PF, Req, bit

MB = 1 << 20


@pytest.fixture
def sup():
    with same_fds():
        s, _started, _pf = _lazy_device(features=0)
        s.protocol_acked = bit(PF.CONFIGURE_MEM_SLOTS)
        yield s
        s.close()


def region(k: int) -> P.MemRegion:
    return P.MemRegion(gpa=k * MB, size=MB, uva=0x7F00_0000_0000 + k * MB, mmap_offset=0)


def add(s, k: int, fd: int) -> None:
    s.handle(P.Message(Req.ADD_MEM_REG, 1, P.encode_mem_reg(region(k)), (os.dup(fd),)))


def rem(s, k: int) -> None:
    s.handle(P.Message(Req.REM_MEM_REG, 1, P.encode_mem_reg(region(k))))


def test_a_repeated_region_is_counted_and_removed_with_the_last_rem(sup):
    fd = _memfd(MB)
    for _ in range(3):                   # three queue pairs' vhost_devs
        add(sup, 0, fd)
    assert sup.workers.sent == [(0, Req.ADD_MEM_REG), (1, Req.ADD_MEM_REG)]
    assert sup.memory.regions() == (region(0),)
    rem(sup, 0)
    rem(sup, 0)
    assert sup.workers.sent[2:] == [] and sup.memory.regions() == (region(0),)
    rem(sup, 0)
    assert sup.workers.sent[2:] == [(0, Req.REM_MEM_REG), (1, Req.REM_MEM_REG)] and sup.memory.regions() == ()
    with pytest.raises(ProtocolError, match="no region"):
        rem(sup, 0)
    os.close(fd)


@pytest.mark.parametrize("other", ["another file", "too small"])
def test_a_region_every_worker_would_refuse_is_refused_and_never_kept(sup, other):
    fd = _memfd(MB)
    add(sup, 0, fd)
    bad = _memfd(MB if other == "another file" else MB // 2)
    with pytest.raises(ProtocolError):
        add(sup, 0 if other == "another file" else 1, bad)     # the same range from another file: overlap
    assert sup.memory.regions() == (region(0),) and sup.workers.sent == [(0, Req.ADD_MEM_REG), (1, Req.ADD_MEM_REG)]
    os.close(fd)
    os.close(bad)


def test_rem_of_a_set_mem_table_region_rewrites_the_kept_table(sup):
    fd = _memfd(MB)
    table = P.MemTable((region(0), region(1)))
    sup.handle(P.Message(Req.SET_MEM_TABLE, 1, P.encode_mem_table(table), (os.dup(fd), os.dup(fd))))
    add(sup, 2, fd)
    rem(sup, 0)
    assert sup.memory.regions() == (region(1), region(2))
    assert len(sup.memory.table[1]) == 1          # its fd went with it (the fixture counts)
    sup.handle(P.Message(Req.SET_MEM_TABLE, 1, P.encode_mem_table(P.MemTable((region(5),))), (os.dup(fd),)))
    assert sup.memory.regions() == (region(5),)                   # a whole table anew: the added ones are gone
    os.close(fd)


def test_slots_are_refused_unless_negotiated(sup):
    sup.protocol_acked = 0
    fd = _memfd(MB)
    with pytest.raises(ProtocolError, match="CONFIGURE_MEM_SLOTS"):
        add(sup, 0, fd)
    with pytest.raises(ProtocolError, match="CONFIGURE_MEM_SLOTS"):
        sup.handle(P.Message(Req.GET_MAX_MEM_SLOTS, 1, b""))
    assert sup.memory.regions() == () and sup.workers.sent == []
    os.close(fd)
