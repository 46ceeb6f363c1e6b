"""`vhostsplice run`: one queue pair, in two steps: its options -> a recipe (`make_recipe`: worker/runner.py's
RunRecipe, checked), and the recipe run (runner.run_worker). A lone `run` does both. serve's template makes
one recipe by the same parse and the same step before its first fork (`recipe_of`), and each worker it
forks runs it with its own fds, stats file and CPU (`serve_worker`): no click, no parse in a worker.
"""
from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING

import click

from .options import (CONTEXT, PROG, busy_poll_option, exit_table_help, from_environment, ownership,
                      ownership_options, sandbox_option, signals_held_until_the_loop, stats_options)
from .outcome import Process, exit_code, log_to_stderr

if TYPE_CHECKING:
    from ..worker.runner import RunRecipe


@click.command(context_settings=CONTEXT, epilog=exit_table_help())
@click.option("--socket-path", metavar="PATH", envvar="VHOSTSPLICE_SOCKET",
              help="Listen on this unix socket (mode 0600) and serve the first front-end that connects.")
@click.option("--connect", "connect_path", metavar="PATH",
              help="Connect to a front-end that listens on PATH (QEMU -chardev socket,server=on).")
@click.option("--fd", "inherited_fd", type=int, metavar="N",
              help="Serve an already connected unix socket inherited as fd N (QEMU backend-program convention).")
@click.option("--tap", metavar="NAME", envvar="VHOSTSPLICE_TAP",
              help="Tap interface to open one queue of (created if absent, multi-queue, vnet header).")
@click.option("--host-fd", "host_fd", type=click.IntRange(0), metavar="N",
              help="Use inherited fd N as the host side: a tap or macvtap queue (its vnet header is asked, not "
                   "assumed), an AF_PACKET socket bound to an interface, or a connected unix SOCK_DGRAM/"
                   "SOCK_SEQPACKET or UDP socket (bare frames: no offloads), or a stream socket with --framing qemu. "
                   "Instead of --tap.")
@click.option("--framing", type=click.Choice(["none", "qemu"]), default="none", show_default=True,
              help="With --host-fd of a connected stream socket (unix or TCP): 'qemu' frames each packet with a "
                   "4-byte big-endian length, as QEMU's -netdev stream does. A stream socket without it is EINVAL.")
@click.option("--packet", metavar="IFNAME",
              help="Use an AF_PACKET socket bound to interface IFNAME (all protocols; PACKET_VNET_HDR with "
                   "--offloads). Instead of --tap.")
@click.option("--mtu", type=click.IntRange(68, 65535),
              help="Set the tap's MTU (--tap); with --host-fd/--packet: the MTU to assume (default: the "
                   "interface's, else 1500).")
@click.option("--bridge", metavar="BR", help="Enslave the tap to this existing bridge (--tap only).")
@click.option("--cpu", metavar="LIST", envvar="VHOSTSPLICE_CPU",
              help="Pin this worker to these CPUs, e.g. 2-3,6 (must be in the allowed set).")
@click.option("--nice", type=click.IntRange(-20, 19), help="Scheduling niceness of the worker.")
@click.option("--sched", metavar="POLICY", help="Scheduling policy: fifo:PRIO, rr:PRIO or other.")
@busy_poll_option
@click.option("--on-guest-error", type=click.Choice(["count", "exit"]), default="count", show_default=True,
              help="Per-chain guest faults (bad address, bad descriptor) are counted, or end the worker (EFAULT).")
@click.option("--offloads/--no-offloads", default=True, show_default=True,
              help="Offer checksum/TSO/UFO/ECN offloads, and USO where the host fd takes it (passed through the "
                   "tap's vnet header). With "
                   "--no-offloads a tap opened by --tap carries no vnet header (unless other queues of it "
                   "already do): the kernel then builds none per frame.")
@click.option("--packed/--no-packed", default=True, show_default=True, envvar="VHOSTSPLICE_PACKED",
              help="Offer the packed virtqueue (VIRTIO_F_RING_PACKED, virtio 1.2 2.8); --no-packed offers split "
                   "rings only.")
@click.option("--state-file", metavar="PATH", envvar="VHOSTSPLICE_STATE_FILE",
              help="Keep the rings' positions in this file on tmpfs or ramfs (e.g. /dev/shm/vm1-net0.state; "
                   "created 0600, refused elsewhere: EINVAL), updated around every batch, so a worker started "
                   "again with the same file resumes where this one stopped even if it was killed: the only way "
                   "a packed ring can resume (README \"Restarts\"). serve and vhostsplice-supervise hold one for you.")
@click.option("--state-fd", type=click.IntRange(0), metavar="N", envvar="VHOSTSPLICE_STATE_FD",
              help="As --state-file, for an inherited memfd or tmpfs file N (serve passes one to each worker).")
@stats_options
@ownership_options
@sandbox_option
@click.option("--print-capabilities", is_flag=True,
              help='Print {"type": "net"} and exit (vhost-user backend program convention).')
@click.option("--print-sandbox", is_flag=True,
              help="Print the syscall allow-list of --sandbox strict and what this "
                   "kernel supports (seccomp actions, Landlock ABI), as JSON, and exit.")
@signals_held_until_the_loop
def run(print_capabilities, print_sandbox, **options):
    """Serve one virtqueue pair (ring 0 RX, ring 1 TX) until stopped.

    Exactly one of --socket-path, --connect or --fd says where the front-end is, and one of --tap,
    --host-fd or --packet where the packets go (README: "Host packet fds"). The worker blocks in the
    calling thread; SIGTERM or SIGINT stop it with exit 0; SIGUSR1 prints the counters (JSON) while it runs.
    On exit it prints one JSON object of counters to stderr (or --stats-file).

    Ownership (README: "Ownership and privileges"): one front-end per worker (a second connection is
    closed unserved while the first is served); the socket is 0600 unless --socket-mode; --allow-uid
    checks the peer's uid; --user drops root once the tap and socket are open. A host fd that is the
    control socket is EINVAL; a front-end that sends the host fd back in a message is EPROTO.

    \b
    Examples:
      vhostsplice run --socket-path /run/vm1/net0.sock --tap vm1net0 --cpu 1
      vhostsplice run --socket-path /run/vm1/net0.sock --tap vm1net0 --user qemu --allow-uid qemu
      vhostsplice run --socket-path /run/vm1/net0.sock --host-fd 3 3<>/dev/tap12
      vhostsplice run --socket-path /run/vm1/net0.sock --packet eth1
    """
    if print_capabilities:
        click.echo(json.dumps({"type": "net"}))
        return 0
    if print_sandbox:
        from ..sandbox import describe
        click.echo(json.dumps(describe(), indent=1))
        return 0
    from ..worker.runner import run_worker
    recipe = make_recipe(**options)
    if click.get_current_context().find_object(Process) == Process(own=True):
        from ..errors import mask_before_hold
        from ..worker.entry import exec_lone
        exec_lone(recipe, mask_before_hold())    # returns only where no new interpreter can be started
    return run_worker(recipe)


def make_recipe(*, socket_path, connect_path, inherited_fd, tap, host_fd, framing, packet, mtu, bridge, cpu, nice,
                sched, busy_poll, host_io, on_guest_error, offloads, packed, state_file, state_fd, stats_file,
                stats_format, stats_interval, socket_mode, socket_group, allow_uid, run_as, sandbox) -> RunRecipe:
    """`run`'s options -> the worker's recipe, checked (RunRecipe checks itself; then the ownership options,
    user and group names resolved now: a line wrong in both says what RunRecipe says). In the command's
    context: where a value came from decides what wins."""
    from ..worker.runner import RunRecipe
    if tap and (host_fd is not None or packet) and from_environment("tap"):
        tap = None      # VHOSTSPLICE_TAP is a default; an explicit --host-fd/--packet on the command line wins
    recipe = RunRecipe(socket_path=socket_path, connect_path=connect_path, inherited_fd=inherited_fd, tap=tap or None,
                       host_fd=host_fd, packet=packet or None, framing=framing, mtu=mtu, bridge=bridge, cpu=cpu,
                       nice=nice, sched=sched, fault_exit=on_guest_error == "exit", offloads=offloads, packed=packed,
                       stats_file=stats_file, stats_format=stats_format, stats_interval=stats_interval,
                       sandbox=sandbox, busy_poll_us=busy_poll, state_file=state_file, state_fd=state_fd,
                       host_io=host_io)
    return replace(recipe, ownership=ownership(socket_path, socket_mode, socket_group, allow_uid, run_as))


def recipe_of(argv: list[str]) -> RunRecipe:
    """The recipe `vhostsplice ARGV` (a `run` command line) would run, by the same parse (this command's
    options, their environment variables included) and the same step, not run: serve's template makes its
    workers' one recipe with it (serve/template.py). What `run` refuses raises what `run` raises."""
    if argv[:1] != ["run"]:
        raise click.UsageError(f"a worker's command line is a `run` one, not {argv[:1]}")
    group = click.Context(click.Group(PROG), info_name=PROG)     # messages say `vhostsplice run`
    with run.make_context("run", list(argv[1:]), parent=group) as ctx:
        options = dict(ctx.params)
        prints = options.pop("print_capabilities"), options.pop("print_sandbox")
        if any(prints):
            raise click.UsageError("--print-capabilities/--print-sandbox run no worker", ctx)
        return make_recipe(**options)


def serve_worker(recipe: RunRecipe, values: dict) -> int:
    """A worker of serve's, in the process its template forked: the recipe made once (recipe_of) with this
    worker's own VALUES (RunRecipe.for_pair: checked as `run` checks them), run as `vhostsplice run` runs it:
    the group's set-up of the log (a worker's command line has no -v), the stop signals held until its loop,
    every outcome the exit code main() gives (outcome.py)."""
    log_to_stderr(0)
    return exit_code(lambda: _run_for_pair(recipe, values))


@signals_held_until_the_loop
def _run_for_pair(recipe: RunRecipe, values: dict) -> int:
    from ..worker.runner import run_worker
    return run_worker(recipe.for_pair(**values))
