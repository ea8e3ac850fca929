"""Self-tests of the peer harness: SIPp, baresip, raw SIP and the SIPp
scenarios, against each other and against the in-process stub registrar /
proxy (tests/peers/stub_pbx.py).  None of this needs the daemon; the daemon's
own integration tests use the same helpers against the real thing."""

from __future__ import annotations

import socket
import time

import pytest

from . import rawsip
from .baresip import Baresip, baresip_available, make_tone_wav, wav_rms
from .ports import free_port, free_port_block
from .sipp import run_sipp, scenario, sipp_available, sipp_version, start_sipp, start_uas
from .stub_pbx import StubPbx

needs_sipp = pytest.mark.skipif(not sipp_available(), reason="sipp (sip-tester) not installed")
needs_baresip = pytest.mark.skipif(not baresip_available(), reason="baresip not installed")

USERS = {"100": "pw-100", "101": "pw-101"}
TRANSPORTS = ["u1", "t1", "l1"]


def _remote(pbx: StubPbx, transport: str) -> str:
    return pbx.address("tls" if transport == "l1" else "udp")


@pytest.fixture
def pbx():
    with StubPbx(USERS) as p:
        yield p


# ---------------------------------------------------------------------------
# ports
# ---------------------------------------------------------------------------
def test_free_port_is_free_for_udp_and_tcp():
    for _ in range(5):
        p = free_port("both")
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            u.bind(("127.0.0.1", p))
            t.bind(("127.0.0.1", p))
        finally:
            u.close()
            t.close()
    base = free_port_block(2)
    assert 1024 < base < 65535


# ---------------------------------------------------------------------------
# SIPp on its own
# ---------------------------------------------------------------------------
@needs_sipp
def test_sipp_builtin_uac_calls_builtin_uas(tmp_path):
    port = free_port()
    uas = start_sipp(None, f"127.0.0.1:{port}", builtin="uas", local_port=port,
                     max_calls=1, timeout=15, workdir=tmp_path)
    try:
        time.sleep(0.3)  # let it bind
        res = run_sipp(None, f"127.0.0.1:{port}", builtin="uac", timeout=10, workdir=tmp_path)
        res.check()
        assert res.successful == 1 and res.failed == 0
        assert [m.method or m.status for m in res.sent()] == ["INVITE", "ACK", "BYE"]
        assert [m.status for m in res.received()] == [180, 200, 200]
        uas_res = uas.wait(10)
        uas_res.check()
        assert uas_res.received(method="INVITE")
    finally:
        uas.stop()


@needs_sipp
def test_sipp_failure_carries_the_trace(tmp_path):
    # nothing listens there: the INVITE is retransmitted until -timeout
    res = run_sipp(None, f"127.0.0.1:{free_port()}", builtin="uac", timeout=2, workdir=tmp_path)
    assert not res.ok
    with pytest.raises(AssertionError) as ei:
        res.check()
    text = str(ei.value)
    assert "INVITE sip:service@127.0.0.1" in text and "return code" in text


@needs_sipp
@pytest.mark.skipif(sipp_version() != "3.6.1", reason="documents SIPp 3.6.1 (Debian 12)")
def test_sipp_361_cannot_answer_a_sha256_first_challenge(tmp_path):
    """SIPp 3.6.1 computes MD5 only and takes the parameters of the FIRST
    challenge: SHA-256 offered first is fatal (exit 255).  MD5 first works."""
    with StubPbx(USERS, algorithms=("SHA-256", "MD5")) as pbx:
        res = run_sipp(scenario("register_digest"), pbx.address(), workdir=tmp_path,
                       keys={"user": "100", "password": USERS["100"]}, timeout=5)
        assert res.returncode == 255
        assert "authentication must use MD5" in res.stderr
    with StubPbx(USERS, algorithms=("MD5", "SHA-256")) as pbx:
        run_sipp(scenario("register_digest"), pbx.address(), workdir=tmp_path,
                 keys={"user": "100", "password": USERS["100"]}, timeout=5).check()


# ---------------------------------------------------------------------------
# SIPp scenarios against the stub registrar/proxy, over UDP, TCP and TLS
# ---------------------------------------------------------------------------
@needs_sipp
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_register_then_unregister(pbx, transport, tmp_path):
    remote = _remote(pbx, transport)
    port = free_port()
    keys = {"user": "100", "password": USERS["100"], "expires": 120}
    res = run_sipp(scenario("register_digest"), remote, transport=transport, local_port=port,
                   keys=keys, workdir=tmp_path, timeout=10).check()
    assert res.log_values()["expires"] == "120"
    ok = res.last_response("REGISTER")
    tp = {"u1": "", "t1": ";transport=tcp", "l1": ";transport=tls"}[transport]
    assert (f"sip:100@127.0.0.1:{port}{tp}", {"expires": "120"}) in rawsip.parse_contacts(ok)
    first = res.sent(method="REGISTER")[0]
    assert first.header("Via").startswith(f"SIP/2.0/{ {'u1': 'UDP', 't1': 'TCP', 'l1': 'TLS'}[transport] } ")
    assert "Authorization" in res.sent(method="REGISTER")[1].text()

    res = run_sipp(scenario("unregister"), remote, transport=transport, local_port=port,
                   keys=keys, workdir=tmp_path, timeout=10).check()
    assert rawsip.parse_contacts(res.last_response("REGISTER")) == []

    run_sipp(scenario("register_digest"), remote, transport=transport, keys=keys,
             workdir=tmp_path, timeout=10).check()
    res = run_sipp(scenario("unregister"), remote, transport=transport,
                   keys={**keys, "unreg_mode": "star"}, workdir=tmp_path, timeout=10).check()
    assert "Contact: *" in res.sent(method="REGISTER")[0].text()
    assert not pbx.bindings.get("100")


@needs_sipp
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_register_wrong_password_and_unknown_user_look_alike(pbx, transport, tmp_path):
    remote = _remote(pbx, transport)
    wrong = run_sipp(scenario("register_wrong"), remote, transport=transport, workdir=tmp_path,
                     keys={"user": "100", "password": "nope", "final_status": 403}).check()
    unknown = run_sipp(scenario("register_wrong"), remote, transport=transport, workdir=tmp_path,
                       keys={"user": "999", "password": "nope", "final_status": 403}).check()
    a = rawsip.mask_volatile(wrong.last_response("REGISTER").text()).replace("100@", "U@")
    b = rawsip.mask_volatile(unknown.last_response("REGISTER").text()).replace("999@", "U@")
    assert a == b
    # the expected status is the test's choice; a mismatch fails the run
    bad = run_sipp(scenario("register_wrong"), remote, transport=transport, workdir=tmp_path,
                   keys={"user": "100", "password": "nope", "final_status": 401}, timeout=5)
    assert bad.returncode == 1 and "CHECK FAILED: final status 403, expected 401" in bad.logs


@needs_sipp
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_call_answered_and_hung_up(pbx, transport, tmp_path):
    remote = _remote(pbx, transport)
    with start_uas("uas_callee", remote, transport=transport, workdir=tmp_path, timeout=20,
                   keys={"user": "101", "password": USERS["101"]}) as callee:
        callee.wait_registered(5)
        res = run_sipp(scenario("uac_call"), remote, transport=transport, workdir=tmp_path,
                       keys={"user": "100", "password": USERS["100"], "callee": "101",
                             "hold_ms": 200}, timeout=10).check()
        callee.wait(10).check()
    assert [m.status for m in res.final_responses("INVITE")] == [407, 200]
    auth = res.sent(method="INVITE")[1].header("Proxy-Authorization")
    assert 'uri="sip:101@' in auth
    assert res.log_values()["record_route"].strip().startswith("<sip:127.0.0.1")
    bye = res.sent(method="BYE")[0]
    assert bye.header("Route") and bye.uri == res.log_values()["answer_contact"].strip("<>")


@needs_sipp
def test_call_without_record_route(tmp_path):
    """A B2BUA does not Record-Route: [routes] and [last_Record-Route:] then
    expand to nothing and the lines disappear."""
    with StubPbx(USERS, record_route=False) as pbx, \
            start_uas("uas_callee", pbx.address(), workdir=tmp_path, timeout=20,
                      keys={"user": "101", "password": USERS["101"]}) as callee:
        callee.wait_registered(5)
        res = run_sipp(scenario("uac_call"), pbx.address(), workdir=tmp_path,
                       keys={"user": "100", "password": USERS["100"], "callee": "101",
                             "hold_ms": 100}).check()
        callee.wait(10).check()
    assert res.sent(method="BYE")[0].header("Route") is None
    assert "Record-Route" not in callee.wait().sent(status=200)[0].text()


@needs_sipp
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_call_cancelled_while_ringing(pbx, transport, tmp_path):
    remote = _remote(pbx, transport)
    with start_uas("uas_ring_forever", remote, transport=transport, workdir=tmp_path, timeout=20,
                   keys={"user": "101", "password": USERS["101"]}) as callee:
        callee.wait_registered(5)
        res = run_sipp(scenario("uac_cancel"), remote, transport=transport, workdir=tmp_path,
                       keys={"user": "100", "password": USERS["100"], "callee": "101",
                             "ring_ms": 100}, timeout=10).check()
        callee.wait(10).check()
    assert 487 in [m.status for m in res.final_responses("INVITE")]
    ack = res.sent(method="ACK")[-1]
    invite = res.sent(method="INVITE")[-1]
    assert rawsip.parse_message(ack.raw).header("Via").split(";branch=")[1].split(";")[0] == \
        invite.header("Via").split(";branch=")[1].split(";")[0]


@needs_sipp
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_call_to_busy_callee_and_to_nobody(pbx, transport, tmp_path):
    remote = _remote(pbx, transport)
    caller = {"user": "100", "password": USERS["100"], "callee": "101"}
    with start_uas("uas_busy", remote, transport=transport, workdir=tmp_path, timeout=20,
                   keys={"user": "101", "password": USERS["101"]}) as callee:
        callee.wait_registered(5)
        res = run_sipp(scenario("uac_expect_status"), remote, transport=transport,
                       workdir=tmp_path, keys={**caller, "expect_status": 486}).check()
        callee.wait(10).check()
    assert res.log_values()["status"] == "486"
    res = run_sipp(scenario("uac_expect_status"), remote, transport=transport, workdir=tmp_path,
                   keys={**caller, "callee": "555", "expect_status": 480}).check()
    assert res.sent(method="ACK")[-1].header("CSeq") == "2 ACK"


@needs_sipp
def test_uas_answers_options_pings(pbx, tmp_path):
    """A daemon may qualify registered contacts with OPTIONS: the background
    callee answers them (out-of-call scenario) and still takes the call."""
    with start_uas("uas_busy", pbx.address(), workdir=tmp_path, timeout=20,
                   keys={"user": "101", "password": USERS["101"]}) as callee:
        callee.wait_registered(5)
        with rawsip.SipClient("udp", ("127.0.0.1", callee.local_port)) as c:
            c.send(rawsip.build_request(
                "OPTIONS", f"sip:101@127.0.0.1:{callee.local_port}", client=c,
                from_uri="sip:pbx@127.0.0.1", to_uri="sip:101@127.0.0.1",
                call_id="ping-1", cseq=1, from_tag="p1"))
            assert c.recv_final(timeout=3).status == 200
        run_sipp(scenario("uac_expect_status"), pbx.address(), workdir=tmp_path,
                 keys={"user": "100", "password": USERS["100"], "callee": "101",
                       "expect_status": 486}).check()
        callee.wait(10).check()


# ---------------------------------------------------------------------------
# raw SIP (SHA-256 digest, arbitrary bytes)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_rawsip_register_digest(transport, algorithm):
    with StubPbx(USERS, algorithms=("SHA-256", "MD5")) as pbx:
        port = pbx.tls_port if transport == "tls" else pbx.port
        with rawsip.SipClient(transport, ("127.0.0.1", port)) as c:
            res = rawsip.register(c, user="100", password=USERS["100"], domain="127.0.0.1",
                                  algorithm=algorithm)
            assert res.challenge.status == 401, res.transcript()
            assert res.status == 200, res.transcript()
            assert f"algorithm={algorithm}" in res.authorization
            res = rawsip.register(c, user="100", password="wrong", domain="127.0.0.1",
                                  algorithm=algorithm)
            assert res.status == 403, res.transcript()
        with pytest.raises(LookupError), rawsip.SipClient(transport, ("127.0.0.1", port)) as c:
            rawsip.register(c, user="100", password="x", domain="127.0.0.1",
                            algorithm="SHA-512-256")


def test_digest_matches_rfc_examples():
    # RFC 2617 3.5 (MD5, qop=auth)
    assert rawsip.digest_response(
        algorithm="MD5", username="Mufasa", realm="testrealm@host.com",
        password="Circle Of Life", method="GET", uri="/dir/index.html",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", qop="auth", nc="00000001",
        cnonce="0a4f113b") == "6629fae49393a05397450978507c4ef1"
    # RFC 7616 3.9.1 (SHA-256)
    assert rawsip.digest_response(
        algorithm="SHA-256", username="Mufasa", realm="http-auth@example.org",
        password="Circle of Life", method="GET", uri="/dir/index.html",
        nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", qop="auth", nc="00000001",
        cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ") == \
        "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"


def test_send_raw_bytes_and_parse(pbx):
    data = (b"OPTIONS sip:127.0.0.1 SIP/2.0\n"
            b"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKraw1\n"
            b"f: <sip:t@127.0.0.1>;tag=1\nt: <sip:127.0.0.1>\ni: raw-1\n"
            b"CSeq: 1 OPTIONS\nl: 0\n\n")
    for tp, port in (("udp", pbx.port), ("tcp", pbx.port), ("tls", pbx.tls_port)):
        out = rawsip.send_raw(rawsip.normalize_crlf(data), tp, ("127.0.0.1", port), collect=2)
        assert out and out[-1].status == 200, tp
        assert out[-1].call_id == "raw-1"


# ---------------------------------------------------------------------------
# baresip
# ---------------------------------------------------------------------------
@needs_baresip
def test_baresip_direct_call_with_audio(tmp_path):
    """Two baresips, no server: dial sip:bob@127.0.0.1:PORT, auto-answer,
    audio flows (bob records alice's tone), hang up."""
    tone = make_tone_wav(tmp_path / "tone.wav", freq=1000, seconds=3)
    with Baresip(tmp_path / "bob", "sip:bob@127.0.0.1", auto_answer=True,
                 record_wav=tmp_path / "bob_rx.wav") as bob, \
            Baresip(tmp_path / "alice", "sip:alice@127.0.0.1", audio_in_wav=tone) as alice:
        alice.dial(f"sip:bob@127.0.0.1:{bob.sip_port}")
        assert alice.wait_established(10)["direction"] == "outgoing"
        ev = bob.wait_established(10)
        assert ev["direction"] == "incoming" and "alice" in ev["peeruri"]
        time.sleep(1.0)
        alice.hangup()
        alice.wait_closed(5)
        bob.wait_closed(5)
    assert wav_rms(tmp_path / "bob_rx.wav") > 0.1


@needs_baresip
def test_baresip_manual_answer(tmp_path):
    with Baresip(tmp_path / "bob", "sip:bob@127.0.0.1") as bob, \
            Baresip(tmp_path / "alice", "sip:alice@127.0.0.1") as alice:
        alice.dial(f"sip:bob@127.0.0.1:{bob.sip_port}")
        bob.wait_incoming(10)
        alice.wait_event("CALL_RINGING", 10)
        bob.answer()
        bob.wait_established(10)
        alice.wait_established(10)
        bob.hangup()
        assert "Connection reset by peer" in alice.wait_closed(5).param


@needs_baresip
@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_baresip_register_and_call_through_stub(pbx, transport, tmp_path):
    port = pbx.tls_port if transport == "tls" else pbx.port
    with Baresip(tmp_path / "a", "sip:100@127.0.0.1", password=USERS["100"],
                 transport=transport, server_port=port) as a, \
            Baresip(tmp_path / "b", "sip:101@127.0.0.1", password=USERS["101"],
                    transport=transport, server_port=port, auto_answer=True) as b:
        a.wait_registered(5)
        b.wait_registered(5)
        a.dial(f"sip:101@127.0.0.1:{port};transport={transport}")
        a.wait_established(10)
        b.wait_established(10)
        b.hangup()
        a.wait_closed(5)


@needs_baresip
def test_baresip_register_failure_is_reported(pbx, tmp_path):
    with Baresip(tmp_path / "a", "sip:100@127.0.0.1", password="wrong",
                 server_port=pbx.port) as a:
        with pytest.raises(AssertionError, match="REGISTER_FAIL"):
            a.wait_registered(5)


@needs_sipp
@needs_baresip
@pytest.mark.parametrize("transport", ["u1", "l1"])
def test_sipp_caller_and_baresip_callee(pbx, transport, tmp_path):
    bt = {"u1": "udp", "t1": "tcp", "l1": "tls"}[transport]
    remote = _remote(pbx, transport)
    port = int(remote.rsplit(":", 1)[1])
    with Baresip(tmp_path / "b", "sip:101@127.0.0.1", password=USERS["101"],
                 transport=bt, server_port=port, auto_answer=True) as b:
        b.wait_registered(5)
        run_sipp(scenario("uac_call"), remote, transport=transport, workdir=tmp_path,
                 keys={"user": "100", "password": USERS["100"], "callee": "101",
                       "hold_ms": 300}).check()
        b.wait_established(5)
        b.wait_closed(5)


@needs_sipp
@needs_baresip
def test_baresip_caller_and_sipp_callee(pbx, tmp_path):
    with start_uas("uas_callee", pbx.address(), workdir=tmp_path, timeout=20,
                   keys={"user": "101", "password": USERS["101"], "answer_ms": 100}) as callee, \
            Baresip(tmp_path / "a", "sip:100@127.0.0.1", password=USERS["100"],
                    server_port=pbx.port) as a:
        callee.wait_registered(5)
        a.wait_registered(5)
        a.dial(f"sip:101@127.0.0.1:{pbx.port}")
        a.wait_established(10)
        time.sleep(0.3)
        a.hangup()
        a.wait_closed(5)
        callee.wait(10).check()
