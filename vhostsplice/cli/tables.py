"""The commands that print tables: `vhostsplice exit-codes` (the exit codes, the restart and back-off
policy: errors.py) and `vhostsplice stats` (workers' counters files: worker/counters.py)."""
from __future__ import annotations

import errno
import json

import click

from ..errors import ConfigError
from .options import CONTEXT, exit_table_help


@click.command("exit-codes", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, envvar="VHOSTSPLICE_EXIT_CODES_JSON",
              help="As one JSON object: the exit-code table, the restart policy and the back-off policy.")
@click.option("--shell", "as_shell", is_flag=True, envvar="VHOSTSPLICE_EXIT_CODES_SHELL",
              help="As 'KEY VALUE...' lines for shell scripts (bin/vhostsplice-supervise reads it).")
def exit_codes(as_json, as_shell):
    """Print the exit codes and what a supervisor does with each (errors.py: one table for all).

    Each worker exit code is clean (0: restart at once, when a next front-end is to be served), restart
    (with back-off) or give-up; codes not listed give up. Back-off: the first restart waits
    backoff_first seconds, each further one twice as long up to backoff_cap, shortened by up to
    backoff_jitter of itself; a worker that served backoff_stable_after seconds resets it. Used by
    `serve`, bin/vhostsplice-supervise, bin/vhostsplice-vmm-example and contrib/systemd.

    \b
    Examples:
      vhostsplice exit-codes
      vhostsplice exit-codes --json | jq '.restart[] | select(.action == "give-up") | .code'
    """
    from .. import errors
    if as_json and as_shell:
        raise ConfigError("--json and --shell exclude each other")
    if as_json:
        click.echo(json.dumps(errors.policy_document(), indent=1))
    elif as_shell:
        click.echo(errors.policy_shell())
    else:
        click.echo(exit_table_help().replace("\b\n", ""))
        rows = [f"  {str(k):>6}  {a:<8} {w}" for k, a, w in errors.RESTART_POLICY]
        click.echo("\nRestart policy (other codes: give-up):\n" + "\n".join(rows))
        click.echo(f"\nBack-off: {errors.BACKOFF}")
    return 0


@click.command("stats", context_settings=CONTEXT, epilog=exit_table_help())
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("--watch", "interval", type=click.FloatRange(min=0.1), metavar="SECONDS", is_flag=False,
              flag_value=1.0, default=None, envvar="VHOSTSPLICE_STATS_WATCH",
              help="Refresh the table in place every SECONDS (1 if given alone); rates are then since the "
                   "last refresh. Ctrl-C ends it (exit 0).")
def stats(files, interval):
    """Print the counters of workers' stats files as a table: per ring, packets, Mpps and MB/s (averaged
    since the worker started, or since the last refresh with --watch), drops by reason, kicks, calls and
    whether the guest broke the ring. Reads both --stats-format json and prometheus files. A file that
    cannot be read is listed under the table and makes the exit code its errno (EINVAL: not a stats file).

    \b
    Example:
      vhostsplice stats /run/vhostsplice/*.stats.json --watch 2
    """
    from ..worker.counters import watch
    try:
        errors = watch(list(files), interval, lambda text: click.echo(text, nl=False))
    except KeyboardInterrupt:
        return 0
    return next((getattr(e, "errno", None) or errno.EINVAL for e in errors), 0)

