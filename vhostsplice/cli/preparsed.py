"""A worker's command line parsed once and run many times with other option values: serve's template
(template.py) forks every worker from one process image, and a worker that parsed its command line again
would write its own copy of every page click's parser touches (CPython 3.11 writes reference counts even
to read an object; issue 18). The template parses one worker's command line before its first fork; each
worker then runs the command with the values that differ in its own command line (its fds, stats file,
CPU), each converted by its option's type as click does. A command line of another shape runs through
`fallback` (the package's main): the outcome is the same either way, only the memory differs. Only click is imported
here: cli/__init__.py's prepare_worker hands down its group, main and exit_code.
"""
from __future__ import annotations

from typing import Callable

import click


def prepare(group: click.Group, prog_name: str, argv: list[str], fallback: Callable[[list[str]], int],
            outcome: Callable[[Callable], int]) -> Callable[[list[str]], int]:
    """`fallback` (main) made ready for command lines like ARGV: ARGV parsed now (a usage error raises
    here); `outcome` turns a run into its exit code as main does."""
    group_ctx = group.make_context(prog_name, list(argv[:1]))
    command = group.get_command(group_ctx, argv[0])
    if command is None:
        raise click.UsageError(f"no such command: {argv[0]!r}")
    ctx = command.make_context(argv[0], list(argv[1:]), parent=group_ctx)
    options = {flag: param for param in command.params if isinstance(param, click.Option) and not param.is_flag
               for flag in param.opts}

    def run(line: list[str]) -> int:
        changed = _changed(argv, line, options)
        if changed is None:
            return fallback(line)
        return outcome(lambda: _invoke(group, group_ctx, command, ctx, changed))
    return run


def _changed(base: list[str], line: list[str], options: dict) -> list | None:
    """(option, new text) for each value LINE has in place of BASE's; None if LINE differs otherwise."""
    if len(line) != len(base) or line[:1] != base[:1]:
        return None
    out = []
    for i in range(1, len(base)):
        if line[i] != base[i]:
            option = options.get(base[i - 1]) if i > 1 and line[i - 1] == base[i - 1] else None
            if option is None:
                return None
            out.append((option, line[i]))
    return out


def _invoke(group: click.Group, group_ctx: click.Context, command: click.Command, ctx: click.Context, changed: list):
    """What click's Group.invoke does after parsing: the group's callback, then the command's, each in
    its context, with the changed values processed as the parser would (a bad one raises BadParameter)."""
    with group_ctx:
        group_ctx.invoked_subcommand = command.name
        group_ctx.invoke(group.callback, **group_ctx.params)
        with ctx:
            for option, text in changed:
                ctx.params[option.name] = option.process_value(ctx, text)
            return command.invoke(ctx)
