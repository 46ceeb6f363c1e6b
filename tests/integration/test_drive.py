"""`vhostsplice drive` against a real `vhostsplice run` worker, as root in a private netns: every row of
the fault table is what the worker really does, and drive moves frames byte for byte both ways."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import time

import pytest

from vhostsplice.tools.pcap import read_pcap
from vhostsplice.serve.selfexec import self_argv, self_env
from vhostsplice.testing import faults
from vhostsplice.testing.harness import WorkerProcess, collect, demo_frame, tap_socket

pytestmark = pytest.mark.root
TAP = "vsd0"
NETNS = "vsd"        # the ns fixture's namespace prefix (conftest.py)


def start_worker(tmp_path, *extra) -> WorkerProcess:
    w = WorkerProcess(str(tmp_path), TAP, *extra)
    w.wait_listening()
    return w


def drive(*args, timeout: float = 60) -> tuple[int, dict, str]:
    p = subprocess.run([*self_argv(), "drive", *args], capture_output=True, text=True, env=self_env(),
                       timeout=timeout)
    return p.returncode, (json.loads(p.stdout) if p.stdout.strip() else {}), p.stderr


def drive_bg(*args) -> subprocess.Popen:
    return subprocess.Popen([*self_argv(), "drive", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=self_env())


def stat(stats: dict, path: str):
    for key in path.split("."):
        stats = stats[key]
    return stats


CASES = [(f, False) for f in faults.FAULTS] + [(f, True) for f in faults.FAULTS if f.reaction == faults.USED_LEN_0]


@pytest.mark.parametrize("fault,exit_mode", CASES,
                         ids=[f"{f.name}{'-exit' if x else ''}" for f, x in CASES])
def test_fault_table_row_is_what_the_worker_does(ns, tmp_path, fault, exit_mode):
    w = start_worker(tmp_path, *(["--on-guest-error", "exit"] if exit_mode else []))
    try:
        after = [] if fault.phase == faults.SETUP else ["--send", "4", "--fault-after", "2"]
        code, summary, err = drive("--socket-path", w.sock, "--fault", fault.name, *after)
        assert code == 0, err
        assert summary["fault"]["injected"] and summary["fault"]["observed"]
        wcode, stats = w.wait()
    finally:
        w.kill()
    want = fault.exit_fault_exit if exit_mode else fault.exit
    assert wcode == (0 if want is None else want), w.stderr
    assert stat(stats, fault.stat) == fault.value
    if fault.reaction == faults.RING_ERROR:
        assert summary["err_signalled"]["tx"] is True
    if fault.reaction == faults.USED_LEN_0:
        assert stats["rings"]["tx"]["packets"] == (2 if exit_mode else 4)


LAYOUTS = {"split": [], "packed": ["--packed"], "packed-odd": ["--packed", "--queue-size", "7"],
           "packed-in-order": ["--packed", "--queue-size", "100", "--features", "default,IN_ORDER"]}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_frames_both_ways_byte_exact_with_pcap(ns, tmp_path, layout):
    """Split and packed rings (an odd size: several laps; IN_ORDER: batched used descriptors)."""
    w = start_worker(tmp_path)
    try:
        tap = tap_socket(TAP)
        ready, pcap = tmp_path / "ready", tmp_path / "rx.pcap"
        d = drive_bg("--socket-path", w.sock, "--send", "50", "--size", "1514", "--expect", "20",
                     "--pcap", str(pcap), "--ready-file", str(ready), "--timeout", "15", *LAYOUTS[layout])
        deadline = time.monotonic() + 15
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert collect(tap, 50) == [demo_frame(i, 1514) for i in range(50)]
        back = [demo_frame(i, 60 + 70 * i, src=b"\x02\0\0\0\0\x09") for i in range(20)]
        for frame in back:
            tap.send(frame)
        out, err = d.communicate(timeout=30)
        assert d.returncode == 0, err
        summary = json.loads(out)
        assert summary["tx"]["used"] == 50 and summary["rx"]["received"] == 20
        assert summary["features"]["layout"] == layout.split("-")[0]
        assert read_pcap(str(pcap)) == back
        code, stats = w.wait()
    finally:
        w.kill()
    assert code == 0
    assert stats["rings"]["rx"]["packets"] == 20 and stats["rings"]["tx"]["bytes"] == 50 * 1514


def test_listen_serves_a_worker_that_connects(ns, tmp_path):
    sock = str(tmp_path / "fe.sock")
    d = drive_bg("--listen", "--socket-path", sock, "--connect-timeout", "20", "--send", "5")
    deadline = time.monotonic() + 15
    while not os.path.exists(sock) and time.monotonic() < deadline:
        time.sleep(0.02)
    stats_file = tmp_path / "stats.json"
    w = subprocess.Popen([*self_argv(), "run", "--connect", sock, "--tap", TAP, "--stats-file", str(stats_file)],
                         stderr=subprocess.PIPE, text=True, env=self_env())
    try:
        out, err = d.communicate(timeout=30)
        assert d.returncode == 0, err
        assert json.loads(out)["mode"] == "listen"
        assert w.wait(15) == 0
    finally:
        if w.poll() is None:
            w.kill()
            w.wait()
        w.stderr.close()
    assert json.loads(stats_file.read_text())["rings"]["tx"]["packets"] == 5


def test_expect_timeout_is_etimedout_and_leaves_the_worker_clean(ns, tmp_path):
    w = start_worker(tmp_path)
    try:
        code, summary, _ = drive("--socket-path", w.sock, "--expect", "1", "--timeout", "0.3")
        assert code == errno.ETIMEDOUT and summary["errno"] == "ETIMEDOUT"
        assert summary["rings_stopped_at"] == [0, 0]
        wcode, _ = w.wait()
    finally:
        w.kill()
    assert wcode == 0


def test_features_acked_are_what_was_asked(ns, tmp_path):
    w = start_worker(tmp_path)
    try:
        code, summary, err = drive("--socket-path", w.sock, "--features", "VERSION_1,PROTOCOL_FEATURES,MRG_RXBUF",
                                   "--send", "3")
        assert code == 0, err
        wcode, stats = w.wait()
    finally:
        w.kill()
    assert summary["features"]["acked_names"] == ["MRG_RXBUF", "PROTOCOL_FEATURES", "VERSION_1"]
    assert wcode == 0 and stats["features"] == summary["features"]["acked"] == "0x140008000"


def test_packed_against_a_worker_without_it_is_einval(ns, tmp_path):
    w = start_worker(tmp_path, "--no-packed")
    try:
        code, summary, err = drive("--socket-path", w.sock, "--packed", "--send", "1")
        assert code == errno.EINVAL, err
        assert "RING_PACKED" in err and summary["features"]["layout"] == "split"
        wcode, _stats = w.wait()
    finally:
        w.kill()
    assert wcode == 0
