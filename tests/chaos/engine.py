"""The chaos suite: kill serve's workers under DPDK traffic, kill the front-end under vhostsplice-supervise,
stop both mid-start-up; check every replacement carries traffic, restarts keep to the back-off policy
(errors.BACKOFF), the taps' index and host address never change, every exit code is the documented one.

    python3 -P tests/chaos/engine.py --minutes 10 --out benchmarks/results/chaos   # on demand, as root
tests/chaos/test_chaos.py runs a bounded round of the same in CI. The long run also samples RSS and fd
counts and writes chaos.json, chaos.md and chaos.svg (traffic and restarts over time) into --out.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))     # tests/: support.*, chaos.*

from chaos.report import write_report                                # noqa: E402
from chaos.rigs import ServeRig, SuperviseRig, footprint, tx_packets  # noqa: E402
from support.guest import pid_is                                     # noqa: E402
from support.waiting import wait_for                                 # noqa: E402
from vhostsplice.errors import BACKOFF                               # noqa: E402
from vhostsplice.testing.netns import PrivateNetns                   # noqa: E402

START_SLACK_S = 5.0     # a replacement's start beyond its back-off: exec, imports, replay, on a loaded machine


class Chaos:
    """The record of one run: rounds (one per kill), samples (RSS, fds, tap frames) and failures."""

    def __init__(self, fail_fast: bool = False):
        self.t0, self.fail_fast = time.time(), fail_fast
        self.rounds: list[dict] = []
        self.samples: list[dict] = []
        self.failures: list[str] = []

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            self.failures.append(what)
            if self.fail_fast:
                raise AssertionError(what)

    def sample(self, rig_name: str, rig) -> None:
        rows = {pid: footprint(pid) for pid in rig.pids()}
        self.samples.append({"t": round(time.time() - self.t0, 2), "rig": rig_name, "tap": rig.tap.state(),
                             "procs": {str(p): {"rss_kib": f[0], "fds": f[1]} for p, f in rows.items() if f}})

    def check_tap(self, rig, first: dict, what: str) -> None:
        now = rig.tap.state()
        self.check(now["ifindex"] == first["ifindex"], f"{what}: tap index {first['ifindex']} -> {now['ifindex']}")
        self.check(now["address"], f"{what}: the host address left the tap")


def kill_serve_workers(chaos: Chaos, rig: ServeRig, pairs: tuple[int, ...], first_tap: dict) -> None:
    """SIGKILL the workers of PAIRS at once; each replacement must start within its back-off and move frames."""
    old, seen = rig.workers(), {e["pid"] for e in rig.events("start")}
    t_kill = time.time()
    for k in pairs:
        if pid_is(old[k], "vhostsplice"):
            os.kill(old[k], signal.SIGKILL)       # serve's worker: a vhostsplice process of our serve
    for k in pairs:
        ended = wait_for(lambda: [e for e in rig.events("exit") if e["pid"] == old[k]], 30)
        start = wait_for(lambda: [e for e in rig.events("start") if e["pair"] == k and e["pid"] not in seen], 30)
        chaos.check(bool(start and ended), f"pair {k} at {t_kill - chaos.t0:.1f} s: pid {old[k]} "
                    f"{'replaced' if start else 'not replaced'}, {'its' if ended else 'no'} exit event")
        if not (start and ended):
            continue
        backoff, gap = ended[0]["backoff"] or 0.0, start[0]["time"] - ended[0]["time"]
        chaos.check(ended[0]["exit"] == 128 + signal.SIGKILL, f"pair {k}: exit {ended[0]['exit']}, not 137")
        chaos.check(backoff <= BACKOFF.cap, f"pair {k}: back-off {backoff} beyond the cap {BACKOFF.cap}")
        chaos.check(backoff - 0.01 <= gap <= backoff + START_SLACK_S, f"pair {k}: restart {gap:.2f} s after "
                    f"its exit with a back-off of {backoff}")
        moved = wait_for(lambda: tx_packets(start[0]["pid"], start[0]["stats_file"]), 30)
        chaos.check(moved > 0, f"pair {k}: replacement {start[0]['pid']} moved no frames")
        chaos.rounds.append({"t": round(t_kill - chaos.t0, 2), "rig": "serve", "pair": k, "pairs_down": len(pairs),
                             "backoff_s": backoff, "restart_gap_s": round(gap, 3), "failures": ended[0]["failures"],
                             "stable": ended[0]["stable"], "outage_s": round(time.time() - t_kill, 3)})
    chaos.check_tap(rig, first_tap, f"serve after killing pairs {pairs}")
    chaos.sample("serve", rig)


def kill_front_end(chaos: Chaos, rig: SuperviseRig, first_tap: dict) -> None:
    """SIGKILL the testpmd front-end: the worker exits 104, supervise restarts it, a new front-end moves frames."""
    if rig.pmd is None or rig.pmd.proc.poll() is not None:
        rig.front_end()
    worker, before = rig.worker(), rig.started()
    chaos.check(wait_for(lambda: tx_packets(worker), 30) > 0, f"supervise: worker {worker} moved no frames")
    t_kill = time.time()
    rig.pmd.kill()                                  # our own testpmd
    restarted = wait_for(lambda: rig.started() > before, 60)
    chaos.check(bool(restarted), "supervise: no restart after the front-end was killed")
    chaos.check("exited 104 ECONNRESET" in rig.log(), "supervise: the worker did not exit 104")
    gap = time.time() - t_kill
    rig.front_end()
    moved = wait_for(lambda: tx_packets(rig.worker()), 30)
    gap_total = time.time() - t_kill
    chaos.check(moved > 0, f"supervise: replacement {rig.worker()} moved no frames")
    chaos.rounds.append({"t": round(t_kill - chaos.t0, 2), "rig": "supervise", "restart_gap_s": round(gap, 3),
                         "outage_s": round(gap_total, 3)})
    chaos.check_tap(rig, first_tap, "supervise after killing the front-end")
    chaos.sample("supervise", rig)


def stop_serve_mid_start(chaos: Chaos, rig: ServeRig) -> None:
    """Kill pair 0's worker and SIGTERM serve as soon as its replacement starts: serve and it exit 0."""
    old, seen = rig.workers()[0], {e["pid"] for e in rig.events("start")}
    os.kill(old, signal.SIGKILL)
    start = wait_for(lambda: [e for e in rig.events("start") if e["pair"] == 0 and e["pid"] not in seen], 30,
                     interval=0.005)
    rig.proc.send_signal(signal.SIGTERM)            # our own serve, during its worker's start-up
    code = rig.proc.wait(60)
    chaos.check(code == 0, f"serve stopped mid-start-up exited {code}")
    exits = [e for e in rig.events("exit") if start and e["pid"] == start[0]["pid"]]
    chaos.check(bool(exits) and exits[0]["exit"] == 0, f"the worker stopped mid-start-up: {exits}")


def stop_supervise_mid_start(chaos: Chaos, rig: SuperviseRig) -> None:
    """Kill the front-end and SIGTERM supervise as soon as it relaunched the worker: both end with 0."""
    if rig.pmd is None or rig.pmd.proc.poll() is not None:
        rig.front_end()
    wait_for(lambda: tx_packets(rig.worker()), 30)
    if rig.stats.exists():
        rig.stats.unlink()
    before = rig.started()
    rig.pmd.kill()
    wait_for(lambda: rig.started() > before, 60, interval=0.005)
    rig.proc.send_signal(signal.SIGTERM)            # our own supervise, during its worker's start-up
    code = rig.proc.wait(60)
    chaos.check(code == 0, f"supervise stopped mid-start-up exited {code}:\n{rig.log()[-2000:]}")
    # the worker stopped cleanly (0, its stats say so), or the SIGTERM met it before it ran any code (bash
    # forked, env not yet run): supervise says so and counts it as the stop it asked for
    stats = json.loads(rig.stats.read_text()) if rig.stats.exists() else {}
    chaos.check(stats.get("exit") == 0 or "died of our SIGTERM" in rig.log(),
                f"its worker's last exit: {stats.get('exit')}:\n{rig.log()[-1500:]}")


def _more(n: int, count: int, until: float | None) -> bool:
    return n < count if until is None else time.time() < until


def run(workdir: Path, *, serve_kills: int = 0, front_kills: int = 0, minutes: float | None = None,
        chaos: Chaos | None = None) -> Chaos:
    """One chaos run: serve's phase, then supervise's, each ended by a stop mid-start-up. Counted kills, or
    with `minutes`, two thirds of the time killing serve's workers (with a stable pause now and then, after
    which the back-off starts over) and one third killing supervise's front-end (pausing for a stable run
    every 5 kills: supervise gives up after --max-restarts restarts in a row without one, as it should)."""
    chaos, until = chaos or Chaos(), None
    with PrivateNetns("vsc") as ns:
        rig, sup = ServeRig(ns, workdir), None
        try:
            first = rig.tap.state()
            chaos.sample("serve", rig)
            until = None if minutes is None else time.time() + 40 * minutes
            n = 0
            while _more(n, serve_kills, until):
                kill_serve_workers(chaos, rig, (0, 1) if n % 4 == 3 else (n % 2,), first)
                if minutes is not None and n % 12 == 11:
                    time.sleep(BACKOFF.stable_after + 1)      # a stable run: the next back-off starts over
                n += 1
            stop_serve_mid_start(chaos, rig)
            rig.pmd.kill()
            sup = SuperviseRig(ns, workdir)
            first = sup.tap.state()
            until = None if minutes is None else time.time() + 20 * minutes
            n = 0
            while _more(n, front_kills, until):
                kill_front_end(chaos, sup, first)
                if minutes is not None and n % 5 == 4:
                    time.sleep(BACKOFF.stable_after + 1)
                n += 1
            stop_supervise_mid_start(chaos, sup)
        finally:
            rig.close()
            if sup is not None:
                sup.close()
    return chaos


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="how long to keep killing (default 10)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/chaos"),
                   help="directory for chaos.json, chaos.md and chaos.svg")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    chaos = Chaos()
    with tempfile.TemporaryDirectory(prefix="vs-chaos-") as tmp:
        try:
            run(Path(tmp), minutes=args.minutes, chaos=chaos)
        except Exception as exc:                    # the report still tells what happened until then
            chaos.failures.append(f"the run stopped: {exc!r}"[:3000])
    summary = write_report(chaos, args.out, minutes=args.minutes, command=" ".join(sys.argv))
    print(json.dumps(summary, indent=1))
    return 0 if not chaos.failures else 1


if __name__ == "__main__":
    sys.exit(main())
