"""The SO_REUSEPORT steering program (appliance/sip/reuseport.py) in the real kernel."""
# Requests go by source address + port; responses (and what is too short to tell) to
# socket 0 (the daemon's).

from __future__ import annotations

import select
import socket

import pytest

from appliance.sip import reuseport


def _group(family: int, host: str, n: int) -> list[socket.socket]:
    socks: list[socket.socket] = []
    port = 0
    for i in range(n):
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((host, port))
        port = s.getsockname()[1]
        if i == 0:
            reuseport.steer(s, n)
        socks.append(s)
    return socks


def _arrival(socks: list[socket.socket]) -> int:
    """The number of the one socket the datagram just sent arrived at."""
    ready, _, _ = select.select(socks, [], [], 2.0)
    assert len(ready) == 1
    ready[0].recvfrom(64)
    return socks.index(ready[0])


@pytest.mark.parametrize("family,host", [(socket.AF_INET, "127.0.0.1"),
                                         (socket.AF_INET6, "::1")])
def test_requests_spread_by_sender_responses_go_to_the_first_socket(family, host):
    try:
        socks = _group(family, host, 3)
    except OSError as e:
        if family == socket.AF_INET6:
            pytest.skip(f"no IPv6 loopback here: {e}")
        raise
    port = socks[0].getsockname()[1]
    senders = []
    try:
        seen: dict[int, list[int]] = {0: [], 1: [], 2: []}
        for _ in range(60):  # until every socket got a sender (random ports: a few)
            if all(seen.values()):
                break
            c = socket.socket(family, socket.SOCK_DGRAM)
            senders.append(c)
            c.bind((host, 0))
            sport = c.getsockname()[1]
            steered = (b"REGISTER sip:example.com SIP/2.0\r\n",
                       b"REGISTER sip:example.com SIP/2.0\r\n",  # twice: the same socket
                       b"INVITE sip:100@example.com SIP/2.0\r\n",
                       b"CANCEL sip:100@example.com SIP/2.0\r\n",
                       b"ACK sip:100@example.com SIP/2.0\r\n", b"BYE sip:x SIP/2.0\r\n",
                       b"OPTIONS sip:example.com SIP/2.0\r\n", b"\r\n\r\n")
            for request in steered:
                c.sendto(request, (host, port))
                seen[_arrival(socks)].append(sport)
            mine = seen[reuseport.socket_for(host, sport, 3)]
            assert mine[-len(steered):] == [sport] * len(steered)
            for other in (b"SIP/2.0 200 OK\r\n", b"SIP/2.0 180 Ringing\r\n",
                          b"x", b"REG"):  # shorter than 4 bytes: too short to tell: 0
                c.sendto(other, (host, port))
                assert _arrival(socks) == 0, other
        assert all(seen.values())  # senders spread over all three sockets
    finally:
        for s in socks + senders:
            s.close()


def test_socket_for_is_source_address_plus_port_mod_n():
    assert reuseport.socket_for("127.0.0.1", 40000, 3) == (0x7F000001 + 40000) % 3
    assert reuseport.socket_for("::1", 5060, 2) == (1 + 5060) % 2
    assert reuseport.socket_for("255.255.255.255", 1, 7) == 0  # 32-bit wrap, as in BPF
