"""One restart policy (errors.RESTART_POLICY) and one back-off policy (errors.BACKOFF), and every consumer
follows them: `serve`, bin/vhostsplice-supervise, bin/vhostsplice-vmm-example, contrib/systemd's unit.
Each consumer is asked about every row, so a consumer that drifts from the table fails here."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
from pathlib import Path

import pytest

from vhostsplice import errors as E
from vhostsplice.serve.selfexec import self_argv, self_env
from vhostsplice.serve.pairs import Events, Pair, Workers, should_restart
from vhostsplice.serve.supervisor import ServeConfig

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "contrib" / "systemd" / "vhostsplice@.service"
# one exit code per row (a death by SIGKILL for the "signal" row), and one no row lists
ROW_CODES = [(128 + signal.SIGKILL if key == E.SIGNALED else key, action) for key, action, _why in E.RESTART_POLICY]
CASES = ROW_CODES + [(123, E.UNLISTED)]


def test_every_row_has_an_action_and_a_reason_and_no_code_twice():
    keys = [key for key, _a, _w in E.RESTART_POLICY]
    assert len(keys) == len(set(keys))
    assert all(a in (E.CLEAN, E.RESTART, E.GIVE_UP) and len(w) > 20 for _k, a, w in E.RESTART_POLICY)
    documented = {code for code, _n, _m in E.EXIT_TABLE if code >= 0}
    assert documented <= set(keys), "every documented exit code has a restart decision"
    assert E.restart_action(0) == E.CLEAN and E.restart_action(137) == E.RESTART


def test_backoff_doubles_to_its_cap_jitter_only_shortens_and_a_stable_run_resets():
    p = E.BACKOFF
    assert [p.delay(n) for n in (1, 2, 3)] == [p.first, 2 * p.first, 4 * p.first]
    assert p.delay(60) == p.cap
    assert all(p.cap * (1 - p.jitter) <= p.delay(60, r) <= p.cap for r in (0.0, 0.5, 0.999))
    b = E.Backoff(rand=lambda: 0.0)
    delays = [b.next_delay() for _ in range(8)]
    assert delays == sorted(delays) and delays[-1] == p.cap
    assert not b.after_run(p.stable_after / 2) and b.next_delay() == p.cap      # a short run: still capped
    assert b.after_run(p.stable_after) and b.next_delay() == p.first           # a stable run: reset


@pytest.mark.parametrize("code, action", CASES)
def test_serve_follows_the_table(code, action):
    for restart, expect in (("on-failure", action == E.RESTART), ("always", action != E.GIVE_UP),
                            ("never", False)):
        config = ServeConfig(tap="t", queues=1, cpus=[], restart=restart)
        assert should_restart(config.restart, code) is expect, (restart, code)


def test_systemd_unit_prevents_exactly_the_give_up_codes():
    line = re.search(r"^RestartPreventExitStatus=(.*)$", UNIT.read_text(), re.M)
    assert line, "the unit has no RestartPreventExitStatus"
    give_up = {k for k, a, _w in E.RESTART_POLICY if a == E.GIVE_UP}
    listed = {128 + signal.Signals[c] if c.startswith("SIG") else int(c) for c in line[1].split()}
    assert listed == give_up
    assert re.search(r"^Restart=on-failure$", UNIT.read_text(), re.M)     # restarts every other failure


def test_exit_codes_command_prints_the_tables():
    out = subprocess.run([*self_argv(), "exit-codes", "--json"], env=self_env(), capture_output=True, text=True,
                         check=True).stdout
    doc = json.loads(out)
    assert doc == json.loads(json.dumps(E.policy_document()))
    shell = subprocess.run([*self_argv(), "exit-codes", "--shell"], env=self_env(), capture_output=True,
                           text=True, check=True).stdout
    assert shell.strip() == E.policy_shell()
    both = subprocess.run([*self_argv(), "exit-codes", "--json", "--shell"], env=self_env(), capture_output=True)
    assert both.returncode == 22


def _fake(tmp_path: Path, codes: list[int]) -> Path:
    """A stand-in worker: each run exits with the next code of $dir/codes; `exit-codes` goes to the real one."""
    (tmp_path / "codes").write_text(" ".join(map(str, codes)) + "\n")
    script = tmp_path / "fake-vhostsplice"
    script.write_text(f"""#!/usr/bin/env bash
[[ ${{1:-}} == exit-codes ]] && exec {shlex.join(self_argv())} "$@"
read -r first rest <"{tmp_path}/codes"; echo "$rest" >"{tmp_path}/codes"
if ((first > 128)); then kill -$((first - 128)) $$; fi
exit "$first"
""")
    script.chmod(0o755)
    return script


# consumer -> (argv after bash, extra env, what its log says per start, on giving up, on a clean restart,
# on a restart with back-off)
SCRIPTS = {
    "supervise": (["vhostsplice-supervise", "--backoff", "0.01", "--", "{fake}", "run"], {},
                  "started worker", "giving up", "restart now", "restart 1 in"),
    "vmm-example": (["vhostsplice-vmm-example", "vmx", "1", "0"], {"RUNDIR": "{tmp}"},
                    "worker pid", "not restartable", "starting a fresh one", "restart in"),
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
@pytest.mark.parametrize("code, action", CASES)
def test_scripts_follow_the_table(tmp_path, script, code, action):
    """bin/vhostsplice-supervise and bin/vhostsplice-vmm-example over a worker that exits CODE, then 22."""
    argv, extra, started, gave_up, clean, restarted = SCRIPTS[script]
    fake = _fake(tmp_path, [code, 22])
    fill = {"fake": str(fake), "tmp": str(tmp_path)}
    argv = [str(ROOT / "bin" / argv[0]), *(a.format(**fill) for a in argv[1:])]
    env = dict(self_env(), VHOSTSPLICE=str(fake), **{k: v.format(**fill) for k, v in extra.items()})
    proc = subprocess.run(["bash", *argv], env=env, capture_output=True, text=True, timeout=60)
    log = proc.stderr
    if action == E.GIVE_UP:
        assert proc.returncode == code and gave_up in log and log.count(started) == 1, log
    else:
        assert proc.returncode == 22 and log.count(started) == 2, log
        assert (clean if action == E.CLEAN else restarted) in log, log


class _Proc:
    def __init__(self, pid: int, status: int):
        self.pid, self.status = pid, status

    def wait(self, timeout=None):
        return self.status


class _Chan:
    def close(self):
        pass


def _serve_with_one_pair(events: Events) -> Workers:
    """serve's worker side whose pair 0 'ran' a worker (no process, no front-end): enough for on_exit."""
    from vhostsplice.sandbox.audit import KillLog
    config = ServeConfig(tap="t", queues=1, cpus=[])
    sup = Workers([Pair(0, None)], restart=config.restart, emit=events.emit, run_dir="", state_fds={},
                  kills=KillLog())
    sup.pairs[0].backoff = E.Backoff(rand=lambda: 0.5)      # the jitter halfway (it only shortens)
    return sup


def _kill_once(sup: Workers, served_s: float) -> float:
    """Pair 0's worker dies of SIGKILL after serving served_s seconds; the back-off serve chose."""
    import time
    pair = sup.pairs[0]
    pair.proc, pair.chan, pair.pidfd = _Proc(4242, -signal.SIGKILL), _Chan(), os.open(os.devnull, os.O_RDONLY)
    pair.started_at, pair.stats_file = time.monotonic() - served_s, "/nonexistent"
    before = time.monotonic()
    sup.on_exit(0)
    return pair.next_start - before


def test_serve_backoff_resets_after_a_stable_run(tmp_path):
    """issue 20, fault 1: after six quick failures every later one cost the 5 s cap for serve's life."""
    events = Events(str(tmp_path / "events"))
    sup = _serve_with_one_pair(events)
    quick = [_kill_once(sup, 0.01) for _ in range(8)]
    p = E.BACKOFF
    assert quick[0] < p.first + 0.05 and quick[-1] >= p.cap * (1 - p.jitter / 2), quick
    after_stable = _kill_once(sup, p.stable_after + 1)
    assert after_stable < p.first + 0.05, (quick, after_stable)      # was the 5 s cap for good
    sup.close()
    events.close()
    exits = [json.loads(line) for line in (tmp_path / "events").read_text().splitlines()]
    assert [e["stable"] for e in exits] == [False] * 8 + [True]
    assert [e["failures"] for e in exits] == [1, 2, 3, 4, 5, 6, 7, 8, 1]
    assert all(0 < e["backoff"] <= p.cap for e in exits) and exits[-1]["backoff"] <= p.first


def test_readme_lists_the_policy_as_the_table_has_it():
    text = (ROOT / "README.md").read_text()
    for action in (E.RESTART, E.GIVE_UP):
        listed = re.search(rf"- \*\*{action}\*\* \(([^)]*)", text)
        assert listed, f"README: no '- **{action}** (...' bullet"
        codes = {int(c) for c in re.findall(r"\b(\d+)\b", listed[1])}
        assert codes == {k for k, a, _w in E.RESTART_POLICY if a == action and isinstance(k, int)}, action


def test_run_and_serve_in_process_leave_the_callers_signal_mask_as_it_was():
    """Stop signals are held during a command's set-up only: an in-process call (main(), the tests) that
    ends before any loop must not leave them blocked (its children would inherit a blocked SIGTERM)."""
    from vhostsplice.cli import main
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert main(["run", "--socket-path", "/nonexistent/x.sock"]) == 22          # no host side: EINVAL
    assert main(["serve", "--socket-path", "/nonexistent/x.sock", "--tap", "t", "--cpus", "4095"]) == 22
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before
