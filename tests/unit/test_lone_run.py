"""A lone `vhostsplice run` gives its worker an interpreter of its own (worker/entry.py, issue 18): started as a
console script starts it, the worker serves from an interpreter that imported neither click, nor site (and
so no .pth file's imports), nor pyroute2, in the same process, under the same name, with the same exit
codes. No root: the host fd is a socketpair. Not in tests/protocol: the sanitizer run (tests/fuzz/run.py) has
no installed package to start a real worker from, and widens vhostsplice.__path__ (which makes run keep the
worker in its first interpreter, lean_path's last case below)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vhostsplice.testing.frontend import Frontend
from vhostsplice.testing.harness import demo_frame
from vhostsplice.worker import entry

HEADER = "import time: self [us] | cumulative | imported package"


def imports_per_interpreter(stderr: str) -> list[set[str]]:
    """-X importtime's lines, one set of module names per interpreter the process ran (each prints HEADER
    before its first import)."""
    out: list[set[str]] = []
    for line in stderr.splitlines():
        if line == HEADER:
            out.append(set())
        elif line.startswith("import time:") and out:
            out[-1].add(line.rsplit("|", 1)[1].strip())
    return out


@pytest.fixture
def console_script(tmp_path: Path) -> Path:
    """A launcher like the one pip writes for the console script (its name becomes the process's; no -P)."""
    script = tmp_path / "vhostsplice"
    script.write_text(f"#!{sys.executable}\nimport sys\nfrom vhostsplice.cli import main\nsys.exit(main())\n")
    script.chmod(0o755)
    return script


def start(script: Path, tmp_path: Path, host: socket.socket, *args: str) -> tuple[subprocess.Popen, Path]:
    sock, err = tmp_path / "w.sock", tmp_path / "stderr"
    proc = subprocess.Popen([str(script), "run", "--socket-path", str(sock), "--host-fd", str(host.fileno()), *args],
                            pass_fds=[host.fileno()], stdin=subprocess.DEVNULL, stderr=err.open("wb"),
                            env=dict(os.environ, PYTHONPROFILEIMPORTTIME="1"))
    deadline = time.monotonic() + 30
    while not sock.is_socket():
        assert proc.poll() is None and time.monotonic() < deadline, err.read_text()[-2000:]
        time.sleep(0.01)
    return proc, err


def test_the_worker_serves_from_an_interpreter_without_click_site_or_pyroute2(tmp_path, console_script):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    host_fd = str(theirs.fileno()).encode()
    with ours, theirs:
        proc, err = start(console_script, tmp_path, theirs)
        try:
            with Frontend.connect(str(tmp_path / "w.sock"), mem_size=2 << 20, queue_size=256) as fe:
                fe.start()
                fe.post_rx(4, 2048)
                fe.send([demo_frame(1, 60)])
                assert ours.recv(2048) == demo_frame(1, 60)
                ours.send(demo_frame(2, 60))
                fe.wait_used(fe.rx, 1)
                comm = Path(f"/proc/{proc.pid}/comm").read_text().strip()
                cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(30) == 0, err.read_text()[-2000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    first, worker = imports_per_interpreter(err.read_text())     # exactly two interpreters, one after the other
    assert {"site", "click", "vhostsplice.cli.run"} <= first
    assert {"vhostsplice.worker.loop", "vhostsplice.device.datapath", "vhostsplice._vs_core"} <= worker
    assert not {m for m in worker if m == "site" or m.split(".")[0] in ("click", "pyroute2")}
    assert "typing" not in worker       # annotations only, under TYPE_CHECKING: 0.5 MiB (benchmarks/RESULTS.md)
    assert "vhostsplice.cli" not in worker
    assert comm == "vhostsplice"                    # the name the caller started, not the interpreter's
    assert cmdline[-7:-1] == [str(console_script).encode(), b"run", b"--socket-path", str(tmp_path / "w.sock").encode(),
                              b"--host-fd", host_fd]    # the caller's command line, whole


@pytest.mark.parametrize("how, expect", [("closed fd", 9), ("regular file", 22)])
def test_a_set_up_failure_in_the_worker_is_its_exit_code_and_line(tmp_path, console_script, how, expect):
    """A failure in the worker's interpreter ends the process as `run` always did: the errno and one line."""
    target = 99 if how == "closed fd" else os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    cwd = tmp_path / "cwd"          # modules planted where the command runs are never imported
    cwd.mkdir()
    for name in ("json", "os", "vhostsplice"):
        (cwd / f"{name}.py").write_text("raise SystemExit(99)\n")
    try:
        r = subprocess.run([str(console_script), "run", "--socket-path", str(tmp_path / "w.sock"), "--host-fd",
                            str(target)], pass_fds=[] if target == 99 else [target], capture_output=True, text=True,
                           timeout=60, env=dict(os.environ, PYTHONPROFILEIMPORTTIME="1"), cwd=cwd)
    finally:
        if target != 99:
            os.close(target)
    lines = [line for line in r.stderr.splitlines() if not line.startswith("import time:")]
    assert r.returncode == expect
    assert len(imports_per_interpreter(r.stderr)) == 2      # it failed in the worker's interpreter
    assert lines == [lines[0]] and lines[0].startswith(f"vhostsplice: --host-fd {target}")
    assert lines[0].endswith(f"[exit {expect} {'EBADF' if expect == 9 else 'EINVAL'}]")


def test_an_in_process_call_runs_the_worker_in_that_process(tmp_path):
    """main(ARGV) (a test, a caller's own process) never replaces the caller's interpreter."""
    code = "import sys; from vhostsplice.cli import main; sys.exit(main(sys.argv[1:]))"
    r = subprocess.run([sys.executable, "-P", "-c", code, "run", "--socket-path", str(tmp_path / "w.sock"),
                        "--host-fd", "99"], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPROFILEIMPORTTIME="1"))
    assert r.returncode == 9
    assert len(imports_per_interpreter(r.stderr)) == 1


def test_the_worker_gets_the_folder_of_a_package_only_an_import_hook_finds(monkeypatch, tmp_path):
    """An editable install finds its package through a finder its .pth file installs, which the worker's
    interpreter (no site) has not: lean_path hands it the folder; a needed module found nowhere, or found by
    the path as another copy than this interpreter's: None (the worker runs in the first interpreter)."""
    import importlib.util

    import vhostsplice
    hooked = tmp_path / "project" / "vs_fake_pkg"
    hooked.mkdir(parents=True)
    (hooked / "__init__.py").write_text("")

    class Hook:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name != "vs_fake_pkg":
                return None
            return importlib.util.spec_from_file_location(name, hooked / "__init__.py",
                                                          submodule_search_locations=[str(hooked)])

    monkeypatch.setattr(sys, "meta_path", [Hook, *sys.meta_path])
    monkeypatch.setattr(entry, "NEEDED", ("vhostsplice", "vs_fake_pkg"))
    path = entry.lean_path()
    assert path == [*[p for p in sys.path if isinstance(p, str)], str(tmp_path / "project")]
    other = tmp_path / "other" / "vs_fake_pkg"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("")
    monkeypatch.setattr(sys, "path", [*sys.path, str(tmp_path / "other")])
    assert entry.lean_path() is None            # the path would import another copy
    monkeypatch.setattr(entry, "NEEDED", ("vhostsplice", "vs_no_such_module"))
    assert entry.lean_path() is None            # found nowhere
    monkeypatch.setattr(entry, "NEEDED", ("vhostsplice",))
    assert entry.lean_path() is not None
    monkeypatch.setattr(vhostsplice, "__path__", [str(tmp_path / "core-build"), *vhostsplice.__path__])
    assert entry.lean_path() is None            # a sitecustomize put another build first: only here


CHILD = """import os, signal, sys
from vhostsplice.cli.run import recipe_of
from vhostsplice.worker.entry import lone
sys.argv = ["vhostsplice"] + sys.argv[1:]
if sys.argv[1] == "lone":
    recipe = recipe_of(["run", "--socket-path", sys.argv[2], "--host-fd", "99"]).to_plain()
    code = lone({"path": sys.path, "argv": sys.argv, "recipe": recipe, "level": 30, "mask": [], "comm": ""})
else:
    from vhostsplice.cli import main
    code = main()
os.kill(os.getpid(), signal.SIGTERM)     # a stop that comes as the process shuts down
sys.exit(code)
"""


@pytest.mark.parametrize("how, expect", [("lone", 9), ("exit-codes", 0)])
def test_a_stop_signal_during_shutdown_leaves_the_exit_code(tmp_path, how, expect):
    """Once the outcome is decided a stop signal stays pending: the process ends with its code, never by the
    signal (Python's shutdown puts the default action back)."""
    args = [how, str(tmp_path / "w.sock")] if how == "lone" else [how]
    r = subprocess.run([sys.executable, "-P", "-c", CHILD, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == expect, r.stderr[-2000:]
