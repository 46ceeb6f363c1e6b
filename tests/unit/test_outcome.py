"""One outcome -> exit code mapping (worker/entry.py's outcome): a command's (cli/outcome.py's exit_code, through
click) and a lone run's worker's (entry.lone, in an interpreter without click) make the same exit code and the
same stderr of every outcome but click's own exceptions, which only exit_code sees. A mapping added in one
place only fails here: every exception class of the errors module and of the builtins goes through both."""
from __future__ import annotations

import builtins
import errno
import logging
import signal

import click
import pytest

from vhostsplice import errors
from vhostsplice.cli.outcome import exit_code
from vhostsplice.worker import entry, runner


def instances() -> list[BaseException]:
    """An instance of every VhostspliceError class of the errors module (its own errno and another), and of
    every builtin exception class that can be made without arguments."""
    ours = [cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.VhostspliceError)]
    made: list[BaseException] = [cls("a line of the failure") for cls in ours]
    made += [cls("and another errno", errno.EACCES) for cls in ours]
    for cls in vars(builtins).values():
        if isinstance(cls, type) and issubclass(cls, BaseException):
            try:
                made.append(cls())
            except TypeError:
                pass
    return made


RETURNS = [0, 1, errno.EPIPE, None, "text", [None], True, 2.0]
CASES = [("raise", exc) for exc in instances()] + [("return", rv) for rv in RETURNS]


def behaviour(how: str, what):
    def call():
        if how == "raise":
            raise what
        return what
    return call


def result(run, call, capsys) -> tuple:
    """What RUN(CALL) ends with (its return, or the class it let through) and what it printed."""
    capsys.readouterr()
    try:
        ended = ("exit", run(call))
    except BaseException as exc:  # noqa: BLE001  (what goes on up is part of the outcome)
        ended = ("raised", type(exc))
    out = capsys.readouterr()
    return ended, out.out, out.err


@pytest.fixture
def lone(monkeypatch):
    """entry.lone in this process, with CALL as the worker it runs; the signal mask as it was after it."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    monkeypatch.setattr(runner.RunRecipe, "from_plain", lambda plain: plain)
    level = logging.getLogger("vhostsplice").getEffectiveLevel()

    def run(call):
        monkeypatch.setattr(runner, "run_worker", lambda recipe: call())
        return entry.lone({"path": [], "argv": ["vhostsplice", "run"], "recipe": {}, "level": level,
                           "mask": sorted(mask), "comm": ""})
    yield run
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)    # lone holds the stop signals to the end


@pytest.mark.parametrize("how, what", CASES, ids=[f"{h}-{type(w).__name__}-{w!s:.20}" for h, w in CASES])
def test_a_command_and_a_lone_worker_make_the_same_outcome(how, what, lone, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["vhostsplice", "run"])
    command = result(exit_code, behaviour(how, what), capsys)
    assert command == result(lone, behaviour(how, what), capsys)


@pytest.mark.parametrize("how, what, expect", [
    ("raise", errors.ProtocolError("bad size"), (errno.EPROTO, "vhostsplice: bad size [exit 71 EPROTO]\n")),
    ("raise", errors.SetupError("no tap", errno.ENODEV), (errno.ENODEV, "vhostsplice: no tap [exit 19 ENODEV]\n")),
    ("raise", KeyboardInterrupt(), (errno.EINTR, "\n")),
    ("raise", EOFError(), (errno.EINTR, "\n")),
    ("return", 5, (5, "")),
    ("return", None, (0, "")),
    ("return", "text", (0, "")),
])
def test_the_outcome_is_the_exit_code_and_its_line(how, what, expect, capsys):
    (ended, code), _out, err = result(entry.outcome, behaviour(how, what), capsys)
    assert (ended, (code, err)) == ("exit", expect)


@pytest.mark.parametrize("exc, expect", [
    (click.exceptions.Exit(3), (3, "")),
    (click.Abort(), (errno.EINTR, "")),
    (click.UsageError("no such option: --x"), (errno.EINVAL, "Error: no such option: --x\n")),
])
def test_clicks_own_exceptions_are_the_commands_only(exc, expect, capsys):
    """exit_code maps them; the lone worker's interpreter never imports click, and outcome lets them through."""
    assert result(exit_code, behaviour("raise", exc), capsys) == (("exit", expect[0]), "", expect[1])
    assert result(entry.outcome, behaviour("raise", exc), capsys) == (("raised", type(exc)), "", "")
