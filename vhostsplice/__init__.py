"""vhostsplice: a userspace virtio-net back-end, one virtqueue pair per process."""

__version__ = "0.1.0"
