"""serve's worker template (template.py): workers by fork from a fixed recipe; a (possibly compromised)
serve can ask for a pair's worker and signal the template's own children, nothing else."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import pytest

from vhostsplice.serve.template import Template, TemplateError, WorkerSpec


def _entry(argv: list[str]) -> int:
    """A stand-in for cli.main: records the command line it got and the fds it holds, then exits 7 (or
    sleeps, for the signal tests)."""
    out = os.environ["VS_TEMPLATE_OUT"]
    fds = [fd for fd in range(256) if _is_open(fd)]
    with open(os.path.join(out, f"{os.getpid()}.json"), "w") as f:
        json.dump({"argv": argv, "fds": fds,
                   "env": os.environ.get("VS_ONLY_THIS"), "comm": open("/proc/self/comm").read().strip()}, f)
    if "--sleep" in os.environ.get("VS_TEMPLATE_MODE", ""):
        signal.pthread_sigmask(signal.SIG_SETMASK, set())    # as the worker's loop releases the stop signals
        time.sleep(60)
    return 7


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
    t = Template(spec, _entry)
    yield t
    t.close()


def _record(tmp_path, pid: int) -> dict:
    return json.loads((tmp_path / f"{pid}.json").read_text())


def test_a_worker_gets_the_recipe_its_fds_and_only_them(template, tmp_path):
    a, b = socket.socketpair()
    with a, b:
        handle = template.spawn(1, [b.fileno()])
        assert handle.wait(30) == 7 and handle.poll() == 7
    rec = _record(tmp_path, handle.pid)
    fd = int(rec["argv"][rec["argv"].index("--fd") + 1])
    assert rec["argv"] == ["run", "--fd", str(fd), "--tap", "vt0", "--stats-file", str(tmp_path / "pair1.json"),
                           "--sandbox", "strict", "--stats-interval", "2.0", "--cpu", "1"]
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
    a, b = socket.socketpair()
    with a, b:
        socket.send_fds(template.sock, [json.dumps(order).encode()], [b.fileno()])
        reply = json.loads(template.sock.recv(4096))
    assert "error" in reply and reply["error"].startswith("refused")
    os.kill(1, 0)       # init is untouched


def test_a_refused_spawn_raises_and_the_template_still_serves(template, tmp_path):
    with pytest.raises(TemplateError):
        template.spawn(0, [])               # a channel fd is required
    a, b = socket.socketpair()
    with a, b:
        assert template.spawn(0, [b.fileno()]).wait(30) == 7


def test_only_the_template_signals_its_workers(tmp_path, monkeypatch):
    monkeypatch.setenv("VS_TEMPLATE_MODE", "--sleep")
    spec = WorkerSpec(tap="vt0", run_dir=str(tmp_path), cpus=(None,),
                      env={"VS_TEMPLATE_OUT": str(tmp_path), "VS_TEMPLATE_MODE": "--sleep"})
    t = Template(spec, _entry)
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



def _prepare(argv: list[str]):
    """A stand-in for cli.prepare_worker: records what the template asked it (in the template) and returns
    an entry that records how the worker came through it."""
    with open(os.path.join(os.environ["VS_TEMPLATE_OUT"], "prepared.json"), "w") as f:
        json.dump({"argv": argv, "pid": os.getpid(), "env": os.environ.get("VS_ONLY_THIS")}, f)
    if os.environ.get("VS_TEMPLATE_MODE") == "--bad-recipe":
        raise ValueError("a bad recipe")
    return lambda line: _entry(line + ["--prepared"])


@pytest.mark.parametrize("bad", [False, True])
def test_workers_run_the_entry_prepared_once_in_the_template(tmp_path, bad):
    spec = WorkerSpec(tap="vt0", run_dir=str(tmp_path), cpus=(3,),
                      env={"VS_TEMPLATE_OUT": str(tmp_path), "VS_ONLY_THIS": "yes",
                           "VS_TEMPLATE_MODE": "--bad-recipe" if bad else ""})
    t = Template(spec, _entry, prepare=_prepare)
    try:
        a, b = socket.socketpair()
        with a, b:
            handle = t.spawn(0, [b.fileno()])
            assert handle.wait(30) == 7
        prepared = json.loads((tmp_path / "prepared.json").read_text())
        assert prepared == {"argv": spec.argv(0, 0, 0), "pid": t.pid, "env": "yes"}   # in the template, its env set
        argv = _record(tmp_path, handle.pid)["argv"]
        assert argv[-1] == "--prepared" if not bad else "--prepared" not in argv   # a bad recipe: the plain entry
    finally:
        t.close()
