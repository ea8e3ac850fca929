"""The registrar's express path (appliance/sip/register.py, Registrar.express) against the
general path it skips: two boxes, one with the express path and one without, get the same
REGISTER datagrams, and must send the same bytes, keep the same bindings and publish the
same events.

The datagrams: REGISTERs as phones and SIPp send them, with and without digest
credentials, the REGISTERs among the RFC 4475 torture messages, and each of those with one
character of a header line replaced by or with an interesting one inserted or deleted,
and with a line dropped, doubled or added. Both boxes run on one fake clock, so Date and
expiry match to the byte; nonces (a random counter start per process) are compared as
"the same challenge" by masking their value."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.bus import Bus, ExtensionRegistered, ExtensionUnregistered
from appliance.pbx.core import Pbx
from appliance.pbx.location import Location
from appliance.sip.endpoint import Endpoint
from appliance.sip.transaction import Peer, Timers
from appliance.store.config import Extension, default_config

ROOT = Path(__file__).resolve().parent.parent.parent
SECRET = b"k" * 32
NOW = 1_800_000_000.25  # both boxes' wall clock
PHONE = Peer("udp", "192.0.2.7", 5070)
PASSWORDS = {"1000": "secret1000", "1001": "secret1001", "alice": "wonderland"}
# a shorter list than the parser test's: every mutation costs two registrations
INTERESTING = ' \t";=:@<>,?A9\x00'
_NONCE = re.compile(rb'nonce="[^"]*"')


class Box:
    """An endpoint and PBX fed datagrams by hand; what it sends is kept."""

    def __init__(self, express: bool, hook: str = "express_register", **config: dict) -> None:
        """`hook`: the endpoint's express path under test; `config`: sections of the
        configuration to add (trunks, lines)."""
        cfg = default_config()
        cfg.extensions = {user: Extension(password=pw) for user, pw in PASSWORDS.items()}
        cfg.sip.domain = "example.com"
        for section, entries in config.items():
            setattr(cfg, section, entries)
        self.endpoint = Endpoint(Timers())
        self.sent: list[tuple[Peer, bytes]] = []
        self.endpoint.transports.send = lambda peer, data: self.sent.append((peer, data))
        self.endpoint.transports.local["udp"] = ("198.51.100.1", 5060)
        self.endpoint.bind_host = "198.51.100.1"  # our address, without a route lookup
        self.bus = Bus()
        self.pbx = Pbx(self.endpoint, cfg, Location(None), self.bus, SECRET)
        self.endpoint.tu = self.pbx
        self.pbx.clock = lambda: NOW
        self.events: list[object] = []
        self.bus.subscribe(ExtensionRegistered, self.events.append)
        self.bus.subscribe(ExtensionUnregistered, self.events.append)
        self.served = 0
        use_express(self, self.endpoint, hook, express)

    def feed(self, data: bytes, peer: Peer = PHONE) -> list[tuple[Peer, bytes]]:
        self.endpoint._on_bytes(data, peer)
        out, self.sent = self.sent, []
        return [(p, _NONCE.sub(b'nonce="*"', d)) for p, d in out]

    def nonce(self) -> str:
        return self.pbx.digest.make_nonce(NOW)

    def bindings(self) -> dict:
        loc = self.pbx.location
        return {aor: [(b.contact, b.expires_at, b.q, b.call_id, b.cseq, b.peer, b.path,
                       b.user_agent) for b in loc.bindings(aor, NOW)]
                for aor in sorted(loc.aors())}


def use_express(counter: Any, endpoint: Endpoint, hook: str, express: bool) -> None:
    """The endpoint's express path `hook` kept, each datagram it takes counted in
    `counter.served`, or switched off (the general path takes everything)."""
    path = getattr(endpoint, hook)
    assert path is not None  # the box as shipped uses it
    if not express:
        setattr(endpoint, hook, None)
        return

    def counted(data: bytes, peer: Peer) -> bool:
        done = path(data, peer)
        counter.served += done
        return done
    setattr(endpoint, hook, counted)


@pytest.fixture
def boxes() -> Iterator[tuple[Box, Box]]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield Box(express=True), Box(express=False)
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def authorization(box: Box, user: str, password: str, uri: str = "sip:example.com",
                  realm: str = "example.com") -> str:
    return credentials("Authorization", user, password, "REGISTER", uri, box.nonce(), realm)


def credentials(header: str, user: str, password: str, method: str, uri: str, nonce: str,
                realm: str = "example.com") -> str:
    """A `header` line answering `nonce` (RFC 2617 MD5, qop=auth), without its CRLF."""
    ha1 = hashlib.md5(f"{user}:{realm}:{password}".encode()).hexdigest()
    ha2 = hashlib.md5(f"{method}:{uri}".encode()).hexdigest()
    response = hashlib.md5(f"{ha1}:{nonce}:00000001:0a4f113b:auth:{ha2}".encode()).hexdigest()
    return (f'{header}: Digest username="{user}", realm="{realm}", nonce="{nonce}", '
            f'uri="{uri}", response="{response}", algorithm=MD5, cnonce="0a4f113b", '
            f"nc=00000001, qop=auth")


# Header lines of REGISTERs as phones send them; "{n}" becomes a number unique to the
# datagram (branch, Call-ID), "AUTH" the line with each box's own credentials.
PHONES = [
    ["REGISTER sip:example.com SIP/2.0",
     "Via: SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bK{n};rport",
     "Max-Forwards: 70",
     "From: <sip:1000@example.com>;tag=as{n}",
     "To: <sip:1000@example.com>",
     "Call-ID: {n}@192.0.2.7",
     "CSeq: 2 REGISTER",
     "Contact: <sip:1000@192.0.2.7:5070;transport=udp>;expires=600",
     "AUTH",
     "Expires: 3600",
     "User-Agent: Yealink SIP-T46S",
     "Content-Length: 0"],
    ["REGISTER sip:example.com SIP/2.0",
     "v: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bK{n}",
     "f: \"Alice\" <sip:alice@example.com>;tag={n}",
     "t: \"Alice\" <sip:alice@example.com>",
     "i: {n}",
     "CSeq: 7 REGISTER",
     "m: <sip:alice@10.0.0.9:5060>;q=0.7;+sip.instance=\"<urn:uuid:00000000-0000-1000>\"",
     "AUTH",
     "Allow: INVITE, ACK, BYE",
     "l: 0"],
    ["REGISTER sip:example.com:5060 SIP/2.0",
     "Via: SIP/2.0/UDP 192.0.2.7:5070;rport;branch=z9hG4bK{n}",
     "From: <sip:1001@example.com>;tag=x{n}",
     "To: <sip:1001@example.com>",
     "Call-ID: c{n}",
     "CSeq: 3 REGISTER",
     "AUTH",
     "Contact: <sip:1001@192.0.2.7:5070>",
     "Expires: 0"],
    ["REGISTER sip:example.com SIP/2.0",   # a query: no Contact (§10.2.3)
     "Via: SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bK{n}",
     "From: <sip:1000@example.com>;tag=q{n}",
     "To: <sip:1000@example.com>",
     "Call-ID: q{n}",
     "CSeq: 9 REGISTER",
     "AUTH"],
]


# whole Via values: where the answer goes (§18.2.2, RFC 3581) and how it is stamped
VIAS = [
    "SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bK{n};maddr=192.0.2.99",
    "SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bK{n};received=192.0.2.8",
    "SIP/2.0/UDP 192.0.2.7;branch=z9hG4bK{n}",
    "SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bK{n};rport=5070",
    "SIP/2.0/UDP phone.example.com:5070;branch=z9hG4bK{n};rport",
    "SIP/2.0/UDP [2001:db8::7]:5070;branch=z9hG4bK{n};rport",
    "SIP/2.0/TCP 192.0.2.7:5070;branch=z9hG4bK{n}",
    "SIP/2.0/udp 192.0.2.7:5070;Branch=z9hG4bK{n};RPORT",
    "SIP/2.0/UDP 192.0.2.7:5070;branch=1234{n}",
    "SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bK{n};ttl=1;x=\"y\"",
]


# To values with ";tag=" in them: a tag (a request within a dialog, §10.3 refuses it),
# spaced or in capitals, and the same text in a display name or as a URI parameter,
# which is no tag (the 200 adds ours)
TOS = ['"x;tag=y" <sip:{user}@example.com>', "<sip:{user}@example.com;tag=u>",
       "<sip:{user}@example.com> ; tag = z", "<sip:{user}@example.com>;TAG=z",
       "sip:{user}@example.com;tag=z", "<sip:{user}@example.com;tag=u>;tag=v"]


def _datagram(lines: list[str], n: int, auth: str | None) -> bytes:
    out = [line.replace("{n}", f"{n:08d}") for line in lines if line != "AUTH" or auth]
    return ("\r\n".join(auth if line == "AUTH" else line for line in out)
            + "\r\n\r\n").encode()


def _user(lines: list[str]) -> str:
    to = next(line for line in lines if line.startswith(("To:", "t:")))
    return to.split("sip:")[1].split("@")[0]


REGISTER_EXTRAS = (
    "Require: gin", "Require: path", "Path: <sip:proxy.example.com;lr>",
    "Content-Type: application/sdp", " folded", "Supported: path, outbound", "Min-Expires: 60",
    "Proxy-Require: x", "Bad Name: x", "Expires: 30", "Authorization: Digest username=\"1000\"",
    "Contact: *", "Contact: <sip:1000@192.0.2.7:5071>", "Via: SIP/2.0/UDP proxy;branch=z9hG4bKp")


def _line_mutations(lines: list[str],
                    extras: tuple[str, ...] = REGISTER_EXTRAS) -> Iterator[list[str]]:
    """Each header line (not the request line, not the credentials) with one character
    replaced, inserted or deleted; each line dropped and doubled; `extras` added."""
    for i in range(1, len(lines)):
        line = lines[i]
        if line == "AUTH":
            continue
        for j in range(len(line) + 1):
            for c in INTERESTING:
                yield lines[:i] + [line[:j] + c + line[j:]] + lines[i + 1:]
                if j < len(line):
                    yield lines[:i] + [line[:j] + c + line[j + 1:]] + lines[i + 1:]
            if j < len(line):
                yield lines[:i] + [line[:j] + line[j + 1:]] + lines[i + 1:]
        yield lines[:i] + lines[i + 1:]
        yield lines[:i + 1] + [line] + lines[i + 1:]
    for i in range(1, len(lines)):
        if lines[i].startswith(("Via:", "v:")):
            for via in VIAS:
                yield lines[:i] + [f"Via: {via}"] + lines[i + 1:]
        if lines[i].startswith(("To:", "t:")):
            user = _user(lines)
            for to in TOS:
                yield lines[:i] + ["To: " + to.replace("{user}", user)] + lines[i + 1:]
    for extra in extras:
        yield lines + [extra]


def _compare(fast: Box, general: Box, lines: list[str], n: int, user: str,
             authenticated: bool) -> None:
    auths = [authorization(box, user, PASSWORDS.get(user, "x")) if authenticated else None
             for box in (fast, general)]
    got = fast.feed(_datagram(lines, n, auths[0]))
    expected = general.feed(_datagram(lines, n, auths[1]))
    assert got == expected, "\n".join(lines)


def test_both_paths_answer_every_register_alike(boxes: tuple[Box, Box]) -> None:
    fast, general = boxes
    n = 0
    for lines in PHONES:
        user = _user(lines)
        for authenticated in (False, True):
            served = fast.served
            n += 1
            _compare(fast, general, lines, n, user, authenticated)
            assert fast.served == served + 1  # the phones' own REGISTERs take the express path
            for mutated in _line_mutations(lines):
                n += 1
                _compare(fast, general, mutated, n, user, authenticated)
    assert fast.bindings() == general.bindings() and fast.bindings()
    assert fast.events == general.events and fast.events
    # most mutations make a REGISTER the general path refuses, or one the express path
    # leaves to it; thousands still take the express path
    assert n > 40_000 and fast.served > 5_000 and general.served == 0


def test_rfc4475_registers_are_answered_alike(boxes: tuple[Box, Box]) -> None:
    fast, general = boxes
    registers = [p.read_bytes() for p in sorted((ROOT / "tests/data/rfc4475").glob("*.dat"))
                 if p.read_bytes().startswith(b"REGISTER ")]
    assert len(registers) >= 4
    for data in registers:
        assert fast.feed(data) == general.feed(data), data
    assert fast.bindings() == general.bindings()


@pytest.mark.parametrize("via", VIAS)
def test_a_retransmission_gets_the_same_200_and_a_replay_a_challenge(
        boxes: tuple[Box, Box], via: str) -> None:
    fast, general = boxes
    lines = [f"Via: {via}" if line.startswith("Via:") else line for line in PHONES[0]]
    sent = {}
    for box in boxes:
        data = _datagram(lines, 1, authorization(box, "1000", PASSWORDS["1000"]))
        first = box.feed(data)
        assert len(first) == 1
        if first[0][1].startswith(b"SIP/2.0 200 OK\r\n"):
            # §17.2.2: the transaction sends its 200 again, byte for byte
            assert box.feed(data) == first
            # the same credentials in a new transaction: the nonce count is used up
            replay = data.replace(b"00000001", b"00000002", 1)  # the branch
            again = box.feed(replay)
            assert again[0][1].startswith(b"SIP/2.0 401 Unauthorized\r\n")
            first += again
        sent[box] = first
    assert sent[fast] == sent[general]
    # the 200 at most: the retransmission is the layer's, and the replay repeats a
    # binding's Call-ID and CSeq, which the express path leaves to the general one
    # (credentials first, §10.3: 401, not 500)
    assert fast.served <= 1


def test_the_express_200_on_the_wire(boxes: tuple[Box, Box]) -> None:
    """What a phone gets, whole: Via stamped with received and rport (§18.2.1, RFC 3581),
    our tag, the binding with its expiry, Date (§10.3 step 8)."""
    fast, _ = boxes
    data = _datagram(PHONES[0], 5, authorization(fast, "1000", PASSWORDS["1000"]))
    [(peer, answer)] = fast.feed(data, Peer("udp", "203.0.113.9", 40000))
    assert fast.served == 1 and peer == Peer("udp", "203.0.113.9", 40000)
    tag = fast.pbx.stateless_tag
    assert answer == (
        "SIP/2.0 200 OK\r\n"
        "Via: SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bK00000005;rport=40000;"
        "received=203.0.113.9\r\n"
        "From: <sip:1000@example.com>;tag=as00000005\r\n"
        f"To: <sip:1000@example.com>;tag={tag}\r\n"
        "Call-ID: 00000005@192.0.2.7\r\n"
        "CSeq: 2 REGISTER\r\n"
        "Contact: <sip:1000@192.0.2.7:5070;transport=udp>;expires=600\r\n"
        "Date: Fri, 15 Jan 2027 08:00:00 GMT\r\n"
        "Content-Length: 0\r\n\r\n").encode()
