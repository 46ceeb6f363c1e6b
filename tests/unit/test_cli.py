import errno
import json
import logging
import os
import signal
import subprocess
import sys

import pytest

from vhostsplice.cli import main, run
from vhostsplice.errors import EXIT_TABLE, ConfigError, errno_name
from vhostsplice.worker.placement import parse_cpus


def test_parse_cpus_ranges():
    allowed = sorted(os.sched_getaffinity(0))
    assert parse_cpus(f"{allowed[0]}") == {allowed[0]}
    assert parse_cpus(f"{allowed[0]}-{allowed[-1]}") == set(range(allowed[0], allowed[-1] + 1))


@pytest.mark.parametrize("text", ["", "a", "3-1", "-1", "1,,2"])
def test_parse_cpus_syntax_errors_are_einval(text):
    with pytest.raises(ConfigError) as info:
        parse_cpus(text)
    assert info.value.errno == errno.EINVAL


def test_cpu_outside_allowed_set_is_einval():
    with pytest.raises(ConfigError, match="not in this process's allowed set"):
        parse_cpus("4096")


def test_usage_errors_exit_einval_not_click_codes(capsys):
    assert main(["run", "--no-such-option"]) == errno.EINVAL
    assert main(["no-such-command"]) == errno.EINVAL
    assert main(["run", "--tap", "x"]) == errno.EINVAL           # no front-end door given
    assert main(["run", "--socket-path", "/tmp/x.sock"]) == errno.EINVAL   # no tap
    assert main(["run", "--socket-path", "/tmp/x", "--fd", "3", "--tap", "t"]) == errno.EINVAL


def test_print_capabilities(capsys):
    assert main(["run", "--print-capabilities"]) == 0
    assert json.loads(capsys.readouterr().out) == {"type": "net"}


def test_help_teaches_and_lists_exit_codes():
    out = subprocess.run([sys.executable, "-m", "vhostsplice", "run", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for word in ("--socket-path", "--tap", "--cpu", "--on-guest-error", "Example", "EBADMSG", "ECONNRESET"):
        assert word in out.stdout
    assert subprocess.run([sys.executable, "-m", "vhostsplice", "-h"], capture_output=True).returncode == 0


def test_exit_table_codes_are_distinct_errnos():
    codes = [code for code, _, _ in EXIT_TABLE if code > 0]
    assert len(codes) == len(set(codes))
    for code, name, _ in EXIT_TABLE:
        if code > 128:          # a death by signal, as a shell and serve's events report it
            assert signal.Signals(code - 128).name == name == errno_name(code)
        elif code > 0:
            assert errno.errorcode[code] == name == errno_name(code)


def _options(command, path="vhostsplice"):
    import click
    for p in command.params:
        if isinstance(p, click.Option) and p.name not in ("help", "version"):
            yield path, p
    for name, sub in getattr(command, "commands", {}).items():
        yield from _options(sub, f"{path} {name}")


def test_every_option_has_an_environment_variable_that_help_shows():
    from vhostsplice.cli import cli
    for path, opt in _options(cli):
        assert opt.envvar and opt.envvar.startswith("VHOSTSPLICE_") and opt.show_envvar, (path, opt.opts)


def test_an_option_from_the_environment_is_used_and_the_command_line_wins(capsys, monkeypatch):
    monkeypatch.setenv("VHOSTSPLICE_SOCKET_MODE", "0640")
    assert main(["run", "--socket-path", "/nonexistent-dir/x.sock", "--host-fd", "0", "--socket-mode", "bad"]) \
        == errno.EINVAL                                  # the command line's value, not the environment's
    assert "bad" in capsys.readouterr().err
    monkeypatch.setenv("VHOSTSPLICE_SOCKET_MODE", "nonsense")
    assert main(["run", "--socket-path", "/nonexistent-dir/x.sock", "--host-fd", "0"]) == errno.EINVAL
    assert "nonsense" in capsys.readouterr().err


def test_readme_names_every_feature_and_protocol_feature_the_worker_offers():
    """README "What it negotiates" drifts from backend's tables: every offered bit is named there."""
    import re
    from pathlib import Path
    from vhostsplice.device import features as offer
    from vhostsplice.spec import Feature, ProtocolFeature
    text = Path(__file__).resolve().parents[2].joinpath("README.md").read_text()
    words = set(re.findall(r"[A-Z][A-Z0-9_]+", text.split("### What it negotiates", 1)[1].split("\n## ", 1)[0]))
    offered = offer.offered_features(offloads=True, packed=True)
    for f in (f for f in Feature if offered >> f & 1):
        spelled = {f.name, f.name.split("_F_", 1)[-1], "VIRTIO_" + f.name, f.name.removeprefix("F_")}
        assert spelled & words, f"README does not name the offered feature {f.name}"
    for pf in (pf for pf in ProtocolFeature if offer.RUN_PROTOCOL_FEATURES >> pf & 1):
        assert pf.name in words, f"README does not name the offered protocol feature {pf.name}"


@pytest.mark.parametrize("args,packed", [([], True), (["--no-packed"], False), (["--packed"], True)])
def test_serve_passes_no_packed_to_its_workers(monkeypatch, args, packed):
    """serve's own offer (ServeConfig.packed) and its workers' (--no-packed) follow the one option."""
    from vhostsplice.serve import supervisor
    seen = {}
    monkeypatch.setattr(supervisor, "run_supervisor", lambda socket_path, config: seen.setdefault("c", config) and 0)
    assert main(["serve", "--socket-path", "/tmp/x.sock", "--tap", "t", *args]) == 0
    config = seen["c"]
    assert config.packed is packed and ("--no-packed" in config.worker_args) is not packed
    assert config.worker.make is run.recipe_of and config.worker.start is run.serve_worker   # `run`'s own steps


def test_run_passes_no_packed_to_the_backend(monkeypatch):
    from vhostsplice.worker import runner
    seen = {}
    monkeypatch.setattr(runner, "run_worker", lambda recipe: seen.update(vars(recipe)) or 0)
    assert main(["run", "--socket-path", "/tmp/x.sock", "--tap", "t", "--no-packed"]) == 0
    assert seen["packed"] is False
    monkeypatch.setenv("VHOSTSPLICE_PACKED", "0")
    assert main(["run", "--socket-path", "/tmp/x.sock", "--tap", "t"]) == 0 and seen["packed"] is False


def test_one_stderr_handler_however_often_the_command_line_runs(capsys):
    """A worker forked by serve's template runs the command line again in serve's image: a second handler
    printed each of its log lines twice."""
    for _ in range(2):
        assert main(["exit-codes", "--json"]) == 0
    capsys.readouterr()
    logging.getLogger("vhostsplice").warning("said once")
    assert capsys.readouterr().err.count("said once") == 1


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["serve", "--help"], ["drive", "--help"],
                                  ["tap", "create", "--help"], ["exit-codes", "--json"]])
def test_help_and_tables_load_no_implementation(args):
    """Each command imports what does its work inside the command (cli/): asking for help (or the exit-code
    table) loads the command line, the vocabulary and drive's exit table, and nothing that runs a worker."""
    code = ("import sys; from vhostsplice.cli import main; main(sys.argv[1:]); "
            "print(' '.join(m for m in sys.modules if m.startswith('vhostsplice')), file=sys.stderr)")
    out = subprocess.run([sys.executable, "-P", "-c", code, *args], capture_output=True, text=True, check=True)
    loaded = set(out.stderr.split())
    light = {"vhostsplice", "vhostsplice.errors", "vhostsplice.tools", "vhostsplice.tools.exits",
             "vhostsplice.worker", "vhostsplice.worker.entry"}    # entry: the log's handler, a failure's line
    assert "vhostsplice.cli.run" in loaded and "vhostsplice.cli.options" in loaded     # the check sees modules
    assert {m for m in loaded if not m.startswith("vhostsplice.cli")} - light == set()
