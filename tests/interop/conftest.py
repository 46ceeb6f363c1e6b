"""Interop tests: real peers (DPDK testpmd, QEMU on every column of tests/support/peers.py) against the
`vhostsplice run` worker, as root, in a netns."""
from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import sys

import pytest

from support import testpmd
from support.netns import NetNs, is_root
from support.peers import COLUMNS, SPLIT, Column, Layout, Qemu, find_qemu, require_peer, runs


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
    """Root and dpdk-testpmd (tests/run.sh installs it); else skip, or fail under CI (peers.require_peer)."""
    require_peer(None if is_root() else "needs root (ip netns, /dev/net/tun)")
    require_peer(None if testpmd.available() else
                 f"{testpmd.TESTPMD} not found (apt-get install dpdk-dev; tests/run.sh does it)")


@pytest.fixture
def vhostsplice_cmd() -> list[str]:
    return vhostsplice_argv()


# -- QEMU guests (tests/support/guest.py) on every column of the peer matrix (tests/support/peers.py) ------
@pytest.fixture(scope="session", params=COLUMNS, ids=[c.id for c in COLUMNS])
def column(request) -> Column:
    """One column of the peer matrix: every test using it (or qemu_peer, image) runs once per column."""
    return request.param


@pytest.fixture(scope="session")
def qemu_peer(column) -> Qemu:
    """The column's QEMU (7.2 installed; 10.0 unpacked by tests/guest/qemu.sh, once per session)."""
    qemu, missing = find_qemu(column)
    require_peer(missing)
    return qemu


@pytest.fixture(scope="session")
def column_image(column, qemu_peer):
    """The column's guest image (tests/guest/build.sh --kernel SERIES, cached; built once per session)
    booted by the column's QEMU. Missing root or tools: skip, or fail under CI."""
    from support import guest as G
    require_peer(None if os.geteuid() == 0 else "needs root (ip netns, /dev/net/tun)")
    missing = G.missing_tools()
    require_peer(missing and f"missing {', '.join(missing)} (apt-get install $(tests/guest/build.sh --deps))")
    built = G.build_image(kernel=column.kernel)
    assert built.kver.startswith(column.kernel + "."), (column, built.kver)
    return dataclasses.replace(built, qemu=qemu_peer.argv, migration_memory=column.migration_memory)


def pytest_collection_modifyitems(config, items):
    """An @on_layouts test runs each column on the layouts that column lists (peers.Column.layouts): the
    other column x layout pairs are deselected (they are not in the matrix), not skipped."""
    def outside(item) -> bool:
        params = getattr(getattr(item, "callspec", None), "params", {})
        return "layout" in params and "column" in params and not runs(params["column"], params["layout"])
    off = [item for item in items if outside(item)]
    if off:
        config.hook.pytest_deselected(items=off)
        items[:] = [item for item in items if not outside(item)]


@pytest.fixture
def layout(request) -> Layout:
    """The test's virtqueue layout: the one peers.on_layouts gave it, else split (QEMU's default)."""
    return getattr(request, "param", SPLIT)


@pytest.fixture
def image(column_image, layout):
    """The column's image whose guests get the layout's device properties (every Guest of the test)."""
    return dataclasses.replace(column_image, device_opts=layout.device)


@pytest.fixture(scope="session")
def ethtool(tmp_path_factory):
    """A tiny SIOCETHTOOL program for the guest (its image has no ethtool), handed over through fw_cfg."""
    from support import guest as G
    return G.build_vs_ethtool(tmp_path_factory.mktemp("vs-ethtool"))
