"""The benchmarks' own logic, without root or peers: a run with a figure that got no sample fails, the floor's
variant table agrees with the columns that read it, the RX profile's buckets, and tap_floor.c compiles.
(Speed is never asserted here: benchmarks/ measures it.)"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import dpdk_bench  # noqa: E402
import rx_profile  # noqa: E402
import tap_floor  # noqa: E402


def _results(samples: dict) -> dict:
    """A dpdk_bench.json as --combine reads it."""
    facts = {"date": "2026-12-07 00:00 UTC", "loadavg_at_start": ["0", "0", "0"], "vhostsplice": "test",
             "cpu": "2 x test", "memory_gib": 1, "os": "test", "kernel": "test", "dpdk": "test", "python": "3"}
    settings = {"repeat": 1, "noisy": 0.25, "min_share": 0.85, "retries": 0, "pings": 1, "default_busy_poll": "auto"}
    return {"facts": facts, "settings": settings, "command": "test", "elapsed_s": 1.0,
            "columns": list(samples), "samples": samples}


def _rate(mpps: float) -> dict:
    return {"mpps": mpps, "backend_cpu": 1.0, "frontend_cpu": 1.0, "others_cpu": 0.0, "startup_s": 0.1}


def _run_combine(tmp_path: Path, samples: dict) -> tuple[int, str]:
    src = tmp_path / "in.json"
    src.write_text(json.dumps(_results(samples)))
    rc = dpdk_bench.main(["--combine", str(src), "--out", str(tmp_path / "out")])
    return rc, (tmp_path / "out" / "dpdk_bench.md").read_text()


def test_dpdk_bench_exits_nonzero_when_a_figure_has_no_sample(tmp_path, capsys):
    rc, md = _run_combine(tmp_path, {"vhostsplice": {"rx64": [{"error": "RuntimeError: no drain", "repeat": 0}]},
                                     "dpdk": {"rx64": [_rate(0.5)]}})
    assert rc == 1
    assert "no sample for rx64 (vhostsplice)" in capsys.readouterr().err
    assert "## Failed samples" in md


def test_dpdk_bench_exits_zero_when_every_figure_has_a_sample(tmp_path):
    rc, md = _run_combine(tmp_path, {"vhostsplice": {"rx64": [_rate(0.45)]}, "dpdk": {"rx64": [_rate(0.5)]}})
    assert rc == 0
    assert "| RX 64 B (tap -> guest) (Mpps) | 0.450 | 0.500 | 0.90 |" in md


def test_combine_names_the_default_worker_of_a_run_before_busy_poll_auto_as_polling_off(tmp_path):
    """A run made before `--busy-poll auto` became the default (no default_busy_poll in its settings) had its
    default worker poll never: combined with a newer run, its samples are `busy-poll 0`'s, not auto's."""
    old = _results({"vhostsplice": {"rx64": [_rate(0.40)]}, "dpdk": {"rx64": [_rate(0.5)]}})
    del old["settings"]["default_busy_poll"]
    new = _results({"vhostsplice": {"rx64": [_rate(0.45)]}, "dpdk": {"rx64": [_rate(0.5)]}})
    paths = []
    for name, run in (("old.json", old), ("new.json", new)):
        (tmp_path / name).write_text(json.dumps(run))
        paths.append(str(tmp_path / name))
    out = dpdk_bench.combine(paths)
    assert out["columns"] == ["vhostsplice busy-poll 0", "dpdk", "vhostsplice"]
    assert [d["mpps"] for d in out["samples"]["vhostsplice"]["rx64"]] == [0.45]
    assert [d["mpps"] for d in out["samples"]["vhostsplice busy-poll 0"]["rx64"]] == [0.40]


def test_a_floor_column_without_a_sample_fails_the_run_and_its_ratio_is_reported(tmp_path, capsys):
    floor = tap_floor.VARIANTS["vnet"].column
    rc, md = _run_combine(tmp_path, {"vhostsplice": {"rx64": [_rate(0.45)]}, "dpdk": {"rx64": [_rate(0.5)]},
                                     floor: {"rx64": [_rate(0.6)], "tx64": [{"error": "x", "repeat": 0}]}})
    assert rc == 1
    assert f"tx64 ({floor})" in capsys.readouterr().err
    row = next(line for line in md.splitlines() if line.startswith("| rx64 | 0.450 | 0.500 | 0.600 |"))
    assert "| 0.90 | 0.75 | >= 0.87 (1.15x) | **no** |" in row


@pytest.mark.parametrize("name", list(tap_floor.VARIANTS))
def test_every_floor_variant_is_a_column_that_reads_back_as_itself(name):
    col = dpdk_bench.columns([0], ["split"], [name])[-1]
    assert col == dpdk_bench.column_of(col.name)
    assert col.backend == "floor" and col.floor == name
    assert col.measures("rx64") and col.measures("tx1500")
    assert not col.measures("latency") and not col.measures("idle")


def test_the_same_floor_is_the_one_with_the_workers_header():
    assert tap_floor.VARIANTS[tap_floor.parse("same", no_offloads=False)[0]].hdr == tap_floor.NET_HDR_LEN
    assert tap_floor.VARIANTS[tap_floor.parse("same", no_offloads=True)[0]].hdr == 0
    with pytest.raises(ValueError):
        tap_floor.parse("vnet,bogus", no_offloads=False)


def test_the_floor_compiles_warning_free_and_refuses_bad_arguments(tmp_path):
    program = tap_floor.build(tmp_path)             # -Wall -Wextra -Werror: a warning fails the build
    r = subprocess.run([str(program), "rx", "vsx0", "7", "64", "0"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "HDR 0 or 12" in r.stderr
    r = subprocess.run([str(program)], capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "usage" in r.stderr


KERNEL = "[kernel.kallsyms]"


@pytest.mark.parametrize("chain, bucket", [
    ([("__seccomp_filter", KERNEL), ("__secure_computing", KERNEL), ("do_syscall_64", KERNEL)],
     "kernel: seccomp filter (and the entry work it turns on)"),
    ([("rep_movs_alternative", KERNEL), ("_copy_to_iter", KERNEL), ("tun_do_read", KERNEL)],
     "kernel: tap read, copy to the buffer"),
    ([("__check_object_size", KERNEL), ("_copy_to_iter", KERNEL), ("tun_do_read", KERNEL)],
     "kernel: tap read, hardened-usercopy checks"),
    ([("kmem_cache_free", KERNEL), ("consume_skb", KERNEL), ("tun_do_read", KERNEL)],
     "kernel: tap read, skb free"),
    ([("kmem_cache_free", KERNEL), ("do_epoll_wait", KERNEL)], "kernel: epoll"),
    ([("syscall_exit_to_user_mode", KERNEL), ("do_syscall_64", KERNEL)], "kernel: syscall entry/exit"),
    ([("io_submit_sqes", KERNEL), ("__do_sys_io_uring_enter", KERNEL)],
     "kernel: io_uring submission, prep and completion"),
    ([("__import_iovec", KERNEL), ("io_prep_readv", KERNEL), ("io_submit_sqes", KERNEL)],
     "kernel: readv/read/write set-up (fd, iovec, vfs)"),
    ([("vs_rx_batch", "_vs_core.abi3.so")], "user: vhostsplice C core"),
    ([("rte_vhost_enqueue_burst", "librte_vhost.so.23.0")], "user: DPDK vhost (enqueue to the guest ring)"),
])
def test_rx_profile_buckets(chain, bucket):
    assert rx_profile.classify(chain) == bucket


def test_rx_profile_reads_perf_script_samples():
    text = ("21291   670.903723:     100000 \n"
            "\tffffffff8160a659 tun_do_read+0x1a ([kernel.kallsyms])\n"
            "\t           f82ad __GI___readv (/usr/lib/x86_64-linux-gnu/libc.so.6)\n\n"
            "21291   670.904306:     100000 \n"
            "\t           15389 vs_rx_batch (/x/_vs_core.abi3.so)\n")
    got = rx_profile.parse_script(text)
    assert [(t, p) for t, p, _c in got] == [(670.903723, 100000), (670.904306, 100000)]
    assert got[0][2] == [("tun_do_read", KERNEL), ("__GI___readv", "libc.so.6")]
    assert rx_profile.classify(got[1][2]) == "user: vhostsplice C core"


def test_density_traffic_names_every_cell_without_a_round():
    import density_traffic as D
    full = {c: [{"aggregate_mpps": 1.0}] for c in D.CONFIGS}
    results = {"sizes": {64: {ph: dict(full) for ph in D.PHASES}}}
    assert D.missing(results) == []
    results["sizes"][64]["among idle"][D.TWO] = []
    del results["sizes"][64]["alone again"]
    assert D.missing(results) == [f"64 B among idle: {D.TWO}"] + [f"64 B alone again: {c}" for c in D.CONFIGS]
    assert D.missing({"sizes": {}}) == ["any size"]


def test_a_variant_column_reads_back_as_itself_and_is_compared_with_the_default(tmp_path):
    col = dpdk_bench.columns([0], ["split"], [], ["--sandbox=off --host-io plain"])[-1]
    assert col == dpdk_bench.column_of(col.name)
    assert col.backend == "vhostsplice" and col.worker_args == ("--sandbox=off", "--host-io", "plain")
    rc, md = _run_combine(tmp_path, {"vhostsplice": {"tx64": [_rate(1.0)]}, "dpdk": {"tx64": [_rate(0.8)]},
                                     col.name: {"tx64": [_rate(0.9)]}})
    assert rc == 0
    assert "| tx64 (Mpps) | `--sandbox=off --host-io plain` | 0.900 | 0.800 | 1.12 | 0.90 |" in md
    assert "| tx64 (Mpps) | default | 1.000 | 0.800 | 1.25 |  |" in md


@pytest.mark.parametrize("bad", ["sandbox=off", "", "--x 'unclosed"])
def test_a_variant_that_is_not_worker_options_is_a_usage_error(bad, capsys):
    with pytest.raises(SystemExit) as info:
        dpdk_bench.parse_args([f"--variant={bad}"])
    assert info.value.code == 2 and "--variant" in capsys.readouterr().err


def test_a_columns_sample_folder_fits_virtio_users_devargs():
    name = dpdk_bench.columns([50], ["split"], [], ["--sandbox=off --cpu 1,0"])[-1].name
    assert dpdk_bench.sample_dir(name) == "vhostsplice_--sandbox_off_--cpu_1_0"
    assert dpdk_bench.sample_dir("vhostsplice busy-poll 50") == "vhostsplice_busy-poll_50"


def test_write_results_makes_the_folder_and_writes_both_files(tmp_path: Path, capsys) -> None:
    import measured
    out = tmp_path / "a" / "b"
    md = measured.write_results(out, "bench", {"samples": {"x": [1.5]}}, "# table\n")
    assert md == out / "bench.md"
    assert md.read_text() == "# table\n"
    assert json.loads((out / "bench.json").read_text()) == {"samples": {"x": [1.5]}}
    assert "# table" in capsys.readouterr().out


def test_rx_profile_splits_the_tap_reads_own_time_by_offset():
    text = ("21291   670.903723:     100000 \n"
            "\tffffffff8160a659 tun_do_read+0x412 ([kernel.kallsyms])\n"
            "\tffffffff8160a000 tun_chr_read_iter+0x1a ([kernel.kallsyms])\n\n"
            "21291   670.904306:     100000 \n"
            "\tffffffff8160a659 tun_do_read+0x412 ([kernel.kallsyms])\n\n"
            "21291   670.904400:     100000 \n"
            "\tffffffff8160a659 _copy_to_iter+0x20 ([kernel.kallsyms])\n"
            "\tffffffff8160a659 tun_do_read+0x120 ([kernel.kallsyms])\n\n"
            "21291   675.000000:     100000 \n"
            "\tffffffff8160a659 tun_do_read+0x120 ([kernel.kallsyms])\n")
    # only leaf frames count (tun_do_read+0x120 under _copy_to_iter is a caller), and only inside the window
    assert rx_profile.own_offsets(text, [670.0, 671.0]) == {"tun_do_read+0x412": 200000}
    assert rx_profile.own_offsets(text, [674.0, 676.0]) == {"tun_do_read+0x120": 100000}
    summ = {"a rx64": {"own": {"tun_do_read+0x412": 0.2, "tun_do_read+0x20": 0.001}},
            "b rx64": {"own": {"tun_do_read+0x120": 0.05}}}
    rows = rx_profile.own_table(summ, ["a rx64", "b rx64"], ["a", "b"])
    assert [r.split(" |")[0] for r in rows if r.startswith("| tun_")] == ["| tun_do_read+0x120", "| tun_do_read+0x412"]
