"""`vhostsplice serve`: a multi-queue device, its options -> serve/supervisor.py's ServeConfig.

What each worker runs is `vhostsplice run` with a command line serve's template builds (template.WorkerSpec):
the template makes its recipe once, by `run`'s own parse and checks (run.py's recipe_of), and each worker
runs it with its own values (run.py's serve_worker). Both are handed to serve here, as plain arguments.
"""
from __future__ import annotations

import click

from .options import (CONTEXT, busy_poll_arg, busy_poll_option, exit_table_help, ownership, ownership_options,
                      sandbox_option, signals_held_until_the_loop, stats_options)
from .run import recipe_of, serve_worker


@click.command(context_settings=CONTEXT, epilog=exit_table_help())
@click.option("--socket-path", metavar="PATH", required=True, envvar="VHOSTSPLICE_SOCKET",
              help="Listen on this unix socket (mode 0600) for the multi-queue front-end.")
@click.option("--tap", metavar="NAME", required=True, envvar="VHOSTSPLICE_TAP",
              help="Multi-queue tap: each worker opens its own queue of it.")
@click.option("--queues", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Queue pairs offered (GET_QUEUE_NUM); one worker process per pair.")
@click.option("--cpus", metavar="LIST", envvar="VHOSTSPLICE_CPUS",
              help="CPUs to spread the workers over: pair k runs on the k-th CPU of the list (cycling).")
@click.option("--restart", type=click.Choice(["on-failure", "always", "never"]), default="on-failure",
              show_default=True, help="Replace a worker that exits, by the restart policy (`vhostsplice exit-codes`): "
                                      "on-failure what a restart can cure, always also a clean exit, never none.")
@click.option("--events", metavar="FILE", help="Append the JSON event lines here instead of stderr.")
@click.option("--on-guest-error", type=click.Choice(["count", "exit"]), default="count", show_default=True,
              help="Passed to every worker (see `run --help`).")
@click.option("--offloads/--no-offloads", default=True, show_default=True, help="Passed to every worker.")
@click.option("--packed/--no-packed", default=True, show_default=True, envvar="VHOSTSPLICE_PACKED",
              help="Offer the packed virtqueue (VIRTIO_F_RING_PACKED); --no-packed is passed to every worker.")
@stats_options
@ownership_options
@sandbox_option
@busy_poll_option
@signals_held_until_the_loop
def serve(socket_path, tap, queues, cpus, restart, events, on_guest_error, offloads, packed, stats_file, stats_format,
          stats_interval, socket_mode, socket_group, allow_uid, run_as, sandbox, busy_poll, host_io):
    """Serve a multi-queue device: one `vhostsplice run --fd N` worker per queue pair.

    The supervisor terminates the vhost-user socket (features, MQ, GET_QUEUE_NUM, memory table) and hands
    device rings 2k and 2k+1 to worker k over a socketpair, as rings 0 and 1. A worker that exits is
    reported as a JSON event line (pair, pid, exit code, errno name, counters), its rings' VRING_ERR
    eventfds are signalled when it failed, and it is replaced per --restart with the policy's back-off
    (`vhostsplice exit-codes`: doubling to a cap, jittered, reset by a stable run; each exit event carries
    it); the replacement resumes from used->idx (a packed ring: from the pair's state page, README
    "Restarts"). The tap is held by a detached queue for serve's lifetime,
    so it and what the host set on it outlive the workers. Workers are forked (no exec) by a template
    process started with serve, which then confines itself (docs/security.md "serve"); `ps` names them
    vs-serve, vs-template, vs-worker. SIGTERM/SIGINT stop every worker, exit 0 (from
    serve's start: held until its loop runs; workers start with them blocked).
    Ownership as for `run`: one front-end, --socket-mode/--socket-group, --allow-uid (refused peers are
    'refused' events), --user (every worker drops to it once its tap queue is open). Live migration as
    for `run`: every worker logs into the one dirty log (exit events carry each worker's dirty_log), and
    the guest's announce goes out once (docs/migration.md).

    \b
    Example:
      vhostsplice serve --socket-path /run/vm1/net.sock --tap vm1net --queues 4 --cpus 2-5
      vhostsplice serve --socket-path /run/vm1/net.sock --tap vm1net --queues 2 --user qemu --allow-uid qemu
    """
    from ..worker.counters import StatsOutput
    from ..worker.placement import parse_cpus
    from ..serve.supervisor import ServeConfig, run_supervisor
    from ..serve.template import WorkerEntry
    from ..worker.runner import check_stats
    cpu_list = sorted(parse_cpus(cpus)) if cpus else []
    worker_args = ["--on-guest-error", on_guest_error, "--sandbox", sandbox, "--busy-poll", busy_poll_arg(busy_poll),
                   "--host-io", host_io] + \
        ([] if offloads else ["--no-offloads"]) + ([] if packed else ["--no-packed"])
    owner = ownership(socket_path, socket_mode, socket_group, allow_uid, run_as)
    if run_as is not None:
        worker_args += ["--user", run_as]
    check_stats(stats_file, stats_interval)
    config = ServeConfig(tap=tap, queues=queues, cpus=cpu_list, restart=restart, events=events,
                         worker_args=worker_args, ownership=owner, offloads=offloads, sandbox=sandbox,
                         packed=packed, worker=WorkerEntry(make=recipe_of, start=serve_worker),
                         stats=StatsOutput(stats_file, stats_format, stats_interval) if stats_file else None)
    return run_supervisor(socket_path=socket_path, config=config)

