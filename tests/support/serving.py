"""`vhostsplice serve` as a test fixture: started inside a HostNet's namespace, cleaned up by PID."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from support import guest as G
from support.waiting import terminate
from vhostsplice.serve.selfexec import self_argv, self_env


class Served:
    """`vhostsplice serve --queues N --cpus LIST --events FILE` inside a HostNet's namespace (on its tap, or `tap`).

    On exit: SIGTERM (our own child, by PID), then SIGKILL; workers it left behind (only if it was
    SIGKILLed) are killed by the PIDs its start events name, after checking they are vhostsplice."""

    def __init__(self, net: G.HostNet, workdir: Path, queues: int = 4, cpus: str = "0-1", tap: str | None = None):
        self.sock, self.events_path = workdir / "dev.sock", workdir / "serve.events.jsonl"
        self.stderr_path = workdir / "serve.stderr"
        argv = [*self_argv(), "serve", "--socket-path", str(self.sock), "--tap", tap or net.tap,
                "--queues", str(queues), "--cpus", cpus, "--events", str(self.events_path)]
        with net.ns.entered(), open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(argv, env=self_env(), stdin=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 30
        while not self.sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise AssertionError(f"serve did not listen (exit {self.proc.returncode}):\n{self.stderr()}")
            time.sleep(0.05)

    def events(self, kind: str | None = None) -> list[dict]:
        return [e for e in G.read_events(self.events_path) if kind is None or e["event"] == kind]

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-3000:]

    def wait_exit(self, timeout: float = 15.0) -> int:
        """The supervisor ends by itself when QEMU leaves; SIGTERM it if it has not in `timeout` s."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(30)

    def close(self) -> None:
        terminate(self.proc)
        ended = {e["pid"] for e in self.events("exit")}
        for e in self.events("start"):
            if e["pid"] not in ended and G.pid_is(e["pid"], "vhostsplice"):
                os.kill(e["pid"], signal.SIGKILL)

    def __enter__(self) -> "Served":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
