"""Counters for monitoring (vhostsplice/worker/counters.py): Prometheus text a real parser accepts, the
`vhostsplice stats` table, and both read back from the files a worker writes."""
from __future__ import annotations

import errno
import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vhostsplice.worker import counters as C
from vhostsplice.cli import main

RING = {"packets": 1234567, "bytes": 98765432, "chains": 1234567, "batches": 4000, "kicks": 17,
        "notify_sent": 900, "notify_suppressed": 3100, "rx_starved": 2, "drops_fault": 1, "drops_bad_desc": 0,
        "drops_short": 3, "drops_hostfd": 0, "drops_oversize": 5, "last_avail_idx": 7, "used_idx": 7, "broken": None}
STATS = {"exit": 0, "errno": "OK", "reason": "", "wakeups": 4100, "lost_kicks": 1, "messages": 39, "uptime_s": 2.5,
         "refused": {"busy": 1, "peer_uid": 2},
         "dirty_log": {"log_all": False, "log_size": 0, "log_writes": 11, "log_overflow": 0},
         "rings": {"rx": dict(RING), "tx": dict(RING, packets=10, bytes=600, broken="avail_idx")}}


def parsed(text: str) -> dict:
    """{(sample name, frozenset(labels)): value} through prometheus_client's own parser."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_prometheus_text_is_accepted_by_prometheus_clients_parser_with_exact_values():
    got = parsed(C.render(STATS, "prometheus", worker="vm1-net0"))
    rx = frozenset({"worker": "vm1-net0", "ring": "rx"}.items())
    assert got[("vhostsplice_ring_packets_total", rx)] == 1234567            # not rounded by %g
    assert got[("vhostsplice_ring_bytes_total", rx)] == 98765432
    assert got[("vhostsplice_ring_drops_total", rx | {("reason", "oversize")})] == 5
    tx_broken = frozenset({"worker": "vm1-net0", "ring": "tx", "reason": "avail_idx"}.items())
    assert got[("vhostsplice_ring_broken", tx_broken)] == 1
    assert got[("vhostsplice_ring_broken", rx)] == 0
    assert got[("vhostsplice_refused_total", frozenset({"worker": "vm1-net0", "reason": "peer_uid"}.items()))] == 2
    assert got[("vhostsplice_uptime_seconds", frozenset({"worker": "vm1-net0"}.items()))] == 2.5
    # one family per counter of a ring, every ring of every worker labelled
    for key in ("packets", "bytes", "chains", "batches", "kicks", "notify_sent", "notify_suppressed", "rx_starved"):
        assert {dict(lab)["ring"] for name, lab in got if name == f"vhostsplice_ring_{key}_total"} == {"rx", "tx"}


def test_several_pairs_in_one_file_are_told_apart_by_their_labels():
    text = C.prometheus([({"worker": "vm1", "pair": 0}, STATS), ({"worker": "vm1", "pair": 1}, STATS)])
    pairs = {dict(lab)["pair"] for name, lab in parsed(text) if name == "vhostsplice_ring_packets_total"}
    assert pairs == {"0", "1"}


@pytest.mark.parametrize("fmt", ["json", "prometheus"])
def test_stats_files_of_either_format_read_back_to_the_same_ring_counters(tmp_path, fmt):
    path = tmp_path / f"w.{fmt}"
    C.write_atomically(str(path), C.render(STATS, fmt, worker="w"))
    back = C.read_stats(str(path))
    for ring in ("rx", "tx"):
        for key in ("packets", "bytes", "kicks", "notify_sent", "drops_short", "drops_oversize", "broken"):
            assert back["rings"][ring][key] == STATS["rings"][ring][key], (ring, key)
    assert back["uptime_s"] == 2.5


def test_table_shows_rates_drops_by_reason_and_broken_rings(tmp_path):
    path = tmp_path / "w.json"
    path.write_text(json.dumps(STATS))
    text, snap, errors = C.table([str(path)])
    rx, tx = (line.split() for line in text.splitlines()[1:3])
    assert errors == [] and rx[1:3] == ["rx", "1234567"] and tx[1:3] == ["tx", "10"]
    assert float(rx[3]) == pytest.approx(1234567 / 2.5 / 1e6, abs=0.01)     # Mpps since the worker started
    assert "9 (fault 1, short 3, oversize 5)" in text and "yes (avail_idx)" in text
    path.write_text(json.dumps(dict(STATS, rings={"rx": dict(RING, packets=1234567 + 10**6)})))
    again, _, _ = C.table([str(path)], snap)                                 # since the previous table
    assert again.splitlines()[1].split()[2] == str(1234567 + 10**6)


def test_stats_command_prints_the_table_and_fails_with_the_errno_of_an_unreadable_file(tmp_path, capsys):
    good, junk = tmp_path / "w.json", tmp_path / "junk.json"
    good.write_text(json.dumps(STATS))
    junk.write_text("not json")
    assert main(["stats", str(good)]) == 0
    assert "1234567" in capsys.readouterr().out
    assert main(["stats", str(good), str(tmp_path / "missing.json")]) == errno.ENOENT
    assert "missing.json" in capsys.readouterr().out
    assert main(["stats", str(junk)]) == errno.EINVAL
    assert main(["stats"]) == errno.EINVAL                                   # FILE... is required
