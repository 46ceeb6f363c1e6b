"""The virtio-net device a worker is: one handler per vhost-user request (backend.py, its ring requests
in ring_requests.py, its memory-table requests in memory_requests.py), what it offers (features.py),
per-ring control state (vring.py), the mapped guest memory and dirty log (memory.py), where a ring
resumes (statepage.py), and the only Python that touches the C core (datapath.py: vhostsplice._vs_core,
built from _core/).

A layer of docs/architecture.md: it imports the vocabulary, the wire (vhostuser/) and the host side
(host/), never a layer above.
"""
