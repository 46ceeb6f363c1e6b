"""What every command's process shares, however it was entered (`main`, or a worker serve's template forked:
run.py's serve_worker): its log on stderr, set up once per process, and its outcome made an exit code, in
this one place (errors.EXIT_TABLE; click's usage errors are EINVAL like every other configuration error).
"""
from __future__ import annotations

import errno
import logging
import sys
from typing import Callable

import click

from ..errors import VhostspliceError, errno_name

log = logging.getLogger("vhostsplice")


def log_to_stderr(verbose: int) -> None:
    """The log on this process's stderr at WARNING less ten a -v (the group's -v count)."""
    handler = _stderr_handler(log)
    if handler.stream is not sys.stderr:    # the stderr of now (not flushed: an earlier one may be closed)
        handler.stream = sys.stderr
    log.setLevel(logging.WARNING - 10 * verbose)
    log.propagate = False


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


def exit_code(call: Callable[[], object]) -> int:
    """Run `call` (a command line, or a serve worker's recipe) and make its outcome the exit code."""
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
