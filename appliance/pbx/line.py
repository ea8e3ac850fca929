"""Outbound lines: accounts the box registers with at a VoIP provider (RFC 3261 §10.2).

Each line is a small client state machine: resolve the provider (RFC 3263),
REGISTER, answer the digest challenge (401 or 407, MD5 or SHA-256), honour
423 Min-Expires, refresh before expiry, and on failure retry with exponential
back-off. Every state change is published on the bus as `LineStateChanged`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..sip.dialog import new_call_id, new_tag
from ..sip.digest import DigestError, answer_challenge, parse_challenge, select_challenge
from ..sip.message import Headers, Request, Response
from ..sip.transaction import ClientTransaction, Peer
from ..store.config import Config, Line

if TYPE_CHECKING:
    from .core import Pbx

log = logging.getLogger("appliance.line")

RETRY_MAX = 300.0   # back-off ceiling (or the line's retry_interval, if longer)


@dataclass(frozen=True, slots=True)
class LineStateChanged:
    line: str
    state: str          # "registering" | "registered" | "failed" | "unregistered"
    reason: str = ""
    expires: int = 0


def ruri_params(cfg: Config, line_params: str | None) -> str:
    """The Request-URI parameters for a line: its own, else `user=phone` for Chinese."""
    if line_params is not None:
        return line_params
    return "user=phone" if cfg.system.language == "zh" else ""


def with_params(uri: str, params: str) -> str:
    return f"{uri};{params}" if params else uri


class LineRegistration:
    """Keeps one line registered; `state` mirrors the last LineStateChanged."""

    def __init__(self, pbx: Pbx, name: str, line: Line) -> None:
        self.pbx = pbx
        self.name = name
        self.line = line
        self.state = "unregistered"
        self.reason = ""
        self.call_id = new_call_id(secrets.token_hex(4))
        self.tag = new_tag()
        self.cseq = random.randint(1, 10_000)
        self.failures = 0
        self.peer: Peer | None = None
        self.targets: list[Peer] = []
        self.expires = line.expires
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None
        self._auth_tried = False
        self.closed = False

    @property
    def domain(self) -> str:
        return self.line.domain or self.line.host

    @property
    def auth_user(self) -> str:
        return self.line.auth_user or self.line.account

    def start(self) -> None:
        if self.line.register:
            self._schedule(0)

    def stop(self) -> None:
        self.closed = True
        if self._timer:
            self._timer.cancel()
        if self._task:
            self._task.cancel()

    def _set(self, state: str, reason: str = "") -> None:
        if (state, reason) == (self.state, self.reason):
            return
        self.state, self.reason = state, reason
        level = logging.WARNING if state == "failed" else logging.INFO
        log.log(level, "line %s: %s%s", self.name, state, f" ({reason})" if reason else "")
        self.pbx.bus.publish(LineStateChanged(self.name, state, reason,
                                              self.expires if state == "registered" else 0))

    def _schedule(self, delay: float) -> None:
        if self.closed:
            return
        if self._timer:
            self._timer.cancel()
        loop = self.pbx.endpoint.loop
        self._timer = loop.call_later(delay, lambda: self._spawn())

    def _spawn(self) -> None:
        self._task = self.pbx.endpoint.loop.create_task(self._register())

    async def _register(self) -> None:
        self._set("registering" if self.state != "registered" else "registered", self.reason)
        peers = await self.pbx.resolve(self.line.host, self.line.port, self.line.transport)
        if not peers:
            self._failed(f"cannot resolve {self.line.host}")
            return
        self.targets = peers
        self._try(peers[0])

    def _try(self, peer: Peer) -> None:
        self.peer = peer
        self._auth_tried = False
        self._send(None)

    def _next_target(self, reason: str) -> None:
        """RFC 3263 §4.3: on a timeout, transport error or 503, try the next target."""
        if self.peer is not None:
            self.pbx.resolver.mark_failed(self.peer)
            rest = self.targets[self.targets.index(self.peer) + 1:] \
                if self.peer in self.targets else []
            if rest:
                log.info("line %s: %s at %s:%s, trying %s:%s", self.name, reason,
                         self.peer.host, self.peer.port, rest[0].host, rest[0].port)
                self._try(rest[0])
                return
        self._failed(reason)

    def _send(self, authorization: tuple[str, str] | None) -> None:
        assert self.peer is not None
        ep = self.pbx.endpoint
        cfg = self.pbx.config
        self.cseq += 1
        aor = f"sip:{self.line.account}@{self.domain}"
        h = Headers()
        h.add("via", ep.make_via(self.peer))
        h.add("max-forwards", "70")
        h.add("from", f"<{aor}>;tag={self.tag}")
        h.add("to", f"<{aor}>")
        h.add("call-id", self.call_id)
        h.add("cseq", f"{self.cseq} REGISTER")
        h.add("contact", f"<{ep.contact_uri(self.peer, self.line.account)}>")
        h.add("expires", str(self.expires))
        h.add("allow", self.pbx.allow)
        h.add("user-agent", self.pbx.user_agent)
        if authorization:
            h.add(*authorization)
        uri = with_params(f"sip:{self.domain}", ruri_params(cfg, self.line.ruri_params))
        txn = ep.send_request(Request("REGISTER", uri, h), self.peer)
        txn.user_data = self

    # -- transaction callbacks ----------------------------------------------------------
    def on_response(self, txn: ClientTransaction | None, resp: Response) -> None:
        if resp.status < 200 or txn is None or self.closed:
            return
        st = resp.status
        if st in (401, 407):
            self._on_challenge(txn, resp)
        elif st == 423:
            # §10.2.8: retry with at least Min-Expires.
            me = resp.headers.get("min-expires") or ""
            if me.isdigit() and int(me) > self.expires:
                self.expires = int(me)
                self._send(None)
            else:
                self._failed("423 without a usable Min-Expires")
        elif 200 <= st < 300:
            self.pbx.resolver.mark_ok(self.peer) if self.peer else None
            self._on_ok(resp)
        elif st == 503:
            self._next_target("503 Service Unavailable")
        else:
            self._failed(f"{st} {resp.reason}")

    def on_failure(self, txn: ClientTransaction, status: int) -> None:
        if not self.closed:
            self._next_target("no answer from the provider" if status == 408
                              else "transport error")

    def _on_challenge(self, txn: ClientTransaction, resp: Response) -> None:
        name = "www-authenticate" if resp.status == 401 else "proxy-authenticate"
        try:
            challenges = [parse_challenge(v) for v in resp.headers.get_all(name)]
            chosen = select_challenge(challenges)
        except (DigestError, ValueError):
            self._failed(f"{resp.status} with an unusable challenge")
            return
        if self._auth_tried and not chosen.stale:
            self._failed("authentication rejected: check account, auth user and password")
            return
        self._auth_tried = True
        uri = txn.request.uri
        creds = answer_challenge(chosen, "REGISTER", uri, self.auth_user, self.line.password)
        header = "authorization" if resp.status == 401 else "proxy-authorization"
        self._send((header, creds.to_header()))

    def _on_ok(self, resp: Response) -> None:
        # §10.2.4: the expiry granted is our Contact's expires param, else Expires.
        granted = self.expires
        exp = resp.headers.get("expires")
        if exp and exp.isdigit():
            granted = int(exp)
        mine = self.pbx.endpoint.contact_uri(self.peer, self.line.account) if self.peer else ""
        for c in resp.contacts:
            value = c.params.get("expires") or ""
            if c.uri == mine and value.isdigit():
                granted = int(value)
        self.failures = 0
        self.expires = self.line.expires
        self._set("registered", "")
        # Refresh ahead of expiry: at 85% of the interval, at least 5 s before it ends.
        self._schedule(max(1.0, min(granted * 0.85, granted - 5)))

    def _failed(self, reason: str) -> None:
        self.failures += 1
        self._set("failed", reason)
        first = float(self.line.retry_interval)
        delay = min(max(RETRY_MAX, first), first * 2 ** min(self.failures - 1, 20))
        self._schedule(delay * random.uniform(0.8, 1.0))


def is_address_of(host: str, addresses: list[str]) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    for a in addresses:
        try:
            if ip in ipaddress.ip_network(a, strict=False):
                return True
        except ValueError:
            continue
    return False
