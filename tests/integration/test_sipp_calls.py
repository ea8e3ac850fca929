"""Calls between extensions through the daemon (B2BUA), SIPp on both ends."""

from __future__ import annotations

import signal
import time

import pytest

from tests.peers import rawsip
from tests.peers.sipp import run_sipp, scenario, start_sipp

pytestmark = pytest.mark.integration

TRANSPORTS = ["u1", "t1", "l1"]


def _remote(daemon, transport: str) -> str:
    return daemon.remote("tls" if transport == "l1" else "udp")


def _callee(sipp_background, daemon, transport, role="uas_callee", user="101", **keys):
    callee = sipp_background.uas(role, _remote(daemon, transport), transport=transport,
                                 keys={"user": user, "password": daemon.passwords[user], **keys})
    callee.wait_registered(10)
    return callee


def _call(daemon, transport, tmp_path, name="uac_call", callee="101", **keys):
    return run_sipp(scenario(name), _remote(daemon, transport), transport=transport,
                    keys={"user": "100", "password": daemon.passwords["100"],
                          "callee": callee, **keys},
                    workdir=tmp_path / name, timeout=40)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_call_answered_and_hung_up(daemon, sipp_background, transport, tmp_path) -> None:
    callee = _callee(sipp_background, daemon, transport)
    caller = _call(daemon, transport, tmp_path)
    caller.check()
    callee.wait(15).check()

    # The caller was challenged (407) before the call went anywhere.
    assert caller.received(status=407)
    # The callee saw a B2BUA leg: a new Call-ID, our Contact; the box relays the media,
    # so the offer points at the box (c= and m= rewritten, o= the box's own).
    invite_in = callee.snapshot().received(method="INVITE")[0]
    invite_out = [m for m in caller.sent(method="INVITE") if m.header("proxy-authorization")][0]
    assert invite_in.call_id != invite_out.call_id
    assert invite_in.body != invite_out.body
    assert b"c=IN IP4 127.0.0.1" in invite_in.body and b"o=appliance " in invite_in.body
    port_in = invite_in.body.split(b"m=audio ", 1)[1].split(b" ", 1)[0]
    port_out = invite_out.body.split(b"m=audio ", 1)[1].split(b" ", 1)[0]
    assert port_in != port_out  # the caller's own media port is hidden behind the box's
    assert invite_in.header("from").startswith('"Ext 100" <sip:100@')
    # The caller's ACK and BYE went to the daemon's Contact from the 200.
    ok = caller.last_response("INVITE")
    assert ok.status == 200
    assert f":{daemon.tls_port if transport == 'l1' else daemon.port}" in ok.header("contact")
    assert caller.received(status=180)
    bye_in = callee.snapshot().received(method="BYE")
    assert len(bye_in) == 1
    daemon.wait_log("ended: hangup")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cancel_before_answer(daemon, sipp_background, transport, tmp_path) -> None:
    callee = _callee(sipp_background, daemon, transport, role="uas_ring_forever")
    caller = _call(daemon, transport, tmp_path, name="uac_cancel")
    caller.check()
    callee.wait(15).check()
    assert caller.received(status=487)
    assert callee.snapshot().received(method="CANCEL")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_busy(daemon, sipp_background, transport, tmp_path) -> None:
    callee = _callee(sipp_background, daemon, transport, role="uas_busy")
    caller = _call(daemon, transport, tmp_path, name="uac_expect_status", expect_status=486)
    caller.check()
    callee.wait(15).check()
    assert caller.last_response("INVITE").status == 486


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_not_registered_gets_480(daemon, transport, tmp_path) -> None:
    caller = _call(daemon, transport, tmp_path, name="uac_expect_status", callee="102",
                   expect_status=480)
    caller.check()


def test_unknown_number_gets_404(daemon, tmp_path) -> None:
    caller = _call(daemon, "u1", tmp_path, name="uac_expect_status", callee="555",
                   expect_status=404)
    caller.check()


def test_nobody_answers_gets_408(daemon_factory, sipp_background, tmp_path) -> None:
    daemon = daemon_factory(ring_timeout=2)
    callee = _callee(sipp_background, daemon, "u1", role="uas_ring_forever")
    start = time.monotonic()
    caller = _call(daemon, "u1", tmp_path, name="uac_expect_status", expect_status=408)
    caller.check()
    assert time.monotonic() - start >= 2
    # The ringing phone was cancelled when the ring time ran out.
    callee.wait(15).check()
    assert callee.snapshot().received(method="CANCEL")


def test_parallel_fork_to_every_contact(daemon, sipp_background, tmp_path) -> None:
    """Two phones on one extension: both ring; the first to answer gets the call and
    the other is cancelled."""
    ringer = _callee(sipp_background, daemon, "u1", role="uas_ring_forever")
    answerer = _callee(sipp_background, daemon, "t1", role="uas_callee", answer_ms=300)
    caller = _call(daemon, "u1", tmp_path)
    caller.check()
    answerer.wait(15).check()
    ringer.wait(15).check()
    assert ringer.snapshot().received(method="INVITE")
    assert ringer.snapshot().received(method="CANCEL")


def test_options_to_the_server(daemon) -> None:
    with rawsip.SipClient("udp", ("127.0.0.1", daemon.port)) as c:
        req = rawsip.build_request(
            "OPTIONS", "sip:127.0.0.1", client=c, from_uri="sip:probe@127.0.0.1",
            to_uri="sip:127.0.0.1", call_id="opt-1@test", cseq=1, from_tag="x")
        c.send(req)
        resp = c.recv_final(cseq_method="OPTIONS")
    assert resp is not None and resp.status == 200
    assert "INVITE" in resp.header("allow") and "REGISTER" in resp.header("allow")
    assert resp.header("accept") == "application/sdp"
    assert resp.header("supported") is not None


def test_sigterm_ends_calls_with_bye(daemon, sipp_background, tmp_path) -> None:
    # The daemon is gone afterwards, so the callee must not try to unregister.
    callee = _callee(sipp_background, daemon, "u1", role="uas_callee", unregister="no")
    caller = sipp_background(scenario("uac_call_wait_bye"), daemon.remote("udp"),
                             transport="u1",
                             keys={"user": "100", "password": daemon.passwords["100"],
                                   "callee": "101"})
    daemon.wait_log("answered", 15)
    time.sleep(0.5)  # let the ACK through
    daemon.proc.signal(signal.SIGTERM)
    assert daemon.proc.wait(10) == 0
    caller.wait(15).check()
    callee.wait(15).check()
    assert caller.snapshot().received(method="BYE")
    assert callee.snapshot().received(method="BYE")


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_early_media_and_in_dialog_requests_pass_between_legs(daemon, sipp_background,
                                                              transport, tmp_path) -> None:
    """183 with SDP reaches the caller; re-INVITE (hold), INFO, UPDATE and OPTIONS
    cross the B2BUA in both directions of the transaction."""
    callee = _callee(sipp_background, daemon, transport, role="uas_callee_indialog")
    caller = _call(daemon, transport, tmp_path, name="uac_call_indialog")
    caller.check()
    callee.wait(15).check()
    seen = callee.snapshot()

    early = caller.received(status=183)[0]
    assert b"s=early" in early.body
    assert early.header("content-type") == "application/sdp"

    reinvite = seen.received(method="INVITE")[1]
    assert b"a=sendonly" in reinvite.body  # the hold offer, unchanged
    held = [m for m in caller.received(status=200) if m.cseq_method == "INVITE"][-1]
    assert b"a=recvonly" in held.body
    assert len(seen.received(method="ACK")) == 2  # initial and re-INVITE ACKs relayed

    info = seen.received(method="INFO")[0]
    assert info.header("content-type") == "application/dtmf-relay"
    assert b"Signal=5" in info.body
    assert seen.received(method="UPDATE") and seen.received(method="OPTIONS")
    assert [m.status for m in caller.received() if m.cseq_method in ("INFO", "UPDATE",
            "OPTIONS")] == [200, 200, 200]


def test_sdp_passes_unchanged_when_extension_relay_is_off(daemon_factory, sipp_background,
                                                          tmp_path) -> None:
    daemon = daemon_factory(media={"relay_extension_calls": False})
    callee = _callee(sipp_background, daemon, "u1")
    caller = _call(daemon, "u1", tmp_path)
    caller.check()
    callee.wait(15).check()
    invite_in = callee.snapshot().received(method="INVITE")[0]
    invite_out = [m for m in caller.sent(method="INVITE") if m.header("proxy-authorization")][0]
    assert invite_in.body == invite_out.body
    ok_in = callee.snapshot().sent(status=200)[0]
    assert caller.last_response("INVITE").body == ok_in.body


def test_late_offer_answer_in_the_ack_reaches_the_callee(daemon, sipp_background,
                                                         tmp_path) -> None:
    """INVITE without SDP: the callee's 200 carries the offer, the caller's ACK the answer
    (RFC 3261 §13.2.1), and the B2BUA relays that ACK body to the callee."""
    callee = _callee(sipp_background, daemon, "u1", role="uas_callee_late_offer")
    caller = _call(daemon, "u1", tmp_path, name="uac_call_late_offer")
    caller.check()
    callee.wait(15).check()
    invite_in = callee.snapshot().received(method="INVITE")[0]
    assert not invite_in.body
    assert b"m=audio" in caller.last_response("INVITE").body  # the callee's offer arrived
    ack_in = callee.snapshot().received(method="ACK")[0]
    assert b"s=late-answer" in ack_in.body
    assert ack_in.header("content-type") == "application/sdp"


def test_callee_2xx_retransmitted_after_hangup_is_acked_again(daemon, tmp_path) -> None:
    """§13.2.2.4: every 2xx retransmission gets an ACK. After the call has ended the box
    keeps only a stand-in on the callee's INVITE transaction (RFC 6026 Timer M); a 200
    the callee sends again because our ACK was lost still gets the same ACK."""
    with rawsip.SipClient("udp", ("127.0.0.1", daemon.port)) as phone:
        res = rawsip.register(phone, user="101", password=daemon.passwords["101"],
                              domain="127.0.0.1", algorithm="MD5")
        assert res.status == 200, res.transcript()
        caller = start_sipp(scenario("uac_call"), daemon.remote("udp"),
                            keys={"user": "100", "password": daemon.passwords["100"],
                                  "callee": "101", "hold_ms": 200})
        try:
            ok, first = rawsip.answer_call(phone, "101")
            caller.wait(20).check()
            daemon.wait_log("ended: hangup")
            phone.send(ok)   # as if our ACK had been lost
            again = phone.recv(5)
            assert again is not None and again.method == "ACK", again
            assert again.raw == first.raw   # the very same ACK
        finally:
            caller.stop()


def test_the_express_and_the_general_challenge_answer_alike(daemon) -> None:
    """A first INVITE without credentials over UDP is challenged by the express path
    (Pbx.express_invite); `Require: 100rel` (an extension we support, §8.2.2.3) sends
    the same INVITE down the general path (Call.start). The phone must not be able to
    tell: the same 407, to the byte but for per-request values; and over TCP, which
    only the general path serves, the same again but for the transport."""
    answers = []
    for transport, extra in (("udp", []), ("udp", ["Require: 100rel"]), ("tcp", [])):
        with rawsip.SipClient(transport, ("127.0.0.1", daemon.port)) as c:
            invite = rawsip.build_request(
                "INVITE", f"sip:101@127.0.0.1:{daemon.port}", client=c,
                from_uri="sip:100@127.0.0.1", to_uri="sip:101@127.0.0.1",
                call_id=rawsip.new_tag() + "@127.0.0.1", cseq=1, from_tag=rawsip.new_tag(),
                contact=f"<sip:100@{c.local[0]}:{c.local[1]}>", extra_headers=extra,
                body=rawsip.PHONE_SDP, content_type="application/sdp")
            c.send(invite)
            answer = c.recv_final(cseq_method="INVITE")
            assert answer is not None and answer.status == 407, answer
            answers.append(rawsip.mask_volatile(answer.text()).replace("/TCP ", "/UDP "))
    assert answers[0] == answers[1] == answers[2]
    assert '\r\nProxy-Authenticate: Digest realm="' in answers[0]
