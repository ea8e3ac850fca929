"""Relay RTP between the two legs of a call, forwarding or transcoding.

`Relay(a, b)` reads what each `RtpEndpoint` was configured with (its codec and
telephone-event format, set by the PBX from the SDP) and picks, per direction:

- **forward**: both legs use the same codec. The datagram is sent on as
  received; only the payload-type byte is rewritten when the two legs number
  the codec (or telephone-event) differently. SSRC, sequence numbers and
  timestamps pass through, so the peers' RTCP is forwarded too.
- **transcode**: the codecs differ. `Transcoder` decodes with aiortc's decoder,
  resamples with PyAV's `AudioResampler` when the rates differ, encodes with
  aiortc's encoder, and sends under its own SSRC, sequence numbers and
  timestamps. RFC 4733 telephone-events are carried across in the new
  stream's numbering (payload type mapped, timestamps and durations rescaled).
  Each endpoint then sends its own RTCP reports.
- **passthrough**: a leg has no codec configured; everything is forwarded as is.

Telephone-events are also decoded on the way (`on_dtmf`), so the PBX can act
on digits or send them as SIP INFO to a leg that did not negotiate RFC 4733.
`last_activity` / `idle()` / `watch()` give the media timeout.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from aiortc.rtp import AnyRtcpPacket, RtpPacket

from .codecs import create_decoder, create_encoder, frame_clock, sample_rate
from .dtmf import DtmfEvent, TelephoneEvent, TelephoneEventDetector
from .rtp import RtpEndpoint
from .sdp import Codec

log = logging.getLogger(__name__)

MASK32 = 0xFFFFFFFF


class _Unwrapper:
    """32-bit RTP timestamps to a monotonic-ish extended count."""

    def __init__(self) -> None:
        self.highest: int | None = None

    def __call__(self, ts: int) -> int:
        if self.highest is None:
            self.highest = ts
            return ts
        diff = (ts - self.highest) % (1 << 32)
        if diff >= 1 << 31:
            diff -= 1 << 32
        ext = self.highest + diff
        self.highest = max(self.highest, ext)
        return ext


class Transcoder:
    """RTP packets in one codec in, RTP packets in another out (sans-IO).

    The output stream has its own random SSRC, sequence numbers and timestamps.
    Output timestamps follow the input's (rescaled to the output clock), so a
    gap from loss or silence suppression stays a gap, with the marker set on
    the first packet after it. Packets older than the newest one seen are
    dropped (the decoders are stateful). Telephone-events are renumbered into
    the same stream, or dropped if the output leg has no telephone-event.
    """

    def __init__(self, src: Codec, dst: Codec, *, src_event: Codec | None = None,
                 dst_event: Codec | None = None, ssrc: int | None = None,
                 ptime: float = 0.02) -> None:
        self.src, self.dst = src, dst
        self.src_event, self.dst_event = src_event, dst_event
        rate = sample_rate(dst)
        self.decoder = create_decoder(src, rate)
        self.encoder = create_encoder(dst, rate)
        self.ssrc = ssrc if ssrc is not None else random.getrandbits(32)
        self.sequence = random.getrandbits(16)
        self._ts0 = random.getrandbits(32)
        self.frame = frame_clock(dst, ptime)
        self._scale = dst.clock_rate / src.clock_rate
        self._unwrap = _Unwrapper()
        self._in_ref: int | None = None
        self._in_last: int | None = None
        self._next: int | None = None  # next output timestamp, relative to _ts0
        self._marker = True
        self.packets_in = 0
        self.packets_out = 0
        self.dropped = 0

    def _map(self, ext: int) -> int:
        if self._in_ref is None:
            self._in_ref = ext
        return round((ext - self._in_ref) * self._scale)

    def _packet(self, pt: int, marker: bool, ts: int, payload: bytes) -> RtpPacket:
        packet = RtpPacket(payload_type=pt, marker=int(marker), sequence_number=self.sequence,
                           timestamp=(self._ts0 + ts) & MASK32, ssrc=self.ssrc, payload=payload)
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.packets_out += 1
        return packet

    def feed(self, packet: RtpPacket) -> list[RtpPacket]:
        self.packets_in += 1
        pt = packet.payload_type
        if self.src_event is not None and pt == self.src_event.payload_type:
            return self._event(packet)
        if pt != self.src.payload_type:
            self.dropped += 1  # comfort noise or a format we did not negotiate
            return []
        ext = self._unwrap(packet.timestamp)
        if self._in_last is not None and ext <= self._in_last:
            self.dropped += 1
            return []
        self._in_last = ext
        mapped = self._map(ext)
        if self._next is None or mapped - self._next > self.frame or packet.marker:
            if self._next is not None and mapped > self._next:
                self._marker = True
            self._next = mapped if self._next is None else max(self._next, mapped)
        pcm = self.decoder.decode(packet.payload, packet.timestamp)
        out = []
        for payload in self.encoder.encode(pcm):
            out.append(self._packet(self.dst.payload_type, self._marker, self._next, payload))
            self._marker = False
            self._next += self.frame
        return out

    def _event(self, packet: RtpPacket) -> list[RtpPacket]:
        if self.dst_event is None:
            self.dropped += 1
            return []
        try:
            te = TelephoneEvent.parse(packet.payload)
        except ValueError:
            self.dropped += 1
            return []
        scale = self.dst_event.clock_rate / self.src_event.clock_rate  # type: ignore[union-attr]
        duration = min(0xFFFF, round(te.duration * scale))
        payload = bytes(TelephoneEvent(te.event, te.end, te.volume, duration))
        ts = self._map(self._unwrap(packet.timestamp))
        return [self._packet(self.dst_event.payload_type, bool(packet.marker), ts, payload)]


@dataclass
class DirectionStats:
    packets: int = 0
    forwarded: int = 0
    transcoded_in: int = 0
    sent: int = 0
    dropped: int = 0
    dtmf: int = 0


class _Direction:
    """One way of the relay: packets received on `src` go out of `dst`."""

    def __init__(self, relay: Relay, src: RtpEndpoint, dst: RtpEndpoint) -> None:
        self.relay = relay
        self.src, self.dst = src, dst
        self.stats = DirectionStats()
        self.detector = TelephoneEventDetector()
        self.transcoder: Transcoder | None = None
        self.pt_map: dict[int, int] | None = None  # None: passthrough
        sc, dc = src.codec, dst.codec
        se, de = src.telephone_event, dst.telephone_event
        if sc is None or dc is None:
            self.mode = "passthrough"
        elif sc.matches(dc):
            self.mode = "forward"
            self.pt_map = {sc.payload_type: dc.payload_type}
            if se is not None and de is not None and se.clock_rate == de.clock_rate:
                self.pt_map[se.payload_type] = de.payload_type
        else:
            self.mode = "transcode"
            self.transcoder = Transcoder(sc, dc, src_event=se, dst_event=de)
        self.event_pt = se.payload_type if se is not None else None

    def handle(self, packet: RtpPacket, data: bytes, arrival: float = 0.0) -> None:
        stats = self.stats
        stats.packets += 1
        pt = packet.payload_type
        if pt == self.event_pt:
            event = self.detector.feed(packet)
            if event is not None:
                stats.dtmf += 1
                if self.relay.on_dtmf is not None:
                    self.relay.on_dtmf(self.src, event)
        if self.transcoder is not None:
            stats.transcoded_in += 1
            for out in self.transcoder.feed(packet):
                if self.dst.send_rtp(out.serialize()):
                    stats.sent += 1
            return
        if self.pt_map is not None:
            new_pt = self.pt_map.get(pt)
            if new_pt is None:
                stats.dropped += 1
                return
            if new_pt != pt:
                data = bytes((data[0], (data[1] & 0x80) | new_pt)) + data[2:]
        stats.forwarded += 1
        if self.dst.send_rtp(data):
            stats.sent += 1


class Relay:
    """Media between two call legs. `start()` wires the endpoints; `stop()` unwires them.

    After a re-INVITE changes a leg's codec, `configure` the endpoint and call
    `update()`. `on_dtmf(endpoint, event)` is called once per digit received on
    either leg.
    """

    def __init__(self, a: RtpEndpoint, b: RtpEndpoint, *,
                 on_dtmf: Callable[[RtpEndpoint, DtmfEvent], None] | None = None,
                 rtcp_interval: float = 5.0) -> None:
        self.a, self.b = a, b
        self.on_dtmf = on_dtmf
        self.rtcp_interval = rtcp_interval
        self.started_at: float | None = None
        self.running = False
        self._watch: asyncio.Task[None] | None = None
        self._build()

    def _build(self) -> None:
        self.ab = _Direction(self, self.a, self.b)
        self.ba = _Direction(self, self.b, self.a)

    @property
    def mode(self) -> str:
        """"forward", "transcode" or "passthrough" (mixed modes as "a->b/b->a")."""
        if self.ab.mode == self.ba.mode:
            return self.ab.mode
        return f"{self.ab.mode}/{self.ba.mode}"

    @property
    def transcoding(self) -> bool:
        return self.ab.transcoder is not None or self.ba.transcoder is not None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.started_at = loop.time()
        self.running = True
        self.a.on_rtp = self.ab.handle
        self.b.on_rtp = self.ba.handle
        self._wire_rtcp()

    def _wire_rtcp(self) -> None:
        if self.transcoding:
            # Each leg is its own RTP session now: terminate RTCP and report per leg.
            self.a.on_rtcp = self.b.on_rtcp = None
            self.a.start_reports(self.rtcp_interval)
            self.b.start_reports(self.rtcp_interval)
        else:
            self.a.stop_reports()
            self.b.stop_reports()
            self.a.on_rtcp = self._rtcp_to(self.b)
            self.b.on_rtcp = self._rtcp_to(self.a)

    @staticmethod
    def _rtcp_to(dst: RtpEndpoint) -> Callable[[list[AnyRtcpPacket], bytes, float], None]:
        def forward(packets: list[AnyRtcpPacket], data: bytes, now: float) -> None:
            dst.send_rtcp(data)
        return forward

    def update(self) -> None:
        """Re-read the endpoints' codecs (after a re-INVITE) and re-pick the modes."""
        self._build()
        if self.running:
            self.a.on_rtp = self.ab.handle
            self.b.on_rtp = self.ba.handle
            self._wire_rtcp()

    def stop(self) -> None:
        self.running = False
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        for ep in (self.a, self.b):
            ep.on_rtp = None
            ep.on_rtcp = None
            ep.stop_reports()

    @property
    def last_activity(self) -> float | None:
        """Loop time of the last RTP or RTCP received on either leg (None: nothing yet)."""
        times = [t for t in (self.a.last_activity, self.b.last_activity) if t is not None]
        return max(times) if times else None

    def idle(self, now: float | None = None) -> float:
        """Seconds without any media received on either leg (since start if none came)."""
        now = asyncio.get_running_loop().time() if now is None else now
        last = self.last_activity
        if last is None:
            last = self.started_at if self.started_at is not None else now
        return max(0.0, now - last)

    def watch(self, timeout: float, on_timeout: Callable[[], None]) -> None:
        """Call `on_timeout()` once when no media arrived for `timeout` seconds (RTP timeout)."""
        if self._watch is not None:
            self._watch.cancel()
        self._watch = asyncio.get_running_loop().create_task(self._watch_loop(timeout, on_timeout))

    async def _watch_loop(self, timeout: float, on_timeout: Callable[[], None]) -> None:
        step = min(1.0, timeout / 4)
        while True:  # ended by stop() or by firing
            idle = self.idle()
            if idle >= timeout:
                on_timeout()
                return
            await asyncio.sleep(min(step, timeout - idle))
