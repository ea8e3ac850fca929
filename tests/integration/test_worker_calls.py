"""`sip.workers`: calls between extensions run in the worker that gets the caller's INVITE.

Raw UDP phones on ports the kernel steers to the process a test wants
(appliance/sip/reuseport.py); what is checked is on the wire: which port each message
comes from and names (the worker's own port in Via and Contact), that the ACK of a
failed INVITE reaches the worker through the daemon (no retransmitted final), BYE on
SIGTERM, a config.yaml change during a call."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
import yaml

from tests.integration.test_workers import DAEMON, WORKER, port_on
from tests.peers import rawsip
from tests.peers.procs import wait_until

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"


@pytest.fixture
def box(daemon_factory):
    """Audio not relayed between extensions: the calls a worker runs."""
    d = daemon_factory(workers=1, media={"relay_extension_calls": False})
    d.wait_log("worker 1 appliance.workers: serving REGISTER and calls")
    d.own_port = int(re.search(r"worker 1 appliance.workers: serving REGISTER and calls on "
                               r"udp \S+ \(dialogs on port (\d+)\)", d.log()).group(1))
    return d


def phone(box, process: int) -> rawsip.SipClient:
    return rawsip.SipClient("udp", (HOST, box.port), local_port=port_on(process))


def registered(box, client: rawsip.SipClient, user: str) -> None:
    res = rawsip.register(client, user=user, password=box.passwords[user], domain=HOST,
                          algorithm="MD5")
    assert res.status == 200, res.transcript()


class Caller:
    """A raw phone's INVITE through the box: 407, ACK, INVITE with credentials."""

    def __init__(self, box, client: rawsip.SipClient, user: str, callee: str) -> None:
        self.box, self.client, self.user = box, client, user
        self.uri = f"sip:{callee}@{HOST}:{box.port}"
        self.to_uri = f"sip:{callee}@{HOST}"
        self.call_id = f"{rawsip.new_tag()}@worker-test"
        self.tag = rawsip.new_tag()
        self.cseq = 1

    def request(self, method: str, uri: str, *, cseq: int, to_tag: str | None = None,
                branch: str | None = None, extra: list[str] | None = None,
                body: bytes = b"") -> bytes:
        return rawsip.build_request(
            method, uri, client=self.client, from_uri=f"sip:{self.user}@{HOST}",
            to_uri=self.to_uri, call_id=self.call_id, cseq=cseq, from_tag=self.tag,
            to_tag=to_tag, extra_headers=extra or [], body=body,
            content_type="application/sdp" if body else None, branch=branch,
            contact=f"<sip:{self.user}@{HOST}:{self.client.local[1]}>")

    def invite(self) -> str:
        """Send the INVITE with credentials; its branch (for CANCEL)."""
        branch = rawsip.new_branch()
        self.client.send(self.request("INVITE", self.uri, cseq=1, branch=branch,
                                      body=rawsip.PHONE_SDP))
        challenge = self.client.recv_final(cseq_method="INVITE", call_id=self.call_id)
        assert challenge is not None and challenge.status == 407, challenge
        self.client.send(self.ack_for(challenge, branch))
        auth = rawsip.authorization(rawsip.pick_challenge(challenge, "MD5"),
                                    username=self.user, password=self.box.passwords[self.user],
                                    method="INVITE", uri=self.uri)
        self.cseq = 2
        branch = rawsip.new_branch()
        self.client.send(self.request("INVITE", self.uri, cseq=2, branch=branch,
                                      extra=[f"Proxy-Authorization: {auth}"],
                                      body=rawsip.PHONE_SDP))
        return branch

    def ack_for(self, final: rawsip.SipMessage, branch: str) -> bytes:
        """ACK of a non-2xx final: same branch, to the Request-URI (§17.1.1.3)."""
        return self.request("ACK", self.uri, cseq=final_cseq(final),
                            to_tag=tag_of(final.header("to")), branch=branch)


def final_cseq(msg: rawsip.SipMessage) -> int:
    return int(msg.header("cseq").split()[0])


def remote_target(msg: rawsip.SipMessage) -> tuple[str, int]:
    m = re.search(r"<sip:[^@>]*@?([\d.]+):(\d+)", msg.header("contact"))
    return m.group(1), int(m.group(2))


def via_port(msg: rawsip.SipMessage) -> int:
    return int(re.search(r"SIP/2.0/UDP [\d.]+:(\d+)", msg.header("via")).group(1))


def tag_of(value: str) -> str:
    return re.search(r";tag=([^;]+)", value).group(1)


def ring(box, a: rawsip.SipClient, b: rawsip.SipClient) -> tuple[Caller, rawsip.SipMessage,
                                                                   str]:
    """101 registers from `b`; 100 calls it from `a`: (the caller, the INVITE `b` got, the
    branch of the caller's INVITE)."""
    registered(box, b, "101")
    caller = Caller(box, a, "100", "101")
    branch = caller.invite()
    invite = b.recv(5)
    assert invite is not None and invite.method == "INVITE", invite
    return caller, invite, branch


def answer(a: rawsip.SipClient, b: rawsip.SipClient, caller: Caller,
           invite: rawsip.SipMessage, to: tuple[str, int]) -> rawsip.SipMessage:
    """`b` answers 200 with SDP, sent to `to`; the 200 the caller gets."""
    b.send_to(rawsip.reply(invite, 200, "OK", to_tag="b1", body=rawsip.PHONE_SDP,
                           contact=f"<sip:101@{HOST}:{b.local[1]}>"), to)
    ok = a.recv_final(cseq_method="INVITE", call_id=caller.call_id)
    assert ok is not None and ok.status == 200, ok
    return ok


def callee_bye(b: rawsip.SipClient, invite: rawsip.SipMessage, port: int) -> bytes:
    """The callee's BYE in the dialog of `invite`, to the Contact port `port`."""
    return (f"BYE sip:100@{HOST}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {HOST}:{b.local[1]};branch={rawsip.new_branch()};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: {invite.header('to')};tag=b1\r\n"
            f"To: {invite.header('from')}\r\nCall-ID: {invite.call_id}\r\n"
            f"CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n").encode()


def test_a_call_the_worker_runs_uses_its_own_port(box) -> None:
    with phone(box, WORKER) as a, phone(box, DAEMON) as b:
        # 101 registers through the daemon: the worker knows it from the daemon
        caller, invite, _ = ring(box, a, b)
        own = box.own_port
        assert own != box.port
        # The worker's INVITE: from its own port, naming it in Via and Contact.
        assert invite.source == (HOST, own)
        assert via_port(invite) == own and remote_target(invite) == (HOST, own)
        b.send_to(rawsip.reply(invite, 180, "Ringing", to_tag="b1"), (HOST, own))
        ok = answer(a, b, caller, invite, (HOST, own))
        # Answers to the caller's INVITE leave from the port it was sent to (§18.2.2);
        # the dialog's remote target is the worker's own port.
        assert ok.source == (HOST, box.port)
        assert remote_target(ok) == (HOST, own)
        to_tag = tag_of(ok.header("to"))
        target = f"sip:101@{HOST}:{own}"
        a.send_to(caller.request("ACK", target, cseq=2, to_tag=to_tag), (HOST, own))
        ack = b.recv(5)
        assert ack is not None and ack.method == "ACK" and ack.source == (HOST, own), ack

        a.send_to(caller.request("BYE", target, cseq=3, to_tag=to_tag), (HOST, own))
        bye = b.recv(5)
        assert bye is not None and bye.method == "BYE" and bye.source == (HOST, own), bye
        b.send_to(rawsip.reply(bye, 200, "OK", to_tag="b1"), (HOST, own))
        done = a.recv_final(cseq_method="BYE", call_id=caller.call_id)
        assert done is not None and done.status == 200 and done.source == (HOST, own), done
    box.wait_log("worker 1 appliance.call: call 100 → 101 ended: hangup")
    log = box.log()
    assert "worker 1 appliance.call: call 100 → 101 answered" in log
    assert "INFO  appliance.call: call 100" not in log  # the daemon ran no part of it


def test_phones_using_the_box_as_outbound_proxy_reach_the_worker_s_dialog(box) -> None:
    """ACK and BYE sent to the shared port with the worker's port in the Request-URI (a
    phone set up with an outbound proxy; SIPp does the same): the kernel gives the
    caller's ACK to the worker (its sender); the callee's BYE, from a phone the kernel
    gives to the daemon, goes to the worker by way of the daemon. Each answer comes
    from the port its request went to."""
    with phone(box, WORKER) as a, phone(box, DAEMON) as b:
        caller, invite, _ = ring(box, a, b)
        # a response goes where the top Via says (§18.2.2): the worker's own port
        ok = answer(a, b, caller, invite, (HOST, box.own_port))
        to_tag = tag_of(ok.header("to"))
        # the caller's ACK, to the shared port
        a.send(caller.request("ACK", f"sip:101@{HOST}:{box.own_port}", cseq=2, to_tag=to_tag))
        ack = b.recv(5)
        assert ack is not None and ack.method == "ACK" and ack.source == (HOST, box.own_port)

        # the callee hangs up, through the shared port
        bye = callee_bye(b, invite, box.own_port)
        assert tag_of(invite.header("from")) in bye.decode()
        b.send(bye)
        relayed = a.recv(5)
        assert relayed is not None and relayed.method == "BYE", relayed
        assert relayed.source == (HOST, box.own_port)
        a.send_to(rawsip.reply(relayed, 200, "OK", to_tag=to_tag), (HOST, box.own_port))
        done = b.recv_final(cseq_method="BYE", call_id=invite.call_id)
        assert done is not None and done.status == 200 and done.source == (HOST, box.port)
    box.wait_log("worker 1 appliance.call: call 100 → 101 ended: hangup")
    log = box.log()
    assert "INFO  appliance.call: call 100" not in log
    # the daemon received the callee's BYE and handed it on unparsed (its trace has
    # nothing of it; the worker's has it)
    bye_in = rf"appliance.sip.trace: <<< udp 127.0.0.1:{b.local[1]}\nBYE "
    assert re.search("worker 1 " + bye_in, log)
    assert not re.search("INFO  " + bye_in, log)


@pytest.fixture
def two_workers(daemon_factory):
    box = daemon_factory(workers=2, media={"relay_extension_calls": False})
    box.wait_log("worker 1 appliance.workers: serving REGISTER and calls")
    box.wait_log("worker 2 appliance.workers: serving REGISTER and calls")
    return box


def port_of(process: int) -> int:
    """A free UDP port the kernel steers to socket `process` of three (daemon, 2 workers)."""
    return port_on(process, 3)


def bindings_seen_by(box, client: rawsip.SipClient, user: str) -> set[str]:
    """The contacts of `user` that the process `client` is steered to lists in its 200 to
    a REGISTER without Contact (RFC 3261 §10.2.3)."""
    res = rawsip.register(client, user=user, password=box.passwords[user], domain=HOST,
                          algorithm="MD5", contact="", expires=None)
    assert res.status == 200, res.transcript()
    return {re.sub(r"^<|>.*$", "", v) for v in res.final.header_all("contact")}


def test_a_request_for_one_worker_s_dialog_that_reaches_another(two_workers) -> None:
    """Two workers: the callee's phone belongs to one, the call to the other. The
    callee's BYE to the shared port reaches the first, which does not know the dialog
    and hands it to the daemon, which hands it to the call's worker (its port is in
    the Request-URI)."""
    box = two_workers
    with rawsip.SipClient("udp", (HOST, box.port), local_port=port_of(1)) as a, \
         rawsip.SipClient("udp", (HOST, box.port), local_port=port_of(2)) as b:
        registered(box, b, "101")
        # the caller's worker has the callee's binding (through the daemon): it runs the call
        contact = f"sip:101@{HOST}:{b.local[1]}"
        wait_until(lambda: contact in bindings_seen_by(box, a, "101"), 5,
                   what="the binding on the caller's worker")
        caller, invite, _ = ring(box, a, b)
        # sockets 1 and 2 are the workers in the order they joined the port: the caller's
        # worker is the one whose own port sent this
        own = invite.source[1]
        assert own != box.port and f"(dialogs on port {own})" in box.log()
        ok = answer(a, b, caller, invite, (HOST, own))
        to_tag = tag_of(ok.header("to"))
        a.send_to(caller.request("ACK", f"sip:101@{HOST}:{own}", cseq=2, to_tag=to_tag),
                  (HOST, own))
        assert b.recv(5).method == "ACK"
        bye = callee_bye(b, invite, own)
        b.send(bye)  # to the shared port
        relayed = a.recv(5)
        assert relayed is not None and relayed.method == "BYE" and relayed.source == (HOST, own)
        a.send_to(rawsip.reply(relayed, 200, "OK", to_tag=to_tag), (HOST, own))
        done = b.recv_final(cseq_method="BYE", call_id=invite.call_id)
        assert done is not None and done.status == 200, done
    box.wait_log("appliance.call: call 100 → 101 ended: hangup")
    bye_in = rf"appliance.sip.trace: <<< udp 127.0.0.1:{b.local[1]}\nBYE "
    # each process writes its log lines at the end of its loop's turn, after handing the
    # BYE on: worker 2's line may come after worker 1's
    wait_until(lambda: re.search("worker 2 " + bye_in, box.log()) and re.search(
        "worker 1 " + bye_in, box.log()), 5, what="the BYE in both workers' traces")
    assert not re.search("INFO  " + bye_in, box.log())  # the daemon only handed it on


def test_a_phone_that_just_registered_through_another_worker_is_rung(two_workers) -> None:
    """The callee registers through one worker while the daemon is stopped (SIGSTOP), so
    the binding cannot reach the caller's worker. That worker, knowing no binding, must
    not answer 480: it hands the INVITE to the daemon, which the callee's worker told of
    the binding before its 200 went out; once the daemon runs again it rings the phone
    from the shared port."""
    box = two_workers
    with rawsip.SipClient("udp", (HOST, box.port), local_port=port_of(1)) as a, \
         rawsip.SipClient("udp", (HOST, box.port), local_port=port_of(2)) as b:
        os.kill(box.proc.pid, signal.SIGSTOP)
        try:
            registered(box, b, "101")
            caller = Caller(box, a, "100", "101")
            branch = caller.invite()
            early = a.recv_final(cseq_method="INVITE", call_id=caller.call_id, timeout=1)
            assert early is None, early  # without the daemon, no answer: not a 480
        finally:
            os.kill(box.proc.pid, signal.SIGCONT)
        invite = b.recv(5)
        assert invite is not None and invite.method == "INVITE", invite
        assert invite.source == (HOST, box.port)  # the daemon's call
        b.send(rawsip.reply(invite, 486, "Busy Here", to_tag="b1"))
        busy = a.recv_final(cseq_method="INVITE", call_id=caller.call_id)
        assert busy is not None and busy.status == 486, busy
        a.send(caller.ack_for(busy, branch))
    box.wait_log("appliance.call: call 100 → 101 ended: busy")
    assert not re.search(r"worker \d appliance.call: call 100 → 101", box.log())


def test_the_ack_of_a_failed_call_reaches_the_worker(box) -> None:
    """Busy callee: the worker answers 486; the caller's ACK goes to the shared port and
    the kernel gives it to the worker (the same sender as the INVITE), whose transaction
    then stops resending the 486 (Timer G, from T1 = 0.5 s on)."""
    with phone(box, WORKER) as a, phone(box, WORKER) as b:
        caller, invite, branch = ring(box, a, b)
        b.send_to(rawsip.reply(invite, 486, "Busy Here", to_tag="b1"), (HOST, box.own_port))
        busy = a.recv_final(cseq_method="INVITE", call_id=caller.call_id)
        assert busy is not None and busy.status == 486, busy
        a.send(caller.ack_for(busy, branch))
        later = a.recv_all(2.5)
        assert not [m for m in later if m.status == 486], [m.start_line for m in later]
    box.wait_log("worker 1 appliance.call: call 100 → 101 ended: busy")
    ack = rf"appliance.sip.trace: <<< udp 127.0.0.1:{a.local[1]}\nACK sip:101@"
    assert re.search("worker 1 " + ack, box.log())
    assert not re.search("INFO  " + ack, box.log())  # not by way of the daemon


def test_a_cancelled_call_in_the_worker(box) -> None:
    with phone(box, WORKER) as a, phone(box, WORKER) as b:
        caller, invite, branch = ring(box, a, b)
        b.send_to(rawsip.reply(invite, 180, "Ringing", to_tag="b1"), (HOST, box.own_port))
        ringing = a.recv(5)
        while ringing is not None and ringing.status != 180:
            ringing = a.recv(5)
        assert ringing is not None, "no 180"
        # CANCEL: same branch, to the shared port (§9.1); the kernel gives it to the worker
        a.send(caller.request("CANCEL", caller.uri, cseq=2, branch=branch))
        cancel = b.recv(5)
        assert cancel is not None and cancel.method == "CANCEL", cancel
        assert cancel.source == (HOST, box.own_port)
        b.send_to(rawsip.reply(cancel, 200, "OK", to_tag="b1"), (HOST, box.own_port))
        b.send_to(rawsip.reply(invite, 487, "Request Terminated", to_tag="b1"),
                  (HOST, box.own_port))
        got = a.recv_all(1.0)
        assert [m.status for m in got if m.cseq_method == "CANCEL"] == [200]
        terminated = [m for m in got if m.cseq_method == "INVITE" and m.status == 487]
        assert terminated, [m.start_line for m in got]
        a.send(caller.ack_for(terminated[0], branch))
        assert not [m for m in a.recv_all(2.5) if m.status == 487]
    box.wait_log("worker 1 appliance.call: call 100 → 101 cancelled by caller")


def test_calls_a_worker_does_not_run_go_to_the_daemon(daemon_factory) -> None:
    """Forwarding configured for the callee: the daemon runs the call (its Contact is
    the shared port), though the INVITE came to the worker."""
    box = daemon_factory(workers=1, media={"relay_extension_calls": False},
                         extensions={"101": {"forward": {"busy": "102"}}})
    box.wait_log("worker 1 appliance.workers: serving REGISTER and calls")
    with phone(box, WORKER) as a, phone(box, WORKER) as b:
        caller, invite, _ = ring(box, a, b)
        assert invite.source == (HOST, box.port) and via_port(invite) == box.port
        ok = answer(a, b, caller, invite, (HOST, box.port))
        assert remote_target(ok) == (HOST, box.port)
        to_tag = tag_of(ok.header("to"))
        a.send(caller.request("ACK", f"sip:101@{HOST}:{box.port}", cseq=2, to_tag=to_tag))
        assert b.recv(5).method == "ACK"
        a.send(caller.request("BYE", f"sip:101@{HOST}:{box.port}", cseq=3, to_tag=to_tag))
        bye = b.recv(5)
        assert bye is not None and bye.method == "BYE", bye
        b.send(rawsip.reply(bye, 200, "OK", to_tag="b1"))
    box.wait_log("INFO  appliance.call: call 100 → 101 ended: hangup")
    assert "worker 1 appliance.call" not in box.log()


def answered_call(box, a: rawsip.SipClient, b: rawsip.SipClient) -> tuple[Caller, str]:
    """100 calls 101 through the worker; 101 answers; the caller ACKs. (caller, To tag)"""
    caller, invite, _ = ring(box, a, b)
    to_tag = tag_of(answer(a, b, caller, invite, (HOST, box.own_port)).header("to"))
    a.send_to(caller.request("ACK", f"sip:101@{HOST}:{box.own_port}", cseq=2, to_tag=to_tag),
              (HOST, box.own_port))
    assert b.recv(5).method == "ACK"
    return caller, to_tag


def test_sigterm_ends_a_worker_s_call_with_bye_to_both(box) -> None:
    with phone(box, WORKER) as a, phone(box, WORKER) as b:
        answered_call(box, a, b)
        box.proc.signal(signal.SIGTERM)
        for p in (a, b):
            bye = p.recv(5)
            assert bye is not None and bye.method == "BYE", bye
            assert bye.source == (HOST, box.own_port)
            p.send_to(rawsip.reply(bye, 200, "OK", to_tag="x"), (HOST, box.own_port))
        assert box.proc.wait(15) == 0
    assert "worker 1 appliance.workers: ending 1 call(s)" in box.log()


def test_a_changed_config_yaml_leaves_a_worker_s_call_up(box) -> None:
    """The worker reads config.yaml again in place (no restart): the call goes on, and
    the new password holds in the worker at once."""
    with phone(box, WORKER) as a, phone(box, WORKER) as b:
        caller, to_tag = answered_call(box, a, b)
        path = box.data / "config.yaml"
        cfg = yaml.safe_load(path.read_text())
        cfg["extensions"]["102"]["password"] = "a-new-secret-102"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        box.wait_log("worker 1 appliance.workers: config.yaml read again")
        with phone(box, WORKER) as c:
            old = rawsip.register(c, user="102", password=box.passwords["102"], domain=HOST,
                                  algorithm="MD5")
            assert old.status == 401, old.transcript()
            new = rawsip.register(c, user="102", password="a-new-secret-102", domain=HOST,
                                  algorithm="MD5")
            assert new.status == 200, new.transcript()
        box.wait_log("INFO  worker 1 appliance.registrar: extension 102 registered")
        time.sleep(0.2)
        a.send_to(caller.request("BYE", f"sip:101@{HOST}:{box.own_port}", cseq=3,
                                 to_tag=to_tag), (HOST, box.own_port))
        bye = b.recv(5)
        assert bye is not None and bye.method == "BYE", bye
        b.send_to(rawsip.reply(bye, 200, "OK", to_tag="b1"), (HOST, box.own_port))
        done = a.recv_final(cseq_method="BYE", call_id=caller.call_id)
        assert done is not None and done.status == 200, done
    assert box.log().count("worker 1 started") == 1  # not restarted


def test_a_redirect_the_worker_cannot_follow_reaches_the_caller(daemon_factory) -> None:
    """The callee answers 302 towards 102, who forwards when busy: a worker rings only
    extensions without forwarding, so the caller gets the 302 and its Contact (RFC 3261
    §8.1.3.4: the caller may follow it); the daemon would have followed it."""
    box = daemon_factory(workers=1, media={"relay_extension_calls": False},
                         extensions={"102": {"forward": {"busy": "103"}}})
    box.wait_log("worker 1 appliance.workers: serving REGISTER and calls")
    with phone(box, WORKER) as a, phone(box, WORKER) as b:
        caller, invite, branch = ring(box, a, b)
        own = invite.source
        assert own[1] != box.port  # the worker runs it
        moved = rawsip.reply(invite, 302, "Moved Temporarily", to_tag="b1",
                             contact=f"<sip:102@{HOST}>")
        b.send_to(moved, own)
        final = a.recv_final(cseq_method="INVITE", call_id=caller.call_id)
        assert final is not None and final.status == 302, final
        assert final.header("contact") == f"<sip:102@{HOST}>"
        a.send(caller.ack_for(final, branch))
    box.wait_log("worker 1 appliance.call: call 100 → 101 ended")
    assert "forwards to 102" not in box.log()
