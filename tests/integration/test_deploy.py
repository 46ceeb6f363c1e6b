"""README "Deploying": the systemd environment file, as written, configures a worker the way the unit runs
it (`vhostsplice run --stats-file ...`, every other option from the environment). Only the socket path
(its directory: /run/vhostsplice is systemd's RuntimeDirectory) and the stats interval (10 s there, 0.3 s
here) are changed. As root in a private netns: the socket is mode 0660 of group libvirt-qemu, the worker
is pinned to CPU 1, only libvirt-qemu's uid may connect, and the stats file is Prometheus text."""
from __future__ import annotations

import grp
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.netns import entered_netns
from support.peers import require_peer
from support.waiting import wait_for
from vhostsplice.serve.selfexec import self_argv, self_env

pytestmark = pytest.mark.root
README = Path(__file__).resolve().parents[2] / "README.md"


def readme_env() -> dict[str, str]:
    block = next(b for b in re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
                 if b.startswith("VHOSTSPLICE_SOCKET="))
    return dict(line.split("=", 1) for line in block.splitlines() if line.strip())


def test_the_readme_environment_file_configures_the_worker(tmp_path):
    env = readme_env()
    try:
        group = grp.getgrnam(env["VHOSTSPLICE_SOCKET_GROUP"]).gr_gid
    except KeyError:
        group = None
    require_peer(None if group is not None else "group libvirt-qemu (libvirt-daemon-system)")
    require_peer(None if 1 in os.sched_getaffinity(0) else "CPU 1")
    sock = tmp_path / Path(env["VHOSTSPLICE_SOCKET"]).name
    stats = tmp_path / "vm1-net0.stats.json"
    env.update(VHOSTSPLICE_SOCKET=str(sock), VHOSTSPLICE_STATS_INTERVAL="0.3")
    with entered_netns("vsy"):
        proc = subprocess.Popen([*self_argv(), "run", "--stats-file", str(stats)], env=dict(self_env(), **env),
                                stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            assert wait_for(lambda: sock.exists() or proc.poll() is not None, 20) and proc.poll() is None, \
                proc.stderr.read()
            st = os.stat(sock)
            assert (st.st_mode & 0o777, st.st_gid) == (0o660, group)
            allowed = Path(f"/proc/{proc.pid}/status").read_text()
            assert re.search(r"^Cpus_allowed_list:\s+1$", allowed, re.M), allowed
            link = subprocess.run(["ip", "-d", "link", "show", env["VHOSTSPLICE_TAP"]], capture_output=True, text=True)
            assert link.returncode == 0 and "tun type tap" in link.stdout, link     # the tap it made, in the netns
            assert wait_for(stats.exists, 10), "no stats file on the interval"
            names = {f.name for f in text_string_to_metric_families(stats.read_text())}
            assert "vhostsplice_ring_packets" in names, names
            # root is not libvirt-qemu: refused, counted, and the worker keeps listening
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.connect(str(sock))
            c.settimeout(10)
            assert c.recv(1) == b""                                    # closed unserved
            c.close()
            assert wait_for(lambda: "vhostsplice_refused_total" in stats.read_text()
                            and 'reason="peer_uid"} 1' in stats.read_text(), 10), stats.read_text()
        finally:
            proc.terminate()
            assert proc.wait(30) == 0, proc.stderr.read()
