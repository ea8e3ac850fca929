"""RTP endpoints: port allocation, RFC 3550 statistics, latching and RTCP on loopback UDP."""

from __future__ import annotations

import asyncio
import random
import socket
import time

import pytest
from aiortc.rtp import (
    RtcpPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSrPacket,
    RtpPacket,
)

from appliance.media.rtp import (
    PortAllocator,
    PortsExhausted,
    ReceiveStats,
    RtpEndpoint,
    ntp_middle,
    ntp_time,
)
from appliance.media.sdp import Codec

HOST = "127.0.0.1"
PCMU = Codec(0, "PCMU", 8000)


def allocator() -> PortAllocator:
    start = random.randrange(30000, 39000, 2)
    return PortAllocator(range(start, start + 200))


class Peer(asyncio.DatagramProtocol):
    """A bare UDP socket on loopback standing in for a phone."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait((data, addr))

    @property
    def address(self) -> tuple[str, int]:
        return self.transport.get_extra_info("sockname")[:2]  # type: ignore[union-attr]

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)  # type: ignore[union-attr]

    async def recv(self, timeout: float = 2.0) -> tuple[bytes, tuple[str, int]]:
        return await asyncio.wait_for(self.queue.get(), timeout)

    def close(self) -> None:
        self.transport.close()  # type: ignore[union-attr]


async def peer(port: int = 0) -> Peer:
    _, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
        Peer, local_addr=(HOST, port))
    return protocol


def rtp(seq: int, ts: int, ssrc: int = 0xABC, pt: int = 0, payload: bytes = b"\xff" * 160) -> bytes:
    return RtpPacket(payload_type=pt, sequence_number=seq & 0xFFFF, timestamp=ts & 0xFFFFFFFF,
                     ssrc=ssrc, payload=payload).serialize()


async def until(predicate, timeout: float = 2.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


# -- port allocation ----------------------------------------------------------------------------


def test_port_allocator_hands_out_even_ports_round_robin() -> None:
    ports = PortAllocator(range(10001, 10010))
    assert len(ports) == 4  # 10002, 10004, 10006, 10008 (10009 has no +1 in range)
    got = [ports.acquire() for _ in range(4)]
    # It starts at a random pair (two daemons rarely collide), then goes round in order.
    start = got.index(10002)
    assert got[start:] + got[:start] == [10002, 10004, 10006, 10008] and ports.in_use == 4
    with pytest.raises(PortsExhausted):
        ports.acquire()
    ports.release(10004)
    ports.release(10002)
    # round robin: the cursor is back where it started, the free pairs come in order
    assert sorted([ports.acquire(), ports.acquire()]) == [10002, 10004]
    with pytest.raises(ValueError):
        PortAllocator(range(10001, 10002))


def test_open_skips_ports_in_use() -> None:
    async def main() -> None:
        ports = allocator()
        first = ports.acquire()
        ports.release(first)
        blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        blocker.bind((HOST, first + 1))  # someone holds the RTCP port of the first pair
        try:
            ep = await RtpEndpoint.open(HOST, ports)
            assert ep.rtp_port != first and ep.rtp_port % 2 == 0
            assert ep.rtcp_port == ep.rtp_port + 1
            assert ports.in_use == 1
            ep.close()
            assert ports.in_use == 0 and ep.closed
        finally:
            blocker.close()

    asyncio.run(main())


# -- RFC 3550 statistics (sans-IO) -----------------------------------------------------------------


def test_receive_stats_loss_reorder_duplicates_and_wrap() -> None:
    st = ReceiveStats(8000)
    seqs = list(range(65500, 65536)) + list(range(0, 64))  # 100 packets across the wrap
    lost = {65510, 65520, 3, 4, 40}
    sent = [s for s in seqs if s not in lost]
    sent[10], sent[11] = sent[11], sent[10]  # one reordering
    for i, s in enumerate(sent):
        st.update(s, i * 160, i * 0.02, 160, ssrc=1)
    st.update(sent[-1], 0, 2.0, 160, ssrc=1)  # a duplicate
    assert st.expected == 100 and st.received == 96 and st.lost == 4  # duplicate hides one
    assert st.cycles == 65536 and st.max_seq == 63
    block = st.report_block()
    assert block is not None and block.highest_sequence == 65536 + 63
    assert block.packets_lost == 4 and block.fraction_lost == (4 << 8) // 100


def test_receive_stats_jitter_matches_rfc3550_a8() -> None:
    st = ReceiveStats(8000)
    rng = random.Random(3)
    expected = 0.0
    last_transit = None
    for i in range(200):
        arrival = i * 0.02 + rng.uniform(0, 0.01)
        st.update(i, (1000 + i * 160) & 0xFFFFFFFF, arrival, 160, ssrc=9)
        transit = arrival * 8000 - (1000 + i * 160)
        if last_transit is not None:
            expected += (abs(transit - last_transit) - expected) / 16
        last_transit = transit
    assert st.jitter == pytest.approx(expected)
    assert 0.001 < st.jitter_seconds < 0.01


def test_receive_stats_new_ssrc_and_big_jump() -> None:
    st = ReceiveStats()
    for i in range(10):
        st.update(100 + i, i * 160, i * 0.02, 160, ssrc=1)
    assert not st.update(30000, 0, 0.3, 160, ssrc=1)  # a jump: wait for the next one
    assert st.update(30001, 160, 0.32, 160, ssrc=1)  # it follows: restart
    assert st.received == 1 and st.lost == 0 and st.base_seq == 30001
    st.update(7, 0, 0.4, 160, ssrc=2)
    assert st.ssrc == 2 and st.received == 1 and st.packets == 12


# -- endpoints on loopback ---------------------------------------------------------------------------


def test_latching_follows_the_real_source() -> None:
    async def main() -> None:
        ports = allocator()
        ep = await RtpEndpoint.open(HOST, ports)
        ep.configure(PCMU)
        phone = await peer()
        # The SDP names a port the phone does not send from (NAT): latch to the real one.
        ep.set_remote(HOST, 9, latch=True)
        received = []
        ep.on_rtp = lambda packet, data, arrival: received.append(packet.sequence_number)
        phone.send(rtp(1, 0), ep.local_address)
        await until(lambda: received == [1])
        assert ep.latched and ep.remote_rtp == phone.address
        assert ep.remote_rtcp == (HOST, phone.address[1] + 1)
        assert ep.send_rtp(rtp(50, 0, ssrc=77))
        data, addr = await phone.recv()
        assert RtpPacket.parse(data).sequence_number == 50 and addr == ep.local_address
        # Another source is ignored while the latched one keeps talking.
        intruder = await peer()
        intruder.send(rtp(2, 160, ssrc=5), ep.local_address)
        phone.send(rtp(2, 160), ep.local_address)
        await until(lambda: received == [1, 2] and ep.rejected == 1)
        assert ep.remote_rtp == phone.address
        # After the latched source fell silent, a new one may take over (re-INVITE-less move).
        ep.relatch_after = 0.05
        await asyncio.sleep(0.1)
        intruder.send(rtp(3, 320, ssrc=5), ep.local_address)
        await until(lambda: received == [1, 2, 3])
        assert ep.remote_rtp == intruder.address
        # A new SDP resets the latch.
        ep.set_remote(HOST, phone.address[1])
        assert not ep.latched and ep.remote_rtp == phone.address
        ep.close()
        phone.close()
        intruder.close()

    asyncio.run(main())


def test_strict_latching_only_from_the_signalled_address() -> None:
    async def main() -> None:
        ep = await RtpEndpoint.open(HOST, allocator())
        ep.set_remote(HOST, 4000, strict=True)
        ep._receive_rtp(b"\x80junk", (HOST, 4002))  # garbage never latches
        assert ep.malformed == 1 and not ep.latched
        # Injected without any traffic: a packet from another host may not latch.
        ep._receive_rtp(rtp(1, 0), ("127.0.0.9", 4000))
        assert ep.rejected == 1 and not ep.latched
        ep._receive_rtp(rtp(2, 160), (HOST, 4002))
        assert ep.latched and ep.remote_rtp == (HOST, 4002)
        ep.close()

    asyncio.run(main())


def test_endpoint_counts_loss_and_sends_nothing_without_a_remote() -> None:
    async def main() -> None:
        ep = await RtpEndpoint.open(HOST, allocator())
        ep.configure(PCMU, Codec(101, "telephone-event", 8000))
        assert not ep.send_rtp(rtp(1, 0))  # no remote yet
        phone = await peer()
        ep.set_remote(*phone.address)
        for i in range(50):
            if i % 10 != 3:
                phone.send(rtp(1000 + i, i * 160), ep.local_address)
        phone.send(b"\x00\x01junk", ep.local_address)
        await until(lambda: ep.stats.received == 45 and ep.malformed == 1)
        assert ep.stats.lost == 5 and ep.stats.expected == 50
        assert ep.last_activity is not None and ep.last_rtp is not None
        ep.sending = False  # the SDP said recvonly
        assert not ep.send_rtp(rtp(1, 0))
        ep.close()
        phone.close()

    asyncio.run(main())


def test_rtcp_reports_in_and_out() -> None:
    async def main() -> None:
        ep = await RtpEndpoint.open(HOST, allocator())
        ep.configure(PCMU)
        phone = await peer()
        phone_rtcp = await peer()
        ep.set_remote(HOST, phone.address[1], phone_rtcp.address[1])
        # We send media, then report: an SR for our stream with a block for theirs.
        for i in range(10):
            phone.send(rtp(i, i * 160, ssrc=0x1111), ep.local_address)
            ep.send_rtp(rtp(500 + i, 8000 + i * 160, ssrc=0x2222))
        await until(lambda: ep.stats.received == 10)
        # The phone's SR arrives first, so our report answers it (LSR/DLSR).
        their_ntp = ntp_time(time.time())
        sr = RtcpSrPacket(ssrc=0x1111, sender_info=RtcpSenderInfo(
            ntp_timestamp=their_ntp, rtp_timestamp=1600, packet_count=10, octet_count=1600))
        phone_rtcp.send(bytes(sr), (HOST, ep.rtcp_port))
        await until(lambda: ep.remote_sender is not None)
        assert ep.remote_rtcp == phone_rtcp.address
        assert ep.send_report()
        data, _ = await phone_rtcp.recv()
        ours = RtcpPacket.parse(data)
        assert isinstance(ours[0], RtcpSrPacket) and isinstance(ours[1], RtcpSdesPacket)
        assert ours[0].ssrc == 0x2222 and ours[0].sender_info.packet_count == 10
        assert ours[0].sender_info.octet_count == 1600
        block = ours[0].reports[0]
        assert block.ssrc == 0x1111 and block.packets_lost == 0
        assert block.highest_sequence == 9 and block.lsr == ntp_middle(their_ntp)
        # The phone's RR answering our SR gives loss, jitter and a round-trip time.
        rr = RtcpRrPacket(ssrc=0x1111, reports=[RtcpReceiverInfo(
            ssrc=0x2222, fraction_lost=64, packets_lost=3, highest_sequence=509,
            jitter=80, lsr=ntp_middle(ours[0].sender_info.ntp_timestamp), dlsr=0)])
        phone_rtcp.send(bytes(rr), (HOST, ep.rtcp_port))
        await until(lambda: ep.remote_report is not None)
        report = ep.remote_report
        assert report.fraction_lost == 0.25 and report.packets_lost == 3
        assert report.jitter == pytest.approx(0.01)
        assert report.rtt is not None and 0 <= report.rtt < 0.5
        ep.close()
        phone.close()
        phone_rtcp.close()

    asyncio.run(main())


def test_receiver_report_when_not_sending() -> None:
    async def main() -> None:
        ep = await RtpEndpoint.open(HOST, allocator())
        ep._receive_rtp(rtp(1, 0, ssrc=5), (HOST, 4000))
        packets = RtcpPacket.parse(ep.build_report())
        assert isinstance(packets[0], RtcpRrPacket) and packets[0].ssrc == ep.ssrc
        assert packets[0].reports[0].ssrc == 5
        assert packets[1].chunks[0].items[0][1] == ep.cname.encode()
        ep.close()

    asyncio.run(main())
