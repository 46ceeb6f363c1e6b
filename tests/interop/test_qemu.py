"""An unmodified Linux guest (Debian's cloud kernel, virtio_net) under QEMU on `vhostsplice run`.

Each test boots one guest (TCG, ~2-3 s) whose test script (tests/guest/vs.sh helpers) pings the host,
waits to be pinged, and runs iperf3 against a server in the host's namespace, printing VSG: markers on
the serial console; the host reads them (tests/support/guest.py). The worker runs in a private netns on a
persistent tap with HOST_IP; QEMU connects to its socket (`reconnect=1`).

Needs root, qemu-system-x86_64 and iperf3 (apt: `tests/guest/build.sh --deps`) and, once, Debian's
archive to download the kernels, busybox and QEMU 10 into the cache (VHOSTSPLICE_GUEST_CACHE, default
/var/cache/vhostsplice-guest). Every test runs on each column of the peer matrix (tests/support/peers.py:
QEMU 7.2 + Linux 6.1, QEMU 10.0 + Linux 6.12). A missing peer skips, except where CI=true or
VHOSTSPLICE_REQUIRE_PEERS=1: there it is a failure (peers.require_peer), so CI cannot pass by skipping.

Tests: everything on the full feature set (one boot) and a 3-point feature matrix, each on every ring
layout of the column (split; packed too on QEMU 10.0: peers.on_layouts, the guest acks RING_PACKED);
frames too large for the guest's buffers (dropped and counted, never cut short); the worker SIGKILLed
under traffic and replaced on the same socket (split: packed rings need the state page,
test_qemu_restart.py). The whole file takes about a minute here per column; packed rings add four
boots on 10.0 (measured: 15 s full, 9 s per matrix point, 43 s in all).
"""
from __future__ import annotations

import signal
import sys
import time

import pytest

from support import guest as G
from support.peers import Layout, on_layouts
from vhostsplice.host.offloads import USO_KERNEL, kernel_release

pytestmark = [pytest.mark.root, pytest.mark.interop, pytest.mark.slow]

BOOT = G.BOOT_TIMEOUT
# Data-path feature bits: the back-end must be told exactly what the guest's driver accepted of these.
DATAPATH = ("VERSION_1", "MRG_RXBUF", "EVENT_IDX", "INDIRECT_DESC", "CSUM", "GUEST_CSUM", "GUEST_TSO4",
            "GUEST_TSO6", "GUEST_ECN", "GUEST_UFO", "HOST_TSO4", "HOST_TSO6", "HOST_ECN", "HOST_UFO",
            "RING_PACKED", "IN_ORDER", "ACCESS_PLATFORM", "GUEST_USO4", "GUEST_USO6", "HOST_USO")
USO = ("GUEST_USO4", "GUEST_USO6", "HOST_USO")
OFFLOADS = ("CSUM", "GUEST_CSUM", "GUEST_TSO4", "GUEST_TSO6", "GUEST_ECN", "GUEST_UFO", "HOST_TSO4",
            "HOST_TSO6", "HOST_ECN", "HOST_UFO")
FULL = ("VERSION_1", "MRG_RXBUF", "EVENT_IDX", "INDIRECT_DESC", *OFFLOADS)
PINGS = 5


def worker_features(stats: dict) -> int:
    assert "features" in stats, stats
    return int(stats["features"], 16)


def bits(*names: str) -> int:
    return sum(1 << G.FEATURE_BITS[n] for n in names)


def assert_features_agree(guest: G.Guest, stats: dict, layout: Layout) -> tuple[int, int]:
    """The back-end got exactly the data-path features the guest's driver accepted, and the guest's own
    features (its sysfs string) are the test's ring layout's."""
    acked, seen = worker_features(stats), guest.features()
    mask = bits(*DATAPATH)
    assert acked & mask == seen & mask, (f"back-end acked {G.feature_names(acked & mask)}, guest driver has "
                                         f"{G.feature_names(seen & mask)}")
    assert acked & bits("VERSION_1"), G.feature_names(acked)
    assert layout.negotiated(seen), (layout, G.feature_names(seen))
    return acked, seen


def assert_worker_clean(code: int, stats: dict, worker) -> None:
    assert code == 0, f"worker exited {code}: {stats}\n{getattr(worker, 'stderr', '')}"
    assert stats.get("errno") == "OK", stats
    for ring in ("rx", "tx"):
        r = stats["rings"][ring]
        assert r["packets"] > 0, (ring, r)
        assert r["broken"] is None, (ring, r)
        assert r["drops_fault"] == r["drops_bad_desc"] == r["drops_short"] == 0, (ring, r)


def assert_iperf(guest: G.Guest, name: str, protocol: str) -> dict:
    s = G.iperf_summary(guest.iperf(name))
    assert s["error"] is None, (name, s)
    assert s["protocol"] == protocol, (name, s)
    assert s["bytes_sent"] > 0, (name, s)
    if protocol == "TCP":
        assert s["bytes_received"] > 0, (name, s)
    else:
        assert s["packets"] > 0 and s["lost_percent"] < 100, (name, s)
    return s


# -- one boot, everything on the full feature set -----------------------------------------------------------
FULL_SCRIPT = f"""
vs_ping ping_out {PINGS}
vs_check ping_in vs_wait_pings {PINGS} 60
vs_iperf tcp_tx -t 2
vs_iperf tcp_rx -t 2 -R
vs_iperf udp_tx -t 2 -u -b 200M
vs_iperf udp_rx -t 2 -u -b 200M -R
"""


@on_layouts()
def test_guest_ping_iperf_full_features(image, layout, tmp_path):
    """Ping both ways, iperf3 TCP and UDP both ways, all features the back-end offers, on each ring layout
    of the column (packed: the guest acks RING_PACKED)."""
    t0 = time.monotonic()
    with G.HostNet(tmp_path) as net:
        worker = net.start_worker()
        net.iperf3_server()
        with G.Guest(image, worker.sock, tmp_path, FULL_SCRIPT) as guest:
            guest.wait_marker("BOOT", BOOT)
            guest.wait_marker("NET", 60)
            G.host_pings_guest(net, guest, PINGS)
            rc = guest.wait_done(180)
        code, stats = G.stop_worker(worker)
        tap = net.tap_counters()
    assert rc == 0, guest.describe()
    guest.check("ping_out")
    guest.check("ping_in")
    results = {n: assert_iperf(guest, n, proto) for n, proto in
               (("tcp_tx", "TCP"), ("tcp_rx", "TCP"), ("udp_tx", "UDP"), ("udp_rx", "UDP"))}
    assert_worker_clean(code, stats, worker)
    acked, _ = assert_features_agree(guest, stats, layout)
    assert acked & bits(*FULL) == bits(*FULL), f"missing {set(FULL) - set(G.feature_names(acked))}"
    # USO: offered where the host kernel takes it on the tap; the driver's bits agree (above) either way.
    # QEMU 10.0 withholds USO from a vhost-user netdev's guest (no has_uso in net/vhost-user.c), 7.2 knows none.
    assert bool(int(stats["offered"], 16) & bits(*USO) == bits(*USO)) == (kernel_release() >= USO_KERNEL), stats
    G.report("full", boot_s=round(guest.boot_seconds(), 2), wall_s=round(time.monotonic() - t0, 1),
           features=G.feature_names(acked),
           **{f"{n}_gbps": round(r["gbps"], 3) for n, r in results.items()},
           udp_rx_lost_pct=results["udp_rx"]["lost_percent"], tap=tap,
           rx=stats["rings"]["rx"]["packets"], tx=stats["rings"]["tx"]["packets"])


# -- a feature matrix: fewer features, each still carrying traffic ----------------------------------------
MATRIX_SCRIPT = f"""
vs_ping ping_out {PINGS}
vs_check ping_in vs_wait_pings {PINGS} 60
vs_iperf tcp_tx -t 1
vs_iperf tcp_rx -t 1 -R
"""
MATRIX = {
    # QEMU cuts every optional data-path feature: plain split rings, one descriptor per buffer, no offloads.
    "minimal": dict(device=G.MINIMAL_DEVICE, worker=(), present=("VERSION_1",),
                    absent=("MRG_RXBUF", "EVENT_IDX", "INDIRECT_DESC", *OFFLOADS)),
    # No mergeable buffers with guest TSO on: Linux posts "big packet" chains (a page per descriptor).
    "big-packets": dict(device="mrg_rxbuf=off,event_idx=off", worker=(),
                        present=("VERSION_1", "INDIRECT_DESC", *OFFLOADS), absent=("MRG_RXBUF", "EVENT_IDX")),
    # The back-end itself offers no offloads (--no-offloads); the device allows everything.
    "backend-no-offloads": dict(device="", worker=("--no-offloads",),
                                present=("VERSION_1", "MRG_RXBUF", "EVENT_IDX", "INDIRECT_DESC"), absent=OFFLOADS),
}


@on_layouts()
@pytest.mark.parametrize("point", list(MATRIX))
def test_guest_feature_matrix(image, layout, tmp_path, point):
    cfg = MATRIX[point]
    t0 = time.monotonic()
    with G.HostNet(tmp_path) as net:
        worker = net.start_worker(*cfg["worker"])
        net.iperf3_server()
        with G.Guest(image, worker.sock, tmp_path, MATRIX_SCRIPT, device_opts=cfg["device"]) as guest:
            guest.wait_marker("BOOT", BOOT)
            G.host_pings_guest(net, guest, PINGS)
            rc = guest.wait_done(120)
        code, stats = G.stop_worker(worker)
    assert rc == 0, guest.describe()
    guest.check("ping_out")
    guest.check("ping_in")
    results = {n: assert_iperf(guest, n, "TCP") for n in ("tcp_tx", "tcp_rx")}
    assert_worker_clean(code, stats, worker)
    acked, _ = assert_features_agree(guest, stats, layout)
    names = set(G.feature_names(acked))
    assert set(cfg["present"]) <= names, f"{point}: missing {set(cfg['present']) - names}"
    assert not set(cfg["absent"]) & names, f"{point}: unexpected {set(cfg['absent']) & names}"
    G.report(point, boot_s=round(guest.boot_seconds(), 2), wall_s=round(time.monotonic() - t0, 1),
           features=sorted(names), **{f"{n}_gbps": round(r["gbps"], 3) for n, r in results.items()})


# -- frames larger than the guest's buffers ---------------------------------------------------------------
OVERSIZE_SCRIPT = f"""
counters() {{
    echo "IpExt.InTruncatedPkts=$(vs_counter /proc/net/netstat IpExt InTruncatedPkts)"
    echo "Ip.InReceives=$(vs_counter /proc/net/snmp Ip InReceives)"
    grep eth0 /proc/net/dev
}}
vs_check ping_in vs_wait_pings {PINGS} 60
vs_check counters counters
vs_check not_truncated test "$(vs_counter /proc/net/netstat IpExt InTruncatedPkts)" -eq 0
vs_ping after {PINGS}
"""


OVERSIZE = {
    # No MRG_RXBUF, no GUEST_TSO: the guest posts one 1530-byte buffer per chain (rx_single).
    "one-chain": dict(worker=("--mtu", "9000"), device=G.MINIMAL_DEVICE, raise_mtu=False),
    # MRG_RXBUF without offloads: the worker sizes packets by the tap MTU it saw at start (1500); the
    # host raises the tap's MTU afterwards (rx_merge).
    "merged-mtu-raised": dict(worker=("--no-offloads",), device="", raise_mtu=True),
}


@pytest.mark.parametrize("case", list(OVERSIZE))
def test_guest_oversize_frames_dropped_not_truncated(image, tmp_path, case):
    """4042-byte frames from the host that the guest's buffers cannot take must be dropped (as QEMU's own
    virtio-net does), never handed to the guest cut short (guest IpExt InTruncatedPkts); small traffic
    goes on."""
    cfg = OVERSIZE[case]
    send = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"for i in range(5): s.sendto(bytes(4000), ('{G.GUEST_IP}', 9))")
    with G.HostNet(tmp_path) as net:
        worker = net.start_worker(*cfg["worker"])
        with G.Guest(image, worker.sock, tmp_path, OVERSIZE_SCRIPT, device_opts=cfg["device"]) as guest:
            guest.wait_marker("BOOT", BOOT)
            guest.wait_marker("READY-FOR-PING", 60)
            if cfg["raise_mtu"]:
                net.run(["ip", "link", "set", net.tap, "mtu", "9000"])
            net.run([sys.executable, "-c", send])
            G.host_pings_guest(net, guest, PINGS)
            rc = guest.wait_done(120)
        code, stats = G.stop_worker(worker)
    G.report(f"oversize {case}", counters=guest.checks().get("counters", G.Check("", False, 0, "")).output.split(),
           features=G.feature_names(worker_features(stats)),
           worker_rx={k: stats["rings"]["rx"][k] for k in ("packets", "bytes", "drops_short", "drops_hostfd",
                                                           "drops_oversize")})
    guest.check("ping_in")
    guest.check("after")
    guest.check("not_truncated")
    assert rc == 0, guest.describe()
    assert code == 0, stats
    assert stats["rings"]["rx"]["drops_oversize"] == 5, stats["rings"]["rx"]


# -- the worker dies under traffic; a new one takes over the same socket ------------------------------------
KILL_AFTER = 2.0        # seconds into the guest's TCP stream
RESTART_SCRIPT = f"""
vs_ping before {PINGS}
ping -i 0.1 -w 60 "$VS_PEER" > /tmp/bg.ping 2>&1 &
bg=$!
( vs_wait_carrier 0 30 && vs_wait_carrier 1 60 ) > /tmp/carrier 2>&1 &
watch=$!
vs_mark TRAFFIC
vs_iperf during -t 6 --bidir
wait $watch
st=$?
vs_check link_cycle sh -c "cat /tmp/carrier; exit $st"
vs_check recover vs_wait_peer 30
vs_ping after {PINGS}
vs_check ping_in vs_wait_pings {PINGS} 60
vs_iperf tcp_rx -t 2 -R
kill -INT $bg
wait $bg
vs_check background cat /tmp/bg.ping
"""


def test_guest_survives_worker_restart(image, layout, tmp_path):
    """SIGKILL the worker in the middle of a bidirectional TCP stream (and a 10/s ping); start a new one on
    the same socket. QEMU reconnects (reconnect=1, link down then up in the guest), the stream survives,
    and the same guest carries traffic both ways again."""
    with G.HostNet(tmp_path) as net:
        first = net.start_worker()
        net.iperf3_server()
        with G.Guest(image, first.sock, tmp_path, RESTART_SCRIPT) as guest:
            guest.wait_marker("BOOT", BOOT)
            guest.wait_marker("TRAFFIC", 60)
            time.sleep(KILL_AFTER)
            first.proc.send_signal(signal.SIGKILL)     # our own child, by PID
            first.proc.wait(30)
            second = net.start_worker()                # same name: same socket path (stale file replaced)
            G.host_pings_guest(net, guest, PINGS)
            rc = guest.wait_done(180)
        code, stats = G.stop_worker(second)
    checks = guest.checks()
    during = G.iperf_summary(guest.iperf("during")) if checks.get("during", G.Check("", False, 1, "")).ok else None
    G.report("restart", first_exit=first.proc.returncode,
           checks={n: (c.ok, c.output.strip().splitlines()[-1:]) for n, c in checks.items()
                   if n not in ("during", "tcp_rx")},
           during=during, second_stats={k: stats.get(k) for k in ("exit", "reason", "features")},
           rx=stats.get("rings", {}).get("rx"), tx=stats.get("rings", {}).get("tx"))
    assert first.proc.returncode == -signal.SIGKILL
    for name in ("before", "link_cycle", "recover", "after", "ping_in", "background"):
        guest.check(name)
    for name in ("during", "tcp_rx"):
        assert_iperf(guest, name, "TCP")
    assert rc == 0, guest.describe()
    assert_worker_clean(code, stats, second)
    assert_features_agree(guest, stats, layout)
