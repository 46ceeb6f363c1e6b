"""`run` in two steps (cli/run.py): options -> a recipe (worker/runner.py's RunRecipe), and the recipe run.
serve's template makes one recipe before its first fork (recipe_of: the parse and the checks of a lone
`run`), and each worker it forks runs it with its own fds, stats file and CPU (serve_worker): the same
recipe, the same refusals and the same outcome as `vhostsplice run` with that worker's command line."""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import socket
import struct
import sys
import traceback
from pathlib import Path
from types import SimpleNamespace

import click
import pytest

from vhostsplice.cli import main
from vhostsplice.cli.outcome import log_to_stderr
from vhostsplice.cli.run import recipe_of, serve_worker
from vhostsplice.device.statepage import new_memfd
from vhostsplice.errors import ConfigError
from vhostsplice.serve.pairs import Pair
from vhostsplice.worker import BUSY_POLL_AUTO
from vhostsplice.serve.supervisor import Supervisor, spread_cpus
from vhostsplice.serve.template import Unmade, WorkerSpec
from vhostsplice.worker.runner import Ownership, RunRecipe

CPUS = sorted(os.sched_getaffinity(0))


@pytest.fixture(autouse=True)
def _no_option_from_the_environment(monkeypatch):
    """The template's environment has no VHOSTSPLICE_* variable (supervisor.worker_env)."""
    for name in [n for n in os.environ if n.startswith("VHOSTSPLICE_")]:
        monkeypatch.delenv(name)


def _serve_spec(tmp_path, monkeypatch, *serve_args: str, queues: int = 3) -> WorkerSpec:
    """The WorkerSpec serve's supervisor gives its template for `serve ARGS` (its own worker_spec)."""
    from vhostsplice.serve import supervisor
    seen = {}
    monkeypatch.setattr(supervisor, "run_supervisor", lambda socket_path, config: seen.setdefault("c", config) and 0)
    assert main(["serve", "--socket-path", str(tmp_path / "s.sock"), "--tap", "vt0", "--queues", str(queues),
                 *serve_args]) == 0
    config = seen["c"]
    pairs = [Pair(k, cpu) for k, cpu in enumerate(spread_cpus(config.cpus, queues))]
    return Supervisor.worker_spec(SimpleNamespace(config=config, rundir=str(tmp_path), pairs=pairs))


@pytest.mark.parametrize("serve_args", [
    [],
    ["--cpus", f"{CPUS[0]}-{CPUS[-1]}", "--stats-file", "/tmp/vs.json", "--stats-interval", "2", "--no-packed",
     "--no-offloads", "--sandbox", "log", "--busy-poll", "50", "--host-io", "plain", "--on-guest-error", "exit",
     "--user", "0:0"],
])
def test_one_recipe_serves_every_worker_as_its_own_command_line_would(tmp_path, monkeypatch, serve_args):
    spec = _serve_spec(tmp_path, monkeypatch, *serve_args)
    made = recipe_of(spec.argv(0, 0, 0))        # once, as the template does
    cpus = []
    for pair, fd, state_fd in ((0, 11, 12), (1, 13, None), (2, 40, 41)):
        own = made.for_pair(**spec.values(pair, fd, state_fd))
        assert own == recipe_of(spec.argv(pair, fd, state_fd))     # what `run` makes of this worker's line
        assert (own.inherited_fd, own.state_fd, own.stats_file) == (fd, state_fd, str(tmp_path / f"pair{pair}.json"))
        cpus.append(own.cpu)
    assert cpus == ([str(CPUS[k % len(CPUS)]) for k in range(3)] if serve_args else [None] * 3)
    assert made.sandbox == ("log" if serve_args else "strict")     # serve's options reached the recipe


@pytest.mark.parametrize("given, made", [(None, BUSY_POLL_AUTO), ("auto", BUSY_POLL_AUTO), ("AUTO", BUSY_POLL_AUTO),
                                         ("0", 0), ("50", 50), ("100000", 100000)])
def test_busy_poll_is_auto_by_default_or_microseconds(given, made, tmp_path, monkeypatch):
    """--busy-poll: auto (the adaptive window, the default) or USEC; serve hands each worker the same value."""
    extra = [] if given is None else ["--busy-poll", given]
    assert recipe_of(["run", "--fd", "3", "--tap", "vt0", *extra]).busy_poll_us == made
    spec = _serve_spec(tmp_path, monkeypatch, *extra)
    assert recipe_of(spec.argv(0, 11, None)).busy_poll_us == made


@pytest.mark.parametrize("given", ["-5", "100001", "fast", "", "5us", "5_0", "+5", "1e3"])
def test_a_busy_poll_that_is_neither_auto_nor_microseconds_is_refused(given):
    with pytest.raises(click.BadParameter, match=r"is neither auto nor a whole number|is not in 0\.\.100000"):
        recipe_of(["run", "--fd", "3", "--tap", "vt0", "--busy-poll", given])


def test_a_recipe_takes_fields_by_keyword_with_their_defaults_and_stays_frozen():
    recipe = RunRecipe(inherited_fd=3, tap="vt0")
    assert (recipe.framing, recipe.sandbox, recipe.ownership, recipe.state_fd) == ("none", "strict", Ownership(), None)
    with pytest.raises(TypeError, match="no field.*'tapp'"):
        RunRecipe(inherited_fd=3, tap="vt0", tapp="vt1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.tap = "vt1"
    assert dataclasses.replace(recipe, tap="vt1") == RunRecipe(inherited_fd=3, tap="vt1") != recipe


@pytest.mark.parametrize("values,message", [
    ({"inherited_fd": None}, "exactly one of --socket-path, --connect, --fd"),
    ({"stats_file": None}, "--stats-interval rewrites --stats-file"),
])
def test_a_value_run_refuses_is_refused_for_a_pair_by_the_same_check(values, message, capsys):
    made = RunRecipe(inherited_fd=3, tap="vt0", stats_file="/r/pair0.json", stats_interval=2.0)
    own = {"inherited_fd": 4, "state_fd": 5, "stats_file": "/r/pair1.json", "cpu": None, **values}
    with pytest.raises(ConfigError, match=re.escape(message)) as refused:
        made.for_pair(**own)
    assert refused.value.errno == errno.EINVAL
    line = [f for flag, v in (("--fd", own["inherited_fd"]), ("--state-fd", own["state_fd"]),
                              ("--stats-file", own["stats_file"])) if v is not None for f in (flag, str(v))]
    assert main(["run", "--tap", "vt0", "--stats-interval", "2", *line]) == errno.EINVAL    # a lone `run`: the same
    assert capsys.readouterr().err == f"vhostsplice: {refused.value} [exit 22 EINVAL]\n"


@pytest.mark.parametrize("line,message", [
    (["--tap", "vt0", "--user", "no-such-user-vs"], "give exactly one of --socket-path, --connect, --fd"),
    (["--fd", "3", "--socket-mode", "0660"], "a host side is required"),
    (["--fd", "3", "--tap", "vt0", "--stats-interval", "2", "--socket-group", "0"], "--stats-interval rewrites"),
])
def test_a_line_wrong_twice_is_refused_for_the_recipe_before_its_ownership(line, message, capsys):
    """`run` checks the door, the host side and the stats before it resolves --user/--socket-*: the
    first refusal a user reads stays the one it was before the recipe."""
    assert main(["run", *line]) == errno.EINVAL
    assert message in capsys.readouterr().err
    with pytest.raises(ConfigError, match=re.escape(message)):
        recipe_of(["run", *line])


# -- the outcome: a worker forked with the recipe against `vhostsplice run` with its command line ------------

def _forked(call, err: Path, poison_click: bool) -> tuple[int, str]:
    """CALL in a forked child, as serve's template runs a worker (in the image of a `serve -vv`, whose log
    says everything): its exit status and its stderr. poison_click: a click context made or a command line
    parsed fails it."""
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            with open(err, "w") as f:
                os.dup2(f.fileno(), 2)
            sys.stderr = open(2, "w", closefd=False)
            log_to_stderr(2)        # serve -vv's log, which a forked worker inherits
            if poison_click:
                click.core.Context.__init__ = click.core.Command.main = _no_click
            code = call()
        except BaseException:  # noqa: BLE001  (the child's own report)
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), re.sub(r"\[\d+\]", "[PID]", err.read_text())


def _no_click(*_args, **_kw):
    raise AssertionError("click ran in a worker")


FRONT_ENDS = {      # what the front-end does before the worker starts -> the exit code `run` gives
    "hangs up": (lambda sock: sock.close(), 0),
    "sends an unknown request": (lambda sock: sock.send(struct.pack("<III", 999, 1, 0)), errno.EPROTO),
}


@pytest.mark.parametrize("front_end", FRONT_ENDS)
@pytest.mark.parametrize("cpu", [str(CPUS[-1]), "4095"])       # a CPU outside the allowed set: EINVAL, as `run`
def test_a_worker_ends_as_run_with_its_command_line_does(tmp_path, front_end, cpu):
    act, expected = FRONT_ENDS[front_end]
    host, _peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    base = ["--host-fd", str(host.fileno()), "--sandbox", "off"]
    made = recipe_of(["run", "--fd", "0", *base, "--stats-file", "placeholder", "--state-fd", "0"])
    outcomes = []
    for way in ("recipe", "main"):
        ours, theirs = socket.socketpair()
        state = new_memfd("test-state")
        stats = tmp_path / f"{way}.json"
        act(ours)
        if way == "recipe":
            values = {"inherited_fd": theirs.fileno(), "state_fd": state, "stats_file": str(stats), "cpu": cpu}
            call = lambda: serve_worker(made, values)     # noqa: E731
        else:
            argv = ["run", "--fd", str(theirs.fileno()), *base, "--stats-file", str(stats), "--state-fd", str(state),
                    "--cpu", cpu]
            call = lambda: main(argv)                     # noqa: E731
        code, err = _forked(call, tmp_path / f"{way}.err", poison_click=way == "recipe")
        counters = json.loads(stats.read_text()) if stats.exists() else None
        if counters:
            counters.pop("uptime_s")
        outcomes.append((code, err, counters))
        for s in (ours, theirs):
            s.close()
        os.close(state)
    assert outcomes[0] == outcomes[1]
    code, err, counters = outcomes[0]
    if cpu == "4095":
        assert code == errno.EINVAL and "CPU 4095" in err and counters is None
    else:
        assert code == expected and counters["exit"] == expected and "Traceback" not in err


def test_a_recipe_run_refuses_fails_each_worker_as_run_does(tmp_path):
    """The template could not make the recipe: each worker ends with run's usage error and exit code."""
    argv = ["run", "--fd", "3", "--tap", "vt0", "--busy-poll", "-5"]
    with pytest.raises(click.BadParameter) as refused:
        recipe_of(argv)
    values = {"inherited_fd": 4, "state_fd": None, "stats_file": str(tmp_path / "pair1.json"), "cpu": None}
    unmade = Unmade(refused.value, lambda: recipe_of(argv))     # each worker tries once more, and is refused
    ours = _forked(lambda: serve_worker(unmade, values), tmp_path / "recipe.err", poison_click=False)
    theirs = _forked(lambda: main(argv), tmp_path / "main.err", poison_click=False)
    assert ours == theirs and ours[0] == errno.EINVAL and "--busy-poll" in ours[1]
