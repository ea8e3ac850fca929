"""The express challenge (appliance/sip/express.py, Pbx.express_invite) against the
general path it skips: two boxes, one with the express path and one without, get the
same INVITE datagrams without credentials, and must send the same bytes (a nonce
compared as "the same challenge" by masking its value).

The datagrams: first INVITEs as phones and SIPp send them, the INVITEs among the RFC 4475
torture messages, and each phone's with one character of a header line replaced by or
with an interesting one inserted or deleted, a line dropped, doubled or added; on a box
without carriers, with a trunk and a line at the phone's address, and as a SIP worker."""

from __future__ import annotations

import re

import pytest

from appliance.sip.transaction import Peer
from appliance.store.config import Line, Trunk

from .test_register_express import (
    NOW,
    PASSWORDS,
    PHONE,
    ROOT,
    Box,
    _line_mutations,
    credentials,
)

SDP = ("v=0\r\no=- 53655765 2353687637 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\n"
       "t=0 0\r\nm=audio 6000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n")

# Header lines of first INVITEs as phones send them; "{n}" becomes a number unique to the
# datagram (branch, Call-ID, From tag). SDP follows when a Content-Type line is present.
PHONES = [
    ["INVITE sip:1001@example.com SIP/2.0",
     "Via: SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bK{n};rport",
     "Max-Forwards: 70",
     "From: \"Front desk\" <sip:1000@example.com>;tag=as{n}",
     "To: <sip:1001@example.com>",
     "Call-ID: {n}@192.0.2.7",
     "CSeq: 1 INVITE",
     "Contact: <sip:1000@192.0.2.7:5070;transport=udp>",
     "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE",
     "Supported: replaces, 100rel, timer",
     "User-Agent: Yealink SIP-T46S",
     "Content-Type: application/sdp",
     "Content-Length: LEN"],
    ["INVITE sip:2000@127.0.0.1:5060 SIP/2.0",   # SIPp, as bench/sipp/call_caller.xml
     "Via: SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bK-{n}-1;rport",
     "Max-Forwards: 70",
     "From: <sip:alice@127.0.0.1>;tag=1SIPpTag00{n}",
     "To: <sip:2000@127.0.0.1>",
     "Call-ID: {n}-1@192.0.2.7",
     "CSeq: 1 INVITE",
     "Contact: <sip:alice@192.0.2.7:5070>",
     "User-Agent: sipp-bench",
     "Content-Type: application/sdp",
     "Content-Length: LEN"],
    ["INVITE sip:*97@example.com;user=phone SIP/2.0",   # compact forms, no body
     "v: SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bK{n}",
     "f: <sip:1001@example.com>;tag={n}",
     "t: <sip:*97@example.com;user=phone>",
     "i: {n}",
     "CSeq: 20 INVITE",
     "m: <sip:1001@192.0.2.7:5070>",
     "Expires: 120",
     "l: 0"],
]
INVITE_EXTRAS = (
    "Require: 100rel", "Require: gin", "Proxy-Require: x", "Route: <sip:example.com;lr>",
    "Proxy-Authorization: Digest username=\"1000\"", "Authorization: Digest x=y",
    "Max-Forwards: 0", "Content-Length: 9999", "Content-Type: text/plain", " folded",
    "Bad Name: x", "Expires: x", "Contact: *", "Contact: <sip:1000@192.0.2.7:5071>",
    "Via: SIP/2.0/UDP proxy;branch=z9hG4bKp", "RSeq: 1", "Timestamp: 54",
    "To: <sip:1001@example.com>;tag=x", "From: <sip:1001@example.com>;tag=y")
_NONCE = re.compile(rb'nonce="[^"]*"')
TRUNK_HERE = {"trunks": {"office": Trunk(host="192.0.2.7")}}
LINE_HERE = {"lines": {"carrier": Line(host="192.0.2.7", account="a", password="p",
                                       register=False)}}


def _invite(lines: list[str], n: int) -> bytes:
    body = SDP if any(line.startswith(("Content-Type:", "c:")) for line in lines) else ""
    head = [line.replace("{n}", f"{n:08d}").replace("LEN", str(len(body))) for line in lines]
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode()


def _boxes(worker: bool = False, **config: dict) -> tuple[Box, Box]:
    boxes = (Box(True, "express_invite", **config), Box(False, "express_invite", **config))
    for box in boxes:
        box.pbx.worker = worker
    return boxes


@pytest.mark.parametrize("setup", ["plain", "trunk", "line", "worker with a trunk"])
def test_both_paths_answer_every_first_invite_alike(loop: None, setup: str) -> None:
    config = {"trunk": TRUNK_HERE, "line": LINE_HERE, "worker with a trunk": TRUNK_HERE}
    fast, general = _boxes(setup.startswith("worker"), **config.get(setup, {}))
    n = 0
    for lines in PHONES:
        for sample in (lines, *_line_mutations(lines, INVITE_EXTRAS)):
            n += 1
            got = fast.feed(_invite(sample, n))
            assert got == general.feed(_invite(sample, n)), "\n".join(sample)
    assert general.served == 0
    if setup == "plain":
        assert n > 20_000 and fast.served > 2_000
    else:
        # a trunk or line at the phone's address: a From naming an extension still marks
        # a phone when it is not the carrier's SIP port (5070 here); a worker hands every
        # INVITE without credentials to the daemon while carriers are configured
        assert fast.served == 0 if setup.startswith("worker") else fast.served > 2_000


@pytest.mark.parametrize("to", [
    '"x;tag=y" <sip:1001@example.com>', "<sip:1001@example.com>;TAG=x",
    "<sip:1001@example.com> ;tag=x", "<sip:1001@example.com>;tag", "sip:1001@example.com",
    "<tel:+15551001>", "<sip:1001@example.com;tag=x>"])
def test_odd_to_values_are_answered_alike(loop: None, to: str) -> None:
    fast, general = _boxes()
    lines = [f"To: {to}" if line.startswith("To:") else line for line in PHONES[0]]
    assert fast.feed(_invite(lines, 1)) == general.feed(_invite(lines, 1))


def test_rfc4475_invites_are_answered_alike(loop: None) -> None:
    fast, general = _boxes()
    invites = [p.read_bytes() for p in sorted((ROOT / "tests/data/rfc4475").glob("*.dat"))
               if p.read_bytes().startswith(b"INVITE ")]
    assert len(invites) >= 10
    for data in invites:
        assert fast.feed(data) == general.feed(data), data


def test_the_express_407_on_the_wire_and_the_call_it_starts(loop: None) -> None:
    """What a phone gets, whole: Via stamped (§18.2.1, RFC 3581), our stateless tag,
    the challenge (§22.3); its ACK is absorbed, and credentials made with its nonce are
    accepted by the general path, which rings the callee."""
    fast, _ = _boxes()
    fast.pbx.config.media.relay_extension_calls = False  # the callee rung at once
    callee = Peer("udp", "192.0.2.8", 5080)
    # 1001 registers (the registrar's express path), then 1000 calls it
    register = ("REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.8:5080;"
                "branch=z9hG4bKr1\r\nFrom: <sip:1001@example.com>;tag=r\r\n"
                "To: <sip:1001@example.com>\r\nCall-ID: r1\r\nCSeq: 1 REGISTER\r\n"
                "Contact: <sip:1001@192.0.2.8:5080>\r\n{auth}Content-Length: 0\r\n\r\n")
    [(_, challenge)] = _raw(fast, register.format(auth="").encode(), callee)
    nonce = re.search(rb'nonce="([^"]*)"', challenge)[1].decode()
    auth = _credentials("Authorization", "1001", "REGISTER", "sip:example.com", nonce)
    [(_, ok)] = _raw(fast, register.format(auth=auth).encode(), callee)
    assert ok.startswith(b"SIP/2.0 200 OK\r\n")

    phone = Peer("udp", "203.0.113.9", 40000)
    data = _invite(PHONES[0], 5)
    [(peer, answer)] = _raw(fast, data, phone)
    assert fast.served == 1 and peer == phone
    nonce = re.search(rb'nonce="([^"]*)"', answer)[1].decode()
    assert answer == (
        "SIP/2.0 407 Proxy Authentication Required\r\n"
        "Via: SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bK00000005;rport=40000;"
        "received=203.0.113.9\r\n"
        "From: \"Front desk\" <sip:1000@example.com>;tag=as00000005\r\n"
        f"To: <sip:1001@example.com>;tag={fast.pbx.stateless_tag}\r\n"
        "Call-ID: 00000005@192.0.2.7\r\n"
        "CSeq: 1 INVITE\r\n"
        f'Proxy-Authenticate: Digest realm="example.com", nonce="{nonce}", '
        'algorithm=MD5, qop="auth"\r\n'
        "Content-Length: 0\r\n\r\n").encode()
    assert fast.pbx.digest.nonce_time(nonce) == NOW
    # a retransmission is challenged afresh (§8.2.7: no state was kept)
    [(_, again)] = _raw(fast, data, phone)
    assert again.startswith(b"SIP/2.0 407 ") and nonce.encode() not in again
    # the ACK of the 407 (§17.1.1.3) is absorbed
    to = re.search(rb"\r\nTo: ([^\r]*)", answer)[1].decode()
    ack = (f"ACK sip:1001@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7:5070;"
           f"branch=z9hG4bK00000005;rport\r\nFrom: <sip:1000@example.com>;tag=as00000005\r\n"
           f"To: {to}\r\nCall-ID: 00000005@192.0.2.7\r\nCSeq: 1 ACK\r\n"
           "Content-Length: 0\r\n\r\n").encode()
    assert _raw(fast, ack, phone) == []
    # the INVITE with credentials: the general path takes it, and rings 1001
    auth = _credentials("Proxy-Authorization", "1000", "INVITE", "sip:1001@example.com",
                        nonce)
    lines = [line.replace("CSeq: 1", "CSeq: 2").replace("{n}", "{n}-2")
             if line.startswith(("CSeq", "Via")) else line for line in PHONES[0]]
    with_auth = _invite([*lines[:-1], auth.rstrip("\r\n"), lines[-1]], 5)
    sent = _raw(fast, with_auth, phone)
    assert fast.served == 2  # the second challenge above; not this one
    assert [d[:12] for p, d in sent if p == phone] == [b"SIP/2.0 100 "]
    [ring] = [d for p, d in sent if p == callee]
    assert ring.startswith(b"INVITE sip:1001@192.0.2.8:5080 SIP/2.0\r\n")
    # the same transaction's INVITE without the credentials (its branch): the INVITE
    # server transaction answers it, with its 100 again (§17.2.1), no challenge
    resent = _raw(fast, _invite(lines, 5), phone)
    assert [d[:12] for _, d in resent] == [b"SIP/2.0 100 "] and fast.served == 2


def _raw(box: Box, data: bytes, peer: Peer) -> list[tuple[Peer, bytes]]:
    """What `box` sends for `data`, nonces and all."""
    box.endpoint._on_bytes(data, peer)
    out, box.sent = box.sent, []
    return out


def _credentials(header: str, user: str, method: str, uri: str, nonce: str) -> str:
    return credentials(header, user, PASSWORDS[user], method, uri, nonce) + "\r\n"


def test_a_phone_at_a_trunk_address_is_challenged_unless_it_sends_from_the_sip_port(
        loop: None) -> None:
    """A From naming an extension marks a phone behind the carrier's address, unless the
    INVITE comes from the carrier's SIP port: then it is the carrier's (no challenge)."""
    fast, general = _boxes(**TRUNK_HERE)
    data = _invite(PHONES[0], 1)
    for box in (fast, general):
        assert box.feed(data, PHONE)[0][1].startswith(b"SIP/2.0 407 ")
        trunk_port = Peer("udp", PHONE.host, 5060)
        assert not any(d.startswith(b"SIP/2.0 407 ") for _, d in box.feed(data, trunk_port))
    assert fast.served == 1 and general.served == 0
