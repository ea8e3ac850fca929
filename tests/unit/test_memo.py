"""Parsed header values shared between messages (appliance/sip/memo.py).

A memo hands the object parsed for a text to every later message with that exact text,
so those objects must never change. These tests show the memo's bound, the sharing, a
Via stamped with `received`/`rport` (RFC 3261 §18.2.1, RFC 3581 §4) for each sender
without touching the shared one, and, after the bench's calls and registrations through
both the express and the general paths, every kept object still equal to a fresh parse
of its text."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from appliance.sip import message, uri
from appliance.sip.memo import Memo
from appliance.sip.message import NameAddr, ParseError, Via, parse_name_addr, parse_via
from appliance.sip.transaction import Peer
from appliance.sip.uri import SipURI, parse_uri

from .test_register_express import Box as RegisterBox

ROOT = Path(__file__).resolve().parent.parent.parent
MEMOS = {"name-addr": message._NAME_ADDRS, "via": message._VIAS, "uri": uri._URIS}


def test_a_memo_is_bounded_and_keeps_the_texts_in_use() -> None:
    memo: Memo[int] = Memo(4)
    memo.put("kept", 0)
    for i in range(100):
        memo.put(f"t{i}", i)
        assert memo.get("kept") == 0  # in use: moved back to the young generation
        assert len(memo) <= 8
    assert memo.get("t0") is None  # not asked for since: forgotten
    assert memo.get("t99") == 99
    memo.clear()
    assert len(memo) == 0 and memo.get("kept") is None


def test_the_same_text_gives_the_same_object_and_a_bad_one_an_error_each_time() -> None:
    for memo in MEMOS.values():
        memo.clear()
    text = '"Alice" <sip:alice@192.0.2.1:5070;transport=udp>;tag=a1;expires=60'
    first = parse_name_addr(text)
    assert parse_name_addr(text) is first
    assert parse_uri(first.uri) is parse_uri(first.uri)
    via = "SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bK-1;rport"
    assert parse_via(via) is parse_via(via)
    for _ in range(2):
        with pytest.raises(ParseError):
            parse_name_addr("<sip:alice@192.0.2.1", "From")
        with pytest.raises(ParseError):
            parse_via("SIP/2.0/UDP")
    assert len(MEMOS["name-addr"]) == 1 and len(MEMOS["via"]) == 1


@pytest.mark.parametrize("express", [True, False], ids=["express", "general"])
def test_each_sender_gets_its_own_received_and_rport(loop: None, express: bool) -> None:
    """The same Via text from two senders: each answer carries that sender's address
    (§18.2.1, RFC 3581 §4), the second not the first's, whichever path answers."""
    _two_senders(express)


def _two_senders(express: bool) -> None:
    box = RegisterBox(express)
    via = "SIP/2.0/UDP phone.invalid:5070;branch=z9hG4bK-shared;rport"
    for n, peer in enumerate([Peer("udp", "192.0.2.7", 5070), Peer("udp", "192.0.2.8", 5071)]):
        data = ("REGISTER sip:example.com SIP/2.0\r\n"
                f"Via: {via}\r\nMax-Forwards: 70\r\n"
                f"From: <sip:1000@example.com>;tag=f{n}\r\nTo: <sip:1000@example.com>\r\n"
                f"Call-ID: memo-{n}\r\nCSeq: 1 REGISTER\r\n"
                "Contact: <sip:1000@192.0.2.7:5070>\r\nContent-Length: 0\r\n\r\n").encode()
        [(to, answer)] = box.feed(data, peer)
        assert to == peer
        assert answer.startswith(b"SIP/2.0 401 ")
        expected = f"Via: {via}={peer.port};received={peer.host}\r\n".encode()
        assert expected in answer, answer.decode()
    assert str(parse_via(via)) == via  # the shared Via is as parsed


def _fields(value: object) -> tuple:
    if isinstance(value, NameAddr):
        parsed = value._parsed
        return (value.display, value.uri, dict(value.params),
                None if parsed is None else _fields(parsed))
    if isinstance(value, Via):
        return value.transport, value.host, value.port, dict(value.params)
    assert isinstance(value, SipURI), value
    return (value.scheme, value.user, value.password, value.host, value.port,
            dict(value.params), value.headers)


@pytest.mark.parametrize("express", [True, False], ids=["express", "general"])
def test_after_calls_and_registrations_every_kept_value_is_as_parsed(
        loop: None, express: bool) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from inprocess import Box as CallBox
    finally:
        sys.path.remove(str(ROOT / "bench"))
    for memo in MEMOS.values():
        memo.clear()
    box = CallBox(set() if express else {"express_invite"})
    box.register_callee()
    for i in range(1, 6):
        box.call(i)  # asserts the call's answers: 407, 200, ...
    _two_senders(express)
    kept = {kind: memo.items() for kind, memo in MEMOS.items()}
    assert all(kept.values()), {k: len(v) for k, v in kept.items()}
    # the requests' Vias and Froms came by their shape
    assert len(message._VIA_SHAPES) > 0 and len(message._NAME_ADDR_SHAPES) > 0
    for memo in MEMOS.values():
        memo.clear()
    message._VIA_SHAPES.clear()
    message._NAME_ADDR_SHAPES.clear()
    parsers = {"name-addr": parse_name_addr, "via": parse_via, "uri": parse_uri}
    for kind, entries in kept.items():
        for text, value in entries:
            fresh = parsers[kind](text)
            assert fresh is not value
            if isinstance(fresh, NameAddr) and isinstance(value, NameAddr) and value._parsed:
                fresh.parsed_uri  # noqa: B018 - parsed as the kept one was
            assert _fields(value) == _fields(fresh), (kind, text)


@pytest.mark.parametrize("transport, host, port", [
    ("udp", "192.0.2.1", 5060), ("tcp", "::1", 5080), ("tls", "2001:db8::5", 5061),
    ("udp", "127.0.0.1", 1)])
def test_our_own_via_is_kept_as_its_text_parses(transport: str, host: str, port: int) -> None:
    text = message.own_via(transport, host, port, "z9hG4bK-own")
    kept = parse_via(text)
    message._VIAS.clear()
    fresh = parse_via(text)
    assert kept is not fresh
    assert _fields(kept) == _fields(fresh)
    assert str(fresh) == text


def _parsed_or_error(text: str) -> tuple | str:
    try:
        return _fields(parse_via(text))
    except ParseError as e:
        return f"ParseError: {e}"


VIA_SHAPES = [
    "SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bK-1;rport",
    "SIP/2.0/UDP 192.0.2.1:5070;rport;branch=z9hG4bK-1",
    "SIP/2.0/udp phone.invalid;branch=z9hG4bK-1;X-Tag=7;rport=5",
    "SIP/2.0/TCP [2001:db8::5]:5061;branch=z9hG4bK-1",
    "SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bK-1;Branch=z9hG4bK-2",
    "SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bK-1;branch=z9hG4bK-2",
    "SIP/2.0/UDP 192.0.2.1:5070 ;branch=z9hG4bK-1",
    "SIP/2.0/UDP 192.0.2.1:99999;branch=z9hG4bK-1",
]
NEW_BRANCHES = ["z9hG4bK-new", "z9hG4bK.%*_+`'~!", "x", "z9hG4bK a", 'z9hG4bK"a"', "",
                "z9hG4bK=a", "z9hG4bK,a", "z9hG4bK\u00e9", "z9hG4bK-1"]


@pytest.mark.parametrize("shape", VIA_SHAPES)
def test_a_via_that_differs_only_in_its_branch_parses_as_a_fresh_one(shape: str) -> None:
    """After a Via of the same shape (the same text but for the branch's value, §8.1.1.7),
    a Via gives what a fresh parse gives, or the same error: a new branch that is not a
    token (a space, a quote, '=', ',' , a non-ASCII letter, empty), a second branch
    parameter in any case, more than the fast path reads (IPv6, a space), a port out of
    range."""
    texts = [shape.replace("branch=z9hG4bK-1", "branch=" + b, 1) for b in NEW_BRANCHES]
    kept = _as_fresh_after(shape, texts, _parsed_or_error, message._VIAS, message._VIA_SHAPES)
    assert kept == (1 if shape in VIA_SHAPES[:3] else 0)


def _as_fresh_after(shape: str, texts: list[str], parse, memo: Memo, shapes: Memo) -> int:
    """Each text parses after `shape` as it does with the memos empty; how many shapes
    parsing `shape` alone keeps."""
    for text in texts:
        fresh = []
        for primed in (False, True):
            memo.clear()
            shapes.clear()
            if primed:
                parse(shape)
            fresh.append(parse(text))
        assert fresh[0] == fresh[1], (shape, text)
    memo.clear()
    shapes.clear()
    parse(shape)
    return len(shapes)


# Vias whose text prints as it reads (Via.text), then some that do not
PRINTED_AS_READ = [
    "SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bK-1;rport",
    "SIP/2.0/UDP 192.0.2.1:5070;rport;branch=z9hG4bK-1",
    "SIP/2.0/UDP 192.0.2.1:5070;rport;branch=z9hG4bK-1;x-rport;rportx",
    "SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bK-1;rportx;rport",
    "SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bK-1;rport=7",
    "SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bK-1;received=198.51.100.1;rport",
    "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK-1",
]
PRINTED_OTHERWISE = [
    "SIP/2.0/udp phone.invalid:5070;Branch=z9hG4bK-1;RPORT",
    "SIP/2.0/UDP 192.0.2.1:05070;branch=z9hG4bK-1;rport",
    "SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bK-1;rport;rport",
    "SIP/2.0/TCP [2001:db8::5]:5061;branch=z9hG4bK-1;rport",
    "SIP/2.0/UDP 192.0.2.1:5070 ; branch=z9hG4bK-1 ; rport",
]


@pytest.mark.parametrize("text", PRINTED_AS_READ + PRINTED_OTHERWISE)
@pytest.mark.parametrize("peer", [Peer("udp", "192.0.2.1", 5070), Peer("udp", "192.0.2.9", 6000),
                                  Peer("tcp", "2001:db8::5", 5061)])
def test_a_stamped_via_is_written_as_it_prints(text: str, peer: Peer) -> None:
    """The text of a Via stamped with received/rport (§18.2.1, RFC 3581 §4), edited from
    the text it was read from where that prints the same, is what formatting the stamped
    Via gives, with its branch from a shape or not."""
    from appliance.sip.endpoint import needs_stamp, stamp_received, stamped_text
    for again in (text, text.replace("z9hG4bK-1", "z9hG4bK-2")):
        via = parse_via(again)
        stamped = stamp_received(via, peer)
        assert needs_stamp(via, peer) == (stamped is not None), (again, peer)
        if stamped is not None:
            assert stamped_text(via, peer, stamped) == str(stamped), (again, peer)
            assert stamped_text(via, peer) == str(stamped), (again, peer)
    assert parse_via(text).text == (text if text in PRINTED_AS_READ else None)


def _name_addr_or_error(text: str) -> tuple | str:
    try:
        value = parse_name_addr(text, "From")
        value.parsed_uri  # noqa: B018 - a kept one may hold its URI's parse
        return _fields(value)
    except ParseError as e:
        return f"ParseError: {e}"


NAME_ADDR_SHAPES = [
    "<sip:100@192.0.2.1>;tag=a-1",
    '"Alice" <sip:alice@example.com;transport=udp>;x=1;tag=a-1;y',
    '"a>b;tag=c" <sip:a@example.com>;tag=a-1',
    "<sip:a@example.com;tag=u>;tag=a-1",
    "<sip:100@192.0.2.1>;tag=a-1;Tag=2",
    "<sip:100@192.0.2.1>;tag=a-1;tag=a-1",
    "sip:100@192.0.2.1;tag=a-1",
    "<sip:100@192.0.2.1> ;tag=a-1",
]
NEW_TAGS = ["b-2", "x", "b 2", 'b"2', "", "b=2", "b,2", "b>2", "b\u00e9", "a-1"]


@pytest.mark.parametrize("shape", NAME_ADDR_SHAPES)
def test_a_name_addr_that_differs_only_in_its_tag_parses_as_a_fresh_one(shape: str) -> None:
    """The From of a phone's next request, its tag new (§8.1.1.3): after a name-addr of
    the same shape it gives what a fresh parse gives, or the same error, for tags that
    are not tokens (a space, a quote, '=', ',', '>', a non-ASCII letter, empty), a tag
    parameter in the URI or in a quoted display name, a second tag in any case, and
    shapes the fast path does not read."""
    at = shape.rfind(";tag=a-1")  # the header's tag: the last one
    texts = [shape[:at] + ";tag=" + tag + shape[at + 8:] for tag in NEW_TAGS]
    kept = _as_fresh_after(shape, texts, _name_addr_or_error, message._NAME_ADDRS,
                           message._NAME_ADDR_SHAPES)
    assert kept == (1 if shape in NAME_ADDR_SHAPES[:4] else 0)


@pytest.mark.parametrize("shape, other", [
    ("<sip:a@example.com;tag=u>;tag=a-1", "<sip:a@example.com;tag=v>;tag=a-1"),
    ('"a>b;tag=c" <sip:a@example.com>;tag=a-1', '"a>b;tag=d" <sip:a@example.com>;tag=a-1'),
    ('"a;tag=c" <sip:a@example.com>;tag=a-1', '"a;tag=d" <sip:a@example.com>;tag=a-1'),
    ("<sip:a@example.com;tag=u;x=1>;tag=a-1", "<sip:a@example.com;tag=v;x=1>;tag=a-1"),
    ('"a;tag=c;b" <sip:a@example.com>;tag=a-1', '"a;tag=d;b" <sip:a@example.com>;tag=a-1'),
])
def test_only_the_header_tag_is_cut_from_a_name_addr(shape: str, other: str) -> None:
    """A tag parameter of the URI, or ';tag=' in the display name, is not the header's
    tag: a name-addr that differs there is not of the same shape."""
    message._NAME_ADDRS.clear()
    message._NAME_ADDR_SHAPES.clear()
    _name_addr_or_error(shape)
    primed = _name_addr_or_error(other)
    message._NAME_ADDRS.clear()
    message._NAME_ADDR_SHAPES.clear()
    assert primed == _name_addr_or_error(other)
