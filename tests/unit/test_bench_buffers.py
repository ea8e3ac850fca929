"""The bench reads the UDP receive buffer the kernel granted each server's SIP port
(bench/run.py `udp_receive_buffers`, via `ss -m`) and says so when they differ: a server
with the smaller buffer drops a burst the other queues, and a drop fails a step."""

from __future__ import annotations

import socket

from bench.run import receive_buffer_notes, udp_receive_buffers


def _udp(size: int, port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    s.bind(("127.0.0.1", port))
    return s


def test_udp_receive_buffers_are_what_the_kernel_granted() -> None:
    a = _udp(65536)
    port = a.getsockname()[1]
    b = _udp(100_000, port)   # a second process's socket on the port (SO_REUSEPORT)
    try:
        granted = sorted(s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) for s in (a, b))
        # socket(7): the kernel doubles the value asked for (room for its bookkeeping)
        assert granted == [131072, 200000]
        assert udp_receive_buffers(port) == granted
    finally:
        a.close()
        b.close()
    assert udp_receive_buffers(port) == []


def _results(buffers: dict[str, int | None]) -> dict:
    return {"calls": {name: {"figure": 800, "udp_receive_buffer_bytes": n}
                      for name, n in buffers.items()} | {"appliance": {"figure": 800}}}


def test_differing_receive_buffers_are_warned_about() -> None:
    notes = receive_buffer_notes(_results({"appliance_1p": 8388608, "kamailio_1p": 524288}))
    assert notes[0] == "UDP receive buffer, calls: appliance 1p 8.0 MB, kamailio 1p 0.5 MB"
    assert notes[1].startswith("WARNING: the servers' UDP receive buffers differed (calls)")
    same = receive_buffer_notes(_results({"appliance_1p": 8388608, "kamailio_1p": 8388608}))
    assert same == ["UDP receive buffer, calls: appliance 1p 8.0 MB, kamailio 1p 8.0 MB"]
