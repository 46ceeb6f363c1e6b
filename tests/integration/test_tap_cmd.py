"""`vhostsplice tap create|delete|show NAME` as a user runs it (root, private netns via --netns).

Also: a tap created with --owner is attached by that user's unprivileged `run --tap` and carries frames.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess

import pytest

from vhostsplice.serve.selfexec import self_argv, self_env
from vhostsplice.testing.frontend import Frontend
from vhostsplice.testing.harness import collect, demo_frame, tap_socket
from vhostsplice.testing.netns import PrivateNetns

pytestmark = pytest.mark.root
TAP, BRIDGE = "vshT0", "vshbr0"
NOBODY = 65534
DROP_NET_ADMIN = ("setpriv", "--bounding-set", "-net_admin", "--inh-caps", "-net_admin")


@pytest.fixture
def ns():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with PrivateNetns("vsh") as ns:
        yield ns


def vs(*args: str, prefix=()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, *self_argv(), *args], capture_output=True, text=True, env=self_env(),
                          timeout=60, stdin=subprocess.DEVNULL)


def ip_json(ns, *args: str):
    out = subprocess.run(["ip", "-n", ns.name, "-j", "-d", *args], capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else None


def test_create_show_delete_round_trip(ns):
    subprocess.run(["ip", "-n", ns.name, "link", "add", BRIDGE, "type", "bridge"], check=True, timeout=30)
    res = vs("tap", "create", TAP, "--netns", ns.name, "--owner", str(NOBODY), "--group", "0", "--mtu", "9000",
             "--bridge", BRIDGE)
    assert res.returncode == 0, res.stderr
    made = json.loads(res.stdout)
    assert {k: made[k] for k in ("name", "mtu", "state", "multi_queue", "vnet_hdr", "persist", "owner",
                                 "group", "queues", "bridge")} == {
        "name": TAP, "mtu": 9000, "state": "up", "multi_queue": True, "vnet_hdr": True, "persist": True,
        "owner": NOBODY, "group": 0, "queues": 0, "bridge": BRIDGE}
    kernel, = ip_json(ns, "link", "show", TAP)                   # what iproute2 sees agrees
    assert kernel["mtu"] == 9000 and kernel["master"] == BRIDGE
    info = kernel["linkinfo"]["info_data"]
    assert info["type"] == "tap" and info["vnet_hdr"] and info["multi_queue"] and info["persist"]
    shown = vs("tap", "show", TAP, "--netns", ns.name)
    assert shown.returncode == 0 and json.loads(shown.stdout) == made
    assert vs("tap", "delete", TAP, "--netns", ns.name).returncode == 0
    assert ip_json(ns, "link", "show", TAP) is None
    again = vs("tap", "delete", TAP, "--netns", ns.name)
    assert again.returncode == errno.ENODEV and "no such interface" in again.stderr


def test_single_queue_without_vnet_header_and_down(ns):
    res = vs("tap", "create", TAP, "--netns", ns.name, "--single-queue", "--no-vnet-hdr", "--down")
    assert res.returncode == 0, res.stderr
    made = json.loads(res.stdout)
    assert (made["multi_queue"], made["vnet_hdr"], made["state"], made["owner"]) == (False, False, "down", None)


@pytest.mark.parametrize("args,code,words", [
    (["create", TAP, "--bridge", "vshnobr"], errno.ENODEV, "no such interface"),
    (["create", "lo"], errno.EEXIST, "exists"),
    (["show", "lo"], errno.EINVAL, "not a tap"),
    (["show", "vshnone"], errno.ENODEV, "no such interface"),
    (["delete", "lo"], errno.EINVAL, "not a tap"),
    (["create", "bad/name"], errno.EINVAL, "invalid interface name"),
    (["create", TAP, "--owner", "no-such-user-vsh"], errno.EINVAL, "no such user"),
    (["create", TAP, "--mtu", "10"], errno.EINVAL, "--mtu"),
])
def test_errors_carry_the_errno(ns, args, code, words):
    res = vs("tap", *args, "--netns", ns.name)
    assert res.returncode == code, res.stderr
    assert words in res.stderr and "Traceback" not in res.stderr
    assert ip_json(ns, "link", "show", TAP) is None             # nothing half-made


def test_missing_netns_is_enoent():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    res = vs("tap", "show", TAP, "--netns", "vsh-none-such")
    assert res.returncode == errno.ENOENT, res.stderr


def test_without_cap_net_admin_create_is_eperm(ns):
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) not installed")
    res = vs("tap", "create", TAP, "--netns", ns.name, prefix=DROP_NET_ADMIN)
    assert res.returncode == errno.EPERM, res.stderr
    assert ip_json(ns, "link", "show", TAP) is None


def test_owner_attaches_without_cap_net_admin_and_frames_flow(ns, tmp_path):
    """The worker runs without CAP_NET_ADMIN (this Python lives under /root, so it keeps uid 0 and loses
    the capability instead of changing uid): the tap's owner (uid 0) may attach, another owner's tap is EPERM."""
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) not installed")
    assert vs("tap", "create", TAP, "--netns", ns.name, "--owner", "0").returncode == 0
    sock = os.path.join(tmp_path, "w.sock")
    argv = ["ip", "netns", "exec", ns.name, *DROP_NET_ADMIN, *self_argv(), "run", "--socket-path", sock,
            "--tap", TAP]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=self_env())
    try:
        fe = Frontend.connect(sock, timeout=15).start()
        with ns.entered():
            net = tap_socket(TAP)
        sent = [demo_frame(i, 200) for i in range(5)]
        fe.send(sent)
        assert len(fe.wait_used(fe.tx, 5)) == 5
        assert collect(net, 5) == sent
        fe.stop()
        fe.close()
        assert proc.wait(15) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert vs("tap", "delete", TAP, "--netns", ns.name).returncode == 0
    assert vs("tap", "create", TAP, "--netns", ns.name, "--owner", str(NOBODY)).returncode == 0
    other = subprocess.run(["ip", "netns", "exec", ns.name, *DROP_NET_ADMIN, *self_argv(), "run",
                            "--socket-path", sock + "2", "--tap", TAP],
                           capture_output=True, text=True, env=self_env(), timeout=60, stdin=subprocess.DEVNULL)
    assert other.returncode == errno.EPERM, other.stderr          # not the owner: TUNSETIFF refuses
    assert "TUNSETIFF" in other.stderr
