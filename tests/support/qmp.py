"""A minimal QMP client (QEMU's machine protocol) for the interop tests: migration, memory hot-plug."""
from __future__ import annotations

import json
import socket
import time
from pathlib import Path


class Qmp:
    """A minimal QMP client over QEMU's `-qmp unix:PATH,server=on,wait=off` socket."""

    def __init__(self, path: Path, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.sock.settimeout(timeout)
        self.file = self.sock.makefile("rb")
        self._read()                            # the greeting
        self.cmd("qmp_capabilities")

    def _read(self) -> dict:
        line = self.file.readline()
        if not line:
            raise ConnectionError("QMP socket closed")
        return json.loads(line)

    def cmd(self, name: str, **arguments) -> object:
        self.sock.sendall(json.dumps({"execute": name, **({"arguments": arguments} if arguments else {})}).encode())
        while True:
            msg = self._read()
            if "return" in msg:
                return msg["return"]
            if "error" in msg:
                raise AssertionError(f"QMP {name}: {msg['error']}")

    def close(self) -> None:
        self.file.close()
        self.sock.close()
