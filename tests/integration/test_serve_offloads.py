"""`serve --no-offloads` offers no offloads, so a driver cannot ack bits its workers would refuse.

As root, in a private netns (prefix vsn); the front-end is the built-in pure-Python one (queues=1).
Before, serve offered offloads whatever its workers were started with: a driver that acked checksum
offload had every worker refuse SET_FEATURES (71) and be restarted, forever.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from support.waiting import wait_for
from vhostsplice.host.hostfd import open_tap
from vhostsplice.host.tun import IFF_VNET_HDR, read_tap_info
from vhostsplice.serve.selfexec import self_argv, self_env
from vhostsplice.spec import Feature as F, bit
from vhostsplice.testing.frontend import DEFAULT_FEATURES, Frontend
from vhostsplice.testing.harness import collect, demo_frame, tap_socket

pytestmark = pytest.mark.root
TAP = "vsn0"
NETNS = "vsn"        # the ns fixture's namespace prefix (conftest.py)
OFFLOADS = bit(F.NET_F_CSUM) | bit(F.NET_F_GUEST_CSUM) | bit(F.NET_F_HOST_TSO4)


def test_serve_no_offloads_offers_none_and_its_worker_serves(ns, tmp_path):
    sock, ev = str(tmp_path / "s.sock"), str(tmp_path / "events")
    proc = subprocess.Popen([*self_argv(), "serve", "--socket-path", sock, "--tap", TAP, "--queues", "1",
                             "--no-offloads", "--events", ev], env=self_env(), stdin=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: os.path.exists(sock) or proc.poll() is not None, 15) and proc.poll() is None
        with Frontend.connect(sock, features=DEFAULT_FEATURES | OFFLOADS) as fe:
            fe.start()
            assert not fe.offered & OFFLOADS and not fe.acked & OFFLOADS
            probe = open_tap(TAP, create=False)                  # the tap the workers use has no header
            assert probe.vnet_hdr_len == 0 and not read_tap_info(probe.fd)[1] & IFF_VNET_HDR
            probe.close()
            with tap_socket(TAP) as tap:
                sent = [demo_frame(i, 600) for i in range(5)]
                fe.send(sent)
                assert len(fe.wait_used(fe.tx, 5)) == 5         # the worker took the features and serves
                assert collect(tap, 5) == sent
            fe.stop()
        assert proc.wait(30) == 0
        with open(ev) as f:
            events = [json.loads(line) for line in f]
        assert [e["event"] for e in events if e["event"] in ("start", "exit")] == ["start", "exit"], events
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
