"""The chaos suite's rigs: `serve --queues 2` under DPDK txonly, and `vhostsplice-supervise -- run` under a
testpmd front-end, each in a private netns on a tap with a host address; what they can be asked."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import support.testpmd as tp
from support.guest import pid_is, read_events
from support.waiting import terminate, wait_for
from vhostsplice.serve.selfexec import self_argv, self_env
from vhostsplice.testing.harness import live_stats

ROOT = Path(__file__).resolve().parents[2]
SUPERVISE = ROOT / "bin" / "vhostsplice-supervise"
ADDRESS = "10.88.0.1/24"        # the host's address on each rig's tap: it must survive every restart


class Pid:
    """A process we did not fork ourselves (serve's or supervise's worker), for live_stats()."""

    def __init__(self, pid: int):
        self.pid = pid

    def poll(self):
        return None if pid_is(self.pid, "vhostsplice") else 1

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)


def stats_file_of(pid: int) -> str | None:
    """The --stats-file of a running worker, from its command line."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    return argv[argv.index(b"--stats-file") + 1].decode() if b"--stats-file" in argv else None


def tx_packets(pid: int, stats_file: str | None = None, timeout: float = 5.0) -> int:
    """Frames the running worker PID has taken from the guest's TX ring so far (0 if it cannot say).
    STATS_FILE: its --stats-file (serve's start event names it), else read from its command line."""
    path = stats_file or stats_file_of(pid)
    stats = live_stats(Pid(pid), path, timeout) if path else None
    return (stats or {}).get("rings", {}).get("tx", {}).get("packets", 0)


def footprint(pid: int) -> tuple[int, int] | None:
    """(RSS in KiB, open fds) of PID, None if it is gone."""
    try:
        rss = int(re.search(r"^VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M)[1])
        return rss, len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, TypeError):
        return None


class TapWatch:
    """The rig's tap seen from its namespace: index, whether ADDRESS is on it, frames received from workers."""

    def __init__(self, ns_name: str, tap: str):
        self.ns, self.tap = ns_name, tap

    def _ip(self, *argv: str) -> list:
        out = subprocess.run(["ip", "-n", self.ns, "-j", *argv], capture_output=True, text=True, timeout=30)
        return json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else []

    def state(self) -> dict:
        link = self._ip("-s", "link", "show", "dev", self.tap)
        addrs = self._ip("addr", "show", "dev", self.tap)
        if not link:
            return {"ifindex": None, "address": False, "rx_packets": 0, "mtu": None}
        infos = addrs[0].get("addr_info", []) if addrs else []
        held = any(f"{a['local']}/{a['prefixlen']}" == ADDRESS for a in infos)
        return {"ifindex": link[0]["ifindex"], "address": held, "mtu": link[0]["mtu"],
                "rx_packets": link[0].get("stats64", {}).get("rx", {}).get("packets", 0)}

    def add_address(self) -> None:
        subprocess.run(["ip", "-n", self.ns, "addr", "add", ADDRESS, "dev", self.tap], check=True, timeout=30)


class ServeRig:
    """`vhostsplice serve --queues 2` on tap vsc0, DPDK virtio-user (queues=2, txonly 64 B) as the front-end."""

    TAP = "vsc0"

    def __init__(self, ns, workdir: Path):
        self.ns, self.dir = ns, workdir
        self.sock, self.events_path = workdir / "serve.sock", workdir / "serve.events.jsonl"
        with ns.entered(), open(workdir / "serve.stderr", "wb") as err:
            self.proc = subprocess.Popen([*self_argv(), "serve", "--socket-path", str(self.sock), "--tap", self.TAP,
                                          "--queues", "2", "--cpus", "0-1", "--events", str(self.events_path)],
                                         env=self_env(), stdin=subprocess.DEVNULL, stderr=err)
        self.pmd = None
        self.tap = TapWatch(ns.name, self.TAP)
        try:
            self._start_front_end(ns, workdir)
        except BaseException:
            self.close()
            raise

    def _start_front_end(self, ns, workdir: Path) -> None:
        assert wait_for(self.sock.exists, 30), "serve did not listen"
        with ns.entered():
            self.pmd = tp.Testpmd([f"net_virtio_user0,path={self.sock},queues=2,queue_size={tp.QUEUE_SIZE}"],
                                  mode="txonly", log=workdir / "serve.testpmd.log", extra=["--rxq=2", "--txq=2"],
                                  txpkts=64)
        self.pmd.wait_started()
        assert wait_for(lambda: len(self.workers()) == 2, 30), self.events()
        self.tap.add_address()

    def events(self, kind: str | None = None) -> list[dict]:
        return [e for e in read_events(self.events_path) if kind is None or e["event"] == kind]

    def workers(self) -> dict[int, int]:
        """pair -> pid of its running worker (started, no exit event yet)."""
        ended = {e["pid"] for e in self.events("exit")}
        return {e["pair"]: e["pid"] for e in self.events("start") if e["pid"] not in ended}

    def pids(self) -> list[int]:
        return [self.proc.pid, *self.workers().values()]

    def close(self) -> int:
        if self.pmd is not None:
            self.pmd.kill()
        code = terminate(self.proc)
        ended = {e["pid"] for e in self.events("exit")}
        for e in self.events("start"):                  # only if serve itself was SIGKILLed
            if e["pid"] not in ended and pid_is(e["pid"], "vhostsplice"):
                os.kill(e["pid"], signal.SIGKILL)
        return code


class SuperviseRig:
    """bin/vhostsplice-supervise over `vhostsplice run --tap vsd0`; testpmd (queues=1, txonly) front-ends
    that the chaos kills and replaces."""

    TAP = "vsd0"

    def __init__(self, ns, workdir: Path):
        self.ns, self.dir = ns, workdir
        self.sock, self.log_path = workdir / "sup.sock", workdir / "supervise.log"
        self.stats = workdir / "sup.stats.json"
        with ns.entered(), open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(["bash", str(SUPERVISE), "--", *self_argv(), "run", "--socket-path",
                                          str(self.sock), "--tap", self.TAP, "--stats-file", str(self.stats)],
                                         env=self_env(), stdin=subprocess.DEVNULL, stderr=log)
        self.tap = TapWatch(ns.name, self.TAP)
        self.pmd, self.rounds = None, 0
        try:
            assert wait_for(self.sock.exists, 30) and wait_for(lambda: "holding tap" in self.log(), 30), self.log()
            self.tap.add_address()
        except BaseException:
            self.close()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker(self) -> int | None:
        found = re.findall(r"started worker (\d+)", self.log())
        return int(found[-1]) if found else None

    def started(self) -> int:
        return len(re.findall(r"started worker \d+", self.log()))

    def front_end(self) -> None:
        """A fresh testpmd on the socket (the worker listening there), forwarding."""
        assert wait_for(self.sock.exists, 30), self.log()
        self.rounds += 1
        with self.ns.entered():
            self.pmd = tp.virtio_user(self.sock, mode="txonly", log=self.dir / f"sup.testpmd{self.rounds}.log",
                                      txpkts=64)
        self.pmd.wait_started()

    def pids(self) -> list[int]:
        return [p for p in (self.proc.pid, self.worker()) if p]

    def close(self) -> int:
        if self.pmd is not None:
            self.pmd.kill()
        return terminate(self.proc)
