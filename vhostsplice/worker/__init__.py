"""One queue pair's worker: its epoll loop (loop.py: control socket, kick eventfds, the host fd, signals),
its assembly from the command line (runner.py: door, host fd, state page, ownership, sandbox), where it
runs (placement.py: CPUs, niceness, scheduling), its stats dict and --stats-file (report.py) and its
counters rendered (counters.py: JSON, Prometheus).

A layer of docs/architecture.md: it imports the layers below it (device/, host/, vhostuser/, sandbox/)
and the vocabulary, never serve/, the tools or the command line.
"""
BUSY_POLL_AUTO = -1     # WorkerConfig.busy_poll_us for `--busy-poll auto`: the adaptive window (loop.py)
