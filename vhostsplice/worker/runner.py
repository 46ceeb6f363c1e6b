"""Assembles one worker from the command line's choices (a RunRecipe: `run`'s options, checked): host fd,
placement, front-end door, and then who it runs as (README: "Ownership and privileges").

Order: open the host fd (needs CAP_NET_ADMIN for a tap), apply placement (--nice/--sched may need
privileges), open the door (bind the socket and give it its owner, group and mode), and only then
drop to --user; the worker serves as that user with no capabilities. Everything later is done on fds
already open (TUNSETOFFLOAD on the tap queue needs no capability).
"""
from __future__ import annotations

import ctypes
import errno
import grp
import logging
import os
import pwd
from dataclasses import dataclass, fields, replace

from ..vhostuser import channel
from ..device.backend import BackendConfig
from .placement import apply_placement
from ..errors import ConfigError, SetupError, VhostspliceError, errno_name, from_oserror
from ..host.hostfd import open_tap
from ..host.hostfd_inspect import inspect_fd, open_packet
from ..host.offloads import probe_uso
from ..sandbox import Sandbox
from ..device.statepage import StatePage, open_state
from .loop import Worker, WorkerConfig

log = logging.getLogger("vhostsplice")


@dataclass(frozen=True)
class Ownership:
    """Who may connect and who the worker runs as (`run --socket-mode/--socket-group/--allow-uid/--user`)."""

    socket_mode: int = 0o600
    socket_group: int = -1                      # gid given to the socket file; -1: the creator's
    allow_uids: frozenset[int] | None = None    # None: whoever the socket's mode lets connect
    user: tuple[int, int] | None = None         # (uid, gid) to drop to before serving


def _lookup(kind: str, text: str) -> int:
    """A user or group name (or a number) -> its id; an unknown name is EINVAL."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid if kind == "user" else grp.getgrnam(text).gr_gid
    except KeyError:
        raise ConfigError(f"no such {kind}: {text!r}") from None


def parse_user(text: str) -> tuple[int, int]:
    """'NAME[:GROUP]' -> (uid, gid); without GROUP, the user's primary group (a bare uid needs a group
    unless it has a passwd entry)."""
    name, sep, group = text.partition(":")
    if not name or (sep and not group):
        raise ConfigError(f"--user {text!r}: expected NAME[:GROUP]")
    uid = _lookup("user", name)
    if group:
        return uid, _lookup("group", group)
    try:
        return uid, pwd.getpwuid(uid).pw_gid
    except KeyError:
        raise ConfigError(f"--user {text!r}: uid {uid} has no passwd entry; give the group (UID:GID)") from None


def parse_uids(text: str) -> frozenset[int]:
    """'1000,qemu,0' -> {1000, uid of qemu, 0}."""
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise ConfigError(f"--allow-uid {text!r}: expected UID[,UID...]")
    return frozenset(_lookup("user", p) for p in parts)


def parse_mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise ConfigError(f"--socket-mode {text!r}: expected octal permission bits such as 0660") from None
    if not 0 <= mode <= 0o777 or mode & 0o111:
        raise ConfigError(f"--socket-mode {text!r}: permission bits 0..0777 without x (connect needs w only)")
    if mode & 0o600 != 0o600:
        raise ConfigError(f"--socket-mode {text!r}: the owner keeps rw (0600 at least)")
    return mode


_PR_SET_NO_NEW_PRIVS = 38


def drop_privileges(uid: int, gid: int) -> None:
    """setgroups([]), setresgid, setresuid, no_new_privs; then verify nothing is kept (else EPERM).

    From root to a non-zero uid the kernel clears the permitted, effective and ambient capability sets
    (no SECBIT_KEEP_CAPS is set); the check below reads them back rather than trusting that."""
    try:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        raise from_oserror(exc, f"--user: cannot become uid {uid} gid {gid}") from None
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise SetupError("--user: prctl(PR_SET_NO_NEW_PRIVS)", ctypes.get_errno() or errno.EPERM)
    kept = _status_fields("CapEff", "CapPrm", "CapAmb")
    caps_kept = uid != 0 and any(int(v, 16) for v in kept.values())
    if os.getresuid() != (uid,) * 3 or os.getresgid() != (gid,) * 3 or os.getgroups() or caps_kept:
        raise SetupError(f"--user: privileges were not dropped ({kept})", errno.EPERM)


def _status_fields(*names: str) -> dict[str, str]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in names:
                out[key] = value.strip()
    return out


def _check_writable_as_user(stats_file: str | None, socket_path: str | None) -> None:
    """After the drop: the stats file must still be writable (it is replaced via a temp file in its
    directory); an unremovable socket is only warned about (a later run clears a stale one)."""
    if stats_file:
        folder = os.path.dirname(os.path.abspath(stats_file))
        if not os.access(folder, os.W_OK | os.X_OK):
            raise SetupError(f"--stats-file {stats_file}: its directory is not writable by --user "
                             f"uid {os.getuid()}", errno.EACCES)
    if socket_path and not os.access(os.path.dirname(os.path.abspath(socket_path)), os.W_OK | os.X_OK):
        log.warning("--user uid %d cannot remove %s on exit (its directory is not writable)", os.getuid(),
                    socket_path)


def _open_door(socket_path, connect_path, inherited_fd, own: Ownership):
    if socket_path is not None:
        owner = own.user[0] if own.user else -1
        group = own.socket_group if own.socket_group != -1 else (own.user[1] if own.user else -1)
        return channel.Listener(socket_path, mode=own.socket_mode, owner=owner, group=group)
    if connect_path is not None:
        return channel.connect(connect_path)
    return channel.inherit(inherited_fd)


def open_host(*, tap=None, host_fd=None, packet=None, mtu=None, bridge=None, offloads=True, control_fd=None,
              framing="none"):
    """The host packet fd: exactly one of a tap NAME, an inherited fd N, an interface for AF_PACKET."""
    chosen = [flag for flag, value in (("--tap", tap), ("--host-fd", host_fd), ("--packet", packet))
              if value is not None]
    if len(chosen) != 1:
        raise ConfigError("give exactly one of --tap NAME, --host-fd N, --packet IFNAME"
                          + (f" (got {', '.join(chosen)})" if chosen else ""))
    if framing != "none" and host_fd is None:
        raise ConfigError("--framing applies to --host-fd only")
    if bridge is not None and tap is None:
        raise ConfigError("--bridge applies to --tap only (attach an inherited fd's interface yourself)")
    if tap is not None:
        return open_tap(tap, mtu=mtu, bridge=bridge, vnet_hdr_len=12 if offloads else 0)
    if packet is not None:
        return open_packet(packet, vnet_hdr=offloads, mtu=mtu)
    return inspect_fd(host_fd, mtu=mtu, control_fd=control_fd, framing=framing)


@dataclass(frozen=True, init=False)
class RunRecipe:
    """One worker, as `vhostsplice run`'s options say it (cli/run.py's recipe): checked when made, so a recipe
    run_worker gets is one `run` accepts. serve's template makes one for all its workers and each worker
    takes it with its own values (for_pair), checked by the same code. Made by keywords, each field's
    default where none is given. The __init__ is written here, not generated: dataclass compiles the one it
    generates at every start, and that cost each lone `run` 0.2 MiB of private memory (issue 18)."""

    socket_path: str | None = None              # the door: exactly one of these three
    connect_path: str | None = None
    inherited_fd: int | None = None
    tap: str | None = None                      # the host side: --tap, --host-fd or --packet
    host_fd: int | None = None
    packet: str | None = None
    framing: str = "none"
    mtu: int | None = None
    bridge: str | None = None
    cpu: str | None = None                      # placement (placement.apply_placement)
    nice: int | None = None
    sched: str | None = None
    fault_exit: bool = False                    # --on-guest-error exit
    offloads: bool = True
    packed: bool = True
    stats_file: str | None = None
    stats_format: str = "json"
    stats_interval: float | None = None
    ownership: Ownership = Ownership()
    sandbox: str = "strict"
    busy_poll_us: int = 0
    state_file: str | None = None
    state_fd: int | None = None
    host_io: str = "auto"

    def __init__(self, **given) -> None:
        known = {f.name: f.default for f in fields(RunRecipe)}
        if given.keys() - known.keys():
            raise TypeError(f"RunRecipe has no field {sorted(given.keys() - known.keys())}")
        for name, default in known.items():
            object.__setattr__(self, name, given.get(name, default))
        self._check()

    def _check(self) -> None:
        if sum(d is not None for d in (self.socket_path, self.connect_path, self.inherited_fd)) != 1:
            raise ConfigError("give exactly one of --socket-path, --connect, --fd")
        if not self.tap and self.host_fd is None and not self.packet:
            raise ConfigError("a host side is required: --tap NAME, --host-fd N or --packet IFNAME")
        check_stats(self.stats_file, self.stats_interval)

    def to_plain(self) -> dict:
        """The recipe as JSON's types (a lone `run` hands it to its worker's own interpreter: worker/entry.py)."""
        plain = {f.name: getattr(self, f.name) for f in fields(RunRecipe)}
        own = self.ownership
        plain["ownership"] = {"socket_mode": own.socket_mode, "socket_group": own.socket_group,
                              "allow_uids": None if own.allow_uids is None else sorted(own.allow_uids),
                              "user": None if own.user is None else list(own.user)}
        return plain

    @classmethod
    def from_plain(cls, plain: dict) -> "RunRecipe":
        """to_plain's dict -> the same recipe, checked as when made."""
        own = plain["ownership"]
        ownership = Ownership(socket_mode=own["socket_mode"], socket_group=own["socket_group"],
                              allow_uids=None if own["allow_uids"] is None else frozenset(own["allow_uids"]),
                              user=None if own["user"] is None else tuple(own["user"]))
        return cls(**dict(plain, ownership=ownership))

    def for_pair(self, *, inherited_fd: int, state_fd: int | None, stats_file: str, cpu: str | None) -> "RunRecipe":
        """This recipe with what serve's template gives each worker of its own (serve/template.py's
        WorkerSpec.values): its channel, its state page, its stats file, its CPU; checked as when made."""
        return replace(self, inherited_fd=inherited_fd, state_fd=state_fd, stats_file=stats_file, cpu=cpu)


def check_stats(stats_file: str | None, stats_interval: float | None) -> None:
    """An interval rewrites a file, so it needs one (`run`'s and `serve`'s --stats-interval)."""
    if stats_interval is not None and not stats_file:
        raise ConfigError("--stats-interval rewrites --stats-file: give --stats-file PATH too")


def run_worker(recipe: RunRecipe) -> int:
    """Set up, serve until stopped, report the counters; returns the exit code. The worker confines
    itself (--sandbox, vhostsplice/sandbox) after all of this and before its first message."""
    r = recipe
    confinement = Sandbox(r.sandbox)
    page = StatePage(None)
    hostfd = open_host(tap=r.tap, host_fd=r.host_fd, packet=r.packet, mtu=r.mtu, bridge=r.bridge,
                       offloads=r.offloads, control_fd=r.inherited_fd, framing=r.framing)
    door = None
    try:
        if r.offloads and not hostfd.offloads_ok:
            log.info("%s %s carries no vnet header: offloads are not offered", hostfd.kind, hostfd.name)
        page = StatePage(open_state(r.state_file, r.state_fd))     # mapped before the sandbox: no syscall per write
        uso = r.offloads and probe_uso(hostfd)       # once, before privileges and the sandbox go
        apply_placement(r.cpu, r.nice, r.sched)
        door = _open_door(r.socket_path, r.connect_path, r.inherited_fd, r.ownership)
        confinement.prepare()
        if r.ownership.user is not None:
            drop_privileges(*r.ownership.user)
            _check_writable_as_user(r.stats_file, r.socket_path)
            log.info("serving as uid %d gid %d", *r.ownership.user)
        backend = BackendConfig(offloads=r.offloads and hostfd.offloads_ok, uso=uso, fault_exit=r.fault_exit,
                                mtu=hostfd.mtu, packed=r.packed)
        config = WorkerConfig(backend, r.stats_file, allow_uids=r.ownership.allow_uids,
                              sandbox=confinement if r.sandbox != "off" else None,
                              stats_format=r.stats_format, stats_interval=r.stats_interval,
                              busy_poll_us=r.busy_poll_us, state=page, host_io=r.host_io)
        worker = Worker(door, hostfd, config)
        door = None           # the worker owns it now
        code = worker.run()
        worker.report()
        if code:
            raise _Exit(code, worker.reason)
        return 0
    finally:
        if door is not None:
            door.close()
        hostfd.close()
        page.close()


class _Exit(VhostspliceError):
    def __init__(self, code: int, reason: str):
        super().__init__(reason or errno_name(code), code)
