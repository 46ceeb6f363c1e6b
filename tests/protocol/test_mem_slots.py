"""Memory slots (VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS): GET_MAX_MEM_SLOTS, ADD_MEM_REG, REM_MEM_REG
against the real back-end stack. Each added region passes SET_MEM_TABLE's checks against the table it
joins; every fd a message carries is kept or closed (the fixture counts them); running rings are
re-mapped when the table changes and stopped (EFAULT) when their region goes."""
from __future__ import annotations

import errno
import struct

import pytest

from protocol import test_hostile_frontend as hostile
from protocol.test_hostile_frontend import GPA, MEM, UVA, eproto
from vhostsplice.vhostuser import protocol as P
from vhostsplice.device.features import RUN_PROTOCOL_FEATURES
from vhostsplice.device.datapath import lib
from vhostsplice.errors import GuestFaultError
from vhostsplice.serve.serve_device import PROTOCOL_FEATURES as SERVE_PROTOCOL_FEATURES
from vhostsplice.spec import MAX_MEM_SLOTS, Feature as F, ProtocolFeature as PF, Req, bit

env = hostile.env     # the fixture, shared

SLOT = 1 << 16          # the size of the small regions added after the first


def slots(env) -> None:
    env.handle(Req.SET_PROTOCOL_FEATURES, P.encode_u64(bit(PF.CONFIGURE_MEM_SLOTS)))


def add(env, gpa, size, uva, offset=0, fd=None):
    body = P.encode_mem_reg(P.MemRegion(gpa, size, uva, offset))
    env.handle(Req.ADD_MEM_REG, body, (env.memfd if fd is None else fd,))


def rem(env, gpa, size, uva, fds=()):
    env.handle(Req.REM_MEM_REG, P.encode_mem_reg(P.MemRegion(gpa, size, uva, 0)), fds)


def slot(k: int) -> tuple[int, int, int, int]:
    return (GPA + MEM + k * SLOT, SLOT, UVA + MEM + k * SLOT, (k * SLOT) % MEM)


def running_on_slots(env, extra: int) -> None:
    """What QEMU does with CONFIGURE_MEM_SLOTS: no SET_MEM_TABLE, one ADD per region; the rings live in
    the first region, `extra` small regions follow above it."""
    slots(env)
    env.handle(Req.SET_FEATURES, P.encode_u64(bit(F.F_VERSION_1)))
    add(env, GPA, MEM, UVA)
    for k in range(extra):
        add(env, *slot(k))
    env.ring(0)
    env.ring(1)
    assert env.dp.running(0) and env.dp.running(1)


def test_run_and_serve_offer_memory_slots():
    assert RUN_PROTOCOL_FEATURES & bit(PF.CONFIGURE_MEM_SLOTS)
    assert SERVE_PROTOCOL_FEATURES == RUN_PROTOCOL_FEATURES


def test_get_max_mem_slots_is_the_cores_table_size(env):
    eproto(env.backend.handle, P.Message(Req.GET_MAX_MEM_SLOTS, 1, b""))   # not negotiated yet
    slots(env)
    env.handle(Req.GET_MAX_MEM_SLOTS)
    reply = env.fe_sock.recv(64)
    assert len(reply) == 20 and struct.unpack_from("<Q", reply, 12)[0] == MAX_MEM_SLOTS == lib.VS_MAX_REGIONS


def test_more_than_eight_regions_added_while_rings_run(env):
    running_on_slots(env, extra=12)
    assert env.dp.memory_stats()["regions"] == 13 and len(env.backend.memory.regions) == 13
    env.dp.poll()
    rem(env, *slot(5)[:3])
    assert env.dp.memory_stats()["regions"] == 12
    assert env.dp.running(0) and env.dp.running(1)       # their region stayed: re-mapped, running
    add(env, *slot(5))                                # the slot can be filled again
    assert env.dp.memory_stats()["regions"] == 13


def test_removing_the_rings_region_stops_them(env):
    running_on_slots(env, extra=2)
    with pytest.raises(GuestFaultError) as info:
        rem(env, GPA, MEM, UVA)
    assert info.value.errno == errno.EFAULT
    assert not env.dp.running(0) and not env.dp.running(1)
    assert env.dp.memory_stats()["regions"] == 2 and len(env.backend.memory.regions) == 2


@pytest.mark.parametrize("region", [
    (GPA + MEM - 4096, SLOT, UVA + 4 * MEM, 0),              # gpa overlaps the first region
    (GPA + 4 * MEM, SLOT, UVA + MEM - 4096, 0),              # uva overlaps
    ((1 << 64) - 4096, SLOT, UVA + 4 * MEM, 0),              # gpa wraps
    (GPA + 4 * MEM, SLOT, (1 << 64) - 4096, 0),              # uva wraps
    (GPA + 4 * MEM, 0, UVA + 4 * MEM, 0),                    # empty
    (GPA + 4 * MEM, SLOT, UVA + 4 * MEM, MEM),               # offset past the fd's end
    (GPA + 4 * MEM, 1 << 40, UVA + 4 * MEM, 0),              # larger than the fd
    (GPA, MEM, UVA, 0),                                      # the same region again
])
def test_bad_region_is_eproto_closes_its_fd_and_keeps_the_table(env, region):
    running_on_slots(env, extra=1)
    eproto(add, env, *region)
    assert env.dp.memory_stats()["regions"] == 2
    assert env.dp.running(0) and env.dp.running(1)


def test_slots_are_refused_unless_negotiated(env):
    eproto(add, env, GPA, MEM, UVA, match="CONFIGURE_MEM_SLOTS")
    eproto(rem, env, GPA, MEM, UVA, match="CONFIGURE_MEM_SLOTS")
    assert env.backend.memory is None


def test_wrong_payload_or_fd_count_is_eproto(env):
    slots(env)
    body = P.encode_mem_reg(P.MemRegion(GPA, MEM, UVA, 0))
    eproto(env.handle, Req.ADD_MEM_REG, body[:-8], (env.memfd,))     # no padding u64
    eproto(env.handle, Req.ADD_MEM_REG, body, ())                     # no fd
    eproto(env.handle, Req.ADD_MEM_REG, body, (env.memfd, env.memfd))
    eproto(env.handle, Req.REM_MEM_REG, body, (env.memfd, env.memfd))
    assert env.backend.memory is None


def test_rem_of_an_unknown_region_is_eproto_and_its_fd_is_closed(env):
    running_on_slots(env, extra=1)
    eproto(rem, env, *slot(3)[:3], (env.memfd,), match="no region")
    rem(env, *slot(0)[:3], (env.memfd,))           # a known one with its fd: removed, fd closed
    assert env.dp.memory_stats()["regions"] == 1


def test_no_more_regions_than_slots(env):
    slots(env)
    for k in range(MAX_MEM_SLOTS):
        add(env, GPA + k * 4096, 4096, UVA + k * 4096, 0)
    assert env.dp.memory_stats()["regions"] == MAX_MEM_SLOTS
    eproto(add, env, GPA + MAX_MEM_SLOTS * 4096, 4096, UVA + MAX_MEM_SLOTS * 4096, 0, match="slots")


def test_set_mem_table_after_slots_replaces_them(env):
    running_on_slots(env, extra=3)
    env.table()
    assert env.dp.memory_stats()["regions"] == 1
    assert env.dp.running(0) and env.dp.running(1)
