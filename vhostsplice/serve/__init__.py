"""`vhostsplice serve`: the supervisor of a multi-queue device (supervisor.py: one worker process per
queue pair, restarts, its loop), what the device answers itself and where each request goes
(serve_device.py), the warm template that forks the workers (template.py), and how a child runs the very
vhostsplice this process imported (selfexec.py).

A layer of docs/architecture.md: it imports the worker layer and everything below it, never the tools
or the command line.
"""
