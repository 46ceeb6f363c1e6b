"""Integration tests: as root, each in its own private network namespace."""
from __future__ import annotations

import pytest

from support.netns import NetNs, entered_netns, is_root


def pytest_collection_modifyitems(config, items):
    """Skip tests marked `root` when not root (CI runs as root, so there they run)."""
    if is_root():
        return
    skip = pytest.mark.skip(reason="needs root (ip netns, /dev/net/tun, CAP_NET_ADMIN)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def netns():
    """A private namespace `vst-<pid>-<n>`, deleted after the test (and only it)."""
    if not is_root():
        pytest.skip("needs root to create a network namespace")
    with NetNs() as ns:
        yield ns


@pytest.fixture
def ns(request):
    """The test module's private namespace (prefix: its NETNS), entered for the test, then removed."""
    with entered_netns(getattr(request.module, "NETNS", "vst")) as ns:
        yield ns
