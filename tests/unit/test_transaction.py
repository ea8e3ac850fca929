"""RFC 3261 §17 transactions (with RFC 6026), driven by a fake clock.

Each scenario runs every timer to the end and checks that nothing is left behind
(`len(layer) == 0`, no pending timer).
"""

from __future__ import annotations

import math

import pytest

from appliance.sip.message import Request, Response, parse_message
from appliance.sip.transaction import (
    MAGIC_COOKIE,
    RELEASED,
    AckTimeout,
    ClientTransaction,
    Peer,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    Timers,
    TransactionLayer,
    TransactionTimeout,
    TransportError,
    make_cancel,
    new_branch,
)

PHONE = "192.0.2.10"
UDP = Peer("udp", PHONE, 5060)
TCP = Peer("tcp", PHONE, 40000, conn=7)
OTHER = Peer("udp", "198.51.100.20", 5060)


# -- message builders (literal bytes through parse_message) ---------------------------

def req(method: str = "REGISTER", *, branch: str | None = "z9hG4bKclient1",
        transport: str = "UDP", host: str = PHONE, port: int | None = 5060, cseq: int = 1,
        cseq_method: str | None = None, to_tag: str | None = None,
        uri: str = "sip:pbx.example.com", via_params: str = "", extra: str = "",
        call_id: str = "call-1@192.0.2.10") -> Request:
    sent_by = host if port is None else f"{host}:{port}"
    br = f";branch={branch}" if branch else ""
    to = "<sip:100@pbx.example.com>" + (f";tag={to_tag}" if to_tag else "")
    text = (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {sent_by}{br}{via_params}\r\n"
        "Max-Forwards: 70\r\n"
        "From: \"Alice\" <sip:100@pbx.example.com>;tag=fromtag\r\n"
        f"To: {to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {cseq_method or method}\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    )
    msg = parse_message(text.encode())
    assert isinstance(msg, Request)
    return msg


def invite(**kw) -> Request:
    kw.setdefault("uri", "sip:200@pbx.example.com")
    kw.setdefault("branch", "z9hG4bKinv1")
    return req("INVITE", **kw)


def resp(request: Request, status: int, *, to_tag: str | None = None,
         cseq_method: str | None = None, branch: str | None = None) -> Response:
    """A response to `request` as its UAS would send it (literal text)."""
    h = request.headers
    via = h.get_all("via")[0]
    if branch is not None:
        via = via.replace(request.top_via.branch or "", branch)
    to = h.get("to") or ""
    if to_tag and ";tag=" not in to:
        to += f";tag={to_tag}"
    num, method = request.cseq
    text = (
        f"SIP/2.0 {status} Whatever\r\n"
        f"Via: {via}\r\n"
        f"From: {h.get('from')}\r\n"
        f"To: {to}\r\n"
        f"Call-ID: {h.get('call-id')}\r\n"
        f"CSeq: {num} {cseq_method or method}\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    msg = parse_message(text.encode())
    assert isinstance(msg, Response)
    return msg


def ack_for(request: Request, response: Response, *, branch: str | None = None) -> Request:
    """An ACK as the UAC sends it: same branch for a non-2xx, a new one for 2xx."""
    via = request.headers.get_all("via")[0]
    if branch is not None:
        via = via.replace(request.top_via.branch or "", branch)
    text = (
        f"ACK {request.uri} SIP/2.0\r\n"
        f"Via: {via}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: {request.headers.get('from')}\r\n"
        f"To: {response.headers.get('to')}\r\n"
        f"Call-ID: {request.call_id}\r\n"
        f"CSeq: {request.cseq[0]} ACK\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    msg = parse_message(text.encode())
    assert isinstance(msg, Request)
    return msg


# -- the fake clock ---------------------------------------------------------------------

class Harness:
    """Drives a TransactionLayer with a fake clock and records what comes out: its
    clock follows get_timer, or wake_by as the endpoint's does (`drive`, every test
    runs both)."""

    drive = "get_timer"

    def __init__(self, timers: Timers | None = None) -> None:
        self.layer = TransactionLayer(timers)
        self.now = 0.0
        self.sent: list[tuple[float, Peer, bytes]] = []
        self.events: list[tuple[float, object]] = []

    def pump(self) -> None:
        for peer, data in self.layer.datagrams_to_send():
            self.sent.append((self.now, peer, data))
        while (ev := self.layer.next_event()) is not None:
            self.events.append((self.now, ev))
        check_wake_by(self.layer)

    def at(self, t: float) -> Harness:
        """Run every timer due up to `t`, then set the clock to `t`."""
        assert t >= self.now
        for _ in range(100_000):
            if self.drive == "wake_by":
                deadline = self.layer.wake_by()
            else:
                deadline = self.layer.get_timer()
            if deadline is None or deadline > t:
                break
            self.now = max(self.now, deadline)
            self.layer.handle_timer(self.now)
            self.pump()
        else:  # pragma: no cover
            raise AssertionError("timers never settle")
        self.now = t
        return self

    def receive(self, msg: Request | Response, source: Peer = UDP) -> list[object]:
        n = len(self.events)
        self.layer.receive(msg, source, self.now)
        self.pump()
        return [ev for _, ev in self.events[n:]]

    def send(self, request: Request, peer: Peer = UDP) -> ClientTransaction:
        txn = self.layer.send_request(request, peer, self.now)
        self.pump()
        return txn

    def respond(self, txn: ServerTransaction, response: Response) -> None:
        self.layer.respond(txn, response, self.now)
        self.pump()

    def finish(self) -> None:
        """Run all timers; nothing may remain."""
        self.at(math.inf)
        assert len(self.layer) == 0
        assert self.layer.get_timer() is None
        assert not self.layer._acks and not self.layer._by_peer

    def times(self, start: str) -> list[float]:
        """When messages whose first line starts with `start` were sent."""
        return [t for t, _, data in self.sent if data.startswith(start.encode())]

    def sent_msgs(self, start: str) -> list[Request | Response]:
        return [parse_message(d) for _, _, d in self.sent if d.startswith(start.encode())]

    def event_log(self) -> list[tuple[float, str]]:
        return [(t, type(ev).__name__) for t, ev in self.events]


@pytest.fixture(autouse=True, params=["get_timer", "wake_by"])
def drive(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Harness, "drive", request.param)


def check_wake_by(layer: TransactionLayer) -> None:
    """What the endpoint arms its clock for is never later than the next timer (None:
    there is none); it may be a time when there is none left."""
    wake, exact = layer.wake_by(), layer.get_timer()
    assert exact is None or (wake is not None and wake <= exact), (wake, exact)


def new_server_txn(h: Harness, request: Request, source: Peer = UDP) -> ServerTransaction:
    events = h.receive(request, source)
    assert len(events) == 1 and isinstance(events[0], RequestReceived)
    txn = events[0].txn
    assert txn is not None and events[0].request is request and events[0].source == source
    return txn


# == §17.1.2 non-INVITE client ===========================================================

def test_non_invite_client_udp_retransmits_with_timer_e_and_times_out_with_f():
    h = Harness()
    txn = h.send(req())
    assert txn.state == "trying" and not txn.is_invite and len(h.layer) == 1
    h.finish()
    assert h.times("REGISTER") == [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert h.event_log() == [(32.0, "TransactionTimeout")]
    assert h.events[0][1].txn is txn and txn.state == "terminated"
    assert all(peer == UDP for _, peer, _ in h.sent)
    # every retransmission is the very same bytes object (serialized once)
    assert len({id(d) for _, _, d in h.sent}) == 1


def test_ended_transactions_let_go_of_user_data_once_their_events_are_taken():
    h = Harness()
    txn = h.send(req())
    owner = object()
    txn.user_data = owner
    seen = []
    h.at(31.9)
    assert txn.user_data is owner
    for _ in range(100):   # Timer F: the TU reads user_data from the timeout event...
        deadline = h.layer.get_timer()
        if deadline is None:
            break
        h.layer.handle_timer(deadline)
        while (ev := h.layer.next_event()) is not None:
            seen.append((type(ev).__name__, ev.txn.user_data))
    assert seen == [("TransactionTimeout", owner)]
    assert txn.state == "terminated" and txn.user_data is None  # ...then it is let go


def test_64_t1_timers_fire_in_deadline_order_even_if_now_goes_back():
    h = Harness()
    first = h.layer.send_request(req(branch="z9hG4bKlate"), UDP, 10.0)
    second = h.layer.send_request(req(branch="z9hG4bKearly"), UDP, 5.0)   # a clock step back
    fired = []
    while (deadline := h.layer.get_timer()) is not None:
        h.layer.handle_timer(deadline)
        while (ev := h.layer.next_event()) is not None:
            fired.append((deadline, ev.txn))
    assert fired == [(37.0, second), (42.0, first)]   # Timer F = 64*T1 after each


def test_non_invite_client_timer_e_is_t2_in_proceeding():
    h = Harness()
    r = req()
    txn = h.send(r)
    h.at(0.2)
    (ev,) = h.receive(resp(r, 100))
    assert isinstance(ev, ResponseReceived) and ev.txn is txn and txn.state == "proceeding"
    assert h.receive(resp(r, 180)) and txn.state == "proceeding"   # provisionals go up
    h.finish()
    assert h.times("REGISTER") == [0, 0.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5]
    assert h.event_log()[-1] == (32.0, "TransactionTimeout")


def test_non_invite_client_final_then_timer_k_t4_absorbs_retransmissions():
    h = Harness()
    r = req()
    txn = h.send(r)
    h.at(1.0)
    ok = resp(r, 200, to_tag="uas")
    (ev,) = h.receive(ok, UDP)
    assert ev == ResponseReceived(txn, ok, UDP) and txn.state == "completed"
    h.at(3.0)
    assert h.receive(resp(r, 200, to_tag="uas")) == []   # absorbed in Completed
    assert h.receive(resp(r, 100)) == []
    h.at(5.999)
    assert len(h.layer) == 1 and txn.state == "completed"
    h.at(6.0)   # Timer K = T4 after the final
    assert len(h.layer) == 0 and txn.state == "terminated"
    assert h.times("REGISTER") == [0, 0.5]
    late = resp(r, 200, to_tag="uas")
    assert h.receive(late) == [ResponseReceived(None, late, UDP)]   # stray now
    h.finish()


def test_non_invite_client_tcp_no_retransmissions_timer_f_and_k_zero():
    h = Harness()
    h.send(req(transport="TCP"), TCP)
    h.finish()
    assert h.times("REGISTER") == [0]
    assert h.event_log() == [(32.0, "TransactionTimeout")]

    h = Harness()
    r = req(transport="TCP", branch="z9hG4bKtcp2")
    txn = h.send(r, TCP)
    h.at(2.0)
    h.receive(resp(r, 200), TCP)
    assert txn.state == "terminated" and len(h.layer) == 0   # Timer K = 0
    h.finish()
    assert h.times("REGISTER") == [0]


# == §17.1.1 INVITE client ===============================================================

def test_invite_client_udp_timer_a_doubles_and_timer_b_times_out():
    h = Harness()
    txn = h.send(invite())
    assert txn.is_invite and txn.state == "calling"
    h.finish()
    assert h.times("INVITE") == [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert h.event_log() == [(32.0, "TransactionTimeout")]
    assert txn.state == "terminated"


def test_invite_client_tcp_no_timer_a():
    h = Harness()
    h.send(invite(transport="TCP"), TCP)
    h.finish()
    assert h.times("INVITE") == [0]
    assert h.event_log() == [(32.0, "TransactionTimeout")]


def test_invite_client_provisional_stops_a_and_b_then_non_2xx_acked_by_layer():
    h = Harness()
    r = invite(extra="Route: <sip:proxy1.example.com;lr>, <sip:proxy2.example.com;lr>\r\n"
                     "Route: <sip:proxy3.example.com;lr>\r\n"
                     "Contact: <sip:100@192.0.2.10>\r\nSubject: hi\r\n")
    txn = h.send(r)
    h.at(0.7)
    h.receive(resp(r, 180, to_tag="callee"))
    assert txn.state == "proceeding"
    assert h.layer.get_timer() is None   # no Timer A/B in Proceeding (§17.1.1.2)
    h.at(100.0)
    busy = resp(r, 486, to_tag="callee")
    (ev,) = h.receive(busy)
    assert ev == ResponseReceived(txn, busy, UDP) and txn.state == "completed"
    assert h.times("INVITE") == [0, 0.5]
    assert h.times("ACK") == [100.0]
    (ack,) = h.sent_msgs("ACK")
    assert isinstance(ack, Request)
    assert ack.uri == r.uri
    assert ack.headers.get_all("via") == r.headers.get_all("via")[:1]
    assert ack.top_via.branch == "z9hG4bKinv1"
    assert ack.headers.get("from") == r.headers.get("from")
    assert ack.to.tag == "callee" and ack.headers.get("to") == busy.headers.get("to")
    assert ack.call_id == r.call_id
    assert ack.cseq == (1, "ACK")
    assert ack.headers.get_all("route") == r.headers.get_all("route")
    assert len(ack.headers.get_all("route")) == 3
    assert ack.headers.get("max-forwards") == "70"
    assert "contact" not in ack.headers and "subject" not in ack.headers
    assert ack.body == b""
    assert h.sent[-1][1] == UDP
    # a retransmitted final: the ACK is sent again, the TU hears nothing
    h.at(101.0)
    assert h.receive(resp(r, 486, to_tag="callee")) == []
    assert h.times("ACK") == [100.0, 101.0]
    h.at(131.999)
    assert len(h.layer) == 1
    h.at(132.0)   # Timer D = 32 s on UDP
    assert len(h.layer) == 0 and txn.state == "terminated"
    h.finish()
    assert h.event_log() == [(0.7, "ResponseReceived"), (100.0, "ResponseReceived")]


def test_invite_client_non_2xx_in_calling_and_timer_d_zero_on_tcp():
    h = Harness()
    r = invite(transport="TCP")
    txn = h.send(r, TCP)
    h.at(1.0)
    h.receive(resp(r, 603, to_tag="x"), TCP)
    assert txn.state == "terminated" and len(h.layer) == 0   # Timer D = 0
    assert h.times("ACK") == [1.0]
    assert h.sent[-1][1] == TCP
    h.finish()


def test_invite_client_2xx_accepted_timer_m_passes_further_2xx():
    h = Harness()
    r = invite()
    txn = h.send(r)
    h.at(0.6)
    ok = resp(r, 200, to_tag="a")
    (ev,) = h.receive(ok)
    assert ev.txn is txn and txn.state == "accepted"   # RFC 6026
    assert h.times("ACK") == []   # the ACK for 2xx is the TU's
    h.at(10.0)
    ok2 = resp(r, 200, to_tag="a")
    assert h.receive(ok2) == [ResponseReceived(txn, ok2, UDP)]
    other_fork = resp(r, 200, to_tag="b")
    assert h.receive(other_fork) == [ResponseReceived(txn, other_fork, UDP)]
    assert h.receive(resp(r, 180, to_tag="a")) == []
    assert h.receive(resp(r, 486, to_tag="a")) == []
    h.at(32.599)
    assert txn.state == "accepted"
    h.at(32.6)   # Timer M = 64*T1 after the first 2xx
    assert txn.state == "terminated" and len(h.layer) == 0
    late = resp(r, 200, to_tag="a")
    assert h.receive(late) == [ResponseReceived(None, late, UDP)]
    assert h.times("INVITE") == [0, 0.5]
    h.finish()


def test_invite_client_gives_up_64t1_after_cancel():
    """§9.1: no final response 64*T1 after the CANCEL: the INVITE transaction ends."""
    h = Harness()
    r = invite()
    txn = h.send(r)
    h.at(1.0)
    h.receive(resp(r, 180, to_tag="t"))
    h.at(20.0)
    cancel = make_cancel(r)
    ctxn = h.send(cancel)
    assert ctxn is not txn and not ctxn.is_invite
    h.at(20.1)
    h.receive(resp(cancel, 200, to_tag="t"))
    assert ctxn.state == "completed"
    h.finish()
    assert (52.0, "TransactionTimeout") in h.event_log()
    assert [ev.txn for _, ev in h.events if isinstance(ev, TransactionTimeout)] == [txn]


def test_cancel_sent_while_calling_guard_starts_in_proceeding():
    h = Harness()
    r = invite()
    txn = h.send(r)
    h.at(0.1)
    h.send(make_cancel(r))
    h.at(0.2)
    h.receive(resp(r, 100))   # Timer B is stopped, the CANCEL guard takes over
    h.at(10.0)
    h.receive(resp(r, 487, to_tag="z"))   # the usual outcome
    assert txn.state == "completed" and h.times("ACK") == [10.0]
    h.finish()
    # only the CANCEL's own Timer F fires (no 200 to it arrived)
    assert [type(ev.txn).__name__ + ev.txn.method for _, ev in h.events
            if isinstance(ev, TransactionTimeout)] == ["ClientTransactionCANCEL"]


# == response matching (§17.1.3) ===========================================================

def test_response_matches_branch_and_cseq_method():
    h = Harness()
    r = invite()
    txn = h.send(r)
    h.at(0.1)
    wrong_method = resp(r, 200, cseq_method="CANCEL")
    assert h.receive(wrong_method) == [ResponseReceived(None, wrong_method, UDP)]
    wrong_branch = resp(r, 180, branch="z9hG4bKother")
    assert h.receive(wrong_branch) == [ResponseReceived(None, wrong_branch, UDP)]
    assert txn.state == "calling"
    right = resp(r, 180)
    assert h.receive(right) == [ResponseReceived(txn, right, UDP)]
    h.at(1.0)
    h.receive(resp(r, 404, to_tag="q"))
    h.finish()


def test_cancel_and_invite_client_transactions_are_separate():
    h = Harness()
    r = invite()
    itx = h.send(r)
    h.at(0.1)
    h.receive(resp(r, 180, to_tag="t"))
    c = make_cancel(r)
    ctx = h.send(c)
    assert len(h.layer) == 2
    (ev,) = h.receive(resp(c, 200, to_tag="t"))
    assert ev.txn is ctx and itx.state == "proceeding"
    (ev,) = h.receive(resp(r, 487, to_tag="t"))
    assert ev.txn is itx
    h.finish()


# == §17.2.2 non-INVITE server ===============================================================

def test_non_invite_server_udp_states_and_timer_j():
    h = Harness()
    r = req()
    txn = new_server_txn(h, r)
    assert txn.state == "trying" and txn.source == UDP and txn.peer == UDP
    assert txn.request is r and txn.cancels is None and txn.last_response is None
    h.at(0.1)
    assert h.receive(req()) == [] and h.sent == []   # absorbed in Trying, nothing to re-send
    h.at(0.2)
    h.respond(txn, resp(r, 100))
    assert txn.state == "proceeding"
    h.at(0.3)
    assert h.receive(req()) == []
    assert h.times("SIP/2.0 100") == [0.2, 0.3]   # last provisional re-sent
    h.at(0.5)
    ok = resp(r, 200, to_tag="pbx")
    h.respond(txn, ok)
    # Nothing of the TU's hangs on it: Completed keeps only the bytes it resends.
    assert txn.state == "completed" and txn.last_response is None and txn.request is RELEASED
    h.at(1.0)
    assert h.receive(req()) == []
    assert h.times("SIP/2.0 200") == [0.5, 1.0]   # final re-sent
    assert h.sent[-1][2] is h.sent[-2][2]   # the same bytes, not re-serialized
    h.respond(txn, resp(r, 500))   # a second final is discarded
    assert h.times("SIP/2.0 500") == []
    h.at(32.499)
    assert len(h.layer) == 1
    h.at(32.5)   # Timer J = 64*T1
    assert txn.state == "terminated" and len(h.layer) == 0
    h.respond(txn, resp(r, 200))   # after termination: discarded, no error
    assert h.times("SIP/2.0 200") == [0.5, 1.0]
    h.finish()
    assert all(peer == UDP for _, peer, _ in h.sent)


def test_completed_non_invite_keeps_messages_the_tu_holds_state_for():
    h = Harness()
    r = req()
    txn = new_server_txn(h, r)
    txn.user_data = marker = object()   # e.g. a relayed BYE: the call still points here
    ok = resp(r, 200, to_tag="pbx")
    h.respond(txn, ok)
    assert txn.state == "completed" and txn.request is r and txn.last_response is ok
    assert txn.user_data is marker
    h.at(32.5)
    h.finish()


def test_non_invite_server_tcp_timer_j_zero():
    h = Harness()
    r = req(transport="TCP", port=None)
    txn = new_server_txn(h, r, TCP)
    assert txn.peer == TCP
    h.respond(txn, resp(r, 200, to_tag="x"))
    assert txn.state == "terminated" and len(h.layer) == 0
    assert h.sent == [(0.0, TCP, h.sent[0][2])]
    h.finish()


def test_new_transaction_after_termination_is_a_new_request():
    h = Harness()
    r = req()
    txn = new_server_txn(h, r)
    h.respond(txn, resp(r, 200))
    h.at(40.0)
    assert len(h.layer) == 0
    txn2 = new_server_txn(h, req())
    assert txn2 is not txn and txn2.id != txn.id
    h.respond(txn2, resp(r, 200))
    h.finish()


# == §17.2.1 INVITE server ======================================================================

def test_invite_server_sends_100_trying_after_200ms():
    h = Harness()
    r = invite(extra="Timestamp: 54.2\r\nContact: <sip:100@192.0.2.10>\r\n",
               via_params=";rport=5060;received=192.0.2.10")
    txn = new_server_txn(h, r)
    assert txn.is_invite and txn.state == "proceeding"
    h.at(0.199)
    assert h.sent == []
    h.at(0.2)
    (trying,) = h.sent_msgs("SIP/2.0 100")
    assert h.times("SIP/2.0 100") == [0.2]
    assert isinstance(trying, Response) and trying.status == 100
    for name in ("via", "from", "to", "call-id", "cseq", "timestamp"):
        assert trying.headers.get(name) == r.headers.get(name), name
    assert "contact" not in trying.headers
    assert txn.last_response is not None and txn.last_response.status == 100
    h.at(1.0)
    h.receive(invite(extra="Timestamp: 54.2\r\n", via_params=";rport=5060;received=192.0.2.10"))
    assert h.times("SIP/2.0 100") == [0.2, 1.0]   # re-sent for the retransmission
    h.respond(txn, resp(r, 480, to_tag="u"))
    h.receive(ack_for(r, txn.last_response))
    h.finish()


def test_invite_server_no_100_if_tu_answers_in_time():
    h = Harness()
    r = invite()
    txn = new_server_txn(h, r)
    h.at(0.1)
    h.respond(txn, resp(r, 180, to_tag="u"))
    h.at(0.5)
    assert h.times("SIP/2.0 100") == [] and h.times("SIP/2.0 180") == [0.1]
    assert h.receive(invite()) == []   # retransmission: the last provisional again
    assert h.times("SIP/2.0 180") == [0.1, 0.5]
    h.respond(txn, resp(r, 183, to_tag="u"))
    h.at(0.7)
    h.receive(invite())
    assert h.times("SIP/2.0 183") == [0.5, 0.7]
    h.respond(txn, resp(r, 404, to_tag="u"))
    h.receive(ack_for(r, txn.last_response))
    h.finish()

    h = Harness()
    txn = new_server_txn(h, r)
    h.respond(txn, resp(r, 500, to_tag="u"))   # a final at once: no 100 either
    h.at(1.0)
    assert h.times("SIP/2.0 100") == []
    h.receive(ack_for(r, txn.last_response))
    h.finish()


def test_invite_server_non_2xx_timer_g_and_h_without_ack():
    h = Harness()
    r = invite()
    txn = new_server_txn(h, r)
    h.at(1.0)
    busy = resp(r, 486, to_tag="u")
    h.respond(txn, busy)
    assert txn.state == "completed"
    h.at(3.0)
    assert h.receive(invite()) == []   # INVITE retransmission: the final again, no event
    h.finish()
    g = [1.0, 1.5, 2.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5, 32.5]
    assert h.times("SIP/2.0 486") == sorted(g + [3.0])
    assert h.event_log() == [(0.0, "RequestReceived"), (33.0, "TransactionTimeout")]
    assert h.events[-1][1].txn is txn and txn.state == "terminated"


def test_invite_server_ack_confirms_then_timer_i_t4():
    h = Harness()
    r = invite()
    txn = new_server_txn(h, r)
    h.at(1.0)
    h.respond(txn, resp(r, 486, to_tag="u"))
    h.at(2.0)
    ack = ack_for(r, txn.last_response)
    assert h.layer.find_server(ack) is txn
    assert h.receive(ack) == []   # the ACK for a non-2xx is absorbed
    assert txn.state == "confirmed"
    h.at(4.0)
    assert h.receive(ack_for(r, txn.last_response)) == []   # absorbed in Confirmed
    assert h.receive(invite()) == []
    h.at(6.999)
    assert len(h.layer) == 1
    h.at(7.0)   # Timer I = T4 after the ACK
    assert txn.state == "terminated" and len(h.layer) == 0
    h.finish()
    assert h.times("SIP/2.0 486") == [1.0, 1.5]   # Timer G stopped by the ACK
    assert h.event_log() == [(0.0, "RequestReceived")]


def test_invite_server_tcp_no_timer_g_timer_i_zero_and_h():
    h = Harness()
    r = invite(transport="TCP")
    txn = new_server_txn(h, r, TCP)
    h.respond(txn, resp(r, 486, to_tag="u"))
    h.at(5.0)
    h.receive(ack_for(r, txn.last_response), TCP)
    assert txn.state == "terminated" and len(h.layer) == 0   # Timer I = 0
    h.finish()
    assert h.times("SIP/2.0 486") == [0.0]

    h = Harness()
    txn = new_server_txn(h, r, TCP)
    h.respond(txn, resp(r, 486, to_tag="u"))
    h.finish()
    assert h.times("SIP/2.0 486") == [0.0]
    assert h.event_log()[-1] == (32.0, "TransactionTimeout")   # Timer H = 64*T1


def test_invite_server_2xx_retransmitted_until_ack_timeout():
    h = Harness()
    r = invite()
    txn = new_server_txn(h, r)
    h.respond(txn, resp(r, 200, to_tag="uas"))
    assert txn.state == "accepted"
    h.finish()
    assert h.times("SIP/2.0 200") == [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5,
                                      31.5]
    assert h.event_log() == [(0.0, "RequestReceived"), (32.0, "AckTimeout")]
    assert h.events[-1][1] == AckTimeout(txn) and txn.state == "terminated"


def test_invite_server_2xx_ack_stops_retransmission_timer_l():
    h = Harness()
    r = invite()
    txn = new_server_txn(h, r)
    h.at(0.1)
    h.respond(txn, resp(r, 180, to_tag="uas"))
    h.at(1.0)
    ok = resp(r, 200, to_tag="uas")
    h.respond(txn, ok)
    h.at(2.7)
    ack = ack_for(r, ok, branch="z9hG4bKack2xx")   # new branch: its own "transaction"
    assert h.receive(ack) == [RequestReceived(None, ack, UDP)]
    h.at(3.0)
    assert h.receive(invite()) == []   # INVITE retransmission absorbed in Accepted
    h.at(5.0)
    ack2 = ack_for(r, ok, branch="z9hG4bKack2xx")
    assert h.receive(ack2) == [RequestReceived(None, ack2, UDP)]   # passed up again
    h.at(32.999)
    assert txn.state == "accepted"
    h.at(33.0)   # Timer L = 64*T1 after the 2xx
    assert txn.state == "terminated" and len(h.layer) == 0
    h.finish()
    assert h.times("SIP/2.0 200") == [1.0, 1.5, 2.5]
    assert "AckTimeout" not in [name for _, name in h.event_log()]


def test_2xx_ack_matched_by_call_id_cseq_and_to_tag():
    h = Harness()
    r = invite()
    txn = new_server_txn(h, r)
    ok = resp(r, 200, to_tag="uas")
    h.respond(txn, ok)
    h.at(1.0)
    wrong_tag = ack_for(r, resp(r, 200, to_tag="other"), branch="z9hG4bKa1")
    assert h.receive(wrong_tag) == [RequestReceived(None, wrong_tag, UDP)]
    h.at(10.0)
    assert h.times("SIP/2.0 200") == [0, 0.5, 1.5, 3.5, 7.5]   # still retransmitting
    h.receive(ack_for(r, ok, branch="z9hG4bKa2"))
    h.finish()
    assert h.times("SIP/2.0 200")[-1] == 7.5
    assert "AckTimeout" not in [name for _, name in h.event_log()]


def test_invite_server_2xx_on_tcp_sent_once_ack_timeout_still_fires():
    h = Harness()
    r = invite(transport="TCP")
    txn = new_server_txn(h, r, TCP)
    h.respond(txn, resp(r, 200, to_tag="uas"))
    h.finish()
    assert h.times("SIP/2.0 200") == [0.0]
    assert h.event_log() == [(0.0, "RequestReceived"), (32.0, "AckTimeout")]

    h = Harness()
    txn = new_server_txn(h, r, TCP)
    ok = resp(r, 200, to_tag="uas")
    h.respond(txn, ok)
    h.at(1.0)
    h.receive(ack_for(r, ok, branch="z9hG4bKtcpack"), TCP)
    h.at(31.9)
    assert len(h.layer) == 1
    h.finish()
    assert h.event_log() == [(0.0, "RequestReceived"), (1.0, "RequestReceived")]


def test_accepted_sends_further_2xx_from_tu_ignores_non_2xx():
    h = Harness()
    r = invite()
    txn = new_server_txn(h, r)
    h.respond(txn, resp(r, 200, to_tag="uas"))
    h.at(0.2)
    h.respond(txn, resp(r, 486, to_tag="uas"))
    assert h.times("SIP/2.0 486") == []
    h.respond(txn, resp(r, 202, to_tag="uas"))
    assert h.times("SIP/2.0 202") == [0.2]
    h.at(0.6)
    assert h.times("SIP/2.0 202") == [0.2, 0.5]   # the latest 2xx is the one retransmitted
    h.receive(ack_for(r, txn.last_response, branch="z9hG4bKk"))
    h.finish()


# == CANCEL (§9.2) ==================================================================================

def test_cancel_finds_the_invite_transaction():
    h = Harness()
    r = invite()
    itx = new_server_txn(h, r)
    h.respond(itx, resp(r, 180, to_tag="uas"))
    h.at(2.0)
    cancel = make_cancel(r)
    assert h.layer.find_server(cancel) is itx
    ctx = new_server_txn(h, cancel)
    assert ctx is not itx and not ctx.is_invite and ctx.method == "CANCEL"
    assert ctx.cancels is itx and ctx.state == "trying"
    assert len(h.layer) == 2
    h.respond(ctx, resp(cancel, 200, to_tag="uas"))
    h.at(2.1)
    assert h.receive(make_cancel(r)) == []   # retransmitted CANCEL: 200 re-sent
    assert h.times("SIP/2.0 200") == [2.0, 2.1]
    h.respond(itx, resp(r, 487, to_tag="uas"))
    h.at(2.5)
    h.receive(ack_for(r, itx.last_response))
    assert itx.state == "confirmed"
    h.finish()
    assert ctx.cancels is None   # the reference is dropped on termination


def test_cancel_without_invite_has_no_target():
    h = Harness()
    cancel = make_cancel(invite(branch="z9hG4bKnothere"))
    ctx = new_server_txn(h, cancel)
    assert ctx.cancels is None
    h.respond(ctx, resp(cancel, 481))
    h.finish()


def test_make_cancel_headers():
    r = invite(extra="Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n"
                     "Contact: <sip:100@192.0.2.10>\r\nContent-Type: application/sdp\r\n",
               cseq=42, via_params=";rport")
    r.headers.add("via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKlower")
    r.invalidate()
    c = make_cancel(r)
    data = parse_message(c.to_bytes())
    assert isinstance(data, Request) and data.method == "CANCEL" and data.uri == r.uri
    assert data.headers.get_all("via") == r.headers.get_all("via")[:1]
    assert data.cseq == (42, "CANCEL")
    for name in ("from", "to", "call-id"):
        assert data.headers.get(name) == r.headers.get(name)
    assert data.headers.get_all("route") == r.headers.get_all("route")
    assert data.headers.get("max-forwards") == "70"
    assert "contact" not in data.headers and "content-type" not in data.headers


# == matching (§17.2.3) ===============================================================================

def test_server_matching_uses_branch_sent_by_and_method():
    h = Harness()
    r = req()
    a = new_server_txn(h, r)
    b = new_server_txn(h, req(host="192.0.2.99"), Peer("udp", "192.0.2.99", 5060))
    c = new_server_txn(h, req("OPTIONS"))
    d = new_server_txn(h, req(port=5062), Peer("udp", PHONE, 5062))
    assert len({id(a), id(b), id(c), id(d)}) == 4 and len(h.layer) == 4
    assert h.receive(req(host="192.0.2.10".upper())) == []   # host compare is case-blind
    assert h.layer.find_server(req()) is a
    assert h.layer.find_server(req("OPTIONS")) is c
    for t in (a, b, c, d):
        h.respond(t, resp(t.request, 200))
    h.finish()


def test_rfc2543_fallback_matching_with_ack():
    h = Harness()
    r = invite(branch=None, uri="sip:200@pbx.example.com;user=phone")
    txn = new_server_txn(h, r)
    h.at(0.5)
    assert h.receive(invite(branch=None, uri="sip:200@pbx.example.com;user=phone")) == []
    assert h.times("SIP/2.0 100") == [0.2, 0.5]
    other = invite(branch=None, uri="sip:200@pbx.example.com;user=phone", cseq=2)
    txn2 = new_server_txn(h, other)   # another CSeq: another transaction
    assert txn2 is not txn
    busy = resp(r, 486, to_tag="uas")
    h.respond(txn, busy)
    h.respond(txn2, resp(other, 486, to_tag="uas2"))
    h.at(1.0)
    wrong = ack_for(r, resp(r, 486, to_tag="nottheone"))
    assert h.layer.find_server(wrong) is None
    assert h.receive(wrong) == [RequestReceived(None, wrong, UDP)]
    assert txn.state == "completed"
    ack = ack_for(r, busy)
    assert h.layer.find_server(ack) is txn
    assert h.receive(ack) == [] and txn.state == "confirmed"
    cancel = make_cancel(other)
    assert h.layer.find_server(cancel) is txn2
    ctx = new_server_txn(h, cancel)
    assert ctx.cancels is txn2
    h.respond(ctx, resp(cancel, 200))
    h.receive(ack_for(other, txn2.last_response))
    h.finish()


def test_rfc2543_reinvite_with_to_tag_ack_matches():
    h = Harness()
    r = invite(branch="1234", to_tag="dlg")   # a branch without the magic cookie
    txn = new_server_txn(h, r)
    h.respond(txn, resp(r, 488))
    ack = ack_for(r, txn.last_response, branch="1234")
    assert h.receive(ack) == [] and txn.state == "confirmed"
    h.finish()


def test_rfc2543_non_invite_retransmission_absorbed():
    h = Harness()
    r = req("OPTIONS", branch=None)
    txn = new_server_txn(h, r)
    h.respond(txn, resp(r, 200, to_tag="x"))
    h.at(0.4)
    assert h.receive(req("OPTIONS", branch=None)) == []
    assert h.times("SIP/2.0 200") == [0.0, 0.4]
    txn2 = new_server_txn(h, req("OPTIONS", branch=None, call_id="another@x"))
    assert txn2 is not txn and len(h.layer) == 2
    h.respond(txn2, resp(txn2.request, 200, to_tag="y"))
    h.finish()


def test_stray_ack_goes_to_tu_and_creates_nothing():
    h = Harness()
    a = ack_for(invite(), resp(invite(), 200, to_tag="t"), branch="z9hG4bKstray")
    assert h.receive(a) == [RequestReceived(None, a, UDP)]
    assert len(h.layer) == 0 and h.sent == []
    h.finish()


# == transport errors (§17.1.4, §17.2.4) ================================================================

def test_transport_error_fails_every_transaction_of_that_peer():
    h = Harness()
    c = h.send(req(transport="TCP", branch="z9hG4bKc1"), Peer("tcp", PHONE, 40000))
    s = new_server_txn(h, invite(transport="TCP"), TCP)
    u = h.send(req(branch="z9hG4bKu1"), OTHER)
    other_conn = new_server_txn(h, req(transport="TCP", branch="z9hG4bKo"),
                                Peer("tcp", PHONE, 40000, conn=8))
    h.layer.transport_error(Peer("tcp", PHONE, 40000, conn=7), 1.0)
    h.pump()
    errs = [ev for _, ev in h.events if isinstance(ev, TransportError)]
    assert errs == [TransportError(c), TransportError(s)]
    assert c.state == s.state == "terminated"
    assert u.state == "trying" and other_conn.state == "trying" and len(h.layer) == 2
    h.layer.transport_error(Peer("tcp", "203.0.113.1", 5060), 1.0)   # unknown: nothing
    h.pump()
    h.respond(s, resp(s.request, 200))   # the TU answering a dead transaction: ignored
    h.layer.transport_error(Peer("tcp", PHONE, 40000), 1.0)   # any connection
    h.layer.transport_error(OTHER, 1.0)
    h.pump()
    assert [type(ev).__name__ for _, ev in h.events].count("TransportError") == 4
    assert len(h.layer) == 0
    h.finish()


def test_transport_error_is_quiet_for_completed_clients():
    h = Harness()
    r = req()
    txn = h.send(r)
    h.receive(resp(r, 200))
    h.layer.transport_error(UDP, 0.1)
    h.pump()
    assert txn.state == "terminated" and len(h.layer) == 0
    assert h.event_log() == [(0.0, "ResponseReceived")]
    h.finish()


# == response_peer (§18.2.2, RFC 3581) =================================================================

@pytest.mark.parametrize(("via_params", "port", "source", "expected"), [
    # reliable: back on the same connection, whatever the Via says
    (";rport", 5060, TCP, TCP),
    (";maddr=239.1.1.1", 5060, Peer("tls", PHONE, 40001, conn=3),
     Peer("tls", PHONE, 40001, conn=3)),
    # rport: the source address and port
    (";rport", 5060, Peer("udp", "198.51.100.7", 40000), Peer("udp", "198.51.100.7", 40000)),
    (";rport=40000;received=198.51.100.7", 5060, Peer("udp", "198.51.100.7", 40000),
     Peer("udp", "198.51.100.7", 40000)),
    # no rport: received (the source address) and the sent-by port, default 5060
    (";received=198.51.100.7", 5070, Peer("udp", "198.51.100.7", 40000),
     Peer("udp", "198.51.100.7", 5070)),
    ("", None, Peer("udp", "198.51.100.7", 40000), Peer("udp", "198.51.100.7", 5060)),
    ("", 5060, UDP, UDP),
    # maddr: that address, the sent-by port (RFC 3581 §4: maddr wins over rport)
    (";maddr=239.255.255.1", 5080, UDP, Peer("udp", "239.255.255.1", 5080)),
    (";maddr=239.255.255.1;rport", None, UDP, Peer("udp", "239.255.255.1", 5060)),
    (";maddr=[2001:db8::1]", 5062, UDP, Peer("udp", "2001:db8::1", 5062)),
])
def test_response_peer(via_params, port, source, expected):
    layer = TransactionLayer()
    transport = source.transport.upper()
    r = req(transport=transport, port=port, via_params=via_params)
    got = layer.response_peer(r, source)
    assert got == expected
    assert (got.conn == source.conn) or not source.reliable


def test_server_transaction_responds_to_response_peer():
    h = Harness()
    src = Peer("udp", "198.51.100.7", 40000)
    r = req(port=5070, via_params=";received=198.51.100.7")
    txn = new_server_txn(h, r, src)
    assert txn.source == src and txn.peer == Peer("udp", "198.51.100.7", 5070)
    h.respond(txn, resp(r, 200))
    assert h.sent[0][1] == Peer("udp", "198.51.100.7", 5070)
    h.layer.transport_error(Peer("udp", "198.51.100.7", 5070), 1.0)   # indexed by that peer
    assert len(h.layer) == 0
    h.finish()


# == custom timer values ===================================================================================

def test_custom_timers_non_invite_client_and_timer_k():
    h = Harness(Timers(t1=0.25, t2=1.0, t4=2.0))
    h.send(req())
    h.finish()
    assert h.times("REGISTER") == [0, 0.25, 0.75, 1.75, 2.75, 3.75, 4.75, 5.75, 6.75, 7.75,
                                   8.75, 9.75, 10.75, 11.75, 12.75, 13.75, 14.75, 15.75]
    assert h.event_log() == [(16.0, "TransactionTimeout")]

    h = Harness(Timers(t1=0.25, t2=1.0, t4=2.0))
    r = req()
    txn = h.send(r)
    h.at(0.5)
    h.receive(resp(r, 200))
    h.at(2.49)
    assert txn.state == "completed"
    h.at(2.5)   # Timer K = T4
    assert txn.state == "terminated"
    h.finish()


def test_custom_timers_invite_client_and_timer_d():
    h = Harness(Timers(t1=0.25, t2=1.0, t4=2.0))
    h.send(invite())
    h.finish()
    assert h.times("INVITE") == [0, 0.25, 0.75, 1.75, 3.75, 7.75, 15.75]
    assert h.event_log() == [(16.0, "TransactionTimeout")]

    # Timer D stays at 32 s even if 64*T1 is shorter ...
    h = Harness(Timers(t1=0.25, t2=1.0, t4=2.0))
    r = invite()
    txn = h.send(r)
    h.receive(resp(r, 404, to_tag="t"))
    h.at(31.9)
    assert txn.state == "completed"
    h.at(32.0)
    assert txn.state == "terminated"
    h.finish()
    # ... and follows 64*T1 when that is longer
    h = Harness(Timers(t1=1.0, t2=4.0, t4=5.0))
    txn = h.send(r)
    h.receive(resp(r, 404, to_tag="t"))
    h.at(63.9)
    assert txn.state == "completed"
    h.at(64.0)
    assert txn.state == "terminated"
    h.finish()


def test_custom_timers_server_g_h_i_j_l_m():
    t = Timers(t1=0.25, t2=1.0, t4=2.0)
    h = Harness(t)
    r = invite()
    txn = new_server_txn(h, r)
    h.respond(txn, resp(r, 486, to_tag="u"))
    h.finish()
    assert h.times("SIP/2.0 486") == [0, 0.25, 0.75, 1.75, 2.75, 3.75, 4.75, 5.75, 6.75, 7.75,
                                      8.75, 9.75, 10.75, 11.75, 12.75, 13.75, 14.75, 15.75]
    assert h.event_log()[-1] == (16.0, "TransactionTimeout")   # Timer H

    h = Harness(t)
    txn = new_server_txn(h, r)
    h.respond(txn, resp(r, 486, to_tag="u"))
    h.at(1.0)
    h.receive(ack_for(r, txn.last_response))
    h.at(2.9)
    assert txn.state == "confirmed"
    h.at(3.0)   # Timer I = T4
    assert txn.state == "terminated"
    h.finish()

    h = Harness(t)
    txn = new_server_txn(h, req())
    h.respond(txn, resp(txn.request, 200))
    h.at(15.9)
    assert txn.state == "completed"
    h.at(16.0)   # Timer J = 64*T1
    assert txn.state == "terminated"
    h.finish()

    h = Harness(t)
    txn = new_server_txn(h, r)
    h.respond(txn, resp(r, 200, to_tag="u"))
    h.finish()
    assert h.times("SIP/2.0 200") == [0, 0.25, 0.75, 1.75, 2.75, 3.75, 4.75, 5.75, 6.75, 7.75,
                                      8.75, 9.75, 10.75, 11.75, 12.75, 13.75, 14.75, 15.75]
    assert h.event_log()[-1] == (16.0, "AckTimeout")   # Timer L

    h = Harness(t)
    ctx = h.send(r)
    h.receive(resp(r, 200, to_tag="u"))
    h.at(15.9)
    assert ctx.state == "accepted"
    h.at(16.0)   # Timer M = 64*T1
    assert ctx.state == "terminated"
    h.finish()


def test_invalid_timers_refused():
    with pytest.raises(ValueError):
        TransactionLayer(Timers(t1=0))


# == API edges ===================================================================================================

def test_send_request_refuses_ack_missing_branch_and_duplicates():
    layer = TransactionLayer()
    with pytest.raises(ValueError):
        layer.send_request(req("ACK"), UDP, 0.0)
    with pytest.raises(ValueError):
        layer.send_request(req(branch=None), UDP, 0.0)
    layer.send_request(req(), UDP, 0.0)
    with pytest.raises(ValueError):
        layer.send_request(req(), UDP, 0.0)
    assert len(layer) == 1


def test_send_stateless_and_queues_drain():
    layer = TransactionLayer()
    r = req()
    layer.send_stateless(r, OTHER)
    assert layer.datagrams_to_send() == [(OTHER, r.to_bytes())]
    assert layer.datagrams_to_send() == []
    assert layer.next_event() is None
    assert layer.get_timer() is None and len(layer) == 0


def test_weird_input_is_dropped_never_raised():
    h = Harness()
    no_via = parse_message(b"OPTIONS sip:x SIP/2.0\r\nCSeq: 1 OPTIONS\r\n\r\n")
    bad_via = parse_message(b"OPTIONS sip:x SIP/2.0\r\nVia: garbage\r\nCSeq: 1 OPTIONS\r\n\r\n")
    no_tags = parse_message(b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\n")  # 2543 path
    no_cseq = parse_message(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\n\r\n")
    ack_bad = parse_message(b"ACK sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\n")
    for msg in (no_via, bad_via, no_tags, no_cseq, ack_bad):
        assert h.receive(msg) == []
    assert h.layer.dropped == 5
    assert h.layer.find_server(no_via) is None  # type: ignore[arg-type]
    assert h.sent == [] and len(h.layer) == 0
    h.finish()


def test_new_branch():
    branches = {new_branch() for _ in range(1000)}
    assert len(branches) == 1000
    assert all(b.startswith(MAGIC_COOKIE) and len(b) > len(MAGIC_COOKIE) + 8 for b in branches)


def test_peer_reliability_and_user_data():
    assert not UDP.reliable and TCP.reliable and Peer("tls", "::1", 5061).reliable
    h = Harness()
    txn = h.send(req())
    txn.user_data = {"anything": 1}
    assert txn.user_data == {"anything": 1} and txn.request.method == "REGISTER"
    assert txn.peer == UDP and txn.id > 0
    h.finish()


def test_many_transactions_stay_bounded():
    h = Harness()
    for i in range(500):
        r = req(branch=f"z9hG4bKmany{i}", call_id=f"c{i}")
        txn = new_server_txn(h, r)
        h.respond(txn, resp(r, 200, to_tag="t"))
        c = h.send(req(branch=f"z9hG4bKout{i}", call_id=f"o{i}"), OTHER)
        h.receive(resp(c.request, 200), OTHER)
        h.now += 0.01
    assert len(h.layer) == 1000
    h.finish()
    assert len(h.layer._heap) == 0


def test_a_calls_timers_go_through_no_heap():
    """Every timer a call sets is a fixed delay from now, so it waits in that delay's FIFO
    (O(1)) and the heap stays empty, and each fires when the RFC says."""
    h = Harness()
    r = invite()
    txn = new_server_txn(h, r)                 # 100 Trying after 200 ms
    h.at(0.1)
    ok = resp(r, 200, to_tag="uas")
    h.respond(txn, ok)                         # 2xx resent after T1; Timer L
    out = h.send(invite(branch="z9hG4bKout", call_id="leg-b"), OTHER)   # Timers A and B
    h.receive(resp(out.request, 180, to_tag="b"), OTHER)
    h.receive(resp(out.request, 200, to_tag="b"), OTHER)               # Timer M
    h.at(0.7)
    h.receive(ack_for(r, ok, branch="z9hG4bKack"))
    bye = h.send(req("BYE", branch="z9hG4bKbye", call_id="leg-b", cseq=2, to_tag="b"),
                 OTHER)                        # Timers E and F
    h.at(0.8)
    h.receive(resp(bye.request, 200), OTHER)   # Timer K
    assert h.layer._heap == []
    h.at(32.099)
    assert txn.state == "accepted" and out.state == "accepted"
    h.at(32.1)   # Timer L, 64*T1 after the 2xx: the ACK did not move it (RFC 6026)
    assert txn.state == "terminated" and out.state == "terminated"
    h.finish()
    assert h.layer._heap == [] and not any(h.layer._queues)
    assert h.times("SIP/2.0 200") == [0.1, 0.6]     # once resent, then ACKed
    assert h.times("BYE") == [0.7] and "AckTimeout" not in [n for _, n in h.event_log()]


def test_timers_fire_by_deadline_when_the_clock_goes_back():
    """A timer set from an earlier `now` than its FIFO's last would break the FIFO's
    order: it goes to the heap, and the two still fire by deadline."""
    layer = TransactionLayer()
    a = layer.send_request(req("OPTIONS", branch="z9hG4bKa", call_id="a"), UDP, 10.0)
    b = layer.send_request(req("OPTIONS", branch="z9hG4bKb", call_id="b"), UDP, 5.0)
    assert len(layer._heap) == 2   # b's Timers E and F
    layer.datagrams_to_send()
    fired = []
    while (t := layer.get_timer()) is not None and t < 20:
        layer.handle_timer(t)
        fired += [(t, data.split(b"Call-ID: ")[1][:1]) for _, data in layer.datagrams_to_send()]
    assert fired == [(5.5, b"b"), (6.5, b"b"), (8.5, b"b"), (10.5, b"a"), (11.5, b"a"),
                     (12.5, b"b"), (13.5, b"a"), (16.5, b"b"), (17.5, b"a")]
    layer.handle_timer(37.0)   # Timer F of b (64*T1 after 5.0), not yet a's
    assert b.state == "terminated" and a.state == "trying"
    assert layer.next_event() == TransactionTimeout(b) and layer.next_event() is None
    layer.handle_timer(42.0)
    assert a.state == "terminated" and len(layer) == 0


def test_api_misuse_raises_value_error():
    layer = TransactionLayer()
    bad_via = parse_message(b"OPTIONS sip:x SIP/2.0\r\nVia: garbage\r\nCSeq: 1 OPTIONS\r\n\r\n")
    with pytest.raises(ValueError):
        layer.send_request(bad_via, UDP, 0.0)  # type: ignore[arg-type]
    layer.receive(req(), UDP, 0.0)
    ev = layer.next_event()
    assert isinstance(ev, RequestReceived) and ev.txn is not None
    with pytest.raises(ValueError):
        layer.respond(ev.txn, Response(99), 0.0)
    no_from = parse_message(b"INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
                            b"To: <sip:x>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n")
    with pytest.raises(ValueError):
        make_cancel(no_from)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        make_cancel(parse_message(b"INVITE sip:x SIP/2.0\r\nCSeq: 1 INVITE\r\n\r\n"))  # type: ignore[arg-type]


def test_ack_before_any_final_is_absorbed():
    h = Harness()
    r = invite()
    txn = new_server_txn(h, r)
    stray = ack_for(r, resp(r, 400, to_tag="x"))   # same branch, but nothing was answered
    assert h.receive(stray) == [] and txn.state == "proceeding"
    h.respond(txn, resp(r, 603, to_tag="x"))
    h.receive(ack_for(r, txn.last_response))
    h.finish()


# == release(): the TU is done with a transaction =======================================

def test_release_keeps_what_the_layer_still_needs_and_nothing_more():
    h = Harness()
    r = invite()
    txn = new_server_txn(h, r)
    txn.user_data = owner = object()
    h.layer.release(txn)   # still Proceeding: only the TU's state goes
    assert txn.user_data is None and txn.request is r
    txn.user_data = owner
    ok = resp(r, 200, to_tag="uas")
    h.respond(txn, ok)
    assert txn.state == "accepted"
    h.layer.release(txn)
    assert txn.user_data is None and txn.request is RELEASED and txn.last_response is None
    h.at(0.5)   # the 2xx is still retransmitted (the bytes are kept) until its ACK...
    assert h.times("SIP/2.0 200") == [0.0, 0.5]
    ack = ack_for(r, ok, branch="z9hG4bKack")
    assert h.receive(ack) == [RequestReceived(None, ack, UDP)]   # ...which is still matched
    h.at(5.0)
    assert h.times("SIP/2.0 200") == [0.0, 0.5]
    assert h.event_log().count((32.0, "AckTimeout")) == 0
    h.finish()

    # A client INVITE answered 486: the ACK is resent from bytes after release.
    c = h.send(invite(branch="z9hG4bKout"))
    busy = resp(c.request, 486, to_tag="far")
    h.receive(busy)
    h.layer.release(c)
    assert c.request is RELEASED
    h.receive(busy)
    assert len([d for _, _, d in h.sent if d.startswith(b"ACK")]) == 2
    h.finish()

    # An RFC 2543 INVITE keeps its messages: its ACK is matched by the response's tag.
    old = invite(branch=None)
    t2543 = new_server_txn(h, old)
    busy = resp(old, 486, to_tag="uas")
    h.respond(t2543, busy)
    h.layer.release(t2543)
    assert t2543.request is old and t2543.last_response is busy
    assert h.receive(ack_for(old, busy)) == [] and t2543.state == "confirmed"
    h.finish()


def test_stateless_challenge_leaves_no_transaction_behind():
    """§8.2.7: a stateless UAS answers once, answers a retransmission anew and ignores
    the ACK; nothing is kept, so a flood of unauthenticated requests costs no state."""
    h = Harness()
    r = invite()
    txn = new_server_txn(h, r)
    h.layer.respond_stateless(txn, resp(r, 407, to_tag="stateless"))
    h.pump()
    assert txn.state == "terminated" and len(h.layer) == 0 and h.layer.get_timer() is None
    assert txn.request is RELEASED and txn.last_response is None
    assert h.times("SIP/2.0 407") == [0.0]
    h.at(1.0)
    assert h.times("SIP/2.0 407") == [0.0]   # never retransmitted
    ack = ack_for(r, resp(r, 407, to_tag="stateless"))
    assert h.receive(ack) == [RequestReceived(None, ack, UDP)]   # no transaction takes it
    again = h.receive(invite())               # a retransmitted INVITE is a new request
    assert len(again) == 1 and isinstance(again[0], RequestReceived)
    assert again[0].txn is not txn
    with pytest.raises(ValueError):
        h.layer.respond_stateless(again[0].txn, resp(r, 100))
