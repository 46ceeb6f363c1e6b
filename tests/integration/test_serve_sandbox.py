"""`serve` confines itself (issue 17, sandbox/serve.py, docs/security.md "serve"): after its set-up and
before a front-end, as far as a worker does (its workers come from the template, template.py); the
filter and Landlock bite. As root, in a private netns (prefix vsz).
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import textwrap

import pytest

from support.confined import status, unconfined
from support.waiting import wait_for
from vhostsplice.sandbox import kernel
from vhostsplice.sandbox import serve as serve_box
from vhostsplice.serve.selfexec import self_argv, self_env
from vhostsplice.testing.frontend import Frontend
from vhostsplice.testing.harness import demo_frame

pytestmark = pytest.mark.root
TAP = "vsz0"
NETNS = "vsz"        # the ns fixture's namespace prefix (conftest.py)


def _serve(tmp_path, *extra):
    sock, events = str(tmp_path / "s.sock"), tmp_path / "events"
    proc = subprocess.Popen([*self_argv(), "serve", "--socket-path", sock, "--tap", TAP, "--queues", "1",
                             "--events", str(events), *extra], env=self_env(), stdin=subprocess.DEVNULL)
    # serve listens, then confines itself, then writes its `sandbox` event, then accepts: the socket alone
    # can exist a moment before the filter does (a check at that moment read Seccomp 0 once in two runs)
    assert wait_for(lambda: (os.path.exists(sock) and _events(events, "sandbox")) or proc.poll() is not None)
    assert proc.poll() is None
    return proc, sock, events


def _events(path, kind):
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, lines) if e["event"] == kind]


def _stop(proc) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(30)


def test_serve_is_confined_before_a_front_end_and_its_workers_still_serve(ns, tmp_path):
    proc, sock, events = _serve(tmp_path)
    try:
        assert unconfined(proc.pid) == []       # listening, no front-end yet: confined like a worker
        [box] = _events(events, "sandbox")
        assert box["seccomp"] == "kill" and box["bounding_dropped"] is True
        fe = Frontend.connect(sock).start()
        pids = wait_for(lambda: [e["pid"] for e in _events(events, "start")])
        assert wait_for(lambda: not unconfined(pids[0])), unconfined(pids[0])
        template = int(status(pids[0])["PPid"])     # the worker is the template's child, not serve's
        assert template != proc.pid and int(status(template)["PPid"]) == proc.pid
        assert open(f"/proc/{template}/comm").read().strip() == "vs-template"
        fe.send([demo_frame(i, 120) for i in range(8)])
        assert fe.wait_used(fe.tx, 8)
        os.kill(pids[0], signal.SIGKILL)            # a replacement starts beneath serve's confinement
        assert wait_for(lambda: len(_events(events, "start")) == 2, timeout=20), events.read_text()
        second = _events(events, "start")[1]["pid"]
        assert wait_for(lambda: not unconfined(second)), unconfined(second)
        assert not [e for e in _events(events, "exit") if e["exit"] == 159], events.read_text()
        fe.stop()
        fe.close()
        assert proc.wait(30) == 0
    finally:
        _stop(proc)


def test_serve_sandbox_off_confines_nothing(ns, tmp_path):
    proc, _sock, events = _serve(tmp_path, "--sandbox", "off")
    try:
        assert status(proc.pid)["Seccomp"] == "0" and _events(events, "sandbox") == [
            {"event": "sandbox", "mode": "off", "time": _events(events, "sandbox")[0]["time"]}]
    finally:
        assert _stop(proc) == 0


# A child that confines itself exactly as serve does, then tries one thing a compromised serve would.
CHILD = textwrap.dedent("""
    import ctypes, os, socket, sys
    from vhostsplice.sandbox.serve import ServeFacts, confine_serve
    run_dir, stats_dir = os.path.join(sys.argv[2], "run"), os.path.join(sys.argv[2], "stats")
    confine_serve("strict", ServeFacts(run_dir=run_dir, stats_dir=stats_dir, socket_dir=sys.argv[2]))
    os.write(1, b"confined\\n")
    libc = ctypes.CDLL(None, use_errno=True)
    def try_open(path):
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
            return "opened"
        except OSError as exc:
            return f"errno {exc.errno}"
    attempt = {
        "socket_unix": lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM),
        "ptrace": lambda: libc.ptrace(0, 0, None, None),
        "mount": lambda: libc.mount(b"none", b"/mnt", b"tmpfs", 0, None),
        "unshare": lambda: libc.unshare(0x10000000),
        "fork": lambda: os.fork(),
        "execve": lambda: os.execv(sys.executable, [sys.executable, "-c", "pass"]),
        "kill": lambda: os.kill(1, 0),
        "write_outside": lambda: try_open("/tmp/vhostsplice-serve-sandbox-must-not-exist"),
        "write_stats_dir": lambda: try_open(os.path.join(stats_dir, "s.json")),
        "write_run_dir": lambda: try_open(os.path.join(run_dir, "w.json")),
    }[sys.argv[1]]
    os.write(1, f"survived {attempt()}\\n".encode())
""")


def _child(what, tmp_path):
    (tmp_path / "run").mkdir(exist_ok=True)
    (tmp_path / "stats").mkdir(exist_ok=True)
    proc = subprocess.run([*self_argv()[:-2], "-c", CHILD, what, str(tmp_path)], env=self_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.startswith("confined\n"), proc.stderr
    return proc


@pytest.mark.parametrize("what", ["socket_unix", "ptrace", "mount", "unshare", "fork", "execve", "kill"])
def test_serve_filter_kills_what_a_compromised_serve_would_try(what, tmp_path):
    out = _child(what, tmp_path)
    assert out.returncode == -signal.SIGSYS, (out.returncode, out.stdout, out.stderr)


@pytest.mark.parametrize("what, expect", [
    ("write_outside", f"survived errno {errno.EACCES}"),     # Landlock: read-only file system
    ("write_run_dir", f"survived errno {errno.EACCES}"),     # the workers write there, serve only reads
    ("write_stats_dir", "survived opened"),                  # --stats-file
])
def test_serve_landlock_writes_only_its_stats_directory(what, expect, tmp_path):
    if not kernel.landlock_abi():
        pytest.skip("this kernel has no Landlock")
    out = _child(what, tmp_path)
    assert out.returncode == 0 and out.stdout == f"confined\n{expect}\n", (out.returncode, out.stdout, out.stderr)
    assert not os.path.exists("/tmp/vhostsplice-serve-sandbox-must-not-exist")


def test_serve_filter_holds_nothing_that_starts_or_reaches_another_process():
    """serve's workers come from the template: serve's own list has no way to make or touch a process."""
    allowed = set(serve_box.table())
    assert not allowed & {"fork", "vfork", "clone", "clone3", "execve", "execveat", "kill", "tkill", "tgkill",
                          "ptrace", "process_vm_writev", "socket", "connect", "bind", "unshare", "setns"}
    assert all(rule in serve_box.SERVE_RULES and why for rule, why in serve_box.table().values())
