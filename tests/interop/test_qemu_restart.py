"""Restart QEMU while the back-end keeps running (GitHub issue 3): three guests, one after the other, on
one vhost-user socket, served by one supervised back-end.

The contract (README "Exit codes", docs): a back-end does not outlive its front-end; it ENDS and its
supervisor starts a fresh one for the next front-end. `vhostsplice run` (and `serve`, which ends the same
way after its workers) exits 0 when QEMU stopped the rings (GET_VRING_BASE) and closed the socket, as it
does when the guest powers off, and 104 ECONNRESET when QEMU vanished with the rings running (SIGKILL).
bin/vhostsplice-supervise restarts at once after 0 and with back-off after 104, so the next QEMU (its
`-chardev socket,reconnect=1` retries every second) finds a back-end on the same socket.

Per back-end door (`run`, and `serve --queues 2` with a multi-queue device), one test:
  guest A: ping both ways, iperf3, poweroff          -> exit 0,   restarted at once
  guest B: ping both ways, then SIGKILL of QEMU while a ping flood runs  -> exit 104, restarted
  guest C: ping both ways, iperf3 both ways, poweroff -> exit 0
The exit codes are read from what the back-end itself reports: `run`'s exit statistics (one JSON line
each on stderr) and `serve`'s --events file (its workers' `exit` events and its own `end` event), and
cross-checked against the supervisor's log. Needs root, QEMU, iperf3; under CI=true a missing tool fails.

Packed rings (issue 15), on the columns that run them (peers.on_layouts: QEMU 10.0 + Linux 6.12), per
door: the worker SIGKILLed under a bidirectional TCP stream is replaced and resumes both rings from the
state page, with the stream surviving (`run --state-file`: one worker; `serve --queues 2`: both pairs'
workers at once). One boot each.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from support import guest as G
from support.peers import on_layouts
from support.serving import Served
from support.waiting import terminate, wait_for
from vhostsplice.serve.selfexec import self_argv, self_env

pytestmark = [pytest.mark.root, pytest.mark.interop, pytest.mark.slow]

SUPERVISE = Path(__file__).resolve().parents[2] / "bin" / "vhostsplice-supervise"
TAP = "vsq0"                          # inside a private netns "vsq-PID-N"
PINGS = 5
BOOT = G.BOOT_TIMEOUT
ECONNRESET = 104
MQ_QUEUES = 2

PING_BOTH_WAYS = f"""
vs_ping ping_out {PINGS}
vs_check ping_in vs_wait_pings {PINGS} 60
"""
SCRIPT_CLEAN = PING_BOTH_WAYS + """
vs_iperf tcp_tx -t 2
"""
SCRIPT_KILLED = PING_BOTH_WAYS + """
ping -i 0.05 "$VS_PEER" > /dev/null 2>&1 &
vs_mark TRAFFIC
sleep 120
"""
SCRIPT_AFTER = PING_BOTH_WAYS + """
vs_iperf tcp_tx -t 2
vs_iperf tcp_rx -t 2 -R
"""


class Supervised:
    """bin/vhostsplice-supervise around `vhostsplice run` or `vhostsplice serve`, in a HostNet's netns.

    The supervisor's log and every back-end's stderr (run's exit statistics) go to one file. On exit:
    SIGTERM to the supervisor (our child, by PID), which stops its back-end; anything left behind is
    killed by the PIDs the supervisor logged, after checking they are vhostsplice."""

    def __init__(self, net: G.HostNet, workdir: Path, door: str):
        self.door, self.sock = door, workdir / "dev.sock"
        self.log_path, self.events_path = workdir / "supervise.log", workdir / "serve.events.jsonl"
        if door == "run":
            backend = ["run", "--socket-path", str(self.sock), "--tap", net.tap]
        else:
            backend = ["serve", "--socket-path", str(self.sock), "--tap", net.tap, "--queues", str(MQ_QUEUES),
                       "--cpus", "0-1", "--events", str(self.events_path)]
        argv = ["bash", str(SUPERVISE), "--backoff", "0.2", "--", *self_argv(), *backend]
        with net.ns.entered(), open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, env=self_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def started(self) -> list[int]:
        return [int(p) for p in re.findall(r"started worker (\d+):", self.log())]

    def exits(self) -> list[tuple[int, int]]:
        """(pid, exit code) of every back-end that ended, as the supervisor logged them (`worker exited
        CODE NAME after S s: ...`, in the order it started them: it runs one at a time)."""
        codes = [int(c) for c in re.findall(r"worker exited (\d+) ", self.log())]
        return list(zip(self.started(), codes))

    def stats(self) -> list[dict]:
        """`run`'s exit statistics, one per worker that ended, in order."""
        return [json.loads(line) for line in self.log().splitlines() if line.startswith('{"')]

    def events(self, kind: str | None = None) -> list[dict]:
        return [e for e in G.read_events(self.events_path) if kind is None or e["event"] == kind]

    def wait_listening(self, generation: int, timeout: float = 30.0) -> int:
        """Wait until back-end number GENERATION (1-based) has started and listens; return its PID."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            started = self.started()
            if len(started) >= generation and self.sock.exists():
                return started[generation - 1]
            assert self.proc.poll() is None, f"supervisor exited {self.proc.returncode}:\n{self.log()}"
            time.sleep(0.05)
        raise AssertionError(f"back-end {generation} did not start in {timeout} s:\n{self.log()}")

    def wait_exits(self, count: int, timeout: float = 30.0) -> list[tuple[int, int]]:
        deadline = time.monotonic() + timeout
        while len(self.exits()) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        exits = self.exits()
        assert len(exits) >= count, f"wanted {count} back-end exits:\n{self.log()}"
        return exits

    def close(self) -> int | None:
        terminate(self.proc)
        ended = {pid for pid, _ in self.exits()}
        leftovers = [p for p in self.started() if p not in ended]
        leftovers += [e["pid"] for e in self.events("start")
                      if e["pid"] not in {x["pid"] for x in self.events("exit")}]
        for pid in leftovers:
            if G.pid_is(pid, "vhostsplice"):
                os.kill(pid, signal.SIGKILL)
        return self.proc.returncode

    def __enter__(self) -> "Supervised":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# serve's guests enable every pair first (the 1-vCPU driver starts with one: see test_qemu_mq.py)
ENABLE_ALL = f"""
vs_fwcfg_bin {G.VS_ETHTOOL}
vs_check set_combined /tmp/bin/{G.VS_ETHTOOL} set-combined eth0 {MQ_QUEUES}
"""


def boot(image, door: str, sock: Path, workdir: Path, script: str, name: str, ethtool: Path) -> G.Guest:
    """A guest on `run`'s socket, or on `serve --queues MQ_QUEUES`'s (a multi-queue device, the ethtool
    handed over; ENABLE_ALL runs before the script)."""
    if door == "run":
        return G.Guest(image, sock, workdir, script, name=name).start()
    kw = G.vhost_user_mq(sock, MQ_QUEUES)
    kw["qemu_extra"] += G.fw_cfg_file(G.VS_ETHTOOL, ethtool)
    return G.Guest(image, sock, workdir, ENABLE_ALL + script, name=name, **kw).start()


def traffic_both_ways(net: G.HostNet, guest: G.Guest) -> None:
    guest.wait_marker("BOOT", BOOT)
    G.host_pings_guest(net, guest, PINGS)


def assert_tcp(guest: G.Guest, name: str) -> float:
    s = G.iperf_summary(guest.iperf(name))
    assert s["error"] is None and s["bytes_received"] > 0, (guest.name, name, s)
    return round(s["gbps"], 2)


@pytest.mark.parametrize("door", ["run", "serve"])
def test_qemu_restart_next_guest_is_served(image, ethtool, tmp_path, door):
    t0 = time.monotonic()
    with G.HostNet(tmp_path, tap=TAP, ns_prefix="vsq") as net, Supervised(net, tmp_path, door) as sup:
        net.iperf3_server()
        pids = [sup.wait_listening(1)]

        with boot(image, door, sup.sock, tmp_path, SCRIPT_CLEAN, "a", ethtool) as a:    # clean poweroff: exit 0
            traffic_both_ways(net, a)
            assert a.wait_done(120) == 0, a.describe()
        assert sup.wait_exits(1)[0] == (pids[0], 0), sup.log()
        pids.append(sup.wait_listening(2))

        with boot(image, door, sup.sock, tmp_path, SCRIPT_KILLED, "b", ethtool) as b:   # QEMU vanishes: exit 104
            traffic_both_ways(net, b)
            b.wait_marker("TRAFFIC", 60)
            time.sleep(1.0)
            b.kill()
        assert sup.wait_exits(2)[1] == (pids[1], ECONNRESET), sup.log()
        pids.append(sup.wait_listening(3))

        with boot(image, door, sup.sock, tmp_path, SCRIPT_AFTER, "c", ethtool) as c:    # the next guest has network
            traffic_both_ways(net, c)
            assert c.wait_done(120) == 0, c.describe()
        assert sup.wait_exits(3)[2] == (pids[2], 0), sup.log()
        pids.append(sup.wait_listening(4))
        supervisor_pid = sup.proc.pid
        code = sup.close()

    for g, names in ((a, ("ping_out", "ping_in")), (b, ("ping_out", "ping_in")), (c, ("ping_out", "ping_in"))):
        for name in names:
            g.check(name)
    gbps = {"a_tx": assert_tcp(a, "tcp_tx"), "c_tx": assert_tcp(c, "tcp_tx"), "c_rx": assert_tcp(c, "tcp_rx")}
    assert code == 0, sup.log()                           # SIGTERM: the 4th back-end stopped on request
    assert len(set(pids)) == 4 and supervisor_pid not in pids, pids
    # the supervisor's log: restart at once after 0, with back-off after 104
    lines = [line for line in sup.log().splitlines() if "worker exited" in line]
    assert len(lines) == 4, sup.log()
    assert re.search(r"exited 0 OK .*the front-end left cleanly: restart now", lines[0]), lines
    assert re.search(r"exited 104 ECONNRESET .*: restart 1 in", lines[1]), lines
    assert re.search(r"exited 0 OK .*restart now", lines[2]), lines
    assert re.search(r"exited 0 OK after a stop signal", lines[3]), lines
    assert sup.exits() == [(pids[0], 0), (pids[1], ECONNRESET), (pids[2], 0), (pids[3], 0)], sup.log()

    if door == "run":
        stats = sup.stats()
        assert [s["exit"] for s in stats] == [0, ECONNRESET, 0, 0], stats
        assert [s["errno"] for s in stats[:3]] == ["OK", "ECONNRESET", "OK"], stats
        for s in stats[:3]:                               # each guest's worker moved packets both ways
            for ring in ("rx", "tx"):
                assert s["rings"][ring]["packets"] > 0 and s["rings"][ring]["broken"] is None, s
        moved = [{r: s["rings"][r]["packets"] for r in ("rx", "tx")} for s in stats[:3]]
        reasons = [s["reason"] for s in stats]
    else:
        ends = sup.events("end")
        assert [e["exit"] for e in ends] == [0, ECONNRESET, 0, 0], sup.events()
        gens, gen = [], []                                # each serve's events, up to its own `end`
        for e in sup.events():
            gen.append(e)
            if e["event"] == "end":
                gens.append(gen)
                gen = []
        # a worker per pair, started once, ended as its front-end left it: 0 after GET_VRING_BASE, 104
        # with the rings running; the 4th serve (stopped by SIGTERM before any front-end came) started none
        for gen, code in zip(gens, (0, ECONNRESET, 0)):
            starts = [e for e in gen if e["event"] == "start"]
            exits = [e for e in gen if e["event"] == "exit"]
            assert sorted(e["pair"] for e in starts) == list(range(MQ_QUEUES)), gen
            assert sorted((e["pair"], e["exit"]) for e in exits) == [(k, code) for k in range(MQ_QUEUES)], gen
            assert {e["pid"] for e in exits} == {e["pid"] for e in starts}, gen
            for e in exits:
                for ring in ("rx", "tx"):
                    assert e["counters"][ring]["broken"] is None, gen
            for ring in ("rx", "tx"):                     # each flow hashes to one pair: count them all
                assert sum(e["counters"][ring]["packets"] for e in exits) > 0, gen
        # every serve confined itself first (issue 17); the 4th did nothing else before its `end`
        assert all(gen[0]["event"] == "sandbox" and gen[0]["mode"] == "strict" for gen in gens), gens
        assert [e["event"] for e in gens[3]] == ["sandbox", "end"], gens[3]
        assert not sup.events("given-up") and not sup.events("error"), sup.events()
        moved = [(e["pair"], {r: e["counters"][r]["packets"] for r in ("rx", "tx")}) for e in sup.events("exit")]
        reasons = [e["errno"] for e in ends]
    print(f"\n[qemu restart {door}] wall_s={round(time.monotonic() - t0, 1)} backend_pids={pids} "
          f"exits={sup.exits()} reasons={reasons} packets={moved} gbps={gbps} "
          f"boot_s={[round(g.boot_seconds() or 0, 2) for g in (a, b, c)]}")


# -- packed rings survive their worker: the state page (issue 15) ------------------------------------------
PACKED_KILL_AFTER = 2.0        # seconds into the guest's TCP stream


class PackedRun:
    """`run --state-file PAGE` (tmpfs), SIGKILLed and replaced by a new worker on the same socket and page.
    QEMU's socket closes with the worker: the guest's link goes down, and up once QEMU has reconnected."""
    carrier = ("vs_wait_carrier 0 30 && vs_wait_carrier 1 60", "-eq")    # the watch, and its status test
    pairs = 1

    def __init__(self, net: G.HostNet, workdir: Path):
        self.net, self.page = net, Path("/dev/shm") / f"vs-packed-restart-{os.getpid()}.state"
        self.first = net.start_worker("--state-file", str(self.page))
        self.sock = self.first.sock

    def kill(self) -> None:
        self.first.proc.send_signal(signal.SIGKILL)      # our own child, by PID
        self.first.proc.wait(30)
        self.second = self.net.start_worker("--state-file", str(self.page))

    def replacements(self) -> list[tuple[int, dict, dict]]:
        """(exit code, resume, ring counters) of every replacement, once the guest has gone."""
        code, stats = G.stop_worker(self.second)
        assert self.first.proc.returncode == -signal.SIGKILL
        assert int(stats["features"], 16) >> G.FEATURE_BITS["RING_PACKED"] & 1, (stats, self.second.stderr)
        return [(code, stats["resume"], stats["rings"])]

    def __enter__(self) -> "PackedRun":
        return self

    def __exit__(self, *exc) -> None:
        self.page.unlink(missing_ok=True)


class PackedServe(Served):
    """`serve --queues MQ_QUEUES`, both pairs enabled by the guest, both workers SIGKILLed at once; serve
    replaces each from its pair's page. serve keeps QEMU's socket: the guest's link never goes down."""
    carrier = ("vs_wait_carrier 0 8", "-ne")         # across the 6 s stream (the kill: 2 s into it)
    pairs = MQ_QUEUES

    def __init__(self, net: G.HostNet, workdir: Path):
        super().__init__(net, workdir, queues=self.pairs)

    def kill(self) -> None:
        first = wait_for(lambda: len(self.events("start")) == self.pairs, 30)
        assert first, f"serve did not start a worker per pair: {self.events()}\n{self.stderr()}"
        self.killed = sorted(e["pid"] for e in self.events("start"))
        for pid in self.killed:
            assert G.pid_is(pid, "vhostsplice"), (pid, self.events())
            os.kill(pid, signal.SIGKILL)
        again = wait_for(lambda: len([e for e in self.events("start") if e["restarts"] == 1]) == self.pairs, 30)
        assert again, f"serve did not replace both workers: {self.events()}\n{self.stderr()}"

    def replacements(self) -> list[tuple[int, dict, dict]]:
        assert self.wait_exit() == 0, self.stderr()
        exits = self.events("exit")
        assert sorted(e["pid"] for e in exits if e["exit"] == 128 + signal.SIGKILL) == self.killed, exits
        return [(e["exit"], e["resume"], e["counters"]) for e in exits if e["pid"] not in self.killed]


PACKED_DOORS = {"run": PackedRun, "serve": PackedServe}


def packed_script(door: str) -> str:
    watch, passes = PACKED_DOORS[door].carrier
    return f"""
vs_ping before {PINGS}
( {watch} ) > /tmp/carrier 2>&1 &
watch=$!
vs_mark TRAFFIC
vs_iperf during -t 6 --bidir
wait $watch
st=$?
vs_check carrier sh -c "cat /tmp/carrier; [ $st {passes} 0 ]"
vs_check recover vs_wait_peer 30
vs_ping after {PINGS}
"""


@on_layouts("packed")
@pytest.mark.parametrize("door", list(PACKED_DOORS))
def test_packed_rings_survive_a_worker_sigkill_from_the_state_page(image, layout, ethtool, tmp_path, door):
    """A packed-ring guest (peers.on_layouts: QEMU 10, Linux 6.12) whose worker is SIGKILLed under a
    bidirectional TCP stream (PackedRun, PackedServe): each replacement resumes both packed rings from the
    state page (QEMU's SET_VRING_BASE after a reconnect, or serve's replay of it, cannot know the
    positions), the stream survives and the guest's link does what the door says."""
    with G.HostNet(tmp_path) as net, PACKED_DOORS[door](net, tmp_path) as backend:
        net.iperf3_server()
        with boot(image, door, backend.sock, tmp_path, packed_script(door), "guest", ethtool) as guest:
            guest.wait_marker("BOOT", BOOT)
            guest.wait_marker("TRAFFIC", 60)
            time.sleep(PACKED_KILL_AFTER)
            backend.kill()
            rc = guest.wait_done(180)
        replacements = backend.replacements()
    G.report(f"packed-restart {door}", carrier=guest.checks().get("carrier", G.Check("", False, 0, "")).output.strip(),
             resume=[r for _, r, _ in replacements],
             packets=[{ring: c[ring]["packets"] for ring in ("rx", "tx")} for _, _, c in replacements])
    assert layout.negotiated(guest.features()), G.feature_names(guest.features())
    for name in ("before", "carrier", "recover", "after"):
        guest.check(name)
    s = G.iperf_summary(guest.iperf("during"))
    assert s["error"] is None and s["bytes_sent"] > 0 and s["bytes_received"] > 0, s
    assert rc == 0, guest.describe()
    assert [code for code, _, _ in replacements] == [0] * backend.pairs, replacements
    for ring in ("rx", "tx"):
        for _, resume, counters in replacements:
            assert resume[ring]["source"] == "state-page", (ring, resume)
            assert counters[ring]["broken"] is None, (ring, counters)
        assert sum(c[ring]["packets"] for _, _, c in replacements) > 0, (ring, replacements)
