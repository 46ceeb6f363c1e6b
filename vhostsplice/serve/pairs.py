"""`serve`'s queue pairs: one `Pair` per queue pair, its worker process and what it has been told."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..vhostuser.channel import Channel
from ..errors import Backoff


@dataclass
class Pair:
    """One queue pair: its worker process and everything it has been told (for a replacement)."""

    index: int
    cpu: int | None
    told: dict = field(default_factory=dict)     # (request, ring j) -> (payload, fd or None)
    proc: object = None
    chan: Channel | None = None
    pidfd: int = -1
    restarts: int = 0
    next_start: float = float("inf")            # no worker until the front-end enables a ring of the pair
    stats_file: str = ""
    started: bool = False
    started_at: float = 0.0                     # time.monotonic() of the current worker's start
    backoff: Backoff = field(default_factory=Backoff)   # errors.BACKOFF: doubling, capped, reset when stable
