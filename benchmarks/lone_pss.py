#!/usr/bin/env python3
"""Where a lone idle `vhostsplice run` worker's memory goes (issue 18: at most 12 MiB PSS), measured ABAB.

Each round starts one `PY -P -m vhostsplice run --socket-path S --host-fd F --stats-file J` per --python
(F: one end of a unix datagram socketpair, no root needed), connects the pure-Python front-end (rings
running, RX buffers posted, one frame each way), waits until the worker is confined and 2 s more, then reads
its /proc/PID/smaps_rollup (PSS, Private_Dirty, PSS of anonymous and of file pages) and smaps per mapping
(the heap, anonymous memory, libpython), and stops it. The pythons take turns (A B A B ...), --rounds times,
so both see the same machine. PSS counts shared file pages by how many processes share them (it moves with
whatever other Python runs on the host); Private_Dirty is the steady figure.

    python3 benchmarks/lone_pss.py --python main=/venv/a/bin/python --python new=/venv/b/bin/python

Results: a markdown table and JSON in --out (default benchmarks/results/lone_pss), the command line in both.
A benchmark, never a timed test.
"""
from __future__ import annotations

import argparse
import datetime
import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import measured  # noqa: F401,E402  (puts tests/ on sys.path)
from measured import ROOT  # noqa: E402
from vhostsplice.testing.frontend import Frontend  # noqa: E402
from vhostsplice.testing.harness import demo_frame  # noqa: E402

FIELDS = ("Pss", "Private_Dirty", "Pss_Anon", "Pss_File")


def smaps(pid: int) -> dict[str, float]:
    """MiB: the rollup's FIELDS, and Private_Dirty of [heap], anonymous mappings and libpython."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        if key in FIELDS:
            out[key] = int(value.split()[0]) / 1024
    where, parts = "", {"heap": 0, "anon": 0, "libpython": 0}
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        cols = line.split()
        if "-" in cols[0] and not cols[0].endswith(":"):
            name = cols[5] if len(cols) > 5 else ""
            where = "heap" if name == "[heap]" else "anon" if not name else "libpython" if "libpython" in name else ""
        elif cols[0] == "Private_Dirty:" and where:
            parts[where] += int(cols[1])
    return {**out, **{f"dirty_{k}": v / 1024 for k, v in parts.items()}}


def one_worker(python: str, work: Path) -> dict[str, float]:
    """Start, connect, move a frame each way, wait idle and confined, measure, stop."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock = work / "w.sock"
    t0 = time.monotonic()
    proc = subprocess.Popen([python, "-P", "-m", "vhostsplice", "run", "--socket-path", str(sock), "--host-fd",
                             str(theirs.fileno()), "--stats-file", str(work / "w.json")], pass_fds=[theirs.fileno()],
                            stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fe = None
    try:
        while not sock.is_socket():
            if proc.poll() is not None:
                sys.exit(f"{python}: the worker exited {proc.returncode} before listening")
            time.sleep(0.005)
        listening = time.monotonic() - t0
        fe = Frontend.connect(str(sock), mem_size=2 << 20, queue_size=256).start()
        fe.post_rx(16, 2048)
        fe.send([demo_frame(1, 60)])
        ours.send(demo_frame(2, 60))
        fe.wait_used(fe.tx, 1)
        fe.wait_used(fe.rx, 1)
        while "Seccomp:\t2" not in Path(f"/proc/{proc.pid}/status").read_text():
            time.sleep(0.02)
        time.sleep(2.0)
        return {"listening_s": listening, **smaps(proc.pid)}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        if fe is not None:
            fe.close()
        ours.close()
        theirs.close()


def markdown(results: dict) -> str:
    keys = ("Pss", "Private_Dirty", "Pss_Anon", "Pss_File", "dirty_anon", "dirty_heap", "dirty_libpython",
            "listening_s")
    out = [f"Command: `{results['command']}`  ", f"When: {results['when']}; load average before: {results['loadavg']}",
           "", "Medians of the rounds (MiB; start-up to listening in s), each round's values in brackets:", "",
           "| python | " + " | ".join(keys) + " |", "| --- |" + " ---: |" * len(keys)]
    for label, rows in results["rounds"].items():
        cells = [f"{statistics.median(r[k] for r in rows):.2f} ({', '.join(f'{r[k]:.2f}' for r in rows)})"
                 for k in keys]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", action="append", metavar="LABEL=PATH",
                    help="a python with vhostsplice installed (repeatable; default: this one, as 'this')")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every python in turn (default 3)")
    ap.add_argument("--out", help="folder for lone_pss.md/json (default benchmarks/results/lone_pss)")
    args = ap.parse_args()
    pythons = dict(p.split("=", 1) for p in (args.python or [f"this={sys.executable}"]))
    out = Path(args.out or ROOT / "benchmarks" / "results" / "lone_pss")
    out.mkdir(parents=True, exist_ok=True)
    results = {"command": " ".join(["python3", "benchmarks/lone_pss.py", *sys.argv[1:]]),
               "when": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "loadavg": open("/proc/loadavg").read().split()[:3], "pythons": pythons,
               "rounds": {label: [] for label in pythons}}
    for n in range(args.rounds):
        for label, python in pythons.items():
            with tempfile.TemporaryDirectory(prefix="vslonepss-") as work:
                row = one_worker(python, Path(work))
            print(f"round {n + 1} {label}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), file=sys.stderr)
            results["rounds"][label].append(row)
    (out / "lone_pss.json").write_text(json.dumps(results, indent=1))
    (out / "lone_pss.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
