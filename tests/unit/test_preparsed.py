"""preparsed.prepare (serve's template parses a worker's command line once; each worker runs it with its
own option values): the same outcome as parsing the worker's own command line, by a shorter way."""
from __future__ import annotations

import errno
import json

import click
import pytest

from vhostsplice.cli import exit_code, main, prepare_worker
from vhostsplice.cli.preparsed import prepare

SEEN: list = []


@click.group()
@click.option("-v", "--verbose", count=True)
def group(verbose):
    SEEN.append(("group", verbose))


@group.command()
@click.option("--fd", type=int, required=True)
@click.option("--state-fd", type=click.IntRange(0))
@click.option("--stats-file")
@click.option("--offloads/--no-offloads", default=True)
def run(fd, state_fd, stats_file, offloads):
    SEEN.append(("run", fd, state_fd, stats_file, offloads))
    return fd


BASE = ["run", "--fd", "0", "--state-fd", "0", "--stats-file", "/r/pair0.json", "--no-offloads"]


def _fallback(line):
    SEEN.append(("fallback", line))
    return exit_code(lambda: group.main(args=line, prog_name="t", standalone_mode=False))


@pytest.fixture
def prepared():
    SEEN.clear()
    return prepare(group, "t", BASE, _fallback, exit_code)


def test_changed_values_are_converted_and_run_without_a_parse(prepared):
    line = ["run", "--fd", "12", "--state-fd", "13", "--stats-file", "/r/pair5.json", "--no-offloads"]
    assert prepared(line) == 12
    assert SEEN == [("group", 0), ("run", 12, 13, "/r/pair5.json", False)]
    SEEN.clear()        # the same as a parse of that command line
    assert _fallback(line) == 12 and SEEN[1:] == [("group", 0), ("run", 12, 13, "/r/pair5.json", False)]


def test_a_bad_value_is_the_usage_error_a_parse_gives(prepared, capsys):
    assert prepared(["run", "--fd", "12", "--state-fd", "-1", "--stats-file", "x", "--no-offloads"]) == errno.EINVAL
    assert "--state-fd" in capsys.readouterr().err and ("run", 12, -1, "x", False) not in SEEN


@pytest.mark.parametrize("line", [
    ["run", "--fd", "12", "--state-fd", "13", "--stats-file", "x"],                     # shorter
    ["run", "--fd", "12", "--state-fd", "13", "--stats-file", "x", "--offloads"],       # a flag differs
    ["run", "--state-fd", "12", "--fd", "13", "--stats-file", "x", "--no-offloads"],    # another order
])
def test_another_shape_goes_through_a_parse(prepared, line):
    prepared(line)
    assert SEEN[0] == ("fallback", line)


def test_vhostsplice_run_prepared(capsys):
    """cli.prepare_worker: the real group and command, main's exit codes."""
    run_line = prepare_worker(["run", "--print-capabilities", "--fd", "3", "--tap", "t0"])
    assert run_line(["run", "--print-capabilities", "--fd", "4", "--tap", "t1"]) == 0
    assert json.loads(capsys.readouterr().out) == {"type": "net"}
    assert run_line(["run", "--print-capabilities", "--fd", "x", "--tap", "t1"]) == errno.EINVAL == \
        main(["run", "--print-capabilities", "--fd", "x", "--tap", "t1"])
