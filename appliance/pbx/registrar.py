"""The registrar (RFC 3261 §10.3) with digest authentication (RFC 8760)."""

from __future__ import annotations

import logging
from email.utils import formatdate
from functools import lru_cache
from typing import TYPE_CHECKING

from ..bus import ExtensionRegistered, ExtensionUnregistered
from ..sip.digest import DigestError, Verdict, parse_credentials
from ..sip.express import finish, response_head
from ..sip.message import ParseError, Request, Response, Via, make_response
from ..sip.register import RegisterRequest, read_register
from ..sip.transaction import Peer, ServerTransaction, reply_peer, server_key
from ..sip.uri import SipURI, TelURI
from .location import Binding

if TYPE_CHECKING:
    from .core import Pbx

log = logging.getLogger("appliance.registrar")


@lru_cache(maxsize=4)
def _http_date(second: int) -> str:
    """The Date header of a 200 to REGISTER (§20.17), formatted once per second."""
    return formatdate(second, usegmt=True)


class Registrar:
    def __init__(self, pbx: Pbx) -> None:
        self.pbx = pbx

    def handle(self, txn: ServerTransaction, req: Request, source: Peer) -> None:
        pbx = self.pbx
        user = authenticate(pbx, txn, req, "authorization", 401)
        if user is None:
            return
        try:
            to_uri = req.to.parsed_uri
        except ParseError as e:
            pbx.reply(txn, 400, e.reason)
            return
        aor = to_uri.user if isinstance(to_uri, SipURI | TelURI) else None
        if aor != user:
            # §10.3 step 6: the authenticated user may not register another AOR.
            pbx.reply(txn, 403, "Forbidden")
            return
        self._bind(txn, req, source, aor)

    def _bind(self, txn: ServerTransaction, req: Request, source: Peer, aor: str) -> None:
        pbx = self.pbx
        now = pbx.clock()
        call_id = req.call_id
        cseq = req.cseq[0]
        try:
            contacts = req.contacts
        except ParseError as e:
            pbx.reply(txn, 400, e.reason)
            return
        header_expires = req.headers.get("expires")
        if contacts and contacts[0].uri == "*":
            # §10.3 step 6: '*' only alone and with Expires: 0.
            if len(contacts) != 1 or header_expires != "0":
                pbx.reply(txn, 400, "Invalid wildcard Contact")
                return
            for b in pbx.location.bindings(aor, now):
                if b.call_id == call_id and cseq <= b.cseq:
                    pbx.reply(txn, 500, "Out of order CSeq")
                    return
            for b in pbx.location.remove_all(aor):
                pbx.bus.publish(ExtensionUnregistered(aor, b.contact, "unregistered"))
            self._ok(txn, req, aor, now)
            return
        changes = self._changes(aor, call_id, cseq, [(c.uri, c.params) for c in contacts],
                                header_expires)
        if isinstance(changes, Refusal):
            pbx.reply(txn, changes.status, changes.reason, **changes.headers)
            return
        self._apply(aor, changes, call_id, cseq, source, req.headers.get_all("path"),
                    req.headers.get("user-agent") or "", now)
        self._ok(txn, req, aor, now)

    def _changes(self, aor: str, call_id: str, cseq: int,
                 contacts: list[tuple[str, dict[str, str | None]]],
                 header_expires: str | None) -> list[tuple[str, int, float]] | Refusal:
        """§10.3 steps 7–8: each Contact's expiry and q, or why the request is refused."""
        cfg = self.pbx.config.sip
        changes: list[tuple[str, int, float]] = []
        for uri, params in contacts:
            raw = params.get("expires", header_expires)
            if raw is None:
                expires = cfg.default_expires
            elif raw.isdigit():
                expires = int(raw)
            else:
                expires = cfg.default_expires  # §10.3 step 7: unparseable → default
            if 0 < expires < cfg.min_expires:
                return Refusal(423, "Interval Too Brief", {"min_expires": str(cfg.min_expires)})
            expires = min(expires, cfg.max_expires)
            q = 1.0
            qv = params.get("q")
            if qv is not None:
                try:
                    q = max(0.0, min(1.0, float(qv)))
                except ValueError:
                    return Refusal(400, "Bad q value")
            changes.append((uri, expires, q))
        loc = self.pbx.location
        for uri, _, _ in changes:
            existing = loc.get(aor, uri)
            if existing and existing.call_id == call_id and cseq <= existing.cseq:
                return Refusal(500, "Out of order CSeq")
        return changes

    def _apply(self, aor: str, changes: list[tuple[str, int, float]], call_id: str,
               cseq: int, source: Peer, path: list[str], ua: str, now: float) -> None:
        """§10.3 step 8: the bindings added, refreshed or removed."""
        pbx = self.pbx
        loc = pbx.location
        for uri, expires, q in changes:
            if expires == 0:
                if loc.remove(aor, uri) is not None:
                    pbx.bus.publish(ExtensionUnregistered(aor, uri, "unregistered"))
                continue
            fresh = loc.get(aor, uri) is None
            loc.put(aor, Binding(uri, now + expires, call_id, cseq, source, q, path, ua))
            if fresh:
                log.info("extension %s registered %s via %s %s:%s", aor, uri,
                         source.transport, source.host, source.port)
                pbx.bus.publish(ExtensionRegistered(aor, uri, expires))

    def _contacts(self, aor: str, now: float) -> list[str]:
        """§10.3 step 8: the 200 lists every current binding of the AOR."""
        return [f"<{b.contact}>;expires={b.expires_in(now)}"
                for b in self.pbx.location.bindings(aor, now)]

    def _ok(self, txn: ServerTransaction, req: Request, aor: str, now: float) -> None:
        pbx = self.pbx
        resp: Response = make_response(req, 200, "OK", to_tag=pbx.tag_for(req))
        for value in self._contacts(aor, now):
            resp.headers.add("contact", value)
        if req.headers.get("path"):
            resp.headers.add("supported", "path")
        resp.headers.add("date", _http_date(int(now)))
        pbx.endpoint.respond(txn, resp)

    # -- the express path ------------------------------------------------------------
    def express(self, data: bytes, source: Peer) -> bool:
        """Answer a REGISTER datagram of the common shape without building a `Request`
        (appliance/sip/register.py): the same checks, registrar steps and answers as
        `handle`, written straight from the request's lines. False: nothing was done,
        the general path takes the datagram (every case this one does not cover, each
        decided before anything changes: a nonce's use is counted last)."""
        r = read_register(data)
        if r is None or r.via is None:
            return False
        via = r.via
        pbx = self.pbx
        endpoint = pbx.endpoint
        layer = endpoint.layer
        key = server_key(via, "REGISTER")
        if key is None:
            return False  # RFC 2543 transaction matching (§17.2.3): the general path
        if layer.has_server(key):
            return False  # a retransmission: the transaction answers it (§17.2.2)
        digest = pbx.digest
        now = pbx.clock()
        stale = False
        if r.authorization is not None:
            try:
                creds = parse_credentials(r.authorization)
            except DigestError:
                return False
            aor = r.aor
            if creds.realm != digest.realm or aor is None or creds.username != aor:
                return False  # §10.3 step 6's 403, or a challenge: the general path
            changes = self._changes(aor, r.call_id, r.cseq_num,
                                    [] if r.contact is None else [(r.contact, r.contact_params)],
                                    r.expires)
            if isinstance(changes, Refusal):
                return False
            verdict = digest.verify(creds, "REGISTER", pbx.password_of, now)
            if verdict is Verdict.OK:
                peer = reply_peer(via, source)
                self._apply(aor, changes, r.call_id, r.cseq_num, source, [], r.user_agent, now)
                lines = self._contacts(aor, now)
                head = [_response_head(r, via, source, "SIP/2.0 200 OK", pbx.stateless_tag)]
                head.extend(["Contact: " + c for c in lines])
                head.append("Date: " + _http_date(int(now)))
                layer.answered(key, source, peer, finish(head), endpoint.now)
                return True
            if verdict is Verdict.FOREIGN:
                return False  # the general path hands it on, or re-challenges
            if verdict is Verdict.STALE:
                stale = True
            else:
                log.info("REGISTER authentication failed for %r from %s", creds.username,
                         source.host)
        # A challenge, as `authenticate` sends it: stateless (§8.2.7).
        head = [_response_head(r, via, source, "SIP/2.0 401 Unauthorized",
                               pbx.stateless_tag)]
        head.extend(["WWW-Authenticate: " + v for v in digest.challenge_headers(now, stale)])
        layer.send_bytes(reply_peer(via, source), finish(head))
        return True


class Refusal:
    """A final response the registrar refuses a REGISTER with, and its extra headers."""

    __slots__ = ("status", "reason", "headers")

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers or {}


def _response_head(r: RegisterRequest, via: Via, source: Peer, status_line: str,
                   tag: str) -> str:
    return response_head(status_line, r.via_text, via, source, r.from_, r.to, r.call_id,
                         r.cseq, tag)


def authenticate(pbx: Pbx, txn: ServerTransaction, req: Request, header: str,
                 status: int) -> str | None:
    """Check digest credentials; answer the challenge (401/407) and return None if absent
    or wrong. Unknown users and wrong passwords get byte-for-byte the same answer shape."""
    digest = pbx.digest
    now = pbx.clock()
    stale = False
    for value in req.headers.get_all(header):
        try:
            creds = parse_credentials(value)
        except DigestError:
            continue
        if creds.realm != digest.realm:
            continue
        verdict = digest.verify(creds, req.method, pbx.password_of, now)
        if verdict is Verdict.OK:
            return creds.username
        if verdict is Verdict.FOREIGN:
            # Another process's nonce: a worker hands the request to the daemon, which
            # counts its own nonces (and trusts a worker's it is handed with b"V"); the
            # daemon, or a worker that cannot hand on, challenges afresh.
            if pbx.pass_on(txn, txn.source):
                return None
            stale = True
        elif verdict is Verdict.STALE:
            stale = True
        else:
            log.info("%s authentication failed for %r from %s", req.method, creds.username,
                     txn.source.host)
    resp = make_response(req, status, None, to_tag=pbx.tag_for(req))
    name = "www-authenticate" if status == 401 else "proxy-authenticate"
    for value in digest.challenge_headers(now, stale=stale):
        resp.headers.add(name, value)
    pbx.endpoint.respond_stateless(txn, resp)  # §8.2.7: challenges leave no state
    return None
