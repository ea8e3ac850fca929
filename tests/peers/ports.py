"""Free loopback ports for tests.

The kernel picks a free port (bind to port 0); for ``kind="both"`` the same
number must also be bindable with the other protocol, so we retry until one is.
There is an unavoidable race between probing and the real bind; callers that
start a server should retry on EADDRINUSE if they can.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable

LOOPBACK = "127.0.0.1"

_recent: set[int] = set()  # avoid handing out the same port twice in one run


def _can_bind(family: int, stype: int, host: str, port: int) -> bool:
    s = socket.socket(family, stype)
    try:
        if stype == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(kind: str = "both", host: str = LOOPBACK, attempts: int = 200) -> int:
    """Return a port on ``host`` that is free for ``kind``: "udp", "tcp" or "both"."""
    if kind not in ("udp", "tcp", "both"):
        raise ValueError(f"kind must be udp, tcp or both, not {kind!r}")
    fam = _family(host)
    for _ in range(attempts):
        first = socket.SOCK_DGRAM if kind in ("udp", "both") else socket.SOCK_STREAM
        s = socket.socket(fam, first)
        try:
            s.bind((host, 0))
            port = s.getsockname()[1]
        finally:
            s.close()
        if port in _recent:
            continue
        if kind == "both" and not _can_bind(fam, socket.SOCK_STREAM, host, port):
            continue
        _recent.add(port)
        return port
    raise RuntimeError(f"no free {kind} port found on {host}")


def free_port_block(count: int, kind: str = "both", host: str = LOOPBACK,
                    attempts: int = 200) -> int:
    """Return the first of ``count`` consecutive ports all free for ``kind``.

    Needed for baresip, whose TLS listener is the SIP port + 1.
    """
    fam = _family(host)
    kinds: Iterable[int] = {
        "udp": (socket.SOCK_DGRAM,),
        "tcp": (socket.SOCK_STREAM,),
        "both": (socket.SOCK_DGRAM, socket.SOCK_STREAM),
    }[kind]
    for _ in range(attempts):
        base = free_port(kind, host)
        if base + count - 1 > 65535:
            continue
        ok = all(
            _can_bind(fam, t, host, p)
            for p in range(base + 1, base + count)
            for t in kinds
        ) and not any(p in _recent for p in range(base + 1, base + count))
        if ok:
            _recent.update(range(base, base + count))
            return base
    raise RuntimeError(f"no block of {count} free {kind} ports on {host}")
