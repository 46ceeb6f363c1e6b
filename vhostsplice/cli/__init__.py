"""The command line. Options become configuration; exceptions become exit codes, here and nowhere else.

Exit codes follow errors.EXIT_TABLE (README, "Exit codes"): 0 on a requested stop, an errno otherwise.
click's own usage errors (normally 1/2) are EINVAL like every other configuration error. This module is
the group, `main` (the exit status, computed once) and the environment variables every option gets; each
command is a module of its own (run, serve, tap, drive and demo, exit-codes and stats), with the options
they share in options.py, and imports what does its work only when it runs.
"""
from __future__ import annotations

import errno
import logging
import sys

import click

from .. import __version__
from ..errors import VhostspliceError, errno_name
from . import drive, run, serve, tables, tap
from .options import CONTEXT, MAIN, PREPARE, exit_table_help

log = logging.getLogger("vhostsplice")


@click.group(context_settings=CONTEXT, epilog=exit_table_help())
@click.version_option(__version__, "-V", "--version")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv: every message).")
def cli(verbose: int) -> None:
    """vhostsplice: a userspace virtio-net back-end, one virtqueue pair per process.

    `run` serves one queue pair of a vhost-user front-end (QEMU, DPDK virtio-user) onto a tap queue, in
    the calling thread, until it is stopped; its exit code is an errno. `demo` shows it working with
    nothing else installed.
    """
    handler = _stderr_handler(log)
    if handler.stream is not sys.stderr:    # the stderr of now (not flushed: an earlier one may be closed)
        handler.stream = sys.stderr
    log.setLevel(logging.WARNING - 10 * verbose)
    log.propagate = False
    meta = click.get_current_context().meta
    meta[MAIN], meta[PREPARE] = main, prepare_worker    # what serve's workers run (serve.py)


def _stderr_handler(log: logging.Logger) -> logging.Handler:
    """The one stderr handler of the log: made once per process. A worker forked by serve's template
    inherits serve's (a second one would print every line twice)."""
    for handler in log.handlers:
        if handler.get_name() == "vhostsplice-stderr":
            return handler
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name("vhostsplice-stderr")
    handler.setFormatter(logging.Formatter("vhostsplice[%(process)d]: %(message)s"))
    log.addHandler(handler)
    return handler


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
    """Entry point: every outcome becomes one exit code here."""
    return exit_code(lambda: cli.main(args=argv, prog_name="vhostsplice", standalone_mode=False))


def prepare_worker(argv: list[str]):
    """main() with a worker's command line parsed already, for serve's template (preparsed.py)."""
    from .preparsed import prepare
    return prepare(cli, "vhostsplice", argv, main, exit_code)


def exit_code(call) -> int:
    """Run `call` (a command line, parsed or prepared: preparsed.py) and make its outcome the exit code."""
    try:
        rv = call()
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
