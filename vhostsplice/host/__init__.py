"""The host side of a queue pair: host packet fds (tap queues, inherited fds, AF_PACKET sockets), how one
follows the negotiated state and its offloads, persistent taps (`vhostsplice tap`), the kernel's tun and
packet socket numbers (tun.py), and netlink.

A layer of docs/architecture.md: it imports only the vocabulary (errors.py, spec.py), never a layer above.
"""
