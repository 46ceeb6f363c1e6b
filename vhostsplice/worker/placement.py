"""Where a worker runs: its CPUs (--cpu/--cpus), niceness and scheduling policy. Used by the command line
(parsing) and by the worker's assembly (applying), so that neither imports the other."""
from __future__ import annotations

import os

from ..errors import ConfigError, from_oserror


def parse_cpus(text: str) -> set[int]:
    """'2-3,6' -> {2, 3, 6}; every CPU must be one this process may run on."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            first, last = int(lo), int(hi or lo)
            if first < 0 or last < first:
                raise ValueError(part)
            cpus.update(range(first, last + 1))
    except ValueError:
        raise ConfigError(f"--cpu {text!r}: expected a list like 2-3,6") from None
    outside = cpus - os.sched_getaffinity(0)
    if outside:
        raise ConfigError(f"--cpu {text!r}: CPU {min(outside)} is not in this process's allowed set "
                          f"{sorted(os.sched_getaffinity(0))}")
    return cpus


def apply_placement(cpu: str | None, nice: int | None, sched: str | None) -> None:
    if cpu:
        os.sched_setaffinity(0, parse_cpus(cpu))
    if nice is not None:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        except OSError as exc:
            raise from_oserror(exc, f"--nice {nice}") from None
    if sched:
        policy, _, prio = sched.partition(":")
        policies = {"fifo": os.SCHED_FIFO, "rr": os.SCHED_RR, "other": os.SCHED_OTHER}
        if policy not in policies or (policy != "other" and not prio.isdigit()):
            raise ConfigError(f"--sched {sched!r}: expected fifo:PRIO, rr:PRIO or other")
        try:
            os.sched_setscheduler(0, policies[policy], os.sched_param(int(prio or 0)))
        except OSError as exc:
            raise from_oserror(exc, f"--sched {sched}") from None
