"""RFC 4733 telephone-events and SIP INFO DTMF bodies."""

from __future__ import annotations

import pytest
from aiortc.rtp import RtpPacket

from appliance.media.dtmf import (
    DtmfError,
    DtmfRelay,
    TelephoneEvent,
    TelephoneEventDetector,
    TelephoneEventGenerator,
    format_dtmf_relay,
    parse_dtmf_info,
    parse_dtmf_relay,
)

PT = 101
SSRC = 0x1234ABCD


def event_packets(digit: str, timestamp: int, seq: int, duration: float = 0.1) -> list[RtpPacket]:
    gen = TelephoneEventGenerator()
    return [p for _, p in gen.rtp_packets(digit, payload_type=PT, ssrc=SSRC,
                                          sequence_number=seq, timestamp=timestamp,
                                          duration=duration)]


def test_payload_round_trip() -> None:
    te = TelephoneEvent(event=11, end=True, volume=10, duration=800)
    assert bytes(te) == bytes([11, 0x8A, 0x03, 0x20])
    assert TelephoneEvent.parse(bytes(te)) == te
    with pytest.raises(DtmfError):
        TelephoneEvent.parse(b"\x01\x02")


def test_generator_start_updates_and_three_end_packets() -> None:
    packets = TelephoneEventGenerator(interval=0.02).packets("5", duration=0.1)
    events = [TelephoneEvent.parse(p.payload) for p in packets]
    assert packets[0].marker and not any(p.marker for p in packets[1:])
    assert all(e.event == 5 and e.volume == 10 for e in events)
    assert [e.duration for e in events] == [0, 160, 320, 480, 640, 800, 800, 800]
    assert [p.end for p in packets] == [False] * 5 + [True] * 3
    assert [e.end for e in events[-3:]] == [True, True, True]
    assert [round(p.offset, 3) for p in packets] == [0.0, 0.02, 0.04, 0.06, 0.08,
                                                     0.1, 0.12, 0.14]
    slow = TelephoneEventGenerator(interval=0.05).packets("#", duration=0.2)
    assert [TelephoneEvent.parse(p.payload).duration for p in slow] == [
        0, 400, 800, 1200, 1600, 1600, 1600]


def test_generator_rtp_packets_share_timestamp() -> None:
    packets = event_packets("9", timestamp=0xFFFFFFF0, seq=0xFFFE)
    assert {p.timestamp for p in packets} == {0xFFFFFFF0}
    assert [p.sequence_number for p in packets][:4] == [0xFFFE, 0xFFFF, 0, 1]
    assert all(p.payload_type == PT and p.ssrc == SSRC for p in packets)


def test_generator_rejects_bad_digits() -> None:
    with pytest.raises(DtmfError):
        TelephoneEventGenerator().packets("x")
    with pytest.raises(DtmfError):
        TelephoneEventGenerator(volume=64)


def test_detector_reports_each_event_once_with_retransmissions() -> None:
    det = TelephoneEventDetector()
    stream = (event_packets("1", 1000, 10) + event_packets("1", 3000, 18)
              + event_packets("2", 5000, 26))
    digits = [e.digit for p in stream if (e := det.feed(p)) is not None]
    assert digits == ["1", "1", "2"]
    assert det.events == 3 and det.ended == 3
    # A late retransmission of an old end packet is not a new digit.
    assert det.feed(stream[7]) is None and det.feed(stream[0]) is None


def test_detector_without_start_packet_and_with_reordering() -> None:
    det = TelephoneEventDetector()
    packets = event_packets("*", 8000, 1)
    got = [det.feed(p) for p in [packets[2], packets[1], *packets[3:]]]
    events = [e for e in got if e is not None]
    assert [e.digit for e in events] == ["*"] and events[0].timestamp == 8000
    # Only end packets arrive (bursty loss): still one digit.
    det2 = TelephoneEventDetector()
    assert [det2.feed(p) is not None for p in packets[-3:]] == [True, False, False]


def test_detector_long_event_segments_are_one_event() -> None:
    det = TelephoneEventDetector()

    def pkt(ts: int, duration: int, end: bool = False) -> RtpPacket:
        return RtpPacket(payload_type=PT, timestamp=ts, ssrc=SSRC,
                         payload=bytes(TelephoneEvent(0, end, 10, duration)))

    assert det.feed(pkt(0, 160)) is not None
    assert det.feed(pkt(0, 0xFFFF)) is None
    assert det.feed(pkt(0xFFFF, 160)) is None  # segment 2 (RFC 4733 §2.5.1.3)
    assert det.feed(pkt(0xFFFF, 800, end=True)) is None
    assert det.feed(pkt(0xFFFF + 8000, 160)) is not None  # a new press


def test_detector_new_ssrc_is_a_new_stream() -> None:
    det = TelephoneEventDetector()
    a = event_packets("4", 500, 1)
    b = [RtpPacket(payload_type=PT, marker=p.marker, sequence_number=p.sequence_number,
                   timestamp=p.timestamp, ssrc=SSRC + 1, payload=p.payload) for p in a]
    assert sum(det.feed(p) is not None for p in a + b) == 2


def test_dtmf_relay_bodies() -> None:
    assert format_dtmf_relay("5") == "Signal=5\r\nDuration=160\r\n"
    assert format_dtmf_relay("#", 250) == "Signal=#\r\nDuration=250\r\n"
    assert parse_dtmf_relay("Signal=5\r\nDuration=160\r\n") == DtmfRelay("5", 160)
    assert parse_dtmf_relay(b"signal= *\nduration = 100") == DtmfRelay("*", 100)
    assert parse_dtmf_relay("Signal=a") == DtmfRelay("A", 160)
    assert parse_dtmf_relay("Signal=16\r\nDuration=2000") == DtmfRelay("!", 2000)
    for bad in ("Duration=160", "Signal=X", "Signal=1\r\nDuration=soon"):
        with pytest.raises(DtmfError):
            parse_dtmf_relay(bad)
    with pytest.raises(DtmfError):
        format_dtmf_relay("Z")


def test_dtmf_info_content_types() -> None:
    assert parse_dtmf_info("application/dtmf-relay", "Signal=7\r\nDuration=160") == \
        DtmfRelay("7", 160)
    assert parse_dtmf_info("Application/DTMF; charset=x", b"3\r\n") == DtmfRelay("3")
    with pytest.raises(DtmfError):
        parse_dtmf_info("text/plain", "1")
