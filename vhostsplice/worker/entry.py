"""How a worker process is entered without the command line: its log on stderr, the line a failure prints,
and a lone `run` in an interpreter of its own (issue 18).

A lone `vhostsplice run` parses its options with click in the interpreter it was started in, then execs a
second one for the worker (`exec_lone`), which imports neither click nor what site-packages' .pth files
import (`-S`): a long-lived worker keeps only what serving needs (benchmarks/RESULTS.md, "A lone run").
The exec keeps the process: its PID, fds, the stop signals held since the command's first line (the mask
survives exec), the environment, the interpreter's own flags; the command line stays the caller's behind
`python -S -c ...`, and the process keeps its name. The second interpreter gets, through a pipe, the first
one's sys.path (so venvs, --user installs, PYTHONPATH and .pth path entries find the same modules), the
recipe, the log level and the signal mask to leave on exit. Where exec is not possible the worker runs
in the first interpreter, as before. serve's workers never come here: its template forks them.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import sys
from collections.abc import Callable   # logging loads it (typing: never in the worker's interpreter)

from ..errors import VhostspliceError, errno_name

log = logging.getLogger("vhostsplice")
HANDLER_NAME = "vhostsplice-stderr"


def log_to_stderr(level: int) -> None:
    """The log on this process's stderr at LEVEL (made once per process: a worker forked by serve's
    template inherits serve's handler; a second one would print every line twice)."""
    handler = next((h for h in log.handlers if h.get_name() == HANDLER_NAME), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.set_name(HANDLER_NAME)
        handler.setFormatter(logging.Formatter("vhostsplice[%(process)d]: %(message)s"))
        log.addHandler(handler)
    elif handler.stream is not sys.stderr:    # the stderr of now (not flushed: an earlier one may be closed)
        handler.stream = sys.stderr
    log.setLevel(level)
    log.propagate = False


def failure_line(exc: VhostspliceError) -> str:
    """What a command prints on stderr when it ends on EXC (its exit code is exc.errno)."""
    return f"vhostsplice: {exc} [exit {exc.errno} {errno_name(exc.errno)}]"


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def outcome(call: Callable[[], object], say: Callable[[str], None] = _say) -> int:
    """Run CALL (a command, a worker) and make its outcome the exit code: the one mapping a lone run's worker
    (lone) and every command (cli/outcome.py's exit_code, which adds click's own exceptions around it) share.
    A VhostspliceError: its failure line, its errno; EOFError or KeyboardInterrupt: an empty line (what click
    prints before its Abort), EINTR; a return that is not an int: 0. Anything else goes on up. SAY prints a
    line on stderr (default: print, flushed; exit_code's is click.echo)."""
    try:
        rv = call()
    except VhostspliceError as exc:
        say(failure_line(exc))
        return exc.errno
    except (EOFError, KeyboardInterrupt):
        say("")
        return errno.EINTR
    return rv if isinstance(rv, int) else 0


def exec_lone(recipe, held_from: set[int]) -> None:
    """Run RECIPE in a new interpreter in this process (returns only if that cannot be started: the caller
    then runs it here). HELD_FROM: the signal mask from before the command held its stop signals."""
    executable = sys.executable
    if not executable or getattr(sys, "frozen", False) or not os.access(executable, os.X_OK):
        return
    import subprocess   # the first interpreter only: its memory goes with the exec
    path = lean_path()
    if path is None:
        return
    facts = {"path": path, "argv": list(sys.argv),
             "recipe": recipe.to_plain(), "level": log.getEffectiveLevel(), "mask": sorted(held_from),
             "comm": _comm()}
    data = json.dumps(facts).encode()
    if len(data) > PIPE_TAKES:
        return
    rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)    # past pipe-user-pages-soft a pipe holds 1-2 pages
    try:
        wrote = os.write(wfd, data)
    except OSError:
        wrote = -1
    finally:
        os.close(wfd)
    if wrote != len(data):
        os.close(rfd)
        return
    try:
        os.set_blocking(rfd, True)
        os.set_inheritable(rfd, True)
        argv = [executable, *subprocess._args_from_interpreter_flags(), "-S", "-c", BOOT % {"fd": rfd}, *sys.argv]
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        os.execv(executable, argv)
    except OSError as exc:
        log.debug("the worker runs in this interpreter: exec %s: %s", executable, exc)
    finally:
        os.close(rfd)       # reached only when the exec failed


PIPE_TAKES = 60000      # the facts go into the pipe whole before the exec (a pipe holds 64 KiB)
# The second interpreter's code (-S: no site; the first one's sys.path is in place before any import of ours).
# `-c` puts the current directory first on sys.path: it goes before the first import (a json.py or os.py
# there would otherwise run, before --user and the sandbox); sys is built in. (-P would do it: Python 3.11+.)
BOOT = ("import sys;sys.path[:]=[p for p in sys.path if p];import json,os;d=json.loads(os.read(%(fd)d,1<<16));"
        "os.close(%(fd)d);sys.path[:]=d['path'];from vhostsplice.worker.entry import lone;sys.exit(lone(d))")


NEEDED = ("vhostsplice", "_cffi_backend", "pyroute2")     # the worker's imports from outside the standard library


def lean_path() -> list[str] | None:
    """This interpreter's sys.path, which the worker's gets: with, at its end, the folder of each of NEEDED
    that only an import hook finds here (an editable install's finder, which a .pth file installs). None
    (the worker then runs here) when one of them is found by neither, the path finds another copy than
    this interpreter's, or a package's __path__ was widened here. pyroute2 is optional (--mtu, --bridge)."""
    from importlib.machinery import PathFinder
    path = [p for p in sys.path if isinstance(p, str)]
    for name in NEEDED:
        origin = _origin(name)
        if origin is None and name == "pyroute2":
            continue
        found = PathFinder.find_spec(name, path)
        if found is None and origin is not None:
            path.append(os.path.dirname(os.path.dirname(origin) if origin.endswith("__init__.py") else origin))
            found = PathFinder.find_spec(name, path)
        if origin is None or found is None or found.origin != origin or _widened(name, origin):
            return None
    return path


def _widened(name: str, origin: str) -> bool:
    """Package NAME's __path__ was changed here (a sitecustomize or a .pth file's code, e.g. a build of the
    core put first): the worker's interpreter, which runs neither, would import other files."""
    module = sys.modules.get(name)
    return module is not None and hasattr(module, "__path__") and list(module.__path__) != [os.path.dirname(origin)]


def _origin(name: str) -> str | None:
    """The file module NAME is (or would be) imported from in this interpreter."""
    import importlib.util
    module = sys.modules.get(name)
    if module is not None:
        return getattr(module, "__file__", None)
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None and spec.has_location else None


def _comm() -> str:
    try:
        with open("/proc/self/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def lone(facts: dict) -> int:
    """The worker of a lone `run`, in its own interpreter (BOOT): its log, the recipe run, every outcome its
    exit code (outcome: what cli/outcome.py's exit_code makes it, without click), the stop signals drained as
    the command leaves them."""
    from ..errors import hold_stop_signals_to_the_end, signals_held
    from .runner import RunRecipe, run_worker
    sys.argv[:] = facts["argv"]
    _set_comm(facts["comm"])
    log_to_stderr(facts["level"])
    try:
        with signals_held(drain=True, restore=set(facts["mask"])):
            return outcome(lambda: run_worker(RunRecipe.from_plain(facts["recipe"])))
    finally:
        hold_stop_signals_to_the_end()      # the code stands, whatever stop signal comes during shutdown


def _set_comm(name: str) -> None:
    if name:
        try:
            with open("/proc/self/comm", "w") as f:
                f.write(name)
        except OSError:
            pass
