"""Carrier lines and trunks on the wire (issue 4): SIPp plays the carrier and the phones.

Everything runs on 127.0.0.1, so carriers and phones share one address: the daemon
tells them apart by the carrier's port (a phone's From names one of our extensions).
"""

from __future__ import annotations

import re
from datetime import datetime

import pytest

from tests.peers.ports import free_port
from tests.peers.sipp import SippResult, run_sipp, scenario

pytestmark = pytest.mark.integration

ACCOUNT = "02161234567"           # the line's account at the carrier
LINE_PASSWORD = "line-secret-9"
NUMBER = "13800138000"            # an outside number dialled through the line / trunk
OUTSIDE = "13912345678"           # an outside caller
NONCE = "c0ffee0123456789abcdef"  # carrier_register.xml's fixed nonce


def _line(port: int, **kw: object) -> dict:
    return {"host": "127.0.0.1", "port": port, "account": ACCOUNT,
            "password": LINE_PASSWORD, **kw}


def _carrier(sipp_background, name: str, port: int, *, calls: int | None = None,
             timeout: float = 30, auth_uri: str | None = None, **keys: object):
    """A carrier SIPp listening on `port` (the line's or trunk's), started before the daemon
    talks to it; it answers whatever arrives (UAS), so the remote is a mere placeholder."""
    return sipp_background(scenario(name), "127.0.0.1", local_port=port, max_calls=calls,
                           timeout=timeout, auth_uri=auth_uri, keys=keys)


def _callee(sipp_background, daemon, role: str = "uas_callee", calls: int = 1, **keys):
    callee = sipp_background.uas(role, daemon.remote(), calls=calls,
                                 keys={"user": "101", "password": daemon.passwords["101"],
                                       "answer_ms": 50, **keys})
    callee.wait_registered(10)
    return callee


def _phone_call(daemon, tmp_path, dialled: str, name: str = "uac_call", **keys) -> SippResult:
    """Extension 100 (digest) dials `dialled`; the scenario hangs up after hold_ms."""
    return run_sipp(scenario(name), daemon.remote(),
                    keys={"user": "100", "password": daemon.passwords["100"],
                          "callee": dialled, "hold_ms": 100, **keys},
                    workdir=tmp_path / f"{name}-{dialled}", timeout=20)


def _when(entry) -> float:
    return datetime.strptime(entry.timestamp, "%Y-%m-%d %H:%M:%S.%f").timestamp()


def _first_copies(entries) -> list:
    """Trace entries without UDP retransmissions (same CSeq and start line)."""
    seen, out = set(), []
    for e in entries:
        key = (e.msg.start_line, e.msg.header("cseq"))
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


def _line_events(daemon, name: str) -> list[str]:
    """`line NAME: STATE[ (reason)]` lines of the daemon log, in order."""
    return re.findall(rf"appliance\.line: line {name}: (.*)", daemon.log())


# -- 1. registration: digest, refresh, recovery ---------------------------------------------

def test_line_registers_with_digest_refreshes_and_recovers(daemon_factory, sipp_background):
    """The carrier is down when the daemon starts: the line fails, retries, registers
    with MD5 digest once the carrier is up, and refreshes before the granted 10 s end."""
    port = free_port("both")
    daemon = daemon_factory(t1_ms=50, lines={
        "acme": _line(port, expires=60, retry_interval=1)})
    daemon.wait_log("line acme: failed (no answer from the provider)", 10)

    carrier = _carrier(sipp_background, "carrier_register", port, calls=1, auth_uri="127.0.0.1",
                       account=ACCOUNT, password=LINE_PASSWORD, expires=10)
    res = carrier.wait(25).check()   # both rounds verified their Authorization (verifyauth)
    assert res.log_values()["auth_ok"] == "true"

    registers = _first_copies(e for e in res.trace if e.direction == "received")
    assert [e.msg.method for e in registers] == ["REGISTER"] * 4
    for e in registers:
        assert e.msg.start_line == "REGISTER sip:127.0.0.1 SIP/2.0"   # language en: no params
        assert e.msg.header("expires") == "60"
        assert e.msg.header("to") == f"<sip:{ACCOUNT}@127.0.0.1>"
    first, answer, refresh, refresh_answer = (e.msg for e in registers)
    assert first.header("authorization") is None and refresh.header("authorization") is None
    for m in (answer, refresh_answer):
        authz = m.header("authorization")
        assert authz.startswith("Digest ")
        for part in (f'username="{ACCOUNT}"', 'realm="carrier.test"', f'nonce="{NONCE}"',
                     'uri="sip:127.0.0.1"', "algorithm=MD5", "qop=auth", "nc=00000001"):
            assert part in authz, (part, authz)
    assert len({m.call_id for m in (first, answer, refresh, refresh_answer)}) == 1

    # The refresh came well before the granted 10 s ran out (85 %, at least 5 s early).
    ok_sent = [e for e in res.trace if e.direction == "sent" and e.msg.status == 200][0]
    refresh_at = registers[2]
    gap = _when(refresh_at) - _when(ok_sent)
    assert 3.0 <= gap <= 10.0, gap

    events = _line_events(daemon, "acme")
    assert events[0] == "registering"
    assert events[1] == "failed (no answer from the provider)"
    assert events.index("registered") > 1
    assert events.count("registered") == 1   # a refresh is no state change


# -- 2. Request-URI parameters of lines and trunks ------------------------------------------

RURI_CASES = {
    # name: (system.language, line ruri_params, trunk ruri_params, line suffix, trunk suffix)
    "zh": ("zh", None, None, ";user=phone", ""),
    "en": ("en", None, None, "", ""),
    "explicit": ("en", "user=phone;npdi", "user=phone", ";user=phone;npdi", ";user=phone"),
}


@pytest.mark.parametrize("case", list(RURI_CASES))
def test_request_uri_parameters(case, daemon_factory, sipp_background, tmp_path):
    """A line's REGISTER and INVITE Request-URIs carry `user=phone` for Chinese, nothing
    for English, an explicit `ruri_params` as given; a trunk's only an explicit value."""
    language, line_params, trunk_params, line_suffix, trunk_suffix = RURI_CASES[case]
    line_port, trunk_port = free_port("both"), free_port("both")
    carrier = _carrier(sipp_background, "carrier_uas", line_port, calls=2, expires=3600)
    trunk = _carrier(sipp_background, "carrier_uas", trunk_port, calls=1)
    line = _line(line_port, **({"ruri_params": line_params} if line_params else {}))
    t1 = {"host": "127.0.0.1", "port": trunk_port, "prefix": "8",
          **({"ruri_params": trunk_params} if trunk_params else {})}
    daemon = daemon_factory(system={"language": language}, lines={"acme": line},
                            trunks={"t1": t1})
    daemon.wait_log("line acme: registered", 10)

    _phone_call(daemon, tmp_path, "9" + NUMBER).check()
    _phone_call(daemon, tmp_path, "8" + NUMBER).check()
    line_res, trunk_res = carrier.wait(10).check(), trunk.wait(10).check()

    register = line_res.received(method="REGISTER")[0]
    assert register.start_line == f"REGISTER sip:127.0.0.1{line_suffix} SIP/2.0"
    invite = line_res.received(method="INVITE")[0]
    assert invite.start_line == f"INVITE sip:{NUMBER}@127.0.0.1{line_suffix} SIP/2.0"
    # The parameters go on the Request-URI only.
    assert invite.header("to") == f"<sip:{NUMBER}@127.0.0.1>"
    assert invite.header("from").startswith(f'"Ext 100" <sip:{ACCOUNT}@127.0.0.1>;tag=')
    invite = trunk_res.received(method="INVITE")[0]
    assert invite.start_line == f"INVITE sip:{NUMBER}@127.0.0.1{trunk_suffix} SIP/2.0"
    assert invite.header("to") == f"<sip:{NUMBER}@127.0.0.1>"


# -- 3. incoming calls from a line and a trunk -----------------------------------------------

def _call_in(daemon, tmp_path, ruri: str, from_uri: str, to_uri: str, *,
             name: str = "carrier_call_in", local_port: int | None = None) -> SippResult:
    return run_sipp(scenario(name), daemon.remote(), local_port=local_port,
                    keys={"ruri": ruri, "from_uri": from_uri, "to_uri": to_uri,
                          "hold_ms": 100},
                    workdir=tmp_path / f"{name}-{len(list(tmp_path.glob(name + '*')))}",
                    timeout=20)


def test_incoming_line_call_reaches_the_inbound_extension(daemon_factory, sipp_background,
                                                          tmp_path):
    """The carrier calls the line's account number from the line's address, unchallenged;
    the call rings the line's `inbound` extension and connects."""
    line_port = free_port("both")
    daemon = daemon_factory(lines={"acme": _line(line_port, register=False, inbound="101")})
    callee = _callee(sipp_background, daemon)
    domain = f"127.0.0.1:{daemon.port}"
    res = _call_in(daemon, tmp_path, f"sip:{ACCOUNT}@{domain}", f"sip:{OUTSIDE}@127.0.0.1",
                   f"sip:{ACCOUNT}@127.0.0.1", local_port=line_port).check()
    seen = callee.wait(10).check()

    assert not res.received(status=407)   # a carrier is not challenged
    assert res.last_response("INVITE").status == 200
    invite = seen.received(method="INVITE")[0]
    assert invite.header("from").startswith(f"<sip:{OUTSIDE}@127.0.0.1>;tag=")
    assert invite.header("to") == "<sip:101@127.0.0.1>"
    assert seen.received(method="ACK") and seen.received(method="BYE")
    daemon.wait_log(f"call {OUTSIDE} → 101 answered")


def test_trunk_call_from_an_unlisted_address_gets_403(daemon_factory, tmp_path):
    daemon = daemon_factory(trunks={"t1": {"host": "127.0.0.1", "peers": ["127.0.0.2"]}})
    domain = f"127.0.0.1:{daemon.port}"
    res = _call_in(daemon, tmp_path, f"sip:101@{domain}", f"sip:{OUTSIDE}@127.0.0.1",
                   "sip:101@127.0.0.1", name="trunk_call_rejected").check()
    assert [m.status for m in res.final_responses("INVITE")] == [403]
    daemon.wait_log("INVITE from unlisted source 127.0.0.1")


# -- 4. TEL URIs (RFC 3966) from a trunk ------------------------------------------------------

def test_tel_uris_from_a_trunk_reach_the_extension(daemon_factory, sipp_background, tmp_path):
    """From a listed trunk peer: a plain sip: call, a local tel: number with phone-context,
    and a global tel: number turned into an extension by a route all reach extension 101;
    the callee sees sip: URIs only."""
    daemon = daemon_factory(
        trunks={"t1": {"host": "127.0.0.1", "port": free_port("both"),
                       "peers": ["127.0.0.1"]}},
        routes=[{"prefix": "+442079460", "strip": 10, "target": "extension"}])
    callee = _callee(sipp_background, daemon, calls=3)
    plain = f"sip:101@127.0.0.1:{daemon.port}"
    local = "tel:101;phone-context=example.com"
    glob = "tel:+44-20-7946-0101"
    calls = [
        _call_in(daemon, tmp_path, plain, f"sip:{OUTSIDE}@127.0.0.1", "sip:101@127.0.0.1"),
        _call_in(daemon, tmp_path, local, "tel:+8613912345678", local),
        _call_in(daemon, tmp_path, glob, f"sip:{OUTSIDE}@127.0.0.1", glob),
    ]
    for res in calls:
        res.check()
        assert res.last_response("INVITE").status == 200
        assert not res.received(status=407)   # a listed trunk peer is not challenged
    seen = callee.wait(10).check()

    invites = seen.received(method="INVITE")
    assert len(invites) == 3
    for inv in invites:
        assert inv.start_line.startswith("INVITE sip:101@127.0.0.1:")
        assert "tel:" not in inv.start_line + inv.header("from") + inv.header("to")
        assert inv.header("to") == "<sip:101@127.0.0.1>"
    assert invites[0].header("from").startswith(f"<sip:{OUTSIDE}@127.0.0.1>;tag=")
    assert invites[1].header("from").startswith("<sip:+8613912345678@127.0.0.1>;tag=")
    assert invites[2].header("from").startswith(f"<sip:{OUTSIDE}@127.0.0.1>;tag=")


# -- 5. 100rel (RFC 3262) ---------------------------------------------------------------------

def test_reliable_183_to_a_caller_is_retransmitted_until_prack(daemon_factory,
                                                               sipp_background, tmp_path):
    """UAS side: the caller supports 100rel; the callee's 183 (SDP) goes to the caller with
    Require: 100rel and RSeq, retransmitted at T1 and 3T1 until the PRACK; the held 200
    follows the PRACK's 200."""
    t1 = 0.2
    daemon = daemon_factory(t1_ms=int(t1 * 1000))
    callee = _callee(sipp_background, daemon, role="uac_100rel_callee", answer_ms=100)
    res = _phone_call(daemon, tmp_path, "101", name="uac_100rel", prack_after_ms=700).check()
    callee.wait(10).check()

    early = [e for e in res.trace if e.direction == "received" and e.msg.status == 183]
    assert len(early) >= 3, res.describe()
    first = early[0].msg
    assert first.header("require") == "100rel"
    rseq = first.header("rseq")
    assert rseq is not None and rseq.isdigit()
    assert first.header("content-type") == "application/sdp" and b"s=early" in first.body
    assert all(e.msg.header("rseq") == rseq for e in early)  # the same response again
    t0 = _when(early[0])
    gaps = [_when(e) - t0 for e in early[1:3]]
    assert abs(gaps[0] - t1) <= 0.1 and abs(gaps[1] - 3 * t1) <= 0.1, gaps

    prack = res.sent(method="PRACK")[0]
    assert prack.header("rack") == f"{rseq} 2 INVITE"
    oks = res.received(status=200)
    assert [m.cseq_method for m in oks[:2]] == ["PRACK", "INVITE"]
    # The 200 (SDP in the 183) waited for the PRACK (RFC 3262 §3).
    ok_entry = [e for e in res.trace if e.direction == "received" and e.msg.status == 200
                and e.msg.cseq_method == "INVITE"][0]
    prack_entry = [e for e in res.trace if e.direction == "sent" and e.msg.method == "PRACK"][0]
    assert _when(ok_entry) >= _when(prack_entry)
    assert res.received(method="BYE") == [] and res.last_response().status == 200
    daemon.wait_log("ended: hangup")


def _three_lines(daemon_factory, sipp_background):
    """Line `rel` (prefix 9) to a carrier that PRACKs fine, `norel` (prefix 7,
    disable_100rel) to a plain one, `refuses` (prefix 6) to one answering PRACK 405."""
    ports = {n: free_port("both") for n in ("rel", "norel", "refuses")}
    carriers = {
        "rel": _carrier(sipp_background, "carrier_100rel", ports["rel"], calls=1,
                        prack_refuse="no"),
        "norel": _carrier(sipp_background, "carrier_uas", ports["norel"], calls=1),
        "refuses": _carrier(sipp_background, "carrier_100rel", ports["refuses"], calls=1,
                            prack_refuse="yes"),
    }
    daemon = daemon_factory(lines={
        "rel": _line(ports["rel"], register=False, prefix="9"),
        "norel": _line(ports["norel"], register=False, prefix="7", disable_100rel=True),
        "refuses": _line(ports["refuses"], register=False, prefix="6"),
    })
    return daemon, carriers


@pytest.fixture
def three_lines(daemon_factory, sipp_background):
    return _three_lines(daemon_factory, sipp_background)


def test_reliable_183_from_a_carrier_is_pracked(three_lines, tmp_path):
    """UAC side: the carrier's reliable 183 gets a PRACK with the exact RAck."""
    daemon, carriers = three_lines
    caller = _phone_call(daemon, tmp_path, "9" + NUMBER).check()
    res = carriers["rel"].wait(10).check()

    invite = res.received(method="INVITE")[0]
    assert "100rel" in [t.strip() for t in invite.header("supported").split(",")]
    cseq = invite.header("cseq").split()[0]
    prack = res.received(method="PRACK")[0]
    assert prack.header("rack") == f"1 {cseq} INVITE"
    assert prack.call_id == invite.call_id
    assert prack.start_line.startswith("PRACK sip:carrier@127.0.0.1:")  # the 183's Contact
    # In-dialog CSeq keeps counting after the PRACK; the ACK repeats the INVITE's.
    assert res.received(method="ACK")[0].header("cseq") == f"{cseq} ACK"
    assert int(res.received(method="BYE")[0].header("cseq").split()[0]) > \
        int(prack.header("cseq").split()[0])
    assert res.received(method="ACK") and res.received(method="BYE")
    assert caller.received(status=183) and caller.last_response("INVITE").status == 200


def test_line_with_disable_100rel_offers_no_100rel(three_lines, tmp_path):
    daemon, carriers = three_lines
    _phone_call(daemon, tmp_path, "7" + NUMBER).check()
    res = carriers["norel"].wait(10).check()
    invite = res.received(method="INVITE")[0]
    assert b"100rel" not in invite.raw.lower(), invite.text()


def test_carrier_refusing_prack_still_completes_the_call(three_lines, tmp_path):
    daemon, carriers = three_lines
    caller = _phone_call(daemon, tmp_path, "6" + NUMBER).check()
    res = carriers["refuses"].wait(10).check()
    assert caller.last_response("INVITE").status == 200
    assert res.received(method="PRACK") and res.received(method="ACK")
    assert res.received(method="BYE")   # the caller's hang-up reached the carrier
    assert caller.last_response().status == 200 and caller.last_response().cseq_method == "BYE"
    daemon.wait_log("disable_100rel")
    warning = [ln for ln in daemon.log().splitlines() if "disable_100rel" in ln][0]
    assert "refuses" in warning and "405" in warning


# -- 6. DNS: a line whose host has SRV records fails over to the next target ----------------
def test_line_fails_over_to_the_next_srv_target(daemon_factory, sipp_background) -> None:
    """RFC 3263 §4.3: the first SRV target (priority 10) never answers, so the REGISTER
    times out there and goes to the priority-20 target, which registers the line."""
    import socket

    from tests.peers.dnsserver import DnsServer

    live = free_port("both")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dead, DnsServer() as dns:
        dead.bind(("127.0.0.1", 0))  # bound and silent: no ICMP, a real timeout
        dead.settimeout(10)
        dead_port = dead.getsockname()[1]
        dns.set("_sip._udp.carrier.test", "SRV", f"10 0 {dead_port} a.carrier.test.",
                f"20 0 {live} b.carrier.test.")
        dns.set("a.carrier.test", "A", "127.0.0.1")
        dns.set("b.carrier.test", "A", "127.0.0.1")
        carrier = _carrier(sipp_background, "carrier_uas", live, calls=1, expires=3600)
        daemon = daemon_factory(
            sip={"t1_ms": 50},  # Timer F = 64*T1 = 3.2 s
            dns={"servers": [f"127.0.0.1:{dns.port}"]},
            lines={"acme": {"host": "carrier.test", "account": ACCOUNT,
                            "password": LINE_PASSWORD}})
        daemon.wait_log("line acme: registered", 15)
        assert f"trying 127.0.0.1:{live}" in daemon.log()
        assert dead.recv(65535).startswith(b"REGISTER ")  # it did try the first one
        assert dns.count("_sip._udp.carrier.test", "SRV") >= 1
        register = carrier.snapshot().received(method="REGISTER")[0]
        assert register.uri == "sip:carrier.test"
