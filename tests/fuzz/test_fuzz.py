"""The fuzzers in CI: a short sanitizer run (corpus replay + fuzzing), and proof that their oracles bite.

The long run is `python3 tests/fuzz/run.py --minutes N` (docs/fuzzing.md). VS_FUZZ_SECONDS changes the
fuzzing time of the short run here (default 45 s, after the corpus replay).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import harness  # noqa: E402
import proto  # noqa: E402
import ref  # noqa: E402
import run  # noqa: E402

from vhostsplice.device.datapath import Datapath  # noqa: E402


# The core target's tap is a socketpair with a 16 MiB buffer (SO_SNDBUFFORCE), so that no TX chain meets
# EAGAIN or EMSGSIZE: that needs CAP_NET_ADMIN.
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the core fuzz target needs root (SO_SNDBUFFORCE)")


def corpus(target: str) -> list[bytes]:
    items = [data for _, data in run.load_corpus(target)]
    assert len(items) >= 10, f"tests/fuzz/corpus/{target} is missing or nearly empty"
    return items


@needs_root
@pytest.mark.slow
def test_sanitizer_fuzz_run(tmp_path):
    """Build the core with ASan+UBSan, replay the corpora, fuzz every target: no report, no mismatch."""
    seconds = os.environ.get("VS_FUZZ_SECONDS", "45")
    res = subprocess.run([sys.executable, os.path.join(HERE, "run.py"), "--seconds", seconds,
                          "--build-dir", str(tmp_path / "build"), "--crash-dir", str(tmp_path / "crashes")],
                         capture_output=True, text=True, timeout=float(seconds) + 240)
    print(res.stdout[-4000:], res.stderr[-4000:])
    assert res.returncode == 0, res.stderr[-4000:]
    assert "core build asan" in res.stdout and "_vs_core" in res.stdout
    for target in run.TARGETS:
        m = re.search(rf"fuzz {target}: (\d+) execs \((\d+) corpus replays\)", res.stdout)
        assert m, res.stdout
        execs, replayed = int(m.group(1)), int(m.group(2))
        assert replayed == len(corpus(target)) and execs > replayed


@pytest.mark.slow
def test_core_and_protocol_suites_under_sanitizers(tmp_path):
    """tests/core and tests/protocol (the hostile suites included) on the ASan+UBSan core."""
    res = subprocess.run([sys.executable, os.path.join(HERE, "run.py"), "--build-dir", str(tmp_path / "build"),
                          "--crash-dir", str(tmp_path / "crashes"), "--pytest", "-q", "tests/core", "tests/protocol"],
                         capture_output=True, text=True, timeout=600)
    print(res.stdout[-4000:], res.stderr[-6000:])
    assert res.returncode == 0, res.stderr[-6000:]
    assert re.search(r"pytest on core .*/build/asan/lib/vhostsplice/_vs_core", res.stdout)
    m = re.search(r"(\d+) passed", res.stdout)
    assert m and int(m.group(1)) > 100 and " failed" not in res.stdout


@needs_root
def test_core_corpus_replays_clean():
    for data in corpus("core"):
        harness.run_one(data, Datapath)


@needs_root
def test_core_packed_corpus_replays_clean():
    for data in corpus("core-packed"):
        harness.run_one(data, Datapath, scenario=harness.PackedScenario)


def test_protocol_corpus_replays_clean():
    for data in corpus("protocol"):
        proto.run_one(data)


def test_protocol_corpus_replays_under_the_worker_sandbox():
    """Issue 17: the same inputs, in a child confined exactly like a worker (Landlock, the seccomp
    allow-list); its fds come from here over SCM_RIGHTS (confined.py). A forbidden syscall on any path the
    corpus reaches is a SIGSYS, reported with the input that made it."""
    import json
    import socket

    import confined
    from support.confined import unconfined
    from vhostsplice.serve.selfexec import self_env
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.settimeout(120)
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "confined.py"), str(theirs.fileno()),
                             os.path.join(HERE, "corpus", "protocol")], pass_fds=(theirs.fileno(),), env=self_env())
    theirs.close()
    said, status = [], []

    def on_line(text: str) -> None:
        said.append(text)
        if text == "confined":
            status.append(unconfined(proc.pid))
            ours.sendmsg([b"go"])
    try:
        confined.serve_fds(ours, on_line)
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        ours.close()
    assert code == 0, f"the confined replay ended {code} at {said[-1:]}"
    assert status == [[]] or (os.geteuid() != 0 and all(not w.startswith("Seccomp") for w in status[0])), status
    assert json.loads(said[-1]) == {"replayed": len(corpus("protocol"))}


def _first_failure(target: str, fn):
    for data in corpus(target):
        try:
            fn(data)
        except AssertionError as exc:
            return exc
    return None


@needs_root
@pytest.mark.parametrize("plant", ["need_call", "loop", "event_idx", "used_len", "avail_idx"])
def test_the_core_oracle_catches_planted_bugs(monkeypatch, plant):
    """The reference with one deliberate mistake: the corpus must expose it as a Mismatch."""
    if plant == "need_call":
        monkeypatch.setattr(ref.Pair, "need_call", lambda self, r: True)
    elif plant == "loop":
        real = ref.Ring.fail
        monkeypatch.setattr(ref.Ring, "fail", lambda self, reason: real(self, ref.NEXT if reason == ref.LOOP
                                                                          else reason))
    elif plant == "event_idx":
        real_enable = ref.Pair.notify_enable
        monkeypatch.setattr(ref.Pair, "notify_enable",
                            lambda self, r, seen: real_enable(self, r, (seen + 1) & 0xFFFF))
    elif plant == "used_len":
        real_add = ref.Pair.used_add
        monkeypatch.setattr(ref.Pair, "used_add", lambda self, r, head, n: real_add(self, r, head, n + (n > 0)))
    else:
        real_pending = ref.Pair.avail_pending

        def pending(self, r):
            n = (r.avail_idx(self.mem) - r.last_avail) & 0xFFFF
            return n if n == r.num + 1 else real_pending(self, r)
        monkeypatch.setattr(ref.Pair, "avail_pending", pending)
    exc = _first_failure("core", lambda d: harness.run_one(d, Datapath))
    assert isinstance(exc, harness.Mismatch), f"planted bug {plant!r} went unnoticed by the core corpus"


@needs_root
@pytest.mark.parametrize("plant", ["need_call", "used_write", "in_order", "indirect_limit", "wrap"])
def test_the_packed_oracle_catches_planted_bugs(monkeypatch, plant):
    """ref_packed with one deliberate mistake: the core-packed corpus must expose it as a Mismatch."""
    import ref_packed as rp
    if plant == "need_call":
        monkeypatch.setattr(rp.PackedPair, "need_call", lambda self, r: True)
    elif plant == "used_write":          # finding (b) planted back: WRITE on every device-writable used entry
        real_flags = rp.PackedPair.used_flags
        monkeypatch.setattr(rp.PackedPair, "used_flags", lambda self, r, pos: real_flags(self, r, pos) | (
            rp.F_WRITE if r.lists.get(rp.idx(pos), (0, False, False))[1] else 0))
    elif plant == "in_order":            # the reference's publish never collapses an IN_ORDER batch
        real_publish = rp.PackedPair.used_publish

        def publish(self, r, old):
            keep, r.flags = r.flags, r.flags & ~rp.RF_IN_ORDER
            try:
                real_publish(self, r, old)
            finally:
                r.flags = keep
        monkeypatch.setattr(rp.PackedPair, "used_publish", publish)
    elif plant == "indirect_limit":      # finding (c) planted back: the ring descriptor counted in the list
        real_table = rp.PackedPair.table

        def table(self, r, writable, addr, n, flags, count, iov, max_iov):
            if count == 1 and not flags & rp.F_NEXT and n and n % 16 == 0 and n // 16 == r.num \
                    and r.flags & ref.RF_INDIRECT:
                r.fail(ref.CHAIN_LEN)
            return real_table(self, r, writable, addr, n, flags, count, iov, max_iov)
        monkeypatch.setattr(rp.PackedPair, "table", table)
    else:                                # a descriptor used in this lap taken as not available
        monkeypatch.setattr(rp, "availability", lambda flags, lap: 1 if bool(flags & rp.F_AVAIL) == bool(lap)
                            and bool(flags & rp.F_USED) != bool(lap) else 0)
    exc = _first_failure("core-packed", lambda d: harness.run_one(d, Datapath, scenario=harness.PackedScenario))
    assert isinstance(exc, harness.Mismatch), f"planted bug {plant!r} went unnoticed by the core-packed corpus"


def test_the_protocol_oracle_catches_an_fd_leak(monkeypatch):
    from vhostsplice.device import backend
    monkeypatch.setattr(backend, "close_fds", lambda fds: None)
    exc = _first_failure("protocol", proto.run_one)
    assert isinstance(exc, proto.FdLeak), exc


def test_the_protocol_oracle_catches_an_undocumented_exception(monkeypatch):
    from vhostsplice.vhostuser import protocol as P

    def broken(msg):
        raise KeyError("planted")
    monkeypatch.setattr(P, "decode_vring_state", broken)
    exc = _first_failure("protocol", proto.run_one)
    assert isinstance(exc, proto.Undocumented), exc


def test_guest_memory_is_fenced_by_guard_pages():
    """A write one byte past a guest memory area is a SIGSEGV, not a silent corruption."""
    code = ("import sys, ctypes; sys.path.insert(0, %r); import harness; m = harness.memory(); "
            "a = m.areas[1]; base = ctypes.addressof(ctypes.c_char.from_buffer(m.map)); "
            "end = ctypes.addressof(ctypes.c_char.from_buffer(a, len(a) - 1)) + 1; "
            "a[len(a) - 1] = 1; print('inside ok', flush=True); ctypes.c_char.from_address(end).value = b'x'"
            % HERE)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "inside ok" in res.stdout
    assert res.returncode == -signal.SIGSEGV, (res.returncode, res.stderr)


@needs_root
def test_the_core_oracle_catches_unlogged_writes():
    """A core whose ring logging points one page off (used-ring writes land unmarked): the dirty-log check
    after each poll must expose it on the corpus as a Mismatch."""
    class OffByAPage(Datapath):
        def set_ring_log(self, index, enabled, log_addr):
            super().set_ring_log(index, enabled, log_addr + 4096)
    exc = _first_failure("core", lambda d: harness.run_one(d, OffByAPage))
    assert isinstance(exc, harness.Mismatch) and "not logged" in str(exc), exc
