"""A real Linux guest under QEMU on `vhostsplice serve --queues 4` (GitHub issue 5): a multi-queue
virtio-net device, one `run --fd` worker process per queue pair.

QEMU: `-netdev vhost-user,...,queues=4 -device virtio-net-pci,...,mq=on,vectors=0`. `vectors=0` is still
required with mq (measured: with MSI-X vectors QEMU 7.2 TCG segfaults once the driver sets DRIVER_OK,
as with one pair); with it the four pairs share the INTx line and work.

The Linux 6.1 driver enables min(max_queue_pairs, online CPUs) pairs at probe, so the 1-vCPU test guest
starts with ONE pair although the device offers four (`combined=1`, /sys/class/net/eth0/queues shows
rx-0 tx-0). The image has no ethtool: the guest gets a tiny one (support.guest.VS_ETHTOOL_C, compiled on
the host, handed over through fw_cfg) and runs `vs-ethtool set-combined eth0 4` (ETHTOOL_SCHANNELS),
the equivalent of `ethtool -L eth0 combined 4`; QEMU then sends SET_VRING_ENABLE 1 for pairs 1-3.
The same tool reads the driver's per-queue counters (`ethtool -S`): guest queue k is worker k.

Traffic over all queues: iperf3 -P 16 both ways (each TCP flow is hashed to one queue pair by the
guest's tx hash, and the tap steers the host's packets of that flow back to the queue the guest used),
topped up until every guest queue moved packets both ways.

Tests: every pair's worker moved packets, in its own process (supervisor's exit events); one worker
SIGKILLed under load is replaced while the others keep their pids and the guest's traffic goes on; and
host-initiated flows reach a guest that enabled fewer pairs than the device has (serve starts a pair's
worker, which attaches its tap queue, only when the guest enables the pair). Needs root, QEMU, iperf3, a C compiler.
Under CI=true a missing tool fails.
"""
from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from support import guest as G
from support.serving import Served
from support.waiting import wait_for

pytestmark = [pytest.mark.root, pytest.mark.interop, pytest.mark.slow]

QUEUES = 4
TAP = "vsq0"                     # in a private netns "vsq-PID-N"
CPUS = "0-1"
BOOT = G.BOOT_TIMEOUT
PINGS = 5
ETHTOOL = f"/tmp/bin/{G.VS_ETHTOOL}"
# Per-queue counters the guest's driver and the worker both keep, and may differ by what moved after the
# guest read its own (its last ACKs, the poweroff).
SLACK = 64


def mq_guest(image, served: Served, workdir: Path, script: str, ethtool: Path, name: str = "guest") -> G.Guest:
    kw = G.vhost_user_mq(served.sock, QUEUES)
    kw["qemu_extra"] += G.fw_cfg_file(G.VS_ETHTOOL, ethtool)
    return G.Guest(image, served.sock, workdir, script, name=name, **kw)


# Guest-side helpers (busybox sh) shared by the scripts below.
SETUP = f"""
vs_fwcfg_bin {G.VS_ETHTOOL}
vs_check queues_default vs_queues
vs_check channels_default {ETHTOOL} channels eth0
vs_check set_combined {ETHTOOL} set-combined eth0 {QUEUES}
vs_check queues vs_queues
# every_queue_busy: each of the {QUEUES} queues has sent and received packets (driver counters)
every_queue_busy() {{
    {ETHTOOL} stats eth0 | awk '/^(rx|tx)_queue_[0-9]+_packets / && $2 > 0 {{ n++ }} END {{ exit n < {2 * QUEUES} }}'
}}
# top_up: more short parallel streams until every queue was used (flow hashes are random), 6 rounds at most
top_up() {{
    _n=0
    while ! every_queue_busy && [ $_n -lt 6 ]; do
        iperf3 -c "$VS_PEER" -t 1 -P 16 > /dev/null 2>&1
        _n=$((_n + 1))
    done
    echo "top-up rounds: $_n"
    every_queue_busy
}}
"""


def parse_kv(text: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", text)}


def guest_setup_facts(guest: G.Guest) -> dict:
    """What the guest driver did with the 4-pair device; asserts what must hold."""
    default, after = guest.check("channels_default").output, guest.check("set_combined").output
    facts = {"default_channels": parse_kv(default), "default_queues": guest.check("queues_default").output.strip(),
             "channels": parse_kv(after), "queues": guest.check("queues").output.strip()}
    assert facts["default_channels"].get("max_combined") == QUEUES, facts     # GET_QUEUE_NUM answered 4
    assert facts["channels"].get("combined") == QUEUES, facts
    assert facts["queues"].split() == [f"rx-{k}" for k in range(QUEUES)] + [f"tx-{k}" for k in range(QUEUES)], facts
    return facts


def assert_ring_clean(where: str, counters: dict) -> None:
    for ring in ("rx", "tx"):
        r = counters[ring]
        assert r["broken"] is None, (where, ring, r)
        assert r["drops_fault"] == r["drops_bad_desc"] == r["drops_short"] == 0, (where, ring, r)


def assert_iperf_tcp(guest: G.Guest, name: str) -> dict:
    s = G.iperf_summary(guest.iperf(name))
    assert s["error"] is None and s["protocol"] == "TCP", (name, s)
    assert s["bytes_sent"] > 0 and s["bytes_received"] > 0, (name, s)
    return s


# -- every pair carries traffic, each in its own worker process -------------------------------------------
ALL_PAIRS_SCRIPT = SETUP + f"""
vs_ping ping_out {PINGS}
vs_check ping_in vs_wait_pings {PINGS} 60
vs_iperf tcp_tx -t 3 -P 16
vs_iperf tcp_rx -t 3 -P 16 -R
vs_check top_up top_up
vs_check stats {ETHTOOL} stats eth0
"""


def test_mq_every_pair_moves_packets_in_its_own_worker(image, ethtool, tmp_path):
    t0 = time.monotonic()
    with G.HostNet(tmp_path, tap=TAP, ns_prefix="vsq") as net, Served(net, tmp_path) as served:
        net.iperf3_server()
        with mq_guest(image, served, tmp_path, ALL_PAIRS_SCRIPT, ethtool) as guest:
            guest.wait_marker("BOOT", BOOT)
            G.host_pings_guest(net, guest, PINGS)
            rc = guest.wait_done(180)
        code = served.wait_exit()
        starts, exits = served.events("start"), served.events("exit")
    setup = guest_setup_facts(guest)
    for name in ("ping_out", "ping_in", "top_up"):
        guest.check(name)
    iperf = {n: assert_iperf_tcp(guest, n) for n in ("tcp_tx", "tcp_rx")}
    assert rc == 0, guest.describe()
    assert code == 0, f"serve exited {code}\n{served.stderr()}"
    assert not served.events("given-up") and not served.events("error"), served.events()

    # one worker per pair, each its own process, pinned round-robin over --cpus
    assert sorted(e["pair"] for e in starts) == list(range(QUEUES)), starts
    pids = {e["pair"]: e["pid"] for e in starts}
    assert len(set(pids.values())) == QUEUES and served.proc.pid not in pids.values(), starts
    assert [e["cpu"] for e in sorted(starts, key=lambda e: e["pair"])] == [0, 1, 0, 1], starts
    assert sorted(e["pair"] for e in exits) == list(range(QUEUES)), exits
    guest_stats = G.parse_ethtool_stats(guest.check("stats").output)
    moved = {}
    for e in exits:
        k, c = e["pair"], e["counters"]
        assert e["pid"] == pids[k] and e["exit"] == 0, e
        assert c is not None, f"pair {k}: no counters in its exit event {e}"
        assert_ring_clean(f"pair {k}", c)
        for ring in ("rx", "tx"):
            assert c[ring]["packets"] > 0, f"pair {k} {ring} moved nothing: {c[ring]}"
            seen = guest_stats[f"{ring}_queue_{k}_packets"]
            # the guest's driver counts the same packets on its queue k (read before poweroff)
            assert seen <= c[ring]["packets"] <= seen + SLACK, (k, ring, seen, c[ring]["packets"])
        moved[k] = {r: (c[r]["packets"], c[r]["bytes"]) for r in ("rx", "tx")}
    G.report("mq all pairs", wall_s=round(time.monotonic() - t0, 1), boot_s=round(guest.boot_seconds(), 2),
           serve_exit=code, pids=pids, **setup, top_up=guest.check("top_up").output.strip(),
           worker_packets_bytes=moved, **{f"{n}_gbps": round(s["gbps"], 2) for n, s in iperf.items()},
           features=G.feature_names(guest.features()))


# -- one worker SIGKILLed under load ----------------------------------------------------------------------
KILL_AFTER = 2.0
KILL_SCRIPT = SETUP + f"""
vs_ping before {PINGS}
# the queue pair the background ping uses: the tx queue whose counter grows while only it runs
txq() {{ {ETHTOOL} stats eth0 | awk '/^tx_queue_[0-9]+_packets / {{ split($1, a, "_"); print a[3], $2 }}'; }}
ping -i 0.1 -w 45 "$VS_PEER" > /tmp/bg.ping 2>&1 &
bg=$!
txq > /tmp/q0
sleep 1.5
txq > /tmp/q1
pq=$(awk 'NR == FNR {{ b[$1] = $2; next }} $2 - b[$1] >= 5 {{ print $1 }}' /tmp/q0 /tmp/q1 | head -n 1)
vs_mark PINGQ "pair=${{pq:-none}}"
( vs_wait_carrier 0 12 ) > /tmp/carrier 2>&1 &
watch=$!
vs_mark TRAFFIC
vs_iperf during -t 8 -P 16 --bidir
wait $watch
vs_check carrier_stayed_up sh -c "cat /tmp/carrier; ! grep -q 'carrier=0' /tmp/carrier"
vs_check recover vs_wait_peer 30
vs_ping after {PINGS}
vs_check ping_in vs_wait_pings {PINGS} 60
vs_iperf tcp_after -t 3 -P 16
vs_check top_up top_up
kill -INT $bg
wait $bg
vs_check background cat /tmp/bg.ping
vs_check stats {ETHTOOL} stats eth0
"""


def test_mq_worker_killed_under_load_is_replaced_others_untouched(image, ethtool, tmp_path):
    """SIGKILL the worker of the pair the guest's background ping uses, in the middle of 16 TCP streams
    both ways. The supervisor replaces it (replayed state, resumes from used->idx); QEMU's socket stays
    up, so the guest never sees a link change; the other workers keep running in the same processes."""
    t0 = time.monotonic()
    with G.HostNet(tmp_path, tap=TAP, ns_prefix="vsq") as net, Served(net, tmp_path) as served:
        net.iperf3_server()
        with mq_guest(image, served, tmp_path, KILL_SCRIPT, ethtool) as guest:
            guest.wait_marker("BOOT", BOOT)
            m = re.search(r"pair=(\d+)", guest.wait_marker("PINGQ", 90))
            victim = int(m[1]) if m else 1
            guest.wait_marker("TRAFFIC", 60)
            time.sleep(KILL_AFTER)
            first = {e["pair"]: e["pid"] for e in served.events("start")}
            assert G.pid_is(first[victim], "vhostsplice"), first
            os.kill(first[victim], signal.SIGKILL)
            killed_at = time.time()
            restarted = wait_for(lambda: [e for e in served.events("start")
                                          if e["pair"] == victim and e["restarts"] == 1], 30)
            assert restarted, f"pair {victim} was not restarted: {served.events()}\n{served.stderr()}"
            G.host_pings_guest(net, guest, PINGS)
            rc = guest.wait_done(180)
        code = served.wait_exit()
        starts, exits = served.events("start"), served.events("exit")
    checks = guest.checks()
    background = checks["background"].output if "background" in checks else ""
    bg = re.search(r"(\d+) packets transmitted, (\d+) packets received", background)
    during = G.iperf_summary(guest.iperf("during")) if checks.get("during") and checks["during"].ok else None
    replacement = restarted[0]
    G.report("mq kill", wall_s=round(time.monotonic() - t0, 1), victim=victim, first_pids=first,
           replacement_pid=replacement["pid"], restart_s=round(replacement["time"] - killed_at, 2),
           serve_exit=code, background_ping=bg.groups() if bg else None,
           carrier=checks["carrier_stayed_up"].output.strip() if "carrier_stayed_up" in checks else None,
           recover=checks["recover"].output.strip() if "recover" in checks else None,
           during=during and {k: during.get(k) for k in ("gbps", "reverse_gbps", "retransmits")},
           exits=[(e["pair"], e["pid"], e["exit"], e["errno"],
                   e["counters"] and {r: e["counters"][r]["packets"] for r in ("rx", "tx")}) for e in exits])

    for name in ("before", "carrier_stayed_up", "recover", "after", "ping_in", "top_up", "background"):
        guest.check(name)
    for name in ("during", "tcp_after"):
        assert_iperf_tcp(guest, name)
    assert bg and int(bg[2]) > 0, background
    assert rc == 0, guest.describe()
    assert code == 0, f"serve exited {code}\n{served.stderr()}"
    assert not served.events("given-up") and not served.events("error"), served.events()

    # the killed worker: exit 128+9, and exactly one replacement, in a new process
    killed = [e for e in exits if e["pid"] == first[victim]]
    assert len(killed) == 1 and killed[0]["exit"] == 128 + signal.SIGKILL, exits
    assert replacement["pid"] not in first.values()
    assert [e["pair"] for e in starts].count(victim) == 2, starts
    # the others: started once, exited once at the end, same pid throughout
    for k in range(QUEUES):
        if k == victim:
            continue
        assert [e["pid"] for e in starts if e["pair"] == k] == [first[k]], (k, starts)
        assert [(e["pid"], e["exit"]) for e in exits if e["pair"] == k] == [(first[k], 0)], (k, exits)
    # the replacement carried traffic both ways again, and nothing anywhere is corrupted
    final = [e for e in exits if e["pid"] == replacement["pid"]]
    assert len(final) == 1 and final[0]["exit"] == 0, exits
    for ring in ("rx", "tx"):
        assert final[0]["counters"][ring]["packets"] > 0, final[0]["counters"]
    for e in exits:
        if e["counters"] is not None:
            assert_ring_clean(f"pair {e['pair']} pid {e['pid']}", e["counters"])


# -- host-initiated flows into a guest that enabled fewer pairs than the device has ----------------------
FLOWS = 64
FEWER_SCRIPT = f"""
vs_fwcfg_bin {G.VS_ETHTOOL}
vs_check channels_default {ETHTOOL} channels eth0
noports() {{ vs_counter /proc/net/snmp Udp NoPorts; }}
wait_udp() {{
    _end=$(( $(cut -d. -f1 /proc/uptime) + $2 ))
    while [ "$(noports)" -lt "$1" ] && [ "$(cut -d. -f1 /proc/uptime)" -lt "$_end" ]; do sleep 0.1; done
    echo "Udp.NoPorts=$(noports) (wanted $1)"
    [ "$(noports)" -ge "$1" ]
}}
vs_mark READY-UDP
vs_check udp_one_pair wait_udp {FLOWS} 8
vs_check set_combined {ETHTOOL} set-combined eth0 {QUEUES}
sleep 3
vs_check udp_after_enable noports
"""


def test_mq_host_flows_reach_guest_with_one_pair_enabled(image, ethtool, tmp_path):
    """The guest's driver keeps its default (one pair of four). The host sends one UDP datagram from each
    of 64 source ports (64 new flows; the guest's MAC is a static neighbour, so no ARP is involved): all
    64 must arrive at the guest while only pair 0 is enabled.

    Found here: when serve started all four workers up front, each attached its queue of the tap and the
    kernel steered ~3/4 of new host flows into queues of pairs the guest never enabled (17 of 64 arrived).
    serve now starts a pair's worker when the front-end first enables one of its rings."""
    send = ("import socket\n"
            f"for port in range(40000, {40000 + FLOWS}):\n"
            "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"    s.bind(('{G.HOST_IP}', port)); s.sendto(bytes(64), ('{G.GUEST_IP}', 9)); s.close()\n")
    with G.HostNet(tmp_path, tap=TAP, ns_prefix="vsq") as net, Served(net, tmp_path) as served:
        with mq_guest(image, served, tmp_path, FEWER_SCRIPT, ethtool) as guest:
            guest.wait_marker("BOOT", BOOT)
            mac = re.search(r"mac=(\S+)", guest.wait_marker("NET", 60))[1]
            net.run(["ip", "neigh", "replace", G.GUEST_IP, "lladdr", mac, "dev", net.tap, "nud", "permanent"])
            guest.wait_marker("READY-UDP", 60)
            early = served.events("start")          # the guest enables more pairs only after the check
            # The host sends only once the tap has carrier (a queue attached): before pair 0's worker
            # holds its queue, the kernel drops at the qdisc, which says nothing about steering.
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                up = json.loads(net.run(["ip", "-j", "link", "show", "dev", net.tap]).stdout)[0]["flags"]
                if "LOWER_UP" in up and "NO-CARRIER" not in up:
                    break
                time.sleep(0.1)
            net.run([sys.executable, "-c", send])
            time.sleep(1)
            tap = net.tap_counters()
            flags = json.loads(net.run(["ip", "-j", "link", "show", "dev", net.tap]).stdout)[0]["flags"]
            qdisc = net.run(["tc", "-s", "qdisc", "show", "dev", net.tap]).stdout
            rc = guest.wait_done(120)
        served.wait_exit()
        exits = served.events("exit")
    G.report("mq one pair enabled", channels=guest.check("channels_default").output.strip(),
           udp_one_pair=guest.checks().get("udp_one_pair", G.Check("", False, 0, "")).output.strip(),
           udp_after_enable=guest.checks().get("udp_after_enable", G.Check("", False, 0, "")).output.strip(),
           tap_tx_packets_1s_after=tap["tx_packets"], tap_flags=",".join(flags), tap_tx_dropped=tap["tx_dropped"],
           qdisc=qdisc[:400],
           worker_rx={e["pair"]: e["counters"] and e["counters"]["rx"]["packets"] for e in exits})
    assert parse_kv(guest.check("channels_default").output).get("combined") == 1   # the 1-vCPU default
    guest.check("udp_one_pair")
    assert rc == 0, guest.describe()
    # one worker while the guest had one pair enabled; one per pair once it enabled all
    assert [e["pair"] for e in early] == [0], early
    assert sorted(e["pair"] for e in served.events("start")) == list(range(QUEUES)), served.events()
