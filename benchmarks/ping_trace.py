#!/usr/bin/env python3
"""Where one ping's time goes: a system-wide perf trace of dpdk_bench's latency sample, step by step.

    flock /tmp/vs-heavy.lock python3 benchmarks/ping_trace.py [--backend vhostsplice|dpdk]
        [--worker-arg=--busy-poll=50] [--ping-cpu 0|1] [--pings 300] [--ping-interval 0.005] [--out DIR]

One sample as `dpdk_bench.py --figures latency` takes it (a private netns, the tap, the back-end on CPU 1,
testpmd virtio-user icmpecho with its forwarding lcore on CPU 0, `ping` to it), recorded by `perf record -a`
(sched_switch/waking, every syscall of the back-end's (but a polling DPDK lcore's), the front-end's and
ping's threads, the tap's net_dev_xmit and netif_receive_skb, cpu_idle, IPIs). Each ping is then followed
from ping's sendto (ping takes its send time just before it) to the reply's netif_receive_skb on the tap,
which is where ping's RTT ends (ping stamps a reply in the kernel: SO_TIMESTAMP), so ping's own wake-up on
the reply is not part of its RTT.
Printed (and written to --out/ping_trace.md with the raw medians in ping_trace.json):
  steps       median microseconds after the sendto of: the request in the tap, the back-end woken, on its
              CPU, back from epoll_wait, the front-end's kick (its write), the reply in the tap, split by
              the CPU ping sent from (the scheduler's choice unless --ping-cpu)
  wake-ups    the back-end's wake-ups during the pings, by their syscall sequence: how long each step took
              and how much of the time on the CPU was outside syscalls (Python and the C core)
  scheduler   per task: wake-up to running (median, p90), and how often CPU 1 was idle (halted) when the
              back-end was woken, and how long it took to leave idle
Tracing costs each traced event ~1-3 us here: read the steps as proportions, and the RTTs next to an
untraced run of dpdk_bench. Needs root, perf, dpdk-testpmd. Never used by the tests.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import dpdk_bench as B  # noqa: E402  (puts tests/ on sys.path through measured)
import measured  # noqa: E402

EVENTS = ("sched:sched_switch", "sched:sched_waking", "raw_syscalls:sys_enter", "raw_syscalls:sys_exit",
          "net:net_dev_xmit", "net:netif_receive_skb", "power:cpu_idle", "ipi:ipi_send_cpu")
NAMES = {0: "read", 1: "write", 7: "poll", 13: "rt_sigaction", 14: "rt_sigprocmask", 15: "rt_sigreturn",
         16: "ioctl", 19: "readv", 20: "writev", 39: "getpid", 44: "sendto", 45: "recvfrom", 46: "sendmsg",
         47: "recvmsg", 186: "gettid", 202: "futex", 228: "clock_gettime", 232: "epoll_wait", 281: "epoll_pwait",
         426: "io_uring_enter"}    # getpid, gettid: markers a scratch build may call (both allowed confined)
IDLE_EXIT = 4294967295
LINE = re.compile(r"^\s*(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+([\w:]+):\s?(.*)$")


@dataclass
class Ev:
    t: float        # seconds
    cpu: int
    tid: int
    name: str
    text: str


def threads(pid: int) -> dict[int, str]:
    """tid -> comm of every thread of PID."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = (task / "comm").read_text().strip()
        except OSError:
            pass
    return out


def record(s: B.Sample, args, data: Path, tids: set[int]) -> tuple[subprocess.CompletedProcess, int]:
    """perf record -a around one ping run; returns ping's output and its pid. ping starts after a pause
    (a shell that execs it: the pid is ping's), so the syscall events can be limited to the back-end's,
    the front-end's and ping's threads: perf's own syscalls would otherwise feed back into the trace."""
    pin = ["taskset", "-c", str(args.ping_cpu)] if args.ping_cpu is not None else []
    ping_argv = " ".join([*pin, "ping", "-c", str(args.pings), "-i", str(args.ping_interval), "-W", "1", B.PEER_IP])
    ping = s.ns.popen(["sh", "-c", f"sleep 2; exec {ping_argv}"], stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, text=True)
    cmd = ["perf", "record", "-q", "-a", "-m", "8M", "-o", str(data)]
    only = " || ".join(f"common_pid == {t}" for t in sorted(tids | {ping.pid}))
    for ev in EVENTS:
        cmd += ["-e", ev] + (["--filter", only] if ev.startswith("raw_syscalls") else [])
    perf = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    out, err = ping.communicate(timeout=60 + args.pings * (args.ping_interval + 0.1))
    perf.send_signal(signal.SIGINT)
    _, perr = perf.communicate(timeout=120)
    if perf.returncode not in (0, -signal.SIGINT):
        raise RuntimeError(f"perf record failed: {perr.decode(errors='replace')[-2000:]}")
    return subprocess.CompletedProcess(ping.args, ping.returncode, out, err), ping.pid


def events(data: Path) -> list[Ev]:
    r = subprocess.run(["perf", "script", "-i", str(data), "-F", "tid,cpu,time,event,trace", "--ns"],
                       capture_output=True, text=True, check=True)
    out = []
    for line in r.stdout.splitlines():
        m = LINE.match(line)
        if m:
            out.append(Ev(float(m[3]), int(m[2]), int(m[1]), m[4], m[5]))
    return out


def field(text: str, key: str) -> str:
    m = re.search(rf"\b{key}=(\S+)", text)
    return m[1] if m else ""


def sysno(e: Ev) -> int:
    return int(e.text.split()[1].rstrip(","))


# ------------------------------------------------------------------------------------------ per ping

def sends(evs: list[Ev], ping: int) -> list[Ev]:
    return [e for e in evs if e.tid == ping and e.name == "raw_syscalls:sys_enter" and sysno(e) in (44, 46)]


def first(evs: list[Ev], i: int, end: float, pred) -> tuple[int, Ev | None]:
    """The first event from index i before time end that pred accepts, and its index."""
    while i < len(evs) and evs[i].t < end:
        if pred(evs[i]):
            return i, evs[i]
        i += 1
    return i, None


def one_ping(evs: list[Ev], i: int, end: float, be: set[int], fe: set[int], tap: str) -> dict:
    """The steps of the ping whose sendto is evs[i] (microseconds after it); end: the next sendto."""
    t0 = evs[i].t
    on_tap = lambda name: lambda e: e.name == name and field(e.text, "dev") == tap   # noqa: E731
    j, xmit = first(evs, i, end, on_tap("net:net_dev_xmit"))
    _, reply = first(evs, j, end, on_tap("net:netif_receive_skb"))
    stop = reply.t if reply else end
    k, woken = first(evs, i, stop, lambda e: e.name == "sched:sched_waking" and int(field(e.text, "pid")) in be)
    k = k if woken else i
    _, on_cpu = first(evs, k, stop, lambda e: e.name == "sched:sched_switch" and int(field(e.text, "next_pid")) in be)
    _, epoll = first(evs, k, stop, lambda e: e.tid in be and e.name == "raw_syscalls:sys_exit"
                     and sysno(e) in (232, 281))
    _, kick = first(evs, i, stop, lambda e: e.tid in fe and e.name == "raw_syscalls:sys_enter" and sysno(e) == 1)
    steps = {"xmit": xmit, "woken": woken, "on_cpu": on_cpu, "epoll_back": epoll, "kick": kick, "reply": reply}
    out = {name: round((e.t - t0) * 1e6, 1) if e else None for name, e in steps.items()}
    out.update(send_cpu=evs[i].cpu, cpu1_idle_at_wake=cpu_idle_at(evs, k, 1) if woken else None,
               be_wakeups=count(evs, i, stop, lambda e: e.name == "sched:sched_waking"
                                and int(field(e.text, "pid")) in be))
    return out


def count(evs: list[Ev], i: int, end: float, pred) -> int:
    n = 0
    while i < len(evs) and evs[i].t < end:
        n += bool(pred(evs[i]))
        i += 1
    return n


def cpu_idle_at(evs: list[Ev], k: int, cpu: int) -> bool:
    """Whether CPU was in an idle state (halted) at evs[k]: its last cpu_idle event before says so."""
    for e in reversed(evs[max(0, k - 4000):k]):
        if e.cpu == cpu and e.name == "power:cpu_idle":
            return int(field(e.text, "state")) != IDLE_EXIT
        if e.cpu == cpu and e.name == "sched:sched_switch":
            return field(e.text, "next_comm") == "swapper/1"
    return False


def pings(evs: list[Ev], ping: int, be: set[int], fe: set[int]) -> list[dict]:
    idx = {id(e): n for n, e in enumerate(evs)}
    ss = sends(evs, ping)
    out = []
    for n, e in enumerate(ss):
        end = ss[n + 1].t if n + 1 < len(ss) else evs[-1].t
        out.append(one_ping(evs, idx[id(e)], end, be, fe, B.TAP))
    return out


# ------------------------------------------------------------------------------------------ wake-ups

def wakeups(evs: list[Ev], be: set[int]) -> list[dict]:
    """The back-end's rounds: from epoll_wait's return to its next call. Each: the syscalls in between
    (name, start and length in us after the return), the time off the CPU (preempted) and the rest."""
    out, cur, enter, off_since = [], None, None, None
    for e in evs:
        if e.name == "sched:sched_switch" and cur is not None:
            if int(field(e.text, "prev_pid")) in be:
                off_since = e.t
            elif int(field(e.text, "next_pid")) in be and off_since is not None:
                cur["off_cpu"] += e.t - off_since
                off_since = None
        if e.tid not in be or not e.name.startswith("raw_syscalls"):
            continue
        no = sysno(e)
        if e.name.endswith("sys_exit") and no in (232, 281):
            cur = {"t": e.t, "calls": [], "off_cpu": 0.0}
        elif cur is not None and e.name.endswith("sys_enter") and no in (232, 281):
            out.append(_round(cur, e.t))
            cur = None
        elif cur is not None and e.name.endswith("sys_enter"):
            enter = e.t
        elif cur is not None and enter is not None:
            cur["calls"].append((NAMES.get(no, str(no)), enter - cur["t"], e.t - enter))
            enter = None
    return out


def _round(cur: dict, end: float) -> dict:
    total = end - cur["t"]
    in_calls = sum(c[2] for c in cur["calls"])
    return {"signature": " ".join(c[0] for c in cur["calls"]), "total_us": total * 1e6,
            "syscalls_us": in_calls * 1e6, "off_cpu_us": cur["off_cpu"] * 1e6,
            "user_us": (total - in_calls - cur["off_cpu"]) * 1e6, "calls": cur["calls"]}


def wakeup_table(rounds: list[dict], top: int = 6) -> list[dict]:
    """The commonest syscall sequences, with medians: whole round, in syscalls, outside them (user)."""
    by = defaultdict(list)
    for r in rounds:
        by[r["signature"]].append(r)
    rows = []
    for sig, rs in sorted(by.items(), key=lambda kv: -len(kv[1]))[:top]:
        rows.append({"signature": sig or "(none)", "n": len(rs),
                     **{k: round(statistics.median(r[k] for r in rs), 1)
                        for k in ("total_us", "user_us", "syscalls_us", "off_cpu_us")},
                     "steps": _median_steps(rs)})
    return rows


def _median_steps(rs: list[dict]) -> list[str]:
    """'name@start+len' medians, step by step, of rounds with the same sequence."""
    n = len(rs[0]["calls"])
    return [f"{rs[0]['calls'][k][0]}@{statistics.median(r['calls'][k][1] for r in rs) * 1e6:.1f}"
            f"+{statistics.median(r['calls'][k][2] for r in rs) * 1e6:.1f}" for k in range(n)]


# ------------------------------------------------------------------------------------------ scheduler

def sched_latency(evs: list[Ev], names: dict[int, str]) -> dict[str, dict]:
    """Per task (named) and CPU: waking -> on the CPU, in us (median, p90, n); and CPU idle exits."""
    woke: dict[int, float] = {}
    lat = defaultdict(list)
    for e in evs:
        if e.name == "sched:sched_waking":
            pid = int(field(e.text, "pid"))
            if pid in names:
                woke.setdefault(pid, e.t)
        elif e.name == "sched:sched_switch":
            pid = int(field(e.text, "next_pid"))
            if pid in woke:
                lat[f"{names[pid]} on CPU {e.cpu}"].append((e.t - woke.pop(pid)) * 1e6)
    return {k: _dist(v) for k, v in sorted(lat.items())}


def idle_exits(evs: list[Ev], be: set[int]) -> dict:
    """For each waking of the back-end while CPU 1 was idle: waking -> idle exit -> back-end on CPU 1."""
    exits, runs = [], []
    for k, e in enumerate(evs):
        if e.name != "sched:sched_waking" or int(field(e.text, "pid")) not in be or not cpu_idle_at(evs, k, 1):
            continue
        _, out = first(evs, k, e.t + 0.05, lambda x: x.cpu == 1 and x.name == "power:cpu_idle"
                       and int(field(x.text, "state")) == IDLE_EXIT)
        _, run = first(evs, k, e.t + 0.05, lambda x: x.name == "sched:sched_switch"
                       and int(field(x.text, "next_pid")) in be)
        if out and run:
            exits.append((out.t - e.t) * 1e6)
            runs.append((run.t - e.t) * 1e6)
    return {"waking_to_idle_exit_us": _dist(exits), "waking_to_on_cpu_us": _dist(runs)}


def _dist(v: list[float]) -> dict:
    if not v:
        return {"n": 0}
    v = sorted(v)
    return {"n": len(v), "p50": round(statistics.median(v), 1), "p90": round(v[int(0.9 * (len(v) - 1))], 1)}


# ------------------------------------------------------------------------------------------ report

STEPS = ("xmit", "woken", "on_cpu", "epoll_back", "kick", "reply")


def step_table(per_ping: list[dict], rtts: list[float | None]) -> list[dict]:
    """Medians of each step by the CPU ping sent from (and all pings)."""
    rows = []
    for label, keep in (("all", lambda p: True), ("ping on CPU 0", lambda p: p["send_cpu"] == 0),
                        ("ping on CPU 1", lambda p: p["send_cpu"] == 1),
                        ("back-end woken once", lambda p: p["be_wakeups"] <= 1),
                        ("woken twice or more", lambda p: p["be_wakeups"] >= 2)):
        ps = [(p, r) for p, r in zip(per_ping, rtts) if keep(p)]
        if not ps:
            continue
        row = {"pings": label, "n": len(ps), "rtt_p50": _med([r for _, r in ps])}
        row.update({s: _med([p[s] for p, _ in ps]) for s in STEPS})
        idle = [p["cpu1_idle_at_wake"] for p, _ in ps if p["cpu1_idle_at_wake"] is not None]
        row["cpu1_idle_at_wake"] = f"{sum(idle)}/{len(idle)}" if idle else "-"
        row["be_wakeups"] = _med([p["be_wakeups"] for p, _ in ps])
        rows.append(row)
    return rows


def _med(v: list) -> float | None:
    v = [x for x in v if x is not None]
    return round(statistics.median(v), 1) if v else None


def rtts_of(text: str, n: int) -> list[float | None]:
    """ping's RTT (us) of icmp_seq 1..n, None for a lost one."""
    got = {int(s): float(t) * 1000 for s, t in re.findall(r"icmp_seq=(\d+) ttl=\d+ time=([\d.]+) ms", text)}
    return [got.get(k) for k in range(1, n + 1)]


def markdown(res: dict) -> str:
    out = [f"# ping_trace: {res['column']}", "", f"`{res['command']}`", "",
           f"{res['pings']} pings, {res['replies']} replies; untraced figures come from dpdk_bench.", "",
           "## Steps (median us after ping's sendto; reply = where ping's RTT ends)", "",
           "| pings | n | RTT p50 | " + " | ".join(STEPS) + " | CPU 1 idle at the wake | back-end wakings/ping |",
           "| --- " * (len(STEPS) + 5) + "|"]
    for r in res["steps"]:
        out.append(f"| {r['pings']} | {r['n']} | {r['rtt_p50']} | " + " | ".join(str(r[s]) for s in STEPS)
                   + f" | {r['cpu1_idle_at_wake']} | {r['be_wakeups']} |")
    out += ["", "## The back-end's rounds (epoll_wait return -> next epoll_wait; medians, us)", "",
            "| syscalls in the round | n | round | outside syscalls | in syscalls | off CPU "
            "| steps (call@start+length) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in res["wakeups"]:
        out.append(f"| {r['signature']} | {r['n']} | {r['total_us']} | {r['user_us']} | {r['syscalls_us']} | "
                   f"{r['off_cpu_us']} | {' '.join(r['steps'])} |")
    out += ["", "## Scheduler: waking -> running (us)", "", "| task | n | p50 | p90 |", "| --- | ---: | ---: | ---: |"]
    for k, d in res["sched"].items():
        out.append(f"| {k} | {d['n']} | {d.get('p50', '-')} | {d.get('p90', '-')} |")
    ie = res["idle_exits"]
    out += ["", "Back-end woken while CPU 1 was idle: waking -> CPU 1 leaves idle "
            f"{ie['waking_to_idle_exit_us']}, -> the back-end runs {ie['waking_to_on_cpu_us']}", ""]
    return "\n".join(out)


def trace(args) -> dict:
    col = B.column_of(args.backend)
    B.WORKER_OPTS = list(args.worker_arg)
    work = Path(args.workdir)
    with B.Sample(col, work / "sample") as s:
        s.be.start()
        s.ns.run(["ip", "addr", "add", B.TAP_IP, "dev", B.TAP])
        s.front_end("icmpecho")
        s.ns.run(["ping", "-c", "5", "-i", "0.05", "-W", "2", B.PEER_IP], check=False)   # ARP, warm-up
        be = set(threads(s.be.pid))
        names = {**{t: f"back-end {c}" for t, c in threads(s.be.pid).items()},
                 **{t: f"front-end {c}" for t, c in threads(s.fe.proc.pid).items()}}
        fe = set(threads(s.fe.proc.pid))
        polls = {t for t, c in threads(s.be.pid).items() if c.startswith(("rte-worker", "lcore-worker"))}
        r, ping_pid = record(s, args, work / "perf.data", (be - polls) | fe)
        names[ping_pid] = "ping"
    evs = events(work / "perf.data")
    per_ping = pings(evs, ping_pid, be, fe)
    rtts = rtts_of(r.stdout, len(per_ping))
    return {"column": col.name, "command": " ".join(["python3", "benchmarks/ping_trace.py", *sys.argv[1:]]),
            "pings": args.pings, "replies": sum(x is not None for x in rtts), "traced_sends": len(per_ping),
            "steps": step_table(per_ping, rtts), "wakeups": wakeup_table(wakeups(evs, be)),
            "sched": sched_latency(evs, names), "idle_exits": idle_exits(evs, be), "per_ping": per_ping,
            "rtts": rtts, "syscalls": dict(Counter(NAMES.get(sysno(e), sysno(e)) for e in evs
                                                   if e.tid in be and e.name == "raw_syscalls:sys_enter"))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="vhostsplice", choices=B.BACKENDS)
    p.add_argument("--worker-arg", action="append", default=[], metavar="ARG", help="one more `run` argument")
    p.add_argument("--ping-cpu", type=int, choices=(B.FE_CPU, B.BE_CPU))
    p.add_argument("--pings", type=int, default=300)
    p.add_argument("--ping-interval", type=float, default=0.005, metavar="S")
    p.add_argument("--tree", metavar="DIR", help="the vhostsplice of this source tree (its core built in place), "
                                               "as dpdk_bench --tree; default: the installed package")
    p.add_argument("--out", default="/tmp/ping_trace", help="folder for ping_trace.md/.json")
    p.add_argument("--workdir", default=f"/tmp/ping-trace-{os.getpid()}", help="perf.data and the logs")
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root: ip netns, /dev/net/tun, perf record -a")
    measured.use_tree(args.tree)
    measured.preflight()
    res = trace(args)
    measured.write_results(args.out, "ping_trace", res, markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
