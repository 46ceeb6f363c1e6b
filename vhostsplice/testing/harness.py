"""Start a `vhostsplice run` worker as a user would, and see its tap from the host side.

Shared by the demo and the tests, so the demo shows exactly what the tests prove.
"""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import subprocess
import time

from ..worker.counters import read_stats
from ..serve.selfexec import self_argv, self_env
from ..spec import GSO_UDP_L4, HDR_F_NEEDS_CSUM

ETH_P_ALL = 0x0003
DEMO_ETHERTYPE = 0x88B5          # IEEE local experimental: never confused with real traffic


class WorkerProcess:
    """`vhostsplice run --socket-path SOCK --tap TAP --stats-file ...` as a child process (`host`
    replaces `--tap TAP`, e.g. ("--packet", IFNAME) or ("--host-fd", N) with N in `pass_fds`). As a context
    manager: listening on entry, killed (our own child, by PID) on exit."""

    def __init__(self, workdir: str, tap: str, *extra: str, name: str = "w", host: tuple[str, ...] = (),
                 pass_fds: tuple[int, ...] = ()):
        self.sock = os.path.join(workdir, f"{name}.sock")
        self.stats_file = os.path.join(workdir, f"{name}.stats.json")
        self.argv = [*self_argv(), "run", "--socket-path", self.sock, *(host or ("--tap", tap)),
                     "--stats-file", self.stats_file, *extra]
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env=self_env(), pass_fds=pass_fds)

    def wait_listening(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited {self.proc.returncode} before listening: {self.proc.stderr.read()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker did not listen on {self.sock} within {timeout} s")
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> tuple[int, dict]:
        """Signal our own child, wait, and return (exit code, stats)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout: float = 15.0) -> tuple[int, dict]:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        self.stderr = self.proc.stderr.read()
        self.proc.stderr.close()
        stats = read_stats(self.stats_file) if os.path.exists(self.stats_file) else {}
        return code, stats

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "WorkerProcess":
        try:
            self.wait_listening()
        except BaseException:
            self.kill()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


def live_stats(proc, stats_file, timeout: float = 5.0) -> dict | None:
    """A running worker's counters, now: SIGUSR1 makes it write its --stats-file anew (a new file renamed
    into place, so the inode changes). None if the worker has exited or wrote nothing within `timeout`."""
    def inode():
        try:
            return os.stat(stats_file).st_ino
        except FileNotFoundError:
            return None

    old = inode()
    if proc.poll() is not None:
        return None
    proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if inode() not in (None, old):
            try:
                with open(stats_file) as f:
                    return json.load(f)
            except (FileNotFoundError, ValueError):
                pass
        time.sleep(0.002)
    return None


def tap_socket(ifname: str) -> socket.socket:
    """An AF_PACKET socket on the tap: what it receives the worker wrote; what it sends the worker reads."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((ifname, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    return s


def quiet_tap(ifname: str) -> None:
    """No IPv6 on the tap (its router solicitations and MLD reports are host frames at random times):
    for tests that watch an idle worker. In the current network namespace."""
    with open(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6", "w") as f:
        f.write("1")


def demo_frame(seq: int, size: int, src: bytes = b"\x02\x00\x00\x00\x00\x01") -> bytes:
    """A recognisable Ethernet frame of `size` bytes carrying its sequence number."""
    head = b"\xff" * 6 + src + DEMO_ETHERTYPE.to_bytes(2, "big") + seq.to_bytes(4, "big")
    body = bytes((seq + i) & 0xFF for i in range(size - len(head)))
    return head + body


def uso_frame(macs: tuple[bytes, bytes], ips: tuple[str, str], ports: tuple[int, int], payload: bytes) -> bytes:
    """Ethernet + IPv4 + UDP (MACS, IPS, PORTS: (src, dst)) as a USO sender hands it over with a
    GSO_UDP_L4 header: the UDP checksum field holds the pseudo-header sum only (NEEDS_CSUM, csum_start
    34, csum_offset 6), the lengths are the whole payload's."""
    src, dst = socket.inet_aton(ips[0]), socket.inet_aton(ips[1])
    ulen = 8 + len(payload)
    udp = struct.pack("!HHHH", *ports, ulen, _fold(sum(struct.unpack("!4H", src + dst)) + 17 + ulen)) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 7, 0x4000, 64, 17, 0, src, dst)
    ip_sum = ~_fold(sum(struct.unpack("!10H", ip))) & 0xFFFF
    return macs[1] + macs[0] + b"\x08\x00" + ip[:10] + struct.pack("!H", ip_sum) + ip[12:] + udp


def uso_header(gso_size: int) -> bytes:
    """The virtio_net_hdr_v1 of uso_frame: NEEDS_CSUM, GSO_UDP_L4, hdr_len 42, GSO_SIZE, csum 34/6."""
    return struct.pack("<BBHHHHH", HDR_F_NEEDS_CSUM, GSO_UDP_L4, 42, gso_size, 34, 6, 0)


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def collect(sock: socket.socket, count: int, timeout: float = 5.0) -> list[bytes]:
    """Up to `count` demo frames from an AF_PACKET socket (other traffic is ignored)."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            break
        frame, addr = sock.recvfrom(65536)
        if addr[2] != socket.PACKET_OUTGOING and frame[12:14] == DEMO_ETHERTYPE.to_bytes(2, "big"):
            got.append(frame)
    return got
