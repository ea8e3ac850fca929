"""The parsers' fast paths (one regular expression for the common shapes) against the
general parsers they skip: for every value, both give the same result or both refuse.

The corpus is every Via, From, To, Contact, Route and Record-Route value and every URI of
the RFC 4475 torture messages and of the SIPp scenarios, typical phone values, and each of
those with one character replaced by or with an interesting one inserted or deleted."""

from __future__ import annotations

import re
from pathlib import Path

from appliance.sip import message, uri
from appliance.sip.message import NameAddr, ParseError, Via, parse_message, split_list
from appliance.sip.uri import URIError

ROOT = Path(__file__).resolve().parent.parent.parent
HEADERS = ("via", "from", "to", "contact", "route", "record-route")
TYPICAL = [
    "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1X;rport",
    "SIP/2.0/TCP pc33.atlanta.com;branch=z9hG4bKnashds8;received=192.0.2.1",
    "SIP/2.0/UDP [2001:db8::9]:5060;branch=z9hG4bK1",
    "SIP/2.0/UDP host:65536;branch=z9hG4bK1",
    "SIP/2.0/udp host:5060;BRANCH=z9hG4bK1;rport=1",
    '"Alice Liddell" <sip:alice@atlanta.com>;tag=1928301774',
    '"" <sip:alice@atlanta.com>',
    "Bob <sip:bob@biloxi.com>",
    "<sip:1000@127.0.0.1:5070;transport=tcp;ob>;expires=3600;q=0.5",
    "<sips:bob@[2001:db8::1]:5061>",
    "<tel:+1-201-555-0123;phone-context=example.com>",
    "sip:alice@atlanta.com;tag=x",
    "<sip:alice:secret@atlanta.com;lr>",
    "<sip:%61lice@atlanta.com;maddr=239.255.255.1;ttl=15>",
    "<sip:alice@atlanta.com?subject=project%20x>",
    "<SIP:alice@ATLANTA.com:05060;Transport=TCP>",
    "<sip:alice@atlanta.com;a=;b>",
    "<sip:alice@atlanta.com;;a=b=c>",
    "<sip:a@b@c>",
    "<sip:alice@atlanta.com:99999>",
]
INTERESTING = ' \t";;=:@<>[]%\\,?/A9\x00'


def _field_values(text: str) -> list[str]:
    """Header values of the listed fields in a message or a SIPp scenario's text."""
    values = []
    for line in text.replace("\r\n", "\n").split("\n"):
        name, colon, value = line.strip().partition(":")
        if colon and name.strip().lower() in HEADERS + ("v", "f", "t", "m"):
            values.extend(split_list(value.strip()))
    return values


def _corpus() -> list[str]:
    texts = [p.read_bytes().decode("utf-8", "replace")
             for p in sorted((ROOT / "tests" / "data" / "rfc4475").glob("*.dat"))]
    for xml in sorted((ROOT / "tests" / "sipp").glob("*.xml")) + sorted(
            (ROOT / "bench" / "sipp").glob("*.xml")):
        text = xml.read_text(errors="replace")
        text = re.sub(r"\[(local|remote)_ip\]", "127.0.0.1", text)
        text = re.sub(r"\[[a-z_0-9]+\]", "1234", text)
        texts.append(text)
    values = list(TYPICAL)
    for text in texts:
        values.extend(_field_values(text))
    return sorted(set(values))


def _mutations(value: str) -> list[str]:
    out = []
    for i in range(len(value) + 1):
        for c in INTERESTING:
            out.append(value[:i] + c + value[i:])
            if i < len(value):
                out.append(value[:i] + c + value[i + 1 :])
        if i < len(value):
            out.append(value[:i] + value[i + 1 :])
    return out


def _outcome(fn, value: str):
    try:
        result = fn(value)
    except (ParseError, URIError) as e:
        return ("refused", type(e))
    if isinstance(result, Via):
        return ("via", result.transport, result.host, result.port, result.params)
    if isinstance(result, NameAddr):
        return ("name-addr", result.display, result.uri, result.params)
    return ("uri", type(result), str(result),
            tuple(getattr(result, a, None) for a in ("scheme", "user", "password", "host",
                                                      "port", "params", "headers")))


def _check(fast, general, values: list[str]) -> int:
    fast_hits = 0
    for value in values:
        expected, got = _outcome(general, value), _outcome(fast, value)
        assert got == expected, value
        fast_hits += got[0] != "refused"
    return fast_hits


CORPUS = _corpus()


def test_corpus_is_broad():
    assert len(CORPUS) > 150
    assert sum(v.startswith("SIP/2.0/") for v in CORPUS) > 40


def test_via_fast_path_agrees_with_the_general_parser():
    vias = [v for v in CORPUS if v.upper().startswith("SIP/")]
    values = vias + [m for v in vias for m in _mutations(v)]
    assert _check(message.parse_via, message._parse_via, values) > 1000


def test_name_addr_fast_path_agrees_with_the_general_parser():
    addrs = [v for v in CORPUS if not v.upper().startswith("SIP/")]
    values = addrs + [m for v in addrs for m in _mutations(v)]
    general = lambda v: message._parse_name_addr(v, "header")  # noqa: E731
    assert _check(message.parse_name_addr, general, values) > 1000


def test_uri_fast_path_agrees_with_the_general_parser():
    uris = set()
    for v in CORPUS:
        if v.upper().startswith("SIP/"):
            continue
        try:
            uris.add(message._parse_name_addr(v, "header").uri)
        except ParseError:
            pass
    for text in (p.read_bytes() for p in (ROOT / "tests" / "data" / "rfc4475").glob("*.dat")):
        first = text.split(b"\r\n", 1)[0].decode("utf-8", "replace").split(" ")
        if len(first) == 3 and not first[0].startswith("SIP/"):
            uris.add(first[1])
    uris = sorted(uris)
    values = uris + [m for v in uris for m in _mutations(v)]
    assert _check(uri.parse_uri, uri._parse_uri, values) > 1000


def test_fast_paths_serve_a_typical_register():
    data = (b"REGISTER sip:127.0.0.1 SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1X;rport\r\n"
            b"From: <sip:1000@127.0.0.1>;tag=1\r\nTo: <sip:1000@127.0.0.1>\r\n"
            b"Call-ID: 1@bench\r\nCSeq: 1 REGISTER\r\n"
            b"Contact: <sip:1000@127.0.0.1:5070>\r\nContent-Length: 0\r\n\r\n")
    req = parse_message(data)
    assert message._FAST_VIA_RE.fullmatch(req.headers.get("via"))
    for name in ("from", "to", "contact"):
        assert message._FAST_NAME_ADDR_RE.fullmatch(req.headers.get(name))
    assert uri._FAST_SIP_RE.fullmatch(req.uri)
    assert req.top_via.params == {"branch": "z9hG4bK-1X", "rport": None}
    assert req.from_.tag == "1" and req.contacts[0].parsed_uri.port == 5070
