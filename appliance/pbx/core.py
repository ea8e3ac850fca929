"""The PBX as the SIP transaction user: dispatches requests, responses and timeouts."""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING, Any

from ..bus import Bus
from ..sip.dialog import new_tag
from ..sip.digest import DigestServer
from ..sip.endpoint import Endpoint
from ..sip.message import NameAddr, ParseError, Request, Response, make_response
from ..sip.transaction import (
    AckTimeout,
    ClientTransaction,
    Peer,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    TransactionTimeout,
    TransportError,
)
from ..sip.uri import SipURI
from .location import Binding, Location
from .registrar import Registrar

if TYPE_CHECKING:
    from ..store.config import Config
    from .call import Call, Leg

log = logging.getLogger("appliance.pbx")

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, UPDATE, INFO, PRACK, MESSAGE, NOTIFY"
SUPPORTED = "path"
ACCEPT = "application/sdp"


class Pbx:
    """Registrar plus back-to-back user agent for calls between extensions."""

    def __init__(self, endpoint: Endpoint, config: Config, location: Location, bus: Bus,
                 secret: bytes | None = None) -> None:
        self.endpoint = endpoint
        self.config = config
        self.location = location
        self.bus = bus
        realm = config.sip.domain or "appliance"
        self.digest = DigestServer(realm, secret or secrets.token_bytes(32),
                                   algorithms=tuple(config.sip.auth_algorithms))
        self.registrar = Registrar(self)
        self.calls: set[Call] = set()
        # (Call-ID, our tag) → the call leg that dialog belongs to
        self.dialogs: dict[tuple[str, str], Leg] = {}
        self._stateless_tag = new_tag()
        self.user_agent = config.sip.user_agent
        self.allow = ALLOW
        self.pending_byes: set[Any] = set()

    def outstanding_byes(self) -> bool:
        return bool(self.pending_byes)

    def binding_peer(self, binding: Binding) -> Peer:
        """Where to reach a registered contact: the flow it registered over while that
        connection lives (RFC 5626 §5.3), else the Contact's own address."""
        peer = binding.peer
        if peer.transport == "udp" or self.endpoint.transports.has_connection(peer.conn):
            return peer
        try:
            uri = NameAddr(binding.contact).parsed_uri
        except ParseError:
            return peer
        if not isinstance(uri, SipURI):
            return peer
        transport = uri.transport or ("tls" if uri.secure else "udp")
        port = uri.port or (5061 if transport == "tls" else 5060)
        return Peer(transport, uri.host_bare, port)

    # -- helpers used by the registrar and calls ------------------------------
    def password_of(self, user: str) -> str | None:
        ext = self.config.extensions.get(user)
        return ext.password if ext else None

    def tag_for(self, req: Request) -> str:
        """A To tag for final responses outside any dialog (stable per request)."""
        return req.to.tag or self._stateless_tag

    def reply(self, txn: ServerTransaction, status: int, reason: str | None = None,
              **headers: str) -> Response:
        resp = make_response(txn.request, status, reason, to_tag=self.tag_for(txn.request))
        for name, value in headers.items():
            resp.headers.add(name.replace("_", "-"), value)
        if status == 405:
            resp.headers.add("allow", ALLOW)
        self.endpoint.respond(txn, resp)
        return resp

    # -- the TU entry point ------------------------------------------------------
    def handle_event(self, ev: Any) -> None:
        if isinstance(ev, RequestReceived):
            self._on_request(ev.txn, ev.request, ev.source)
        elif isinstance(ev, ResponseReceived):
            owner = ev.txn.user_data if ev.txn is not None else self._stray_owner(ev.response)
            if owner is not None:
                owner.on_response(ev.txn, ev.response)
        elif isinstance(ev, TransactionTimeout | TransportError):
            owner = ev.txn.user_data
            if isinstance(ev.txn, ClientTransaction) and owner is not None:
                owner.on_failure(ev.txn, 408 if isinstance(ev, TransactionTimeout) else 503)
            elif isinstance(ev.txn, ServerTransaction) and owner is not None:
                owner.on_server_failure(ev.txn)
        elif isinstance(ev, AckTimeout):
            owner = ev.txn.user_data
            if owner is not None:
                owner.on_ack_timeout(ev.txn)

    def _stray_owner(self, resp: Response) -> Any:
        """A 2xx retransmission after its client transaction ended: its dialog's leg."""
        leg = self.dialogs.get((resp.call_id, resp.from_.tag or ""))
        return leg

    def _on_request(self, txn: ServerTransaction | None, req: Request, source: Any) -> None:
        method = req.method
        to_tag = req.to.tag
        if txn is None:  # an ACK for a 2xx (RFC 6026): belongs to a dialog, or nothing
            leg = self.dialogs.get((req.call_id, to_tag or ""))
            if leg is not None:
                leg.on_ack(req)
            return
        if method == "CANCEL":
            invite = txn.cancels
            if invite is None or invite.user_data is None:
                self.reply(txn, 481, "Call/Transaction Does Not Exist")
                return
            self.reply(txn, 200, "OK")
            invite.user_data.on_cancel(invite)
            return
        if to_tag:
            leg = self.dialogs.get((req.call_id, to_tag))
            if leg is None:
                self.reply(txn, 481, "Call/Transaction Does Not Exist")
                return
            leg.on_request(txn, req)
            return
        if method == "REGISTER":
            self.registrar.handle(txn, req, source)
        elif method == "INVITE":
            from .call import Call
            Call(self, txn, req, source).start()
        elif method == "OPTIONS":
            self.reply(txn, 200, "OK", allow=ALLOW, supported=SUPPORTED, accept=ACCEPT,
                       accept_language="en", user_agent=self.user_agent)
        elif method in ("BYE", "PRACK", "UPDATE", "INFO"):
            self.reply(txn, 481, "Call/Transaction Does Not Exist")
        elif method in ("MESSAGE", "NOTIFY", "SUBSCRIBE", "PUBLISH", "REFER"):
            self.reply(txn, 405, "Method Not Allowed")
        else:
            self.reply(txn, 501, "Not Implemented", allow=ALLOW)

    # -- shutdown ---------------------------------------------------------------------
    def hang_up_all(self) -> int:
        """SIGTERM: end every call with BYE (or CANCEL/487 while ringing)."""
        calls = list(self.calls)
        for call in calls:
            call.terminate("shutdown")
        return len(calls)
