"""The ring-position state page: where a worker's ring positions outlive the worker (issue 15).

A split ring can resume from used->idx in guest memory; a packed ring keeps no used index there, so a
back-end that dies takes its used position (and both wrap counters) with it. The page is a small shared
mapping (a memfd `serve` holds per pair, or `run --state-file` on tmpfs) that the C core updates around
every publish (vs_net_publish, vs_net.c): a few stores per batch, no syscall, nothing per packet.

Layout (native little-endian, `struct vs_ring_state` in vs_api.h; tests/unit/test_statepage.py fails if
the two drift): a header (magic, version, size, layout, generation) and one slot per ring (its
addresses and size, live, seq, the positions after the last publish, and the positions a publish in
progress makes visible). A replacement reads the page once, as hostile input, into a copy (`decode`):
anything wrong (size, magic, version, layout, a position out of range, another ring) makes it ignore
the page and say why. How it resumes is `resume_split` / `resume_packed`; docs/design-notes.md has the
reasoning ("Restart: the state page").
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import mmap
import os
import stat
import struct
from dataclasses import dataclass

from ..errors import ConfigError, SetupError, from_oserror

log = logging.getLogger("vhostsplice")

MAGIC = 0x56535350           # b"PSSV" little-endian
VERSION = 1
HEADER = struct.Struct("<IIIIQ")                # magic, version, size, layout, generation
SLOT = struct.Struct("<QQQIIIHHHHI")            # desc, avail, used uva; num, live, seq; 4 positions; reserved
SIZE = HEADER.size + 2 * SLOT.size
LAYOUT_NONE, LAYOUT_SPLIT, LAYOUT_PACKED = 0, 1, 2
LAYOUTS = {LAYOUT_NONE: "none", LAYOUT_SPLIT: "split", LAYOUT_PACKED: "packed"}
MAX_NUM = 32768
# fstatfs f_type of the file systems a --state-file may live on: memory that dies with the host, as the
# guest does, and is never written back to a disk (linux/magic.h).
MEMORY_FS = {0x01021994: "tmpfs", 0x858458F6: "ramfs"}
DESC_SIZE, DESC_FLAGS_OFF = 16, 14              # packed descriptor: flags at byte 14 (virtio 1.2, 2.8.13)
F_AVAIL, F_USED = 1 << 7, 1 << 15


@dataclass(frozen=True)
class Slot:
    desc: int
    avail: int
    used: int
    num: int
    live: int
    seq: int
    avail_pos: int
    used_pos: int
    next_avail: int
    next_used: int


@dataclass(frozen=True)
class Image:
    """A decoded copy of a page: what the previous worker left."""

    layout: int
    generation: int
    slots: tuple[Slot, Slot]


def decode(data: bytes) -> tuple[Image | None, str]:
    """A page's bytes -> (Image, "") or (None, why it is ignored): 'empty' for a page never written."""
    if len(data) != SIZE:
        return None, f"size {len(data)}, expected {SIZE}"
    magic, version, size, layout, generation = HEADER.unpack_from(data)
    if magic == 0 and not any(data):
        return None, "empty"
    if magic != MAGIC:
        return None, f"bad magic {magic:#x}"
    if version != VERSION:
        return None, f"version {version}, this worker reads {VERSION}"
    if size != SIZE:
        return None, f"header size {size}, expected {SIZE}"
    if layout not in LAYOUTS:
        return None, f"unknown layout {layout}"
    slots = tuple(Slot(*SLOT.unpack_from(data, HEADER.size + i * SLOT.size)[:10]) for i in (0, 1))
    return Image(layout, generation, slots), ""


def _dist(a: int, b: int) -> int:
    return (b - a) & 0xFFFF


def slot_problem(slot: Slot, layout: int, num: int, addrs: tuple[int, int, int]) -> str:
    """'' if the slot describes this ring and its positions are possible, else why not."""
    if not slot.live:
        return "not live (the front-end was given the positions)"
    if (slot.desc, slot.avail, slot.used) != addrs or slot.num != num:
        return "another ring (addresses or size changed)"
    if not 1 <= num <= MAX_NUM:
        return f"ring size {num}"
    pairs = [(slot.avail_pos, slot.used_pos)] + ([(slot.next_avail, slot.next_used)] if slot.seq & 1 else [])
    for avail, used in pairs:
        if layout == LAYOUT_PACKED:
            if (avail & 0x7FFF) >= num or (used & 0x7FFF) >= num:
                return f"packed position out of the ring (avail {avail:#x}, used {used:#x}, size {num})"
        elif _dist(used, avail) > num:
            return f"avail position {avail} more than the ring size ahead of used position {used}"
    if slot.seq & 1 and layout == LAYOUT_SPLIT and _dist(slot.used_pos, slot.next_used) > num:
        return f"pending used position {slot.next_used} more than the ring size past {slot.used_pos}"
    return ""


@dataclass
class Resume:
    """How a ring resumed, for the stats (`resume.rx` / `resume.tx`)."""

    source: str                 # state-page | used-idx | front-end
    position: int               # what the ring resumed from (split: 16 bits; packed: the 32-bit base)
    front_end: int              # SET_VRING_BASE
    state: int | None = None    # the page's position (None: no usable page)
    used_idx: int | None = None     # split: used->idx in guest memory
    reason: str = ""            # why the page was not used, or what disagreed

    @property
    def disagreed(self) -> bool:
        return self.position != self.front_end

    def report(self) -> dict:
        return {"source": self.source, "disagreed": self.disagreed, "front_end": self.front_end,
                "state": self.state, "used_idx": self.used_idx, "position": self.position, "reason": self.reason}


def resume_split(slot: Slot | None, why: str, front_end: int, used_idx: int) -> Resume:
    """A split ring resumes from used->idx, what the driver has seen. The page is evidence: it agrees
    when used->idx is its position after the last publish, or the one a killed publish was making visible
    (seq odd). When they disagree (the ring was reset while no worker ran, a guest wrote its own used->idx)
    used->idx wins, as it always did: the page never makes a split resume worse."""
    if slot is None:
        return Resume("used-idx", used_idx, front_end, used_idx=used_idx, reason=why)
    seen = [slot.used_pos] + ([slot.next_used] if slot.seq & 1 else [])
    if used_idx in seen:
        return Resume("state-page", used_idx, front_end, state=used_idx, used_idx=used_idx)
    return Resume("used-idx", used_idx, front_end, state=slot.used_pos, used_idx=used_idx,
                  reason=f"the page's used position {slot.used_pos} is not the ring's used->idx {used_idx}")


def packed_base(avail_pos: int, used_pos: int) -> int:
    """vhost-user's 32-bit packed ring state: bits 0-14 avail index, 15 its wrap, 16-30 used, 31 its wrap."""
    return (avail_pos & 0xFFFF) | (used_pos & 0xFFFF) << 16


def published(flags: int | None, used_pos: int) -> bool:
    """Did the publish that starts at used_pos reach the driver? Its first descriptor's flags are stored
    last (release), marked used with the used wrap counter: AVAIL and USED both equal to it."""
    if flags is None:
        return False
    wrap = bool(used_pos & 0x8000)
    return bool(flags & F_AVAIL) == wrap and bool(flags & F_USED) == wrap


def resume_packed(slot: Slot | None, why: str, front_end: int, flags: int | None) -> Resume:
    """A packed ring resumes from the page: the positions after the last publish, or (seq odd: killed
    during one) those the publish was making visible if its first descriptor shows it reached the driver.
    Without a usable page only the front-end's SET_VRING_BASE is left."""
    if slot is None:
        return Resume("front-end", front_end, front_end, reason=why)
    avail, used = slot.avail_pos, slot.used_pos
    if slot.seq & 1 and published(flags, used):
        avail, used = slot.next_avail, slot.next_used
    base = packed_base(avail, used)
    return Resume("state-page", base, front_end, state=base)


def _fd(fd: int | None) -> int:
    return -1 if fd is None else fd


def read_u16(regions, uva: int) -> int | None:
    """Two bytes of guest memory at a front-end address (regions: memory.Region), or None outside it."""
    for r in regions:
        off = uva - r.uva
        if 0 <= off and off + 2 <= r.size:
            return int.from_bytes(r.buf[off:off + 2], "little")
    return None


def _fs_type(fd: int) -> int:
    """fstatfs(2)'s f_type (the first field of struct statfs, a long)."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(256)
    if libc.fstatfs(fd, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return struct.unpack_from("l", buf)[0] & 0xFFFFFFFF


def _refuse_off_memory(folder: str, what: str) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        kind = _fs_type(fd)
    finally:
        os.close(fd)
    _memory_only(kind, what)


def _memory_only(kind: int, what: str) -> None:
    if kind not in MEMORY_FS:
        raise ConfigError(f"{what}: not on tmpfs or ramfs (file system {kind:#x}): the page would be written"
                          " back to disk every batch and outlive a reboot; use /dev/shm or /run")


def map_fd(fd: int, what: str) -> mmap.mmap:
    """Map a state page file (a memfd or a file on tmpfs/ramfs), making it SIZE bytes if it is shorter.
    Anything else is EINVAL: a page on a disk is written back on every batch and would outlive a host
    reboot that the guest it describes does not."""
    try:
        st = os.fstat(fd)
        kind = _fs_type(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{what}: not a regular file")
        _memory_only(kind, what)
        if st.st_size < SIZE:
            os.ftruncate(fd, SIZE)
        return mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError as exc:
        raise from_oserror(exc, what) from None


def open_state(path: str | None, fd: int | None) -> mmap.mmap | None:
    """--state-file PATH (created 0600 if absent) or --state-fd N (inherited: closed once mapped)."""
    if path is not None and fd is not None:
        raise ConfigError("give one of --state-file and --state-fd")
    if path is not None:
        try:
            _refuse_off_memory(os.path.dirname(os.path.abspath(path)), f"--state-file {path}")  # create nothing there
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise from_oserror(exc, f"--state-file {path}") from None
    elif fd is None:
        return None
    what = f"--state-file {path}" if path is not None else f"--state-fd {fd}"
    try:
        _lock(fd, what)
        return map_fd(fd, what)     # the mapping keeps a duplicate of fd, and with it the lock
    finally:
        os.close(fd)


def _lock(fd: int, what: str) -> None:
    """One worker per page: two would overwrite each other's positions. flock belongs to the open file:
    a worker's own open of --state-file excludes another's until it ends (or is killed); an inherited
    --state-fd shares the holder's open file, and serve starts a pair's next worker only after the last."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SetupError(f"{what}: another worker uses this state page", errno.EBUSY) from None
    except OSError as exc:
        raise from_oserror(exc, what) from None


def new_memfd(name: str) -> int:
    """A sealed (no shrinking or growing) SIZE-byte memfd for serve to hold per pair: a worker maps it
    without fearing SIGBUS."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, SIZE)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
    except OSError:
        os.close(fd)
        raise
    return fd


class StatePage:
    """The page as one worker uses it. `mm` None: no page (`run` without --state-file): every ring
    resumes as a page-less back-end does, and says so."""

    def __init__(self, mm: mmap.mmap | None):
        self.mm = mm
        self.resumes: dict[int, Resume] = {}   # how each ring resumed when this worker first started it
        self.started: set[int] = set()          # later starts take the worker's own positions (ring.base)
        if mm is None:
            self.prior, self.reason, self.generation = None, "no state page (run --state-file)", 0
            return
        self.prior, self.reason = decode(bytes(mm[:SIZE]))      # a copy: read once, then judged
        if self.reason and self.reason != "empty":
            log.warning("state page ignored: %s", self.reason)
        self.generation = (self.prior.generation + 1) & (2**64 - 1) if self.prior else 1
        layout = self.prior.layout if self.prior else LAYOUT_NONE
        if self.prior is None:
            mm[:SIZE] = bytes(SIZE)         # a corrupt page is not left for the next worker to judge again
        HEADER.pack_into(mm, 0, MAGIC, VERSION, SIZE, layout, self.generation)

    def slot(self, index: int, layout: int, num: int, addrs: tuple[int, int, int]) -> tuple[Slot | None, str]:
        """The previous worker's slot for this ring if it can be trusted, else (None, why not)."""
        if self.prior is None:
            return None, self.reason
        if self.prior.layout not in (LAYOUT_NONE, layout):
            return None, f"the page is for {LAYOUTS[self.prior.layout]} rings, this ring is {LAYOUTS[layout]}"
        why = slot_problem(self.prior.slots[index], layout, num, addrs)
        return (None, why) if why else (self.prior.slots[index], "")

    def begin(self, index: int, layout: int, num: int, addrs: tuple[int, int, int], pos: tuple[int, int]) -> None:
        """The ring runs from pos (avail, used): its slot is live from now on, and the C core keeps it."""
        HEADER.pack_into(self.mm, 0, MAGIC, VERSION, SIZE, layout, self.generation)
        SLOT.pack_into(self.mm, HEADER.size + index * SLOT.size, *addrs, num, 1, 0, *pos, *pos, 0)

    def retire(self, index: int) -> None:
        """GET_VRING_BASE: the front-end has the positions now; a later worker takes its SET_VRING_BASE."""
        if self.mm is not None:
            struct.pack_into("<I", self.mm, HEADER.size + index * SLOT.size + 28, 0)

    def record(self, index: int, res: Resume) -> None:
        """Keep the decision for the stats; say on stderr what a reader of the log must know."""
        self.resumes[index] = res
        name = ("rx", "tx")[index]
        if res.source == "front-end" and (self.mm is None or not res.reason.startswith(("empty", "not live"))):
            log.warning("%s ring (packed) resumes from the front-end's positions only (%#x): %s", name,
                        res.front_end, res.reason)
        elif res.disagreed:
            log.log(logging.WARNING if res.source == "state-page" else logging.INFO,
                    "%s ring resumes from %s at %#x; SET_VRING_BASE said %#x%s", name, res.source, res.position,
                    res.front_end, f" ({res.reason})" if res.reason else "")
        elif res.reason and self.mm is not None and res.reason != "empty":
            log.warning("%s ring: state page not used: %s", name, res.reason)

    def start(self, datapath, regions, index: int, packed: bool, ring) -> int:
        """Start ring `index` (vring.RingState: num, addr, base, fds) where it must resume, and make its
        slot live. The first start in this worker resumes (and is recorded); a later one is this worker's
        own restart of the ring, from ring.base (its own stop's, or GET/SET_VRING_BASE's). Returns the
        position start_ring returned."""
        a = ring.addr
        addrs, layout = (a.desc, a.avail, a.used), LAYOUT_PACKED if packed else LAYOUT_SPLIT
        kw = dict(num=ring.num, desc=a.desc, avail=a.avail, used=a.used, call_fd=_fd(ring.call_fd),
                  err_fd=_fd(ring.err_fd))
        if index in self.started:
            pos = datapath.start_ring(index, base=ring.base, **kw)
        else:
            pos = self._resume(datapath, regions, index, layout, ring, kw)
            self.started.add(index)
        if self.mm is not None:
            self.begin(index, layout, ring.num, addrs, datapath.ring_positions(index))
        return pos

    def _resume(self, datapath, regions, index: int, layout: int, ring, kw: dict) -> int:
        slot, why = self.slot(index, layout, ring.num, (kw["desc"], kw["avail"], kw["used"]))
        if layout == LAYOUT_PACKED:
            flags = None
            if slot is not None and slot.seq & 1:
                flags = read_u16(regions, kw["desc"] + DESC_SIZE * (slot.used_pos & 0x7FFF) + DESC_FLAGS_OFF)
            res = resume_packed(slot, why, ring.base, flags)
            pos = datapath.start_ring(index, base=res.position, **kw)
        else:
            pos = datapath.start_ring(index, **kw)
            res = resume_split(slot, why, ring.base, pos)
        self.record(index, res)
        return pos

    def report(self) -> dict:
        out = {"page": "off" if self.mm is None else "on", "generation": self.generation,
               "ignored": self.reason if self.reason not in ("", "empty") else None}
        for index, res in self.resumes.items():
            out[("rx", "tx")[index]] = res.report()
        return out

    def close(self) -> None:
        if self.mm is not None:
            self.mm.close()
            self.mm = None
