"""REGISTER against the real daemon with SIPp (MD5) and rawsip (SHA-256), UDP/TCP/TLS."""

from __future__ import annotations

import pytest

from tests.peers import rawsip
from tests.peers.ports import free_port
from tests.peers.sipp import run_sipp, scenario

TRANSPORTS = ["u1", "t1", "l1"]
RAW = {"u1": "udp", "t1": "tcp", "l1": "tls"}

pytestmark = pytest.mark.integration


def _remote(daemon, transport: str) -> str:
    return daemon.remote("tls" if transport == "l1" else "udp")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_register_md5_with_sipp(daemon, transport, tmp_path) -> None:
    res = run_sipp(scenario("register_digest"), _remote(daemon, transport), transport=transport,
                   keys={"user": "100", "password": daemon.passwords["100"], "expires": 120},
                   workdir=tmp_path)
    res.check()
    challenge = res.received(status=401)[0]
    offered = challenge.header_all("www-authenticate")
    assert [rawsip.parse_challenge(v)["algorithm"] for v in offered] == ["MD5", "SHA-256"]
    assert all('qop="auth"' in v for v in offered)
    ok = res.last_response("REGISTER")
    assert ok.status == 200
    # §10.3 step 8: the 200 lists the binding with the granted expiry.
    assert "expires=120" in ok.header("contact")
    answer = [m for m in res.sent(method="REGISTER") if m.header("authorization")][0]
    assert "algorithm=MD5" in answer.header("authorization")


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_register_sha256(daemon, transport) -> None:
    port = daemon.tls_port if transport == "tls" else daemon.port
    with rawsip.SipClient(transport, ("127.0.0.1", port)) as c:
        res = rawsip.register(c, user="101", password=daemon.passwords["101"],
                              domain="127.0.0.1", algorithm="SHA-256", expires=300)
        assert res.status == 200, res.transcript()
        sent = res.exchanges[-1][0].decode()
        assert "algorithm=SHA-256" in sent
        assert "expires=300" in res.final.header("contact")


@pytest.mark.parametrize("mode", ["contact", "star"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unregister(daemon, transport, mode, tmp_path) -> None:
    remote = _remote(daemon, transport)
    keys = {"user": "102", "password": daemon.passwords["102"]}
    port = free_port("both")
    run_sipp(scenario("register_digest"), remote, transport=transport, keys=keys,
             local_port=port, workdir=tmp_path / "reg").check()
    res = run_sipp(scenario("unregister"), remote, transport=transport, local_port=port,
                   keys={**keys, "unreg_mode": mode}, workdir=tmp_path / "unreg")
    res.check()
    final = res.last_response("REGISTER")
    assert final.status == 200
    assert final.header("contact") is None  # no bindings left


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_wrong_password_and_unknown_user_look_alike(daemon, transport, tmp_path) -> None:
    remote = _remote(daemon, transport)
    wrong = run_sipp(scenario("register_wrong"), remote, transport=transport,
                     keys={"user": "100", "password": "not-the-password", "final_status": 401},
                     workdir=tmp_path / "wrong")
    wrong.check()
    unknown = run_sipp(scenario("register_wrong"), remote, transport=transport,
                       keys={"user": "999", "password": "whatever", "final_status": 401},
                       workdir=tmp_path / "unknown")
    unknown.check()
    a = wrong.last_response("REGISTER")
    b = unknown.last_response("REGISTER")
    assert a.status == b.status == 401
    # Only the user part (and per-request values) may differ: no extension enumeration.
    mask = rawsip.mask_volatile
    # Only the URIs' user part is masked: the daemon's port may itself contain "100".
    assert (mask(a.text()).replace("sip:100@", "sip:USER@")
            == mask(b.text()).replace("sip:999@", "sip:USER@"))


def test_interval_too_brief_gets_423_with_min_expires(daemon) -> None:
    with rawsip.SipClient("udp", ("127.0.0.1", daemon.port)) as c:
        res = rawsip.register(c, user="100", password=daemon.passwords["100"],
                              domain="127.0.0.1", algorithm="MD5", expires=5)
        assert res.status == 423, res.transcript()
        assert res.final.header("min-expires") == "10"


def test_replayed_nonce_count_is_refused(daemon) -> None:
    with rawsip.SipClient("udp", ("127.0.0.1", daemon.port)) as c:
        res = rawsip.register(c, user="100", password=daemon.passwords["100"],
                              domain="127.0.0.1", algorithm="MD5", expires=60)
        assert res.status == 200, res.transcript()
        # Replay the accepted REGISTER byte for byte but as a new transaction (new
        # branch, higher CSeq): same nonce and nc, so the registrar must refuse it.
        sent = res.exchanges[-1][0].decode()
        replay = sent.replace("CSeq: 2 ", "CSeq: 3 ")
        replay = replay.replace(";branch=", ";branch=z9hG4bKreplay", 1)
        c.send(replay.encode())
        final = c.recv_final(cseq_method="REGISTER")
        assert final is not None and final.status == 401, final


def test_the_express_and_the_general_path_answer_alike(daemon) -> None:
    """A plain REGISTER over UDP takes the registrar's express path; `Require: path` (an
    extension we support, §8.2.2.3) sends the same REGISTER down the general path. The
    phone must not be able to tell: the same 401 and the same 200, to the byte but for
    per-request values."""
    answers = []
    with rawsip.SipClient("udp", ("127.0.0.1", daemon.port)) as c:
        for extra in ([], ["Require: path"]):
            res = rawsip.register(c, user="100", password=daemon.passwords["100"],
                                  domain="127.0.0.1", algorithm="MD5", expires=300,
                                  extra_headers=extra)
            assert res.status == 200, res.transcript()
            assert res.challenge is not None
            answers.append([rawsip.mask_volatile(m.text())
                            for m in (res.challenge, res.final)])
    assert answers[0] == answers[1]
    assert "Contact: <sip:100@" in answers[0][1] and ";expires=300\r\n" in answers[0][1]


def test_crlf_keepalive_is_answered_on_tcp(daemon) -> None:
    import socket
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=3) as s:
        s.sendall(b"\r\n\r\n")  # RFC 5626 §3.5.1 ping
        assert s.recv(16) == b"\r\n"  # pong
