"""The command line. Options become configuration; exceptions become exit codes (outcome.py, the one place).

Exit codes follow errors.EXIT_TABLE (README, "Exit codes"): 0 on a requested stop, an errno otherwise.
click's own usage errors (normally 1/2) are EINVAL like every other configuration error. This module is
the group, `main` and the environment variables every option gets; outcome.py turns an outcome into the
exit status and sets up the log, for `main` and for serve's forked workers alike (run.py's serve_worker).
Each command is a module of its own (run, serve, tap, drive and demo, exit-codes and stats), with the
options they share in options.py, and imports what does its work only when it runs.
"""
from __future__ import annotations

import sys

import click

from .. import __version__
from . import drive, run, serve, tables, tap
from .options import CONTEXT, PROG, exit_table_help
from .outcome import Process, exit_code, log_to_stderr


@click.group(context_settings=CONTEXT, epilog=exit_table_help())
@click.version_option(__version__, "-V", "--version")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv: every message).")
def cli(verbose: int) -> None:
    """vhostsplice: a userspace virtio-net back-end, one virtqueue pair per process.

    `run` serves one queue pair of a vhost-user front-end (QEMU, DPDK virtio-user) onto a tap queue, in
    the calling thread, until it is stopped; its exit code is an errno. `demo` shows it working with
    nothing else installed.
    """
    log_to_stderr(verbose)


for command in (run.run, serve.serve, tap.tap, drive.drive, drive.demo, tables.exit_codes, tables.stats):
    cli.add_command(command)


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
    """Entry point: every outcome becomes one exit code here. Without ARGV it is this process's command line
    (the console script, `python -m vhostsplice`, bin/vhostsplice): the process is the command's, so a lone
    `run` may give its worker an interpreter of its own (cli/run.py); with ARGV (a test, a caller's own
    process) every command runs here."""
    code = exit_code(lambda: cli.main(args=argv, prog_name=PROG, standalone_mode=False,
                                      obj=Process(own=argv is None)))
    if argv is None:
        from ..errors import hold_stop_signals_to_the_end
        hold_stop_signals_to_the_end()      # the code stands, whatever stop signal comes during shutdown
    return code


give_every_option_an_envvar(cli)

if __name__ == "__main__":
    sys.exit(main())
