"""A slow pure-Python reference of the C core's split ring (vs_split.c, vs_mem.c, vs_log.c, vs_net*.c).

It is the oracle of the differential fuzzer (harness.py): it keeps its own copy of guest memory and
its own ring state, does what the C core is specified to do for each operation, step by step in the
same order (the order matters: a hostile driver may point buffers at its own rings), and predicts
every byte the core writes, every packet it sends, every counter and the broken reason.

Written from the virtio 1.2 split-ring rules (2.7) and the comments of the C sources, not by
translating the C line by line; where the two disagree, the fuzzer reports it.
"""
from __future__ import annotations

import errno
import struct

NET_HDR = 12
MAX_IOV = 1024          # VS_MAX_IOV, and the kernel's UIO_MAXIOV for readv/writev
GUEST_IOV = MAX_IOV - 2  # iovecs one walk may fill (vs_api.h VS_GUEST_IOV): room for a header split + scratch
MAX_QUEUE = 32768
SCRATCH = 1 << 17       # datapath.SCRATCH_LEN: the buffer behind the guest's RX iovecs
F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4
RF_EVENT_IDX, RF_INDIRECT, RF_MRG = 1, 2, 4
MORE, TX_BLOCKED, RX_STARVED = 1, 2, 4
RX_IDLE = 0x100
U64 = (1 << 64) - 1
# broken reasons (vs_api.h VS_BROKEN_*)
AVAIL_IDX, HEAD, NEXT, LOOP, CHAIN_LEN, NESTED = 1, 2, 3, 4, 5, 6
BROKEN_NAMES = {AVAIL_IDX: "avail_idx", HEAD: "head", NEXT: "next", LOOP: "loop", CHAIN_LEN: "chain_len",
                NESTED: "nested_indirect"}
# per-chain outcomes (vs_api.h enum vs_chain_result)
OK, FAULT, BAD_DESC, TOO_MANY, SHORT = 0, 1, 2, 3, 4
STAT_FIELDS = ("packets", "bytes", "chains", "drops_fault", "drops_bad_desc", "drops_short",
               "drops_hostfd", "rx_starved", "notify_sent", "notify_suppressed", "batches", "drops_oversize")


class Broken(Exception):
    """The ring is now broken: the C core returns -EBADMSG."""


class Fatal(Exception):
    """A -errno that ends the poll (EFAULT with fault_exit, EPIPE from the host fd)."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


class Memory:
    """Physical areas (bytearrays, one per guard-paged area of the harness) and a region table over them.

    A region is (gpa, uva, size, area, offset, hva_align): `hva_align` is the real address of its byte 0
    modulo 16, which decides whether a ring's host pointer is aligned enough for the atomics."""

    def __init__(self, areas: list[bytearray]):
        self.areas = areas
        self.table: list[tuple[int, int, int, int, int, int]] = []

    def _find(self, addr: int, n: int, key: int):
        for reg in self.table:
            start, size = reg[key], reg[2]
            if addr < start or addr - start >= size:
                continue
            if n > size - (addr - start):
                return None
            return reg[3], reg[4] + (addr - start), (reg[5] + addr - start) & 15
        return None

    def uva(self, addr: int, n: int):
        return self._find(addr, n, 1)

    def gpa(self, addr: int, n: int):
        return self._find(addr, n, 0)

    def gpa_region(self, addr: int):
        for reg in self.table:
            if addr >= reg[0] and addr - reg[0] < reg[2]:
                return reg
        return None

    def read(self, loc, off: int, n: int) -> bytes:
        area, base = loc[0], loc[1] + off
        return bytes(self.areas[area][base:base + n])

    def write(self, loc, off: int, data: bytes) -> None:
        area, base = loc[0], loc[1] + off
        self.areas[area][base:base + len(data)] = data

    def iov_read(self, iov) -> bytes:
        return b"".join(bytes(self.areas[a][o:o + n]) for a, o, n in iov)

    def iov_write(self, iov, off: int, data: bytes) -> None:
        """vs_iov_write / readv: data at logical offset off of the iovec list, in iovec order."""
        pos = 0
        for a, o, n in iov:
            if not data:
                return
            if off >= n:
                off -= n
                continue
            k = min(n - off, len(data))
            self.areas[a][o + off:o + off + k] = data[:k]
            data = data[k:]
            off = 0
            pos += k


class Ring:
    def __init__(self):
        self.num = 0
        self.flags = 0
        self.desc_uva = self.avail_uva = self.used_uva = 0
        self.desc = self.avail = self.used = None
        self.last_avail = self.used_idx = self.signalled_used = 0
        self.at = 0             # the avail position of the chain pop_chain took last
        self.signalled_valid = 0
        self.running = 0
        self.broken = 0
        self.calls = 0          # writes to the call eventfd
        self.errs = 0           # writes to the err eventfd
        self.st = dict.fromkeys(STAT_FIELDS, 0)

    # -- ring memory ---------------------------------------------------------------------------
    def ld16(self, mem: Memory, loc, off: int) -> int:
        return struct.unpack("<H", mem.read(loc, off, 2))[0]

    def st16(self, mem: Memory, loc, off: int, v: int) -> None:
        mem.write(loc, off, struct.pack("<H", v & 0xFFFF))

    def avail_idx(self, mem):
        return self.ld16(mem, self.avail, 2)

    def fail(self, reason: int):
        if self.broken == 0:
            self.broken = reason
            self.errs += 1
        raise Broken()


class Pair:
    def __init__(self, mem: Memory):
        self.mem = mem
        self.rx, self.tx = Ring(), Ring()
        self.rx_max = NET_HDR + 1514
        self.tx_budget = self.rx_budget = 256
        self.fault_exit = 0
        self.omit = 0                       # header bytes the host fd does not carry (12 - host_hdr_len)
        self.empty_ok = False               # a 0-byte read is an empty datagram, not the peer closing
        self.wire: list[bytes] = []         # packets written to the host fd
        self.inbox: list[bytes] = []        # packets waiting on the host fd
        self.peer_closed = False            # the host fd's peer went away (after the inbox: end of file)
        self.trickle = False                # the core's host fd in io_uring batches: the trickle rule applies
        self.rx_last = 0                    # frames the last RX batch delivered, counted up to 2

    def ring(self, i: int) -> Ring:
        return self.rx if i == 0 else self.tx

    # -- set-up (datapath.py + vs_ring_start/remap) ----------------------------------------------
    def configure(self, flags: int, rx_max: int, fault_exit: int, tx_budget: int, rx_budget: int) -> None:
        self.rx.flags = self.tx.flags = flags
        self.rx_max, self.fault_exit = rx_max, fault_exit
        self.tx_budget, self.rx_budget = tx_budget, rx_budget

    def _map(self, r: Ring):
        n = r.num
        d = self.mem.uva(r.desc_uva, 16 * n)
        a = self.mem.uva(r.avail_uva, 6 + 2 * n)
        u = self.mem.uva(r.used_uva, 6 + 8 * n)
        if d is None or a is None or u is None:
            return -errno.EFAULT
        if a[2] & 1 or u[2] & 3:
            return -errno.EINVAL
        r.desc, r.avail, r.used = d, a, u
        return 0

    def start(self, i: int, num: int, desc: int, avail: int, used: int):
        """Datapath.start_ring: ("ok", pos) or ("ConfigError"/"GuestFaultError", errno)."""
        r = self.ring(i)
        if not 0 < num <= MAX_QUEUE or num & (num - 1):    # refused before the ring is touched
            return ("ConfigError", errno.EINVAL)
        r.num, r.desc_uva, r.avail_uva, r.used_uva = num, desc, avail, used
        rc = 0
        if desc & 15 or avail & 1 or used & 3:
            rc = -errno.EINVAL
        if rc == 0:
            rc = self._map(r)
        if rc < 0:
            r.running = 0
            r.desc = r.avail = r.used = None
            return ("ConfigError", errno.EINVAL) if rc == -errno.EINVAL else ("GuestFaultError", errno.EFAULT)
        pos = r.ld16(self.mem, r.used, 2)
        r.last_avail = r.used_idx = r.signalled_used = pos
        r.signalled_valid = 0
        r.broken = 0
        r.running = 1
        return ("ok", pos)

    def stop(self, i: int) -> int:
        r = self.ring(i)
        r.running = 0
        r.desc = r.avail = r.used = None
        return r.last_avail

    def set_memory(self, table):
        """Datapath.set_memory with a table the core holds (harness.py refuses a larger one): re-map running rings."""
        self.mem.table = list(table)
        failed = False
        for r in (self.rx, self.tx):
            if r.running and self._map(r) < 0:
                r.running = 0
                r.desc = r.avail = r.used = None
                failed = True
        return ("GuestFaultError", errno.EFAULT) if failed else ("ok", None)

    # -- the poll (vs_pair_poll) ---------------------------------------------------------------
    def poll(self):
        """("ok", flags) or (exception class name, errno) as Datapath.poll reports it."""
        if self.tx.broken or self.rx.broken:
            return ("GuestRingError", errno.EBADMSG)
        out = 0
        for r, batch in ((self.tx, self.tx_batch), (self.rx, self.rx_batch)):
            if not r.running:
                continue
            try:
                out |= batch(r)
            except Broken:
                return ("GuestRingError", errno.EBADMSG)
            except Fatal as f:
                return (("GuestFaultError" if f.code == errno.EFAULT else "HostFdError"), f.code)
        return ("ok", out)

    def _batch(self, r: Ring, budget: int, step) -> int:
        old = r.used_idx
        rc = 0
        try:
            self.notify_disable(r)
            rc = step(r, budget)
        finally:
            # the C batch publishes what it completed even when the ring broke or a fault ended it
            self.used_publish(r, old)
            r.st["batches"] += 1
        return rc

    def tx_batch(self, r: Ring) -> int:
        def step(r, budget):
            done = 0
            while True:
                n = self.avail_pending(r)
                if n == 0:
                    n = self.notify_enable(r, r.last_avail)
                if n <= 0:
                    return n
                if done >= budget:
                    return MORE
                done += 1
                rc = self.tx_one(r)
                if rc != 0:
                    return rc
        return self._batch(r, self.tx_budget, step)

    def rx_batch(self, r: Ring) -> int:
        before = r.st["packets"]

        def step(r, budget):
            done = 0
            if self.trickle and self.rx_last <= 1 and budget > 1:     # the trickle rule (rx_trickle)
                done, packets = 1, r.st["packets"]
                rc = self.rx_merge(r) if r.flags & RF_MRG else self.rx_single(r)
                if rc != 0:
                    return 0 if rc == RX_IDLE else rc
                if r.st["packets"] == packets or self.rx_last == 0:
                    return MORE
            while True:
                if done >= budget:
                    return MORE
                done += 1
                rc = self.rx_merge(r) if r.flags & RF_MRG else self.rx_single(r)
                if rc != 0:
                    return 0 if rc == RX_IDLE else rc
        try:
            return self._batch(r, self.rx_budget, step)
        finally:
            self.rx_last = min(r.st["packets"] - before, 2)

    # -- ring helpers -----------------------------------------------------------------------------
    def avail_pending(self, r: Ring) -> int:
        n = (r.avail_idx(self.mem) - r.last_avail) & 0xFFFF
        if n > r.num:
            r.fail(AVAIL_IDX)
        return n

    def notify_disable(self, r: Ring) -> None:
        if r.flags & RF_EVENT_IDX:
            return
        if not r.ld16(self.mem, r.used, 0) & 1:
            r.st16(self.mem, r.used, 0, 1)

    def notify_enable(self, r: Ring, seen: int) -> int:
        if r.flags & RF_EVENT_IDX:
            r.st16(self.mem, r.used, 4 + 8 * r.num, seen)
        else:
            r.st16(self.mem, r.used, 0, 0)
        if r.avail_idx(self.mem) == seen:
            return 0
        self.notify_disable(r)
        return self.avail_pending(r)

    def used_add(self, r: Ring, head: int, length: int) -> None:
        slot = r.used_idx & (r.num - 1)
        self.mem.write(r.used, 4 + 8 * slot, struct.pack("<II", head, length & 0xFFFFFFFF))
        r.used_idx = (r.used_idx + 1) & 0xFFFF

    def used_publish(self, r: Ring, old: int) -> None:
        if r.used_idx == old:
            return
        r.st16(self.mem, r.used, 2, r.used_idx)
        if not self.need_call(r):
            r.st["notify_suppressed"] += 1
            return
        r.st["notify_sent"] += 1
        r.calls += 1

    def need_call(self, r: Ring) -> bool:
        if not r.flags & RF_EVENT_IDX:
            return not r.ld16(self.mem, r.avail, 0) & 1
        old, new, valid = r.signalled_used, r.used_idx, r.signalled_valid
        r.signalled_used, r.signalled_valid = new, 1
        if not valid:
            return True
        event = r.ld16(self.mem, r.avail, 4 + 2 * r.num)
        return ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)

    def chain_fault(self, r: Ring, head: int, fault: int) -> int:
        key = {FAULT: "drops_fault", SHORT: "drops_short"}.get(fault, "drops_bad_desc")
        r.st[key] += 1
        r.st["chains"] += 1
        self.used_add(r, head, 0)
        if self.fault_exit:
            raise Fatal(errno.EFAULT)
        return 0

    # -- chain walking (2.7.5) --------------------------------------------------------------------
    def pop_chain(self, r: Ring, writable: bool, max_iov: int):
        """(head, outcome, iov, length, ring descriptors); raises Broken."""
        head = r.ld16(self.mem, r.avail, 4 + 2 * (r.last_avail & (r.num - 1)))
        if head >= r.num:
            r.fail(HEAD)
        r.at = r.last_avail                 # the chain's avail position: a rewind goes back here
        r.last_avail = (r.last_avail + 1) & 0xFFFF
        return (head,) + self.walk(r, head, writable, max_iov)

    def walk(self, r: Ring, head: int, writable: bool, max_iov: int):
        table, tn, indirect = r.desc, r.num, False
        i, seen, total, fault = head, 0, 0, OK
        iov: list[tuple[int, int, int]] = []
        length = ndesc = 0
        while True:
            seen += 1
            if seen > tn:
                r.fail(CHAIN_LEN if indirect else LOOP)
            total += 1
            if total > r.num:
                r.fail(CHAIN_LEN if indirect else LOOP)
            addr, n, flags, nxt = struct.unpack("<QIHH", self.mem.read(table, 16 * i, 16))
            ndesc += not indirect
            if flags & F_INDIRECT:
                if indirect:
                    r.fail(NESTED)
                if not r.flags & RF_INDIRECT or flags & F_NEXT or n == 0 or n % 16:
                    return BAD_DESC, iov, length, ndesc
                loc = self.mem.gpa(addr, n)
                if loc is None:
                    return FAULT, iov, length, ndesc
                table, tn, indirect = loc, n // 16, True
                i, seen = 0, 0
                continue
            if fault == OK:
                if bool(flags & F_WRITE) != writable:
                    fault = BAD_DESC
                else:
                    length += n
                    fault = self.gpa_to_iov(addr, n, iov, max_iov)
            if not flags & F_NEXT:
                return fault, iov, length, ndesc
            i = nxt
            if i >= tn:
                r.fail(NEXT)

    def gpa_to_iov(self, gpa: int, n: int, iov: list, max_iov: int) -> int:
        while n > 0:
            reg = self.mem.gpa_region(gpa)
            if reg is None:
                return FAULT
            off = gpa - reg[0]
            take = min(reg[2] - off, n)
            if len(iov) >= max_iov:
                return TOO_MANY
            iov.append((reg[3], reg[4] + off, take))
            n -= take
            if n > 0 and gpa > U64 - take:
                return FAULT
            gpa += take
        return OK

    # -- the host fd's view of a chain ----------------------------------------------------------------
    def host_iov(self, iov):
        """The chain's iovecs without the header bytes [12 - omit, 12) the host fd does not carry."""
        if self.omit == 0:
            return iov
        lo, hi = NET_HDR - self.omit, NET_HDR
        out, pos = [], 0
        for a, o, n in iov:
            start, end = pos, pos + n
            pos = end
            if end <= lo or start >= hi:
                out.append((a, o, n))
                continue
            if start < lo:
                out.append((a, o, lo - start))
            if end > hi:
                out.append((a, o + hi - start, end - hi))
        return out

    # -- TX ---------------------------------------------------------------------------------------
    def tx_one(self, r: Ring) -> int:
        head, rc, iov, length, _ = self.pop_chain(r, False, GUEST_IOV)
        if rc == OK and (length < NET_HDR or length == self.omit):
            rc = SHORT                      # (a header and no frame, to a fd that carries no header)
        if rc:
            return self.chain_fault(r, head, rc)
        out = self.host_iov(iov)
        if len(out) > MAX_IOV:              # writev: EINVAL, a counted drop
            r.st["drops_hostfd"] += 1
            r.st["chains"] += 1
            self.used_add(r, head, 0)
            return 0
        data = self.mem.iov_read(out)
        if data and self.peer_closed:       # EPIPE: not a per-packet drop, the end of the host fd
            raise Fatal(errno.EPIPE)
        if data:                            # a socket's write of 0 bytes sends no datagram, yet succeeds
            self.wire.append(data)
        r.st["packets"] += 1
        r.st["bytes"] += length - NET_HDR
        r.st["chains"] += 1
        self.used_add(r, head, 0)
        return 0

    # -- RX ---------------------------------------------------------------------------------------
    def readv(self, iov, cap: int):
        """One datagram from the host fd into the iovecs plus the scratch buffer: bytes read, or
        -errno. More than UIO_MAXIOV iovecs is EINVAL before anything is read. The length is the
        guest's view: the omitted header bytes count."""
        iov = self.host_iov(iov)
        cap -= self.omit
        if len(iov) + 1 > MAX_IOV:
            return -errno.EINVAL
        if not self.inbox:
            return 0 if self.peer_closed else -errno.EAGAIN
        pkt = self.inbox.pop(0)
        got = min(len(pkt), cap + SCRATCH)
        self.mem.iov_write(iov, 0, pkt[:min(got, cap)])
        return got + self.omit if got > 0 else got

    def zero_omitted(self, iov) -> None:
        if self.omit:
            self.mem.iov_write(iov, NET_HDR - self.omit, bytes(self.omit))

    def rx_error(self, r: Ring, got: int) -> int:
        if got == 0 and self.empty_ok:
            r.st["drops_short"] += 1
            return 0
        if got == 0:
            raise Fatal(errno.EPIPE)
        if got == -errno.EAGAIN:
            return RX_IDLE
        r.st["drops_hostfd"] += 1           # EINVAL (too many iovecs) is one of the dropped errors
        return 0

    def rx_starved(self, r: Ring, seen: int) -> int:
        n = self.notify_enable(r, seen)
        if n != 0:
            return 0
        r.st["rx_starved"] += 1
        return RX_STARVED

    def num_buffers(self, iov, n: int) -> None:
        self.mem.iov_write(iov, 10, struct.pack("<H", n))

    def rx_single(self, r: Ring) -> int:
        if self.avail_pending(r) == 0:
            return self.rx_starved(r, r.last_avail)
        head, rc, iov, length, _ = self.pop_chain(r, True, GUEST_IOV)
        if rc == OK and length < NET_HDR:
            rc = SHORT
        if rc:
            return self.chain_fault(r, head, rc)
        got = self.readv(iov, length)
        if got <= 0 or got < NET_HDR or got > length:
            r.last_avail = r.at
        if got <= 0:
            return self.rx_error(r, got)
        if got < NET_HDR:
            r.st["drops_short"] += 1
            return 0
        if got > length:
            r.st["drops_oversize"] += 1
            return 0
        self.zero_omitted(iov)
        self.num_buffers(iov, 1)
        self.used_add(r, head, got)
        r.st["packets"] += 1
        r.st["bytes"] += got - NET_HDR
        r.st["chains"] += 1
        return 0

    def rx_merge(self, r: Ring) -> int:
        m = {"heads": [], "cap": [], "ends": [], "iov": [], "ndesc": 0, "total": 0, "start": r.last_avail}
        try:
            rc = self.rx_collect(r, m)
        except (Broken, Fatal):
            r.last_avail = m["start"]
            raise
        seen = r.last_avail
        n = len(m["heads"])
        if n == 0 or (rc == 0 and m["ndesc"] < r.num):
            r.last_avail = m["start"]
        if n == 0 or (rc == 0 and m["ndesc"] < r.num):
            return self.rx_starved(r, seen)
        got = self.readv(m["iov"], m["total"])
        if got <= 0 or got < NET_HDR or got > m["total"]:
            r.last_avail = m["start"]
        if got <= 0:
            return self.rx_error(r, got)
        if got < NET_HDR:
            r.st["drops_short"] += 1
            return 0
        if got > m["total"]:
            r.st["drops_oversize"] += 1
            return 0
        left, used = got, 0
        for head, cap in zip(m["heads"], m["cap"]):
            if left <= 0:
                break
            k = min(left, cap)
            self.used_add(r, head, k)
            left -= k
            used += 1
        r.last_avail = m["ends"][used - 1] if used else m["start"]
        self.zero_omitted(m["iov"])
        self.num_buffers(m["iov"], used)
        r.st["packets"] += 1
        r.st["bytes"] += got - NET_HDR
        r.st["chains"] += used
        return 0

    def rx_collect(self, r: Ring, m: dict) -> int:
        want = max(self.rx_max, NET_HDR)
        while m["total"] < want:
            if self.avail_pending(r) == 0:
                return 0
            if len(m["iov"]) >= GUEST_IOV:
                return 1
            if self.rx_take(r, m) == 2:
                return 1
        return 1

    def rx_take(self, r: Ring, m: dict) -> int:
        head, rc, iov, length, ndesc = self.pop_chain(r, True, GUEST_IOV - len(m["iov"]))
        if rc == OK and length < NET_HDR:
            rc = SHORT
        if rc and m["heads"]:
            r.last_avail = r.at
            return 2
        if rc:
            m["start"] = r.last_avail
            return self.chain_fault(r, head, rc)
        if not m["heads"]:
            m["start"] = r.at
        m["heads"].append(head)
        m["ends"].append(r.last_avail)
        m["cap"].append(length)
        m["iov"].extend(iov)
        m["ndesc"] += ndesc
        m["total"] += length
        return 1

    # -- what the harness compares ------------------------------------------------------------------
    def stats(self) -> dict:
        out = {}
        for name, r in (("rx", self.rx), ("tx", self.tx)):
            d = dict(r.st)
            d["last_avail_idx"] = r.last_avail
            d["used_idx"] = r.used_idx
            d["broken"] = BROKEN_NAMES.get(r.broken) if r.broken else None
            out[name] = d
        return out
