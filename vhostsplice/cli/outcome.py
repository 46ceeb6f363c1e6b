"""What every command's process shares, however it was entered (`main`, or a worker serve's template forked:
run.py's serve_worker): its log on stderr, set up once per process, and its outcome made an exit code, in
this one place (errors.EXIT_TABLE; click's usage errors are EINVAL like every other configuration error).
The log's handler and every outcome but click's own exceptions are worker/entry.py's (`outcome`), which a
lone run's worker uses without click.
"""
from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from typing import Callable

import click

from ..worker.entry import log_to_stderr as stderr_log, outcome


@dataclass(frozen=True)
class Process:
    """What the command line knows of the process it runs in (click's context obj, set by main)."""
    own: bool = False       # the process is the command's (main read its argv): a lone run may exec


def log_to_stderr(verbose: int) -> None:
    """The log on this process's stderr at WARNING less ten a -v (the group's -v count)."""
    stderr_log(logging.WARNING - 10 * verbose)


def exit_code(call: Callable[[], object]) -> int:
    """Run `call` (a command line, or a serve worker's recipe) and make its outcome the exit code: click's own
    exceptions here, every other outcome as a lone run's worker makes it (worker/entry.py's outcome)."""
    try:
        return outcome(call, _echo)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        return errno.EINTR
    except click.ClickException as exc:
        exc.show()
        return errno.EINVAL


def _echo(line: str) -> None:
    click.echo(line, err=True)
