"""The command line. Options become configuration; exceptions become exit codes, here and nowhere else.

Exit codes follow errors.EXIT_TABLE (README, "Exit codes"): 0 on a requested stop, an errno otherwise.
click's own usage errors (normally 1/2) are EINVAL like every other configuration error.
"""
from __future__ import annotations

import errno
import functools
import json
import logging
import os
import sys

import click

from . import __version__
from .errors import EXIT_TABLE, ConfigError, VhostspliceError, errno_name, signals_held
from .worker.placement import parse_cpus

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
log = logging.getLogger("vhostsplice")


def _from_environment(param: str) -> bool:
    ctx = click.get_current_context()
    return ctx.get_parameter_source(param) == click.core.ParameterSource.ENVIRONMENT


def _exit_table_help() -> str:
    rows = [f"  {code if code >= 0 else 'errno':>5}  {name:<11} {text}" for code, name, text in EXIT_TABLE]
    return "Exit codes:\n\n\b\n" + "\n".join(rows)


@click.group(context_settings=CONTEXT, epilog=_exit_table_help())
@click.version_option(__version__, "-V", "--version")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv: every message).")
def cli(verbose: int) -> None:
    """vhostsplice: a userspace virtio-net back-end, one virtqueue pair per process.

    `run` serves one queue pair of a vhost-user front-end (QEMU, DPDK virtio-user) onto a tap queue, in
    the calling thread, until it is stopped; its exit code is an errno. `demo` shows it working with
    nothing else installed.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("vhostsplice[%(process)d]: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.WARNING - 10 * verbose)
    log.propagate = False


def signals_held_until_the_loop(command):
    """The stop signals (and SIGUSR1) are held blocked from the command's first line until its loop has its
    handlers (worker.py, supervisor.py release them): a stop during set-up is a clean stop (exit 0)."""
    @functools.wraps(command)
    def held(*args, **kwargs):
        with signals_held(drain=True):
            return command(*args, **kwargs)
    return held


def stats_options(command):
    """--stats-file, --stats-format and --stats-interval, shared by `run` (its counters) and `serve` (one
    file for the device, every pair in it)."""
    options = (
        click.option("--stats-file", metavar="PATH",
                     help="Write the statistics here (run: instead of stderr; serve: every pair's, in one "
                          "file) at exit, on SIGUSR1 (run) and every --stats-interval."),
        click.option("--stats-format", type=click.Choice(["json", "prometheus"]), default="json", show_default=True,
                     help="One JSON object, or Prometheus text (one metric family per counter; labels worker = "
                          "the file's name, pair (serve), ring, reason) for node_exporter's textfile collector: "
                          "name the file *.prom in its directory."),
        click.option("--stats-interval", type=click.FloatRange(min=0.1), metavar="SECONDS",
                     help="Also rewrite --stats-file every SECONDS while running (atomically: a reader never "
                          "sees half a file)."),
    )
    for option in reversed(options):
        command = option(command)
    return command


def _check_stats(stats_file, stats_interval) -> None:
    """What stats_options cannot say per option: an interval rewrites a file, so it needs one."""
    if stats_interval is not None and not stats_file:
        raise ConfigError("--stats-interval rewrites --stats-file: give --stats-file PATH too")


def ownership_options(command):
    """--socket-mode, --socket-group, --allow-uid and --user, shared by `run` and `serve`."""
    options = (
        click.option("--socket-mode", metavar="OCTAL", default="0600", show_default=True,
                     help="Permission bits of the --socket-path file (connecting needs w): 0660 lets "
                          "--socket-group in."),
        click.option("--socket-group", metavar="GROUP|GID",
                     help="Group of the --socket-path file (with --socket-mode 0660)."),
        click.option("--allow-uid", "allow_uid", metavar="UID[,UID...]", envvar="VHOSTSPLICE_ALLOW_UID",
                     help="Serve only front-ends whose SO_PEERCRED uid (or user name) is listed; root too only "
                          "if listed. Others are closed unserved and counted (refused.peer_uid; serve: a "
                          "'refused' event); a listening worker keeps listening, a --connect/--fd one exits "
                          "EACCES. Default: anyone the socket mode lets in."),
        click.option("--user", "run_as", metavar="NAME[:GROUP]",
                     help="After opening the host fd and the socket, drop to this user (and its primary group, "
                          "or GROUP): no supplementary groups, no capabilities, no_new_privs. The socket file is "
                          "given to the user. serve: every worker drops; the supervisor stays root to open tap "
                          "queues for replacements."),
    )
    for option in reversed(options):
        command = option(command)
    return command


def sandbox_option(command):
    """--sandbox, shared by `run` and `serve` (which passes it to every worker)."""
    return click.option(
        "--sandbox", type=click.Choice(["strict", "log", "off"]), default="strict", show_default=True,
        envvar="VHOSTSPLICE_SANDBOX",
        help="Confine the worker before its first message (docs/security.md): no capabilities, no_new_privs, "
             "Landlock (no file system but the stats and socket directories), a seccomp allow-list; a syscall "
             "outside it kills the worker with SIGSYS (exit 159). 'log' lets such calls through and the "
             "kernel logs them (audit type=1326); 'off' confines nothing. `serve` also confines itself, before "
             "it accepts a front-end, with the larger set its workers' start-up needs (five capabilities, "
             "read-only file system, execute only this interpreter).")(command)


def busy_poll_option(command):
    """--busy-poll, shared by `run` and `serve` (which passes it to every worker)."""
    return click.option(
        "--busy-poll", "busy_poll", type=click.IntRange(0, 100000), default=0, show_default=True, metavar="USEC",
        envvar="VHOSTSPLICE_BUSY_POLL",
        help="After a batch, keep polling the rings and the host fd for up to USEC microseconds before sleeping "
             "in epoll (like vhost_net's busyloop timeout and QEMU's tap poll-us): lower latency for a CPU kept "
             "busy meanwhile (benchmarks/RESULTS.md); 0 sleeps at once.")(command)


@cli.command(context_settings=CONTEXT, epilog=_exit_table_help())
@click.option("--socket-path", metavar="PATH", envvar="VHOSTSPLICE_SOCKET",
              help="Listen on this unix socket (mode 0600) and serve the first front-end that connects.")
@click.option("--connect", "connect_path", metavar="PATH",
              help="Connect to a front-end that listens on PATH (QEMU -chardev socket,server=on).")
@click.option("--fd", "inherited_fd", type=int, metavar="N",
              help="Serve an already connected unix socket inherited as fd N (QEMU backend-program convention).")
@click.option("--tap", metavar="NAME", envvar="VHOSTSPLICE_TAP",
              help="Tap interface to open one queue of (created if absent, multi-queue, vnet header).")
@click.option("--host-fd", "host_fd", type=click.IntRange(0), metavar="N",
              help="Use inherited fd N as the host side: a tap or macvtap queue (its vnet header is asked, not "
                   "assumed), an AF_PACKET socket bound to an interface, or a connected unix SOCK_DGRAM/"
                   "SOCK_SEQPACKET or UDP socket (bare frames: no offloads), or a stream socket with --framing qemu. "
                   "Instead of --tap.")
@click.option("--framing", type=click.Choice(["none", "qemu"]), default="none", show_default=True,
              help="With --host-fd of a connected stream socket (unix or TCP): 'qemu' frames each packet with a "
                   "4-byte big-endian length, as QEMU's -netdev stream does. A stream socket without it is EINVAL.")
@click.option("--packet", metavar="IFNAME",
              help="Use an AF_PACKET socket bound to interface IFNAME (all protocols; PACKET_VNET_HDR with "
                   "--offloads). Instead of --tap.")
@click.option("--mtu", type=click.IntRange(68, 65535),
              help="Set the tap's MTU (--tap); with --host-fd/--packet: the MTU to assume (default: the "
                   "interface's, else 1500).")
@click.option("--bridge", metavar="BR", help="Enslave the tap to this existing bridge (--tap only).")
@click.option("--cpu", metavar="LIST", envvar="VHOSTSPLICE_CPU",
              help="Pin this worker to these CPUs, e.g. 2-3,6 (must be in the allowed set).")
@click.option("--nice", type=click.IntRange(-20, 19), help="Scheduling niceness of the worker.")
@click.option("--sched", metavar="POLICY", help="Scheduling policy: fifo:PRIO, rr:PRIO or other.")
@busy_poll_option
@click.option("--on-guest-error", type=click.Choice(["count", "exit"]), default="count", show_default=True,
              help="Per-chain guest faults (bad address, bad descriptor) are counted, or end the worker (EFAULT).")
@click.option("--offloads/--no-offloads", default=True, show_default=True,
              help="Offer checksum/TSO/UFO/ECN offloads, and USO where the host fd takes it (passed through the "
                   "tap's vnet header). With "
                   "--no-offloads a tap opened by --tap carries no vnet header (unless other queues of it "
                   "already do): the kernel then builds none per frame.")
@click.option("--packed/--no-packed", default=True, show_default=True, envvar="VHOSTSPLICE_PACKED",
              help="Offer the packed virtqueue (VIRTIO_F_RING_PACKED, virtio 1.2 2.8); --no-packed offers split "
                   "rings only.")
@click.option("--state-file", metavar="PATH", envvar="VHOSTSPLICE_STATE_FILE",
              help="Keep the rings' positions in this file on tmpfs or ramfs (e.g. /dev/shm/vm1-net0.state; "
                   "created 0600, refused elsewhere: EINVAL), updated around every batch, so a worker started "
                   "again with the same file resumes where this one stopped even if it was killed: the only way "
                   "a packed ring can resume (README \"Restarts\"). serve and vhostsplice-supervise hold one for you.")
@click.option("--state-fd", type=click.IntRange(0), metavar="N", envvar="VHOSTSPLICE_STATE_FD",
              help="As --state-file, for an inherited memfd or tmpfs file N (serve passes one to each worker).")
@stats_options
@ownership_options
@sandbox_option
@click.option("--print-capabilities", is_flag=True,
              help='Print {"type": "net"} and exit (vhost-user backend program convention).')
@click.option("--print-sandbox", is_flag=True,
              help="Print the syscall allow-list of --sandbox strict and what this "
                   "kernel supports (seccomp actions, Landlock ABI), as JSON, and exit.")
@signals_held_until_the_loop
def run(socket_path, connect_path, inherited_fd, tap, host_fd, framing, packet, mtu, bridge, cpu, nice, sched,
        busy_poll, on_guest_error, offloads, packed, state_file, state_fd, stats_file, stats_format, stats_interval,
        socket_mode, socket_group, allow_uid, run_as, sandbox, print_capabilities, print_sandbox):
    """Serve one virtqueue pair (ring 0 RX, ring 1 TX) until stopped.

    Exactly one of --socket-path, --connect or --fd says where the front-end is, and one of --tap,
    --host-fd or --packet where the packets go (README: "Host packet fds"). The worker blocks in the
    calling thread; SIGTERM or SIGINT stop it with exit 0; SIGUSR1 prints the counters (JSON) while it runs.
    On exit it prints one JSON object of counters to stderr (or --stats-file).

    Ownership (README: "Ownership and privileges"): one front-end per worker (a second connection is
    closed unserved while the first is served); the socket is 0600 unless --socket-mode; --allow-uid
    checks the peer's uid; --user drops root once the tap and socket are open. A host fd that is the
    control socket is EINVAL; a front-end that sends the host fd back in a message is EPROTO.

    \b
    Examples:
      vhostsplice run --socket-path /run/vm1/net0.sock --tap vm1net0 --cpu 1
      vhostsplice run --socket-path /run/vm1/net0.sock --tap vm1net0 --user qemu --allow-uid qemu
      vhostsplice run --socket-path /run/vm1/net0.sock --host-fd 3 3<>/dev/tap12
      vhostsplice run --socket-path /run/vm1/net0.sock --packet eth1
    """
    if print_capabilities:
        click.echo(json.dumps({"type": "net"}))
        return 0
    if print_sandbox:
        from .sandbox import describe
        click.echo(json.dumps(describe(), indent=1))
        return 0
    doors = [d for d in (socket_path, connect_path, inherited_fd) if d is not None]
    if len(doors) != 1:
        raise ConfigError("give exactly one of --socket-path, --connect, --fd")
    if tap and (host_fd is not None or packet) and _from_environment("tap"):
        tap = None      # VHOSTSPLICE_TAP is a default; an explicit --host-fd/--packet on the command line wins
    if not tap and host_fd is None and not packet:
        raise ConfigError("a host side is required: --tap NAME, --host-fd N or --packet IFNAME")
    _check_stats(stats_file, stats_interval)
    from .worker.runner import run_worker
    ownership = _ownership(socket_path, socket_mode, socket_group, allow_uid, run_as)
    return run_worker(socket_path=socket_path, connect_path=connect_path, inherited_fd=inherited_fd, tap=tap or None,
                      host_fd=host_fd, framing=framing, packet=packet or None, mtu=mtu, bridge=bridge,
                      placement=(cpu, nice, sched),
                      fault_exit=on_guest_error == "exit", offloads=offloads, packed=packed, stats_file=stats_file,
                      stats_format=stats_format, stats_interval=stats_interval,
                      ownership=ownership, sandbox=sandbox, busy_poll_us=busy_poll, state_file=state_file,
                      state_fd=state_fd)


def _ownership(socket_path, socket_mode, socket_group, allow_uid, run_as):
    """The ownership options -> runner.Ownership; names are resolved now (an unknown one is EINVAL)."""
    from .worker import runner
    sets_socket = socket_group is not None or _source("socket_mode") != click.core.ParameterSource.DEFAULT
    if sets_socket and socket_path is None:
        raise ConfigError("--socket-mode/--socket-group apply to --socket-path only")
    return runner.Ownership(
        socket_mode=runner.parse_mode(socket_mode),
        socket_group=runner._lookup("group", socket_group) if socket_group is not None else -1,
        allow_uids=runner.parse_uids(allow_uid) if allow_uid is not None else None,
        user=runner.parse_user(run_as) if run_as is not None else None)


def _source(param: str):
    return click.get_current_context().get_parameter_source(param)


@cli.command(context_settings=CONTEXT, epilog=_exit_table_help())
@click.option("--socket-path", metavar="PATH", required=True, envvar="VHOSTSPLICE_SOCKET",
              help="Listen on this unix socket (mode 0600) for the multi-queue front-end.")
@click.option("--tap", metavar="NAME", required=True, envvar="VHOSTSPLICE_TAP",
              help="Multi-queue tap: each worker opens its own queue of it.")
@click.option("--queues", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Queue pairs offered (GET_QUEUE_NUM); one worker process per pair.")
@click.option("--cpus", metavar="LIST", envvar="VHOSTSPLICE_CPUS",
              help="CPUs to spread the workers over: pair k runs on the k-th CPU of the list (cycling).")
@click.option("--restart", type=click.Choice(["on-failure", "always", "never"]), default="on-failure",
              show_default=True, help="Replace a worker that exits, by the restart policy (`vhostsplice exit-codes`): "
                                      "on-failure what a restart can cure, always also a clean exit, never none.")
@click.option("--events", metavar="FILE", help="Append the JSON event lines here instead of stderr.")
@click.option("--on-guest-error", type=click.Choice(["count", "exit"]), default="count", show_default=True,
              help="Passed to every worker (see `run --help`).")
@click.option("--offloads/--no-offloads", default=True, show_default=True, help="Passed to every worker.")
@click.option("--packed/--no-packed", default=True, show_default=True, envvar="VHOSTSPLICE_PACKED",
              help="Offer the packed virtqueue (VIRTIO_F_RING_PACKED); --no-packed is passed to every worker.")
@stats_options
@ownership_options
@sandbox_option
@busy_poll_option
@signals_held_until_the_loop
def serve(socket_path, tap, queues, cpus, restart, events, on_guest_error, offloads, packed, stats_file, stats_format,
          stats_interval, socket_mode, socket_group, allow_uid, run_as, sandbox, busy_poll):
    """Serve a multi-queue device: one `vhostsplice run --fd N` worker per queue pair.

    The supervisor terminates the vhost-user socket (features, MQ, GET_QUEUE_NUM, memory table) and hands
    device rings 2k and 2k+1 to worker k over a socketpair, as rings 0 and 1. A worker that exits is
    reported as a JSON event line (pair, pid, exit code, errno name, counters), its rings' VRING_ERR
    eventfds are signalled when it failed, and it is replaced per --restart with the policy's back-off
    (`vhostsplice exit-codes`: doubling to a cap, jittered, reset by a stable run; each exit event carries
    it); the replacement resumes from used->idx (a packed ring: from the pair's state page, README
    "Restarts"). The tap is held by a detached queue for serve's lifetime,
    so it and what the host set on it outlive the workers. Workers are forked (no exec) by a template
    process started with serve, which then confines itself (docs/security.md "serve"); `ps` names them
    vs-serve, vs-template, vs-worker. SIGTERM/SIGINT stop every worker, exit 0 (from
    serve's start: held until its loop runs; workers start with them blocked).
    Ownership as for `run`: one front-end, --socket-mode/--socket-group, --allow-uid (refused peers are
    'refused' events), --user (every worker drops to it once its tap queue is open). Live migration as
    for `run`: every worker logs into the one dirty log (exit events carry each worker's dirty_log), and
    the guest's announce goes out once (docs/migration.md).

    \b
    Example:
      vhostsplice serve --socket-path /run/vm1/net.sock --tap vm1net --queues 4 --cpus 2-5
      vhostsplice serve --socket-path /run/vm1/net.sock --tap vm1net --queues 2 --user qemu --allow-uid qemu
    """
    from .worker.counters import StatsOutput
    from .serve.supervisor import ServeConfig, run_supervisor
    cpu_list = sorted(parse_cpus(cpus)) if cpus else []
    worker_args = ["--on-guest-error", on_guest_error, "--sandbox", sandbox, "--busy-poll", str(busy_poll)] + \
        ([] if offloads else ["--no-offloads"]) + ([] if packed else ["--no-packed"])
    ownership = _ownership(socket_path, socket_mode, socket_group, allow_uid, run_as)
    if run_as is not None:
        worker_args += ["--user", run_as]
    _check_stats(stats_file, stats_interval)
    config = ServeConfig(tap=tap, queues=queues, cpus=cpu_list, restart=restart, events=events,
                         worker_args=worker_args, ownership=ownership, offloads=offloads, sandbox=sandbox,
                         packed=packed, worker_entry=main,
                         stats=StatsOutput(stats_file, stats_format, stats_interval) if stats_file else None)
    return run_supervisor(socket_path=socket_path, config=config)


@cli.command("exit-codes", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, envvar="VHOSTSPLICE_EXIT_CODES_JSON",
              help="As one JSON object: the exit-code table, the restart policy and the back-off policy.")
@click.option("--shell", "as_shell", is_flag=True, envvar="VHOSTSPLICE_EXIT_CODES_SHELL",
              help="As 'KEY VALUE...' lines for shell scripts (bin/vhostsplice-supervise reads it).")
def exit_codes(as_json, as_shell):
    """Print the exit codes and what a supervisor does with each (errors.py: one table for all).

    Each worker exit code is clean (0: restart at once, when a next front-end is to be served), restart
    (with back-off) or give-up; codes not listed give up. Back-off: the first restart waits
    backoff_first seconds, each further one twice as long up to backoff_cap, shortened by up to
    backoff_jitter of itself; a worker that served backoff_stable_after seconds resets it. Used by
    `serve`, bin/vhostsplice-supervise, bin/vhostsplice-vmm-example and contrib/systemd.

    \b
    Examples:
      vhostsplice exit-codes
      vhostsplice exit-codes --json | jq '.restart[] | select(.action == "give-up") | .code'
    """
    from . import errors
    if as_json and as_shell:
        raise ConfigError("--json and --shell exclude each other")
    if as_json:
        click.echo(json.dumps(errors.policy_document(), indent=1))
    elif as_shell:
        click.echo(errors.policy_shell())
    else:
        click.echo(_exit_table_help().replace("\b\n", ""))
        rows = [f"  {str(k):>6}  {a:<8} {w}" for k, a, w in errors.RESTART_POLICY]
        click.echo("\nRestart policy (other codes: give-up):\n" + "\n".join(rows))
        click.echo(f"\nBack-off: {errors.BACKOFF}")
    return 0


@cli.command(context_settings=CONTEXT)
@click.option("--frames", type=click.IntRange(1, 100000), default=1000, show_default=True,
              help="Frames to move in each direction.")
@click.option("--size", type=click.IntRange(60, 9000), default=512, show_default=True, help="Frame size in bytes.")
def demo(frames, size):
    """Show the main job on an embedded default (needs root, nothing else).

    Creates a private network namespace with a tap, starts `vhostsplice run` on it, drives it with the
    built-in pure-Python front-end (guest -> tap and tap -> guest), prints what moved, and cleans up.
    """
    from .tools.demo import run_demo
    return run_demo(frames=frames, size=size)


def _drive_help() -> str:
    from .tools.exits import exit_table_text     # the table alone: --help loads no driver
    return "drive's own exit codes:\n\n\b\n" + exit_table_text()


@cli.command(context_settings=CONTEXT, epilog=_drive_help())
@click.option("--socket-path", metavar="PATH", envvar="VHOSTSPLICE_SOCKET",
              help="The worker's vhost-user socket (or, with --listen, where to listen for it).")
@click.option("--connect/--listen", "connect", default=True, show_default=True,
              help="Connect to a listening worker (retrying for --connect-timeout), or listen for one "
                   "started with `run --connect PATH`.")
@click.option("--connect-timeout", type=click.FloatRange(0), default=5.0, show_default=True, metavar="S",
              help="Seconds to keep retrying the connection (or to wait for the worker with --listen).")
@click.option("--features", "features_text", metavar="LIST|0xMASK",
              help="Features the driver accepts: names (VERSION_1,MRG_RXBUF,INDIRECT_DESC,EVENT_IDX,"
                   "PROTOCOL_FEATURES,CSUM,...), 'default', '-NAME' to drop one, or a hex mask. "
                   "Default: VERSION_1,MRG_RXBUF,INDIRECT_DESC,EVENT_IDX,PROTOCOL_FEATURES.")
@click.option("--queue-size", type=click.IntRange(1, 32768), default=256, show_default=True,
              help="Size of both rings (a power of 2; with --packed any size).")
@click.option("--packed", is_flag=True, envvar="VHOSTSPLICE_DRIVE_PACKED",
              help="Packed rings: ask for RING_PACKED too and fail (EINVAL) if the worker does not offer it.")
@click.option("--send", type=click.IntRange(0), default=0, show_default=True, metavar="N",
              help="Frames to send guest -> tap (each waited for until the worker has used it).")
@click.option("--size", type=click.IntRange(60, 65535), default=512, show_default=True, metavar="B",
              help="Size of each frame sent (Ethernet, ethertype 0x88b5, sequence-numbered).")
@click.option("--expect", type=click.IntRange(0), default=0, show_default=True, metavar="N",
              help="Frames to receive tap -> guest: post RX buffers and wait until at least N frames came "
                   "(anything the tap side sends counts; --timeout).")
@click.option("--rx-buffers", type=click.IntRange(0), metavar="N",
              help="RX buffers to keep posted (default: --expect, at most the ring size).")
@click.option("--rx-buffer-size", type=click.IntRange(12, 1 << 20), default=2048, show_default=True, metavar="B")
@click.option("--pcap", metavar="FILE", help="Save received frames in pcap format.")
@click.option("--fault", metavar="NAME", help="Inject one fault (--list-faults shows them all).")
@click.option("--fault-after", type=click.IntRange(0), default=0, show_default=True, metavar="N",
              help="Frames to send (and see used) before the fault.")
@click.option("--timeout", type=click.FloatRange(0.01), default=5.0, show_default=True, metavar="S",
              help="Seconds to wait for each expected thing (used entries, frames, the fault's reaction).")
@click.option("--hold", type=click.FloatRange(0), default=0.0, show_default=True, metavar="S",
              help="After the work, keep the rings running this long (ended early by the worker closing, "
                   "or by SIGTERM/SIGINT), then stop them and close.")
@click.option("--ready-file", metavar="FILE", help="Write this file once the rings run and the work before "
                                                    "--expect/--hold is done (scripts wait for it).")
@click.option("--list-faults", is_flag=True, help="Print the fault table and exit.")
@click.option("--json", "as_json", is_flag=True, help="With --list-faults: as JSON.")
def drive(socket_path, connect, connect_timeout, features_text, queue_size, packed, send, size, expect, rx_buffers,
          rx_buffer_size, pcap, fault, fault_after, timeout, hold, ready_file, list_faults, as_json):
    """Be the guest: the built-in front-end and virtio driver against a worker, as a command.

    Connects to a worker (or, with --listen, waits for one), negotiates, shares memory, starts both
    rings, sends --send frames, receives --expect frames, injects --fault if asked, stops both rings
    and closes (the worker then exits 0). Prints one JSON summary on stdout; exits 0 when what it
    expected happened (the reason is on stderr otherwise).

    \b
    Examples:
      vhostsplice drive --socket-path /tmp/w.sock --send 100 --size 1514
      vhostsplice drive --socket-path /tmp/w.sock --expect 5 --pcap rx.pcap --timeout 10
      vhostsplice drive --socket-path /tmp/w.sock --send 3 --fault avail-idx-jump --fault-after 2
      vhostsplice drive --list-faults
    """
    from .tools import drive as drv
    from .testing import faults
    if list_faults:
        click.echo(drv.list_faults(as_json))
        return 0
    if not socket_path:
        raise ConfigError("--socket-path PATH is required")
    if queue_size & (queue_size - 1) and not packed:
        raise ConfigError(f"--queue-size {queue_size} is not a power of 2")
    if packed and fault is not None:
        raise ConfigError("--fault writes split rings: not with --packed")
    if fault is not None and fault not in faults.BY_NAME:
        raise ConfigError(f"--fault {fault!r}: unknown; known: {', '.join(faults.BY_NAME)}")
    from .tools.features import parse_features
    features = parse_features(features_text) if features_text else drv.DEFAULT_FEATURES
    opts = drv.DriveOptions(socket_path=socket_path, listen=not connect, connect_timeout=connect_timeout,
                            features=features, packed=packed, queue_size=queue_size, send=send, size=size,
                            expect=expect, rx_buffers=rx_buffers, rx_buffer_size=rx_buffer_size, pcap=pcap, fault=fault,
                            fault_after=fault_after, timeout=timeout, hold=hold, ready_file=ready_file)
    return drv.run_drive(opts)


@cli.command("stats", context_settings=CONTEXT, epilog=_exit_table_help())
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("--watch", "interval", type=click.FloatRange(min=0.1), metavar="SECONDS", is_flag=False,
              flag_value=1.0, default=None, envvar="VHOSTSPLICE_STATS_WATCH",
              help="Refresh the table in place every SECONDS (1 if given alone); rates are then since the "
                   "last refresh. Ctrl-C ends it (exit 0).")
def stats(files, interval):
    """Print the counters of workers' stats files as a table: per ring, packets, Mpps and MB/s (averaged
    since the worker started, or since the last refresh with --watch), drops by reason, kicks, calls and
    whether the guest broke the ring. Reads both --stats-format json and prometheus files. A file that
    cannot be read is listed under the table and makes the exit code its errno (EINVAL: not a stats file).

    \b
    Example:
      vhostsplice stats /run/vhostsplice/*.stats.json --watch 2
    """
    from .worker.counters import watch
    try:
        errors = watch(list(files), interval, lambda text: click.echo(text, nl=False))
    except KeyboardInterrupt:
        return 0
    return next((getattr(e, "errno", None) or errno.EINVAL for e in errors), 0)


@cli.group(context_settings=CONTEXT, epilog=_exit_table_help())
def tap() -> None:
    """Create, delete and show persistent taps for workers (pyroute2; needs CAP_NET_ADMIN).

    A tap created with --owner can then be attached by that user's `run --tap NAME` without
    privileges. Errors exit with the kernel's errno (EEXIST, ENODEV, EPERM, EBUSY...).
    """


_NETNS_OPTION = click.option("--netns", metavar="NS", envvar="VHOSTSPLICE_NETNS",
                             help="Work in this network namespace (a name under /run/netns, or a path).")


@tap.command("create", context_settings=CONTEXT, epilog=_exit_table_help())
@click.argument("name")
@click.option("--multi-queue/--single-queue", default=True, show_default=True,
              help="IFF_MULTI_QUEUE: one queue per worker of a multi-queue device.")
@click.option("--vnet-hdr/--no-vnet-hdr", default=True, show_default=True,
              help="IFF_VNET_HDR: offloads pass through (what `run --tap` asks for).")
@click.option("--owner", metavar="USER|UID", help="User allowed to attach queues without CAP_NET_ADMIN.")
@click.option("--group", metavar="GROUP|GID", help="Group allowed to attach queues.")
@click.option("--mtu", type=click.IntRange(68, 65535), help="MTU of the new tap.")
@click.option("--bridge", metavar="BR", help="Enslave the tap to this existing bridge.")
@click.option("--up/--down", default=True, show_default=True, help="Link state after creation.")
@_NETNS_OPTION
def tap_create(name, multi_queue, vnet_hdr, owner, group, mtu, bridge, up, netns):
    """Create persistent tap NAME and print it (JSON). An existing NAME is EEXIST.

    \b
    Example:
      vhostsplice tap create vm1net0 --owner qemu --mtu 9000 --bridge br0
    """
    from .host import tapctl
    tapctl.enter_netns(netns)
    spec = tapctl.TapSpec(name=name, multi_queue=multi_queue, vnet_hdr=vnet_hdr, owner=owner, group=group,
                          mtu=mtu, bridge=bridge, up=up)
    click.echo(json.dumps(tapctl.create(spec), sort_keys=True))
    return 0


@tap.command("delete", context_settings=CONTEXT, epilog=_exit_table_help())
@click.argument("name")
@_NETNS_OPTION
def tap_delete(name, netns):
    """Delete tap NAME (ENODEV if absent, EINVAL if NAME is not a tap)."""
    from .host import tapctl
    tapctl.enter_netns(netns)
    tapctl.delete(name)
    return 0


@tap.command("show", context_settings=CONTEXT, epilog=_exit_table_help())
@click.argument("name")
@_NETNS_OPTION
def tap_show(name, netns):
    """Print tap NAME as JSON: flags, owner, queues attached, MTU, state, bridge."""
    from .host import tapctl
    tapctl.enter_netns(netns)
    click.echo(json.dumps(tapctl.show(name), sort_keys=True))
    return 0


@tap.command("hold", context_settings=CONTEXT, epilog=_exit_table_help())
@click.argument("name")
@_NETNS_OPTION
def tap_hold(name, netns):
    """Keep tap NAME alive while this runs, so it outlives the worker that created it.

    Waits until NAME exists, then holds a detached queue of it (it takes no traffic): a tap that is not
    persistent is deleted by the kernel only when its last queue closes, so its index, addresses, MTU,
    qdisc, bridge and counters survive any number of worker restarts. A deleted tap is waited for
    again. Ends with 0 on SIGTERM/SIGINT or when its parent exits. bin/vhostsplice-supervise runs it
    beside a `run --tap NAME` worker; `serve` holds its tap itself.

    \b
    Example:
      vhostsplice tap hold vm1net0 &
    """
    from .host import tapctl
    tapctl.enter_netns(netns)
    tapctl.hold(name, lambda text: click.echo(f"vhostsplice tap hold[{os.getpid()}]: {text}", err=True))
    return 0


ENVVAR_PREFIX = "VHOSTSPLICE_"


def option_envvar(option: click.Option) -> str:
    """VHOSTSPLICE_ + the option's long name: --socket-mode -> VHOSTSPLICE_SOCKET_MODE."""
    longest = max(option.opts, key=len).lstrip("-")
    return ENVVAR_PREFIX + longest.upper().replace("-", "_")


def give_every_option_an_envvar(command: click.Command) -> None:
    """Every option of every command can come from the environment (a systemd EnvironmentFile, a VMM's
    wrapper), and --help shows which variable: the explicit envvar= names stay, the others are derived
    (option_envvar). A value on the command line always wins."""
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden and param.name not in ("help", "version"):
            param.envvar = param.envvar or option_envvar(param)
            param.show_envvar = True
    for sub in getattr(command, "commands", {}).values():
        give_every_option_an_envvar(sub)


def main(argv=None) -> int:
    """Entry point: every outcome becomes one exit code here."""
    try:
        rv = cli.main(args=argv, prog_name="vhostsplice", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        return errno.EINTR
    except click.ClickException as exc:
        exc.show()
        return errno.EINVAL
    except VhostspliceError as exc:
        click.echo(f"vhostsplice: {exc} [exit {exc.errno} {errno_name(exc.errno)}]", err=True)
        return exc.errno
    return rv if isinstance(rv, int) else 0


give_every_option_an_envvar(cli)

if __name__ == "__main__":
    sys.exit(main())
