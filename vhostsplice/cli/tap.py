"""`vhostsplice tap`: create, delete, show and hold persistent taps (host/tapctl.py)."""
from __future__ import annotations

import json
import os

import click

from .options import CONTEXT, exit_table_help


@click.group(context_settings=CONTEXT, epilog=exit_table_help())
def tap() -> None:
    """Create, delete and show persistent taps for workers (pyroute2; needs CAP_NET_ADMIN).

    A tap created with --owner can then be attached by that user's `run --tap NAME` without
    privileges. Errors exit with the kernel's errno (EEXIST, ENODEV, EPERM, EBUSY...).
    """


_NETNS_OPTION = click.option("--netns", metavar="NS", envvar="VHOSTSPLICE_NETNS",
                             help="Work in this network namespace (a name under /run/netns, or a path).")


@tap.command("create", context_settings=CONTEXT, epilog=exit_table_help())
@click.argument("name")
@click.option("--multi-queue/--single-queue", default=True, show_default=True,
              help="IFF_MULTI_QUEUE: one queue per worker of a multi-queue device.")
@click.option("--vnet-hdr/--no-vnet-hdr", default=True, show_default=True,
              help="IFF_VNET_HDR: offloads pass through (what `run --tap` asks for).")
@click.option("--owner", metavar="USER|UID", help="User allowed to attach queues without CAP_NET_ADMIN.")
@click.option("--group", metavar="GROUP|GID", help="Group allowed to attach queues.")
@click.option("--mtu", type=click.IntRange(68, 65535), help="MTU of the new tap.")
@click.option("--bridge", metavar="BR", help="Enslave the tap to this existing bridge.")
@click.option("--up/--down", default=True, show_default=True, help="Link state after creation.")
@_NETNS_OPTION
def tap_create(name, multi_queue, vnet_hdr, owner, group, mtu, bridge, up, netns):
    """Create persistent tap NAME and print it (JSON). An existing NAME is EEXIST.

    \b
    Example:
      vhostsplice tap create vm1net0 --owner qemu --mtu 9000 --bridge br0
    """
    tapctl = _tapctl(netns)
    spec = tapctl.TapSpec(name=name, multi_queue=multi_queue, vnet_hdr=vnet_hdr, owner=owner, group=group,
                          mtu=mtu, bridge=bridge, up=up)
    click.echo(json.dumps(tapctl.create(spec), sort_keys=True))
    return 0


def _on_a_tap(command_name: str):
    """A `tap` subcommand that takes only a tap NAME and --netns."""
    def decorate(command):
        for decorator in reversed((tap.command(command_name, context_settings=CONTEXT, epilog=exit_table_help()),
                                   click.argument("name"), _NETNS_OPTION)):
            command = decorator(command)
        return command
    return decorate


def _tapctl(netns):
    """host/tapctl.py, with the calling thread in network namespace NETNS (None: this one)."""
    from ..host import tapctl
    tapctl.enter_netns(netns)
    return tapctl


@_on_a_tap("delete")
def tap_delete(name, netns):
    """Delete tap NAME (ENODEV if absent, EINVAL if NAME is not a tap)."""
    _tapctl(netns).delete(name)
    return 0


@_on_a_tap("show")
def tap_show(name, netns):
    """Print tap NAME as JSON: flags, owner, queues attached, MTU, state, bridge."""
    click.echo(json.dumps(_tapctl(netns).show(name), sort_keys=True))
    return 0


@_on_a_tap("hold")
def tap_hold(name, netns):
    """Keep tap NAME alive while this runs, so it outlives the worker that created it.

    Waits until NAME exists, then holds a detached queue of it (it takes no traffic): a tap that is not
    persistent is deleted by the kernel only when its last queue closes, so its index, addresses, MTU,
    qdisc, bridge and counters survive any number of worker restarts. A deleted tap is waited for
    again. Ends with 0 on SIGTERM/SIGINT or when its parent exits. bin/vhostsplice-supervise runs it
    beside a `run --tap NAME` worker; `serve` holds its tap itself.

    \b
    Example:
      vhostsplice tap hold vm1net0 &
    """
    _tapctl(netns).hold(name, lambda text: click.echo(f"vhostsplice tap hold[{os.getpid()}]: {text}", err=True))
    return 0

