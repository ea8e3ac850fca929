"""RTP/RTCP endpoints (RFC 3550) on UDP port pairs, with symmetric-RTP latching.

aiortc gives the wire formats: `aiortc.rtp.RtpPacket` and the RTCP packets
(`RtcpPacket.parse`, `RtcpSrPacket`, `RtcpRrPacket`, `RtcpSdesPacket`, ...).
Its transports (`RTCRtpSender`/`RTCRtpReceiver`) are bound to ICE and DTLS,
so this module writes what plain SIP media needs:

- `PortAllocator`: even RTP ports from a range (RTCP on RTP+1, RFC 3550 §11).
- `ReceiveStats`: sans-IO receive statistics, RFC 3550 A.1 (sequence
  tracking with cycles), A.3 (expected / lost / fraction lost) and A.8
  (interarrival jitter).
- `RtpEndpoint`: the asyncio side: one RTP and one RTCP socket, symmetric
  RTP latching (RFC 4961: send to where the peer's packets come from, which
  gets media through NAT), RTCP SR/RR parsing and generation.

Consumers set `on_rtp(packet, data, arrival)`: `data` is the datagram as
received, so a relay can forward it without serializing again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from struct import unpack_from

from aiortc.rtp import (
    AnyRtcpPacket,
    RtcpByePacket,
    RtcpPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    RtpPacket,
    clamp_packets_lost,
    is_rtcp,
)

from .sdp import Codec

log = logging.getLogger(__name__)

RTP_SEQ_MOD = 1 << 16
MAX_DROPOUT = 3000  # RFC 3550 A.1
MAX_MISORDER = 100
NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900 to 1970

Address = tuple[str, int]


class PortsExhausted(RuntimeError):
    """No free RTP port pair is left in the range."""


class PortAllocator:
    """Even RTP ports from `ports` (RTCP = RTP + 1), handed out round-robin.

    Round-robin means a port just released is the last to come back, so late
    packets of an ended call do not reach the next one.
    """

    def __init__(self, ports: range = range(10000, 20000)) -> None:
        first = ports.start + (ports.start % 2)
        self._ports = [p for p in range(first, ports.stop - 1, 2)]
        if not self._ports:
            raise ValueError(f"no even port pair in {ports}")
        self._free = set(self._ports)
        # Start somewhere random: two daemons (or a restart while old sockets linger)
        # then rarely walk into each other's ports.
        self._next = secrets.randbelow(len(self._ports))

    def __len__(self) -> int:
        return len(self._ports)

    @property
    def in_use(self) -> int:
        return len(self._ports) - len(self._free)

    def acquire(self) -> int:
        if not self._free:
            raise PortsExhausted(f"all {len(self._ports)} RTP port pairs are in use")
        for _ in range(len(self._ports)):
            port = self._ports[self._next]
            self._next = (self._next + 1) % len(self._ports)
            if port in self._free:
                self._free.discard(port)
                return port
        raise PortsExhausted("no free RTP port pair")  # pragma: no cover

    def release(self, port: int) -> None:
        if port in self._ports:
            self._free.add(port)


def ntp_time(wall: float) -> int:
    """64-bit NTP timestamp for a Unix time."""
    return int((wall + NTP_EPOCH_OFFSET) * (1 << 32)) & 0xFFFFFFFFFFFFFFFF


def ntp_middle(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp (LSR, DLSR units: 1/65536 s)."""
    return (ntp >> 16) & 0xFFFFFFFF


class ReceiveStats:
    """Receive statistics for one source (RFC 3550 A.1, A.3, A.8), without I/O.

    `update(seq, timestamp, arrival, size)` per packet: arrival in seconds on
    any monotonic clock. A new SSRC restarts the sequence state (the
    cumulative `packets`/`octets` stay).
    """

    def __init__(self, clock_rate: int = 8000) -> None:
        self.clock_rate = clock_rate
        self.ssrc: int | None = None
        self.packets = 0  # every RTP packet accepted, all sources
        self.octets = 0  # payload octets
        self._reset_source()

    def _reset_source(self) -> None:
        self.base_seq = 0
        self.max_seq = 0
        self.cycles = 0
        self.bad_seq = RTP_SEQ_MOD + 1
        self.received = 0  # this source, since the sequence state was (re)set
        self.jitter = 0.0  # in RTP timestamp units
        self._transit: float | None = None
        self._expected_prior = 0
        self._received_prior = 0

    @property
    def extended_max(self) -> int:
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        return 0 if self.received == 0 else self.extended_max - self.base_seq + 1

    @property
    def lost(self) -> int:
        """Cumulative packets lost (A.3); duplicates can make the raw figure negative."""
        return max(0, self.expected - self.received)

    @property
    def loss_ratio(self) -> float:
        return self.lost / self.expected if self.expected else 0.0

    @property
    def jitter_seconds(self) -> float:
        return self.jitter / self.clock_rate

    def update(self, seq: int, timestamp: int, arrival: float, size: int, ssrc: int = 0,
               *, jitter: bool = True) -> bool:
        """Account one packet; False if A.1 judged its sequence number bad."""
        if ssrc != self.ssrc or self.received == 0:
            if ssrc != self.ssrc:
                self._reset_source()
            self.ssrc = ssrc
            self.base_seq = self.max_seq = seq
            self.bad_seq = RTP_SEQ_MOD + 1
        else:
            udelta = (seq - self.max_seq) % RTP_SEQ_MOD
            if udelta < MAX_DROPOUT:
                if seq < self.max_seq:
                    self.cycles += RTP_SEQ_MOD
                self.max_seq = seq
            elif udelta <= RTP_SEQ_MOD - MAX_MISORDER:
                # A very large jump: accept it only if the next packet follows it.
                if seq == self.bad_seq:
                    self.base_seq = self.max_seq = seq
                    self.cycles = 0
                    self.received = 0
                    self._expected_prior = self._received_prior = 0
                    self._transit = None
                else:
                    self.bad_seq = (seq + 1) % RTP_SEQ_MOD
                    return False
            # else: duplicate or reordered packet, counted below
        self.received += 1
        self.packets += 1
        self.octets += size
        if jitter:
            transit = arrival * self.clock_rate - timestamp
            if self._transit is not None:
                d = transit - self._transit
                d = (d + (1 << 31)) % (1 << 32) - (1 << 31)  # timestamp wrap
                self.jitter += (abs(d) - self.jitter) / 16.0
            self._transit = transit
        return True

    def report_block(self, lsr: int = 0, dlsr: int = 0) -> RtcpReceiverInfo | None:
        """An RTCP report block for this source (A.3 interval fraction), or None if none yet."""
        if self.ssrc is None or self.received == 0:
            return None
        expected = self.expected
        expected_interval = expected - self._expected_prior
        received_interval = self.received - self._received_prior
        self._expected_prior = expected
        self._received_prior = self.received
        lost_interval = expected_interval - received_interval
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = min(255, (lost_interval << 8) // expected_interval)
        return RtcpReceiverInfo(
            ssrc=self.ssrc,
            fraction_lost=fraction,
            packets_lost=clamp_packets_lost(expected - self.received),
            highest_sequence=self.extended_max & 0xFFFFFFFF,
            jitter=int(self.jitter),
            lsr=lsr,
            dlsr=dlsr,
        )


@dataclass
class RemoteReport:
    """What the peer's last RTCP report block said about the stream we send."""

    fraction_lost: float  # 0..1 over the peer's last interval
    packets_lost: int  # cumulative
    jitter: float  # seconds
    highest_sequence: int
    rtt: float | None  # seconds, when the block answered one of our SRs
    received_at: float


class _RtpProtocol(asyncio.DatagramProtocol):
    def __init__(self, endpoint: RtpEndpoint, rtcp: bool) -> None:
        self.endpoint = endpoint
        self.rtcp = rtcp

    def datagram_received(self, data: bytes, addr: Address) -> None:  # type: ignore[override]
        if self.rtcp:
            self.endpoint._receive_rtcp(data, addr)
        else:
            self.endpoint._receive_rtp(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a peer that went away: not fatal for UDP.
        log.debug("RTP socket error on %s: %s", self.endpoint, exc)


RtpCallback = Callable[[RtpPacket, bytes, float], None]
RtcpCallback = Callable[[list[AnyRtcpPacket], bytes, float], None]


class RtpEndpoint:
    """One RTP/RTCP UDP port pair of the box, facing one peer.

    Open with `await RtpEndpoint.open(host, allocator)`. Tell it where the peer
    said to send (`set_remote`, from its SDP) and what was negotiated
    (`configure`). Incoming packets go to `on_rtp` / `on_rtcp`; `send_rtp`
    sends to the latched address once the peer's packets arrived, to the
    signalled one before.

    Latching (symmetric RTP, RFC 4961): the first RTP packet received sets the
    remote RTP address (and RTCP to its IP, port+1, until RTCP itself arrives).
    With `strict=True` only packets from the signalled IP may latch. Once
    latched, packets from other sources are dropped (`rejected`) unless the
    latched source has been silent for `relatch_after` seconds (NAT rebinding,
    a phone that moved).
    """

    def __init__(self, host: str, rtp_port: int, *, allocator: PortAllocator | None = None,
                 rtcp_mux: bool = False, cname: str | None = None) -> None:
        self.host = host
        self.rtp_port = rtp_port
        self.rtcp_port = rtp_port + 1
        self.rtcp_mux = rtcp_mux
        self._allocator = allocator
        self._rtp: asyncio.DatagramTransport | None = None
        self._rtcp: asyncio.DatagramTransport | None = None
        try:
            self._clock: Callable[[], float] = asyncio.get_running_loop().time
        except RuntimeError:  # built outside a loop (tests of the sans-IO parts)
            self._clock = time.monotonic
        self._loop: asyncio.AbstractEventLoop | None = None

        self.codec: Codec | None = None
        self.telephone_event: Codec | None = None
        self.clock_rate = 8000
        self.sending = True  # False while the SDP says we must not send (recvonly/inactive)

        self.signalled: Address | None = None
        self.signalled_rtcp: Address | None = None
        self.remote_rtp: Address | None = None
        self.remote_rtcp: Address | None = None
        self.latch = True
        self.strict = False
        self.latched = False
        self._rtcp_latched = False
        self.relatch_after = 2.0

        self.on_rtp: RtpCallback | None = None
        self.on_rtcp: RtcpCallback | None = None

        self.stats = ReceiveStats(self.clock_rate)
        self.rejected = 0  # from foreign sources, after latching
        self.malformed = 0
        self.sent_packets = 0
        self.sent_octets = 0  # payload octets, as in an SR
        self.rtcp_received = 0
        self.rtcp_sent = 0
        self.last_activity: float | None = None  # loop time of the last RTP or RTCP received
        self.last_rtp: float | None = None  # loop time of the last RTP received
        self.remote_report: RemoteReport | None = None
        self.remote_sender: RtcpSenderInfo | None = None
        self.bye = False

        self.ssrc = random.getrandbits(32)  # for RRs when we send no media ourselves
        self.cname = cname or f"appliance-{self.ssrc:08x}@{host}"
        self._send_ssrc: int | None = None
        self._send_ts = 0
        self._send_time = 0.0
        self._last_sr: int | None = None  # middle 32 bits of the peer's last SR
        self._last_sr_at = 0.0  # loop time it arrived
        self._sr_sent: dict[int, float] = {}  # our SR ntp middle -> loop time
        self._report_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<RtpEndpoint {self.host}:{self.rtp_port} -> {self.remote_rtp}>"

    @classmethod
    async def open(cls, host: str = "0.0.0.0", allocator: PortAllocator | None = None, *,
                   port: int | None = None, rtcp_mux: bool = False,
                   attempts: int = 512) -> RtpEndpoint:
        """Bind an RTP/RTCP pair on `host`: `port` if given, else one from `allocator`.

        Ports another process holds are skipped (up to `attempts` tries).
        """
        loop = asyncio.get_running_loop()
        allocator = allocator if port is None else None
        if port is None and allocator is None:
            allocator = _default_allocator()
        last_error: OSError | None = None
        for _ in range(attempts if port is None else 1):
            rtp_port = port if port is not None else allocator.acquire()  # type: ignore[union-attr]
            endpoint = cls(host, rtp_port, allocator=allocator, rtcp_mux=rtcp_mux)
            try:
                await endpoint._bind(loop)
                return endpoint
            except OSError as exc:
                last_error = exc
                endpoint.close()
        raise PortsExhausted(f"could not bind an RTP port pair on {host}: {last_error}")

    async def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._clock = loop.time
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._rtp, _ = await loop.create_datagram_endpoint(
            lambda: _RtpProtocol(self, rtcp=False), local_addr=(self.host, self.rtp_port),
            family=family)
        if not self.rtcp_mux:
            self._rtcp, _ = await loop.create_datagram_endpoint(
                lambda: _RtpProtocol(self, rtcp=True), local_addr=(self.host, self.rtcp_port),
                family=family)

    @property
    def local_address(self) -> Address:
        return self.host, self.rtp_port

    @property
    def closed(self) -> bool:
        return self._rtp is None

    def close(self) -> None:
        if self._report_task is not None:
            self._report_task.cancel()
            self._report_task = None
        for transport in (self._rtp, self._rtcp):
            if transport is not None:
                transport.close()
        self._rtp = self._rtcp = None
        if self._allocator is not None:
            self._allocator.release(self.rtp_port)
            self._allocator = None

    async def __aenter__(self) -> RtpEndpoint:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # -- configuration from the SDP --------------------------------------------------

    def configure(self, codec: Codec | None = None, telephone_event: Codec | None = None) -> None:
        """The codec the peer sends and receives on this leg, and its telephone-event format."""
        self.codec = codec
        self.telephone_event = telephone_event
        self.clock_rate = codec.clock_rate if codec else 8000
        self.stats.clock_rate = self.clock_rate

    def set_remote(self, host: str | None, port: int | None, rtcp_port: int | None = None, *,
                   latch: bool = True, strict: bool = False) -> None:
        """Where the peer's SDP says to send; None (or port 0) stops sending.

        Resets the latch: a new SDP may move the peer, so the next packets latch again.
        """
        if host is None or not port:
            self.signalled = self.signalled_rtcp = None
        else:
            self.signalled = (host, port)
            self.signalled_rtcp = (host, rtcp_port or (port if self.rtcp_mux else port + 1))
        self.remote_rtp = self.signalled
        self.remote_rtcp = self.signalled_rtcp
        self.latch = latch
        self.strict = strict
        self.latched = False
        self._rtcp_latched = False

    # -- receiving ----------------------------------------------------------------------

    def _may_latch(self, addr: Address) -> bool:
        return not self.strict or (self.signalled is not None and addr[0] == self.signalled[0])

    def _receive_rtp(self, data: bytes, addr: Address) -> None:
        now = self._clock()
        if self.rtcp_mux and is_rtcp(data):
            self._receive_rtcp(data, addr)
            return
        try:
            packet = RtpPacket.parse(data)  # before latching: garbage must not move the latch
        except ValueError:
            self.malformed += 1
            return
        if self.latch:
            if not self.latched:
                if not self._may_latch(addr):
                    self.rejected += 1
                    return
                self._latch(addr)
            elif addr != self.remote_rtp:
                silent = self.last_rtp is None or now - self.last_rtp > self.relatch_after
                if not (silent and self._may_latch(addr)):
                    self.rejected += 1
                    return
                self._latch(addr)
        self.last_activity = self.last_rtp = now
        te = self.telephone_event
        self.stats.update(packet.sequence_number, packet.timestamp, now, len(packet.payload),
                          packet.ssrc,
                          jitter=te is None or packet.payload_type != te.payload_type)
        if self.on_rtp is not None:
            self.on_rtp(packet, data, now)

    def _latch(self, addr: Address) -> None:
        log.debug("%s latched to %s", self, addr)
        self.remote_rtp = addr
        self.latched = True
        if not self._rtcp_latched:
            self.remote_rtcp = addr if self.rtcp_mux else (addr[0], addr[1] + 1)

    def _receive_rtcp(self, data: bytes, addr: Address) -> None:
        now = self._clock()
        if self.latch and self.strict and not self._may_latch(addr):
            self.rejected += 1
            return
        if self.latch and self.latched and addr[0] != self.remote_rtp[0]:  # type: ignore[index]
            self.rejected += 1
            return
        try:
            packets = RtcpPacket.parse(data)
        except (ValueError, IndexError):
            self.malformed += 1
            return
        if self.latch and not self.rtcp_mux:
            self.remote_rtcp = addr
            self._rtcp_latched = True
        self.last_activity = now
        self.rtcp_received += 1
        self.handle_rtcp(packets, now, time.time())
        if self.on_rtcp is not None:
            self.on_rtcp(packets, data, now)

    def handle_rtcp(self, packets: list[AnyRtcpPacket], now: float, wall: float) -> None:
        """Take in the peer's SR/RR/BYE (sans-IO: `now` loop time, `wall` Unix time)."""
        for p in packets:
            if isinstance(p, RtcpSrPacket):
                self._last_sr = ntp_middle(p.sender_info.ntp_timestamp)
                self._last_sr_at = now
                self.remote_sender = p.sender_info
                self._take_reports(p.reports, now, wall)
            elif isinstance(p, RtcpRrPacket):
                self._take_reports(p.reports, now, wall)
            elif isinstance(p, RtcpByePacket):
                self.bye = True

    def _take_reports(self, reports: list[RtcpReceiverInfo], now: float, wall: float) -> None:
        mine = (self._send_ssrc, self.ssrc)
        for block in reports:
            # In a plain relay the stream we send carries the far peer's SSRC:
            # when we have not sent with our own, any block is about our stream.
            if self._send_ssrc is not None and block.ssrc not in mine:
                continue
            rtt = None
            if block.lsr and block.lsr in self._sr_sent:
                # RFC 3550 §6.4.1: A - LSR - DLSR, in 1/65536 s.
                arrival = ntp_middle(ntp_time(wall))
                rtt = max(0.0, ((arrival - block.lsr - block.dlsr) & 0xFFFFFFFF) / 65536.0)
            self.remote_report = RemoteReport(
                fraction_lost=block.fraction_lost / 256.0,
                packets_lost=block.packets_lost,
                jitter=block.jitter / self.clock_rate,
                highest_sequence=block.highest_sequence,
                rtt=rtt,
                received_at=now,
            )

    # -- sending --------------------------------------------------------------------------

    def send_rtp(self, data: bytes | RtpPacket) -> bool:
        """Send one RTP packet to the peer; False when there is nowhere (or not allowed) to send."""
        if isinstance(data, RtpPacket):
            data = data.serialize()
        if self._rtp is None or self.remote_rtp is None or not self.sending:
            return False
        self._rtp.sendto(data, self.remote_rtp)
        self.sent_packets += 1
        if len(data) >= 12:
            self._send_ts, self._send_ssrc = unpack_from("!LL", data, 4)
            self._send_time = self._clock()
            self.sent_octets += len(data) - 12 - 4 * (data[0] & 0x0F)
        return True

    def send_rtcp(self, data: bytes) -> bool:
        transport = self._rtp if self.rtcp_mux else self._rtcp
        if transport is None or self.remote_rtcp is None:
            return False
        transport.sendto(data, self.remote_rtcp)
        self.rtcp_sent += 1
        return True

    def build_report(self, now: float | None = None, wall: float | None = None) -> bytes:
        """A compound RTCP packet: SR if we sent media since the last one, else RR; SDES CNAME.

        `now` is loop time (default: the loop's clock), `wall` Unix time.
        """
        now = self._clock() if now is None else now
        wall = time.time() if wall is None else wall
        lsr = dlsr = 0
        if self._last_sr is not None:
            lsr = self._last_sr
            dlsr = int((now - self._last_sr_at) * 65536) & 0xFFFFFFFF
        block = self.stats.report_block(lsr, dlsr)
        blocks = [block] if block is not None else []
        if self._send_ssrc is not None and self.sent_packets:
            ntp = ntp_time(wall)
            rtp_ts = (self._send_ts + int((now - self._send_time) * self.clock_rate)) & 0xFFFFFFFF
            sr = RtcpSrPacket(
                ssrc=self._send_ssrc,
                sender_info=RtcpSenderInfo(ntp_timestamp=ntp, rtp_timestamp=rtp_ts,
                                           packet_count=self.sent_packets & 0xFFFFFFFF,
                                           octet_count=self.sent_octets & 0xFFFFFFFF),
                reports=blocks,
            )
            self._sr_sent[ntp_middle(ntp)] = now
            if len(self._sr_sent) > 8:
                self._sr_sent.pop(next(iter(self._sr_sent)))
            first: RtcpSrPacket | RtcpRrPacket = sr
            ssrc = self._send_ssrc
        else:
            first = RtcpRrPacket(ssrc=self.ssrc, reports=blocks)
            ssrc = self.ssrc
        sdes = RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=ssrc, items=[(1, self.cname.encode())])])
        return bytes(first) + bytes(sdes)

    def send_report(self) -> bool:
        return self.send_rtcp(self.build_report())

    def start_reports(self, interval: float = 5.0) -> None:
        """Send an RTCP report every `interval` seconds (randomized 0.5–1.5x, RFC 3550 §6.2)."""
        if self._report_task is None and self._loop is not None:
            self._report_task = self._loop.create_task(self._report_loop(interval))

    def stop_reports(self) -> None:
        if self._report_task is not None:
            self._report_task.cancel()
            self._report_task = None

    async def _report_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval * random.uniform(0.5, 1.5))
            if self.remote_rtcp is not None and (self.stats.received or self.sent_packets):
                self.send_report()


_allocator: PortAllocator | None = None


def _default_allocator() -> PortAllocator:
    global _allocator
    if _allocator is None:
        _allocator = PortAllocator()
    return _allocator
