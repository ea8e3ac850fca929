"""Call forwarding (issue 4 item 7): unconditional, busy, no answer, unreachable, a
phone's own 302, chains, loops, feature codes from the phone, and the Diversion /
History-Info headers a carrier sees.  SIPp on every end; assertions on the bytes
SIPp traced on the wire."""

from __future__ import annotations

import time

import pytest

from appliance.store.config import load_config
from tests.peers.ports import free_port
from tests.peers.rawsip import SipMessage
from tests.peers.sipp import SippResult, run_sipp, scenario

pytestmark = pytest.mark.integration

CALL_INFO = 'Call-Info: purpose=forwarding, username="{by}", contact="{to}"'


# -- helpers --------------------------------------------------------------------------------

def _fwd(**forward: object) -> dict:
    return {"forward": forward}


def _phone(sipp_background, daemon, user: str, role: str = "uas_callee", **keys):
    """A registered SIPp phone for `user` answering with `role`."""
    phone = sipp_background.uas(role, daemon.remote(), transport="u1",
                                keys={"user": user, "password": daemon.passwords[user],
                                      **keys})
    phone.wait_registered(10)
    return phone


def _call(daemon, tmp_path, callee: str, *, name: str = "fwd_uac_call", user: str = "100",
          **keys) -> SippResult:
    return run_sipp(scenario(name), daemon.remote(), transport="u1",
                    keys={"user": user, "password": daemon.passwords[user],
                          "callee": callee, **keys},
                    workdir=tmp_path / f"{name}-{user}-{callee}", timeout=20)


def _expect(daemon, tmp_path, callee: str, status: int, user: str = "100") -> SippResult:
    res = _call(daemon, tmp_path, callee, name="uac_expect_status", user=user,
                expect_status=status)
    res.check()
    return res


def _invite_responses(res: SippResult) -> list[SipMessage]:
    """Responses to the authenticated INVITE (CSeq 2), in order of arrival."""
    return [m for m in res.received(cseq_method="INVITE")
            if m.header("cseq", "").split()[0] == "2"]


def _provisionals(res: SippResult) -> list[int]:
    return [m.status for m in _invite_responses(res) if m.status and 100 < m.status < 200]


def _forwards(res: SippResult) -> list[tuple[str, str]]:
    """(by, to) of every `181 Call Is Being Forwarded`, checked byte for byte."""
    out = []
    for m in _invite_responses(res):
        if m.status != 181:
            continue
        assert m.start_line == "SIP/2.0 181 Call Is Being Forwarded", m.raw
        infos = m.header_all("call-info")
        assert len(infos) == 1, m.raw
        by, to = infos[0].split('username="')[1].split('", contact="')
        to = to.rstrip('"')
        assert f"\r\n{CALL_INFO.format(by=by, to=to)}\r\n".encode() in m.raw, m.raw
        out.append((by, to))
    return out


def _final(res: SippResult) -> SipMessage:
    finals = [m for m in _invite_responses(res) if (m.status or 0) >= 200]
    assert len(finals) == 1, res
    return finals[0]


def _invites(phone) -> list[SipMessage]:
    return phone.snapshot().received(method="INVITE")


def _assert_answered_by(callee_phone, res: SippResult, caller: str = "100") -> None:
    res.check()
    assert _final(res).status == 200
    callee_phone.wait(15).check()
    seen = callee_phone.snapshot()
    (invite,) = seen.received(method="INVITE")
    assert f"<sip:{caller}@" in invite.header("from")
    assert seen.received(method="BYE")


# -- forwarding by condition ---------------------------------------------------------------

def test_unconditional(daemon_factory, sipp_background, tmp_path) -> None:
    d = daemon_factory(extensions={"101": _fwd(unconditional="102")})
    phone101 = _phone(sipp_background, d, "101")
    phone102 = _phone(sipp_background, d, "102")
    res = _call(d, tmp_path, "101")
    _assert_answered_by(phone102, res)
    assert _forwards(res) == [("101", "102")]
    assert _provisionals(res).count(181) == 1
    assert _invites(phone101) == []  # 101's phone never rang


def test_busy(daemon_factory, sipp_background, tmp_path) -> None:
    d = daemon_factory(extensions={"101": _fwd(busy="102")})
    phone101 = _phone(sipp_background, d, "101", role="uas_busy")
    phone102 = _phone(sipp_background, d, "102")
    res = _call(d, tmp_path, "101")
    _assert_answered_by(phone102, res)
    assert _forwards(res) == [("101", "102")]
    phone101.wait(15).check()
    assert phone101.snapshot().sent(status=486)


def test_no_answer(daemon_factory, sipp_background, tmp_path) -> None:
    d = daemon_factory(extensions={"101": _fwd(no_answer="102", no_answer_after=1)})
    phone101 = _phone(sipp_background, d, "101", role="uas_ring_forever")
    phone102 = _phone(sipp_background, d, "102")
    start = time.monotonic()
    res = _call(d, tmp_path, "101")
    _assert_answered_by(phone102, res)
    assert time.monotonic() - start >= 1
    # 101 rang, then the caller heard of the forward, then 102 rang
    assert [s for s in _provisionals(res) if s != 183] == [180, 181, 180]
    assert _forwards(res) == [("101", "102")]
    phone101.wait(15).check()
    assert phone101.snapshot().received(method="CANCEL")


def test_unreachable(daemon_factory, sipp_background, tmp_path) -> None:
    d = daemon_factory(extensions={"101": _fwd(unreachable="102")})
    phone102 = _phone(sipp_background, d, "102")
    res = _call(d, tmp_path, "101")  # nobody registered as 101
    _assert_answered_by(phone102, res)
    assert _forwards(res) == [("101", "102")]


def test_phone_redirects_with_302(daemon_factory, sipp_background, tmp_path) -> None:
    d = daemon_factory()
    phone101 = _phone(sipp_background, d, "101", role="fwd_uas_redirect", redirect_to="102")
    phone102 = _phone(sipp_background, d, "102")
    res = _call(d, tmp_path, "101")
    _assert_answered_by(phone102, res)
    assert _forwards(res) == [("101", "102")]
    phone101.wait(15).check()
    (redirect,) = phone101.snapshot().sent(status=302)
    assert b"\r\nContact: <sip:102@127.0.0.1>\r\n" in redirect.raw
    assert not [m for m in res.received() if m.status == 302]  # the B2BUA followed it


# -- chains and loops ------------------------------------------------------------------------

def test_two_hop_chain(daemon_factory, sipp_background, tmp_path) -> None:
    d = daemon_factory(extensions={"101": _fwd(unconditional="102"),
                                   "102": _fwd(unconditional="103")})
    phone103 = _phone(sipp_background, d, "103")
    res = _call(d, tmp_path, "101")
    _assert_answered_by(phone103, res)
    assert _forwards(res) == [("101", "102"), ("102", "103")]


def test_loop_is_detected(daemon_factory, sipp_background, tmp_path) -> None:
    d = daemon_factory(extensions={"101": _fwd(unconditional="102"),
                                   "102": _fwd(no_answer="101", unreachable="101")})
    phone101 = _phone(sipp_background, d, "101")
    start = time.monotonic()
    res = _expect(d, tmp_path, "101", 482)
    assert time.monotonic() - start < 5
    assert _forwards(res) == [("101", "102"), ("102", "101")]
    assert _final(res).start_line == "SIP/2.0 482 Loop Detected"
    assert _invites(phone101) == []
    d.wait_log("ended: loop (482)")


def test_hop_limit(daemon_factory, tmp_path) -> None:
    """101 → 102 → … → 107: five forwards are followed, the sixth ends the call."""
    chain = [str(n) for n in range(101, 108)]
    exts: dict[str, dict] = {n: {"password": f"pw-{n}-secret"} for n in chain[3:]}
    for by, to in zip(chain, chain[1:], strict=False):
        exts.setdefault(by, {}).update(_fwd(unconditional=to))
    d = daemon_factory(extensions=exts)
    res = _expect(d, tmp_path, "101", 482)
    assert _forwards(res) == list(zip(chain[:5], chain[1:6], strict=True))
    assert _final(res).start_line == "SIP/2.0 482 Loop Detected"


# -- feature codes ----------------------------------------------------------------------------

def _feature(d, tmp_path, code: str, user: str = "100", escape: bool = True) -> SipMessage:
    """Dial a feature code ('#' escaped as %23 in the Request-URI user part, RFC 3261
    §25.1, unless `escape` is false: some phones send it bare)."""
    dialled = code.replace("#", "%23") if escape else code
    res = _expect(d, tmp_path, dialled, 603, user=user)
    invite = [m for m in res.sent(method="INVITE") if m.header("proxy-authorization")][0]
    assert invite.uri.startswith(f"sip:{dialled}@")
    return _final(res)


def _forward_of(d, ext: str):
    return load_config(d.data / "config.yaml").extensions[ext].forward


def test_feature_codes_set_and_clear_unconditional(daemon_factory, sipp_background,
                                                    tmp_path) -> None:
    d = daemon_factory()
    final = _feature(d, tmp_path, "*90*102#")
    assert final.start_line == "SIP/2.0 603 Forwarding unconditional to 102"
    assert _forward_of(d, "100").unconditional == "102"
    assert "  forward:\n      unconditional: '102'\n" in (d.data / "config.yaml").read_text()

    # a call to 100 now goes to 102
    phone102 = _phone(sipp_background, d, "102")
    res = _call(d, tmp_path, "100", user="101")
    _assert_answered_by(phone102, res, caller="101")
    assert _forwards(res) == [("100", "102")]

    final = _feature(d, tmp_path, "*90#")
    assert final.start_line == "SIP/2.0 603 Forwarding unconditional cleared"
    assert _forward_of(d, "100").unconditional is None
    assert "forward:" not in (d.data / "config.yaml").read_text()
    # and 100 is no longer forwarded: nobody is registered there
    res = _expect(d, tmp_path, "100", 480, user="101")
    assert _forwards(res) == []


@pytest.mark.parametrize(("code", "kind", "words"), [
    ("91", "busy", "busy"), ("92", "no_answer", "no answer"), ("93", "unreachable", "unreachable"),
])
def test_feature_codes_conditional(daemon_factory, tmp_path, code, kind, words) -> None:
    d = daemon_factory()
    final = _feature(d, tmp_path, f"*{code}*103#", user="101")
    assert final.start_line == f"SIP/2.0 603 Forwarding {words} to 103"
    fw = _forward_of(d, "101")
    assert getattr(fw, kind) == "103"
    assert fw.unconditional is None
    final = _feature(d, tmp_path, f"*{code}#", user="101", escape=False)
    assert final.start_line == f"SIP/2.0 603 Forwarding {words} cleared"
    assert getattr(_forward_of(d, "101"), kind) is None


# -- toward a carrier -------------------------------------------------------------------------

def _carrier_daemon(daemon_factory, forward_header: str, **forwards: dict):
    port = free_port("both")
    line = {"host": "127.0.0.1", "port": port, "transport": "udp", "account": "7000",
            "password": "x", "register": False, "inbound": None,
            "forward_header": forward_header}
    return daemon_factory(lines={"carrier": line}, extensions=forwards), port


def _carrier_call(daemon_factory, sipp_background, tmp_path, forward_header: str,
                  **forwards: dict) -> tuple[SippResult, SipMessage]:
    d, port = _carrier_daemon(daemon_factory, forward_header, **forwards)
    carrier = sipp_background(scenario("fwd_carrier_uas"), d.remote(), transport="u1",
                              local_port=port, timeout=20)
    res = _call(d, tmp_path, "101")
    res.check()
    assert _final(res).status == 200
    seen = carrier.wait(15).check()
    (invite,) = seen.received(method="INVITE")
    assert invite.uri == "sip:5551234@127.0.0.1"
    assert res.received(status=407)  # the caller is our extension, not the carrier
    return res, invite


def test_diversion_toward_carrier(daemon_factory, sipp_background, tmp_path) -> None:
    res, invite = _carrier_call(daemon_factory, sipp_background, tmp_path, "diversion",
                                **{"101": _fwd(unconditional="95551234")})
    assert _forwards(res) == [("101", "95551234")]
    # RFC 5806 §4: name-addr of the diverting party, reason, counter
    assert invite.header_all("diversion") == [
        "<sip:101@127.0.0.1>;reason=unconditional;counter=1"]
    assert b"\r\nDiversion: <sip:101@127.0.0.1>;reason=unconditional;counter=1\r\n" in invite.raw
    assert invite.header("history-info") is None


TWO_HOPS = {
    # RFC 5806 §4: the most recent diversion first, one counter per entry
    "diversion": ["<sip:102@127.0.0.1>;reason=unconditional;counter=1",
                  "<sip:101@127.0.0.1>;reason=unavailable;counter=1"],
    # RFC 7044: each retarget nested under the one before (mp = its index); RFC 4458
    # causes 503 (not reachable) and 302 (unconditional)
    "history-info": ["<sip:101@127.0.0.1>;index=1, "
                     "<sip:102@127.0.0.1;cause=503>;index=1.1;mp=1, "
                     "<sip:5551234@127.0.0.1;cause=302>;index=1.1.1;mp=1.1"],
}


@pytest.mark.parametrize("style", sorted(TWO_HOPS))
def test_two_hops_toward_carrier(daemon_factory, sipp_background, tmp_path, style) -> None:
    """101 is not registered (→ 102), 102 forwards everything outside."""
    res, invite = _carrier_call(daemon_factory, sipp_background, tmp_path, style,
                                **{"101": _fwd(unreachable="102"),
                                   "102": _fwd(unconditional="95551234")})
    assert _forwards(res) == [("101", "102"), ("102", "95551234")]
    assert invite.header_all(style) == TWO_HOPS[style]
    other = "history-info" if style == "diversion" else "diversion"
    assert invite.header(other) is None


def test_history_info_toward_carrier(daemon_factory, sipp_background, tmp_path) -> None:
    res, invite = _carrier_call(daemon_factory, sipp_background, tmp_path, "history-info",
                                **{"101": _fwd(unconditional="95551234")})
    assert _forwards(res) == [("101", "95551234")]
    # RFC 7044: index 1 is the diverted target; 1.1 the Request-URI sent, retargeted to
    # another user (mp=1) for an unconditional forward (RFC 4458 cause=302)
    value = "<sip:101@127.0.0.1>;index=1, <sip:5551234@127.0.0.1;cause=302>;index=1.1;mp=1"
    assert invite.header_all("history-info") == [value]
    assert f"\r\nHistory-Info: {value}\r\n".encode() in invite.raw
    assert invite.header("diversion") is None
