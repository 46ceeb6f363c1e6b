"""`vhostsplice drive`'s own exit codes (README "Scripted error handling"; `drive --help` prints them): what
it was asked to see happened, or why not. A table alone, so that help text needs no driver loaded."""
from __future__ import annotations

import errno

DRIVE_EXITS: tuple[tuple[int, str, str], ...] = (
    (0, "OK", "what was asked for happened: frames sent and used, --expect frames received, the fault's reaction seen"),
    (errno.EINTR, "EINTR", "SIGTERM/SIGINT before the work was done (during --hold a signal just ends the hold: 0)"),
    (errno.EINVAL, "EINVAL", "bad usage: unknown feature or fault, a fault the acked features cannot carry, "
                             "a --listen path that exists, --packed against a worker that does not offer it"),
    (errno.EPROTO, "EPROTO", "the worker answered a request wrongly or refused it (REPLY_ACK)"),
    (errno.ECONNRESET, "ECONNRESET", "the worker closed the connection when nothing made that expected"),
    (errno.ETIMEDOUT, "ETIMEDOUT",
     "connected, but frames, used entries or the fault's reaction did not come within --timeout"),
    (errno.ECONNREFUSED, "ECONNREFUSED", "no worker to talk to within --connect-timeout"),
    (errno.EREMOTEIO, "EREMOTEIO", "the worker reacted to the fault, but not as the fault table says"),
    (1, "-", "internal error (a bug: the traceback is printed)"),
)


def exit_table_text() -> str:
    return "\n".join(f"  {code:>3}  {name:<12} {text}" for code, name, text in DRIVE_EXITS)
