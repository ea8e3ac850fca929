"""Several processes on one UDP port (SO_REUSEPORT): requests by sender, responses to one.

Linux hands a datagram for a port shared with SO_REUSEPORT to one socket of the
group. By default it picks by a hash of the 4-tuple; `steer` replaces that with a
classic BPF program (SO_ATTACH_REUSEPORT_CBPF, Linux 4.5) that looks at the first
bytes of the SIP message: a request goes to socket number (source address + source
port) mod n, a response ("SIP/2.0 ...") to socket 0, the daemon's. The choice is the
same in every process and after a restart, and senders on neighbouring ports spread
evenly. A phone keeps its address and port, so everything it sends reaches the same
process: its REGISTERs, whose transactions stay whole there (RFC 3261 §17 matches
them per process), and an INVITE with its CANCEL, ACK and the caller's requests
within the call, even when the phone sends all of them to the box's port (an
outbound proxy set up). Responses come back to the port of the request they answer;
the daemon's requests leave from this port, a worker's from a port of its own. What
a process does with a request that belongs to another is appliance/workers.py's
business. Socket numbers follow the order in which the sockets joined (the daemon
binds first); a number without a socket (a worker being restarted) falls back to the
kernel's hash.
"""

from __future__ import annotations

import ctypes
import socket

SO_ATTACH_REUSEPORT_CBPF = 51  # <asm-generic/socket.h>
_NET = -0x100000  # SKF_NET_OFF: loads relative to the IP header


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


_SIP = int.from_bytes(b"SIP/", "big")


def program(n: int) -> list[tuple[int, int, int, int]]:
    """(code, jt, jf, k) of the steering program for a group of n sockets."""
    def net(offset: int) -> int:
        return (_NET + offset) & 0xFFFFFFFF
    return [
        (0x20, 0, 0, 0),         # ld [0]             the first 4 bytes of the SIP message
        (0x15, 0, 1, _SIP),      # jeq "SIP/"         (a shorter datagram ends here: 0)
        (0x06, 0, 0, 0),         # ret #0             a response: the daemon's socket
        (0x30, 0, 0, net(0)),    # steer: ldb [ip]    version and IHL
        (0x74, 0, 0, 4),         # rsh #4             version
        (0x15, 5, 0, 6),         # jeq #6, ipv6       (else IPv4)
        (0x20, 0, 0, net(12)),   # ld [ip+12]         IPv4 source address
        (0x07, 0, 0, 0),         # tax
        (0x28, 0, 0, net(20)),   # ldh [ip+20]        UDP source port (no IP options)
        (0x0C, 0, 0, 0),         # add x
        (0x05, 0, 0, 4),         # ja mod
        (0x20, 0, 0, net(20)),   # ipv6: ld [ip+20]   last 32 bits of the source address
        (0x07, 0, 0, 0),         # tax
        (0x28, 0, 0, net(40)),   # ldh [ip+40]        UDP source port
        (0x0C, 0, 0, 0),         # add x
        (0x94, 0, 0, n),         # mod: mod #n
        (0x16, 0, 0, 0),         # ret a
    ]


def socket_for(host: str, port: int, n: int) -> int:
    """The socket number `program(n)` picks for a sender's requests (what the daemon hands
    a stray ACK on to, what tests and the bench expect)."""
    if ":" in host:
        low = int.from_bytes(socket.inet_pton(socket.AF_INET6, host)[12:], "big")
    else:
        low = int.from_bytes(socket.inet_aton(host), "big")
    return ((low + port) & 0xFFFFFFFF) % n


def steer(sock: socket.socket, n: int) -> None:
    """Attach the program to the group `sock` belongs to (or will found when it binds).
    OSError if the kernel refuses it; the kernel's hash then stays in charge."""
    code = program(n)
    insns = (_SockFilter * len(code))(*(_SockFilter(*i) for i in code))
    fprog = _SockFprog(len(code), insns)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, bytes(fprog))
