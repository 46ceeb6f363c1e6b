"""Ownership rules of `vhostsplice run` (README: "Ownership and privileges"), as root.

One front-end per worker; the socket's mode, group and owner; --allow-uid checked with SO_PEERCRED;
a host fd that is the worker's own control socket, or that a front-end sends back, is refused;
--user drops every privilege once the tap and the socket are open, and the worker still serves.
"""
from __future__ import annotations

import errno
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

from vhostsplice.vhostuser import protocol as P
from vhostsplice.serve.selfexec import self_argv, self_env
from vhostsplice.spec import Feature as F, Req, bit
from vhostsplice.testing.frontend import DEFAULT_FEATURES, Frontend
from vhostsplice.testing.harness import WorkerProcess, collect, demo_frame, live_stats, tap_socket

pytestmark = pytest.mark.root
TAP = "vso0"
NETNS = "vso"        # the ns fixture's namespace prefix (conftest.py)
NOBODY = pwd.getpwnam("nobody")
OFFLOADS = bit(F.NET_F_CSUM) | bit(F.NET_F_GUEST_CSUM)     # acking them makes the worker call TUNSETOFFLOAD


@pytest.fixture
def open_dir():
    """A directory nobody can reach (pytest's tmp_path sits under a 0700 directory): /tmp/vso-XXXX, 0755."""
    path = tempfile.mkdtemp(prefix="vso-")
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


_names = iter(range(1 << 30))


def _worker(ns, tmp_path, *extra, workdir=None):
    w = WorkerProcess(str(workdir or tmp_path), TAP, *extra, name=f"w{next(_names)}")
    try:
        w.wait_listening()
    except BaseException:
        w.kill()
        raise
    return w


def _finish(worker, fe) -> tuple[int, dict]:
    fe.stop()
    fe.close()
    return worker.wait()


def _run(*args, pass_fds=(), timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([*self_argv(), "run", *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          env=self_env(), pass_fds=pass_fds, timeout=timeout)


def _refused_unserved(path: str) -> bool:
    """Connect, and see the worker close the connection without a word."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.settimeout(5)
        return s.recv(1) == b""


# -- 1. one front-end per worker ---------------------------------------------------------------------

def test_second_frontend_is_refused_counted_and_the_first_keeps_working(ns, tmp_path):
    w = _worker(ns, tmp_path)
    try:
        tap = tap_socket(TAP)
        fe = Frontend.connect(w.sock).start()
        assert _refused_unserved(w.sock) and _refused_unserved(w.sock)
        fe.send([demo_frame(1, 300)])
        assert collect(tap, 1) == [demo_frame(1, 300)]
        code, stats = _finish(w, fe)
    finally:
        w.kill()
    assert code == 0, w.stderr
    assert stats["refused"] == {"busy": 2, "peer_uid": 0}
    assert "a front-end is already served" in w.stderr


# -- 2. the socket: mode, group, --allow-uid ---------------------------------------------------------

def test_socket_is_0600_by_default_and_takes_socket_mode_and_group(ns, tmp_path):
    w = _worker(ns, tmp_path)
    try:
        st = os.stat(w.sock)
        assert (st.st_mode & 0o777, st.st_uid) == (0o600, 0)
    finally:
        w.kill()
    w = _worker(ns, tmp_path, "--socket-mode", "0660", "--socket-group", str(NOBODY.pw_gid))
    try:
        st = os.stat(w.sock)
        assert (st.st_mode & 0o777, st.st_gid) == (0o660, NOBODY.pw_gid)
    finally:
        w.kill()


@pytest.mark.parametrize("args,words", [
    (["--socket-mode", "0777"], "without x"),
    (["--socket-mode", "0400"], "owner keeps rw"),
    (["--socket-mode", "rw"], "expected octal"),
    (["--socket-group", "no-such-group-vso"], "no such group"),
    (["--allow-uid", "no-such-user-vso"], "no such user"),
    (["--allow-uid", ","], "expected UID"),
    (["--user", "no-such-user-vso"], "no such user"),
    (["--user", "nobody:"], "expected NAME[:GROUP]"),
])
def test_bad_ownership_options_are_einval(ns, tmp_path, args, words):
    res = _run("--socket-path", str(tmp_path / "x.sock"), "--tap", TAP, *args)
    assert res.returncode == errno.EINVAL, res.stderr
    assert words in res.stderr and "Traceback" not in res.stderr


def test_socket_mode_without_socket_path_is_einval(tmp_path):
    res = _run("--connect", str(tmp_path / "x.sock"), "--tap", TAP, "--socket-mode", "0660")
    assert res.returncode == errno.EINVAL and "--socket-path only" in res.stderr


def _frontend_as(uid: int, gid: int, path: str, frame: bytes) -> int:
    """Fork; the child becomes uid/gid (Python itself may not be executable by that user, so no exec)
    and drives one frame through the worker as that peer; returns the child's exit status."""
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            fe = Frontend.connect(path, timeout=5).start()
            fe.send([frame])
            fe.wait_used(fe.tx, 1)
            fe.stop()
            fe.close()
            status = 0
        finally:
            os._exit(status)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_allow_uid_refuses_other_peers_keeps_listening_then_serves_an_allowed_one(ns, open_dir):
    """Root is not listed, so root is refused; nobody (listed) is then served; the socket is 0666 so
    that the file mode is not what keeps anyone out. The tap is made persistent first: the worker ends
    when its front-end leaves, and a tap it created would vanish (ENETDOWN) before the test reads it."""
    subprocess.run(["ip", "tuntap", "add", "dev", TAP, "mode", "tap", "multi_queue", "vnet_hdr"], check=True)
    w = _worker(ns, None, "--allow-uid", "nobody", "--socket-mode", "0666", workdir=open_dir)
    try:
        assert _refused_unserved(w.sock)
        live = live_stats(w.proc, w.stats_file)     # answered after the refusal: still serving
        assert live is not None and live["refused"]["peer_uid"] == 1, "a refused peer must not end a listening worker"
        tap = tap_socket(TAP)
        assert _frontend_as(NOBODY.pw_uid, NOBODY.pw_gid, w.sock, demo_frame(7, 200)) == 0
        code, stats = w.wait()              # the served front-end left cleanly: exit 0
        assert collect(tap, 1) == [demo_frame(7, 200)]
    finally:
        w.kill()
    assert code == 0, w.stderr
    assert stats["refused"] == {"busy": 0, "peer_uid": 1}
    assert f"uid 0 is not in --allow-uid {NOBODY.pw_uid}" in w.stderr


def test_allow_uid_listing_root_serves_root(ns, tmp_path):
    w = _worker(ns, tmp_path, "--allow-uid", f"{NOBODY.pw_uid},0")
    try:
        tap = tap_socket(TAP)
        fe = Frontend.connect(w.sock).start()
        fe.send([demo_frame(2, 100)])
        assert collect(tap, 1) == [demo_frame(2, 100)]
        code, stats = _finish(w, fe)
    finally:
        w.kill()
    assert code == 0 and stats["refused"]["peer_uid"] == 0


def test_allow_uid_with_connect_refuses_the_listening_peer_with_eacces(ns, tmp_path):
    path = str(tmp_path / "fe.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    proc = subprocess.Popen([*self_argv(), "run", "--connect", path, "--tap", TAP, "--allow-uid", "nobody"],
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=self_env())
    try:
        server.settimeout(15)
        conn, _ = server.accept()
        conn.settimeout(15)
        assert conn.recv(1) == b""
        assert proc.wait(15) == errno.EACCES
        assert "uid 0 is not in --allow-uid" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
        server.close()


# -- 3. the host fd is never one of the worker's own fds --------------------------------------------

def test_host_fd_that_is_a_dup_of_the_control_socket_is_einval():
    ctl, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    dup = os.dup(ctl.fileno())
    try:
        res = _run("--fd", str(ctl.fileno()), "--host-fd", str(dup), pass_fds=(ctl.fileno(), dup))
    finally:
        os.close(dup)
        ctl.close()
        other.close()
    assert res.returncode == errno.EINVAL, res.stderr
    assert "control socket" in res.stderr


def _send_as(fe: Frontend, where: str, fd: int) -> None:
    if where == "mem-table":
        region = P.MemRegion(gpa=0, size=1 << 20, uva=0x7F0000000000, mmap_offset=0)
        fe.send_raw(Req.SET_MEM_TABLE, P.encode_mem_table(P.MemTable((region,))), fds=(fd,))
    else:
        request = {"kick": Req.SET_VRING_KICK, "call": Req.SET_VRING_CALL, "err": Req.SET_VRING_ERR}[where]
        fe.send_raw(request, P.encode_vring_file(0), fds=(fd,))


@pytest.mark.parametrize("where", ["kick", "call", "err", "mem-table"])
def test_frontend_sending_the_host_fd_back_is_eproto(tmp_path, where):
    """The host fd is one end of a datagram socketpair; the front-end (which holds it too) sends that
    very file as a ring eventfd or a memory region: the worker ends with EPROTO before using it."""
    host, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "w.sock")
    proc = subprocess.Popen([*self_argv(), "run", "--socket-path", path, "--host-fd", str(host.fileno())],
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=self_env(),
                            pass_fds=(host.fileno(),))
    try:
        fe = Frontend.connect(path, timeout=15)
        fe.negotiate()
        _send_as(fe, where, host.fileno())
        assert proc.wait(15) == errno.EPROTO
        err = proc.stderr.read()
        assert "own host packet fd" in err and "Traceback" not in err
        fe.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
        host.close()
        peer.close()


@pytest.mark.parametrize("user", [None, "nobody"])
def test_frontend_sending_a_tun_fd_to_a_tap_worker_is_eproto(ns, open_dir, user):
    """All /dev/net/tun fds are one inode: a tap worker refuses any tun fd a front-end sends (also after
    --user: the error path needs nothing the user cannot reach). The directory is the worker user's: confined,
    even uid 0 has no CAP_DAC_OVERRIDE to write into another user's directory."""
    if user:
        os.chown(open_dir, NOBODY.pw_uid, NOBODY.pw_gid)
    w = _worker(ns, None, *(["--user", user] if user else []), workdir=open_dir)
    tun = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fe = Frontend.connect(w.sock)
        fe.negotiate()
        _send_as(fe, "kick", tun)
        code, _stats = w.wait()
        fe.close()
    finally:
        os.close(tun)
        w.kill()
    assert code == errno.EPROTO and "own host packet fd" in w.stderr and "Traceback" not in w.stderr


# -- 4. --user ---------------------------------------------------------------------------------------

def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return {k: v.strip() for k, _, v in (line.partition(":") for line in f)}


def test_user_drops_every_privilege_after_opening_and_still_serves_with_offloads(ns, open_dir):
    home = os.path.join(open_dir, "nobody")       # the user's own directory: socket and stats file
    os.mkdir(home, 0o700)
    os.chown(home, NOBODY.pw_uid, NOBODY.pw_gid)
    w = _worker(ns, None, "--user", "nobody", workdir=home)
    try:
        deadline = time.monotonic() + 10       # the socket exists a moment before the drop
        while _status(w.proc.pid)["Uid"].split()[0] != str(NOBODY.pw_uid) and time.monotonic() < deadline:
            time.sleep(0.02)
        st = _status(w.proc.pid)
        uid, gid = str(NOBODY.pw_uid), str(NOBODY.pw_gid)
        assert st["Uid"].split() == [uid] * 4 and st["Gid"].split() == [gid] * 4
        assert st["Groups"] == ""
        assert int(st["CapEff"], 16) == int(st["CapPrm"], 16) == int(st["CapAmb"], 16) == 0
        assert st["NoNewPrivs"] == "1"
        sock = os.stat(w.sock)
        assert (sock.st_uid, sock.st_gid, sock.st_mode & 0o777) == (NOBODY.pw_uid, NOBODY.pw_gid, 0o600)
        tap = tap_socket(TAP)
        fe = Frontend.connect(w.sock, features=DEFAULT_FEATURES | OFFLOADS).start()   # TUNSETOFFLOAD, unprivileged
        assert fe.acked & OFFLOADS == OFFLOADS
        fe.send([demo_frame(i, 700) for i in range(20)])
        assert collect(tap, 20) == [demo_frame(i, 700) for i in range(20)]
        fe.post_rx(8)
        tap.send(demo_frame(99, 400))
        assert fe.receive(1)[0] == demo_frame(99, 400)
        code, stats = _finish(w, fe)
    finally:
        w.kill()
    assert code == 0, w.stderr
    assert stats["rings"]["tx"]["packets"] == 20 and stats["rings"]["rx"]["packets"] >= 1
    assert not os.path.exists(w.sock), "the worker removes its socket as the user"


def test_user_whose_stats_directory_is_not_writable_is_eacces(ns, tmp_path):
    res = _run("--socket-path", str(tmp_path / "w.sock"), "--tap", TAP, "--user", "nobody",
               "--stats-file", str(tmp_path / "stats.json"))
    assert res.returncode == errno.EACCES, res.stderr
    assert "not writable by --user" in res.stderr and "Traceback" not in res.stderr
