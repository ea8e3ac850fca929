"""The registrar (RFC 3261 §10.3) with digest authentication (RFC 8760)."""

from __future__ import annotations

import logging
import time
from email.utils import formatdate
from functools import lru_cache
from typing import TYPE_CHECKING

from ..bus import ExtensionRegistered, ExtensionUnregistered
from ..sip.digest import DigestError, Verdict, parse_credentials
from ..sip.message import ParseError, Request, Response, make_response
from ..sip.transaction import Peer, ServerTransaction
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
        cfg = pbx.config.sip
        loc = pbx.location
        now = time.time()
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
            for b in loc.bindings(aor, now):
                if b.call_id == call_id and cseq <= b.cseq:
                    pbx.reply(txn, 500, "Out of order CSeq")
                    return
            for b in loc.remove_all(aor):
                pbx.bus.publish(ExtensionUnregistered(aor, b.contact, "unregistered"))
            self._ok(txn, req, aor, now)
            return

        changes: list[tuple[str, int, float]] = []
        for c in contacts:
            raw = c.params.get("expires", header_expires)
            if raw is None:
                expires = cfg.default_expires
            elif raw.isdigit():
                expires = int(raw)
            else:
                expires = cfg.default_expires  # §10.3 step 7: unparseable → default
            if 0 < expires < cfg.min_expires:
                resp = make_response(req, 423, "Interval Too Brief")
                resp.headers.add("min-expires", str(cfg.min_expires))
                pbx.endpoint.respond(txn, resp)
                return
            expires = min(expires, cfg.max_expires)
            q = 1.0
            qv = c.params.get("q")
            if qv is not None:
                try:
                    q = max(0.0, min(1.0, float(qv)))
                except ValueError:
                    pbx.reply(txn, 400, "Bad q value")
                    return
            changes.append((c.uri, expires, q))

        for uri, _, _ in changes:
            existing = loc.get(aor, uri)
            if existing and existing.call_id == call_id and cseq <= existing.cseq:
                pbx.reply(txn, 500, "Out of order CSeq")
                return
        path = req.headers.get_all("path")
        ua = req.headers.get("user-agent") or ""
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
        self._ok(txn, req, aor, now)

    def _ok(self, txn: ServerTransaction, req: Request, aor: str, now: float) -> None:
        pbx = self.pbx
        resp: Response = make_response(req, 200, "OK", to_tag=pbx.tag_for(req))
        for b in pbx.location.bindings(aor, now):
            resp.headers.add("contact", f"<{b.contact}>;expires={b.expires_in(now)}")
        if req.headers.get("path"):
            resp.headers.add("supported", "path")
        resp.headers.add("date", _http_date(int(now)))
        pbx.endpoint.respond(txn, resp)


def authenticate(pbx: Pbx, txn: ServerTransaction, req: Request, header: str,
                 status: int) -> str | None:
    """Check digest credentials; answer the challenge (401/407) and return None if absent
    or wrong. Unknown users and wrong passwords get byte-for-byte the same answer shape."""
    digest = pbx.digest
    now = time.time()
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
