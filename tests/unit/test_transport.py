"""The UDP side of appliance/sip/transport.py, on real loopback sockets."""

from __future__ import annotations

import asyncio
import socket
import time

from appliance.sip.transaction import Peer
from appliance.sip.transport import Transports


def _receiver() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def _drain(sock: socket.socket) -> list[tuple[bytes, int]]:
    got = []
    while True:
        try:
            data, addr = sock.recvfrom(65535)
        except BlockingIOError:
            return got
        got.append((data, addr[1]))


def test_datagrams_of_one_loop_turn_leave_together_in_order():
    async def main() -> None:
        errors: list[Peer] = []
        transports = Transports(lambda data, peer: None, errors.append)
        port = await transports.listen_udp("127.0.0.1", 0)
        a, b = _receiver(), _receiver()
        try:
            pa = Peer("udp", "127.0.0.1", a.getsockname()[1])
            pb = Peer("udp", "127.0.0.1", b.getsockname()[1])
            for i in range(3):
                transports.send(pa, b"a%d" % i)
                transports.send(pb, b"b%d" % i)
            time.sleep(0.05)  # the loop's turn goes on: had they been sent, they would be here
            # Nothing leaves while this turn of the loop is still running...
            assert _drain(a) == [] and _drain(b) == []
            # ...and all of it, in order, from the SIP port, once the turn is over.
            await asyncio.sleep(0.05)
            assert _drain(a) == [(b"a0", port), (b"a1", port), (b"a2", port)]
            assert _drain(b) == [(b"b0", port), (b"b1", port), (b"b2", port)]

            transports.send(pa, b"last words")  # close() sends what is queued first
            await transports.close()
            await asyncio.sleep(0.05)
            assert _drain(a) == [(b"last words", port)]
            assert errors == []
        finally:
            a.close()
            b.close()

    asyncio.run(main())
