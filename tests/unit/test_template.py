"""serve's worker template (template.py): workers by fork from a fixed recipe, made once in the template and
run by each worker with its own values; a (possibly compromised) serve can ask for a pair's worker and
signal the template's own children, nothing else."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import pytest

from vhostsplice.serve.template import Template, TemplateError, Unmade, WorkerEntry, WorkerSpec


class _Made(dict):
    """A stand-in recipe: the command line it was made from, and where; each worker's values change nothing."""

    def for_pair(self, **_values) -> "_Made":
        return self


def _make(argv: list[str]) -> _Made:
    """A stand-in for cli/run.py's recipe_of (each call is a line of made.jsonl). VS_TEMPLATE_MODE
    --bad-recipe: every call refuses; --bad-once: only the first (the template's) does."""
    made = _Made(argv=argv, pid=os.getpid(), env=os.environ.get("VS_ONLY_THIS"))
    path = os.path.join(os.environ["VS_TEMPLATE_OUT"], "made.jsonl")
    first = not os.path.exists(path)
    with open(path, "a") as f:
        f.write(json.dumps(made) + "\n")
    mode = os.environ.get("VS_TEMPLATE_MODE")
    if mode == "--bad-recipe" or (mode == "--bad-once" and first):
        raise ValueError("a bad recipe")
    return made


def _start(recipe, values: dict) -> int:
    """A stand-in for cli/run.py's serve_worker: records the recipe and values it got and the fds it holds,
    then exits 7 (or sleeps, for the signal tests)."""
    out = os.environ["VS_TEMPLATE_OUT"]
    fds = [fd for fd in range(256) if _is_open(fd)]
    if isinstance(recipe, Unmade):
        try:
            recipe = recipe.for_pair(**values)
        except ValueError as exc:
            recipe = {"refused": str(exc)}
    with open(os.path.join(out, f"{os.getpid()}.json"), "w") as f:
        json.dump({"recipe": recipe, "values": values, "fds": fds,
                   "env": os.environ.get("VS_ONLY_THIS"), "comm": open("/proc/self/comm").read().strip()}, f)
    if "--sleep" in os.environ.get("VS_TEMPLATE_MODE", ""):
        signal.pthread_sigmask(signal.SIG_SETMASK, set())    # as the worker's loop releases the stop signals
        time.sleep(60)
    return 7


ENTRY = WorkerEntry(make=_make, start=_start)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


@pytest.fixture
def template(tmp_path, monkeypatch):
    spec = WorkerSpec(tap="vt0", run_dir=str(tmp_path), cpus=(None, 1), worker_args=("--sandbox", "strict"),
                      stats_interval=2.0, env={"VS_TEMPLATE_OUT": str(tmp_path), "VS_ONLY_THIS": "yes",
                                               "VS_TEMPLATE_MODE": os.environ.get("VS_TEMPLATE_MODE", "")})
    t = Template(spec, ENTRY)
    yield t, spec
    t.close()


def _record(tmp_path, pid: int) -> dict:
    return json.loads((tmp_path / f"{pid}.json").read_text())


def test_a_worker_gets_the_recipe_its_fds_and_only_them(template, tmp_path):
    template, spec = template
    a, b = socket.socketpair()
    with a, b:
        handle = template.spawn(1, [b.fileno()])
        assert handle.wait(30) == 7 and handle.poll() == 7
    rec = _record(tmp_path, handle.pid)
    fd = rec["values"]["inherited_fd"]
    assert rec["recipe"]["argv"] == spec.argv(0, 0, 0)      # the one recipe, made from the shared command line
    assert rec["values"] == {"inherited_fd": fd, "state_fd": None, "stats_file": str(tmp_path / "pair1.json"),
                             "cpu": "1"}                    # ... and this worker's own values: as a command line,
    assert spec.argv(1, fd, None) == ["run", "--fd", str(fd), "--tap", "vt0", "--stats-file",
                                      str(tmp_path / "pair1.json"), "--sandbox", "strict", "--stats-interval", "2.0",
                                      "--cpu", "1"]
    assert set(rec["fds"]) - {0, 1, 2} == {fd}      # its channel, nothing of serve's or the template's
    assert {0, 1, 2} <= set(rec["fds"])             # stdin (/dev/null), stdout and stderr stay
    assert rec["env"] == "yes" and rec["comm"] == "vs-worker"


@pytest.mark.parametrize("order", [
    {"op": "spawn", "pair": 2},                 # no such pair
    {"op": "spawn", "pair": "0"},
    {"op": "exec", "argv": ["/bin/sh"]},        # nothing but spawn and signal
    {"op": "signal", "pid": 1, "sig": 9},       # not the template's child
])
def test_the_template_refuses_what_serve_may_not_ask(template, order):
    template, _spec = template
    a, b = socket.socketpair()
    with a, b:
        socket.send_fds(template.sock, [json.dumps(order).encode()], [b.fileno()])
        reply = json.loads(template.sock.recv(4096))
    assert "error" in reply and reply["error"].startswith("refused")
    os.kill(1, 0)       # init is untouched


def test_a_refused_spawn_raises_and_the_template_still_serves(template, tmp_path):
    template, _spec = template
    with pytest.raises(TemplateError):
        template.spawn(0, [])               # a channel fd is required
    a, b = socket.socketpair()
    with a, b:
        assert template.spawn(0, [b.fileno()]).wait(30) == 7


def test_only_the_template_signals_its_workers(tmp_path, monkeypatch):
    monkeypatch.setenv("VS_TEMPLATE_MODE", "--sleep")
    spec = WorkerSpec(tap="vt0", run_dir=str(tmp_path), cpus=(None,),
                      env={"VS_TEMPLATE_OUT": str(tmp_path), "VS_TEMPLATE_MODE": "--sleep"})
    t = Template(spec, ENTRY)
    try:
        a, b = socket.socketpair()
        with a, b:
            handle = t.spawn(0, [b.fileno()])
            with pytest.raises(subprocess.TimeoutExpired):
                handle.wait(0.2)
            assert int(open(f"/proc/{handle.pid}/status").read().split("PPid:\t")[1].split()[0]) == t.pid
            handle.send_signal(signal.SIGTERM)
            assert handle.wait(30) == -signal.SIGTERM
    finally:
        t.close()



@pytest.mark.parametrize("mode", ["", "--bad-recipe", "--bad-once"])
def test_the_recipe_is_made_once_in_the_template(tmp_path, mode):
    """Made once, in the template, with its env. Refused there: each worker makes it once more, in itself,
    and fails with the refusal again (--bad-recipe) or runs what it made (--bad-once: a passing refusal
    does not hold for serve's life)."""
    spec = WorkerSpec(tap="vt0", run_dir=str(tmp_path), cpus=(3, None),
                      env={"VS_TEMPLATE_OUT": str(tmp_path), "VS_ONLY_THIS": "yes", "VS_TEMPLATE_MODE": mode})
    t = Template(spec, ENTRY)
    try:
        handles = []
        for pair in (0, 1):
            a, b = socket.socketpair()
            with a, b:
                handles.append(t.spawn(pair, [b.fileno(), a.fileno()]))
                assert handles[-1].wait(30) == 7
        made = [json.loads(line) for line in (tmp_path / "made.jsonl").read_text().splitlines()]
        makers = [t.pid] + ([h.pid for h in handles] if mode else [])
        assert made == [{"argv": spec.argv(0, 0, 0), "pid": pid, "env": "yes"} for pid in makers]
        recs = [_record(tmp_path, h.pid) for h in handles]
        assert [r["values"]["cpu"] for r in recs] == ["3", None]
        assert all(r["values"]["state_fd"] is not None for r in recs)
        expected = [{"refused": "a bad recipe"}] * 2 if mode == "--bad-recipe" else made[-2:] if mode else made * 2
        assert [r["recipe"] for r in recs] == expected
    finally:
        t.close()
