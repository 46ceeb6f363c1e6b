"""The confined worker (issue 17, docs/security.md): `run` and every worker of `serve` confine themselves
before their first message, and the filter bites. As root, in a private netns (prefix vsx); the
front-end is the built-in pure-Python one.
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
from vhostsplice.errors import SIGSYS_EXIT, errno_name
from vhostsplice.sandbox import audit, kernel
from vhostsplice.serve.selfexec import self_argv, self_env
from vhostsplice.testing.frontend import Frontend
from vhostsplice.testing.harness import WorkerProcess, collect, demo_frame, live_stats, tap_socket

pytestmark = pytest.mark.root
TAP = "vsx0"
NETNS = "vsx"        # the ns fixture's namespace prefix (conftest.py)


def test_a_connected_run_worker_is_confined_and_still_serves(ns, tmp_path):
    with WorkerProcess(str(tmp_path), TAP) as w:
        tap = tap_socket(TAP)
        fe = Frontend.connect(w.sock).start()
        assert wait_for(lambda: not unconfined(w.proc.pid)), unconfined(w.proc.pid)
        sent = [demo_frame(i, 200) for i in range(20)]
        fe.send(sent)
        assert collect(tap, 20) == sent
        live = live_stats(w.proc, w.stats_file)          # SIGUSR1 and --stats-file, confined
        assert live is not None and live["rings"]["tx"]["packets"] == 20
        sandbox = live["sandbox"]
        assert sandbox["mode"] == "strict" and sandbox["seccomp"] == "kill" and sandbox["bounding_dropped"]
        assert sandbox["landlock_abi"] == kernel.landlock_abi()
        assert set(sandbox["namespaces"]) == {"mnt", "ipc", "uts"}
        io = live["host"]["io"]          # the tap in io_uring batches, confined (docs/security.md "The io_uring")
        assert io["path"] == "io_uring" and io["tx_sqes"] == 20 and 0 < io["enters"] <= 20, io
        fe.stop()
        fe.close()
        code, stats = w.wait()
    assert code == 0 and stats["rings"]["tx"]["packets"] == 20, w.stderr
    assert not os.path.exists(w.sock), "the confined worker removes its socket file on exit"


@pytest.mark.parametrize("mode", ["off", "log"])
def test_sandbox_off_leaves_the_worker_as_it_was_and_log_filters_without_killing(ns, tmp_path, mode):
    with WorkerProcess(str(tmp_path), TAP, "--sandbox", mode) as w:
        fe = Frontend.connect(w.sock).start()
        fe.send([demo_frame(1, 100)])
        assert fe.wait_used(fe.tx, 1)
        st = status(w.proc.pid)
        if mode == "off":
            assert st["Seccomp"] == "0" and int(st["CapEff"], 16) != 0
        else:
            assert unconfined(w.proc.pid) == []
        fe.stop()
        fe.close()
        code, stats = w.wait()
    assert code == 0 and stats["sandbox"]["mode"] == mode
    assert stats["sandbox"] == {"mode": "off"} if mode == "off" else stats["sandbox"]["seccomp"] == "log"


def test_every_serve_worker_is_confined(ns, tmp_path):
    sock, events = str(tmp_path / "s.sock"), tmp_path / "events"
    sup = subprocess.Popen([*self_argv(), "serve", "--socket-path", sock, "--tap", TAP, "--queues", "1",
                            "--events", str(events)], env=self_env(), stdin=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: os.path.exists(sock)), "serve did not listen"
        fe = Frontend.connect(sock).start()

        def started():
            lines = events.read_text().splitlines() if events.exists() else []
            return [e["pid"] for e in map(json.loads, lines) if e["event"] == "start"]
        pids = wait_for(started)
        assert pids and wait_for(lambda: not any(unconfined(p) for p in pids)), [unconfined(p) for p in pids]
        assert status(sup.pid)["Seccomp"] == "2", "serve confines itself too (tests/integration/test_serve_sandbox.py)"
        fe.stop()
        fe.close()
        assert sup.wait(30) == 0
    finally:
        if sup.poll() is None:
            sup.send_signal(signal.SIGTERM)
            sup.wait(30)


# A child that installs the very filter a worker installs (Sandbox.confine with the same allow-list),
# says so, and then tries one thing a compromised worker would.
CHILD = textwrap.dedent("""
    import ctypes, mmap, os, socket, sys
    from vhostsplice.sandbox import Facts, Sandbox
    box = Sandbox("strict")
    box.prepare()
    stats_dir = os.open(sys.argv[2], os.O_PATH | os.O_DIRECTORY)
    box.confine(Facts(stats_dir_fd=stats_dir))
    os.write(1, b"confined\\n")
    libc = ctypes.CDLL(None, use_errno=True)
    def try_open(path, **kw):
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600, **kw))
            return "opened"
        except OSError as exc:
            return f"errno {exc.errno}"
    attempt = {
        "execve": lambda: os.execv("/bin/true", ["true"]),
        "socket_inet": lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
        "socket_unix": lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM),
        "ptrace": lambda: libc.ptrace(0, 0, None, None),
        "mmap_exec": lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC),
        "ioctl_other": lambda: libc.ioctl(1, 0x5412, ctypes.create_string_buffer(1)),   # TIOCSTI
        "open": lambda: try_open("/tmp/vhostsplice-sandbox-must-not-exist"),
        "open_stats_dir": lambda: try_open("x.json", dir_fd=stats_dir),
        "open_escape": lambda: try_open("/tmp/vhostsplice-sandbox-must-not-exist", dir_fd=stats_dir),
    }[sys.argv[1]]
    os.write(1, f"survived {attempt()}\\n".encode())
""")
KILLED = {"execve": "execve", "socket_inet": "socket", "socket_unix": "socket", "ptrace": "ptrace",
          "mmap_exec": "mmap", "ioctl_other": "ioctl"}     # attempt -> the syscall the kernel's record names


def _confined_child(what: str, tmp_path) -> subprocess.CompletedProcess:
    python = self_argv()[:-2]       # the interpreter (and -P: the installed package, not the source tree)
    proc = subprocess.Popen([*python, "-c", CHILD, what, str(tmp_path)], env=self_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), proc.pid


@pytest.mark.parametrize("what", KILLED)
def test_the_filter_kills_a_forbidden_call(what, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root (the bounding set is emptied with CAP_SETPCAP)")
    out, pid = _confined_child(what, tmp_path)
    assert out.stdout.startswith("confined\n"), out.stderr
    assert out.returncode == -signal.SIGSYS, (out.returncode, out.stdout, out.stderr)
    assert errno_name(128 + signal.SIGSYS) == "SIGSYS" and SIGSYS_EXIT == 159
    assert audit.killed_by(pid) == KILLED[what]         # what serve's exit event names


@pytest.mark.parametrize("what, expect", [
    ("open", f"survived errno {errno.EPERM}"),                 # openat outside the stats directory: seccomp
    ("open_escape", f"survived errno {errno.EACCES}"),         # an absolute path through its fd: Landlock
    ("open_stats_dir", "survived opened"),                     # what --stats-file needs
])
def test_file_access_is_the_stats_directory_only(what, expect, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root (the bounding set is emptied with CAP_SETPCAP)")
    if what == "open_escape" and not kernel.landlock_abi():
        pytest.skip("this kernel has no Landlock: an absolute path through the stats directory fd is open")
    out, _pid = _confined_child(what, tmp_path)
    assert out.returncode == 0 and out.stdout == f"confined\n{expect}\n", (out.returncode, out.stdout, out.stderr)
    assert not os.path.exists("/tmp/vhostsplice-sandbox-must-not-exist")


def test_a_confined_root_worker_refuses_a_stats_directory_it_cannot_write(ns, tmp_path):
    """Without CAP_DAC_OVERRIDE uid 0 obeys the mode bits: a directory of another user is 13 EACCES at start."""
    folder = tmp_path / "nobodys"
    folder.mkdir(mode=0o755)
    os.chown(folder, 65534, 65534)
    out = subprocess.run([*self_argv(), "run", "--socket-path", str(tmp_path / "w.sock"), "--tap", TAP,
                          "--stats-file", str(folder / "stats.json")], env=self_env(), stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == errno.EACCES and "without capabilities" in out.stderr, out.stderr
