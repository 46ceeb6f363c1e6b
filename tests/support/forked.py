"""A Worker (the real loop, signals included) in a forked child, away from pytest, and what it reports back."""
from __future__ import annotations

import json
import os
import socket
from typing import Callable

from vhostsplice.vhostuser.channel import Channel
from vhostsplice.worker.loop import Worker, WorkerConfig


def fork_worker(sock: socket.socket, host, config: WorkerConfig, record: Callable[[Worker, int], dict],
                close: tuple = ()) -> tuple[int, int]:
    """Fork a Worker serving SOCK with HOST; CLOSE (the front-end's end) is closed in the child. When the
    worker returns, record(worker, its exit code) comes back as JSON on a pipe. Returns (pid, read end)."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            os.close(rfd)
            for c in close:
                c.close()
            worker = Worker(Channel(sock), host, config)
            os.write(wfd, json.dumps(record(worker, worker.run())).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(wfd)
    return pid, rfd


def child_record(pid: int, rfd: int) -> dict:
    """The record of a fork_worker child, once it has exited 0 (an assertion if it did not)."""
    with os.fdopen(rfd, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and data, "the worker child failed"
    return json.loads(data)
