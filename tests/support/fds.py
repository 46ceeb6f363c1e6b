"""The process's open fds, for tests that check every fd a message carried was kept or closed.

A snapshot is taken after a full garbage collection: an earlier test's objects in reference cycles (a
failed test's traceback keeps its frames, and with them sockets and pipes, until the collector runs) would
otherwise be closed while a later test runs and read as that test closing fds behind its own back (CI run
of 30ea3bb: fds 12 and 13 of a failed QEMU test's QMP sockets, closed during the next fd-checking test).
The check after a test takes no collection: an fd only garbage would close is that test's leak.
"""
from __future__ import annotations

import contextlib
import gc
import os
from typing import Iterator


def open_fds() -> set[int]:
    return {int(x) for x in os.listdir("/proc/self/fd")}


def settled_fds() -> set[int]:
    """open_fds() once the garbage of earlier tests is collected (and its fds closed)."""
    gc.collect()
    return open_fds()


@contextlib.contextmanager
def same_fds(what: str = "the test") -> Iterator[None]:
    """Fail unless the block leaves exactly the fds it found (none leaked, none closed behind its back)."""
    before = settled_fds()
    yield
    after = open_fds()
    assert after == before, (f"fds {what} leaked: {sorted(after - before)}, "
                             f"closed behind its back: {sorted(before - after)}")
