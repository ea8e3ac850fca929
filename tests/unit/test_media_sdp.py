"""SDP (RFC 4566) parse/serialize, rewrite for the B2BUA, RFC 3264 offer/answer."""

from __future__ import annotations

import pytest

from appliance.media.sdp import (
    Codec,
    SdpError,
    SdpOrigin,
    SessionDescription,
    answer_codecs,
    answer_direction,
    audio_codec,
    build_answer,
    build_offer,
    parse,
    rewrite,
    telephone_event,
)

BOX = "203.0.113.5"


def sdp(*lines: str) -> str:
    return "\r\n".join(lines) + "\r\n"


# A phone's offer: static types without rtpmap, fmtp for a static type, b=, vendor lines.
PHONE_OFFER = sdp(
    "v=0",
    "o=alice 2890844526 2890844526 IN IP4 host.atlanta.example.com",
    "s=Talk",
    "c=IN IP4 192.0.2.101",
    "b=CT:1000",
    "t=0 0",
    "a=x-session-vendor:1",
    "m=audio 49170 RTP/AVP 0 8 18 9 101",
    "i=voice",
    "b=AS:64",
    "a=fmtp:18 annexb=no",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-16",
    "a=ptime:20",
    "a=maxptime:150",
    "a=sendrecv",
    "a=rtcp:49171",
    "a=x-vendor-attr:keep me",
    "m=video 51372 RTP/AVP 99",
    "a=rtpmap:99 h263-1998/90000",
)

WEBRTC_LIKE = sdp(
    "v=0",
    "o=- 42 2 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
    "a=ice-lite",
    "m=audio 40000 RTP/SAVPF 111 0 126",
    "c=IN IP4 198.51.100.7",
    "a=rtpmap:111 opus/48000/2",
    "a=fmtp:111 minptime=10;useinbandfec=1",
    "a=rtpmap:126 telephone-event/8000",
    "a=ice-ufrag:abcd",
    "a=ice-pwd:0123456789012345678901",
    "a=candidate:1 1 UDP 2130706431 198.51.100.7 40000 typ host",
    "a=rtcp-mux",
    "a=sendonly",
)


def test_round_trip_is_byte_identical() -> None:
    for text in (PHONE_OFFER, WEBRTC_LIKE):
        assert str(parse(text)) == text
        assert str(parse(str(parse(text)))) == text


def test_parse_fields() -> None:
    d = parse(PHONE_OFFER)
    assert d.origin.username == "alice" and d.origin.version == 2890844526
    assert d.name == "Talk" and d.connection is not None and d.connection.address == "192.0.2.101"
    assert d.bandwidths == ["CT:1000"] and d.attribute("x-session-vendor") == "1"
    audio, video = d.media
    assert (audio.media, audio.port, audio.proto) == ("audio", 49170, "RTP/AVP")
    assert audio.formats == ["0", "8", "18", "9", "101"]
    assert audio.information == "voice" and audio.bandwidths == ["AS:64"]
    assert audio.ptime == 20 and audio.direction == "sendrecv"
    assert audio.attribute("x-vendor-attr") == "keep me"
    assert [c.encoding for c in audio.codecs] == [
        "PCMU/8000", "PCMA/8000", "G729/8000", "G722/8000", "telephone-event/8000"]
    assert audio.codecs[2].fmtp == "annexb=no"
    assert audio_codec(audio).name == "PCMU"
    assert telephone_event(audio).payload_type == 101
    assert d.remote_address() == ("192.0.2.101", 49170)
    assert video.codecs[0].encoding == "h263-1998/90000"


def test_parse_lenient_line_endings_and_bytes() -> None:
    d = parse(PHONE_OFFER.replace("\r\n", "\n").encode())
    assert str(d) == PHONE_OFFER


def test_media_level_connection_and_session_direction() -> None:
    d = parse(WEBRTC_LIKE)
    m = d.media[0]
    assert d.connection is None and d.remote_address() == ("198.51.100.7", 40000)
    assert d.direction_of(m) == "sendonly"
    assert m.codecs[0].encoding == "opus/48000/2" and m.codecs[0].channels == 2
    held = parse(PHONE_OFFER.replace("c=IN IP4 192.0.2.101", "c=IN IP4 0.0.0.0"))
    assert held.remote_address() is None


def test_port_count_and_multicast_suffix() -> None:
    d = parse(sdp("v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "c=IN IP4 233.252.0.1/127/3",
                  "t=0 0", "m=audio 49170/2 RTP/AVP 0"))
    assert d.media[0].port == 49170 and d.media[0].port_count == 2
    assert d.connection.suffix == "/127/3"
    assert "m=audio 49170/2 RTP/AVP 0" in str(d) and "c=IN IP4 233.252.0.1/127/3" in str(d)


@pytest.mark.parametrize("text", [
    "",
    "o=- 1 1 IN IP4 192.0.2.1\r\n",
    sdp("v=0", "s=-", "t=0 0"),
    sdp("v=0", "o=- 1 1 IN IP4", "s=-"),
    sdp("v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "m=audio x RTP/AVP 0"),
    sdp("v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "m=audio 70000 RTP/AVP 0"),
    sdp("v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "this is not sdp"),
])
def test_parse_errors(text: str) -> None:
    with pytest.raises(SdpError):
        parse(text)


def test_set_codecs_rewrites_rtpmap_in_place() -> None:
    d = parse(PHONE_OFFER)
    m = d.media[0]
    m.set_codecs([Codec(8, "PCMA", 8000), Codec(101, "telephone-event", 8000, fmtp="0-15")])
    assert m.formats == ["8", "101"]
    assert [str(a) for a in m.attributes] == [
        "rtpmap:8 PCMA/8000", "rtpmap:101 telephone-event/8000", "fmtp:101 0-15",
        "ptime:20", "maxptime:150", "sendrecv", "rtcp:49171", "x-vendor-attr:keep me"]


def test_direction_setter() -> None:
    m = parse(PHONE_OFFER).media[0]
    m.direction = "sendonly"
    assert m.direction == "sendonly" and m.attribute_values("sendonly") == [""]
    assert not m.has_attribute("sendrecv")
    m.direction = None
    assert m.direction is None


# -- rewrite ------------------------------------------------------------------------------------


def test_rewrite_points_media_at_the_box() -> None:
    origin = SdpOrigin(BOX, session_id=777)
    out = rewrite(PHONE_OFFER, BOX, 30000, origin)
    text = str(out)
    assert out.connection.address == BOX and out.media[0].connection is None
    assert out.media[0].port == 30000
    assert out.media[1].port == 0  # the box relays one audio stream
    assert out.media[0].attribute("rtcp") == "30001"
    assert str(out.origin) == f"appliance 777 777 IN IP4 {BOX}"
    # Everything else is kept: codecs, ptime, vendor attributes, b= lines.
    for line in ("a=fmtp:18 annexb=no", "a=ptime:20", "a=maxptime:150", "b=AS:64",
                 "a=x-vendor-attr:keep me", "a=x-session-vendor:1", "s=Talk"):
        assert line in text
    assert "192.0.2.101" not in text
    # The input is not modified.
    assert str(parse(PHONE_OFFER)) == PHONE_OFFER


def test_rewrite_drops_peer_transport_attributes() -> None:
    out = rewrite(WEBRTC_LIKE, BOX, 30002, SdpOrigin(BOX))
    text = str(out)
    for gone in ("ice-ufrag", "ice-pwd", "candidate", "rtcp-mux", "ice-lite", "198.51.100.7"):
        assert gone not in text
    assert "a=sendonly" in text and out.remote_address() == (BOX, 30002)


def test_rewrite_bumps_version_only_when_content_changes() -> None:
    origin = SdpOrigin(BOX, session_id=1000, version=5)
    first = rewrite(PHONE_OFFER, BOX, 30000, origin)
    assert first.origin.version == 5
    again = rewrite(PHONE_OFFER, BOX, 30000, origin)  # re-INVITE refresh, same SDP
    assert again.origin.version == 5 and str(again) == str(first)
    # The peer's own o= version changing alone does not change what the box sends.
    bumped = PHONE_OFFER.replace("2890844526 2890844526", "2890844526 2890844527")
    assert rewrite(bumped, BOX, 30000, origin).origin.version == 5
    held = rewrite(PHONE_OFFER.replace("a=sendrecv", "a=sendonly"), BOX, 30000, origin)
    assert held.origin.version == 6
    assert rewrite(PHONE_OFFER, BOX, 30000, origin).origin.version == 7  # resumed
    moved = rewrite(PHONE_OFFER, BOX, 30010, origin)
    assert moved.origin.version == 8 and moved.origin.session_id == "1000"
    # Another leg has its own counter.
    other = SdpOrigin(BOX, session_id=2000, version=1)
    assert rewrite(PHONE_OFFER, BOX, 40000, other).origin.version == 1


def test_rewrite_keeps_hold_address_and_rejected_streams() -> None:
    held = PHONE_OFFER.replace("c=IN IP4 192.0.2.101", "c=IN IP4 0.0.0.0")
    out = rewrite(held, BOX, 30000, SdpOrigin(BOX))
    assert out.remote_address() is None  # still on hold for the other side
    assert out.media[0].connection.address == "0.0.0.0" and out.media[0].port == 30000
    rejected = PHONE_OFFER.replace("m=audio 49170", "m=audio 0")
    out = rewrite(rejected, BOX, 30000, SdpOrigin(BOX))
    assert out.media[0].port == 0


def test_rewrite_ports_per_stream_and_ipv6() -> None:
    out = rewrite(PHONE_OFFER, "2001:db8::5", [30000, 30002], SdpOrigin("2001:db8::5"))
    assert [m.port for m in out.media] == [30000, 30002]
    assert str(out.connection) == "IN IP6 2001:db8::5"
    assert out.origin.addrtype == "IP6"


# -- offer / answer -------------------------------------------------------------------------------


def test_answer_codecs_keeps_offer_payload_types_and_order() -> None:
    offer = parse(sdp("v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "c=IN IP4 192.0.2.1", "t=0 0",
                      "m=audio 4000 RTP/AVP 112 8 0 100 13",
                      "a=rtpmap:112 OPUS/48000/2", "a=fmtp:112 useinbandfec=1",
                      "a=rtpmap:100 telephone-event/8000", "a=fmtp:100 0-15"))
    chosen = answer_codecs(offer, ["PCMU/8000", "PCMA/8000", "telephone-event/8000"])
    assert [(c.payload_type, c.name) for c in chosen] == [
        (8, "PCMA"), (0, "PCMU"), (100, "telephone-event")]
    assert chosen[-1].fmtp == "0-15"
    local = answer_codecs(offer, ["PCMU/8000", "PCMA/8000", "telephone-event/8000", "CN/8000"],
                          prefer="local")
    assert [c.name for c in local] == ["PCMU", "PCMA", "telephone-event", "CN"]
    # Opus matches case-insensitively, with its channels; its telephone-event must be 48 kHz.
    opus = answer_codecs(offer, ["opus/48000/2", "telephone-event/8000"])
    assert [(c.payload_type, c.encoding) for c in opus] == [(112, "OPUS/48000/2")]
    assert opus[0].fmtp == "useinbandfec=1"


def test_answer_codecs_nothing_in_common() -> None:
    offer = parse(PHONE_OFFER)
    assert answer_codecs(offer, ["opus/48000/2", "telephone-event/8000"]) == []
    assert answer_codecs(offer.media[1], ["PCMU/8000"]) == []


@pytest.mark.parametrize(("offered", "local", "answer"), [
    ("sendrecv", "sendrecv", "sendrecv"),
    ("sendonly", "sendrecv", "recvonly"),
    ("recvonly", "sendrecv", "sendonly"),
    ("inactive", "sendrecv", "inactive"),
    ("sendrecv", "sendonly", "sendonly"),
    ("sendonly", "sendonly", "inactive"),
])
def test_answer_direction(offered: str, local: str, answer: str) -> None:
    assert answer_direction(offered, local) == answer


def test_build_answer() -> None:
    offer = parse(PHONE_OFFER.replace("a=sendrecv", "a=sendonly"))
    origin = SdpOrigin(BOX, session_id=9)
    answer = build_answer(offer, ["PCMA/8000", "telephone-event/8000"], BOX, 30000, origin)
    assert answer is not None
    again = SessionDescription.parse(str(answer))
    a, v = again.media
    assert a.port == 30000 and a.formats == ["8", "101"] and a.direction == "recvonly"
    assert a.ptime == 20 and v.port == 0 and v.media == "video"
    assert again.remote_address() == (BOX, 30000)
    assert build_answer(offer, ["opus/48000/2"], BOX, 30000, origin) is None


def test_build_offer_assigns_payload_types() -> None:
    offer = build_offer(["opus/48000/2", "G722/8000", "PCMU/8000", "PCMA/8000",
                         "telephone-event/48000", "telephone-event/8000"],
                        BOX, 30000, SdpOrigin(BOX))
    m = offer.media[0]
    assert [(c.payload_type, c.encoding) for c in m.codecs] == [
        (96, "opus/48000/2"), (9, "G722/8000"), (0, "PCMU/8000"), (8, "PCMA/8000"),
        (101, "telephone-event/48000"), (97, "telephone-event/8000")]
    assert m.codecs[-1].fmtp == "0-16" and m.ptime == 20 and m.direction == "sendrecv"
    assert str(parse(str(offer))) == str(offer)
