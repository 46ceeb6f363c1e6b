"""Counters for monitoring from a running worker: `--stats-format prometheus --stats-interval S` rewrites
the stats file atomically every S seconds without being signalled, in text a real Prometheus parser
(prometheus_client's) accepts, with exactly the frames that moved; `vhostsplice stats` reads it back.
No root needed: the host side is one end of a socketpair, the front-end the pure-Python driver."""
from __future__ import annotations

import os
import socket
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.waiting import wait_for
from vhostsplice.serve.selfexec import self_argv, self_env
from vhostsplice.testing.frontend import DEFAULT_FEATURES, Frontend
from vhostsplice.testing.harness import WorkerProcess, demo_frame

FRAMES = 40


class PromWorker(WorkerProcess):
    """`vhostsplice run --host-fd N --stats-file DIR/NAME.prom --stats-format prometheus --stats-interval S`."""

    def __init__(self, workdir: str, fd: int, interval: float):
        self.sock = os.path.join(workdir, "w.sock")
        self.stats_file = os.path.join(workdir, "vm1-net0.prom")
        self.argv = [*self_argv(), "run", "--socket-path", self.sock, "--host-fd", str(fd), "--stats-file",
                     self.stats_file, "--stats-format", "prometheus", "--stats-interval", str(interval)]
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env=self_env(), pass_fds=(fd,))


def samples(path: str) -> dict:
    with open(path) as f:
        text = f.read()
    return {(s.name, s.labels.get("ring"), s.labels.get("reason")): (s.value, s.labels)
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_prometheus_file_is_rewritten_on_its_interval_with_the_frames_that_moved(tmp_path):
    host, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    worker = PromWorker(str(tmp_path), host.fileno(), interval=0.2)
    host.close()
    try:
        worker.wait_listening()
        fe = Frontend.connect(worker.sock, features=DEFAULT_FEATURES).start()
        frames = [demo_frame(i, 300) for i in range(FRAMES)]
        fe.send(frames)
        got = [peer.recv(2048) for _ in frames]
        assert got == frames
        fe.post_rx(8, 2048)
        for i in range(5):
            peer.send(demo_frame(100 + i, 200))
        assert len(fe.receive(5)) == 5

        def counted():       # a later rewrite, with no signal sent: the interval did it
            try:
                s = samples(worker.stats_file)
            except (FileNotFoundError, ValueError):
                return None
            tx = s.get(("vhostsplice_ring_packets_total", "tx", None))
            rx = s.get(("vhostsplice_ring_packets_total", "rx", None))
            return s if tx and rx and (tx[0], rx[0]) == (FRAMES, 5) else None
        s = wait_for(counted, 10)
        assert s, open(worker.stats_file).read() if os.path.exists(worker.stats_file) else "no stats file"
        first = os.stat(worker.stats_file).st_ino
        assert wait_for(lambda: os.stat(worker.stats_file).st_ino != first, 5), "not rewritten on its interval"
        assert s[("vhostsplice_ring_bytes_total", "tx", None)][0] == FRAMES * 300
        assert s[("vhostsplice_ring_packets_total", "tx", None)][1]["worker"] == "vm1-net0"
        assert s[("vhostsplice_ring_broken", "rx", None)][0] == 0
        assert all(s[("vhostsplice_ring_drops_total", "tx", r)][0] == 0
                   for r in ("fault", "bad_desc", "short", "hostfd", "oversize"))
        table = subprocess.run([*self_argv(), "stats", worker.stats_file], capture_output=True, text=True,
                               env=self_env(), timeout=30)
        assert table.returncode == 0 and f" tx    {FRAMES}" in table.stdout.replace("  ", "  "), table.stdout
        fe.stop()
        fe.close()
        code, _ = worker.wait()
        assert code == 0, worker.stderr
        assert samples(worker.stats_file)[("vhostsplice_ring_packets_total", "tx", None)][0] == FRAMES
    finally:
        worker.kill()
        peer.close()


@pytest.mark.root
def test_serve_writes_one_prometheus_file_for_the_device_with_the_pairs_counters(tmp_path):
    """serve --stats-file D.prom --stats-format prometheus --stats-interval S: its workers' counters, pair
    by pair, in one file rewritten on the interval while the device runs, and the final counts at exit.
    The serve child's environment carries VHOSTSPLICE_SOCKET (serve's own option from the environment): its
    worker must not take it as a second front-end."""
    from support.netns import entered_netns
    from vhostsplice.testing.harness import tap_socket
    sock, prom = str(tmp_path / "s.sock"), str(tmp_path / "vm1-net.prom")
    with entered_netns("vsp"):
        env = dict(self_env(), VHOSTSPLICE_SOCKET=sock)
        proc = subprocess.Popen([*self_argv(), "serve", "--tap", "vsp0", "--queues", "1", "--stats-file", prom,
                                 "--stats-format", "prometheus", "--stats-interval", "0.2"],
                                env=env, stdin=subprocess.DEVNULL)
        try:
            assert wait_for(lambda: os.path.exists(sock) or proc.poll() is not None, 15) and proc.poll() is None
            with Frontend.connect(sock, features=DEFAULT_FEATURES) as fe, tap_socket("vsp0"):
                fe.start()
                fe.send([demo_frame(i, 300) for i in range(FRAMES)])
                assert len(fe.wait_used(fe.tx, FRAMES)) == FRAMES

                def counted():
                    try:
                        s = samples(prom)
                    except (FileNotFoundError, ValueError):
                        return None
                    tx = s.get(("vhostsplice_ring_packets_total", "tx", None))
                    return tx if tx and tx[0] == FRAMES else None
                tx = wait_for(counted, 15)
                assert tx and tx[1]["pair"] == "0" and tx[1]["worker"] == "vm1-net", tx
                fe.stop()
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
    assert samples(prom)[("vhostsplice_ring_packets_total", "tx", None)][0] == FRAMES
