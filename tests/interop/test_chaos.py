"""The bounded chaos run (CI): serve --queues 2 under DPDK txonly with its workers killed (one pair, and
both at once), supervise's front-end killed, both stopped mid-start-up. Everything the rounds check
(tests/chaos/engine.py) must hold; a missing testpmd fails under CI=true (conftest's needs_testpmd).
The same engine runs on demand for longer: python3 -P tests/chaos/engine.py --minutes 10."""
from __future__ import annotations

import pytest

from chaos.engine import Chaos, run
from chaos.report import summarize

pytestmark = [pytest.mark.root, pytest.mark.interop, pytest.mark.slow]


def test_chaos_bounded(needs_testpmd, tmp_path):
    chaos = run(tmp_path, serve_kills=12, front_kills=4, chaos=Chaos(fail_fast=True))
    summary = summarize(chaos, None)
    assert not chaos.failures, "\n".join(chaos.failures)
    assert summary["worker_kills"] == 12 + 3 and summary["front_end_kills"] == 4     # three rounds kill both pairs
    assert summary["both_pairs_down"] == 3 and summary["tap_ifindex_changes"] == 0
