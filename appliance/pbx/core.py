"""The PBX as the SIP transaction user: dispatches requests, responses and timeouts."""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

from ..bus import Bus
from ..sip.digest import DigestServer
from ..sip.dns import DnsError, SipResolver
from ..sip.endpoint import Endpoint
from ..sip.express import finish, read_ack, read_invite, response_head
from ..sip.message import NameAddr, ParseError, Request, Response, make_response
from ..sip.transaction import (
    OWN_PORT,
    AckTimeout,
    ClientTransaction,
    Peer,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    TransactionTimeout,
    TransportError,
    reply_peer,
    server_key,
)
from ..sip.uri import SipURI
from ..store.config import ConfigError, ConfigStore
from .dialplan import parse_feature
from .line import LineRegistration, is_address_of
from .location import Binding, Location
from .registrar import Registrar

if TYPE_CHECKING:
    from ..store.config import Config
    from .call import Call

log = logging.getLogger("appliance.pbx")


class DialogUser(Protocol):
    """Whatever owns a dialog we hold (a call's leg, an early dialog, a room participant):
    the in-dialog requests, ACKs and stray 2xx retransmissions of that dialog go to it."""

    def on_request(self, txn: ServerTransaction, req: Request) -> None: ...

    def on_ack(self, req: Request) -> None: ...

    def on_response(self, txn: ClientTransaction | None, resp: Response) -> None: ...


ALLOW: Final = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, UPDATE, INFO, PRACK, MESSAGE, NOTIFY"
SUPPORTED: Final = "path"
ACCEPT: Final = "application/sdp"


class PendingBye:
    """user_data of a BYE we sent: the PBX counts these so that shutdown can wait for
    the answers (calls and conference rooms alike). The answer is all it waits for:
    then the transaction is released, so that the 64*T1 its Timer F entry lives (and
    Timer K's T4) keep the transaction's bytes and keys, not the parsed BYE."""

    __slots__ = ("pending", "release")

    def __init__(self, pending: set[PendingBye],
                 release: Callable[[ClientTransaction], None]) -> None:
        self.pending = pending  # the PBX's `pending_byes`
        self.release = release  # the transaction layer's `release`
        pending.add(self)

    def on_response(self, txn: ClientTransaction | None, resp: Response) -> None:
        if resp.status >= 200:
            self.pending.discard(self)
            if txn is not None and txn.user_data is self:
                self.release(txn)

    def on_failure(self, txn: ClientTransaction, status: int) -> None:
        self.pending.discard(self)
        if txn.user_data is self:
            self.release(txn)


class Pbx:
    """Registrar plus back-to-back user agent for calls between extensions."""

    def __init__(self, endpoint: Endpoint, config: Config, location: Location, bus: Bus,
                 secret: bytes | None = None, store: ConfigStore | None = None) -> None:
        self.endpoint = endpoint
        self._config = config
        self.store = store
        self.lines: dict[str, LineRegistration] = {}
        self.resolver = SipResolver(_nameservers(config))
        self._host_addresses: dict[str, set[str]] = {}  # line/trunk host → addresses seen
        self._ports: Any = None
        self._conferences: Any = None
        self.location = location
        self.bus = bus
        realm = config.sip.domain or "appliance"
        secret = secret or secrets.token_bytes(32)
        # Nonce counts start now: older nonces (this key outlives the process) are stale.
        self.digest = DigestServer(realm, secret, algorithms=tuple(config.sip.auth_algorithms),
                                   tracked_since=time.time())
        self.registrar = Registrar(self)
        self.clock: Callable[[], float] = time.time  # the registrar's wall clock
        self.calls: set[Call] = set()
        # (Call-ID, our tag) → the call leg that dialog belongs to
        self.dialogs: dict[tuple[str, str], DialogUser] = {}
        # The To tag of answers outside any dialog (digest challenges among them): the same
        # in every process of the box (it comes from the nonce key), so the daemon knows
        # the ACK of a worker's challenge for one that needs no owner.
        self._stateless_tag = hashlib.blake2b(b"stateless To tag", key=secret[:64],
                                              digest_size=8).hexdigest()
        endpoint.stateless_ack_mark = f";tag={self._stateless_tag}".encode()
        endpoint.express_register = self.registrar.express
        endpoint.express_invite = self.express_invite
        endpoint.express_ack = self.express_ack
        # A SIP worker (appliance/workers.py) runs calls between extensions only, and hands
        # the rest to the daemon: `elsewhere()` hands it the datagram being handled, as it
        # arrived. The daemon hands a worker its requests before parsing them
        # (WorkerPool.dispatch).
        self.worker = False
        self.elsewhere: Callable[[bool], None] | None = None
        self.user_agent = config.sip.user_agent
        self.allow = ALLOW
        self.pending_byes: set[PendingBye] = set()

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

    # -- media: loaded on first use, so an idle box does not carry aiortc/PyAV/numpy ------
    @property
    def ports(self) -> Any:
        """The RTP port pairs of media.rtp_port_min–rtp_port_max."""
        if self._ports is None:
            from ..media.rtp import PortAllocator
            m = self._config.media
            self._ports = PortAllocator(range(m.rtp_port_min, m.rtp_port_max + 1))
        return self._ports

    @property
    def conferences(self) -> Any:
        """The conference rooms' manager, started on the first room call."""
        if self._conferences is None:
            from .conference import Conferences
            data = self.store.data_dir if self.store is not None else None
            self._conferences = Conferences(self, data=data)
            self._conferences.start()
        return self._conferences

    @conferences.setter
    def conferences(self, manager: Any) -> None:
        self._conferences = manager

    def stop_media(self) -> int:
        """Shutdown: BYE every room participant; the count of BYEs sent."""
        return self._conferences.hang_up_all() if self._conferences is not None else 0

    def close_media(self) -> None:
        if self._conferences is not None:
            self._conferences.stop()

    # -- configuration ------------------------------------------------------------
    @property
    def config(self) -> Config:
        return self._config

    @config.setter
    def config(self, cfg: Config) -> None:
        """A reloaded config.yaml: new credentials apply at once, lines re-register."""
        old = self._config
        self._config = cfg
        self.digest.algorithms = tuple(cfg.sip.auth_algorithms)
        if cfg.dns != old.dns:
            self.resolver = SipResolver(_nameservers(cfg))
        if self.worker:
            return  # lines register from the daemon only
        if cfg.lines != old.lines or cfg.system.language != old.system.language:
            self.start_lines()

    def start_lines(self) -> None:
        for reg in self.lines.values():
            reg.stop()
        self.lines = {name: LineRegistration(self, name, line)
                      for name, line in self._config.lines.items()}
        for reg in self.lines.values():
            reg.start()

    def stop_lines(self) -> None:
        for reg in self.lines.values():
            reg.stop()

    async def resolve(self, host: str, port: int | None, transport: str) -> list[Peer]:
        """RFC 3263 targets for a line or trunk host (failed ones last)."""
        try:
            peers = await self.resolver.resolve(host, port, transport)
        except DnsError as e:
            log.warning("cannot resolve %s: %s", host, e)
            return []
        self._host_addresses[host.lower()] = {p.host for p in peers}
        return peers

    def carrier_of(self, source: Peer, req: Request) -> tuple[str, str, Any] | None:
        """The line or trunk an INVITE comes from (`carrier_at`)."""
        cfg = self._config
        if not (cfg.trunks or cfg.lines):
            return None
        try:
            user = getattr(req.from_.parsed_uri, "user", None)
        except ParseError:
            user = None
        return self.carrier_at(source, user)

    def carrier_at(self, source: Peer, from_user: str | None) -> tuple[str, str, Any] | None:
        """The line or trunk an INVITE from `source` comes from, by source address
        (trunks: their configured peers, else their host's addresses; lines: their
        provider's); `from_user`: the user part of its From URI.

        A phone may share the carrier's address (same host, or behind the same NAT):
        unless the request comes from the carrier's SIP port, a From naming one of our
        extensions marks it as a phone, to be challenged like any other."""
        cfg = self._config
        phone = from_user is not None and from_user in cfg.extensions
        for name, trunk in cfg.trunks.items():
            allowed = trunk.peers or self._known_addresses(trunk.host)
            if ((trunk.allow_any_source or is_address_of(source.host, allowed))
                    and not (phone and source.port != _sip_port(trunk))):
                return "trunk", name, trunk
        for name, line in cfg.lines.items():
            reg = self.lines.get(name)
            known = self._known_addresses(line.host)
            ports = {_sip_port(line)}
            if reg is not None and reg.peer is not None:
                known = [*known, reg.peer.host]
                ports.add(reg.peer.port)
            if is_address_of(source.host, known) and not (phone and source.port not in ports):
                return "line", name, line
        return None

    def express_invite(self, data: bytes, source: Peer) -> bool:
        """Challenge an INVITE without credentials (RFC 3261 §22.3; statelessly, §8.2.7)
        straight from its header lines (appliance/sip/express.py): the 407 that
        `Call.start` and `authenticate` send, byte for byte. False: nothing was done and
        the general path takes the datagram (credentials, a caller that is no extension,
        a carrier's address, a worker that hands such INVITEs to the daemon, a
        retransmission of a transaction's INVITE, any other shape)."""
        r = read_invite(data)
        if r is None:
            return False
        cfg = self._config
        if r.from_user not in cfg.extensions:
            return False  # an unlisted source: 403
        if (cfg.trunks or cfg.lines) and (self.worker
                                          or self.carrier_at(source, r.from_user) is not None):
            return False
        via = r.via
        key = server_key(via, "INVITE")
        layer = self.endpoint.layer
        if key is None or layer.has_server(key):
            return False
        head = [response_head("SIP/2.0 407 Proxy Authentication Required", r.via_text, via,
                              source, r.from_, r.to, r.call_id, r.cseq, self._stateless_tag)]
        head.extend(["Proxy-Authenticate: " + v
                     for v in self.digest.challenge_headers(self.clock())])
        layer.send_bytes(reply_peer(via, source), finish(head))
        return True

    def express_ack(self, data: bytes, source: Peer) -> bool:
        """The ACK of a 200 within one of our dialogs, straight from its header lines
        (appliance/sip/express.py): its transaction layer's part (`ack_of_2xx`) and its
        dialog's owner, as the general path hands it on. False: nothing was done (a
        body, no dialog of ours, a branch an INVITE server transaction has, any other
        shape)."""
        r = read_ack(data)
        if r is None:
            return False
        owner = self.dialogs.get((r.call_id, r.to_tag))
        if owner is None or not self.endpoint.layer.ack_of_2xx(r.via, r.call_id, r.cseq,
                                                                  r.to_tag):
            return False
        owner.on_ack(r.request())
        return True

    def _known_addresses(self, host: str) -> list[str]:
        try:
            ipaddress.ip_address(host.strip("[]"))
            return [host.strip("[]")]
        except ValueError:
            return list(self._host_addresses.get(host.lower(), ()))

    def feature_code(self, txn: ServerTransaction, ext: str, code: str) -> None:
        """`*90*NUMBER#` … `*93#`: set or clear forwarding from the phone."""
        feature = parse_feature(code)
        if feature is None or self.store is None:
            self.reply(txn, 404, "Unknown feature code")
            return
        cfg = copy.deepcopy(self._config)
        fwd = cfg.extensions[ext].forward
        setattr(fwd, feature.kind, feature.target)
        done = (f"Forwarding {feature.kind.replace('_', ' ')} to {feature.target}"
                if feature.target else f"Forwarding {feature.kind.replace('_', ' ')} cleared")
        store = self.store

        async def save() -> None:
            try:
                await self.endpoint.loop.run_in_executor(None, store.save, cfg)
            except (ConfigError, OSError) as e:
                log.error("feature code %s from %s not saved: %s", code, ext, e)
                self.reply(txn, 500, "Could not save the setting")
                return
            self.config = cfg
            log.info("extension %s: %s", ext, done)
            # No media yet to play a confirmation: the reason phrase carries it.
            self.reply(txn, 603, done)

        self.endpoint.loop.create_task(save())

    # -- helpers used by the registrar and calls ------------------------------
    def password_of(self, user: str) -> str | None:
        ext = self.config.extensions.get(user)
        return ext.password if ext else None

    @property
    def stateless_tag(self) -> str:
        return self._stateless_tag

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

    def pass_on(self, txn: ServerTransaction | None, source: Peer,
                verified: bool = False) -> bool:
        """Hand the request being handled to the daemon (`elsewhere`, a worker's); `txn`,
        which has sent nothing, ends silently. What came to a worker's own port is that
        worker's and stays."""
        elsewhere = self.elsewhere
        if elsewhere is None or source.conn == OWN_PORT:
            return False
        if txn is not None:
            self.endpoint.layer.forget(txn)
        elsewhere(verified)  # verified: we authenticated it and counted its nonce's use
        return True

    def _on_request(self, txn: ServerTransaction | None, req: Request, source: Any) -> None:
        method = req.method
        to_tag = req.to.tag
        if txn is None:  # an ACK for a 2xx (RFC 6026): belongs to a dialog, or nothing
            leg = self.dialogs.get((req.call_id, to_tag or ""))
            if leg is not None:
                leg.on_ack(req)
            elif to_tag != self._stateless_tag:
                self.pass_on(None, source)  # a worker's: the daemon's dialog
            return
        if method == "CANCEL":
            invite = txn.cancels
            if invite is None or invite.user_data is None:
                if self.pass_on(txn, source):
                    return  # the INVITE went to the daemon
                self.reply(txn, 481, "Call/Transaction Does Not Exist")
                return
            self.reply(txn, 200, "OK")
            invite.user_data.on_cancel(invite)
            return
        if to_tag:
            leg = self.dialogs.get((req.call_id, to_tag))
            if leg is None:
                if self.pass_on(txn, source):
                    return  # another process's dialog, reached through the shared port
                self.reply(txn, 481, "Call/Transaction Does Not Exist")
                return
            leg.on_request(txn, req)
            return
        if method == "REGISTER":
            self.registrar.handle(txn, req, source)
        elif method == "INVITE":
            from .call import Call
            call = Call(self, txn, req, source)
            call.start()
            if txn.user_data is call and txn.state != "proceeding":
                # Answered at once (a digest challenge, a refusal): over before it began.
                self.endpoint.layer.release(txn)
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


def _sip_port(carrier: Any) -> int:
    """The port a line's or trunk's SIP server uses: configured, else the default."""
    return carrier.port or (5061 if carrier.transport == "tls" else 5060)


def _nameservers(cfg: Config) -> list[tuple[str, int]] | None:
    """`dns.servers` from config.yaml as (IP, port) pairs; None: the system resolver."""
    out = []
    for spec in cfg.dns.servers:
        host, sep, port = spec.rpartition(":")
        if sep and host and "." in host and port.isdigit():
            out.append((host, int(port)))
        else:
            out.append((spec.strip("[]"), 53))
    return out or None
