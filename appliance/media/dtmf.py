"""DTMF: RFC 4733 telephone-events in RTP, and SIP INFO bodies (application/dtmf-relay).

aiortc has no telephone-event support; this is all written here, sans-IO.

Payload (RFC 4733 §2.3)::

    0                   1                   2                   3
    0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
   |     event     |E|R| volume    |          duration             |

One event is one RTP timestamp: the start packet (marker set), updates with
the duration so far, and the end packet (E bit) sent three times, all with
the timestamp of the event's start. A digit pressed twice is two events with
two timestamps.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from struct import pack, unpack_from

from aiortc.rtp import RtpPacket

#: RFC 4733 §3.2 event codes 0-16.
EVENTS = "0123456789*#ABCD!"  # 16 is flash ("!")
_CODES = {d: i for i, d in enumerate(EVENTS)}
MAX_DURATION = 0xFFFF


class DtmfError(ValueError):
    """A digit or body that is not DTMF."""


def event_code(digit: str) -> int:
    try:
        return _CODES[digit.upper()]
    except (KeyError, AttributeError):
        raise DtmfError(f"not a DTMF digit: {digit!r}") from None


def digit_of(code: int) -> str | None:
    return EVENTS[code] if 0 <= code < len(EVENTS) else None


@dataclass(frozen=True)
class TelephoneEvent:
    """One decoded telephone-event payload."""

    event: int
    end: bool
    volume: int  # -dBm0, 0..63
    duration: int  # RTP timestamp units

    @classmethod
    def parse(cls, payload: bytes) -> TelephoneEvent:
        if len(payload) < 4:
            raise DtmfError("telephone-event payload shorter than 4 bytes")
        event, flags, duration = unpack_from("!BBH", payload)
        return cls(event, bool(flags & 0x80), flags & 0x3F, duration)

    def __bytes__(self) -> bytes:
        return pack("!BBH", self.event, (0x80 if self.end else 0) | (self.volume & 0x3F),
                    self.duration)


@dataclass(frozen=True)
class DtmfEvent:
    """A digit, reported once per event."""

    digit: str
    timestamp: int  # RTP timestamp of the event (its key)
    ssrc: int
    duration: int  # duration seen so far, RTP timestamp units
    volume: int

    def __str__(self) -> str:
        return self.digit


class TelephoneEventDetector:
    """Digits from RFC 4733 packets, each event reported exactly once.

    `feed(packet)` returns a `DtmfEvent` for the first packet seen of a new
    event and None for its updates, its end packets and their retransmissions.
    Events are keyed by (SSRC, RTP timestamp) (RFC 4733 §2.5.1.3), so the same
    digit pressed twice counts twice, a late retransmission of an old event is
    recognised among the last `history` events, and the start packet may be
    lost (the first update or end packet reports the digit instead). The
    segments of an event longer than the 16-bit duration field (§2.5.1.3)
    continue the event rather than start a new one.
    """

    def __init__(self, history: int = 32) -> None:
        self._seen: deque[tuple[int, int]] = deque(maxlen=history)
        self._current: tuple[int, int, int] | None = None  # ssrc, timestamp, event
        self._current_duration = 0
        self._current_ended = False
        self.events = 0
        self.ended = 0

    def feed(self, packet: RtpPacket) -> DtmfEvent | None:
        try:
            te = TelephoneEvent.parse(packet.payload)
        except DtmfError:
            return None
        key = (packet.ssrc, packet.timestamp)
        if self._current is not None and key == self._current[:2]:
            self._current_duration = max(self._current_duration, te.duration)
            if te.end and not self._current_ended:
                self._current_ended = True
                self.ended += 1
            return None
        if key in self._seen:
            return None  # a late retransmission of an older event
        if self._continues(packet, te):
            self._seen.append(key)
            self._current = (packet.ssrc, packet.timestamp, te.event)
            self._current_duration = te.duration
            self._current_ended = te.end
            return None
        digit = digit_of(te.event)
        self._seen.append(key)
        self._current = (packet.ssrc, packet.timestamp, te.event)
        self._current_duration = te.duration
        self._current_ended = te.end
        if te.end:
            self.ended += 1
        if digit is None:
            return None
        self.events += 1
        return DtmfEvent(digit, packet.timestamp, packet.ssrc, te.duration, te.volume)

    def _continues(self, packet: RtpPacket, te: TelephoneEvent) -> bool:
        """A new segment of a long event: same event, starting where the last one's
        maximal duration ended (RFC 4733 §2.5.1.3)."""
        if self._current is None or self._current_ended:
            return False
        ssrc, ts, event = self._current
        if ssrc != packet.ssrc or event != te.event or self._current_duration < MAX_DURATION - 1000:
            return False
        gap = (packet.timestamp - ts) % (1 << 32) - self._current_duration
        return 0 <= gap <= 1000


@dataclass(frozen=True)
class EventPacket:
    """One packet to send for an event: payload, marker, and when (seconds after start)."""

    payload: bytes
    marker: bool
    end: bool
    offset: float


class TelephoneEventGenerator:
    """Payloads for one digit (RFC 4733 §2.5.1): start, updates, three end packets.

    The start packet (marker set, duration 0) goes at once, an update every
    `interval` (20 or 50 ms) with the duration so far, then the end packet
    with the E bit and the final duration, three times, `interval` apart. All
    carry the same RTP timestamp (the caller's, the time the event began);
    the caller gives them consecutive sequence numbers in its stream.
    """

    def __init__(self, clock_rate: int = 8000, interval: float = 0.02, volume: int = 10) -> None:
        if not 0 <= volume <= 63:
            raise DtmfError("volume must be 0..63 (-dBm0)")
        self.clock_rate = clock_rate
        self.interval = interval
        self.volume = volume

    def packets(self, digit: str, duration: float = 0.1) -> list[EventPacket]:
        code = event_code(digit)
        step = round(self.clock_rate * self.interval)
        total = min(MAX_DURATION, max(step, round(self.clock_rate * duration)))
        out = [EventPacket(bytes(TelephoneEvent(code, False, self.volume, 0)), True, False, 0.0)]
        elapsed = step
        while elapsed < total:
            out.append(EventPacket(bytes(TelephoneEvent(code, False, self.volume, elapsed)),
                                   False, False, elapsed / self.clock_rate))
            elapsed += step
        end = bytes(TelephoneEvent(code, True, self.volume, total))
        for i in range(3):
            out.append(EventPacket(end, False, True, total / self.clock_rate + i * self.interval))
        return out

    def rtp_packets(self, digit: str, *, payload_type: int, ssrc: int, sequence_number: int,
                    timestamp: int, duration: float = 0.1) -> list[tuple[float, RtpPacket]]:
        """The same as `packets`, as (offset, RtpPacket) with consecutive sequence numbers."""
        out = []
        for i, p in enumerate(self.packets(digit, duration)):
            out.append((p.offset, RtpPacket(payload_type=payload_type, marker=int(p.marker),
                                             sequence_number=(sequence_number + i) & 0xFFFF,
                                             timestamp=timestamp & 0xFFFFFFFF, ssrc=ssrc,
                                             payload=p.payload)))
        return out


# -- SIP INFO ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DtmfRelay:
    """An application/dtmf-relay body: Signal and Duration (milliseconds)."""

    signal: str
    duration: int = 160


def parse_dtmf_relay(body: str | bytes) -> DtmfRelay:
    """Parse "Signal=5\\r\\nDuration=160\\r\\n" (keys case-insensitive, spaces allowed).

    Signal 16 (flash, as some phones send it) is "!". Duration defaults to 160.
    """
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    fields: dict[str, str] = {}
    for line in body.splitlines():
        key, eq, value = line.partition("=")
        if eq:
            fields[key.strip().lower()] = value.strip()
    signal = fields.get("signal")
    if not signal:
        raise DtmfError("dtmf-relay body has no Signal")
    if signal == "16":
        signal = "!"
    event_code(signal)
    try:
        duration = int(fields.get("duration", "160"))
    except ValueError:
        raise DtmfError(f"bad dtmf-relay Duration {fields['duration']!r}") from None
    return DtmfRelay(signal.upper(), duration)


def format_dtmf_relay(signal: str, duration: int = 160) -> str:
    """The application/dtmf-relay body for a digit: "Signal=5\\r\\nDuration=160\\r\\n"."""
    event_code(signal)
    return f"Signal={signal.upper()}\r\nDuration={int(duration)}\r\n"


def parse_dtmf_info(content_type: str, body: str | bytes) -> DtmfRelay:
    """A digit from a SIP INFO body: application/dtmf-relay, or application/dtmf (the digit alone)."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype == "application/dtmf-relay":
        return parse_dtmf_relay(body)
    if ctype == "application/dtmf":
        text = (body.decode("utf-8", "replace") if isinstance(body, bytes) else body).strip()
        if text == "16":
            text = "!"
        event_code(text)
        return DtmfRelay(text.upper())
    raise DtmfError(f"not a DTMF body type: {content_type!r}")
