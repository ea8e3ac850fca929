"""`sip.workers`: worker processes on the SIP UDP port registering real phones (their
calls: test_worker_calls.py).

The daemon's socket is number 0 of the port's group and worker 1's is number 1; a
phone's source port decides which one it reaches (appliance/sip/reuseport.py), so
each test picks its phones' ports to land on the process it wants."""

from __future__ import annotations

import json
import os
import re
import signal

import pytest

from appliance.sip.reuseport import socket_for
from tests.peers import rawsip
from tests.peers.ports import free_port
from tests.peers.procs import wait_until
from tests.peers.sipp import scenario, start_sipp

pytestmark = pytest.mark.integration

DAEMON, WORKER = 0, 1


def port_on(process: int, sockets: int = 2) -> int:
    """A free UDP port whose datagrams the kernel steers to socket `process` of the
    port's `sockets` (the daemon and `sockets - 1` workers)."""
    while True:
        port = free_port("udp")
        if socket_for("127.0.0.1", port, sockets) == process:
            return port


def expiries(resp: rawsip.SipMessage) -> dict[str, int]:
    """contact -> expires of the bindings a 200 to REGISTER lists."""
    found = (re.fullmatch(r"<([^>]+)>;expires=(\d+)", v) for v in resp.header_all("contact"))
    return {m.group(1): int(m.group(2)) for m in found if m}


def contacts(resp: rawsip.SipMessage) -> set[str]:
    return set(expiries(resp))


@pytest.fixture
def box(daemon_factory):
    d = daemon_factory(workers=1)
    d.wait_log("worker 1 appliance.workers: serving REGISTER")
    return d


def test_phones_on_either_process_share_one_location(box) -> None:
    w_port, d_port = port_on(WORKER), port_on(DAEMON)
    on_worker = f"sip:101@127.0.0.1:{w_port}"
    on_daemon = f"sip:101@127.0.0.1:{d_port}"
    with rawsip.SipClient("udp", ("127.0.0.1", box.port), local_port=w_port) as a, \
         rawsip.SipClient("udp", ("127.0.0.1", box.port), local_port=d_port) as b:
        first = rawsip.register(a, user="101", password=box.passwords["101"],
                                domain="127.0.0.1", algorithm="MD5")
        assert first.status == 200, first.transcript()
        assert contacts(first.final) == {on_worker}
        box.wait_log(f"INFO  worker 1 appliance.registrar: extension 101 registered {on_worker}")

        # The daemon answers the second phone and lists the worker's binding too (§10.3
        # step 8): the worker's change reached it.
        second = rawsip.register(b, user="101", password=box.passwords["101"],
                                 domain="127.0.0.1", algorithm="MD5")
        assert second.status == 200, second.transcript()
        assert contacts(second.final) == {on_worker, on_daemon}
        box.wait_log(f"INFO  appliance.registrar: extension 101 registered {on_daemon}")

        # ...and the worker learned the daemon's binding in turn.
        again = rawsip.register(a, user="101", password=box.passwords["101"],
                                domain="127.0.0.1", algorithm="MD5", expires=600)
        assert again.status == 200, again.transcript()
        assert contacts(again.final) == {on_worker, on_daemon}
        assert 590 <= expiries(again.final)[on_worker] <= 600

        # A refresh reaches the other process within REFRESH_SYNC (0.5 s): the daemon's
        # next 200 shows the worker's binding with its new expiry, not the first 3600.
        def daemon_sees() -> int:
            res = rawsip.register(b, user="101", password=box.passwords["101"],
                                  domain="127.0.0.1", algorithm="MD5")
            assert res.status == 200, res.transcript()
            return expiries(res.final)[on_worker]
        wait_until(lambda: 590 <= daemon_sees() <= 600, 5, what="the refresh on the daemon")

        # The daemon saves what the worker registered, with the refreshed expiry.
        def saved() -> dict[str, float]:
            try:
                data = json.loads((box.data / "registrations.json").read_text())
            except (OSError, ValueError):
                return {}
            return {b["contact"]: b["expires_at"] for b in data["bindings"].get("101", [])}
        wait_until(lambda: set(saved()) == {on_worker, on_daemon}, 5, what="saved bindings")

        # Unregistering through the worker removes the binding everywhere.
        gone = rawsip.register(a, user="101", password=box.passwords["101"],
                               domain="127.0.0.1", algorithm="MD5", expires=0)
        assert gone.status == 200, gone.transcript()
        assert contacts(gone.final) == {on_daemon}
        last = rawsip.register(b, user="101", password=box.passwords["101"],
                               domain="127.0.0.1", algorithm="MD5")
        assert contacts(last.final) == {on_daemon}


def test_a_call_between_phones_the_worker_serves(box, tmp_path) -> None:
    """Caller and callee on ports whose REGISTERs and INVITEs the worker takes: it
    registered the callee; the box relays the audio of extension calls (the factory
    setting), which only the daemon does, so the worker hands the INVITE on unparsed
    and the daemon, which knows the binding, runs the call."""
    with rawsip.SipClient("udp", ("127.0.0.1", box.port), local_port=port_on(WORKER)) as phone:
        res = rawsip.register(phone, user="101", password=box.passwords["101"],
                              domain="127.0.0.1", algorithm="MD5")
        assert res.status == 200, res.transcript()
        box.wait_log("INFO  worker 1 appliance.registrar: extension 101 registered")
        caller = start_sipp(scenario("uac_call"), box.remote("udp"), local_port=port_on(WORKER),
                            keys={"user": "100", "password": box.passwords["100"],
                                  "callee": "101", "hold_ms": 200}, workdir=tmp_path / "caller")
        try:
            rawsip.answer_call(phone, "101")
            caller.wait(20).check()
        finally:
            caller.stop()
    box.wait_log("ended: hangup")
    assert "worker 1 appliance.call" not in box.log()  # the worker ran no call


def _register_through_the_worker_again(box, *passwords: str) -> None:
    """Once worker 1 serves a second time: extension 102 registers through it, answered
    401 for each of `passwords` but the last, 200 for that one."""
    wait_until(lambda: box.log().count("worker 1 appliance.workers: serving REGISTER") == 2,
               10, what="worker 1 serving again")
    port = port_on(WORKER)
    with rawsip.SipClient("udp", ("127.0.0.1", box.port), local_port=port) as phone:
        for i, password in enumerate(passwords, 1):
            res = rawsip.register(phone, user="102", password=password,
                                  domain="127.0.0.1", algorithm="MD5")
            assert res.status == (200 if i == len(passwords) else 401), res.transcript()
    box.wait_log(f"INFO  worker 1 appliance.registrar: extension 102 registered "
                 f"sip:102@127.0.0.1:{port}")


def test_a_worker_that_dies_is_started_again(box) -> None:
    pid = int(re.search(r"worker 1 started \(pid (\d+)\)", box.log()).group(1))
    os.kill(pid, signal.SIGKILL)
    box.wait_log("worker 1 exited (-9); starting it again")
    _register_through_the_worker_again(box, box.passwords["102"])


def test_what_a_worker_gets_that_is_not_a_register_goes_to_the_daemon(box) -> None:
    """The kernel reads four bytes: "REGISTRATION" reaches the worker, which hands it on
    unparsed; the daemon answers it (RFC 3261 §8.2.1: an unknown method) from the port."""
    port = port_on(WORKER)
    with rawsip.SipClient("udp", ("127.0.0.1", box.port), local_port=port) as phone:
        req = rawsip.build_request("REGISTRATION", "sip:127.0.0.1", client=phone,
                                   from_uri="sip:101@127.0.0.1", to_uri="sip:101@127.0.0.1",
                                   call_id="odd-method@test", cseq=1, from_tag="odd")
        phone.send(req)
        resp = phone.recv(5)
    assert resp is not None and resp.status == 501, resp
    assert resp.header("call-id") == "odd-method@test"
    # The daemon parsed it (its SIP trace has it), the worker did not.
    received = f"<<< udp 127.0.0.1:{port}\nREGISTRATION sip:127.0.0.1 SIP/2.0"
    assert f"INFO  appliance.sip.trace: {received}" in box.log()
    assert f"worker 1 appliance.sip.trace: {received}" not in box.log()


def test_a_register_a_worker_took_is_not_taken_again_by_the_daemon(box) -> None:
    """Each process counts the uses of its own nonces (RFC 2617 §3.2.2): the exact
    REGISTER the worker accepted, replayed from a port that reaches the daemon, gets a
    fresh challenge (stale=true), not a 200."""
    with rawsip.SipClient("udp", ("127.0.0.1", box.port), local_port=port_on(WORKER)) as a, \
         rawsip.SipClient("udp", ("127.0.0.1", box.port), local_port=port_on(DAEMON)) as b:
        first = rawsip.register(a, user="101", password=box.passwords["101"],
                                domain="127.0.0.1", algorithm="MD5")
        assert first.status == 200, first.transcript()
        box.wait_log("INFO  worker 1 appliance.registrar: extension 101 registered")
        accepted = first.exchanges[-1][0]
        assert b"\r\nAuthorization: Digest " in accepted
        b.send(accepted)
        replayed = b.recv_final(cseq_method="REGISTER", timeout=5)
    assert replayed is not None and replayed.status == 401, replayed
    assert re.search(r"\bstale=true\b", replayed.header("www-authenticate"), re.I)


def test_a_worker_hands_the_daemon_credentials_over_the_daemon_s_nonce(box) -> None:
    """A phone answers a challenge the daemon sent (here: to another port of the same
    phone) from a port that reaches the worker: the worker cannot count that nonce's
    uses, so it hands the REGISTER to the daemon, which can, and which registers it."""
    with rawsip.SipClient("udp", ("127.0.0.1", box.port), local_port=port_on(WORKER)) as a, \
         rawsip.SipClient("udp", ("127.0.0.1", box.port), local_port=port_on(DAEMON)) as b:
        probe = rawsip.register(b, user="101", password=box.passwords["101"],
                                domain="127.0.0.1", algorithm="MD5", expires=0)
        challenge = rawsip.pick_challenge(probe.challenge, "MD5")
        auth = rawsip.authorization(challenge, username="101", password=box.passwords["101"],
                                    method="REGISTER", uri="sip:127.0.0.1",
                                    nc=2)  # the probe used 1
        contact = f"sip:101@127.0.0.1:{a.local[1]}"
        a.send(rawsip.build_request(
            "REGISTER", "sip:127.0.0.1", client=a, from_uri="sip:101@127.0.0.1",
            to_uri="sip:101@127.0.0.1", call_id="foreign-nonce@test", cseq=1,
            from_tag="fn", contact=f"<{contact}>",
            extra_headers=[f"Authorization: {auth}", "Expires: 600"]))
        ok = a.recv_final(cseq_method="REGISTER", call_id="foreign-nonce@test", timeout=5)
    assert ok is not None and ok.status == 200, ok
    assert contact in contacts(ok)
    box.wait_log(f"INFO  appliance.registrar: extension 101 registered {contact}")
    assert f"worker 1 appliance.registrar: extension 101 registered {contact}" not in box.log()
