"""A call between extensions: a back-to-back user agent (RFC 3261 §§12–15, RFC 7092).

The caller's INVITE is answered by the A leg; the callee's registered contacts
are called in parallel on B-leg forks that share one Call-ID and From tag
(§16.7-style best-response choice when all fail). Once a fork answers, the two
dialogs relay in-dialog requests to each other; ACKs for 2xx are relayed
end-to-end so that an offer in the ACK (late offer) reaches the other side.
SDP passes through unchanged.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from ..bus import CallAnswered, CallEnded, CallRinging
from ..sip.dialog import Dialog, new_call_id, new_tag
from ..sip.message import Headers, NameAddr, ParseError, Request, Response, make_response
from ..sip.transaction import ClientTransaction, Peer, ServerTransaction, make_cancel
from ..sip.uri import SipURI, TelURI
from .location import Binding
from .registrar import authenticate

if TYPE_CHECKING:
    from .core import Pbx

log = logging.getLogger("appliance.call")

# Headers carried across the B2BUA with a relayed request or response body.
_BODY_HEADERS = ("content-type", "content-disposition", "content-encoding", "content-language")
_RELAY_HEADERS = ("event", "info-package", "subscription-state", "reason")

_END_REASON = {486: "busy", 600: "busy", 408: "no-answer", 480: "unavailable", 487: "cancelled",
               603: "declined"}


def _copy_body(src: Request | Response, dst: Request | Response) -> None:
    if src.body:
        for name in _BODY_HEADERS:
            v = src.headers.get(name)
            if v is not None:
                dst.headers.set(name, v)
        dst.body = src.body


def next_hop(dialog: Dialog) -> Peer:
    """Where an in-dialog request goes: the first route, else the flow we know (§12.2.1.1)."""
    if dialog.route_set:
        try:
            uri = NameAddr(_strip_angle(dialog.route_set[0])).parsed_uri
        except ParseError:
            return dialog.peer
        if isinstance(uri, SipURI):
            transport = uri.transport or ("tls" if uri.secure else dialog.peer.transport)
            port = uri.port or (5061 if transport == "tls" else 5060)
            return Peer(transport, uri.params.get("maddr") or uri.host_bare, port)
    return dialog.peer


def _strip_angle(route: str) -> str:
    route = route.strip()
    if route.startswith("<"):
        return route[1 : route.find(">")]
    return route.split(";", 1)[0]


class Leg:
    """One established dialog of a call; the PBX routes in-dialog traffic here."""

    __slots__ = ("call", "name", "dialog")

    def __init__(self, call: Call, name: str, dialog: Dialog) -> None:
        self.call = call
        self.name = name
        self.dialog = dialog

    @property
    def peer(self) -> Peer:
        return next_hop(self.dialog)

    def on_request(self, txn: ServerTransaction, req: Request) -> None:
        self.call.on_leg_request(self, txn, req)

    def on_ack(self, req: Request) -> None:
        self.call.on_leg_ack(self, req)

    def on_response(self, txn: ClientTransaction | None, resp: Response) -> None:
        """A 2xx retransmitted after its transaction ended: our ACK was lost (§13.2.2.4)."""
        if 200 <= resp.status < 300:
            self.call.resend_ack(self, resp.cseq[0])


class Fork:
    """One outgoing INVITE to one registered contact of the callee."""

    __slots__ = ("call", "binding", "request", "peer", "txn", "early", "final",
                 "final_response", "cancel_wanted", "cancelled")

    def __init__(self, call: Call, binding: Binding, request: Request, peer: Peer) -> None:
        self.call = call
        self.binding = binding
        self.request = request
        self.peer = peer
        self.txn: ClientTransaction | None = None
        self.early = False
        self.final: int | None = None
        self.final_response: Response | None = None
        self.cancel_wanted = False
        self.cancelled = False

    def on_response(self, txn: ClientTransaction | None, resp: Response) -> None:
        self.call.on_fork_response(self, resp)

    def on_failure(self, txn: ClientTransaction, status: int) -> None:
        self.call.on_fork_final(self, status, None)

    def cancel(self) -> None:
        """§9.1: CANCEL only once a provisional arrived; until then, remember to."""
        if self.final is not None or self.cancelled:
            return
        if not self.early:
            self.cancel_wanted = True
            return
        self.cancelled = True
        ep = self.call.pbx.endpoint
        ep.send_request(make_cancel(self.request), self.peer).user_data = None


class _Relay:
    """An in-dialog request relayed from one leg to the other, awaiting its answer."""

    __slots__ = ("call", "origin", "origin_txn", "target", "out", "done")

    def __init__(self, call: Call, origin: Leg, origin_txn: ServerTransaction, target: Leg,
                 out: Request) -> None:
        self.call = call
        self.origin = origin
        self.origin_txn = origin_txn
        self.target = target
        self.out = out
        self.done = False

    def on_response(self, txn: ClientTransaction | None, resp: Response) -> None:
        if resp.status < 200:
            return
        if self.done:
            if resp.status < 300:
                self.call.resend_ack(self.target, resp.cseq[0])
            return
        self.done = True
        call = self.call
        method = self.out.method
        if resp.status < 300 and method in ("INVITE", "UPDATE"):
            self.target.dialog.update_target(resp)
        r = make_response(self.origin_txn.request, resp.status, resp.reason)
        if resp.status < 300 and method in ("INVITE", "UPDATE", "SUBSCRIBE", "REFER"):
            r.headers.add("contact", call.contact_for(self.origin))
        _copy_body(resp, r)
        call.pbx.endpoint.respond(self.origin_txn, r)
        if resp.status < 300 and method == "INVITE":
            call.pending_ack[self.origin] = (self.target, self.out.cseq[0])

    def on_failure(self, txn: ClientTransaction, status: int) -> None:
        if not self.done:
            self.done = True
            self.call.pbx.endpoint.respond(
                self.origin_txn, make_response(self.origin_txn.request, status))

    def on_cancel(self, txn: ServerTransaction) -> None:
        pass  # a CANCEL of a re-INVITE: the other side answers it soon anyway

    def on_ack_timeout(self, txn: ServerTransaction) -> None:
        self.call.terminate("ack-timeout")

    def on_server_failure(self, txn: ServerTransaction) -> None:
        pass


class _Bye:
    """A BYE we sent; the PBX counts these so that shutdown can wait for the answers."""

    __slots__ = ("pbx",)

    def __init__(self, pbx: Pbx) -> None:
        self.pbx = pbx
        pbx.pending_byes.add(self)

    def on_response(self, txn: ClientTransaction | None, resp: Response) -> None:
        if resp.status >= 200:
            self.pbx.pending_byes.discard(self)

    def on_failure(self, txn: ClientTransaction, status: int) -> None:
        self.pbx.pending_byes.discard(self)


class Call:
    def __init__(self, pbx: Pbx, txn: ServerTransaction, req: Request, source: Peer) -> None:
        self.pbx = pbx
        self.a_txn = txn
        self.a_req = req
        self.a_source = source
        self.a_tag = new_tag()
        self.b_call_id = ""
        self.b_from_tag = new_tag()
        self.forks: list[Fork] = []
        self.winner: Fork | None = None
        self.a_leg: Leg | None = None
        self.b_leg: Leg | None = None
        self.state = "new"   # new → ringing → answered → confirmed → ended
        self.a_final_sent = False
        self.caller = ""
        self.callee = ""
        self.answered_at: float | None = None
        self.ring_timer = None
        self.pending_ack: dict[Leg, tuple[Leg, int]] = {}
        self.sent_acks: dict[tuple[Leg, int], Request] = {}
        txn.user_data = self

    # -- setup ------------------------------------------------------------------
    def start(self) -> None:
        pbx, req, txn = self.pbx, self.a_req, self.a_txn
        mf = req.headers.get("max-forwards")
        if mf is not None and int(mf) == 0:
            pbx.reply(txn, 483, "Too Many Hops")
            return
        user = authenticate(pbx, txn, req, "proxy-authorization", 407)
        if user is None:
            return
        try:
            from_uri = req.from_.parsed_uri
        except ParseError as e:
            pbx.reply(txn, 400, e.reason)
            return
        if getattr(from_uri, "user", None) != user:
            pbx.reply(txn, 403, "From does not match the authenticated extension")
            return
        number = self._dialled_number(req)
        if number is None or number not in pbx.config.extensions:
            pbx.reply(txn, 404, "Not Found")
            return
        self.caller, self.callee = user, number
        bindings = pbx.location.bindings(number, time.time())
        if not bindings:
            log.info("call %s → %s: not registered", user, number)
            pbx.reply(txn, 480, "Temporarily Unavailable")
            return
        pbx.calls.add(self)
        pbx.endpoint.respond(txn, make_response(req, 100, "Trying"))
        self.b_call_id = new_call_id(pbx.endpoint.local_host(self.a_source))
        log.info("call %s → %s: ringing %d contact(s)", user, number, len(bindings))
        max_fwd = (int(mf) if mf is not None else 70) - 1
        for b in bindings:
            self._fork(b, max_fwd)
        timeout = pbx.config.sip.ring_timeout
        self.ring_timer = pbx.endpoint.loop.call_later(timeout, self._no_answer)

    @staticmethod
    def _dialled_number(req: Request) -> str | None:
        for uri_source in (lambda: req.ruri, lambda: req.to.parsed_uri):
            try:
                uri = uri_source()
            except ParseError:
                continue
            if isinstance(uri, TelURI):
                return uri.digits.lstrip("+")
            if isinstance(uri, SipURI) and uri.user:
                return uri.user
        return None

    def _fork(self, binding: Binding, max_fwd: int) -> None:
        pbx = self.pbx
        ep = pbx.endpoint
        peer = pbx.binding_peer(binding)
        host = pbx.config.sip.domain or ep.local_host(peer)
        name = pbx.config.extensions[self.caller].name or None
        h = Headers()
        h.add("via", ep.make_via(peer))
        for r in binding.path:
            h.add("route", r)
        h.add("max-forwards", str(max_fwd))
        h.add("from", f"{NameAddr(f'sip:{self.caller}@{host}', name)};tag={self.b_from_tag}")
        h.add("to", str(NameAddr(f"sip:{self.callee}@{host}")))
        h.add("call-id", self.b_call_id)
        h.add("cseq", "1 INVITE")
        h.add("contact", f"<{ep.contact_uri(peer, self.caller)}>")
        h.add("allow", pbx.allow)
        h.add("user-agent", pbx.user_agent)
        req = Request("INVITE", binding.contact, h)
        _copy_body(self.a_req, req)
        fork = Fork(self, binding, req, peer)
        self.forks.append(fork)
        fork.txn = ep.send_request(req, peer)
        fork.txn.user_data = fork

    def contact_for(self, leg: Leg) -> str:
        ep = self.pbx.endpoint
        user = self.callee if leg is self.a_leg else self.caller
        return f"<{ep.contact_uri(leg.dialog.peer, user)}>"

    # -- B-leg responses ------------------------------------------------------------
    def on_fork_response(self, fork: Fork, resp: Response) -> None:
        status = resp.status
        if status < 200:
            if status == 100:
                return
            fork.early = True
            if fork.cancel_wanted:
                fork.cancel()
                return
            if self.state in ("new", "ringing") and not self.a_final_sent:
                r = make_response(self.a_req, status, resp.reason, to_tag=self.a_tag)
                r.headers.add("contact", f"<{self.pbx.endpoint.contact_uri(self.a_source, self.callee)}>")
                _copy_body(resp, r)
                self.pbx.endpoint.respond(self.a_txn, r)
                if self.state == "new":
                    self.state = "ringing"
                    self.pbx.bus.publish(CallRinging(self.a_req.call_id, self.caller,
                                                     self.callee))
            return
        if status < 300:
            self._on_fork_answered(fork, resp)
            return
        self.on_fork_final(fork, status, resp)

    def _on_fork_answered(self, fork: Fork, resp: Response) -> None:
        pbx = self.pbx
        ep = pbx.endpoint
        if fork is self.winner:  # a retransmitted 2xx (RFC 6026 Accepted): re-ACK if we did
            self.resend_ack(self.b_leg, resp.cseq[0]) if self.b_leg else None
            return
        fork.final = resp.status
        dialog = Dialog.as_uac(fork.request, resp, fork.peer)
        if self.winner is not None or self.a_final_sent:
            # Too late (another fork won, or the caller gave up): ACK, then BYE (§13.2.2.4).
            leg = Leg(self, "b", dialog)
            ep.send_stateless(self._ack(leg, fork.request.cseq[0]), leg.peer)
            self._send_bye(leg)
            return
        self.winner = fork
        self.b_leg = Leg(self, "b", dialog)
        pbx.dialogs[(self.b_call_id, self.b_from_tag)] = self.b_leg
        for other in self.forks:
            if other is not fork:
                other.cancel()
        r = make_response(self.a_req, 200, resp.reason or "OK", to_tag=self.a_tag)
        r.headers.add("contact", f"<{ep.contact_uri(self.a_source, self.callee)}>")
        r.headers.add("allow", pbx.allow)
        _copy_body(resp, r)
        self.a_leg = Leg(self, "a", Dialog.as_uas(self.a_req, r, self.a_source))
        pbx.dialogs[(self.a_req.call_id, self.a_tag)] = self.a_leg
        self.a_final_sent = True
        ep.respond(self.a_txn, r)
        self.pending_ack[self.a_leg] = (self.b_leg, fork.request.cseq[0])
        self.state = "answered"
        self.answered_at = time.monotonic()
        self._cancel_ring_timer()
        log.info("call %s → %s answered", self.caller, self.callee)
        pbx.bus.publish(CallAnswered(self.a_req.call_id, self.caller, self.callee))

    def on_fork_final(self, fork: Fork, status: int, resp: Response | None) -> None:
        if fork.final is not None:
            return
        fork.final = status
        fork.final_response = resp
        if self.a_final_sent or self.winner is not None:
            return
        if any(f.final is None for f in self.forks):
            return
        best = _best_final(self.forks)
        st = best.final or 480
        r = make_response(self.a_req, st, best.final_response.reason if best.final_response
                          else None, to_tag=self.a_tag)
        if best.final_response is not None and 300 <= st < 400:
            for c in best.final_response.headers.get_all("contact"):
                r.headers.add("contact", c)
        self._final_to_a(r)
        self._end(st, _END_REASON.get(st, "failed"))

    def _final_to_a(self, resp: Response) -> None:
        if not self.a_final_sent:
            self.a_final_sent = True
            self.pbx.endpoint.respond(self.a_txn, resp)

    def _no_answer(self) -> None:
        self.ring_timer = None
        if self.state in ("new", "ringing") and not self.a_final_sent:
            log.info("call %s → %s: no answer", self.caller, self.callee)
            for f in self.forks:
                f.cancel()
            self._final_to_a(make_response(self.a_req, 408, "Request Timeout", to_tag=self.a_tag))
            self._end(408, "no-answer")

    # -- A-leg events ----------------------------------------------------------------
    def on_cancel(self, invite_txn: ServerTransaction) -> None:
        if self.a_final_sent or self.state == "ended":
            return
        log.info("call %s → %s cancelled by caller", self.caller, self.callee)
        for f in self.forks:
            f.cancel()
        self._final_to_a(make_response(self.a_req, 487, "Request Terminated", to_tag=self.a_tag))
        self._end(487, "cancelled")

    def on_ack_timeout(self, txn: ServerTransaction) -> None:
        log.info("call %s → %s: no ACK for 200", self.caller, self.callee)
        self.terminate("ack-timeout")

    def on_server_failure(self, txn: ServerTransaction) -> None:
        if self.state in ("new", "ringing"):
            for f in self.forks:
                f.cancel()
            self._end(500, "failed")

    def on_response(self, txn: ClientTransaction | None, resp: Response) -> None:
        pass

    def on_failure(self, txn: ClientTransaction, status: int) -> None:
        pass

    # -- in-dialog --------------------------------------------------------------------
    def other(self, leg: Leg) -> Leg | None:
        return self.b_leg if leg is self.a_leg else self.a_leg

    def on_leg_request(self, leg: Leg, txn: ServerTransaction, req: Request) -> None:
        pbx = self.pbx
        if not leg.dialog.check_remote_cseq(req):
            pbx.reply(txn, 500, "Out of order CSeq")
            return
        other = self.other(leg)
        if req.method == "BYE":
            pbx.reply(txn, 200, "OK")
            if other is not None:
                self._send_bye(other)
            self._end(200, "hangup")
            return
        if other is None or self.state == "ended":
            pbx.reply(txn, 481, "Call/Transaction Does Not Exist")
            return
        if req.method in ("INVITE", "UPDATE"):
            leg.dialog.update_target(req)
        ep = pbx.endpoint
        out = other.dialog.create_request(req.method, self.contact_for(other),
                                          ep.make_via(other.peer))
        for name in _RELAY_HEADERS:
            v = req.headers.get(name)
            if v is not None:
                out.headers.add(name, v)
        _copy_body(req, out)
        relay = _Relay(self, leg, txn, other, out)
        txn.user_data = relay
        ep.send_request(out, other.peer).user_data = relay

    def on_leg_ack(self, leg: Leg, ack: Request) -> None:
        if leg is self.a_leg and self.state == "answered":
            self.state = "confirmed"
        pending = self.pending_ack.pop(leg, None)
        if pending is None:
            return
        target, cseq = pending
        out = self._ack(target, cseq)
        _copy_body(ack, out)
        self.sent_acks[(target, cseq)] = out
        self.pbx.endpoint.send_stateless(out, target.peer)

    def _ack(self, leg: Leg, cseq: int) -> Request:
        ep = self.pbx.endpoint
        return leg.dialog.create_request("ACK", "", ep.make_via(leg.peer), cseq=cseq)

    def resend_ack(self, leg: Leg, cseq: int) -> None:
        ack = self.sent_acks.get((leg, cseq))
        if ack is not None:
            self.pbx.endpoint.send_stateless(ack, leg.peer)

    def _send_bye(self, leg: Leg) -> None:
        ep = self.pbx.endpoint
        bye = leg.dialog.create_request("BYE", "", ep.make_via(leg.peer))
        ep.send_request(bye, leg.peer).user_data = _Bye(self.pbx)

    # -- teardown ------------------------------------------------------------------------
    def terminate(self, reason: str) -> None:
        """End the call from our side: BYE both legs, or CANCEL and 503 while ringing."""
        if self.state == "ended":
            return
        if self.a_leg is not None and self.b_leg is not None:
            self._send_bye(self.a_leg)
            self._send_bye(self.b_leg)
            self._end(200, reason)
            return
        for f in self.forks:
            f.cancel()
        self._final_to_a(make_response(self.a_req, 503, "Service Unavailable", to_tag=self.a_tag))
        self._end(503, reason)

    def _cancel_ring_timer(self) -> None:
        if self.ring_timer is not None:
            self.ring_timer.cancel()
            self.ring_timer = None

    def _end(self, status: int, reason: str) -> None:
        if self.state == "ended":
            return
        self.state = "ended"
        self._cancel_ring_timer()
        pbx = self.pbx
        pbx.calls.discard(self)
        for leg in (self.a_leg, self.b_leg):
            if leg is not None:
                pbx.dialogs.pop((leg.dialog.call_id, leg.dialog.local_tag), None)
        duration = time.monotonic() - self.answered_at if self.answered_at else 0.0
        log.info("call %s → %s ended: %s (%d), %.1f s", self.caller, self.callee, reason,
                 status, duration)
        pbx.bus.publish(CallEnded(self.a_req.call_id, self.caller, self.callee,
                                  200 if self.answered_at else status, reason, duration))


def _best_final(forks: list[Fork]) -> Fork:
    """§16.7 step 6: 6xx wins; otherwise the lowest class, preferring a specific
    answer (486 busy, a redirect) over a generic timeout or unavailability."""
    def rank(f: Fork) -> tuple[int, int]:
        st = f.final or 500
        if st >= 600:
            return (0, st)
        generic = 1 if st in (408, 480, 503, 500) else 0
        return (st // 100, generic)
    return min(forks, key=rank)
