"""Test tools: a driver-side split virtqueue (virtq), a pure-Python vhost-user front-end (frontend), the
one fake host packet fd for back-end tests (hostfd), the fake worker side for tests of serve's device
(workers)."""
