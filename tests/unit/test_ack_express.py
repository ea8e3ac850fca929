"""The express ACK (appliance/sip/express.py read_ack, Pbx.express_ack) against the
general path it skips: two boxes, one with the express path and one without, each answer
the bench's call (bench/inprocess.py: INVITE, 407, ACK, INVITE with credentials, the
callee's 180 and 200); then the caller's ACK of the 200 arrives, as SIPp sends it and
with one character of a header line replaced by or with an interesting one inserted or
deleted, a line dropped, doubled or added. Both must send the same (the ACK relayed to
the callee, its fresh branch, tags and Call-ID masked), leave the call in the same
state and stop retransmitting the 200 alike."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

from appliance.sip.transaction import Peer
from bench.inprocess import CALLEE, CALLER, Box

from .test_register_express import _line_mutations, use_express

# The caller's ACK of call {n}, as Box.in_dialog makes it (checked below); {tag} is the
# box's own To tag, {target} the 200's Contact.
ACK = ["ACK {target} SIP/2.0",
       "Via: SIP/2.0/UDP 127.0.0.1:30000;branch=z9hG4bK-{n}-3;rport",
       "Max-Forwards: 70",
       "From: <sip:1000@127.0.0.1>;tag=1SIPpTag00{n}",
       "Call-ID: {n}-call@127.0.0.1",
       "To: <sip:2000@127.0.0.1>;tag={tag}",
       "CSeq: 2 ACK",
       "Contact: <sip:1000@127.0.0.1:30000>",
       "Content-Length: 0"]
ACK_EXTRAS = (
    "Content-Type: application/sdp", "Content-Length: 1", "Content-Length: 00",
    "Route: <sip:127.0.0.1;lr>", "Require: 100rel", "Proxy-Require: x",
    "Proxy-Authorization: Digest username=\"1000\"", "Max-Forwards: 0", "Expires: x",
    "Expires: 60", "Contact: *", "Via: SIP/2.0/UDP proxy;branch=z9hG4bKp",
    "To: <sip:2000@127.0.0.1>;tag=x", "CSeq: 2 ACK", "Call-ID: other", "Timestamp: 1",
    "RSeq: 1", "Bad Name: x", " folded")
_MASK = [(re.compile(rb"branch=z9hG4bK[^;\r\n]*"), b"branch=*"),
         (re.compile(rb"tag=[0-9a-f]{12}\b"), b"tag=*"),
         (re.compile(rb"\b[0-9a-f]{20}@"), b"*@")]


SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio 6000 RTP/AVP 0\r\n")
# (header lines to add, or drop with "-", what follows the header section): an ACK with
# a body is the general path's; bytes past Content-Length: 0 are no body (§18.3)
BODIES = [(["Content-Type: application/sdp", "-Content-Length: 0",
            f"Content-Length: {len(SDP)}"], SDP),
          (["-Content-Length: 0", "Content-Length: 1"], "x"),
          (["Content-Type: application/sdp", "-Content-Length: 0"], SDP),
          (["-Content-Length: 0"], "x"),
          (["Content-Type: application/sdp"], SDP), ([], "x"),   # served: no body
          (["-Content-Length: 0"], ""), (["Content-Type: application/sdp"], "")]


def _fill(lines: list[str], n: int, tag: str, target: str, body: str = "") -> bytes:
    text = "\r\n".join(lines).replace("{n}", str(n)).replace("{tag}", tag)
    return (text.replace("{target}", target) + "\r\n\r\n" + body).encode()


def _masked(sent: list[tuple[Peer, bytes]]) -> list[tuple[Peer, bytes]]:
    out = []
    for peer, data in sent:
        for pattern, mask in _MASK:
            data = pattern.sub(mask, data)
        out.append((peer, data))
    return out


class Side:
    """A box of the bench's, with or without the express ACK, that counts its uses."""

    def __init__(self, express: bool) -> None:
        self.box = box = Box(set())
        box.register_callee()
        self.served = 0
        use_express(self, box.endpoint, "express_ack", express)

    def answer(self, n: int) -> tuple[str, str, str]:
        """Call `n` answered: the 200's Contact, the dialog's lines, our To tag."""
        target, within = self.box.answer(n)
        self.box.sent.clear()
        return target, within, re.search(r"\r\nTo: [^\r]*;tag=([^;\r]*)", within)[1]

    def ack(self, data: bytes) -> tuple[object, ...]:
        """What the box sends for the ACK `data` of its one call, and the call after."""
        box = self.box
        box.feed(data, CALLER)
        sent, box.sent = box.sent, []
        [call] = box.pbx.calls
        return (_masked(sent), call.state, len(call.pending_ack), call.a_txn._acked)

    def hang_up(self, n: int, target: str, within: str) -> None:
        self.box.feed(Box.in_dialog(n, target, within, 3, "BYE"), CALLER)
        self.box.hang_up()
        assert not self.box.pbx.calls


def _run(test: Callable[[], None]) -> None:
    async def run() -> None:
        test()
    asyncio.run(run())


def test_the_template_is_the_bench_callers_ack() -> None:
    def test() -> None:
        side = Side(True)
        target, within, tag = side.answer(1)
        assert _fill(ACK, 1, tag, target) == Box.in_dialog(1, target, within, 2, "ACK")
        got = side.ack(_fill(ACK, 1, tag, target))
        assert side.served == 1 and got[1:] == ("confirmed", 0, True)
        [(peer, relayed)] = got[0]
        assert peer == CALLEE and relayed.startswith(
            b"ACK sip:127.0.0.1:40000;transport=UDP SIP/2.0\r\n")
        assert b"\r\nCSeq: 1 ACK\r\n" in relayed and relayed.endswith(b"\r\nContent-Length: 0\r\n\r\n")
        # its retransmission is absorbed: nothing is relayed twice (§13.2.2.4)
        assert side.ack(_fill(ACK, 1, tag, target)) == ([], "confirmed", 0, True)
        side.hang_up(1, target, within)
    _run(test)


def test_both_paths_take_every_ack_alike() -> None:
    def test() -> None:
        fast, general = Side(True), Side(False)
        n = 0
        for lines in (ACK, *_line_mutations(ACK, ACK_EXTRAS)):
            n += 1
            answered = [side.answer(n) for side in (fast, general)]
            got = fast.ack(_fill(lines, n, answered[0][2], answered[0][0]))
            expected = general.ack(_fill(lines, n, answered[1][2], answered[1][0]))
            assert got == expected, "\n".join(lines)
            for side, (target, within, _) in zip((fast, general), answered, strict=True):
                side.hang_up(n, target, within)
        assert general.served == 0 and n > 5_000 and fast.served > 1_000, (n, fast.served)
    _run(test)


def test_acks_with_a_body_or_without_a_length_are_taken_alike() -> None:
    def test() -> None:
        fast, general = Side(True), Side(False)
        for n, (change, body) in enumerate(BODIES, 1):
            lines = [line for line in ACK if "-" + line not in change]
            lines += [line for line in change if not line.startswith("-")]
            answered = [side.answer(n) for side in (fast, general)]
            got = fast.ack(_fill(lines, n, answered[0][2], answered[0][0], body))
            expected = general.ack(_fill(lines, n, answered[1][2], answered[1][0], body))
            assert got == expected, (change, body)
            for side, (target, within, _) in zip((fast, general), answered, strict=True):
                side.hang_up(n, target, within)
        assert fast.served == 4  # the last four
    _run(test)


def test_odd_request_uris_are_taken_alike() -> None:
    def test() -> None:
        fast, general = Side(True), Side(False)
        uris = ["{target}?x=y", "<{target}>", "tel:+15551000", "{target};lr", "sip:",
                "{target}\t", "http://x", "sip:a@b:99999", "SIP:127.0.0.1:40000"]
        served = []
        for n, uri in enumerate(uris, 1):
            before = fast.served
            lines = [f"ACK {uri} SIP/2.0", *ACK[1:]]
            answered = [side.answer(n) for side in (fast, general)]
            got = fast.ack(_fill(lines, n, answered[0][2], answered[0][0]))
            assert got == general.ack(_fill(lines, n, answered[1][2], answered[1][0])), uri
            served += [uri] if fast.served > before else []
            for side, (target, within, _) in zip((fast, general), answered, strict=True):
                side.hang_up(n, target, within)
        assert served == ["{target};lr", "SIP:127.0.0.1:40000"]  # the others: general
    _run(test)
