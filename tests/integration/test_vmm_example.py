"""bin/vhostsplice-vmm-example: one `vhostsplice run` per queue pair, supervised by a shell script."""
from __future__ import annotations

import errno
import os
import re
import shlex
import signal
import subprocess
from pathlib import Path

import pytest

from support.procs import stop
from support.waiting import wait_for
from vhostsplice.serve.selfexec import self_argv, self_env

pytestmark = pytest.mark.root
NETNS = "vsv"        # the ns fixture's namespace prefix (conftest.py)
SCRIPT = Path(__file__).resolve().parents[2] / "bin" / "vhostsplice-vmm-example"


def launch(tmp_path, *cpus, nics=2):
    env = dict(self_env(), RUNDIR=str(tmp_path), VHOSTSPLICE=shlex.join(self_argv()))
    log = open(tmp_path / "vmm.log", "w")
    proc = subprocess.Popen(["bash", str(SCRIPT), "vmx", str(nics), *cpus], env=env, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return proc, tmp_path / "vmm.log"


def pids(log: Path) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for k, pid in re.findall(r"vmm: net(\d+) worker pid (\d+)", log.read_text()):
        out.setdefault(int(k), []).append(int(pid))
    return out


def finish(proc, log: Path, tmp_path) -> None:
    """After a test, pass or fail: the script (SIGTERM stops its workers) and any worker it logged that still
    runs, by PID, checked to be this test's (its socket under tmp_path): a failed test left them running."""
    stop(proc)
    for pid in [p for started in pids(log).values() for p in started]:
        try:
            if str(tmp_path).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError):
            pass


def test_one_worker_per_pair_killed_one_is_restarted(ns, tmp_path):
    proc, log = launch(tmp_path, "0", "1")
    try:
        assert wait_for(lambda: all((tmp_path / f"vmx-net{k}.sock").exists() for k in (0, 1)))
        first = pids(log)
        assert len({first[0][0], first[1][0]}) == 2
        os.kill(first[1][0], signal.SIGKILL)
        assert wait_for(lambda: len(pids(log).get(1, [])) == 2), log.read_text()
        assert pids(log)[0] == first[0]                       # the other worker was left alone
        assert "-netdev vhost-user,id=n1,chardev=c1" in log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        for pid in (first[0][0], pids(log)[1][-1]):
            assert wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 10)
    finally:
        finish(proc, log, tmp_path)


def test_two_workers_killed_together_are_both_restarted(ns, tmp_path):
    """The second death lands while the script handles the first (its back-off's awk and sleep): bash 5.2
    reaps it then and drops it from what `wait -n` reports, and the script used to wait on forever
    without restarting it (with one worker it spun at 100 % CPU instead)."""
    proc, log = launch(tmp_path, "0", "1")
    try:
        assert wait_for(lambda: all((tmp_path / f"vmx-net{k}.sock").exists() for k in (0, 1)))
        first = pids(log)
        os.kill(first[1][0], signal.SIGKILL)
        os.kill(first[0][0], signal.SIGKILL)
        assert wait_for(lambda: all(len(pids(log).get(k, [])) == 2 for k in (0, 1)), 20), log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        finish(proc, log, tmp_path)


def test_setup_error_is_not_retried(ns, tmp_path):
    proc, log = launch(tmp_path, "4095", nics=1)            # a CPU outside the allowed set: EINVAL
    assert proc.wait(60) == errno.EINVAL, log.read_text()
    assert "not restartable" in log.read_text()
