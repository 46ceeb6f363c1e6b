"""`vhostsplice serve`: the supervisor of a multi-queue device: its loop (supervisor.py), one worker
process per queue pair over its life, restarts included (pairs.py), what the device answers itself,
where each request goes and what a new worker is told (serve_device.py; its memory table:
device_memory.py), the warm template that forks the workers (template.py), and how a child runs the very
vhostsplice this process imported (selfexec.py).

A layer of docs/architecture.md: it imports the worker layer and everything below it, never the tools
or the command line.
"""
