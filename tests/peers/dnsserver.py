"""A small authoritative DNS server for tests (dnspython), UDP and TCP on loopback.

    with DnsServer({("sip.carrier.test", "A"): ["127.0.0.1"]}) as dns_server:
        dns_server.set("_sip._udp.carrier.test", "SRV", "10 0 5070 a.carrier.test.", ttl=60)
        dns_server.set("carrier.test", "NAPTR",
                       '10 50 "s" "SIP+D2U" "" _sip._udp.carrier.test.')
        dns_server.drop("slow.carrier.test")      # queries for it are never answered
        resolver = SipResolver([dns_server.address])
        ...
        dns_server.count("sip.carrier.test", "A")  # queries seen (cache tests)

The zone is a dict {(name, type): (ttl, [rdata text, ...])} that may be changed
while the server runs (`set`, `remove`, `drop`, `drop_all`). Names are
case-insensitive, without the trailing dot. A name with records of other types
gets NODATA, an unknown name NXDOMAIN, both with the SOA of `origin` (negative
TTL `negative_ttl`) in the authority section. CNAMEs are followed inside the
zone. A UDP answer too big for the client is sent truncated (TC), so the
client retries over TCP on the same port.

One background thread serves both sockets (selectors); `stop()` (or leaving the
`with` block) closes them and joins the thread.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
from collections import Counter
from collections.abc import Iterable, Mapping

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

LOOPBACK = "127.0.0.1"

ZoneSpec = Mapping[tuple[str, str], "Iterable[str] | tuple[int, Iterable[str]]"]


def _key(name: str) -> str:
    return name.lower().rstrip(".")


class DnsServer:
    def __init__(self, zone: ZoneSpec | None = None, *, host: str = LOOPBACK,
                 port: int = 0, ttl: int = 300, origin: str = "test",
                 negative_ttl: int = 30, tcp: bool = True) -> None:
        self.host = host
        self.ttl = ttl
        self.origin = _key(origin)
        self.negative_ttl = negative_ttl
        self._want_port = port
        self._tcp_enabled = tcp
        self._lock = threading.Lock()
        self._zone: dict[tuple[str, str], tuple[int, list[str]]] = {}
        self._drop: set[str] = set()
        self._drop_all = False
        self._counts: Counter[tuple[str, str]] = Counter()
        self.queries: list[tuple[str, str, str]] = []   # (name, type, "udp"|"tcp")
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.port = 0
        for (name, rdtype), value in (zone or {}).items():
            if isinstance(value, tuple) and value and isinstance(value[0], int):
                self.set(name, rdtype, *value[1], ttl=value[0])
            else:
                self.set(name, rdtype, *value)

    # -- the zone ------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def set(self, name: str, rdtype: str, *rdatas: str, ttl: int | None = None) -> None:
        """Replace the record set (name, type); no rdatas removes it."""
        rdtype = rdtype.upper()
        for text in rdatas:  # fail here, in the test, not in the server thread
            dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), text)
        with self._lock:
            if rdatas:
                self._zone[(_key(name), rdtype)] = (self.ttl if ttl is None else ttl,
                                                     list(rdatas))
            else:
                self._zone.pop((_key(name), rdtype), None)

    def remove(self, name: str, rdtype: str | None = None) -> None:
        """Remove one record set, or every record of `name`."""
        with self._lock:
            for key in [k for k in self._zone
                        if k[0] == _key(name) and (rdtype is None or k[1] == rdtype.upper())]:
                del self._zone[key]

    def drop(self, name: str, on: bool = True) -> None:
        """Never answer queries for `name` (any type): the client times out."""
        with self._lock:
            (self._drop.add if on else self._drop.discard)(_key(name))

    def drop_all(self, on: bool = True) -> None:
        """Never answer anything (a dead resolver)."""
        self._drop_all = on

    def count(self, name: str | None = None, rdtype: str | None = None) -> int:
        """Queries received (dropped ones included) for name and/or type."""
        with self._lock:
            return sum(n for (qn, qt), n in self._counts.items()
                       if (name is None or qn == _key(name))
                       and (rdtype is None or qt == rdtype.upper()))

    def reset_counts(self) -> None:
        with self._lock:
            self._counts.clear()
            self.queries.clear()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> DnsServer:
        for _ in range(50):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                udp.bind((self.host, self._want_port))
            except OSError:
                udp.close()
                raise
            port = udp.getsockname()[1]
            tcp = None
            if self._tcp_enabled:
                tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    tcp.bind((self.host, port))
                    tcp.listen(16)
                except OSError:
                    tcp.close()
                    udp.close()
                    if self._want_port:
                        raise
                    continue
            break
        else:
            raise RuntimeError("no port free for both UDP and TCP")
        self._udp, self._tcp, self.port = udp, tcp, port
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name=f"dns-{port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        for s in (self._udp, self._tcp):
            if s is not None:
                s.close()
        self._udp = self._tcp = None

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- serving -----------------------------------------------------------------------

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        assert self._udp is not None
        sel.register(self._udp, selectors.EVENT_READ, "udp")
        if self._tcp is not None:
            sel.register(self._tcp, selectors.EVENT_READ, "tcp")
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(0.05):
                    try:
                        if key.data == "udp":
                            self._on_udp()
                        else:
                            self._on_tcp()
                    except OSError:
                        pass
        finally:
            sel.close()

    def _on_udp(self) -> None:
        assert self._udp is not None
        wire, addr = self._udp.recvfrom(65535)
        query, reply = self._handle(wire, "udp")
        if reply is None:
            return
        limit = max(512, query.payload) if query is not None and query.edns >= 0 else 512
        try:
            data = reply.to_wire(max_size=limit)
        except dns.exception.TooBig:
            reply.answer.clear()
            reply.authority.clear()
            reply.additional.clear()
            reply.flags |= dns.flags.TC
            data = reply.to_wire(max_size=limit)
        self._udp.sendto(data, addr)

    def _on_tcp(self) -> None:
        assert self._tcp is not None
        conn, _ = self._tcp.accept()
        with conn:  # one query per connection, as dnspython's stub resolver does
            conn.settimeout(1.0)
            head = _recv_exact(conn, 2)
            wire = _recv_exact(conn, struct.unpack("!H", head)[0]) if head else None
            if wire is None:
                return
            _, reply = self._handle(wire, "tcp")
            if reply is not None:
                data = reply.to_wire()
                conn.sendall(struct.pack("!H", len(data)) + data)

    def _handle(self, wire: bytes, proto: str
                ) -> tuple[dns.message.Message | None, dns.message.Message | None]:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None, None
        if len(query.question) != 1:
            reply = dns.message.make_response(query)
            reply.set_rcode(dns.rcode.FORMERR)
            return query, reply
        q = query.question[0]
        qname = _key(q.name.to_text())
        qtype = dns.rdatatype.to_text(q.rdtype)
        with self._lock:
            self._counts[(qname, qtype)] += 1
            self.queries.append((qname, qtype, proto))
            if self._drop_all or qname in self._drop:
                return query, None
            reply = dns.message.make_response(query)
            reply.flags |= dns.flags.AA
            self._answer(reply, qname, qtype)
        return query, reply

    def _answer(self, reply: dns.message.Message, qname: str, qtype: str) -> None:
        name = qname
        for _ in range(8):  # follow CNAMEs inside the zone
            hit = self._zone.get((name, qtype))
            if hit is not None:
                reply.answer.append(_rrset(name, qtype, *hit))
                return
            cname = self._zone.get((name, "CNAME"))
            if cname is None or qtype == "CNAME":
                break
            reply.answer.append(_rrset(name, "CNAME", *cname))
            name = _key(cname[1][0])
        exists = any(k[0] == name for k in self._zone)
        if not exists:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        soa = (f"ns.{self.origin}. hostmaster.{self.origin}. 1 3600 600 86400 "
               f"{self.negative_ttl}")
        reply.authority.append(_rrset(self.origin, "SOA", self.negative_ttl, [soa]))


def _rrset(name: str, rdtype: str, ttl: int, rdatas: list[str]) -> dns.rrset.RRset:
    return dns.rrset.from_text_list(dns.name.from_text(name), ttl, "IN", rdtype, rdatas)


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        try:
            chunk = conn.recv(n - len(buf))
        except OSError:
            return None
        if not chunk:
            return None
        buf += chunk
    return buf
