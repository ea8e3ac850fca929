"""systemd integration by hand (no libsystemd): sd_notify and the watchdog interval.

The daemon sends "READY=1" once listening, "WATCHDOG=1" at least every
watchdog_interval()/2 seconds, "STOPPING=1" on shutdown and "STATUS=..." freely.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(state: str) -> bool:
    """Send one sd_notify datagram; False when not under systemd or the send failed.

    Never blocks: the socket is non-blocking, so a stuck receiver loses the message
    rather than stalling the event loop.
    """
    address = os.environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        return False  # unset, or a kind we do not speak (vsock:)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(state.encode(), address)
    except OSError as e:
        log.debug("sd_notify %r failed: %s", state, e)
        return False
    return True


def watchdog_interval() -> float | None:
    """The watchdog timeout in seconds if systemd expects pings from this process."""
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None  # meant for another process (e.g. our parent)
        except ValueError:
            return None
    return usec / 1_000_000
