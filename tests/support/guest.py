"""A real Linux guest under QEMU (TCG) on a vhost-user back-end, and the host side of its network.

Facts this relies on (measured on this machine kind, /work/shared/interop.md section 2):
- TCG only (a stock kernel does not boot under this machine's KVM); `vectors=0` on the virtio-net-pci
  device (QEMU 7.2 crashes with vhost-user + MSI-X under TCG); guest RAM from a shared memfd, or the
  back-end cannot map it and the guest boots with a dead network (so tests check traffic, not boot).
- `-chardev socket,reconnect=1`: QEMU is the client and retries every second, so a back-end may start
  late or be restarted.
- Boot to /init takes ~1.5-2.5 s; a loaded 2-core machine has stretched it to 12 s: timeouts are generous.
- `-smp 1,maxcpus=2`: with max_cpus == 1, QEMU 7.2's TCG elides the guest's memory barriers, which an
  external vhost-user back-end needs (see Guest.smp).

The guest image is built by tests/guest/build.sh (Debian's cloud kernel, unmodified, + a busybox
initramfs). Its /init runs the shell script handed to QEMU as fw_cfg file opt/t/test with the helpers of
tests/guest/vs.sh and prints `VSG:` marker lines on the serial console, which `Guest` parses.

Only processes started here are ever signalled or killed, each by its own PID.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

GUEST_DIR = Path(__file__).resolve().parent.parent / "guest"
BUILD_SCRIPT = GUEST_DIR / "build.sh"
QEMU = os.environ.get("VHOSTSPLICE_QEMU", "qemu-system-x86_64")
BOOT_TIMEOUT = float(os.environ.get("VHOSTSPLICE_GUEST_BOOT_TIMEOUT", "90"))

HOST_IP, GUEST_IP, PREFIX = "198.18.0.1", "198.18.0.2", 24     # RFC 2544 benchmarking range, in a private netns
TAP = "vsg0"

# Virtio feature bits (virtio 1.2), for reading the back-end's "features" and the guest's sysfs string.
FEATURE_BITS = {
    "CSUM": 0, "GUEST_CSUM": 1, "MTU": 3, "MAC": 5, "GUEST_TSO4": 7, "GUEST_TSO6": 8, "GUEST_ECN": 9,
    "GUEST_UFO": 10, "HOST_TSO4": 11, "HOST_TSO6": 12, "HOST_ECN": 13, "HOST_UFO": 14, "MRG_RXBUF": 15,
    "STATUS": 16, "CTRL_VQ": 17, "GUEST_ANNOUNCE": 21, "MQ": 22, "INDIRECT_DESC": 28, "EVENT_IDX": 29,
    "PROTOCOL_FEATURES": 30,
    "VERSION_1": 32, "ACCESS_PLATFORM": 33, "RING_PACKED": 34, "IN_ORDER": 35,
    "GUEST_USO4": 54, "GUEST_USO6": 55, "HOST_USO": 56,
}
# QEMU virtio-net-pci properties that cut the data-path features (all of them: minimal device).
MINIMAL_DEVICE = ("mrg_rxbuf=off,event_idx=off,indirect_desc=off,csum=off,guest_csum=off,gso=off,"
                  "guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off,"
                  "host_tso4=off,host_tso6=off,host_ecn=off,host_ufo=off")


def feature_names(bits: int) -> list[str]:
    names = [n for n, b in FEATURE_BITS.items() if bits >> b & 1]
    known = sum(1 << b for b in FEATURE_BITS.values())
    return names + ([f"other:{bits & ~known:#x}"] if bits & ~known else [])


class GuestError(AssertionError):
    """The guest did not do what was expected; the message carries the serial log's tail."""


# -- the image --------------------------------------------------------------------------------------------
def missing_tools() -> list[str]:
    """Host programs the guest tests need and do not find (install: tests/guest/build.sh --deps)."""
    return [t for t in (QEMU, "iperf3", "cpio", "modinfo", "ping", "ip") if shutil.which(t) is None]


@dataclass(frozen=True)
class GuestImage:
    """A guest kernel + initramfs and the QEMU command that boots it (one column of the peer matrix,
    tests/support/peers.py; build_image gives the system QEMU, the interop fixtures replace `qemu`)."""
    kernel: Path
    initrd: Path
    kver: str
    modules: tuple[str, ...]
    build_seconds: float
    qemu: tuple[str, ...] = (QEMU,)
    migration_memory: str | None = None   # peers.Column.migration_memory of the column it belongs to
    device_opts: str = ""                 # virtio-net-pci properties of every guest (peers.Layout.device)


def build_image(cache_dir: Path | None = None, timeout: float = 900, kernel: str = "6.1") -> GuestImage:
    """Run tests/guest/build.sh --kernel KERNEL [CACHE_DIR] (cached: fast when nothing changed); CACHE_DIR
    defaults as tests/guest/cache.sh says."""
    t0 = time.monotonic()
    argv = ["bash", str(BUILD_SCRIPT), "--kernel", kernel, *([str(cache_dir)] if cache_dir else [])]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    kv = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return GuestImage(Path(kv["kernel"]), Path(kv["initrd"]), kv["kver"], tuple(kv.get("modules", "").split()),
                      time.monotonic() - t0)


# -- one guest --------------------------------------------------------------------------------------------
_MARK = re.compile(r"VSG:(\S+)(?: (.*))?$")


@dataclass
class Check:
    name: str
    ok: bool
    rc: int
    output: str


@dataclass
class Guest:
    """One QEMU process booting the test image on the vhost-user socket `socket_path`.

    `script` is the guest's test script (busybox sh, with tests/guest/vs.sh's helpers); `device_opts`
    are extra virtio-net-pci properties (e.g. MINIMAL_DEVICE). Use as a context manager: on exit QEMU
    is killed if it still runs (only this PID). The serial console goes to `workdir/NAME.serial.log`.
    """

    image: GuestImage
    socket_path: str | Path
    workdir: str | Path
    script: str
    device_opts: str = ""
    name: str = "guest"
    memory: str = "512M"
    memory_slots: str = ""             # more -m options for pc-dimm hot-plug, e.g. "slots=16,maxmem=2G"
    # One vCPU, but maxcpus=2: QEMU 7.2's TCG drops the guest's memory barriers when max_cpus == 1
    # (no CF_PARALLEL; fixed in QEMU 8.1, "tcg: Do not elide memory barriers for !CF_PARALLEL in system
    # mode"), and then the driver's avail-idx store / avail_event load can pass each other while the
    # back-end (another process) runs: a lost kick stalls the TX ring until something else wakes it.
    smp: str = "1,maxcpus=2"
    guest_ip: str = GUEST_IP
    host_ip: str = HOST_IP
    prefix: int = PREFIX
    netdev: str | None = None          # replaces the vhost-user -chardev/-netdev pair (e.g. a QEMU tap netdev)
    qemu_extra: Sequence[str] = ()
    append_extra: str = ""             # more kernel command line, e.g. "loglevel=7" to see driver messages
    proc: subprocess.Popen | None = field(default=None, init=False)

    def __post_init__(self):
        self.workdir = Path(self.workdir)
        self.serial_path = self.workdir / f"{self.name}.serial.log"
        self.qemu_log_path = self.workdir / f"{self.name}.qemu.log"
        self.script_path = self.workdir / f"{self.name}.test.sh"
        self.started_at: float | None = None
        self.marker_times: dict[str, float] = {}     # first host-side time each marker name was seen

    # -- process ------------------------------------------------------------------------------------------
    def argv(self) -> list[str]:
        mem = self.memory
        append = f"console=ttyS0 quiet panic=-1 vsip={self.guest_ip}/{self.prefix} vspeer={self.host_ip}"
        if self.append_extra:
            append += " " + self.append_extra
        if self.netdev is None:
            net = ["-chardev", f"socket,id=c0,path={self.socket_path},reconnect=1",
                   "-netdev", "vhost-user,id=n0,chardev=c0"]
        else:
            net = ["-netdev", self.netdev]
        device = ",".join(filter(None, ("virtio-net-pci,netdev=n0,vectors=0", self.image.device_opts,
                                        self.device_opts)))
        size = ",".join(filter(None, (mem, self.memory_slots)))
        return [*self.image.qemu, "-accel", "tcg", "-m", size, "-smp", self.smp, "-nodefaults", "-no-reboot",
                "-display", "none", "-monitor", "none",
                "-object", f"memory-backend-memfd,id=mem,size={mem},share=on", "-machine", "memory-backend=mem",
                *net, "-device", device,
                "-fw_cfg", f"name=opt/t/test,file={self.script_path}",
                "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd), "-append", append,
                "-serial", f"file:{self.serial_path}", *self.qemu_extra]

    def start(self, netns=None) -> "Guest":
        """Start QEMU (inside NETNS, a PrivateNetns, when it opens a tap itself)."""
        self.script_path.write_text(self.script)
        self.serial_path.write_bytes(b"")
        with open(self.qemu_log_path, "wb") as log, (netns.entered() if netns else contextlib.nullcontext()):
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.started_at = time.monotonic()
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def __enter__(self) -> "Guest":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.kill()

    # -- serial console ------------------------------------------------------------------------------------
    @property
    def serial(self) -> str:
        try:
            return self.serial_path.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def markers(self) -> list[tuple[str, str]]:
        out = []
        for line in self.serial.splitlines():
            m = _MARK.search(line.rstrip("\r"))
            if m:
                out.append((m[1], m[2] or ""))
        return out

    def describe(self, tail: int = 60) -> str:
        qemu = ""
        with contextlib.suppress(FileNotFoundError):
            qemu = self.qemu_log_path.read_text(errors="replace")[-2000:]
        lines = self.serial.splitlines()[-tail:]
        state = "running" if self.running() else f"exited {self.proc.returncode if self.proc else None}"
        return (f"QEMU {state}; serial {self.serial_path} (last {len(lines)} lines):\n" + "\n".join(lines)
                + (f"\nQEMU output:\n{qemu}" if qemu else ""))

    def wait_marker(self, name: str, timeout: float, *, after: int = 0) -> str:
        """Wait for the first marker NAME (the after-th and later); return the rest of its line.

        Fails at once when QEMU exits without printing it, or when the guest reports DONE first."""
        deadline = time.monotonic() + timeout
        while True:
            found = [rest for n, rest in self.markers() if n == name]
            if len(found) > after:
                self.marker_times.setdefault(name, time.monotonic())
                return found[after]
            done = name != "DONE" and any(n == "DONE" for n, _ in self.markers())
            if done or not self.running() or time.monotonic() > deadline:
                why = "the guest finished" if done else ("QEMU exited" if not self.running() else
                                                          f"timeout {timeout:.0f} s")
                raise GuestError(f"no VSG:{name} marker ({why})\n{self.describe()}")
            time.sleep(0.05)

    def wait_done(self, timeout: float) -> int:
        """Wait for DONE and QEMU's exit (poweroff); return the guest's rc (failed checks)."""
        rest = self.wait_marker("DONE", timeout)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            raise GuestError(f"QEMU did not exit after the guest's poweroff\n{self.describe()}") from None
        return int(re.search(r"rc=(\d+)", rest)[1])

    def boot_seconds(self) -> float | None:
        """Host time from QEMU start to /init's BOOT marker (first seen)."""
        t = self.marker_times.get("BOOT")
        return None if t is None or self.started_at is None else t - self.started_at

    def section(self, name: str) -> str:
        """The output a vs_check NAME printed between its BEGIN/END markers."""
        text = self.serial
        m = re.search(rf"VSG:BEGIN {re.escape(name)}\r?\n(.*?)VSG:END {re.escape(name)}\r?$", text, re.S | re.M)
        return m[1] if m else ""

    def checks(self) -> dict[str, Check]:
        out = {}
        for n, rest in self.markers():
            if n == "CHECK":
                parts = rest.split()
                out[parts[0]] = Check(parts[0], parts[1] == "ok", int(parts[2].split("=")[1]),
                                      self.section(parts[0]))
        return out

    def check(self, name: str) -> Check:
        """The named check; it must exist and have passed."""
        checks = self.checks()
        if name not in checks:
            raise GuestError(f"the guest ran no check {name!r}\n{self.describe()}")
        c = checks[name]
        if not c.ok:
            raise GuestError(f"guest check {name} failed (rc={c.rc}):\n{c.output}\n{self.describe()}")
        return c

    def iperf(self, name: str) -> dict:
        """The iperf3 -J document of check NAME (which must have passed)."""
        text = self.check(name).output
        start = text.find("{")
        try:
            return json.loads(text[start:])
        except ValueError:
            raise GuestError(f"check {name}: no iperf3 JSON in its output:\n{text[-3000:]}") from None

    def features(self) -> int:
        """The virtio features the guest's driver accepted (/sys/.../features, bit 0 first)."""
        m = re.search(r"features=([01]+)", self.wait_marker("NET", 0.0))
        return sum(1 << i for i, ch in enumerate(m[1]) if ch == "1") if m else 0


def host_pings_guest(net: "HostNet", guest: Guest, count: int) -> str:
    """Wait until the guest waits to be pinged (its READY-FOR-PING marker), then ping it COUNT times
    from the host; every reply must come back. Returns ping's output."""
    guest.wait_marker("READY-FOR-PING", 60)
    p = net.ping(GUEST_IP, count)
    assert p.returncode == 0 and f"{count} received, 0% packet loss" in p.stdout, \
        f"{guest.name}: host -> guest ping:\n{p.stdout}{p.stderr}\n{guest.describe()}"
    return p.stdout


def report(name: str, **facts) -> None:
    """One line of figures for the test log (pytest -s)."""
    print(f"\n[{name}] " + ", ".join(f"{k}={v}" for k, v in facts.items()))


def iperf_summary(doc: dict) -> dict:
    """The few numbers of an iperf3 -J document a test asserts on or a benchmark prints."""
    end = doc.get("end", {})
    start = doc.get("start", {}).get("test_start", {})
    out = {"error": doc.get("error"), "protocol": start.get("protocol"), "reverse": bool(start.get("reverse")),
           "seconds": start.get("duration")}
    if out["protocol"] == "UDP" and "sum" in end:     # the receiver's view: lost packets, jitter
        s = end["sum"]
        out.update(bytes_sent=end.get("sum_sent", s).get("bytes"),
                   bytes_received=end.get("sum_received", s).get("bytes"),
                   packets=s.get("packets"), lost_packets=s.get("lost_packets"), lost_percent=s.get("lost_percent"),
                   gbps=end.get("sum_received", s).get("bits_per_second", 0) / 1e9)
    elif "sum_received" in end:
        out.update(bytes_sent=end["sum_sent"]["bytes"], bytes_received=end["sum_received"]["bytes"],
                   gbps=end["sum_received"]["bits_per_second"] / 1e9,
                   retransmits=end["sum_sent"].get("retransmits"))
        if "sum_received_bidir_reverse" in end:      # --bidir: the other direction
            out.update(reverse_bytes_received=end["sum_received_bidir_reverse"]["bytes"],
                       reverse_gbps=end["sum_received_bidir_reverse"]["bits_per_second"] / 1e9)
    return out


# -- the host side: a private netns, a tap with HOST_IP, the worker on it --------------------------------
class HostNet:
    """A private network namespace holding a persistent multi-queue vnet_hdr tap with HOST_IP/24, and
    `vhostsplice run` workers serving it (vhostsplice.testing.harness.WorkerProcess, started inside).

    The tap outlives workers, so a worker can be killed and another started on the same socket."""

    def __init__(self, workdir: str | Path, *, tap: str = TAP, host_ip: str = HOST_IP, prefix: int = PREFIX,
                 multi_queue: bool = True, ns_prefix: str = "vsg"):
        from vhostsplice.testing.netns import PrivateNetns
        self.workdir = Path(workdir)
        self.tap, self.host_ip = tap, host_ip
        self.ns = PrivateNetns(ns_prefix)
        self._procs: list[subprocess.Popen] = []
        self.workers: list = []
        try:
            # the worker opens it IFF_MULTI_QUEUE; QEMU's own tap back-end (a baseline) opens it without
            self.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap", *(["multi_queue"] if multi_queue else []),
                      "vnet_hdr"])
            self.run(["ip", "addr", "add", f"{host_ip}/{prefix}", "dev", tap])
            self.run(["ip", "link", "set", tap, "up"])
        except BaseException:
            self.ns.close()
            raise

    def run(self, argv: Sequence[str], *, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        with self.ns.entered():
            proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"in {self.ns.name}: {list(argv)} exited {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def popen(self, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        with self.ns.entered():
            proc = subprocess.Popen(list(argv), **kwargs)
        self._procs.append(proc)
        return proc

    def start_worker(self, *extra: str, name: str = "w", wait: float = 30.0, tap: str | None = None):
        """A `vhostsplice run --socket-path DIR/NAME.sock --tap TAP --stats-file ...` inside the netns
        (on this HostNet's tap, or on `tap`, another one the caller made in the netns)."""
        from vhostsplice.testing.harness import WorkerProcess
        with self.ns.entered():
            worker = WorkerProcess(str(self.workdir), tap or self.tap, *extra, name=name)
        self.workers.append(worker)
        worker.wait_listening(wait)
        return worker

    def iperf3_server(self) -> subprocess.Popen:
        """`iperf3 -s` on HOST_IP (serves the guest's clients one after the other until closed)."""
        log = open(self.workdir / "iperf3-server.log", "wb")
        proc = self.popen(["iperf3", "-s", "-B", self.host_ip], stdin=subprocess.DEVNULL, stdout=log,
                          stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:       # listening?
            if ":5201 " in self.run(["ss", "-Htln"], check=False).stdout:
                break
            time.sleep(0.05)
        return proc

    def ping(self, addr: str, count: int = 5, interval: float = 0.2,
             timeout: float = 30) -> subprocess.CompletedProcess:
        return self.run(["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "3", addr],
                        timeout=timeout, check=False)

    def tap_counters(self) -> dict[str, int]:
        """The tap's kernel counters (from `ip -s -j link`: setns does not remount /sys)."""
        link = json.loads(self.run(["ip", "-s", "-j", "link", "show", "dev", self.tap]).stdout)[0]
        st = link["stats64"]
        return {"rx_packets": st["rx"]["packets"], "rx_bytes": st["rx"]["bytes"], "rx_dropped": st["rx"]["dropped"],
                "tx_packets": st["tx"]["packets"], "tx_bytes": st["tx"]["bytes"], "tx_dropped": st["tx"]["dropped"]}

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
        for worker in self.workers:
            worker.kill()
            for stream in (worker.proc.stderr,):
                with contextlib.suppress(Exception):
                    stream.close()
        self.ns.close()

    def __enter__(self) -> "HostNet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stop_worker(worker, timeout: float = 30.0) -> tuple[int, dict]:
    """The worker after its guest powered off: it exits by itself when QEMU closes the socket; SIGTERM
    it if it has not within a few seconds. Returns (exit code, stats)."""
    try:
        worker.proc.wait(5)
    except subprocess.TimeoutExpired:
        pass
    return worker.stop(signal.SIGTERM, timeout)


# -- multi-queue and supervised back-ends (tests/interop/test_qemu_mq.py, test_qemu_restart.py) -----------
# The busybox image has no ethtool, and the 6.1 virtio_net driver enables only min(max_queue_pairs,
# online CPUs) pairs at probe: a 1-vCPU guest starts with ONE pair even when the device offers four. This
# tiny ethtool (tests/guest/vs-ethtool.c: SIOCETHTOOL, and the netdev netlink family's per-queue stats) is
# compiled on the host and handed to the guest as fw_cfg file
# opt/t/vs-ethtool (vs.sh: vs_fwcfg_bin); it links only libc, which the image carries (for iperf3).
VS_ETHTOOL = "vs-ethtool"
VS_ETHTOOL_C = (GUEST_DIR / "vs-ethtool.c").read_text()


def build_vs_ethtool(workdir: str | Path) -> Path:
    """Compile VS_ETHTOOL_C into WORKDIR/vs-ethtool (host cc, dynamic: the guest image has the host's libc)."""
    return build_guest_tool(VS_ETHTOOL, workdir)


def build_guest_tool(name: str, workdir: str | Path, *cflags: str) -> Path:
    """Compile tests/guest/NAME.c into WORKDIR/NAME with the host's cc, for fw_cfg_file (vs_fwcfg_bin)."""
    workdir = Path(workdir)
    src, out = workdir / f"{name}.c", workdir / name
    src.write_text((GUEST_DIR / f"{name}.c").read_text())
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        raise RuntimeError(f"no C compiler (cc) to build the guest's {name}")
    proc = subprocess.run([cc, "-O2", "-Wall", *cflags, "-o", str(out), str(src)], capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"cc {name}.c exited {proc.returncode}:\n{proc.stderr}")
    return out


def fw_cfg_file(name: str, path: str | Path) -> list[str]:
    """QEMU arguments handing PATH to the guest as fw_cfg opt/t/NAME (vs.sh: vs_fwcfg_bin NAME)."""
    return ["-fw_cfg", f"name=opt/t/{name},file={path}"]


def vhost_user_mq(socket_path: str | Path, queues: int) -> dict:
    """Guest(...) keyword arguments for a multi-queue vhost-user device with `queues` pairs on socket_path:
    `-chardev socket,...,reconnect=1 -netdev vhost-user,...,queues=N -device virtio-net-pci,...,mq=on`
    (Guest keeps vectors=0; add qemu_extra / device_opts to these lists as needed)."""
    return dict(netdev=f"vhost-user,id=n0,chardev=c0,queues={queues}",
                qemu_extra=["-chardev", f"socket,id=c0,path={socket_path},reconnect=1"],
                device_opts="mq=on")


def parse_ethtool_stats(text: str) -> dict[str, int]:
    """`vs-ethtool stats` output (NAME VALUE lines) as a dict; other lines are ignored."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def read_events(path: str | Path) -> list[dict]:
    """The JSON event lines of a `vhostsplice serve --events FILE` (missing file: none yet)."""
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.startswith("{")]
    except FileNotFoundError:
        return []


def pid_is(pid: int, word: str) -> bool:
    """PID is alive and its command line mentions WORD (guards a kill against PID reuse)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return word.encode() in f.read()
    except OSError:
        return False
