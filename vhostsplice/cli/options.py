"""What the commands share: click's context settings, the exit-code table as help text, and the option
groups `run` and `serve` both take (stats, ownership, sandbox, busy polling), with the checks and the
parsing they need. Nothing here imports a command's implementation at module level: a command imports its
own inside its function, so `vhostsplice --help` and each command load only what they need.
"""
from __future__ import annotations

import functools

import click

from ..errors import EXIT_TABLE, ConfigError, signals_held
from ..worker import BUSY_POLL_AUTO

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
PROG = "vhostsplice"            # the program's name in usage and error messages


def from_environment(param: str) -> bool:
    """Whether the current command's PARAM came from its environment variable."""
    return param_source(param) == click.core.ParameterSource.ENVIRONMENT


def param_source(param: str):
    return click.get_current_context().get_parameter_source(param)


def exit_table_help() -> str:
    rows = [f"  {code if code >= 0 else 'errno':>5}  {name:<11} {text}" for code, name, text in EXIT_TABLE]
    return "Exit codes:\n\n\b\n" + "\n".join(rows)


def signals_held_until_the_loop(command):
    """The stop signals (and SIGUSR1) are held blocked from the command's first line until its loop has its
    handlers (worker/loop.py, serve/supervisor.py release them): a stop during set-up is a clean stop (exit 0)."""
    @functools.wraps(command)
    def held(*args, **kwargs):
        with signals_held(drain=True):
            return command(*args, **kwargs)
    return held


def stats_options(command):
    """--stats-file, --stats-format and --stats-interval, shared by `run` (its counters) and `serve` (one
    file for the device, every pair in it); what they cannot say per option, runner.check_stats does."""
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


class BusyPoll(click.ParamType):
    """`auto` (BUSY_POLL_AUTO) or a whole number of microseconds, 0 to 100000."""
    name = "auto|USEC"

    def convert(self, value, param, ctx):
        if value == BUSY_POLL_AUTO or str(value).strip().lower() == "auto":
            return BUSY_POLL_AUTO
        text = str(value).strip()
        if not (text.isascii() and text.isdigit()):
            self.fail(f"{value!r} is neither auto nor a whole number of microseconds", param, ctx)
        usec = int(text)
        if not 0 <= usec <= 100000:
            self.fail(f"{usec} is not in 0..100000 microseconds", param, ctx)
        return usec


def busy_poll_arg(usec: int) -> str:
    """--busy-poll's value as the command line spells it (serve passes it on to every worker)."""
    return "auto" if usec == BUSY_POLL_AUTO else str(usec)


def busy_poll_option(command):
    """--busy-poll, shared by `run` and `serve` (which passes it to every worker)."""
    return click.option(
        "--busy-poll", "busy_poll", type=BusyPoll(), default="auto", show_default=True, metavar="auto|USEC",
        envvar="VHOSTSPLICE_BUSY_POLL",
        help="After a batch that completed chains, keep polling (epoll without sleeping: the kick eventfds, the "
             "host fd, the control socket) before sleeping, like vhost_net's busyloop timeout and QEMU's tap "
             "poll-us. USEC: up to USEC microseconds after every such batch (lower latency for a CPU kept busy "
             "meanwhile); 0 sleeps at once. auto (the default): a window per direction that grows (4 to 32 us) "
             "while the peer answers within 32 us and closes to 0 when it does not, so a slow peer or a quiet "
             "ring costs at most one such window (QEMU's adaptive polling; benchmarks/RESULTS.md)."
    )(host_io_option(command))


def host_io_option(command):
    """--host-io, shared by `run` and `serve` (applied with --busy-poll)."""
    return click.option(
        "--host-io", "host_io", type=click.Choice(["auto", "plain"]), default="auto", show_default=True,
        envvar="VHOSTSPLICE_HOST_IO",
        help="How the host fd is read and written: auto, in batches through an io_uring restricted to readv/writev "
             "of the host fd, made before the sandbox (one syscall per batch; docs/architecture.md), where the "
             "kernel allows one, else one readv/writev per frame; plain: always one per frame. The stats' "
             "host.io says which runs.")(command)


def ownership(socket_path, socket_mode, socket_group, allow_uid, run_as):
    """The ownership options -> runner.Ownership; names are resolved now (an unknown one is EINVAL)."""
    from ..worker import runner
    sets_socket = socket_group is not None or param_source("socket_mode") != click.core.ParameterSource.DEFAULT
    if sets_socket and socket_path is None:
        raise ConfigError("--socket-mode/--socket-group apply to --socket-path only")
    return runner.Ownership(
        socket_mode=runner.parse_mode(socket_mode),
        socket_group=runner._lookup("group", socket_group) if socket_group is not None else -1,
        allow_uids=runner.parse_uids(allow_uid) if allow_uid is not None else None,
        user=runner.parse_user(run_as) if run_as is not None else None)

