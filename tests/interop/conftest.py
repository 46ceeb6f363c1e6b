"""Interop tests: real peers (DPDK testpmd) against the `vhostsplice run` worker, as root, in a netns."""
from __future__ import annotations

import os
import shlex
import shutil
import sys

import pytest

from support import testpmd
from support.netns import NetNs, is_root


def vhostsplice_argv() -> list[str]:
    """The worker command: $VHOSTSPLICE (shell words) or `vhostsplice` on PATH.

    VHOSTSPLICE="python3 tests/support/testpmd.py" runs the same tests against DPDK's back-end.
    """
    if os.environ.get("VHOSTSPLICE"):
        return shlex.split(os.environ["VHOSTSPLICE"])
    found = shutil.which("vhostsplice") or shutil.which(os.path.join(os.path.dirname(sys.executable),
                                                                       "vhostsplice"))
    return [found] if found else [sys.executable, "-m", "vhostsplice"]


@pytest.fixture
def netns():
    if not is_root():
        pytest.skip("needs root to create a network namespace")
    with NetNs() as ns:
        yield ns


@pytest.fixture
def needs_testpmd():
    """Skip unless root and dpdk-testpmd is installed (tests/run.sh installs it)."""
    if not is_root():
        pytest.skip("needs root (ip netns, /dev/net/tun)")
    if not testpmd.available():
        msg = f"{testpmd.TESTPMD} not found (apt-get install dpdk-dev; tests/run.sh does it)"
        if os.environ.get("CI") == "true":  # CI must not pass by skipping the interop tests
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture
def vhostsplice_cmd() -> list[str]:
    return vhostsplice_argv()


# -- QEMU guests (tests/support/guest.py): one image and one vs-ethtool for the whole session -------------
@pytest.fixture(scope="session")
def image():
    """The guest initramfs (tests/guest/build.sh, cached). Missing tools fail under CI, else skip."""
    from support import guest as G
    if os.geteuid() != 0:
        pytest.skip("needs root (ip netns, /dev/net/tun)")
    missing = G.missing_tools()
    if missing:
        msg = f"missing {', '.join(missing)} (apt-get install $(tests/guest/build.sh --deps))"
        if os.environ.get("CI", "").lower() in ("1", "true") or os.environ.get("VHOSTSPLICE_REQUIRE_GUEST") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return G.build_image()


@pytest.fixture(scope="session")
def ethtool(image, tmp_path_factory):
    """A tiny SIOCETHTOOL program for the guest (its image has no ethtool), handed over through fw_cfg."""
    from support import guest as G
    return G.build_vs_ethtool(tmp_path_factory.mktemp("vs-ethtool"))
