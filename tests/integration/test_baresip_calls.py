"""Two real softphones (baresip) register and call each other through the daemon."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("transport", ["udp", "tls"])
@pytest.mark.parametrize("who_hangs_up", ["caller", "callee"])
def test_baresip_call(daemon_factory, baresip_factory, transport, who_hangs_up) -> None:
    # baresip 1.0 refuses a 401 that carries any non-MD5 challenge: the shipped default.
    daemon = daemon_factory(auth_algorithms=["MD5"])
    port = daemon.tls_port if transport == "tls" else daemon.port
    alice = baresip_factory("alice", aor="sip:100@127.0.0.1", password=daemon.passwords["100"],
                            transport=transport, server_port=port)
    bob = baresip_factory("bob", aor="sip:101@127.0.0.1", password=daemon.passwords["101"],
                          transport=transport, server_port=port, auto_answer=True)
    alice.wait_registered(10)
    bob.wait_registered(10)

    alice.dial(f"sip:101@127.0.0.1:{port};transport={transport}")
    alice.wait_established(10)
    bob.wait_established(10)
    daemon.wait_log("answered", 5)

    hanger, other = (alice, bob) if who_hangs_up == "caller" else (bob, alice)
    hanger.hangup()
    hanger.wait_closed(10)
    other.wait_closed(10)  # the daemon relayed the BYE to the other leg
    daemon.wait_log("ended: hangup", 5)
    assert "Traceback" not in daemon.log()


def test_baresip_calls_out_through_a_line(daemon_factory, baresip_factory, sipp_background,
                                          tmp_path) -> None:
    """A real softphone dials 9 + number; the SIPp carrier answers; the call connects."""
    from tests.peers.ports import free_port
    from tests.peers.sipp import scenario

    carrier_port = free_port("both")
    carrier = sipp_background(scenario("carrier_uas"), "127.0.0.1", local_port=carrier_port,
                              max_calls=1, timeout=30, keys={"expires": 3600})
    daemon = daemon_factory(
        auth_algorithms=["MD5"],
        lines={"acme": {"host": "127.0.0.1", "port": carrier_port, "account": "02161234567",
                        "password": "line-secret", "register": False}})
    alice = baresip_factory("alice", aor="sip:100@127.0.0.1", password=daemon.passwords["100"],
                            transport="udp", server_port=daemon.port)
    alice.wait_registered(10)
    alice.dial(f"sip:913800138000@127.0.0.1:{daemon.port}")
    alice.wait_established(10)
    daemon.wait_log("via line acme", 5)
    alice.hangup()
    alice.wait_closed(10)
    res = carrier.wait(15)
    res.check()
    invite = res.received(method="INVITE")[0]
    assert invite.uri == "sip:13800138000@127.0.0.1"
    assert invite.header("from").startswith('"Ext 100" <sip:02161234567@127.0.0.1>')
    assert res.received(method="BYE")
