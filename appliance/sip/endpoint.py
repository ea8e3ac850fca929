"""The asyncio driver that joins transports, the sans-IO transaction layer and the TU.

Bytes in → parse → validate (§8.2) → stamp received/rport (§18.2.1, RFC 3581) →
transaction layer → events to the transaction user (the PBX). Whatever the
layer queues is sent, and one loop timer tracks the layer's earliest deadline.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Protocol

from .message import (
    Headers,
    ParseError,
    Request,
    Response,
    Via,
    make_response,
    own_via,
    parse_message,
    split_list,
    unsupported_options,
    validate_request,
    validate_response,
)
from .transaction import (
    ClientTransaction,
    Event,
    Peer,
    ServerTransaction,
    Timers,
    TransactionLayer,
    new_branch,
)
from .transport import Transports

log = logging.getLogger("appliance.sip")
trace_log = logging.getLogger("appliance.sip.trace")


class TransactionUser(Protocol):
    def handle_event(self, event: Event) -> None: ...


class Endpoint:
    """Owns the SIP sockets and the transaction layer; hands events to the TU."""

    def __init__(self, timers: Timers | None = None, trace: bool = False) -> None:
        self.loop = asyncio.get_event_loop()
        self.layer = TransactionLayer(timers or Timers())
        self.trace = trace
        self.tu: TransactionUser | None = None
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # phones and carriers commonly use self-signed certs
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self.transports = Transports(self._on_bytes, self._on_transport_error, ctx)
        self.transports.on_unframeable = self._reject_unparseable
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.bind_host = "0.0.0.0"
        self._local_ip_cache: dict[str, str] = {}
        self.on_idle: Callable[[], None] | None = None
        self.received = 0   # messages in (the daemon's idle detection)
        # b";tag=" + the To tag of our stateless answers (digest challenges): an ACK that
        # carries it is dropped unparsed, as a stateless UAS ignores it (§8.2.7)
        self.stateless_ack_mark = b""
        # The registrar's express path (Registrar.express): a REGISTER datagram it
        # answered (True), or left to the general path (False).
        self.express_register: Callable[[bytes, Peer], bool] | None = None
        # The PBX's express challenge (Pbx.express_invite): an INVITE without
        # credentials it answered with a 407 (True), or left to the general path (False).
        self.express_invite: Callable[[bytes, Peer], bool] | None = None
        # The PBX's express ACK (Pbx.express_ack): the ACK of a 200 within its dialogs,
        # handed on (True), or left to the general path (False).
        self.express_ack: Callable[[bytes, Peer], bool] | None = None

    async def start(self, bind: str, udp_port: int, tcp_port: int, tls_port: int | None,
                    server_ssl: ssl.SSLContext | None, udp_group: int = 0) -> dict[str, int]:
        """Listen; `udp_group` > 0: the UDP port is shared with that many processes in
        all, this one first (appliance/workers.py)."""
        self.bind_host = bind
        ports = {"udp": await self.transports.listen_udp(bind, udp_port, steer=udp_group)}
        ports["tcp"] = await self.transports.listen_stream("tcp", bind, tcp_port or ports["udp"])
        if tls_port is not None and server_ssl is not None:
            ports["tls"] = await self.transports.listen_stream("tls", bind, tls_port, server_ssl)
        return ports

    async def close(self) -> None:
        if self._timer:
            self._timer.cancel()
        await self.transports.close()

    @property
    def now(self) -> float:
        return self.loop.time()

    # -- addresses ------------------------------------------------------------
    def local_host(self, peer: Peer | None = None) -> str:
        """The address a peer can reach us at (for Via, Contact, SDP-free headers)."""
        if self.bind_host not in ("0.0.0.0", "::", ""):
            return self.bind_host
        target = peer.host if peer else "127.0.0.1"
        cached = self._local_ip_cache.get(target)
        if cached:
            return cached
        try:
            ip = ipaddress.ip_address(target)
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((target, 9))  # a route lookup; nothing is sent on UDP connect
                local = s.getsockname()[0]
        except (OSError, ValueError):
            local = "127.0.0.1"
        self._local_ip_cache[target] = local
        return local

    def local_port(self, transport: str) -> int:
        return self.transports.local.get(transport, ("", 5060))[1]

    def hostport(self, peer: Peer) -> str:
        host = self.local_host(peer)
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{self.local_port(peer.transport)}"

    def make_via(self, peer: Peer) -> str:
        return own_via(peer.transport, self.local_host(peer), self.local_port(peer.transport),
                       new_branch())

    def contact_uri(self, peer: Peer, user: str | None = None) -> str:
        """Our Contact for a peer: `sip:` with `;transport=` (RFC 5630 §3.1.3: sips would
        promise TLS on every hop, which we cannot, and some phones do not take it)."""
        userpart = f"{user}@" if user else ""
        tp = f";transport={peer.transport}" if peer.transport != "udp" else ""
        return f"sip:{userpart}{self.hostport(peer)}{tp}"

    # -- sending ----------------------------------------------------------------
    def send_request(self, request: Request, peer: Peer) -> ClientTransaction:
        txn = self.layer.send_request(request, peer, self.now)
        self.pump()
        return txn

    def respond(self, txn: ServerTransaction, response: Response) -> None:
        self.layer.respond(txn, response, self.now)
        self.pump()

    def respond_stateless(self, txn: ServerTransaction, response: Response) -> None:
        self.layer.respond_stateless(txn, response)
        self.pump()

    def send_stateless(self, msg: Request | Response, peer: Peer) -> None:
        self.layer.send_stateless(msg, peer)
        self.pump()

    def send_bytes(self, peer: Peer, data: bytes) -> None:
        """A serialized message outside any transaction (an ACK for a 2xx sent again)."""
        self.layer.send_bytes(peer, data)
        self.pump()

    # -- receiving ----------------------------------------------------------------
    def _on_bytes(self, data: bytes, peer: Peer) -> None:
        self.received += 1
        if self.trace:
            trace_log.info("<<< %s %s:%s\n%s", peer.transport, peer.host, peer.port,
                           data.decode("utf-8", "replace"))
        mark = self.stateless_ack_mark
        if mark and data.startswith(b"ACK ") and mark in data:
            return
        if peer.transport == "udp":
            if data.startswith(b"REGISTER "):
                express = self.express_register
            elif data.startswith(b"INVITE "):
                express = self.express_invite
            elif data.startswith(b"ACK "):
                express = self.express_ack
            else:
                express = None
            if express is not None:
                try:
                    done = express(data, peer)
                except Exception:  # never take the daemon down; the datagram is dropped
                    log.exception("express path failed on %s from %s:%s",
                                  data[:data.find(b" ")].decode(), peer.host, peer.port)
                    return
                if done:
                    self.pump()
                    return
        try:
            msg = parse_message(data, stream=peer.reliable)
        except ParseError as e:
            self._reject_unparseable(data, peer, e)
            return
        if isinstance(msg, Request):
            problem = validate_request(msg)
            if problem is not None:
                log.info("rejecting %s from %s:%s: %s %s", msg.method, peer.host, peer.port,
                         *problem)
                if msg.method != "ACK" and msg.headers.get("via"):
                    self._send_stateless_reply(msg, peer, *problem)
                return
            _stamp_via(msg, peer)
        else:
            why = validate_response(msg)
            if why is not None:
                log.info("dropping response from %s:%s: %s", peer.host, peer.port, why)
                return
        try:
            self.layer.receive(msg, peer, self.now)
        except Exception:  # the layer must never take the daemon down
            log.exception("transaction layer failed on input from %s:%s", peer.host, peer.port)
        self.pump()

    def _send_stateless_reply(self, request: Request, peer: Peer, status: int,
                              reason: str) -> None:
        """A response with no transaction: to requests refused before the layer sees them."""
        try:
            _stamp_via(request, peer)
            dest = self.layer.response_peer(request, peer)
        except ParseError:
            dest = peer
        resp = make_response(request, status, reason)
        if status == 420:
            resp.headers.add("unsupported", ", ".join(unsupported_options(request)))
        self.send_stateless(resp, dest)

    def _reject_unparseable(self, data: bytes, peer: Peer, err: ParseError) -> None:
        """Answer 400 (or the error's status) to a request we could not parse (RFC 4475)."""
        log.info("unparseable message from %s:%s: %s", peer.host, peer.port, err.reason)
        text = data.decode("utf-8", "replace")
        first, _, rest = text.partition("\n")
        if first.startswith("SIP/") or first.startswith("ACK "):
            return  # never answer a response or an ACK
        h = Headers()
        for line in rest.split("\n"):
            line = line.rstrip("\r")
            if not line:
                break
            name, colon, value = line.partition(":")
            key = name.strip().lower()
            if colon and key in ("via", "v", "from", "f", "to", "t", "call-id", "i", "cseq"):
                h.add(key, value.strip())
        if "via" not in h:
            return
        resp = Response(err.status, err.reason, h)
        self.send_stateless(resp, peer)

    def _on_transport_error(self, peer: Peer) -> None:
        self.layer.transport_error(peer, self.now)
        self.pump()

    # -- the pump ------------------------------------------------------------------
    def pump(self) -> None:
        layer = self.layer
        tu = self.tu
        while True:
            ev = layer.next_event()
            if ev is None:
                break
            if tu is not None:
                try:
                    tu.handle_event(ev)
                except Exception:
                    log.exception("error handling %s", type(ev).__name__)
        send = self.transports.send
        for peer, data in layer.datagrams_to_send():
            if self.trace:
                trace_log.info(">>> %s %s:%s\n%s", peer.transport, peer.host, peer.port,
                               data.decode("utf-8", "replace"))
            try:
                send(peer, data)
            except OSError as e:
                log.info("send to %s:%s failed: %s", peer.host, peer.port, e)
        self._arm_timer()

    def _arm_timer(self) -> None:
        deadline = self.layer.wake_by()
        if deadline is None:
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.layer.handle_timer(self.now)
        self.pump()


def needs_stamp(via: Via, peer: Peer) -> bool:
    """Whether stamp_received changes `via`: a `received` is due (§18.2.1) or a bare
    `rport` asks for the port (RFC 3581 §4)."""
    return via.host.strip("[]") != peer.host or ("rport" in via.params
                                                  and via.params["rport"] is None)


def stamp_received(via: Via, peer: Peer) -> Via | None:
    """§18.2.1 received, RFC 3581 §4 rport, on a request's top Via: the Via stamped, a
    new one (a parsed Via is shared, appliance/sip/memo.py); None if nothing changes."""
    if not needs_stamp(via, peer):
        return None
    params = dict(via.params)
    params["received"] = peer.host
    if "rport" in params and params["rport"] is None:
        params["rport"] = str(peer.port)
    return Via(via.transport, via.host, via.port, params)


def stamped_text(via: Via, peer: Peer, stamped: Via | None = None) -> str:
    """str(stamp_received(via, peer)), for a `via` that needs_stamp (`stamped`: that
    stamp, if made already): where the text `via` was read from is how it prints
    (`Via.text`) and has no `received` yet, that text with `=port` after a bare `rport`
    and `;received=host` after the rest, as the stamped parameters print, and no
    stamped Via built. With it a registration's two answers took 12k instructions
    instead of 17k (callgrind)."""
    text = via.text
    params = via.params
    if text is not None and "received" not in params:
        if "rport" not in params or params["rport"] is not None:
            return f"{text};received={peer.host}"
        at = text.find(";rport;")
        if at < 0 and text.endswith(";rport"):
            at = len(text) - 6
        if at >= 0:
            return f"{text[:at + 6]}={peer.port}{text[at + 6:]};received={peer.host}"
    return str(stamped if stamped is not None else stamp_received(via, peer))


def _stamp_via(req: Request, peer: Peer) -> None:
    """stamp_received on the top Via of a request, and its header line rewritten."""
    top = req.top_via
    via = stamp_received(top, peer)
    if via is not None:
        req.vias[0] = via  # the stamped Via, cached for the layers above
        # Rewrite only the first Via value; later ones stay byte-identical.
        headers = req.headers
        items = headers._items
        for i, (k, v) in enumerate(items):
            if k == "via":
                rest = _after_first_value(v) if "," in v else ""
                text = stamped_text(top, peer, via) + (", " + rest if rest else "")
                items[i] = ("via", text)
                index = headers._index
                if index is not None:
                    index["via"] = (text, *index["via"][1:])  # the first Via line, as in _items
                break


def _after_first_value(value: str) -> str:
    return ", ".join(split_list(value)[1:])
