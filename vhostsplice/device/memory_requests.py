"""The memory-table requests of backend.py's handler table: SET_MEM_TABLE (the whole table) and, with
VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS, GET_MAX_MEM_SLOTS / ADD_MEM_REG / REM_MEM_REG (one region at a
time: memory hot-plug). Every change is checked by memory.check_table, installed in the core (which
re-maps running rings onto it) and only then are the old mappings unmapped. `b` is a backend.Backend.
"""
from __future__ import annotations

from ..vhostuser import protocol as P
from ..vhostuser.channel import close_fds
from ..errors import GuestFaultError, ProtocolError
from .memory import GuestMemory
from ..spec import MAX_MEM_SLOTS, ProtocolFeature as PF, bit


def set_mem_table_exec(b, msg: P.Message) -> None:
    try:
        memory = GuestMemory(P.decode_mem_table(msg), msg.fds)
    finally:
        close_fds(msg.fds)    # the mappings stay valid without the fds
    gone = b.memory.regions if b.memory is not None else []
    _install(b, memory, memory.regions, added=memory.regions, gone=gone)


def get_max_mem_slots_exec(b, msg: P.Message) -> bytes:
    _need_mem_slots(b, msg)
    return P.encode_u64(MAX_MEM_SLOTS)


def add_mem_reg_exec(b, msg: P.Message) -> None:
    """One region more (memory hot-plug): checked against the table it joins, as SET_MEM_TABLE's."""
    try:
        _need_mem_slots(b, msg)
        region = P.decode_mem_reg(msg)
        memory = b.memory if b.memory is not None else GuestMemory(P.MemTable(()), ())
        regions, new = memory.with_added(region, msg.fds[0])
    finally:
        close_fds(msg.fds)    # the mapping stays valid without the fd
    _install(b, memory, regions, added=[new], gone=[])


def rem_mem_reg_exec(b, msg: P.Message) -> None:
    """One region less (hot-unplug): matched on gpa, size and uva; an fd sent with it is closed."""
    close_fds(msg.fds)
    _need_mem_slots(b, msg)
    region = P.decode_mem_reg(msg)
    if b.memory is None:
        raise ProtocolError("REM_MEM_REG before any memory region was added")
    regions, gone = b.memory.with_removed(region)
    _install(b, b.memory, regions, added=[], gone=[gone])


def region_fds(b, msg: P.Message) -> int:
    """SET_MEM_TABLE: one fd per region."""
    return len(P.decode_mem_table(msg).regions)


def rem_fds(b, msg: P.Message) -> int:
    """REM_MEM_REG: QEMU sends no fd; the spec lets a front-end send the region's (it is closed)."""
    return min(len(msg.fds), 1)


def _need_mem_slots(b, msg: P.Message) -> None:
    if not b.protocol_acked & bit(PF.CONFIGURE_MEM_SLOTS):
        raise ProtocolError(f"{msg.name} without VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS negotiated")


def _install(b, memory: GuestMemory, regions: list, added: list, gone: list) -> None:
    """Hand the core a new region table (re-mapping running rings onto it), then keep it in `memory`
    (b.memory from now) and unmap what left it. A running ring that falls outside the new table is
    stopped by the core, and the GuestFaultError ends the session (docs/architecture.md, "Memory slots"):
    the table is installed all the same."""
    try:
        b.datapath.set_memory(regions)
    except GuestFaultError:
        _keep(b, memory, regions, gone)
        raise
    except BaseException:
        for r in added:        # not installed: the core still points into the old mappings
            r.close()
        raise
    _keep(b, memory, regions, gone)
    b._check_log_coverage()
    for ring in b.rings:
        b._maybe_start(ring)


def _keep(b, memory: GuestMemory, regions: list, gone: list) -> None:
    if b.memory is not None and b.memory is not memory:
        b.memory.regions = []          # a whole new table: the old holder's regions are all in `gone`
    memory.commit(regions, gone)
    b.memory = memory
