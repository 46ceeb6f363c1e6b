"""`serve`'s memory table, as the front-end has set it and every worker has it: SET_MEM_TABLE's regions,
then those added one at a time (ADD_MEM_REG, with CONFIGURE_MEM_SLOTS), each with its fds, kept for
replacements (a new worker is sent the table as it stands). Every change is checked as a worker checks
it (device/memory.check_table), so a table every worker would refuse is never kept.

QEMU 7.2 sends each ADD/REM_MEM_REG once per queue pair (each vhost_dev keeps its own table): the same
region again (the same payload, the same file) is counted here instead of refused as an overlap, and
its REM_MEM_REG goes out with the last one (docs/architecture.md, "Memory slots").
"""
from __future__ import annotations

import os

from ..vhostuser import protocol as P
from ..vhostuser.channel import close_fd, close_fds
from ..errors import ProtocolError
from ..device.memory import check_table
from ..spec import Req

Kept = tuple[bytes, tuple[int, ...]]       # a message's payload and its fds, kept


class DeviceMemory:
    def __init__(self) -> None:
        self.table: Kept | None = None          # SET_MEM_TABLE's payload and its fds (one per region)
        self.slots: dict[tuple, Kept] = {}      # region key (slot()) -> ADD_MEM_REG's payload and fd
        self.users: dict[tuple, int] = {}       # region key -> how many ADD_MEM_REG the front-end sent for it

    def set_table(self, payload: bytes, fds: tuple[int, ...]) -> None:
        """SET_MEM_TABLE: the whole table anew; the regions added before are gone."""
        if self.table:
            close_fds(self.table[1])
        self.table = (payload, fds)
        self._drop_slots()

    def regions(self) -> tuple[P.MemRegion, ...]:
        """The device's memory table now: SET_MEM_TABLE's regions, then those added one at a time."""
        return self._table_regions() + tuple(P.decode_mem_reg(P.Message(Req.ADD_MEM_REG, 0, payload))
                                             for payload, _fds in self.slots.values())

    def replay(self) -> list[tuple[int, bytes, tuple[int, ...]]]:
        """What a replacement is sent: SET_MEM_TABLE, then every region added since, as (request, payload, fds)."""
        table = [(Req.SET_MEM_TABLE, *self.table)] if self.table else []
        return table + [(Req.ADD_MEM_REG, payload, fds) for payload, fds in self.slots.values()]

    def repeat(self, msg: P.Message) -> bool:
        """An ADD of a region the device has (the same file) or a REM of one added more than once: counted
        here, the message's fds closed; True: nothing is sent on."""
        try:
            key = slot(P.decode_mem_reg(msg))
        except ProtocolError:
            return False                   # change() refuses it
        kept, users = self.slots.get(key), self.users.get(key, 0)
        if kept is None:
            return False
        if msg.request == Req.ADD_MEM_REG:
            if len(msg.fds) != 1 or kept[0] != msg.payload or not same_file(kept[1][0], msg.fds[0]):
                return False               # another file for the same range: refused as an overlap
            self.users[key] = users + 1
        elif users > 1 and len(msg.fds) <= 1:
            self.users[key] = users - 1
        else:
            return False
        close_fds(msg.fds)
        return True

    def change(self, msg: P.Message) -> None:
        """ADD_MEM_REG (its fd kept) or REM_MEM_REG (an fd sent with it closed), checked as a worker checks
        it; a refused message's fds are closed and ProtocolError raised."""
        try:
            region = P.decode_mem_reg(msg)
            if msg.request == Req.ADD_MEM_REG:
                if len(msg.fds) != 1:
                    raise ProtocolError(f"ADD_MEM_REG: {len(msg.fds)} file descriptors, expected 1")
                check_table(P.MemTable(self.regions() + (region,)), msg.fds)
            elif len(msg.fds) > 1:
                raise ProtocolError(f"REM_MEM_REG: {len(msg.fds)} file descriptors, expected 0 or 1")
            else:
                self._forget(region)
        except BaseException:
            close_fds(msg.fds)
            raise
        if msg.request == Req.ADD_MEM_REG:
            self.slots[slot(region)] = (msg.payload, msg.fds)
            self.users[slot(region)] = 1
        else:
            close_fds(msg.fds)

    def close(self) -> None:
        if self.table:
            close_fds(self.table[1])
            self.table = None
        self._drop_slots()

    def _table_regions(self) -> tuple[P.MemRegion, ...]:
        if self.table is None:
            return ()
        return P.decode_mem_table(P.Message(Req.SET_MEM_TABLE, 0, self.table[0])).regions

    def _forget(self, region: P.MemRegion) -> None:
        kept = self.slots.pop(slot(region), None)
        if kept is not None:
            self.users.pop(slot(region), None)
            close_fds(kept[1])
            return
        regions = self._table_regions()
        i = next((i for i, r in enumerate(regions) if slot(r) == slot(region)), None)
        if i is None:
            raise ProtocolError(f"REM_MEM_REG: no region at gpa {region.gpa:#x} size {region.size:#x}"
                                f" uva {region.uva:#x}")
        fds = self.table[1]
        close_fd(fds[i])                   # a region of SET_MEM_TABLE: the kept table loses it
        rest, fds = regions[:i] + regions[i + 1:], fds[:i] + fds[i + 1:]
        self.table = (P.encode_mem_table(P.MemTable(rest)), fds) if rest else None

    def _drop_slots(self) -> None:
        for _payload, fds in self.slots.values():
            close_fds(fds)
        self.slots.clear()
        self.users.clear()


def same_file(a: int, b: int) -> bool:
    sa, sb = os.fstat(a), os.fstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def slot(region: P.MemRegion) -> tuple:
    """The key a region added one at a time is kept under (REM_MEM_REG names it by these three)."""
    return (region.gpa, region.size, region.uva)
