"""FakeWorkers: `serve`'s worker side (serve/pairs.py's Workers) as the device sees it
(serve_device.WorkerSide), with no process, for tests of the device alone.

It has the pairs a device of `queues` queue pairs has; `start` marks a pair started and records its
index in `started`; `send` records (pair index, request) in `sent` for every pair, running or not (a
real worker side sends only to a running worker: a test sees what the device asked for); `reply`
answers nothing, as a worker that went away.
"""
from __future__ import annotations

from typing import Sequence

from ..vhostuser import protocol as P
from ..serve.pairs import Pair
from ..spec import Req


class FakeWorkers:
    def __init__(self, queues: int):
        self.pairs = [Pair(k, None) for k in range(queues)]
        self.started: list[int] = []
        self.sent: list[tuple[int, Req]] = []

    def start(self, pair: Pair) -> None:
        self.started.append(pair.index)
        pair.started = True

    def send(self, pair: Pair, request: int, payload: bytes, fds: Sequence[int] = ()) -> None:
        self.sent.append((pair.index, Req(request)))

    def reply(self, pair: Pair, request: int) -> P.Message | None:
        return None
