"""`vhostsplice serve` takes run's ownership options: --allow-uid at its own socket, --user for every worker.

As root, in a private netns (prefix vsu); the front-end is the built-in pure-Python one (queues=1).
"""
from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import subprocess
import time

import pytest

from vhostsplice.serve.selfexec import self_argv, self_env
from vhostsplice.testing.frontend import Frontend
from vhostsplice.testing.harness import collect, demo_frame, tap_socket

from support.waiting import wait_for

pytestmark = pytest.mark.root
TAP = "vsu0"
NETNS = "vsu"        # the ns fixture's namespace prefix (conftest.py)
NOBODY = pwd.getpwnam("nobody")


class Serve:
    def __init__(self, tmp_path, *extra):
        self.sock, self.events_file = str(tmp_path / "s.sock"), str(tmp_path / "events")
        self.proc = subprocess.Popen([*self_argv(), "serve", "--socket-path", self.sock, "--tap", TAP,
                                      "--queues", "1", "--events", self.events_file, *extra],
                                     env=self_env(), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 15
        while not os.path.exists(self.sock):
            assert self.proc.poll() is None and time.monotonic() < deadline, self.proc.stderr.read()
            time.sleep(0.05)

    def events(self, kind: str) -> list[dict]:
        with open(self.events_file) as f:
            return [e for e in map(json.loads, f) if e["event"] == kind]

    def wait_event(self, kind: str, timeout: float = 10) -> dict:
        deadline = time.monotonic() + timeout
        while not self.events(kind):
            assert time.monotonic() < deadline, f"no {kind} event"
            time.sleep(0.05)
        return self.events(kind)[0]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _ids(pid: int) -> dict:
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {k: fields[k].split() for k in ("Uid", "Gid", "CapEff")}


def test_serve_allow_uid_refuses_an_unlisted_peer_and_keeps_listening(ns, tmp_path):
    s = Serve(tmp_path, "--allow-uid", "nobody")
    try:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(5)
        probe.connect(s.sock)
        assert probe.recv(1) == b"", "a refused peer is closed without a byte"
        probe.close()
        refused = s.wait_event("refused")
        assert refused["reason"] == "peer_uid" and refused["uid"] == 0 and refused["pid"] == os.getpid()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as again:     # still listening after it
            again.settimeout(5)
            again.connect(s.sock)
            assert again.recv(1) == b""
        assert wait_for(lambda: len(s.events("refused")) == 2), "a refused peer must not end serve"
        assert s.proc.poll() is None
        assert s.events("start") == []
        assert s.stop() == 0
    finally:
        s.kill()


def test_serve_user_drops_every_worker_and_gives_it_the_socket(ns, tmp_path):
    s = Serve(tmp_path, "--user", "nobody")
    try:
        assert os.stat(s.sock).st_uid == NOBODY.pw_uid and os.stat(s.sock).st_mode & 0o777 == 0o600
        fe = Frontend.connect(s.sock).start()
        pid = s.wait_event("start")["pid"]
        deadline = time.monotonic() + 10
        while _ids(pid)["Uid"] != [str(NOBODY.pw_uid)] * 4:       # the worker drops once its queue is open
            assert time.monotonic() < deadline, _ids(pid)
            time.sleep(0.05)
        ids = _ids(pid)
        assert ids["Gid"] == [str(NOBODY.pw_gid)] * 4 and int(ids["CapEff"][0], 16) == 0
        assert _ids(s.proc.pid)["Uid"][0] == "0", "the supervisor stays root (it opens replacements' queues)"
        tap = tap_socket(TAP)
        fe.send([demo_frame(3, 200)])
        assert collect(tap, 1) == [demo_frame(3, 200)]
        fe.stop()
        fe.close()
        assert s.proc.wait(30) == 0                 # serve ends with its front-end
        assert [e["exit"] for e in s.events("exit")] == [0]
    finally:
        s.kill()
