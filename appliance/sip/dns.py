"""Locating SIP servers (RFC 3263 §4) with dnspython's asyncio resolver.

This module is part of the SIP *driver*, not of the sans-IO core: it does
network I/O (through `dns.asyncresolver`) and must run on the daemon's event
loop. Time still comes from an injectable `clock`, so the cache and the
failover hold-down are testable with a fake clock; the ordering rules
(`order_srv`, `naptr_choices`) are plain functions.

How the transaction user uses it (RFC 3263 §4.3)::

    targets = await resolver.resolve(host, port, transport, secure)
    for peer in targets:
        result = await send_request(peer)            # the client transaction
        if result is timeout / transport error / 503:
            resolver.mark_failed(peer)               # next resolve() puts it last
            continue                                 # try the next target
        resolver.mark_ok(peer)
        break

`resolve()` returns an ordered list of `Peer`s (transport "udp"|"tcp"|"tls",
host an IP literal, port) and never raises dnspython's exceptions: a name that
does not exist, has no usable records or whose lookup timed out gives fewer or
no targets. Only misconfiguration (bad nameserver list, unknown transport,
"sips" over UDP, an invalid host name or port) raises `DnsError`.

Every record set (name + type) is cached for the minimum TTL of the answer
(CNAME chain included), capped at `max_ttl`; NXDOMAIN and NODATA answers for
the SOA's negative TTL (RFC 2308: min(SOA TTL, SOA MINIMUM)), or
`negative_ttl` (30 s) when the answer carries no SOA, capped at
`max_negative_ttl`; timeouts and server failures for `failure_ttl` (5 s), so a
dead DNS server does not stall every call for the full lookup timeout.
Concurrent lookups of the same record set share one query.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdatatype
import dns.resolver

from .transaction import Peer

__all__ = [
    "SipResolver", "DnsError", "Lookup", "order_srv", "naptr_choices", "default_port",
    "TRANSPORTS", "SRV_PREFIX",
]

TRANSPORTS = ("udp", "tcp", "tls")    # what we support, in our order of preference
SRV_PREFIX = {"udp": "_sip._udp", "tcp": "_sip._tcp", "tls": "_sips._tcp"}
_NAPTR_SERVICES = {"SIP+D2U": "udp", "SIP+D2T": "tcp", "SIPS+D2T": "tls"}


class DnsError(Exception):
    """Misconfiguration: bad nameservers, unknown transport, invalid name or port."""


def default_port(transport: str) -> int:
    """5061 for TLS, 5060 otherwise (RFC 3261 §19.1.2)."""
    return 5061 if transport == "tls" else 5060


@dataclass(frozen=True, slots=True)
class Lookup:
    """The outcome of one record-set lookup.

    `status` is "ok" (records present), "nodata" (name exists, no records of
    the type), "nxdomain", "timeout" or "servfail" (no usable answer from any
    nameserver: SERVFAIL, REFUSED, malformed reply...). `records` holds
    dnspython rdata objects (empty unless "ok"); `ttl` is how long the result
    is cached.
    """

    status: str
    records: tuple = ()
    ttl: float = 0.0

    @property
    def answered(self) -> bool:
        """True when a nameserver gave an authoritative yes or no."""
        return self.status in ("ok", "nodata", "nxdomain")


# -- ordering rules (pure) -----------------------------------------------------------------

def order_srv(records: Iterable, rng: random.Random | None = None) -> list:
    """RFC 2782 ordering of SRV rdatas: by priority, weighted random within one.

    Within a priority the weight-0 records are put first, then repeatedly a
    random number in [0, sum of weights] picks the first record whose running
    weight sum reaches it. A lone record with target "." (service decidedly
    not available) yields nothing.
    """
    rng = rng or random
    # Servers shuffle record sets; sort first so that a seeded rng gives one order.
    recs = sorted((r for r in records if r.target != dns.name.root),
                  key=lambda r: (r.priority, r.weight, r.port, r.target.to_text()))
    by_prio: dict[int, list] = {}
    for r in recs:
        by_prio.setdefault(r.priority, []).append(r)
    out = []
    for prio in sorted(by_prio):
        group = by_prio[prio]
        rng.shuffle(group)                           # "in any order", except that
        group.sort(key=lambda r: r.weight != 0)      # weight 0 comes first (stable sort)
        while group:
            total = sum(r.weight for r in group)
            pick = rng.randint(0, total)
            running = 0
            for i, r in enumerate(group):
                running += r.weight
                if running >= pick:
                    out.append(group.pop(i))
                    break
    return out


def naptr_choices(records: Iterable, secure: bool = False,
                  transport: str | None = None) -> list[tuple[str, dns.name.Name]]:
    """Usable NAPTR rdatas as (transport, SRV name), best first (RFC 3263 §4.1).

    Only "S" records with an empty regexp and a service we support are kept;
    a SIPS URI keeps only SIPS+D2T; ordered by (order, preference).
    """
    out = []
    for r in sorted(records, key=lambda r: (r.order, r.preference)):
        service = r.service.decode("ascii", "replace").upper()
        tr = _NAPTR_SERVICES.get(service)
        if tr is None or r.flags.decode("ascii", "replace").lower() != "s" or r.regexp:
            continue
        if (secure and tr != "tls") or (transport and tr != transport):
            continue
        out.append((tr, r.replacement))
    return out


# -- the resolver ---------------------------------------------------------------------------

class SipResolver:
    """RFC 3263 server location with a TTL cache and a failover hold-down.

    `nameservers`: None for the system resolver (/etc/resolv.conf), else
    (IP, port) pairs. `timeout`: total time for one record-set lookup.
    `clock`: monotonic seconds (cache expiry, `mark_failed`). `rng`: for the
    SRV weighted choice. `ipv6`: also look up AAAA (A records come first).
    """

    def __init__(self, nameservers: list[tuple[str, int]] | None = None,
                 timeout: float = 2.0, clock: Callable[[], float] = time.monotonic, *,
                 rng: random.Random | None = None, ipv6: bool = True,
                 negative_ttl: float = 30.0, max_negative_ttl: float = 300.0,
                 failure_ttl: float = 5.0, max_ttl: float = 86400.0,
                 failure_hold: float = 30.0) -> None:
        self.clock = clock
        self.rng = rng or random.Random()
        self.ipv6 = ipv6
        self.timeout = timeout
        self.negative_ttl = negative_ttl
        self.max_negative_ttl = max_negative_ttl
        self.failure_ttl = failure_ttl
        self.max_ttl = max_ttl
        self.failure_hold = failure_hold
        self._resolver = _make_resolver(nameservers, timeout)
        self._cache: dict[tuple[dns.name.Name, int], tuple[float, Lookup]] = {}
        self._inflight: dict[tuple[dns.name.Name, int], asyncio.Future[Lookup]] = {}
        self._failed: dict[tuple[str, str, int], float] = {}

    # -- failover ---------------------------------------------------------------------

    def mark_failed(self, peer: Peer, now: float | None = None) -> None:
        """`peer` timed out, failed at the transport or answered 503 (RFC 3263 §4.3).

        For `failure_hold` seconds resolve() puts it after the healthy targets
        (it is still returned: it may be the only one).
        """
        now = self.clock() if now is None else now
        if len(self._failed) >= 1024:  # bounded: forget hold-downs that are over
            self._failed = {k: t for k, t in self._failed.items() if t > now}
        self._failed[(peer.transport, peer.host, peer.port)] = now + self.failure_hold

    def mark_ok(self, peer: Peer) -> None:
        """`peer` answered: lift its hold-down."""
        self._failed.pop((peer.transport, peer.host, peer.port), None)

    def is_failed(self, peer: Peer, now: float | None = None) -> bool:
        now = self.clock() if now is None else now
        key = (peer.transport, peer.host, peer.port)
        until = self._failed.get(key)
        if until is None:
            return False
        if until <= now:
            del self._failed[key]
            return False
        return True

    def reorder(self, peers: Sequence[Peer], now: float | None = None) -> list[Peer]:
        """Stable partition: healthy targets first, held-down ones last."""
        now = self.clock() if now is None else now
        bad = [self.is_failed(p, now) for p in peers]
        return ([p for p, b in zip(peers, bad, strict=True) if not b]
                + [p for p, b in zip(peers, bad, strict=True) if b])

    # -- RFC 3263 -----------------------------------------------------------------------

    async def resolve(self, host: str, port: int | None, transport: str | None,
                      secure: bool = False) -> list[Peer]:
        """Ordered targets for a SIP(S) URI's host, port and transport parameter."""
        transport = _check_transport(transport, secure)
        if port is not None and (type(port) is not int or not 1 <= port <= 65535):
            raise DnsError(f"port must be 1-65535, got {port!r}")
        host = host.strip()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:  # §4.1/§4.2: a numeric address is used as it is
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if ip is not None:
            tr = transport or ("tls" if secure else "udp")
            return [Peer(tr, str(ip), port or default_port(tr))]
        name = _name(host)

        if port is not None:  # §4.2: explicit port, A/AAAA only
            tr = transport or ("tls" if secure else "udp")
            peers = await self._addresses(name, tr, port)
        else:
            peers = await self._locate(name, transport, secure)
        return self.reorder(_unique(peers))

    async def _locate(self, name: dns.name.Name, transport: str | None,
                      secure: bool) -> list[Peer]:
        srv_names: list[tuple[str, dns.name.Name]] = []
        if transport is None:  # §4.1: NAPTR
            naptr = await self.lookup(name, "NAPTR")
            srv_names = naptr_choices(naptr.records, secure)
        if not srv_names:      # no (usable) NAPTR, or a transport given: SRV per transport
            wanted = [transport] if transport else (["tls"] if secure else list(TRANSPORTS))
            srv_names = [(tr, dns.name.from_text(SRV_PREFIX[tr], origin=name))
                         for tr in wanted]
        srvs = await asyncio.gather(*(self.lookup(n, "SRV") for _, n in srv_names))
        plan: list[tuple[str, dns.name.Name, int]] = []
        for (tr, _), result in zip(srv_names, srvs, strict=True):
            plan += [(tr, r.target, r.port) for r in order_srv(result.records, self.rng)]
        if not plan:  # §4.2: no SRV, A/AAAA of the host with the default port
            tr = srv_names[0][0]  # the best NAPTR's transport, the given one, or udp/tls
            return await self._addresses(name, tr, default_port(tr))
        groups = await asyncio.gather(*(self._addresses(t, tr, p) for tr, t, p in plan))
        return [peer for g in groups for peer in g]

    async def _addresses(self, name: dns.name.Name, transport: str, port: int) -> list[Peer]:
        types = ["A", "AAAA"] if self.ipv6 else ["A"]
        results = await asyncio.gather(*(self.lookup(name, t) for t in types))
        return [Peer(transport, r.address, port) for res in results for r in res.records]

    # -- cached record-set lookups ---------------------------------------------------------

    async def lookup(self, name: str | dns.name.Name, rdtype: str) -> Lookup:
        """One record set, from the cache or the nameservers; never raises dnspython errors."""
        qname = _name(name) if isinstance(name, str) else name
        try:
            qtype = dns.rdatatype.from_text(rdtype)
        except dns.exception.DNSException as e:
            raise DnsError(f"unknown record type {rdtype!r}") from e
        key = (qname, qtype)
        now = self.clock()
        hit = self._cache.get(key)
        if hit is not None:
            if hit[0] > now:
                return hit[1]
            del self._cache[key]
        pending = self._inflight.get(key)
        if pending is None:  # one query per record set, shared by concurrent callers
            pending = asyncio.ensure_future(self._fetch(key))
            self._inflight[key] = pending
        return await asyncio.shield(pending)  # a cancelled caller leaves it to the others

    async def _fetch(self, key: tuple[dns.name.Name, int]) -> Lookup:
        try:
            result = await self._query(*key)
            if result.ttl > 0:
                self._cache[key] = (self.clock() + result.ttl, result)
            return result
        finally:
            self._inflight.pop(key, None)

    def clear_cache(self) -> None:
        self._cache.clear()

    async def _query(self, qname: dns.name.Name, qtype: int) -> Lookup:
        try:
            answer = await self._resolver.resolve(qname, qtype, raise_on_no_answer=False,
                                                  search=False, lifetime=self.timeout)
        except dns.resolver.NXDOMAIN as e:
            responses = e.kwargs.get("responses") or {}
            response = next(iter(responses.values()), None)
            return Lookup("nxdomain", (), self._negative_ttl(response))
        except dns.exception.Timeout:
            return Lookup("timeout", (), self.failure_ttl)
        except (dns.exception.DNSException, OSError, ValueError):
            # NoNameservers (SERVFAIL, REFUSED, malformed), YXDOMAIN, socket errors
            return Lookup("servfail", (), self.failure_ttl)
        if answer.rrset is None:
            return Lookup("nodata", (), self._negative_ttl(answer.response))
        ttl = min(float(answer.chaining_result.minimum_ttl), self.max_ttl)
        return Lookup("ok", tuple(answer.rrset), ttl)

    def _negative_ttl(self, response: dns.message.Message | None) -> float:
        """RFC 2308 §5: min(SOA TTL, SOA MINIMUM) of the authority section."""
        ttl = None
        if response is not None:
            for rrset in response.authority:
                if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
                    soa_ttl = min(rrset.ttl, rrset[0].minimum)
                    ttl = soa_ttl if ttl is None else min(ttl, soa_ttl)
            for rrset in response.answer:  # a CNAME leading to nothing expires with it
                ttl = rrset.ttl if ttl is None else min(ttl, rrset.ttl)
        if ttl is None:
            ttl = self.negative_ttl
        return float(min(ttl, self.max_negative_ttl))


# -- helpers --------------------------------------------------------------------------------

def _make_resolver(nameservers: list[tuple[str, int]] | None,
                   timeout: float) -> dns.asyncresolver.Resolver:
    if timeout <= 0:
        raise DnsError(f"timeout must be positive, got {timeout!r}")
    if nameservers is None:
        try:
            resolver = dns.asyncresolver.Resolver(configure=True)
        except dns.exception.DNSException as e:  # no /etc/resolv.conf, no nameserver in it
            raise DnsError(f"no system DNS configuration: {e}") from e
    else:
        if not nameservers:
            raise DnsError("nameservers must not be empty (None: the system resolver)")
        servers = []
        for entry in nameservers:
            try:
                ip, port = entry
                ip = str(ipaddress.ip_address(ip))
            except (TypeError, ValueError):
                raise DnsError(f"nameserver must be (IP, port), got {entry!r}") from None
            if type(port) is not int or not 1 <= port <= 65535:
                raise DnsError(f"nameserver port must be 1-65535, got {port!r}")
            servers.append(dns.nameserver.Do53Nameserver(ip, port))
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = servers
    resolver.cache = None            # we cache ourselves, on our clock
    resolver.lifetime = timeout      # one record-set lookup, retries included
    resolver.timeout = timeout / 2   # one try: a lost UDP datagram gets a second chance
    return resolver


def _check_transport(transport: str | None, secure: bool) -> str | None:
    if transport is None:
        return None
    tr = transport.lower()
    if tr not in TRANSPORTS:
        raise DnsError(f"unsupported transport {transport!r} (udp, tcp, tls)")
    if secure:
        if tr == "udp":
            raise DnsError("a SIPS URI cannot use transport=udp")
        tr = "tls"   # sips:...;transport=tcp means TLS over TCP (RFC 3261 §26.2.2)
    return tr


def _name(host: str) -> dns.name.Name:
    if not host:
        raise DnsError("empty host name")
    try:
        return dns.name.from_text(host)
    except dns.exception.DNSException as e:
        raise DnsError(f"invalid host name {host!r}: {e}") from e


def _unique(peers: Iterable[Peer]) -> list[Peer]:
    seen: set[Peer] = set()
    out = []
    for p in peers:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out
