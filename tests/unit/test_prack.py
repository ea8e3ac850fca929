"""RFC 3262 reliable provisional responses (100rel, RSeq, RAck, PRACK), with a fake clock."""

from __future__ import annotations

import pytest

from appliance.sip.dialog import Dialog
from appliance.sip.message import Request, Response, make_response, parse_message
from appliance.sip.prack import (
    DELIVER,
    INVALID,
    OUT_OF_ORDER,
    PRACK,
    RETRANSMISSION,
    ProvisionalAcknowledger,
    Rel100,
    ReliableProvisionals,
    add_100rel,
    make_prack,
    parse_rack,
    parse_rseq,
    rel100,
    strip_100rel,
    wants_reliable,
)
from appliance.sip.transaction import Peer, Timers

T1 = 0.5
TIMERS = Timers(t1=T1)
PHONE = Peer("udp", "192.0.2.10", 5060)
SDP = b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"


# -- message builders (literal bytes through parse_message) ---------------------------

def invite(extra: str = "Supported: 100rel, timer\r\n", cseq: int = 10) -> Request:
    text = (
        "INVITE sip:200@pbx.example.com SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKinv1\r\n"
        "Max-Forwards: 70\r\n"
        "From: \"Alice\" <sip:100@pbx.example.com>;tag=alice\r\n"
        "To: <sip:200@pbx.example.com>\r\n"
        "Call-ID: call-1@192.0.2.10\r\n"
        f"CSeq: {cseq} INVITE\r\n"
        "Contact: <sip:100@192.0.2.10:5060>\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    )
    msg = parse_message(text.encode())
    assert isinstance(msg, Request)
    return msg


def prack(rack: str | None, to_tag: str = "bob", from_tag: str = "alice",
          call_id: str = "call-1@192.0.2.10") -> Request:
    rack_line = f"RAck: {rack}\r\n" if rack is not None else ""
    text = (
        "PRACK sip:200@192.0.2.20:5060 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKprack1\r\n"
        "Max-Forwards: 70\r\n"
        f"From: \"Alice\" <sip:100@pbx.example.com>;tag={from_tag}\r\n"
        f"To: <sip:200@pbx.example.com>;tag={to_tag}\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 11 PRACK\r\n"
        f"{rack_line}"
        "Content-Length: 0\r\n\r\n"
    )
    msg = parse_message(text.encode())
    assert isinstance(msg, Request)
    return msg


def provisional(status: int = 180, rseq: int | None = 1, to_tag: str | None = "bob",
                require: bool = True, cseq: int = 10) -> Response:
    """A 1xx to our INVITE as the UAC receives it."""
    reason = {180: "Ringing", 183: "Session Progress", 100: "Trying"}[status]
    to = "<sip:200@pbx.example.com>" + (f";tag={to_tag}" if to_tag else "")
    text = (
        f"SIP/2.0 {status} {reason}\r\n"
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKout1\r\n"
        "From: <sip:100@pbx.example.com>;tag=ours\r\n"
        f"To: {to}\r\n"
        "Call-ID: out-1@192.0.2.1\r\n"
        f"CSeq: {cseq} INVITE\r\n"
        "Contact: <sip:200@192.0.2.20:5060>\r\n"
        + ("Require: 100rel\r\n" if require else "")
        + (f"RSeq: {rseq}\r\n" if rseq is not None else "")
        + "Content-Length: 0\r\n\r\n"
    )
    msg = parse_message(text.encode())
    assert isinstance(msg, Response)
    return msg


def uas(inv: Request | None = None, first_rseq: int = 1000) -> ReliableProvisionals:
    return ReliableProvisionals(inv or invite(), TIMERS, first_rseq=first_rseq)


def ringing(inv: Request, status: int = 180, sdp: bool = False) -> Response:
    if sdp:
        return make_response(inv, status, to_tag="bob", body=SDP, content_type="application/sdp")
    return make_response(inv, status, to_tag="bob")


def run_clock(rel: ReliableProvisionals, until: float) -> list[float]:
    """Drive `rel`'s timer up to `until`; the times at which it retransmitted."""
    sent: list[float] = []
    while (when := rel.get_timer()) is not None and when <= until:
        if rel.handle_timer(when):
            sent.append(when)
    return sent


# -- what an INVITE offers --------------------------------------------------------------

def test_rel100_required_and_supported_are_told_apart() -> None:
    assert rel100(invite("Require: 100rel\r\n")) == Rel100(required=True, supported=False)
    assert rel100(invite("Supported: timer, 100rel\r\n")) == Rel100(False, True)
    assert rel100(invite("k: 100REL\r\n")) == Rel100(False, True)   # compact form, any case
    assert rel100(invite("Supported: timer\r\n")) == Rel100(False, False)
    assert wants_reliable(invite("Require: 100rel\r\n"))
    assert wants_reliable(invite("Supported: 100rel\r\n"))
    assert not wants_reliable(invite(""))


# -- UAS: sending, RSeq, Require ----------------------------------------------------------

def test_send_adds_require_and_rseq() -> None:
    inv = invite()
    rel = uas(inv, first_rseq=1000)
    out = rel.send(ringing(inv), now=0.0)
    assert out is not None
    again = parse_message(out.to_bytes())
    assert again.headers.get_all("require") == ["100rel"]
    assert again.headers.get("rseq") == "1000"
    assert rel.outstanding is out and rel.last_rseq == 1000


def test_send_keeps_other_require_tags() -> None:
    inv = invite()
    resp = ringing(inv)
    resp.headers.add("require", "timer")
    out = uas(inv).send(resp, now=0.0)
    assert out is not None and out.headers.get_all("require") == ["timer", "100rel"]


def test_initial_rseq_is_random_in_range() -> None:
    seen = set()
    for _ in range(20):
        out = ReliableProvisionals(invite(), TIMERS).send(ringing(invite()), 0.0)
        assert out is not None
        rseq = int(out.headers.get("rseq") or "0")
        assert 1 <= rseq <= 2**31 - 1
        seen.add(rseq)
    assert len(seen) > 1


@pytest.mark.parametrize("status", [100, 200, 486])
def test_only_101_to_199_are_sent_reliably(status: int) -> None:
    inv = invite()
    with pytest.raises(ValueError):
        uas(inv).send(make_response(inv, status, to_tag="bob"), 0.0)


def test_no_reliable_provisional_unless_the_invite_offered_100rel() -> None:
    inv = invite("")
    with pytest.raises(ValueError):
        uas(inv).send(ringing(inv), 0.0)


def test_reliable_provisional_needs_a_to_tag() -> None:
    inv = invite()
    with pytest.raises(ValueError):
        uas(inv).send(make_response(inv, 180), 0.0)


# -- UAS: retransmission schedule (§3) -------------------------------------------------------

def test_retransmits_at_t1_3t1_7t1_without_cap_until_64t1() -> None:
    inv = invite()
    rel = uas(inv)
    t0 = 100.0
    out = rel.send(ringing(inv), now=t0)
    assert rel.get_timer() == t0 + T1
    assert rel.handle_timer(t0 + T1 - 0.01) == []
    assert rel.handle_timer(t0 + T1) == [out]
    sent = [t0 + T1, *run_clock(rel, t0 + 64 * T1 - 0.001)]
    # interval starts at T1 and doubles each time: cumulative T1 * (2**k - 1), no T2 cap
    assert sent == [t0 + T1 * k for k in (1, 3, 7, 15, 31, 63)]
    assert not rel.timed_out
    assert rel.get_timer() == t0 + 64 * T1
    assert rel.handle_timer(t0 + 64 * T1) == []
    assert rel.timed_out                      # the caller now answers the INVITE 5xx
    assert rel.get_timer() is None
    assert rel.handle_timer(t0 + 1000) == []
    assert rel.can_send_final(500)


def test_a_late_timer_call_sends_one_copy() -> None:
    inv = invite()
    rel = uas(inv)
    out = rel.send(ringing(inv), now=0.0)
    assert rel.handle_timer(8 * T1) == [out]      # 1, 3 and 7 T1 were all due
    assert rel.get_timer() == 15 * T1             # the schedule stays on the RFC grid


def test_prack_stops_retransmission() -> None:
    inv = invite()
    rel = uas(inv, first_rseq=1000)
    rel.send(ringing(inv), now=0.0)
    assert run_clock(rel, 3 * T1) == [T1, 3 * T1]
    assert rel.on_prack(prack("1000 10 INVITE"), now=4 * T1) == 200
    assert rel.outstanding is None and rel.acknowledged is not None
    assert rel.get_timer() is None
    assert rel.handle_timer(100.0) == []
    assert not rel.timed_out
    # the same provisional is acknowledged once: a new PRACK for it matches nothing
    assert rel.on_prack(prack("1000 10 INVITE"), now=5 * T1) == 481


@pytest.mark.parametrize("rack", [
    "1001 10 INVITE",    # wrong RSeq
    "999 10 INVITE",     # wrong RSeq (an older one)
    "1000 11 INVITE",    # wrong CSeq number
    "1000 10 UPDATE",    # wrong method
    "1000 10 invite",    # methods are case-sensitive
])
def test_prack_with_wrong_rack_gets_481_and_retransmission_goes_on(rack: str) -> None:
    inv = invite()
    rel = uas(inv, first_rseq=1000)
    rel.send(ringing(inv), now=0.0)
    assert rel.on_prack(prack(rack), now=0.1) == 481
    assert rel.outstanding is not None
    assert rel.get_timer() == T1


def test_prack_outside_the_dialog_gets_481() -> None:
    inv = invite()
    rel = uas(inv, first_rseq=1000)
    rel.send(ringing(inv), now=0.0)
    assert rel.on_prack(prack("1000 10 INVITE", to_tag="other"), 0.1) == 481
    assert rel.on_prack(prack("1000 10 INVITE", from_tag="mallory"), 0.1) == 481
    assert rel.on_prack(prack("1000 10 INVITE", call_id="x@y"), 0.1) == 481
    assert rel.on_prack(prack("1000 10 INVITE"), 0.1) == 200


def test_prack_before_any_reliable_provisional_gets_481() -> None:
    assert uas().on_prack(prack("1000 10 INVITE"), 0.0) == 481


@pytest.mark.parametrize("rack", [None, "garbage", "1000 10", "0 10 INVITE"])
def test_prack_with_missing_or_malformed_rack_gets_400(rack: str | None) -> None:
    inv = invite()
    rel = uas(inv, first_rseq=1000)
    rel.send(ringing(inv), now=0.0)
    assert rel.on_prack(prack(rack), 0.1) == 400
    assert rel.outstanding is not None


# -- UAS: one unacknowledged at a time (§3) ----------------------------------------------------

def test_second_reliable_provisional_waits_for_the_first_prack() -> None:
    inv = invite()
    rel = uas(inv, first_rseq=1000)
    first = rel.send(ringing(inv, 180), now=0.0)
    assert first is not None
    second = ringing(inv, 183, sdp=True)
    assert rel.send(second, now=0.2) is None
    assert rel.queued == 1 and "rseq" not in second.headers
    assert rel.responses_to_send() == []
    assert run_clock(rel, T1) == [T1]                 # only the first is retransmitted
    assert rel.on_prack(prack("1000 10 INVITE"), now=2.0) == 200
    released = rel.responses_to_send()
    assert released == [second]
    assert released[0].headers.get("rseq") == "1001"  # RSeq + 1
    assert released[0].headers.get_all("require") == ["100rel"]
    assert rel.responses_to_send() == []
    assert rel.outstanding is second and rel.queued == 0
    # its own schedule starts when it is released
    assert rel.get_timer() == 2.0 + T1
    assert run_clock(rel, 2.0 + 3 * T1) == [2.0 + T1, 2.0 + 3 * T1]
    assert rel.on_prack(prack("1000 10 INVITE"), now=4.0) == 481
    assert rel.on_prack(prack("1001 10 INVITE"), now=4.0) == 200
    assert rel.get_timer() is None


# -- UAS: final responses (§3) -----------------------------------------------------------------

def test_no_2xx_while_a_provisional_with_sdp_is_unacknowledged() -> None:
    inv = invite()
    rel = uas(inv, first_rseq=7)
    rel.send(ringing(inv, 183, sdp=True), now=0.0)
    assert not rel.can_send_final(200)
    assert rel.can_send_final(486)                    # non-2xx finals are always allowed
    with pytest.raises(ValueError):
        rel.on_final(make_response(inv, 200, to_tag="bob"))
    assert rel.on_prack(prack("7 10 INVITE"), 1.0) == 200
    assert rel.can_send_final(200)


def test_2xx_allowed_while_a_provisional_without_sdp_is_unacknowledged() -> None:
    inv = invite()
    rel = uas(inv, first_rseq=7)
    rel.send(ringing(inv, 180), now=0.0)
    rel.send(ringing(inv, 183, sdp=True), now=0.1)    # queued: never sent, does not block
    assert rel.can_send_final(200)
    rel.on_final(make_response(inv, 200, to_tag="bob"))
    # retransmissions stop, queued ones are dropped, but PRACKs are still processed
    assert rel.get_timer() is None and rel.queued == 0
    assert rel.on_prack(prack("7 10 INVITE"), 1.0) == 200
    assert rel.responses_to_send() == []
    with pytest.raises(ValueError):
        rel.send(ringing(inv, 180), 2.0)


# -- UAC ------------------------------------------------------------------------------------------

def test_first_reliable_provisional_yields_a_prack() -> None:
    acks = ProvisionalAcknowledger()
    v = acks.on_provisional(provisional(rseq=5000))
    assert v.action == PRACK and v.deliver and not v.is_retransmission
    assert v.rack == "5000 10 INVITE" and v.to_tag == "bob"
    assert acks.last_rseq("bob") == 5000


def test_retransmitted_provisional_is_flagged_and_not_pracked_again() -> None:
    acks = ProvisionalAcknowledger()
    acks.on_provisional(provisional(rseq=5000))
    v = acks.on_provisional(provisional(rseq=5000))
    assert v.action == RETRANSMISSION and v.is_retransmission
    assert v.rack is None and not v.deliver
    # a delayed copy of an older one is a retransmission too
    acks.on_provisional(provisional(rseq=5001))
    assert acks.on_provisional(provisional(rseq=5000)).is_retransmission


def test_next_rseq_yields_a_prack_and_gaps_are_dropped() -> None:
    acks = ProvisionalAcknowledger()
    acks.on_provisional(provisional(rseq=5000))
    v = acks.on_provisional(provisional(183, rseq=5001))
    assert v.action == PRACK and v.rack == "5001 10 INVITE"
    gap = acks.on_provisional(provisional(rseq=5003))
    assert gap.action == OUT_OF_ORDER and gap.rack is None and not gap.deliver
    assert acks.last_rseq("bob") == 5001
    assert acks.on_provisional(provisional(rseq=5002)).action == PRACK


def test_forked_early_dialogs_track_rseq_independently() -> None:
    acks = ProvisionalAcknowledger()
    a = acks.on_provisional(provisional(rseq=10, to_tag="fork-a"))
    b = acks.on_provisional(provisional(rseq=900, to_tag="fork-b"))
    assert (a.action, a.rack) == (PRACK, "10 10 INVITE")
    assert (b.action, b.rack) == (PRACK, "900 10 INVITE")
    assert acks.on_provisional(provisional(rseq=11, to_tag="fork-a")).action == PRACK
    assert acks.on_provisional(provisional(rseq=10, to_tag="fork-b")).is_retransmission
    assert acks.on_provisional(provisional(rseq=901, to_tag="fork-b")).action == PRACK
    assert acks.on_provisional(provisional(rseq=11, to_tag="fork-a")).is_retransmission


def test_unreliable_and_broken_provisionals() -> None:
    acks = ProvisionalAcknowledger()
    # no Require: 100rel, or a 100 Trying (100rel MUST be ignored on it): plain delivery
    assert acks.on_provisional(provisional(require=False)).action == DELIVER
    v = acks.on_provisional(provisional(100, rseq=3))
    assert v.action == DELIVER and v.deliver and not v.reliable
    # Require: 100rel without a usable RSeq or without a To tag: dropped
    assert acks.on_provisional(provisional(rseq=None)).action == INVALID
    assert acks.on_provisional(provisional(rseq=0)).action == INVALID
    assert acks.on_provisional(provisional(to_tag=None)).action == INVALID
    assert acks.last_rseq("bob") is None


def test_make_prack_builds_the_in_dialog_request() -> None:
    ours = parse_message(
        b"INVITE sip:200@carrier.example SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKout1\r\n"
        b"Max-Forwards: 70\r\n"
        b"From: <sip:100@pbx.example.com>;tag=ours\r\n"
        b"To: <sip:200@pbx.example.com>\r\n"
        b"Call-ID: out-1@192.0.2.1\r\n"
        b"CSeq: 10 INVITE\r\n"
        b"Contact: <sip:pbx@192.0.2.1:5060>\r\n"
        b"Supported: 100rel\r\n"
        b"Content-Length: 0\r\n\r\n")
    assert isinstance(ours, Request)
    resp = provisional(rseq=42)
    v = ProvisionalAcknowledger().on_provisional(resp)
    assert v.rack is not None
    dialog = Dialog.as_uac(ours, resp, PHONE)
    req = make_prack(dialog, v.rack, "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKpr1",
                     "<sip:pbx@192.0.2.1:5060>")
    again = parse_message(req.to_bytes())
    assert isinstance(again, Request)
    assert again.method == "PRACK" and again.uri == "sip:200@192.0.2.20:5060"
    assert again.cseq == (11, "PRACK")
    assert again.headers.get("rack") == "42 10 INVITE"
    assert again.to.tag == "bob" and again.from_.tag == "ours"
    assert again.call_id == "out-1@192.0.2.1"
    with pytest.raises(ValueError):
        make_prack(dialog, "not a rack", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx", "<sip:a@b>")


def test_uas_and_uac_agree() -> None:
    """Our PRACK for our own reliable provisional matches."""
    inv = invite()
    rel = uas(inv, first_rseq=77)
    out = rel.send(ringing(inv, 183, sdp=True), now=0.0)
    assert out is not None
    received = parse_message(out.to_bytes())
    assert isinstance(received, Response)
    v = ProvisionalAcknowledger().on_provisional(received)
    assert v.action == PRACK and v.rack is not None
    assert rel.on_prack(prack(v.rack), now=0.1) == 200


# -- helpers ----------------------------------------------------------------------------------------

def test_parse_rack() -> None:
    assert parse_rack("776656 1 INVITE") == (776656, 1, "INVITE")
    assert parse_rack("  1\t2  INVITE ") == (1, 2, "INVITE")
    assert parse_rack("4294967295 2147483647 INVITE") == (2**32 - 1, 2**31 - 1, "INVITE")


@pytest.mark.parametrize("value", [
    None, "", "INVITE", "1 INVITE", "1 2", "1 2 INVITE extra", "x 2 INVITE", "1 y INVITE",
    "0 1 INVITE", "4294967296 1 INVITE", "1 2147483648 INVITE", "-1 2 INVITE",
    "1 2 IN/VITE", "\u00b9 2 INVITE", "1 2 INVIT\u00c9", "12345678901 1 INVITE",
])
def test_parse_rack_rejects_garbage(value: str | None) -> None:
    with pytest.raises(ValueError):
        parse_rack(value)


def test_parse_rseq() -> None:
    assert parse_rseq(" 988789 ") == 988789
    for bad in (None, "", "0", "abc", "4294967296", "1 2"):
        with pytest.raises(ValueError):
            parse_rseq(bad)


def test_strip_100rel_keeps_other_tags() -> None:
    inv = strip_100rel(invite("Supported: 100rel, timer\r\nRequire: 100rel\r\n"))
    again = parse_message(inv.to_bytes())
    assert again.headers.get_all("supported") == ["timer"]
    assert "require" not in again.headers
    assert not wants_reliable(again)


def test_strip_100rel_drops_an_empty_supported() -> None:
    inv = strip_100rel(invite("Supported: 100rel\r\nk: 100REL\r\n"))
    assert "supported" not in inv.headers
    assert b"100rel" not in inv.to_bytes().lower()
    untouched = invite("Supported: timer, replaces\r\n")
    before = untouched.to_bytes()
    assert strip_100rel(untouched).to_bytes() == before


def test_add_100rel() -> None:
    inv = invite("Supported: timer\r\n")
    add_100rel(inv.headers)
    add_100rel(inv.headers)                       # no duplicate
    assert inv.headers.get_all("supported") == ["timer", "100rel"]
    add_100rel(inv.headers, supported=False)
    assert inv.headers.get_all("require") == ["100rel"]
    assert rel100(inv) == Rel100(required=True, supported=True)
