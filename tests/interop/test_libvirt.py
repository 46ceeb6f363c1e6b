"""libvirt drives vhostsplice as its users deploy it: `<interface type='vhostuser'>`, QEMU run by libvirt as
its own unprivileged user (libvirt-qemu), the back-end under a supervisor.

A private libvirtd (tests/support/libvirt.py: its own socket directory, no systemd, stopped by PID) defines
TCG domains that boot the test guest directly (kernel + initramfs, guest RAM from a shared memfd). Three
shapes, each booting the guest and moving traffic both ways (ping each way, TCP each way):
  client  libvirt's QEMU connects to `vhostsplice run --socket-path` (under bin/vhostsplice-supervise).
          Then `virsh reset`, `virsh destroy` + `virsh start`, and a SIGKILL of the worker: after each
          the guest is networked again. The socket is not opened to everyone: mode 0660, group
          libvirt-qemu, and --allow-uid libvirt-qemu (a peer with another uid is refused).
  server  libvirt's QEMU listens (`mode='server'`); `vhostsplice run --connect` connects to it.
  serve   `<driver queues='2'/>` on `vhostsplice serve --queues 2`: both pairs carry traffic.
The guest's own interface counters and the worker's agree. (`virsh domifstat` cannot be used: for a
vhostuser interface libvirt reads only Open vSwitch's database, `virNetDevOpenvswitchInterfaceStats`;
docs/libvirt.md.) Needs root, libvirt-daemon-system, QEMU, iperf3; under CI=true a missing tool fails.
"""
from __future__ import annotations

import grp
import os
import pwd
import re
import signal
import subprocess
from pathlib import Path

import pytest

from support import guest as G
from support import libvirt as L
from support.peers import COLUMNS, require_peer
from support.waiting import terminate, wait_for
from vhostsplice.serve.selfexec import self_argv, self_env
from vhostsplice.testing.harness import live_stats

# libvirt 9.0 runs the system's QEMU 7.2 itself: only that column of the peer matrix applies here.
LIBVIRT_COLUMN = next(c for c in COLUMNS if c.qemu_source == "system")
pytestmark = [pytest.mark.root, pytest.mark.interop, pytest.mark.slow,
              pytest.mark.parametrize("column", [LIBVIRT_COLUMN], ids=[LIBVIRT_COLUMN.id], indirect=True)]

SUPERVISE = Path(__file__).resolve().parents[2] / "bin" / "vhostsplice-supervise"
TAP = "vsl0"
PINGS = 5
BOOT = G.BOOT_TIMEOUT
# The socket is QEMU's (libvirt-qemu's) and no one else's: group-writable for its group, its uid checked.
SOCKET_ACCESS = ("--socket-mode", "0660", "--socket-group", L.QEMU_USER, "--allow-uid", L.QEMU_USER)

# Every boot runs this (the script comes from fw_cfg): traffic both ways, then the guest's own counters,
# then it idles so the host can reset, destroy or restart things under it.
SCRIPT = f"""
vs_ping ping_out {PINGS}
vs_check ping_in vs_wait_pings {PINGS} 60
vs_iperf tcp_tx -t 2
vs_iperf tcp_rx -t 2 -R
vs_mark COUNTERS rx=$(cat /sys/class/net/eth0/statistics/rx_packets) tx=$(cat /sys/class/net/eth0/statistics/tx_packets)
sleep 3600
"""
# How far the guest's eth0 counters may trail the worker's. RX: packets after the guest read its counters
# (ARP, IPv6 housekeeping). TX: virtio_net counts a packet when it reclaims the buffer the device used,
# which it does lazily (at the next transmit or TX interrupt), so a few sent packets stay uncounted.
SLACK = {"rx": 4, "tx": 32}


@pytest.fixture(scope="module")
def libvirtd(column_image):
    missing = L.missing_tools()
    if missing:
        msg = f"missing {', '.join(missing)} (apt-get install libvirt-daemon-system; tests/run.sh does it)"
        require_peer(msg)
    workdir = L.shared_dir("vsl-daemon")
    with L.Libvirtd(workdir) as daemon:
        yield daemon


@pytest.fixture
def shared(tmp_path):
    """A directory libvirt's QEMU (libvirt-qemu) can traverse; the test's files and sockets go there."""
    d = L.shared_dir("vsl")
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


class Pid:
    """A process we did not spawn ourselves but know by PID (a supervisor's worker), for live_stats."""

    def __init__(self, pid: int):
        self.pid = pid

    def poll(self):
        return None if G.pid_is(self.pid, "vhostsplice") else 0

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)


class Supervised:
    """bin/vhostsplice-supervise -- vhostsplice run ... in the HostNet's netns; its log in one file."""

    def __init__(self, net: G.HostNet, workdir: Path, *backend: str):
        self.log_path = workdir / "supervise.log"
        self.stats_file = workdir / "worker.stats.json"
        argv = ["bash", str(SUPERVISE), "--backoff", "0.2", "--", *self_argv(), *backend,
                "--stats-file", str(self.stats_file)]
        with net.ns.entered(), open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, env=self_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def workers(self) -> list[int]:
        return [int(p) for p in re.findall(r"started worker (\d+):", self.log())]

    def exits(self) -> list[int]:
        return [int(c) for c in re.findall(r"worker exited (\d+) ", self.log())]

    def wait_worker(self, n: int, timeout: float = 30) -> int:
        assert wait_for(lambda: len(self.workers()) >= n, timeout), f"no worker {n}:\n{self.log()}"
        return self.workers()[n - 1]

    def stats(self) -> dict:
        stats = live_stats(Pid(self.workers()[-1]), self.stats_file, timeout=10)
        assert stats, f"the worker wrote no live stats:\n{self.log()}"
        return stats

    def close(self) -> int | None:
        terminate(self.proc)
        for pid in self.workers():
            if G.pid_is(pid, "vhostsplice"):
                os.kill(pid, signal.SIGKILL)
        return self.proc.returncode


def networked(net: G.HostNet, guest: L.LibvirtGuest) -> dict:
    """One boot's traffic both ways (the guest pings, is pinged, streams TCP each way); its counters."""
    guest.wait_marker("BOOT", BOOT)
    G.host_pings_guest(net, guest, PINGS)
    rest = guest.wait_marker("COUNTERS", 120)
    for name in ("ping_out", "ping_in"):
        guest.check(name)
    for name in ("tcp_tx", "tcp_rx"):
        s = G.iperf_summary(guest.iperf(name))
        assert s["error"] is None and s["bytes_received"] > 0, (guest.name, name, s)
    return {k: int(v) for k, v in re.findall(r"(rx|tx)=(\d+)", rest)}


def assert_counters_agree(guest_counters: dict, stats: dict, since: dict | None = None) -> None:
    """The guest's eth0 counters and the worker's ring counters (since an earlier snapshot) agree."""
    since = since or {"rx": 0, "tx": 0}
    worker = {r: stats["rings"][r]["packets"] - since[r] for r in ("rx", "tx")}
    for ring in ("rx", "tx"):
        assert worker[ring] > 100, (worker, guest_counters)
        assert -SLACK["rx"] <= worker[ring] - guest_counters[ring] <= SLACK[ring], \
            f"{ring}: worker {worker[ring]} vs guest eth0 {guest_counters[ring]}"


def test_libvirt_client_mode_reset_destroy_start_and_worker_restart(image, libvirtd, shared):
    sock = shared / "net0.sock"
    with G.HostNet(shared, tap=TAP, ns_prefix="vsl") as net:
        net.iperf3_server()
        sup = Supervised(net, shared, "run", "--socket-path", str(sock), "--tap", TAP, *SOCKET_ACCESS)
        guest = L.LibvirtGuest(libvirtd, image, shared, SCRIPT, L.interface_xml(sock, "client"), name="c")
        try:
            first = sup.wait_worker(1)
            assert wait_for(sock.exists, 30), sup.log()
            mode = os.stat(sock)
            assert (mode.st_mode & 0o777, mode.st_gid) == (0o660, grp.getgrnam(L.QEMU_USER).gr_gid)
            with guest:
                assert_counters_agree(networked(net, guest), sup.stats())
                qemu_uid = os.stat(f"/proc/{guest.qemu_pid()}").st_uid
                assert qemu_uid == pwd.getpwnam(L.QEMU_USER).pw_uid, "libvirt ran QEMU as root"

                before = {r: sup.stats()["rings"][r]["packets"] for r in ("rx", "tx")}
                guest.new_boot()
                guest.virsh("reset")                       # the device is reset on the live connection
                assert_counters_agree(networked(net, guest), sup.stats(), since=before)
                assert sup.workers() == [first], sup.log()  # the same worker served the reset device

                guest.virsh("destroy")                     # QEMU stops the rings and quits (libvirt sends it
                                                           # SIGTERM first): its worker ends 0, is replaced
                second = sup.wait_worker(2)
                guest.new_boot()
                guest.virsh("start")
                assert_counters_agree(networked(net, guest), sup.stats())

                os.kill(second, signal.SIGKILL)            # the worker dies; QEMU reconnects to the next
                sup.wait_worker(3)
                guest.new_boot()
                guest.virsh("reset")                       # the guest's driver re-probes on the new worker
                networked(net, guest)
        finally:
            code = sup.close()
    assert sup.exits()[:2] == [0, 128 + signal.SIGKILL], sup.log()
    assert code == 0, sup.log()


def test_libvirt_server_mode_run_connects(image, libvirtd, shared):
    qemu_dir = shared / "qemu"                             # libvirt's QEMU creates its socket here: a
    qemu_dir.mkdir(mode=0o750)                             # directory of its own user, not of everyone
    os.chown(qemu_dir, pwd.getpwnam(L.QEMU_USER).pw_uid, grp.getgrnam(L.QEMU_USER).gr_gid)
    sock = qemu_dir / "net0.sock"
    with G.HostNet(shared, tap=TAP, ns_prefix="vsl") as net:
        net.iperf3_server()
        guest = L.LibvirtGuest(libvirtd, image, shared, SCRIPT, L.interface_xml(sock, "server"), name="s")
        try:
            guest.begin_start()
            assert wait_for(sock.exists, 60), guest.describe()
            argv = [*self_argv(), "run", "--connect", str(sock), "--tap", TAP,
                    "--stats-file", str(shared / "s.stats.json")]
            proc = net.popen(argv, env=self_env(), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            guest.finish_start()
            counters = networked(net, guest)
            stats = live_stats(proc, shared / "s.stats.json", timeout=10)
            assert stats, proc.stderr
            assert_counters_agree(counters, stats)
        finally:
            guest.close()
        code = proc.wait(30)          # `virsh destroy` SIGTERMs QEMU first: it stops the rings and leaves
    assert code == 0, proc.stderr.read()


def test_libvirt_two_queues_on_serve(image, libvirtd, shared, ethtool):
    sock, events = shared / "dev.sock", shared / "serve.events.jsonl"
    script = (f"vs_fwcfg_bin {G.VS_ETHTOOL}\n"
              f"vs_check set_combined /tmp/bin/{G.VS_ETHTOOL} set-combined eth0 2\n"
              "vs_iperf tcp_tx_4 -t 2 -P 4\n" + SCRIPT)
    with G.HostNet(shared, tap=TAP, ns_prefix="vsl") as net:
        net.iperf3_server()
        argv = [*self_argv(), "serve", "--socket-path", str(sock), "--tap", TAP, "--queues", "2",
                "--cpus", "0-1", "--events", str(events), *SOCKET_ACCESS]
        serve = net.popen(argv, env=self_env(), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert wait_for(sock.exists, 30), f"serve did not listen (exit {serve.poll()})"
        iface = L.interface_xml(sock, "client", queues=2)
        tool = shared / G.VS_ETHTOOL                       # where libvirt-qemu can read it
        tool.write_bytes(ethtool.read_bytes())
        tool.chmod(0o755)
        with L.LibvirtGuest(libvirtd, image, shared, script, iface, name="q", fw_cfg={G.VS_ETHTOOL: tool}) as guest:
            networked(net, guest)
            guest.check("set_combined")
        terminate(serve)
    exits = [e for e in G.read_events(events) if e["event"] == "exit"]
    assert sorted(e["pair"] for e in exits) == [0, 1], exits
    for e in exits:                                        # -P 4 spreads flows over both pairs
        assert e["counters"]["tx"]["packets"] > 0, exits
