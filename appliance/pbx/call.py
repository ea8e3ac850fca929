"""A call: a back-to-back user agent (RFC 3261 §§12–15, RFC 7092).

The caller's INVITE is answered on the A leg. The destination comes from the
dial plan: an extension's registered contacts are called in parallel on
B-leg forks that share one Call-ID and From tag (§16.7-style best-response
choice when all fail); a line or trunk gets one outbound leg. Forwarding
(unconditional, busy, no answer, unreachable, a phone's 3xx) re-targets the
call and tells the caller with `181 Call Is Being Forwarded`. Once a fork
answers, the two dialogs relay in-dialog requests to each other; ACKs for 2xx
are relayed end-to-end so an offer in the ACK (late offer) reaches the other
side. SDP passes through unchanged.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Final

from .. import loglines
from ..bus import CallAnswered, CallEnded, CallRinging, DtmfReceived
from ..media.sdp import is_sdp
from ..sip.dialog import Dialog, new_call_id, new_tag
from ..sip.digest import DigestError, answer_challenge, parse_challenge, select_challenge
from ..sip.message import Headers, NameAddr, ParseError, Request, Response, make_response
from ..sip.prack import (
    PRACK,
    ProvisionalAcknowledger,
    ReliableProvisionals,
    add_100rel,
    make_prack,
    rel100,
)
from ..sip.transaction import ClientTransaction, Peer, ServerTransaction, make_cancel
from ..sip.uri import SipURI, TelURI
from .core import PendingBye
from .dialplan import Destination, normalize, number_of, route
from .line import ruri_params, with_params
from .location import Binding
from .registrar import authenticate

if TYPE_CHECKING:
    from .bridge import MediaBridge
    from .core import Pbx

log = logging.getLogger("appliance.call")

MAX_FORWARDS: Final = 5  # forwarding hops one call may take before 482 Loop Detected

# Headers carried across the B2BUA with a relayed request or response body.
_BODY_HEADERS: Final = ("content-type", "content-disposition", "content-encoding",
                        "content-language")
_RELAY_HEADERS: Final = ("event", "info-package", "subscription-state", "reason")

_END_REASON: Final = {486: "busy", 600: "busy", 408: "no-answer", 480: "unavailable",
                      487: "cancelled", 603: "declined", 404: "not-found", 482: "loop"}

# RFC 5806 diversion reasons → RFC 4458 / RFC 7044 History-Info cause codes.
_CAUSE: Final = {"unconditional": 302, "user-busy": 486, "no-answer": 408, "unavailable": 503,
                 "deflection": 480}


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


def _strip_angle(route_value: str) -> str:
    route_value = route_value.strip()
    if route_value.startswith("<"):
        return route_value[1 : route_value.find(">")]
    return route_value.split(";", 1)[0]


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


class _EarlyA:
    """The caller's early dialog while we send reliable provisionals: takes PRACK."""

    __slots__ = ("call",)

    def __init__(self, call: Call) -> None:
        self.call = call

    def on_request(self, txn: ServerTransaction, req: Request) -> None:
        self.call.on_early_request(txn, req)

    def on_ack(self, req: Request) -> None:
        pass

    def on_response(self, txn: ClientTransaction | None, resp: Response) -> None:
        pass


class Fork:
    """One outgoing INVITE: to a registered contact, or out through a line or trunk."""

    __slots__ = ("call", "attempt", "request", "peer", "txn", "early", "final",
                 "final_response", "cancel_wanted", "cancelled", "carrier", "auth_tried",
                 "acks", "early_dialogs")

    def __init__(self, call: Call, request: Request, peer: Peer, carrier: Any = None) -> None:
        self.call = call
        self.attempt = call.attempt
        self.request = request
        self.peer = peer
        self.txn: ClientTransaction | None = None
        self.early = False
        self.final: int | None = None
        self.final_response: Response | None = None
        self.cancel_wanted = False
        self.cancelled = False
        self.carrier = carrier       # (kind, name, config) for line/trunk legs
        self.auth_tried = False
        self.acks = ProvisionalAcknowledger()
        self.early_dialogs: dict[str, Dialog] = {}

    def send(self) -> None:
        self.txn = self.call.pbx.endpoint.send_request(self.request, self.peer)
        self.txn.user_data = self

    def on_response(self, txn: ClientTransaction | None, resp: Response) -> None:
        if txn is not None and txn is not self.txn and resp.status >= 200:
            return  # the answer to an INVITE we replaced (after a challenge)
        if 100 < resp.status < 200 and not self._prack(resp):
            return
        self.call.on_fork_response(self, resp)

    def on_failure(self, txn: ClientTransaction, status: int) -> None:
        if txn is self.txn:
            self.call.on_fork_final(self, status, None)

    def _prack(self, resp: Response) -> bool:
        """RFC 3262 §4 as UAC: PRACK reliable provisionals; False drops the response."""
        verdict = self.acks.on_provisional(resp)
        if verdict.action == PRACK and verdict.to_tag is not None and verdict.rack:
            ep = self.call.pbx.endpoint
            dialog = self.early_dialogs.get(verdict.to_tag)
            if dialog is None:
                dialog = Dialog.as_uac(self.request, resp, self.peer)
                self.early_dialogs[verdict.to_tag] = dialog
            prack = make_prack(dialog, verdict.rack, ep.make_via(self.peer),
                               f"<{ep.contact_uri(self.peer, self.call.caller)}>")
            ep.send_request(prack, next_hop(dialog)).user_data = _PrackSent(self)
        return verdict.deliver

    def challenge(self, resp: Response) -> bool:
        """A carrier's 401/407 (RFC 3261 §22.2): re-send once with credentials."""
        if self.carrier is None or self.auth_tried:
            return False
        kind, name, conf = self.carrier
        if kind != "line":
            return False
        header = "www-authenticate" if resp.status == 401 else "proxy-authenticate"
        try:
            chosen = select_challenge(parse_challenge(v) for v in resp.headers.get_all(header))
        except (DigestError, ValueError):
            return False
        self.auth_tried = True
        creds = answer_challenge(chosen, "INVITE", self.request.uri,
                                 conf.auth_user or conf.account, conf.password)
        req = self.request
        h = req.headers.copy()
        num = req.cseq[0] + 1
        h.set("cseq", f"{num} INVITE")
        h.set("via", self.call.pbx.endpoint.make_via(self.peer))
        h.set("authorization" if resp.status == 401 else "proxy-authorization",
              creds.to_header())
        self.request = Request("INVITE", req.uri, h, req.body)
        self.send()
        return True

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


class _PrackSent:
    """Our PRACK; a carrier that demands 100rel and then refuses PRACK is logged, and
    the call goes on (the final response does not depend on the PRACK)."""

    __slots__ = ("fork",)

    def __init__(self, fork: Fork) -> None:
        self.fork = fork

    def on_response(self, txn: ClientTransaction | None, resp: Response) -> None:
        if resp.status in (405, 501):
            where = self.fork.carrier
            name = f"{where[0]} {where[1]}" if where else "callee"
            log.warning("%s answered PRACK with %d %s although it asked for 100rel; the call "
                        "continues. Set disable_100rel: true on %s to avoid this.",
                        name, resp.status, resp.reason, name)

    def on_failure(self, txn: ClientTransaction, status: int) -> None:
        pass


class _AckAgain:
    """What an ended call leaves on its answered fork's INVITE transaction (Timer M):
    a 2xx the callee retransmits because our ACK was lost gets that ACK again, the same
    bytes (kept as sent, not parsed: this lives for the 32 s of Timer M)."""

    __slots__ = ("endpoint", "ack", "peer")

    def __init__(self, endpoint: Any, ack: bytes | None, peer: Peer) -> None:
        self.endpoint = endpoint
        self.ack = ack
        self.peer = peer

    def on_response(self, txn: ClientTransaction | None, resp: Response) -> None:
        if 200 <= resp.status < 300 and self.ack is not None:
            self.endpoint.send_bytes(self.peer, self.ack)

    def on_failure(self, txn: ClientTransaction, status: int) -> None:
        pass


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
        if call.bridge is not None and is_sdp(resp.headers.get("content-type"), resp.body):
            r.body = call.bridge.rewrite_toward(self.origin.name, resp.body)
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


class Call:
    def __init__(self, pbx: Pbx, txn: ServerTransaction, req: Request, source: Peer) -> None:
        self.pbx = pbx
        self.a_txn = txn
        self.a_req = req
        self.a_source = source
        self.a_tag = new_tag()
        self.b_call_id = new_call_id(pbx.endpoint.local_host(source))
        self.b_from_tag = new_tag()
        self.forks: list[Fork] = []
        self.winner: Fork | None = None
        self.a_leg: Leg | None = None
        self.b_leg: Leg | None = None
        self.state = "new"   # new → ringing → answered → confirmed → ended
        self.a_final_sent = False
        self.caller = ""          # extension number, or the outside caller's number
        self.caller_name: str | None = None
        self.origin = "extension"  # or "line" / "trunk"
        self.origin_name: str | None = None
        self.callee = ""
        self.answered_at: float | None = None
        self.ring_timer: Any = None
        self.forward_timer: Any = None
        self.attempt = 0
        self.current_ext: str | None = None
        self.visited: list[str] = []
        self.diversions: list[tuple[str, str, str]] = []  # (by, reason, target)
        self.pending_ack: dict[Leg, tuple[Leg, int]] = {}
        self.sent_acks: dict[tuple[Leg, int], bytes] = {}  # as sent, to send again
        self.rel: ReliableProvisionals | None = None
        self.rel_timer: Any = None
        self.held_final: Response | None = None
        self.bridge: MediaBridge | None = None
        self.b_offer: bytes | None = None
        txn.user_data = self

    # -- setup ------------------------------------------------------------------
    def start(self) -> None:
        pbx, req, txn = self.pbx, self.a_req, self.a_txn
        mf = req.headers.get("max-forwards")
        if mf is not None and int(mf) == 0:
            pbx.reply(txn, 483, "Too Many Hops")
            return
        number = self._dialled_number(req)
        carrier = pbx.carrier_of(self.a_source, req)
        if pbx.worker and not self._worker_may_answer(carrier) and pbx.pass_on(txn,
                                                                              self.a_source):
            return
        if carrier is not None:
            self.origin, self.origin_name, conf = carrier
            self.caller = self._caller_number(req)
            self.caller_name = req.from_.display
            if conf.inbound:
                dest: Destination | None = Destination("extension", conf.inbound)
            else:
                dest = route(pbx.config, number or "")
                if dest is not None and dest.kind not in ("extension", "room"):
                    dest = None  # a carrier may only reach extensions and rooms
        else:
            if not self._is_extension_caller(req):
                log.info("INVITE from unlisted source %s:%s refused", self.a_source.host,
                         self.a_source.port)
                pbx.reply(txn, 403, "Forbidden")
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
            self.caller = user
            self.caller_name = pbx.config.extensions[user].name or None
            dest = route(pbx.config, number or "")
            if pbx.worker and not self._stays_here(dest) and pbx.pass_on(txn, self.a_source,
                                                                          verified=True):
                return
        if dest is not None and dest.kind == "feature":
            if self.origin == "extension":
                pbx.feature_code(txn, self.caller, dest.number)
            else:
                pbx.reply(txn, 404, "Not Found")
            return
        if dest is None:
            pbx.reply(txn, 404, "Not Found")
            return
        pbx.calls.add(self)
        if self.a_req.headers.get("supported") or self.a_req.headers.get("require"):
            if rel100(req).allowed:
                self.rel = ReliableProvisionals(req, pbx.endpoint.layer.timers)
        pbx.endpoint.respond(txn, make_response(req, 100, "Trying"))
        self.ring_timer = pbx.endpoint.loop.call_later(pbx.config.sip.ring_timeout,
                                                       self._no_answer)
        if self._wants_relay(dest):
            pbx.endpoint.loop.create_task(self._open_media_then_route(dest))
        else:
            self._route(dest)

    # -- what a SIP worker keeps (appliance/workers.py) -------------------------------
    def _worker_may_answer(self, carrier: tuple[str, str, Any] | None) -> bool:
        """A worker challenges and authenticates extensions. Carriers, unlisted sources
        and, when lines or trunks are configured, any INVITE without credentials go to
        the daemon: only it knows the addresses a line's host resolved to."""
        if carrier is not None or not self._is_extension_caller(self.a_req):
            return False
        cfg = self.pbx.config
        return bool(self.a_req.headers.get("proxy-authorization")) or not (cfg.lines or
                                                                            cfg.trunks)

    def _stays_here(self, dest: Destination | None) -> bool:
        """A worker runs a call between two extensions over UDP, audio not relayed, callee
        without forwarding, neither side behind NAT (our requests leave from the worker's
        own port, which a NAT box opened for 5060 may not let in), no Path; the rest is
        the daemon's. An unknown number is answered 404 here; a callee this worker knows
        no binding of goes to the daemon, which has every binding a worker made before
        that worker's 200 went out (one made elsewhere may not have reached us yet)."""
        if dest is None:
            return True
        if dest.kind != "extension" or self._wants_relay(dest):
            return False
        pbx = self.pbx
        ext = pbx.config.extensions.get(dest.number)
        if ext is None:
            return False
        fw = ext.forward
        if fw.unconditional or fw.busy or fw.no_answer or fw.unreachable:
            return False
        via = self.a_req.top_via
        src = self.a_source
        if via.host.strip("[]") != src.host or (via.port or 5060) != src.port:
            return False
        bindings = pbx.location.bindings(dest.number, time.time())
        if not bindings:
            return False
        for b in bindings:
            if b.path or not _direct(b):
                return False
        return True

    def _wants_relay(self, dest: Destination) -> bool:
        """The box carries the audio for every call through a line or trunk, and between
        extensions unless media.relay_extension_calls is off (issue: phones behind NAT)."""
        if dest.kind not in ("extension", "line", "trunk"):
            return False
        if not is_sdp(self.a_req.headers.get("content-type"), self.a_req.body):
            return False  # a late offer (SDP in the ACK) passes through untouched
        if self.origin != "extension" or dest.kind != "extension":
            return True
        return self.pbx.config.media.relay_extension_calls

    async def _open_media_then_route(self, dest: Destination) -> None:
        from ..media.rtp import PortsExhausted  # media loads on the first call that needs it
        from .bridge import MediaBridge

        pbx = self.pbx
        address = pbx.endpoint.local_host(self.a_source)
        try:
            bridge = await MediaBridge.open(address, pbx.ports)
        except (OSError, PortsExhausted) as e:
            log.error("call %s: no RTP ports: %s", self.caller, e)
            self._fail(503, "No media ports available")
            return
        if self.state == "ended" or self.a_final_sent:
            bridge.close()
            return
        self.bridge = bridge
        bridge.on_dtmf = self._on_dtmf
        try:
            self.b_offer = bridge.offer_to_callee(self.a_req.body)
        except ValueError as e:
            log.info("call %s: unusable SDP offer (%s); media not relayed", self.caller, e)
            bridge.close()
            self.bridge = None
        self._route(dest)

    def _on_dtmf(self, side: str, event: Any) -> None:
        log.info("call %s → %s: DTMF %s from %s (rfc4733)", self.caller, self.callee,
                 event.digit, side)
        self.pbx.bus.publish(DtmfReceived(self.a_req.call_id, side, event.digit, "rfc4733"))

    def _offer_body(self, req: Request) -> None:
        """The body of an INVITE to a callee: the caller's offer, or the box's rewrite."""
        _copy_body(self.a_req, req)
        if self.bridge is not None and self.b_offer is not None:
            req.body = self.b_offer

    def _answer_body(self, resp: Response, r: Response) -> None:
        """The body of a response to the caller carrying the callee's SDP."""
        _copy_body(resp, r)
        if self.bridge is not None and is_sdp(resp.headers.get("content-type"), resp.body):
            try:
                body = self.bridge.answer_to_caller(resp.body)
            except ValueError as e:
                log.info("call %s: unusable SDP answer (%s)", self.caller, e)
                body = None
            if body is not None:
                r.body = body

    def _is_extension_caller(self, req: Request) -> bool:
        """Phones send their first INVITE without credentials; only a From naming one
        of our extensions earns a challenge, anything else is an unlisted source."""
        if req.headers.get("proxy-authorization"):
            return True
        try:
            user = getattr(req.from_.parsed_uri, "user", None)
        except ParseError:
            return False
        return user in self.pbx.config.extensions

    @staticmethod
    def _caller_number(req: Request) -> str:
        try:
            uri = req.from_.parsed_uri
        except ParseError:
            return "anonymous"
        if isinstance(uri, TelURI):
            return uri.digits
        return normalize(getattr(uri, "user", None) or "anonymous")

    @staticmethod
    def _dialled_number(req: Request) -> str | None:
        """The number dialled: Request-URI user, or a tel: URI's digits (RFC 3966)."""
        for uri_source in (lambda: req.ruri, lambda: req.to.parsed_uri):
            try:
                number = number_of(uri_source())
            except ParseError:
                continue
            if number:
                return number
        return None

    # -- routing and forwarding ------------------------------------------------------
    def _route(self, dest: Destination | None) -> None:
        if self.state == "ended" or self.a_final_sent:
            return
        if dest is None or dest.kind == "feature":
            self._fail(404, "Not Found")
        elif dest.kind == "extension":
            self._ring_extension(dest.number)
        elif dest.kind == "room":
            self._hand_to_room(dest.number)
        elif self.origin != "extension" and not self.diversions:
            self._fail(403, "Forbidden")  # no tandem calls from one carrier to another
        else:
            self._dial_out(dest)

    def _hand_to_room(self, number: str) -> None:
        """A conference room answers the caller itself (appliance.pbx.conference)."""
        rooms = self.pbx.conferences
        if rooms is None:
            self._fail(404, "Not Found")
            return
        self._cancel_ring_timer()
        self._cancel_forward_timer()
        if self.rel_timer is not None:
            self.rel_timer.cancel()
            self.rel_timer = None
        self.pbx.dialogs.pop((self.a_req.call_id, self.a_tag), None)  # an _EarlyA
        self.state = "ended"  # the room owns the A leg from here on
        self.pbx.calls.discard(self)
        rooms.admit(self.a_txn, self.a_req, self.a_source, number, self.caller)

    def _ring_extension(self, number: str) -> None:
        pbx = self.pbx
        if number in self.visited:
            self._fail(482, "Loop Detected")
            return
        self.visited.append(number)
        self.current_ext = number
        self.callee = self.callee or number
        fw = pbx.config.extensions[number].forward
        if fw.unconditional:
            self._forward(number, fw.unconditional, "unconditional")
            return
        bindings = pbx.location.bindings(number, time.time())
        if not bindings:
            if fw.unreachable:
                self._forward(number, fw.unreachable, "unavailable")
                return
            log.info("call %s → %s: not registered", self.caller, number)
            self._fail(480, "Temporarily Unavailable")
            return
        self.attempt += 1
        loglines.info(log, "call %s → %s: ringing %d contact(s)", self.caller, number,
                      len(bindings))
        for b in bindings:
            self._fork_to_binding(b, number)
        if fw.no_answer:
            self.forward_timer = pbx.endpoint.loop.call_later(
                fw.no_answer_after, self._forward, number, fw.no_answer, "no-answer")

    def _forward(self, by: str, target: str, reason: str) -> None:
        """Re-target the call; the caller hears about every hop (181 with Call-Info)."""
        if self.state == "ended" or self.a_final_sent:
            return
        self._cancel_forward_timer()
        self._abandon_forks()
        if len(self.diversions) >= MAX_FORWARDS:
            self._fail(482, "Loop Detected")
            return
        self.diversions.append((by, reason, target))
        log.info("call %s: %s forwards to %s (%s)", self.caller, by, target, reason)
        r = make_response(self.a_req, 181, "Call Is Being Forwarded", to_tag=self.a_tag)
        r.headers.add("call-info",
                      f'purpose=forwarding, username="{by}", contact="{target}"')
        self._provisional_to_a(r)
        self._route(route(self.pbx.config, target))

    def _abandon_forks(self) -> None:
        for f in self.forks:
            f.cancel()
        self.attempt += 1

    def _cancel_forward_timer(self) -> None:
        if self.forward_timer is not None:
            self.forward_timer.cancel()
            self.forward_timer = None

    # -- B legs ----------------------------------------------------------------------------
    def _base_headers(self, peer: Peer, from_uri: str, from_name: str | None, to_uri: str,
                      max_fwd: int) -> Headers:
        ep = self.pbx.endpoint
        h = Headers()
        h.add("via", ep.make_via(peer))
        h.add("max-forwards", str(max_fwd))
        h.add("from", f"{NameAddr(from_uri, from_name)};tag={self.b_from_tag}")
        h.add("to", str(NameAddr(to_uri)))
        h.add("call-id", self.b_call_id)
        h.add("cseq", "1 INVITE")
        return h

    def _max_fwd(self) -> int:
        mf = self.a_req.headers.get("max-forwards")
        return (int(mf) if mf is not None else 70) - 1

    def _fork_to_binding(self, binding: Binding, number: str) -> None:
        pbx = self.pbx
        ep = pbx.endpoint
        peer = pbx.binding_peer(binding)
        host = pbx.config.sip.domain or ep.local_host(peer)
        h = self._base_headers(peer, f"sip:{self.caller}@{host}", self.caller_name,
                               f"sip:{number}@{host}", self._max_fwd())
        for r in binding.path:
            h.add("route", r, first=False)
        h.add("contact", f"<{ep.contact_uri(peer, self.caller)}>")
        h.add("allow", pbx.allow)
        h.add("user-agent", pbx.user_agent)
        req = Request("INVITE", binding.contact, h)
        self._offer_body(req)
        fork = Fork(self, req, peer)
        self.forks.append(fork)
        fork.send()

    def _dial_out(self, dest: Destination) -> None:
        conf = (self.pbx.config.lines if dest.kind == "line" else self.pbx.config.trunks).get(
            dest.name or "")
        if conf is None:
            self._fail(404, "Not Found")
            return
        self.callee = self.callee or dest.number
        attempt = self.attempt = self.attempt + 1
        self.pbx.endpoint.loop.create_task(self._dial_out_resolved(dest, conf, attempt))

    async def _dial_out_resolved(self, dest: Destination, conf: Any, attempt: int) -> None:
        peers = await self.pbx.resolve(conf.host, conf.port, conf.transport)
        if attempt != self.attempt or self.state == "ended" or self.a_final_sent:
            return
        if not peers:
            log.warning("%s %s: cannot resolve %s", dest.kind, dest.name, conf.host)
            self._fail(503, "Service Unavailable")
            return
        pbx = self.pbx
        ep = pbx.endpoint
        peer = peers[0]
        domain = getattr(conf, "domain", None) or conf.host
        if dest.kind == "line":
            caller_id = conf.caller_id or conf.account
            params = ruri_params(pbx.config, conf.ruri_params)
        else:
            caller_id = conf.caller_id or self.caller
            params = conf.ruri_params
        h = self._base_headers(peer, f"sip:{caller_id}@{domain}", self.caller_name,
                               f"sip:{dest.number}@{domain}", self._max_fwd())
        h.add("contact", f"<{ep.contact_uri(peer, caller_id)}>")
        h.add("allow", pbx.allow)
        if not conf.disable_100rel:
            add_100rel(h)
        uri = with_params(f"sip:{dest.number}@{domain}", params)
        self._add_diversion(h, domain, conf.forward_header, uri)
        h.add("user-agent", pbx.user_agent)
        req = Request("INVITE", uri, h)
        self._offer_body(req)
        fork = Fork(self, req, peer, (dest.kind, dest.name, conf))
        self.forks.append(fork)
        log.info("call %s → %s via %s %s", self.caller, dest.number, dest.kind, dest.name)
        fork.send()

    def _add_diversion(self, h: Headers, domain: str, style: str, ruri: str) -> None:
        """Tell the carrier who forwarded: Diversion (RFC 5806) or History-Info (RFC 7044)."""
        if not self.diversions:
            return
        host = self.pbx.config.sip.domain or domain
        if style == "history-info":
            # RFC 7044 §10.3: each retarget nests under the entry it retargets, names it
            # in `mp` (another user), carries the RFC 4458 cause; the last entry is the
            # Request-URI as sent.
            entries = [f"<sip:{self.diversions[0][0]}@{host}>;index=1"]
            for i, (_by, reason, tgt) in enumerate(self.diversions, start=1):
                cause = _CAUSE.get(reason, 480)
                uri = ruri if i == len(self.diversions) else f"sip:{tgt}@{host}"
                entries.append(f"<{uri};cause={cause}>;index={'1' + '.1' * i}"
                               f";mp={'1' + '.1' * (i - 1)}")
            h.add("history-info", ", ".join(entries))
            return
        # RFC 5806 §4: the most recent diversion first; counter per hop.
        for by, reason, _tgt in reversed(self.diversions):
            h.add("diversion", f"<sip:{by}@{host}>;reason={reason};counter=1")

    def contact_for(self, leg: Leg) -> str:
        ep = self.pbx.endpoint
        user = self.callee if leg is self.a_leg else self.caller
        return f"<{ep.contact_uri(leg.dialog.peer, user)}>"

    # -- A-leg provisional responses (RFC 3262 as UAS) ---------------------------------------
    def _provisional_to_a(self, r: Response) -> None:
        ep = self.pbx.endpoint
        r.headers.add("contact", f"<{ep.contact_uri(self.a_source, self.callee or None)}>")
        rel = self.rel
        if rel is None:
            ep.respond(self.a_txn, r)
            return
        self.pbx.dialogs[(self.a_req.call_id, self.a_tag)] = _EarlyA(self)
        out = rel.send(r, ep.now)
        if out is not None:
            ep.respond(self.a_txn, out)
        self._arm_rel_timer()

    def _arm_rel_timer(self) -> None:
        if self.rel_timer is not None:
            self.rel_timer.cancel()
            self.rel_timer = None
        rel = self.rel
        if rel is None:
            return
        when = rel.get_timer()
        if when is not None:
            self.rel_timer = self.pbx.endpoint.loop.call_at(when, self._on_rel_timer)

    def _on_rel_timer(self) -> None:
        self.rel_timer = None
        rel, ep = self.rel, self.pbx.endpoint
        if rel is None or self.state == "ended":
            return
        for r in rel.handle_timer(ep.now):
            ep.respond(self.a_txn, r)
        if rel.timed_out and not self.a_final_sent:
            # RFC 3262 §3: no PRACK within 64*T1, reject the INVITE with a 5xx.
            for f in self.forks:
                f.cancel()
            self._fail(504, "No PRACK for reliable provisional response")
            return
        self._arm_rel_timer()

    def on_early_request(self, txn: ServerTransaction, req: Request) -> None:
        ep = self.pbx.endpoint
        if req.method != "PRACK" or self.rel is None:
            self.pbx.reply(txn, 481 if req.method != "UPDATE" else 405)
            return
        status = self.rel.on_prack(req, ep.now)
        self.pbx.reply(txn, status)
        for r in self.rel.responses_to_send():
            ep.respond(self.a_txn, r)
        self._arm_rel_timer()
        if self.held_final is not None and self.rel.can_send_final(self.held_final.status):
            held, self.held_final = self.held_final, None
            self._send_final_to_a(held)

    # -- B-leg responses ------------------------------------------------------------
    def on_fork_response(self, fork: Fork, resp: Response) -> None:
        status = resp.status
        if status < 200:
            if status == 100:
                return
            fork.early = True
            if fork.cancel_wanted or fork.attempt != self.attempt:
                fork.cancel()
                return
            if self.state in ("new", "ringing") and not self.a_final_sent:
                r = make_response(self.a_req, status, resp.reason, to_tag=self.a_tag)
                self._answer_body(resp, r)
                self._provisional_to_a(r)
                if self.state == "new":
                    self.state = "ringing"
                    bus = self.pbx.bus
                    if bus.wants(CallRinging):
                        bus.publish(CallRinging(self.a_req.call_id, self.caller, self.callee))
            return
        if status < 300:
            self._on_fork_answered(fork, resp)
            return
        if status in (401, 407) and fork.challenge(resp):
            return
        self.on_fork_final(fork, status, resp)

    def _on_fork_answered(self, fork: Fork, resp: Response) -> None:
        pbx = self.pbx
        ep = pbx.endpoint
        if fork is self.winner:  # a retransmitted 2xx (RFC 6026 Accepted): re-ACK if we did
            if self.b_leg is not None:
                self.resend_ack(self.b_leg, resp.cseq[0])
            return
        fork.final = resp.status
        dialog = Dialog.as_uac(fork.request, resp, fork.peer)
        early = fork.early_dialogs.get(dialog.remote_tag)
        if early is not None:  # PRACKs used CSeq numbers of this dialog already
            dialog.local_seq = max(dialog.local_seq, early.local_seq)
        if (self.winner is not None or self.a_final_sent or fork.attempt != self.attempt
                or self.state == "ended"):
            # Too late (another fork won, the caller gave up, or the call was forwarded):
            # ACK, then BYE (§13.2.2.4).
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
        self._cancel_forward_timer()
        self._cancel_ring_timer()
        r = make_response(self.a_req, 200, resp.reason or "OK", to_tag=self.a_tag)
        r.headers.add("contact", f"<{ep.contact_uri(self.a_source, self.callee)}>")
        r.headers.add("allow", pbx.allow)
        self._answer_body(resp, r)
        self.a_leg = Leg(self, "a", Dialog.as_uas(self.a_req, r, self.a_source))
        pbx.dialogs[(self.a_req.call_id, self.a_tag)] = self.a_leg
        self.pending_ack[self.a_leg] = (self.b_leg, fork.request.cseq[0])
        self.state = "answered"
        self.answered_at = time.monotonic()
        loglines.info(log, "call %s → %s answered", self.caller, self.callee)
        if pbx.bus.wants(CallAnswered):
            pbx.bus.publish(CallAnswered(self.a_req.call_id, self.caller, self.callee))
        timeout = pbx.config.media.timeout
        if self.bridge is not None and self.bridge.relay is not None and timeout:
            self.bridge.relay.watch(timeout, self._media_timeout)
        self._send_final_to_a(r)

    def on_fork_final(self, fork: Fork, status: int, resp: Response | None) -> None:
        if fork.final is not None:
            return
        fork.final = status
        fork.final_response = resp
        if self.a_final_sent or self.winner is not None or fork.attempt != self.attempt:
            return
        current = [f for f in self.forks if f.attempt == self.attempt]
        if any(f.final is None for f in current):
            return
        best = _best_final(current)
        st = best.final or 480
        if self._forward_on_failure(best, st):
            return
        r = make_response(self.a_req, st, best.final_response.reason if best.final_response
                          else None, to_tag=self.a_tag)
        if best.final_response is not None and 300 <= st < 400:
            for c in best.final_response.headers.get_all("contact"):
                r.headers.add("contact", c)
        self._send_final_to_a(r)
        self._end(st, _END_REASON.get(st, "failed"))

    def _forward_on_failure(self, best: Fork, status: int) -> bool:
        """Busy / unreachable forwarding of the ringing extension, and a phone's own 3xx."""
        ext = self.current_ext
        if ext is None or best.carrier is not None:
            return False
        fw = self.pbx.config.extensions[ext].forward
        if 300 <= status < 400 and best.final_response is not None:
            target = _redirect_target(best.final_response)
            if target and self.pbx.worker and not self._stays_here(route(self.pbx.config,
                                                                          target)):
                return False  # a worker's caller gets the 3xx itself
            if target:
                self._forward(ext, target, "deflection")
                return True
        if status in (486, 600) and fw.busy:
            self._forward(ext, fw.busy, "user-busy")
            return True
        if status in (408, 480, 503) and fw.unreachable:
            self._forward(ext, fw.unreachable, "unavailable")
            return True
        return False

    def _send_final_to_a(self, resp: Response) -> None:
        if self.a_final_sent:
            return
        rel = self.rel
        if rel is not None:
            if not rel.can_send_final(resp.status):
                self.held_final = resp  # RFC 3262 §3: wait for the PRACK of an SDP 1xx
                return
            rel.on_final(resp)
            self._arm_rel_timer()
        self.a_final_sent = True
        self.pbx.endpoint.respond(self.a_txn, resp)

    def _fail(self, status: int, reason: str) -> None:
        if self.state == "ended":
            return
        self._send_final_to_a(make_response(self.a_req, status, reason, to_tag=self.a_tag))
        self._end(status, _END_REASON.get(status, "failed"))

    def _no_answer(self) -> None:
        self.ring_timer = None
        if self.state in ("new", "ringing") and not self.a_final_sent:
            log.info("call %s → %s: no answer", self.caller, self.callee)
            self._abandon_forks()
            self._fail(408, "Request Timeout")

    # -- A-leg events ----------------------------------------------------------------
    def on_cancel(self, invite_txn: ServerTransaction) -> None:
        if self.a_final_sent or self.state == "ended":
            return
        log.info("call %s → %s cancelled by caller", self.caller, self.callee)
        self._abandon_forks()
        self.held_final = None
        if self.rel is not None:
            self.rel.on_final(make_response(self.a_req, 487))
        self._fail(487, "Request Terminated")

    def on_ack_timeout(self, txn: ServerTransaction) -> None:
        log.info("call %s → %s: no ACK for 200", self.caller, self.callee)
        self.terminate("ack-timeout")

    def on_server_failure(self, txn: ServerTransaction) -> None:
        if self.state in ("new", "ringing"):
            self._abandon_forks()
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
        if req.method == "PRACK" and leg is self.a_leg and self.rel is not None:
            self.on_early_request(txn, req)  # it may release the 2xx held for this PRACK
            return
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
        if self.bridge is not None and is_sdp(req.headers.get("content-type"), req.body):
            out.body = self.bridge.rewrite_toward(other.name, req.body)
        if req.method == "INFO":
            self._info_dtmf(leg, req)
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
        if self.bridge is not None and is_sdp(ack.headers.get("content-type"), ack.body):
            out.body = self.bridge.rewrite_toward(target.name, ack.body)
        data = out.to_bytes()
        self.sent_acks[(target, cseq)] = data
        self.pbx.endpoint.send_bytes(target.peer, data)

    def _ack(self, leg: Leg, cseq: int) -> Request:
        ep = self.pbx.endpoint
        return leg.dialog.create_request("ACK", "", ep.make_via(leg.peer), cseq=cseq)

    def resend_ack(self, leg: Leg, cseq: int) -> None:
        ack = self.sent_acks.get((leg, cseq))
        if ack is not None:
            self.pbx.endpoint.send_bytes(leg.peer, ack)

    def _send_bye(self, leg: Leg) -> None:
        ep = self.pbx.endpoint
        bye = leg.dialog.create_request("BYE", "", ep.make_via(leg.peer))
        ep.send_request(bye, leg.peer).user_data = PendingBye(self.pbx.pending_byes, ep.layer.release)

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
        self._abandon_forks()
        self.held_final = None
        self._send_final_to_a(make_response(self.a_req, 503, "Service Unavailable",
                                            to_tag=self.a_tag))
        self._end(503, reason)

    def _media_timeout(self) -> None:
        log.info("call %s → %s: no RTP for %d s, hanging up", self.caller, self.callee,
                 self.pbx.config.media.timeout)
        self.terminate("media-timeout")

    def _info_dtmf(self, leg: Leg, req: Request) -> None:
        """SIP INFO application/dtmf-relay digits reach the PBX as events too."""
        from ..media.dtmf import parse_dtmf_info

        try:
            relay = parse_dtmf_info(req.headers.get("content-type") or "", req.body)
        except ValueError:
            return
        log.info("call %s → %s: DTMF %s from %s (info)", self.caller, self.callee,
                 relay.signal, leg.name)
        self.pbx.bus.publish(DtmfReceived(self.a_req.call_id, leg.name, relay.signal, "info"))

    def _cancel_ring_timer(self) -> None:
        if self.ring_timer is not None:
            self.ring_timer.cancel()
            self.ring_timer = None

    def _end(self, status: int, reason: str) -> None:
        if self.state == "ended":
            return
        self.state = "ended"
        self._cancel_ring_timer()
        self._cancel_forward_timer()
        if self.rel_timer is not None:
            self.rel_timer.cancel()
            self.rel_timer = None
        pbx = self.pbx
        pbx.calls.discard(self)
        pbx.dialogs.pop((self.a_req.call_id, self.a_tag), None)
        for leg in (self.a_leg, self.b_leg):
            if leg is not None:
                pbx.dialogs.pop((leg.dialog.call_id, leg.dialog.local_tag), None)
        duration = time.monotonic() - self.answered_at if self.answered_at else 0.0
        media = None
        if self.bridge is not None:
            media = self.bridge.stats()
            self.bridge.close()
        loglines.info(log, "call %s → %s ended: %s (%d), %.1f s%s", self.caller, self.callee,
                      reason, status, duration, f", media {media}" if media else "")
        if pbx.bus.wants(CallEnded):
            pbx.bus.publish(CallEnded(self.a_req.call_id, self.caller, self.callee,
                                      200 if self.answered_at else status, reason, duration,
                                      media))
        self._release()

    def _release(self) -> None:
        """An ended call has little left to hear: its INVITE server transaction nothing
        it must act on, the answered fork only 2xx retransmissions (our ACK was lost:
        send it again, §13.2.2.4), other forks a late answer (ACK and BYE) or their
        487. The first two get small stand-ins, so that the transactions' 64*T1 of
        Timers L and M do not keep the whole call. Legs and forks point back at the
        call: unless a fork may still answer, those cycles are broken now, else once
        no transaction of the call can report anything (linger)."""
        layer = self.pbx.endpoint.layer
        if self.a_txn.user_data is self:
            layer.release(self.a_txn)
        lingering = False
        for fork in self.forks:
            txn = fork.txn
            if txn is None or txn.state == "terminated":
                continue
            if fork is self.winner and self.b_leg is not None and txn.user_data is fork:
                ack = self.sent_acks.get((self.b_leg, fork.request.cseq[0]))
                layer.release(txn)
                txn.user_data = _AckAgain(self.pbx.endpoint, ack, self.b_leg.peer)
            else:
                lingering = True
        if lingering:
            ep = self.pbx.endpoint
            ep.loop.call_later(ep.layer.linger + 1.0, self._dispose)
        else:
            self._dispose()

    def _dispose(self) -> None:
        """Drop the call's links to its legs and forks (they point back at it): the
        whole call is then freed by reference counting, not left to the cycle collector."""
        self.forks = []
        self.winner = None
        self.a_leg = self.b_leg = None
        self.pending_ack = {}
        self.sent_acks = {}  # keyed by leg
        self.bridge = None   # closed in _end; it calls back into the call (DTMF)


def _direct(b: Binding) -> bool:
    """A UDP binding whose Contact is the address its REGISTER came from (no NAT)."""
    peer = b.peer
    if peer.transport != "udp":
        return False
    try:
        uri = NameAddr(b.contact).parsed_uri
    except ParseError:
        return False
    return (isinstance(uri, SipURI) and (uri.transport or "udp") == "udp"
            and uri.host_bare == peer.host and (uri.port or 5060) == peer.port)


def _redirect_target(resp: Response) -> str | None:
    """The number a phone's 3xx points at (its first Contact's user part)."""
    try:
        contacts = resp.contacts
    except ParseError:
        return None
    for c in contacts:
        try:
            number = number_of(c.parsed_uri)
        except ParseError:
            continue
        if number:
            return number
    return None


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
