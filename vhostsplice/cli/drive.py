"""`vhostsplice drive` (the built-in front-end and driver against a worker: tools/drive.py) and `vhostsplice
demo` (tools/demo.py)."""
from __future__ import annotations

import click

from ..errors import ConfigError
from .options import CONTEXT


@click.command(context_settings=CONTEXT)
@click.option("--frames", type=click.IntRange(1, 100000), default=1000, show_default=True,
              help="Frames to move in each direction.")
@click.option("--size", type=click.IntRange(60, 9000), default=512, show_default=True, help="Frame size in bytes.")
def demo(frames, size):
    """Show the main job on an embedded default (needs root, nothing else).

    Creates a private network namespace with a tap, starts `vhostsplice run` on it, drives it with the
    built-in pure-Python front-end (guest -> tap and tap -> guest), prints what moved, and cleans up.
    """
    from ..tools.demo import run_demo
    return run_demo(frames=frames, size=size)


def _drive_help() -> str:
    from ..tools.exits import exit_table_text     # the table alone: --help loads no driver
    return "drive's own exit codes:\n\n\b\n" + exit_table_text()


@click.command(context_settings=CONTEXT, epilog=_drive_help())
@click.option("--socket-path", metavar="PATH", envvar="VHOSTSPLICE_SOCKET",
              help="The worker's vhost-user socket (or, with --listen, where to listen for it).")
@click.option("--connect/--listen", "connect", default=True, show_default=True,
              help="Connect to a listening worker (retrying for --connect-timeout), or listen for one "
                   "started with `run --connect PATH`.")
@click.option("--connect-timeout", type=click.FloatRange(0), default=5.0, show_default=True, metavar="S",
              help="Seconds to keep retrying the connection (or to wait for the worker with --listen).")
@click.option("--features", "features_text", metavar="LIST|0xMASK",
              help="Features the driver accepts: names (VERSION_1,MRG_RXBUF,INDIRECT_DESC,EVENT_IDX,"
                   "PROTOCOL_FEATURES,CSUM,...), 'default', '-NAME' to drop one, or a hex mask. "
                   "Default: VERSION_1,MRG_RXBUF,INDIRECT_DESC,EVENT_IDX,PROTOCOL_FEATURES.")
@click.option("--queue-size", type=click.IntRange(1, 32768), default=256, show_default=True,
              help="Size of both rings (a power of 2; with --packed any size).")
@click.option("--packed", is_flag=True, envvar="VHOSTSPLICE_DRIVE_PACKED",
              help="Packed rings: ask for RING_PACKED too and fail (EINVAL) if the worker does not offer it.")
@click.option("--send", type=click.IntRange(0), default=0, show_default=True, metavar="N",
              help="Frames to send guest -> tap (each waited for until the worker has used it).")
@click.option("--size", type=click.IntRange(60, 65535), default=512, show_default=True, metavar="B",
              help="Size of each frame sent (Ethernet, ethertype 0x88b5, sequence-numbered).")
@click.option("--expect", type=click.IntRange(0), default=0, show_default=True, metavar="N",
              help="Frames to receive tap -> guest: post RX buffers and wait until at least N frames came "
                   "(anything the tap side sends counts; --timeout).")
@click.option("--rx-buffers", type=click.IntRange(0), metavar="N",
              help="RX buffers to keep posted (default: --expect, at most the ring size).")
@click.option("--rx-buffer-size", type=click.IntRange(12, 1 << 20), default=2048, show_default=True, metavar="B")
@click.option("--pcap", metavar="FILE", help="Save received frames in pcap format.")
@click.option("--fault", metavar="NAME", help="Inject one fault (--list-faults shows them all).")
@click.option("--fault-after", type=click.IntRange(0), default=0, show_default=True, metavar="N",
              help="Frames to send (and see used) before the fault.")
@click.option("--timeout", type=click.FloatRange(0.01), default=5.0, show_default=True, metavar="S",
              help="Seconds to wait for each expected thing (used entries, frames, the fault's reaction).")
@click.option("--hold", type=click.FloatRange(0), default=0.0, show_default=True, metavar="S",
              help="After the work, keep the rings running this long (ended early by the worker closing, "
                   "or by SIGTERM/SIGINT), then stop them and close.")
@click.option("--ready-file", metavar="FILE", help="Write this file once the rings run and the work before "
                                                    "--expect/--hold is done (scripts wait for it).")
@click.option("--list-faults", is_flag=True, help="Print the fault table and exit.")
@click.option("--json", "as_json", is_flag=True, help="With --list-faults: as JSON.")
def drive(socket_path, connect, connect_timeout, features_text, queue_size, packed, send, size, expect, rx_buffers,
          rx_buffer_size, pcap, fault, fault_after, timeout, hold, ready_file, list_faults, as_json):
    """Be the guest: the built-in front-end and virtio driver against a worker, as a command.

    Connects to a worker (or, with --listen, waits for one), negotiates, shares memory, starts both
    rings, sends --send frames, receives --expect frames, injects --fault if asked, stops both rings
    and closes (the worker then exits 0). Prints one JSON summary on stdout; exits 0 when what it
    expected happened (the reason is on stderr otherwise).

    \b
    Examples:
      vhostsplice drive --socket-path /tmp/w.sock --send 100 --size 1514
      vhostsplice drive --socket-path /tmp/w.sock --expect 5 --pcap rx.pcap --timeout 10
      vhostsplice drive --socket-path /tmp/w.sock --send 3 --fault avail-idx-jump --fault-after 2
      vhostsplice drive --list-faults
    """
    from ..tools import drive as drv
    from ..testing import faults
    if list_faults:
        click.echo(drv.list_faults(as_json))
        return 0
    if not socket_path:
        raise ConfigError("--socket-path PATH is required")
    if queue_size & (queue_size - 1) and not packed:
        raise ConfigError(f"--queue-size {queue_size} is not a power of 2")
    if packed and fault is not None:
        raise ConfigError("--fault writes split rings: not with --packed")
    if fault is not None and fault not in faults.BY_NAME:
        raise ConfigError(f"--fault {fault!r}: unknown; known: {', '.join(faults.BY_NAME)}")
    from ..tools.features import parse_features
    features = parse_features(features_text) if features_text else drv.DEFAULT_FEATURES
    opts = drv.DriveOptions(socket_path=socket_path, listen=not connect, connect_timeout=connect_timeout,
                            features=features, packed=packed, queue_size=queue_size, send=send, size=size,
                            expect=expect, rx_buffers=rx_buffers, rx_buffer_size=rx_buffer_size, pcap=pcap, fault=fault,
                            fault_after=fault_after, timeout=timeout, hold=hold, ready_file=ready_file)
    return drv.run_drive(opts)

