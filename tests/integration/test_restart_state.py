"""Restarts that keep the rings' positions (issue 15): `run --state-file` on tmpfs, against real workers
driven by the pure-Python front-end. The host side is a SOCK_SEQPACKET socketpair (`--host-fd`): no root.

A worker is SIGKILLed while TX traffic flows; its replacement maps the same page, the front-end sets the
rings up again with a stale SET_VRING_BASE (the ring's start: the front-end never got the positions), and the
replacement resumes from the page: every chain the driver made available is completed exactly once, and every frame
reaches the host (a frame of the one batch the kill interrupted may arrive twice: docs/design-notes.md,
"Restart: the state page"). Split and packed rings alike.
"""
from __future__ import annotations

import errno
import os
import socket
import tempfile

import pytest

from support.waiting import wait_for
from vhostsplice.device.statepage import MEMORY_FS, _fs_type
from vhostsplice.testing.frontend import Frontend
from vhostsplice.testing.harness import WorkerProcess, demo_frame


@pytest.fixture
def wire():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def state_file():
    """A state page path on tmpfs (/dev/shm), removed afterwards."""
    folder = tempfile.mkdtemp(prefix="vs-state-", dir="/dev/shm")
    path = os.path.join(folder, "pair.state")
    yield path
    if os.path.exists(path):
        os.unlink(path)
    os.rmdir(folder)


# SET_VRING_BASE of a ring that never ran (split 0; packed: both indexes 0 with wrap counters 1): what a
# front-end that never got the positions sends after a reconnect
STALE = {False: 0, True: 0x8000_8000}


def worker(tmp_path, fd: int, name: str, *extra: str) -> WorkerProcess:
    w = WorkerProcess(str(tmp_path), "", *extra, name=name, host=("--host-fd", str(fd)), pass_fds=(fd,))
    w.wait_listening()
    return w


def take(sock: socket.socket, into: list[bytes]) -> list[bytes]:
    while True:
        try:
            into.append(sock.recv(1 << 16))
        except BlockingIOError:
            return into


def collect(fe: Frontend, used: list) -> list:
    """The TX used entries the driver has reclaimed so far, appended to `used`."""
    used += fe.tx.used()
    return used


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_a_killed_worker_is_resumed_from_the_state_page_nothing_lost_or_completed_twice(tmp_path, wire, state_file,
                                                                                         packed):
    a, b = wire
    first = worker(tmp_path, a.fileno(), "first", "--state-file", state_file)
    fe = Frontend.connect(first.sock, packed=packed).start()
    assert fe.packed == packed
    sent, got, used = [], [], []
    try:
        for i in range(60):                                 # traffic; the kill lands while it flows
            frame = demo_frame(i, 300)
            sent.append(frame)
            fe.send([frame])
            if i == 30:
                assert wait_for(lambda: len(collect(fe, used)) >= 20, 20), len(used)
        first.kill()
        collect(fe, used)
        second = worker(tmp_path, a.fileno(), "second", "--state-file", state_file)
        fe.reconnect(second.sock, base=STALE[packed])       # stale: the rings moved on since
        fe.notify(1)
        for i in range(60, 80):
            frame = demo_frame(i, 300)
            sent.append(frame)
            fe.send([frame])
        assert wait_for(lambda: len(collect(fe, used)) >= len(sent), 20), (len(used), len(sent))
        assert wait_for(lambda: set(take(b, got)) >= set(sent), 20)
        fe.stop()
        fe.close()
        code, final = second.wait()
    finally:
        first.kill()
        if "second" in locals():
            second.kill()
    assert code == 0, second.stderr
    heads = [head for head, _len in used]
    assert len(heads) == len(sent), (len(heads), len(sent))         # each chain completed once, none lost
    assert len(got) - len(set(got)) <= 256, len(got)                # at most the killed batch again
    resume = final["resume"]
    assert resume["page"] == "on" and resume["generation"] == 2, resume
    tx = resume["tx"]
    assert tx["source"] == "state-page" and tx["disagreed"] and tx["front_end"] == STALE[packed], tx
    assert tx["state"] == tx["position"] != STALE[packed], tx
    assert tx["used_idx"] == (None if packed else tx["position"]), tx      # split: used->idx agreed
    assert "resumes from state-page" in second.stderr, second.stderr


def disk_dir(*candidates) -> str:
    """The first of candidates not on tmpfs/ramfs (the unit tests check the rule itself on any machine)."""
    for folder in candidates:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _fs_type(fd) not in MEMORY_FS:
                return str(folder)
        finally:
            os.close(fd)
    pytest.skip(f"no directory off tmpfs/ramfs among {candidates}")


def test_state_file_off_tmpfs_is_einval(tmp_path, wire):
    a, _b = wire
    folder = disk_dir(tmp_path, os.path.dirname(os.path.abspath(__file__)), "/var/tmp")
    page = os.path.join(folder, f"vs-state-test-{os.getpid()}")
    w = WorkerProcess(str(tmp_path), "", "--state-file", page, name="w",
                      host=("--host-fd", str(a.fileno())), pass_fds=(a.fileno(),))
    assert w.proc.wait(30) == errno.EINVAL
    assert "not on tmpfs or ramfs" in w.proc.stderr.read()
    assert not os.path.exists(w.sock) and not os.path.exists(page)      # refused before it was created
