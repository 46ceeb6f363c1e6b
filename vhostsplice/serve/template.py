"""serve's warm template (issues 18 and 17): the process that starts serve's workers.

`serve` forks it once, after the worker's modules are imported and before serve confines itself. The
template then starts every worker by fork alone (no exec): a worker shares the interpreter, the imported
modules and the C core's pages with the template and its siblings copy-on-write (gc.freeze keeps the
collector from touching them), instead of an interpreter of its own per pair; and serve itself never
forks, execs or signals a worker, so it confines itself without any of that (sandbox/serve.py).

Before its first fork the template makes the workers' recipe, once (WorkerEntry.make: `run`'s own parse
and checks, handed down by the command line), from the `run` command line WorkerSpec describes; each
worker runs that recipe with the values of its own (WorkerSpec.values: its fds, stats file and CPU),
parsing nothing (WorkerEntry.start); a recipe the template could not make, each worker tries to make once
more itself (Unmade). The template takes no orders it could be abused with: serve (which
parses the hostile front-end's messages, so may be compromised) names only a pair index and hands the
pair's fds; what a worker runs is made here from what serve was started with (WorkerSpec, fixed at fork
time), and only this template's own children can be signalled, with SIGTERM or SIGKILL. Messages are
JSON on a SOCK_SEQPACKET socketpair, fds by SCM_RIGHTS:
  serve -> template  {"op": "spawn", "pair": k} + [channel fd, state fd?]  ->  {"started": pid}
                     {"op": "signal", "pid": p, "sig": s}
  template -> serve  {"exit": pid, "code": c} when a worker ends (Popen's returncode: -N for signal N)
The template ends when serve's end of the socket closes and its last worker has ended.
"""
from __future__ import annotations

import functools
import gc
import json
import os
import select
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from ..sandbox.serve import name_process
from . import freespace

MAX_MESSAGE = 4096
MAX_FD = os.sysconf("SC_OPEN_MAX")      # no fd at or above the limit was opened (closerange's end)
SIGNALS_ALLOWED = (signal.SIGTERM, signal.SIGKILL)


@dataclass(frozen=True)
class WorkerSpec:
    """What serve's workers are, fixed when the template is forked: the `run` command line they share, and
    what each pair has of its own (values)."""

    tap: str
    run_dir: str
    cpus: tuple[int | None, ...]            # pair k -> its CPU (or None)
    worker_args: tuple[str, ...] = ()
    stats_interval: float | None = None
    env: dict = field(default_factory=dict)

    def values(self, pair: int, channel_fd: int, state_fd: int | None) -> dict:
        """What pair PAIR's worker has of its own (RunRecipe.for_pair's arguments)."""
        cpu = self.cpus[pair]
        return {"inherited_fd": channel_fd, "state_fd": state_fd,
                "stats_file": os.path.join(self.run_dir, f"pair{pair}.json"), "cpu": None if cpu is None else str(cpu)}

    def argv(self, pair: int, channel_fd: int, state_fd: int | None) -> list[str]:
        """Pair PAIR's worker as a `vhostsplice` command line: what a lone `run` would be told to be it."""
        own = self.values(pair, channel_fd, state_fd)
        argv = ["run", "--fd", str(channel_fd), "--tap", self.tap, "--stats-file", own["stats_file"], *self.worker_args]
        if state_fd is not None:
            argv += ["--state-fd", str(state_fd)]
        if self.stats_interval:
            argv += ["--stats-interval", str(self.stats_interval)]
        if own["cpu"] is not None:
            argv += ["--cpu", own["cpu"]]
        return argv


@dataclass(frozen=True)
class WorkerEntry:
    """How a worker is made and run, handed down by the command line (cli/serve.py: cli/run.py's recipe_of
    and serve_worker; serve imports no command line). make: a worker's command line -> its recipe (run in
    the template, once); start: the recipe and one worker's values -> that worker's exit code."""

    make: Callable[[list[str]], Any]
    start: Callable[[Any, dict], int]


@dataclass(frozen=True)
class Unmade:
    """A recipe the template's `make` refused (`error`). Each worker tries `remake` once more, in itself (a
    refusal can be passing: an NSS lookup of `--user` that failed once), and runs that recipe; if it is
    refused again the worker fails with that error, as `run` with its command line does (WorkerEntry.start
    makes the error its exit code). So one refusal in the template does not hold for serve's whole life."""

    error: Exception
    remake: Callable[[], Any]

    def for_pair(self, **values):
        return self.remake().for_pair(**values)


class TemplateError(RuntimeError):
    pass


class WorkerHandle:
    """What serve holds of a worker the template started: the subset of Popen serve uses."""

    def __init__(self, template: "Template", pid: int):
        self.template, self.pid, self.returncode = template, pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.template.exit_code(self.pid, timeout=0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self.template.exit_code(self.pid, timeout=timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            self.template.signal(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Template:
    """serve's side: fork the template, ask it for workers, learn how they ended."""

    def __init__(self, spec: WorkerSpec, entry: WorkerEntry, keep_fds: tuple[int, ...] = ()):
        """entry: how the workers' recipe is made (once, in the template, before its first fork) and run
        (in each worker), handed down by `serve`'s command so that this module needs no import of the
        command line."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.exits: dict[int, int] = {}
        self.pid = os.fork()
        if self.pid == 0:           # the template: never returns
            ours.close()
            code = 1
            try:
                code = _template_main(theirs, spec, entry, keep_fds)
            finally:
                os._exit(code)
        theirs.close()
        self.sock = ours

    def spawn(self, pair: int, fds: list[int]) -> WorkerHandle:
        socket.send_fds(self.sock, [json.dumps({"op": "spawn", "pair": pair}).encode()], fds)
        while True:
            msg = self._recv(None)
            if "started" in msg:
                return WorkerHandle(self, msg["started"])
            if "error" in msg:
                raise TemplateError(msg["error"])

    def signal(self, pid: int, sig: int) -> None:
        self.sock.send(json.dumps({"op": "signal", "pid": pid, "sig": int(sig)}).encode())

    def exit_code(self, pid: int, timeout: float | None) -> int | None:
        """The worker's returncode once the template reported it; None if not within timeout."""
        while pid not in self.exits:
            if not select.select([self.sock], [], [], timeout)[0]:
                return None
            self._recv(0)
        return self.exits.pop(pid)

    def _recv(self, timeout: float | None) -> dict:
        data = self.sock.recv(MAX_MESSAGE)
        if not data:
            raise TemplateError("serve's worker template ended")
        msg = json.loads(data)
        if "exit" in msg:
            self.exits[msg["exit"]] = msg["code"]
        return msg

    def close(self) -> None:
        """serve ends: the template ends once its last worker has (workers end with their channels)."""
        self.sock.close()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


# ------------------------------------------------------------------------------------ the template side

def _template_main(sock: socket.socket, spec: WorkerSpec, entry: WorkerEntry, keep_fds: tuple[int, ...]) -> int:
    name_process(b"vs-template")
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)           # serve decides when workers stop
    _close_fds_except({0, 1, 2, sock.fileno(), *keep_fds})
    os.environ.clear()          # the workers' environment, set once here (the template itself execs nothing)
    os.environ.update(spec.env)
    rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wfd)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
    worker = functools.partial(entry.start, _warm(spec, entry.make))     # a worker's values -> its exit code
    children: set[int] = set()
    open_ = True
    while open_ or children:
        ready = select.select([sock, rfd] if open_ else [rfd], [], [])[0]
        if rfd in ready:
            os.read(rfd, 512)
        _reap(sock if open_ else None, children)
        if open_ and sock in ready:
            open_ = _order(sock, spec, worker, children)
    return 0


def _warm(spec: WorkerSpec, make: Callable[[list[str]], Any]):
    """What every worker would do first, done once here, then frozen out of the collector's way: its modules
    imported, libseccomp opened, its recipe made (from pair 0's command line: each worker puts in its own
    values), and the allocators' free space taken (freespace.py). Every page a worker writes after the
    fork becomes its own (CPython 3.11 writes reference counts even to read an object). Returns the recipe."""
    from ..worker import loop, runner  # noqa: F401  (cli and click came with serve)
    from ..sandbox import seccomp
    seccomp.library()
    try:
        recipe = make(spec.argv(0, 0, 0))       # its fds are placeholders: each worker's replace them
    except Exception as exc:  # noqa: BLE001  (any refusal of `run`'s is each worker's outcome)
        recipe = Unmade(exc, functools.partial(make, spec.argv(0, 0, 0)))
    gc.collect()
    try:
        freespace.take()            # last: the workers' allocations then start pages of their own
    except (OSError, ValueError):   # only memory is at stake
        pass
    gc.freeze()
    return recipe


def _order(sock: socket.socket, spec: WorkerSpec, worker: Callable[[dict], int], children: set[int]) -> bool:
    """One message from serve. False: serve's end closed."""
    try:
        data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, 2)
    except OSError:
        return False
    try:
        if not data:
            return False
        msg = json.loads(data)
        if msg.get("op") == "spawn":
            _spawn(sock, spec, worker, msg, fds, children)
        elif msg.get("op") == "signal" and msg.get("pid") in children and msg.get("sig") in SIGNALS_ALLOWED:
            os.kill(msg["pid"], msg["sig"])
        else:
            sock.send(json.dumps({"error": f"refused: {str(msg)[:200]}"}).encode())
    except (ValueError, TypeError, OSError) as exc:
        sock.send(json.dumps({"error": f"refused: {exc}"}).encode())
    finally:
        for fd in fds:
            os.close(fd)
    return True


def _spawn(sock: socket.socket, spec: WorkerSpec, worker: Callable[[dict], int], msg: dict, fds: list[int],
           children: set[int]) -> None:
    pair = msg.get("pair")
    if not isinstance(pair, int) or not 0 <= pair < len(spec.cpus) or len(fds) not in (1, 2):
        raise ValueError(f"spawn: pair {pair!r} with {len(fds)} fds")
    values = spec.values(pair, fds[0], fds[1] if len(fds) == 2 else None)
    # SIGCHLD held until the pid is known and "started" is sent: a worker that ends at once is reaped
    # (and reported) after that, never before
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        pid = os.fork()
        if pid == 0:
            _worker_main(sock, worker, values, fds)
        children.add(pid)
        sock.send(json.dumps({"started": pid}).encode())
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})


def _worker_main(sock: socket.socket, worker: Callable[[dict], int], values: dict, fds: list[int]) -> None:
    """The forked worker: the template's fds closed (the environment is the template's: serve's workers'),
    stop signals held (the worker's loop releases them), then the recipe with its VALUES in this process
    (`worker`: WorkerEntry.start with the template's recipe)."""
    code = 70
    try:
        sock.close()
        name_process(b"vs-worker")
        _close_fds_except({0, 1, 2, *fds})
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, {signal.SIGTERM, signal.SIGINT, signal.SIGUSR1})
        try:
            code = worker(values)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _reap(sock: socket.socket | None, children: set[int]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        if sock is not None:
            try:
                sock.send(json.dumps({"exit": pid, "code": code}).encode())
            except OSError:
                pass


def _close_fds_except(keep: set[int]) -> None:
    """Close every fd but `keep` (close_range between them: nothing listed, nothing allocated per fd).
    An empty range is never passed: CPython 3.11 turns closerange(n, n) into close_range(n, n - 1), which
    the kernel takes as n up to the largest fd."""
    low = 0
    for fd in [*sorted(keep), MAX_FD]:
        if low < fd:
            os.closerange(low, fd)
        low = fd + 1
