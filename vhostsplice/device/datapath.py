"""Datapath: the only Python (with memory.py) that holds cffi objects of the C core.

It owns one `struct vs_pair` (RX ring 0 + TX ring 1 + the host packet fd, with the memory table and the
dirty log inside it) and the buffers the C core reads and writes through (kept alive with
ffi.from_buffer while a region table refers to them).  Every per-packet step is in C: `poll()` is one
call that runs one TX batch and one RX batch.  The ring functions take the memory table and their ring
(`vs_ring_start(&pair.mem, &pair.rx)`), never the pair: docs/architecture.md.
"""
from __future__ import annotations

import errno as _errno
import mmap
import os
from collections.abc import Iterable

from ..errors import ConfigError, GuestFaultError, GuestRingError, HostFdError
from ..spec import MAX_MEM_SLOTS, NET_HDR_LEN, RX_RING, TX_RING

TYPE_CHECKING = False
if TYPE_CHECKING:       # not imported at run time: typing is 0.5 MiB of a lone worker's memory (issue 18)
    from typing import Any

_API_VERSION = 12  # must match VS_API_VERSION in _core/vs_api.h

try:
    from .._vs_core import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(f"vhostsplice._vs_core is missing or unloadable ({exc}); rebuild: pip install .") from exc

if lib.vs_api_version() != _API_VERSION or lib.VS_API_VERSION != _API_VERSION:
    raise ImportError(
        f"vhostsplice._vs_core has API version {lib.vs_api_version()}, this Python wants {_API_VERSION};"
        " rebuild: pip install .")

MORE = lib.VS_MORE
TX_BLOCKED = lib.VS_TX_BLOCKED
RX_STARVED = lib.VS_RX_STARVED
PUBLISHED = lib.VS_PUBLISHED    # poll_round() only: a ring's used index moved (chains completed)
SPIN_AUTO = lib.VS_SPIN_AUTO    # wait()'s spin_us field: --busy-poll auto, the adaptive window

BROKEN_REASONS = {
    lib.VS_BROKEN_AVAIL_IDX: "avail_idx",          # avail->idx moved more than the ring size
    lib.VS_BROKEN_HEAD: "head",                    # a chain head past the ring
    lib.VS_BROKEN_NEXT: "next",                    # a next index past its table
    lib.VS_BROKEN_LOOP: "loop",                    # more descriptors than the ring holds
    lib.VS_BROKEN_CHAIN_LEN: "chain_len",          # more descriptors than the indirect table holds
    lib.VS_BROKEN_NESTED_INDIRECT: "nested_indirect",
    lib.VS_BROKEN_WRAP: "wrap",                    # packed: AVAIL/USED flags contradict the wrap counter
}
STAT_FIELDS = ("packets", "bytes", "chains", "drops_fault", "drops_bad_desc", "drops_short",
               "drops_hostfd", "rx_starved", "notify_sent", "notify_suppressed", "batches", "drops_oversize")
SCRATCH_LEN = 1 << 17     # more than any frame a host fd delivers (64 KiB GSO + headers)
STAGE_LEN = 4 + 69632     # a length prefix and the largest frame QEMU's -netdev stream sends (NET_BUFSIZE)
RING_NAMES = {RX_RING: "rx", TX_RING: "tx"}
HOST_HDR_LENS = (0, 10, NET_HDR_LEN)
URING_FIELDS = ("enters", "tx_sqes", "rx_sqes", "rx_copies", "confirms", "tx_raced", "trickles", "trickle_bursts")
_HOST_ERRNOS = {_errno.EBADFD, _errno.EIO, _errno.EPIPE}


def _untouched(size: int) -> tuple[mmap.mmap, Any]:
    """A buffer of `size` bytes the core writes into only now and then (the scratch, the stream stages): an
    anonymous mapping of its own, so its pages cost nothing until used (ffi.new zeroes, and so touches,
    every page: 128 KiB of PSS per idle worker). The mapping is kept with its pointer."""
    area = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return area, ffi.from_buffer("uint8_t[]", area)


def ring_size_ok(num: int, packed: bool = False) -> bool:
    """Whether num is a ring size the ring layout takes (split: a power of 2 in 1..32768; packed: any
    size in 1..32768): the one check, in the C layout (vs_ring_num_ok), asked by SET_VRING_NUM and by
    Datapath.start_ring."""
    return 0 <= num <= 0xFFFF_FFFF and bool(lib.vs_ring_num_ok(num, lib.VS_RF_PACKED if packed else 0))


PACKED_WRAP = lib.VS_PK_WRAP    # a packed position: index | wrap << 15 (vhost-user: each half of the state)


def packed_state(avail: int, used: int) -> int:
    """The 32-bit vhost-user packed vring state (SET/GET_VRING_BASE) of two 16-bit packed positions."""
    return (avail & 0xFFFF) | (used & 0xFFFF) << 16


def packed_positions(state: int, num: int) -> tuple[int, int]:
    """(avail, used) positions of a 32-bit packed vring state: bits 0-14 the next avail index, bit 15
    its wrap counter, bits 16-30 the next used index, bit 31 its wrap counter.  A front-end that sends
    only the avail half (bits 16-31 zero: DPDK, older QEMU) means used = avail.  Raises ConfigError
    (EPROTO) for a state that does not fit the 32 bits or an index outside a ring of num."""
    if not 0 <= state <= 0xFFFF_FFFF:
        raise ConfigError(f"packed vring state {state:#x} does not fit 32 bits", _errno.EPROTO)
    avail, used = state & 0xFFFF, state >> 16
    used = used or avail
    for name, pos in (("avail", avail), ("used", used)):
        if pos & (PACKED_WRAP - 1) >= num:
            raise ConfigError(f"packed vring state {state:#x}: {name} index {pos & (PACKED_WRAP - 1)}"
                              f" is outside a ring of {num}", _errno.EPROTO)
    return avail, used


def drain_eventfd(fd: int) -> int:
    """Read a non-blocking eventfd: its count, or 0 when it was not signalled."""
    rc = lib.vs_drain_eventfd(fd)
    if rc < 0:
        raise OSError(-rc, f"eventfd {fd}: read failed")
    return rc


class Datapath:
    """One virtqueue pair between guest rings and a host packet fd.

    hdr_len is the guest's virtio-net header (12 bytes, virtio_net_hdr_v1); host_hdr_len is how much of
    it the host fd carries in front of each frame: 12 (tap, vnet header 12), 10 (legacy vnet header,
    no num_buffers) or 0 (a socket: bare Ethernet frames). empty_ok: a 0-byte read is an empty
    datagram, not end of file; refused_drop: ECONNREFUSED loses one packet (connected UDP); stream: the
    fd is a byte stream framed as QEMU's -netdev stream does (4-byte big-endian length, then the frame).
    """

    def __init__(self, host_fd: int, *, hdr_len: int = NET_HDR_LEN, host_hdr_len: int | None = None,
                 empty_ok: bool = False, refused_drop: bool = False, stream: bool = False):
        if hdr_len != NET_HDR_LEN:
            raise ConfigError(f"hdr_len {hdr_len}: only the {NET_HDR_LEN}-byte virtio_net_hdr_v1 is supported")
        host_hdr_len = hdr_len if host_hdr_len is None else host_hdr_len
        if host_hdr_len not in HOST_HDR_LENS:
            raise ConfigError(f"host header length {host_hdr_len}: one of {HOST_HDR_LENS}")
        if stream and host_hdr_len:
            raise ConfigError("a stream host fd carries bare frames: host_hdr_len must be 0")
        self._pair = ffi.new("struct vs_pair *")
        self._keep: list[Any] = []          # from_buffer cdata the region table points into
        p = self._pair
        self._mem = ffi.addressof(p, "mem")     # struct vs_mem *: what the ring functions take
        p.mem.log = ffi.addressof(p, "log")     # the dirty log the memory's writes are marked in
        p.host_fd = host_fd
        p.hdr_len = hdr_len
        p.hdr_omit = hdr_len - host_hdr_len
        p.host_flags = ((lib.VS_HOST_EMPTY_OK if empty_ok else 0)
                        | (lib.VS_HOST_REFUSED_DROP if refused_drop else 0)
                        | (lib.VS_HOST_STREAM if stream else 0))
        if stream:      # a partly written frame's tail, and stream bytes not yet delivered
            self._stages = (_untouched(STAGE_LEN), _untouched(STAGE_LEN))
            p.tx_stage, p.rx_stage = (cdata for _map, cdata in self._stages)
            p.tx_stage_cap = p.rx_stage_cap = STAGE_LEN
        p.rx_max = 65536 + hdr_len
        p.tx_budget = p.rx_budget = 256
        # Catches the tail of an RX frame longer than the guest's buffers: dropped, never cut short.
        self._scratch = _untouched(SCRATCH_LEN)
        p.scratch, p.scratch_len = self._scratch[1], SCRATCH_LEN
        for r in (p.rx, p.tx):
            r.call_fd = r.err_fd = -1
        self._chains: dict[int, Any] = {}   # packed rings: the chain-length tables the core writes
        self._log: Any = None               # from_buffer cdata of the dirty log the core writes into
        p.uring.fd = -1
        self._uring: tuple | None = None    # the io_uring's fd, its two mappings and their cdata
        self.uring_why = "not asked for"    # why the host fd is read and written one frame per syscall
        self._wait = ffi.new("struct vs_wait *")     # the loop's wait (watch, watch_kick, wait, rounds)
        self._wait.epfd = self._wait.host_fd = self._wait.kick_fd[0] = self._wait.kick_fd[1] = -1
        self._wait.auto_key = -1

    # -- configuration ------------------------------------------------------------------------------
    def configure(self, *, mrg_rxbuf: bool, event_idx: bool, indirect: bool, rx_max: int,
                  fault_exit: bool = False, tx_budget: int = 256, rx_budget: int = 256,
                  packed: bool = False, in_order: bool = False) -> None:
        """Negotiated features and limits; call before start_ring (flags are read per batch; the layout,
        split or packed (VIRTIO_F_RING_PACKED), is chosen when a ring starts).  in_order
        (VIRTIO_F_IN_ORDER): a packed batch of device-readable buffers gets one used descriptor."""
        p = self._pair
        if not p.hdr_len <= rx_max <= 0xFFFFFFFF:
            raise ConfigError(f"rx_max {rx_max} must hold at least the {p.hdr_len}-byte header")
        if tx_budget < 1 or rx_budget < 1:
            raise ConfigError("tx_budget and rx_budget must be >= 1")
        flags = ((lib.VS_RF_EVENT_IDX if event_idx else 0) | (lib.VS_RF_INDIRECT if indirect else 0)
                 | (lib.VS_RF_MRG if mrg_rxbuf else 0) | (lib.VS_RF_PACKED if packed else 0)
                 | (lib.VS_RF_IN_ORDER if in_order else 0))
        p.rx.flags = p.tx.flags = flags
        p.rx_max, p.fault_exit = rx_max, int(bool(fault_exit))
        p.tx_budget, p.rx_budget = min(tx_budget, 0xFFFFFFFF), min(rx_budget, 0xFFFFFFFF)

    def set_host_hdr_len(self, host_hdr_len: int) -> None:
        """The host fd now carries host_hdr_len bytes of the header (a --packet socket whose vnet header
        follows the negotiated offloads): 0 leaves the whole header out on TX and zeroes it on RX.
        Call between batches only (the worker is single-threaded: never while poll() runs)."""
        p = self._pair
        if host_hdr_len not in HOST_HDR_LENS:
            raise ConfigError(f"host header length {host_hdr_len}: one of {HOST_HDR_LENS}")
        if p.host_flags & lib.VS_HOST_STREAM and host_hdr_len:
            raise ConfigError("a stream host fd carries bare frames: host_hdr_len must be 0")
        p.hdr_omit = p.hdr_len - host_hdr_len

    @property
    def host_hdr_len(self) -> int:
        return int(self._pair.hdr_len - self._pair.hdr_omit)

    def set_memory(self, regions: Iterable[Any]) -> None:
        """Install a region table (objects with .gpa .uva .size .buf) and re-map running rings. A table of
        more than VS_LINEAR_REGIONS goes to the core sorted by gpa (its lookup there is a binary search)."""
        regions = list(regions)
        if len(regions) > lib.VS_LINEAR_REGIONS:
            regions.sort(key=lambda r: r.gpa)
        if len(regions) > MAX_MEM_SLOTS:
            raise ConfigError(f"{len(regions)} memory regions, at most {MAX_MEM_SLOTS}")
        keep = []
        for r in regions:
            cbuf = ffi.from_buffer("uint8_t[]", r.buf, require_writable=True)
            keep.append(cbuf)
            if len(cbuf) < r.size:
                self._release(keep)
                raise ConfigError(f"region at gpa {r.gpa:#x}: buffer holds {len(cbuf)} bytes, size is {r.size}")
        mem = self._pair.mem
        mem.n = 0
        for i, (r, cbuf) in enumerate(zip(regions, keep)):
            mem.r[i].gpa, mem.r[i].uva, mem.r[i].size = r.gpa, r.uva, r.size
            mem.r[i].hva = ffi.cast("uint8_t *", cbuf)
        mem.n = len(regions)
        old, self._keep = self._keep, keep
        failed = [i for i in (RX_RING, TX_RING) if lib.vs_ring_remap(self._mem, self._ring(i)) < 0]
        self._release(old)
        if failed:
            names = " and ".join(RING_NAMES[i] for i in failed)
            raise GuestFaultError(f"{names} ring no longer inside guest memory after the new table",
                                  _errno.EFAULT)

    def memory_stats(self) -> dict:
        """The installed region table: how many regions, how many bytes."""
        mem = self._pair.mem
        return {"regions": int(mem.n), "bytes": sum(int(mem.r[i].size) for i in range(mem.n))}

    # -- the host fd's io_uring (vs_uring.c) ---------------------------------------------------------
    def enable_uring(self, entries: int = 32) -> str:
        """Batch the host fd's reads and writes: one io_uring_enter per batch, on a ring that can only
        readv/writev the host fd (docs/security.md).  Call before the worker confines itself.  Returns ''
        when it is on, else why not (one readv/writev per frame stays: uring_why says so too)."""
        p, u = self._pair, ffi.addressof(self._pair, "uring")
        if p.host_flags & lib.VS_HOST_STREAM:
            self.uring_why = "a byte stream"
            return self.uring_why
        fd = lib.vs_uring_setup(u, entries)
        if fd < 0:
            self.uring_why = f"io_uring_setup: {_errno.errorcode.get(-fd, -fd)}"
            return self.uring_why
        self._uring = (fd, [], [])
        try:
            for size, off in ((u.ring_len, 0), (u.sqes_len, lib.VS_URING_OFF_SQES)):
                self._uring[1].append(mmap.mmap(fd, size, mmap.MAP_SHARED, offset=off))
                self._uring[2].append(ffi.from_buffer(self._uring[1][-1]))
            ring, sqes = self._uring[2]
            rc = lib.vs_uring_attach(u, ring, len(ring), sqes, len(sqes)) or lib.vs_uring_restrict(u, p.host_fd)
        except OSError as exc:
            rc = -(exc.errno or _errno.EIO)
        if rc < 0:
            self.disable_uring()
            self.uring_why = f"io_uring set-up: {_errno.errorcode.get(-rc, -rc)}"
        else:
            self.uring_why = ""
        return self.uring_why

    def disable_uring(self) -> None:
        """Back to one readv/writev per frame; the ring is closed (its counters stay in host_io())."""
        self._pair.uring.on = 0
        if self._uring is None:
            return
        fd, maps, keep = self._uring
        self._uring = None
        self._release(keep)
        for m in maps:
            m.close()
        os.close(fd)
        self._pair.uring.fd = -1

    @property
    def uring_fd(self) -> int:
        """The io_uring's fd while batches go through it, else -1 (the sandbox allows io_uring_enter on it)."""
        return self._uring[0] if self._uring is not None else -1

    def host_io(self) -> dict:
        """How the host fd is read and written: io_uring batches or one readv/writev per frame (and why)."""
        u = self._pair.uring
        out: dict = {"path": "io_uring" if u.on else "readv/writev"}
        if not u.on:
            out["why"] = self.uring_why or f"turned off: {_errno.errorcode.get(-u.failed, u.failed)}"
        out.update({f: int(getattr(u, f)) for f in URING_FIELDS})
        return out

    def close(self) -> None:
        """Stop both rings and let go of every guest buffer and the log (so they can be unmapped)."""
        self.disable_uring()
        for i in (RX_RING, TX_RING):
            self.stop_ring(i)
        self._pair.mem.n = 0
        self._release(self._keep)
        self._keep = []
        self.set_log(None)

    # -- dirty log (live migration) ---------------------------------------------------------------
    def set_log(self, buf: Any) -> None:
        """Log into this writable buffer from now on (None: no log; logging is then a no-op).

        The old buffer is released here: after this returns the core never touches it again (the
        worker is single-threaded, so no batch is in flight), which is what the SET_LOG_BASE reply
        promises the front-end."""
        new = None
        if buf is not None:
            new = ffi.from_buffer("uint8_t[]", buf, require_writable=True)
            if len(new) == 0:
                ffi.release(new)
                raise ConfigError("the dirty log is empty")
        log = self._pair.log
        log.base, log.size = (ffi.cast("uint8_t *", new), len(new)) if new is not None else (ffi.NULL, 0)
        old, self._log = self._log, new
        if old is not None:
            ffi.release(old)

    def set_log_all(self, on: bool) -> None:
        """VHOST_F_LOG_ALL acked: log every guest write (into the log set_log installed, if any)."""
        self._pair.log.all = int(bool(on))

    def set_ring_log(self, index: int, enabled: bool, log_addr: int) -> None:
        """SET_VRING_ADDR's VHOST_VRING_F_LOG and log_guest_addr: log used-ring stores at log_addr + offset."""
        r = self._ring(index)
        r.log_addr = log_addr & 0xFFFF_FFFF_FFFF_FFFF
        r.log_used = int(bool(enabled))

    def log_write(self, gpa: int, length: int) -> int:
        """Mark [gpa, gpa + length) in the log (as the core does after a write); -ERANGE past its end."""
        return lib.vs_log_write(self._pair.mem.log, gpa, length)

    def log_stats(self) -> dict:
        log = self._pair.log
        return {"log_all": bool(log.all), "log_size": int(log.size), "log_writes": int(log.writes),
                "log_overflow": int(log.overflow)}

    @staticmethod
    def _release(cdatas: list[Any]) -> None:
        for c in cdatas:
            ffi.release(c)

    # -- rings ----------------------------------------------------------------------------------
    def _ring(self, index: int) -> Any:
        if index in RING_NAMES:
            return ffi.addressof(self._pair, RING_NAMES[index])   # struct vs_ring * (self._pair owns it)
        raise ConfigError(f"ring index {index}: this datapath has rings 0 (rx) and 1 (tx)")

    def start_ring(self, index: int, *, num: int, desc: int, avail: int, used: int,
                   call_fd: int = -1, err_fd: int = -1, base: int = 0) -> int:
        """Start a ring at front-end addresses (uva) in the layout configure() chose; returns its position.

        Split: taken from used->idx (base is not needed).  Packed: desc is the descriptor ring, avail the
        driver and used the device event suppression area, base the 32-bit vhost-user packed state
        (packed_positions); the ring resumes at its used position and the result is the state again."""
        r = self._ring(index)
        packed = bool(r.flags & lib.VS_RF_PACKED)
        if not ring_size_ok(num, packed):     # refused before the ring is touched
            rule = "in" if packed else "is not a power of 2 in"
            raise ConfigError(f"{RING_NAMES[index]} ring size {num} {rule} 1..{lib.VS_MAX_QUEUE_SIZE}"
                              + (" (packed)" if packed else ""))
        if packed:
            r.last_avail, r.used_idx = packed_positions(base, num)
            self._chains[index] = ffi.new("uint32_t[]", num)   # the core's table of chain lengths
            r.chain, r.chain_cap = self._chains[index], num
        r.num, r.desc_uva, r.avail_uva, r.used_uva = num, desc, avail, used
        r.call_fd, r.err_fd = call_fd, err_fd
        rc = lib.vs_ring_start(self._mem, r)
        if rc == -_errno.EINVAL:
            raise ConfigError(f"{RING_NAMES[index]} ring: addresses misaligned"
                              f" (desc {desc:#x}, avail {avail:#x}, used {used:#x})", _errno.EINVAL)
        if rc < 0:
            raise GuestFaultError(f"{RING_NAMES[index]} ring (desc {desc:#x}, avail {avail:#x}, used {used:#x},"
                                  f" size {num}) is not inside guest memory", -rc)
        return packed_state(rc, rc) if packed else rc

    def stop_ring(self, index: int) -> int:
        """Stop processing a ring; returns what GET_VRING_BASE reports: split, last_avail; packed, the
        32-bit packed state of its positions."""
        r = self._ring(index)
        r.running = 0
        r.desc = r.avail = r.used = ffi.NULL
        if r.layout == ffi.NULL or not r.flags & lib.VS_RF_PACKED:
            return int(r.last_avail)
        return packed_state(r.last_avail, r.used_idx)

    def ring_positions(self, index: int) -> tuple[int, int]:
        """(avail, used): the ring's two positions, opaque uint16 each (split: last_avail and the used
        index; packed: index | wrap << 15) - what a restart state page keeps."""
        r = self._ring(index)
        return int(r.last_avail), int(r.used_idx)

    def set_call_fd(self, index: int, fd: int) -> None:
        self._ring(index).call_fd = fd

    def set_err_fd(self, index: int, fd: int) -> None:
        self._ring(index).err_fd = fd

    def running(self, index: int) -> bool:
        return bool(self._ring(index).running)

    def attach_state(self, buf: Any) -> None:
        """The C core records ring positions in this state page (statepage.py) from now on; None: stop
        (call before the page is unmapped)."""
        old = getattr(self, "_state", None)
        self._state = None if buf is None else ffi.from_buffer("uint8_t[]", buf, require_writable=True)
        if self._state is not None and len(self._state) < ffi.sizeof("struct vs_ring_state"):
            ffi.release(self._state)
            self._state = None
            raise ConfigError("the state page is shorter than struct vs_ring_state")
        self._pair.state = ffi.NULL if self._state is None else ffi.cast("struct vs_ring_state *", self._state)
        if old is not None:
            ffi.release(old)

    # -- the work ---------------------------------------------------------------------------------
    def poll(self) -> int:
        """One wake-up's work: a TX batch and an RX batch. Returns MORE | TX_BLOCKED | RX_STARVED."""
        return self.poll_round() & ~PUBLISHED

    def poll_round(self) -> int:
        """poll() as the worker's loop calls it: its bits, and PUBLISHED when either ring completed chains."""
        rc = lib.vs_pair_poll(self._pair)
        if rc >= 0:
            return rc
        raise self._error(-rc)

    def rounds(self) -> Any:
        """The loop's poll outside a wait (vs_pair_rounds: one, and the re-check after one that published):
        the struct vs_wait, whose rounds, round and recheck say what ran and found, and its counts."""
        rc = lib.vs_pair_rounds(self._pair, self._wait)
        if rc < 0:
            raise self._error(-rc)
        return self._wait

    @property
    def waiting(self) -> Any:
        """The loop's struct vs_wait (vs_api.h): what epoll watches (kick_fd, live, synced), the call's
        limits (safety_ms, until_ns, spin_us), how the last call ended and its counts."""
        return self._wait

    def watch(self, epfd: int) -> None:
        """wait() waits on the loop's epoll EPFD, and takes the host fd's EPOLLIN as traffic."""
        self._wait.epfd, self._wait.host_fd = epfd, self._pair.host_fd

    def watch_kick(self, index: int, fd: int) -> None:
        """wait() takes ring INDEX's kicks on FD (-1: none): the loop's epoll watches FD for it, now."""
        self._wait.kick_fd[index] = fd

    def wait(self, timeout_ms: int, spin_us: int = 0, pending: bool = False) -> Any:
        """The loop's wait (vs_pair_wait): serves wake-ups of traffic in C until Python is needed; the
        struct vs_wait says why it returned: `took` (after a served wake-up whose bits Python must see),
        `n` events in `ev` for Python (a signal among them: the loop's signal fd), or neither (a timeout).
        PENDING: a poll is due first (the loop's MORE), without waiting."""
        rc = lib.vs_pair_wait(self._pair, self._wait, timeout_ms, spin_us, pending)
        if rc == 0:
            return self._wait
        if self._wait.took:
            raise self._error(-rc)
        raise OSError(-rc, f"the worker's wait: {os.strerror(-rc)}")

    def _error(self, code: int) -> Exception:
        if code == _errno.EBADMSG:
            parts = [f"{RING_NAMES[i]} ring: {BROKEN_REASONS.get(self._ring(i).broken, self._ring(i).broken)}"
                     for i in (RX_RING, TX_RING) if self._ring(i).broken]
            return GuestRingError("guest ring corrupted: " + ", ".join(parts), code)
        if code == _errno.EFAULT:
            return GuestFaultError("guest descriptor outside guest memory or malformed (fault exit)", code)
        text = _errno.errorcode.get(code, str(code))
        return HostFdError(f"host packet fd {self._pair.host_fd} failed: {text}",
                           code if code in _HOST_ERRNOS else _errno.EIO)

    def stats(self) -> dict:
        out = {}
        for i, name in RING_NAMES.items():
            r = self._ring(i)
            d = {f: int(getattr(r.st, f)) for f in STAT_FIELDS}
            d["last_avail_idx"] = int(r.last_avail)
            d["used_idx"] = int(r.used_idx)
            d["broken"] = BROKEN_REASONS.get(r.broken) if r.broken else None
            out[name] = d
        return out
