"""RFC 3263 server location (appliance.sip.dns) against a loopback DNS server."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest

from appliance.sip.dns import DnsError, SipResolver, naptr_choices, order_srv
from appliance.sip.transaction import Peer
from tests.peers.dnsserver import DnsServer


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server():
    with DnsServer(negative_ttl=10) as s:
        yield s


@pytest.fixture
def clock():
    return FakeClock()


def make(server: DnsServer, clock: FakeClock, **kw) -> SipResolver:
    kw.setdefault("timeout", 0.4)
    return SipResolver([server.address], clock=clock, rng=random.Random(7), **kw)


def resolve(resolver: SipResolver, host: str, port=None, transport=None, secure=False):
    return asyncio.run(resolver.resolve(host, port, transport, secure))


def rd(rdtype: str, text: str):
    return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), text)


# -- RFC 2782 SRV ordering -------------------------------------------------------------------

def test_srv_sorted_by_priority_whatever_the_weights():
    recs = [rd("SRV", "30 100 5060 c.test."), rd("SRV", "10 0 5060 a.test."),
            rd("SRV", "20 99 5060 b.test.")]
    for seed in range(20):
        got = order_srv(recs, random.Random(seed))
        assert [r.priority for r in got] == [10, 20, 30]


def test_srv_weights_within_a_priority_give_the_share_of_first_picks():
    recs = [rd("SRV", "10 60 5060 a.test."), rd("SRV", "10 30 5060 b.test."),
            rd("SRV", "10 10 5060 c.test."), rd("SRV", "20 50 5060 backup.test.")]
    rng = random.Random(1234)
    n = 6000
    first = Counter(str(order_srv(recs, rng)[0].target) for _ in range(n))
    assert abs(first["a.test."] / n - 0.6) < 0.03
    assert abs(first["b.test."] / n - 0.3) < 0.03
    assert abs(first["c.test."] / n - 0.1) < 0.03
    assert "backup.test." not in first
    for _ in range(50):  # every record once, the backup last
        got = [str(r.target) for r in order_srv(recs, rng)]
        assert sorted(got[:3]) == ["a.test.", "b.test.", "c.test."]
        assert got[3] == "backup.test."


def test_srv_weight_zero_is_rarely_first_and_dot_target_means_no_service():
    recs = [rd("SRV", "10 0 5060 zero.test."), rd("SRV", "10 100 5060 main.test.")]
    rng = random.Random(5)
    first = Counter(str(order_srv(recs, rng)[0].target) for _ in range(2000))
    assert first["zero.test."] < 60  # 1/101 of the picks
    assert order_srv([rd("SRV", "0 0 0 .")]) == []


def test_srv_order_is_reproducible_with_a_seeded_rng(server, clock):
    server.set("_sip._udp.carrier.test", "SRV", "10 50 5071 a.carrier.test.",
               "10 50 5072 b.carrier.test.", "5 0 5070 first.carrier.test.")
    for n in ("a", "b", "first"):
        server.set(f"{n}.carrier.test", "A", "127.0.0.1")
    runs = [[p.port for p in resolve(make(server, clock), "carrier.test", transport="udp")]
            for _ in range(2)]
    assert runs[0] == runs[1]
    assert runs[0][0] == 5070 and sorted(runs[0][1:]) == [5071, 5072]


# -- NAPTR -------------------------------------------------------------------------------

NAPTRS = [
    '30 10 "s" "SIPS+D2T" "" _sips._tcp.carrier.test.',
    '10 20 "s" "SIP+D2U" "" _sip._udp.carrier.test.',
    '10 10 "s" "SIP+D2T" "" _sip._tcp.carrier.test.',
    '5 10 "s" "SIP+D2S" "" _sip._sctp.carrier.test.',           # SCTP: not supported
    '5 10 "u" "E2U+sip" "!^.*$!sip:info@carrier.test!" .',     # ENUM: not for us
    '5 10 "a" "SIP+D2U" "" udp-host.carrier.test.',            # flag A: not an SRV
]


def test_naptr_choices_order_preference_and_filters():
    recs = [rd("NAPTR", t) for t in NAPTRS]
    assert [(tr, str(n)) for tr, n in naptr_choices(recs)] == [
        ("tcp", "_sip._tcp.carrier.test."), ("udp", "_sip._udp.carrier.test."),
        ("tls", "_sips._tcp.carrier.test.")]
    assert [tr for tr, _ in naptr_choices(recs, secure=True)] == ["tls"]


def _carrier_zone(server: DnsServer) -> None:
    server.set("carrier.test", "NAPTR", *NAPTRS)
    server.set("_sip._tcp.carrier.test", "SRV", "10 0 5080 t.carrier.test.")
    server.set("_sip._udp.carrier.test", "SRV", "10 0 5070 u.carrier.test.")
    server.set("_sips._tcp.carrier.test", "SRV", "10 0 5081 t.carrier.test.")
    server.set("t.carrier.test", "A", "127.0.0.1")
    server.set("u.carrier.test", "A", "127.0.0.1")
    server.set("u.carrier.test", "AAAA", "::1")


def test_naptr_then_srv_then_addresses(server, clock):
    _carrier_zone(server)
    assert resolve(make(server, clock), "carrier.test") == [
        Peer("tcp", "127.0.0.1", 5080),
        Peer("udp", "127.0.0.1", 5070), Peer("udp", "::1", 5070),
        Peer("tls", "127.0.0.1", 5081)]
    assert server.count("carrier.test", "NAPTR") == 1
    assert server.count("_sip._sctp.carrier.test") == 0


def test_sips_uri_uses_only_sips_naptr(server, clock):
    _carrier_zone(server)
    assert resolve(make(server, clock), "carrier.test", secure=True) == [
        Peer("tls", "127.0.0.1", 5081)]


def test_transport_given_skips_naptr(server, clock):
    _carrier_zone(server)
    assert resolve(make(server, clock), "carrier.test", transport="TCP") == [
        Peer("tcp", "127.0.0.1", 5080)]
    assert server.count(rdtype="NAPTR") == 0
    # sips: with transport=tcp is TLS over TCP
    assert resolve(make(server, clock), "carrier.test", transport="tcp", secure=True) == [
        Peer("tls", "127.0.0.1", 5081)]


def test_no_naptr_srv_for_each_transport_in_preference_order(server, clock):
    server.set("_sips._tcp.carrier.test", "SRV", "10 0 5061 s.carrier.test.")
    server.set("_sip._udp.carrier.test", "SRV", "10 0 5060 s.carrier.test.")
    server.set("s.carrier.test", "A", "127.0.0.1")
    assert resolve(make(server, clock), "carrier.test") == [
        Peer("udp", "127.0.0.1", 5060), Peer("tls", "127.0.0.1", 5061)]
    assert server.count("_sip._tcp.carrier.test", "SRV") == 1


def test_no_naptr_no_srv_falls_back_to_addresses_with_default_port(server, clock):
    server.set("pbx.test", "A", "127.0.0.1")
    res = make(server, clock)
    assert resolve(res, "pbx.test") == [Peer("udp", "127.0.0.1", 5060)]
    assert resolve(res, "pbx.test", transport="tls") == [Peer("tls", "127.0.0.1", 5061)]
    assert resolve(res, "pbx.test", secure=True) == [Peer("tls", "127.0.0.1", 5061)]


# -- no DNS at all, or A/AAAA only -------------------------------------------------------

def test_ip_literal_is_used_as_is_without_queries(server, clock):
    res = make(server, clock)
    assert resolve(res, "127.0.0.1") == [Peer("udp", "127.0.0.1", 5060)]
    assert resolve(res, "127.0.0.1", secure=True) == [Peer("tls", "127.0.0.1", 5061)]
    assert resolve(res, "127.0.0.1", 5070, "tcp") == [Peer("tcp", "127.0.0.1", 5070)]
    assert resolve(res, "[::1]", 5072) == [Peer("udp", "::1", 5072)]
    assert server.count() == 0


def test_explicit_port_skips_naptr_and_srv(server, clock):
    _carrier_zone(server)
    server.set("carrier.test", "A", "127.0.0.1")
    assert resolve(make(server, clock), "carrier.test", 5099) == [
        Peer("udp", "127.0.0.1", 5099)]
    assert server.count(rdtype="NAPTR") == 0 and server.count(rdtype="SRV") == 0
    assert server.count("carrier.test", "A") == 1


def test_large_answer_is_fetched_over_tcp(server, clock):
    server.set("many.test", "A", *(f"10.0.{i // 250}.{i % 250}" for i in range(120)))
    assert len(resolve(make(server, clock), "many.test", 5060)) == 120
    assert ("many.test", "A", "tcp") in server.queries


# -- the cache ---------------------------------------------------------------------------

def test_cache_honours_the_ttl(server, clock):
    server.set("pbx.test", "A", "127.0.0.1", ttl=60)
    res = make(server, clock)
    assert resolve(res, "pbx.test", 5060) == [Peer("udp", "127.0.0.1", 5060)]
    assert server.count("pbx.test", "A") == 1
    server.set("pbx.test", "A", "127.0.0.9", ttl=60)   # changed behind the cache's back
    clock.now += 59
    assert resolve(res, "pbx.test", 5060) == [Peer("udp", "127.0.0.1", 5060)]
    assert server.count("pbx.test", "A") == 1          # a hit
    clock.now += 2
    assert resolve(res, "pbx.test", 5060) == [Peer("udp", "127.0.0.9", 5060)]
    assert server.count("pbx.test", "A") == 2          # expired, asked again


def test_cache_uses_the_minimum_ttl_of_a_cname_chain(server, clock):
    server.set("sip.test", "CNAME", "real.test.", ttl=5)
    server.set("real.test", "A", "127.0.0.1", ttl=3600)
    res = make(server, clock)
    assert resolve(res, "sip.test", 5060) == [Peer("udp", "127.0.0.1", 5060)]
    clock.now += 4
    resolve(res, "sip.test", 5060)
    assert server.count("sip.test", "A") == 1
    clock.now += 2
    resolve(res, "sip.test", 5060)
    assert server.count("sip.test", "A") == 2


def test_every_record_set_of_a_resolution_is_cached(server, clock):
    _carrier_zone(server)
    res = make(server, clock)
    first = resolve(res, "carrier.test")
    n = server.count()
    assert resolve(res, "carrier.test") == first
    assert server.count() == n


def test_negative_answers_are_cached_for_the_soa_minimum(server, clock):
    res = make(server, clock)
    assert resolve(res, "gone.test", 5060) == []                     # NXDOMAIN
    server.set("nodata.test", "TXT", '"x"')
    assert resolve(res, "nodata.test", 5060) == []                   # NODATA
    lookups = asyncio.run(res.lookup("gone.test", "A")), asyncio.run(res.lookup("nodata.test", "A"))
    assert [lk.status for lk in lookups] == ["nxdomain", "nodata"]
    assert [lk.ttl for lk in lookups] == [10.0, 10.0]                # server's SOA minimum
    server.set("gone.test", "A", "127.0.0.1")
    clock.now += 9
    assert resolve(res, "gone.test", 5060) == []
    assert server.count("gone.test", "A") == 1
    clock.now += 2
    assert resolve(res, "gone.test", 5060) == [Peer("udp", "127.0.0.1", 5060)]
    assert server.count("gone.test", "A") == 2


def test_negative_ttl_without_soa_and_its_cap(clock):
    with DnsServer(negative_ttl=100000) as s:
        res = make(s, clock, max_negative_ttl=120)
        assert asyncio.run(res.lookup("gone.test", "A")).ttl == 120
    res = SipResolver([("127.0.0.1", 53)], negative_ttl=30)
    assert res._negative_ttl(None) == 30


def test_timeout_gives_no_targets_and_is_held_briefly(server, clock):
    server.drop("slow.test")
    res = make(server, clock, failure_ttl=5)
    assert resolve(res, "slow.test", 5060) == []
    assert asyncio.run(res.lookup("slow.test", "A")).status == "timeout"
    asked = server.count("slow.test", "A")
    clock.now += 6
    server.drop("slow.test", on=False)
    server.set("slow.test", "A", "127.0.0.1")
    assert resolve(res, "slow.test", 5060) == [Peer("udp", "127.0.0.1", 5060)]
    assert server.count("slow.test", "A") == asked + 1


def test_concurrent_resolutions_share_one_query(server, clock):
    _carrier_zone(server)
    res = make(server, clock)

    async def both():
        return await asyncio.gather(res.resolve("carrier.test", None, None),
                                    res.resolve("carrier.test", None, None))

    a, b = asyncio.run(both())
    assert a == b and server.count("carrier.test", "NAPTR") == 1


# -- failover ----------------------------------------------------------------------------

def test_mark_failed_puts_the_target_last_for_a_while(server, clock):
    server.set("_sip._udp.carrier.test", "SRV", "10 0 5071 a.carrier.test.",
               "20 0 5072 b.carrier.test.", "30 0 5073 c.carrier.test.")
    for n in "abc":
        server.set(f"{n}.carrier.test", "A", "127.0.0.1")
    res = make(server, clock, failure_hold=30)
    targets = resolve(res, "carrier.test", transport="udp")
    assert [p.port for p in targets] == [5071, 5072, 5073]
    res.mark_failed(targets[0])
    assert [p.port for p in resolve(res, "carrier.test", transport="udp")] == [5072, 5073, 5071]
    res.mark_failed(targets[1], now=clock.now + 1)
    assert [p.port for p in resolve(res, "carrier.test", transport="udp")] == [5073, 5071, 5072]
    clock.now += 30.5                                 # the first hold-down is over
    assert [p.port for p in resolve(res, "carrier.test", transport="udp")] == [5071, 5073, 5072]
    res.mark_ok(targets[1])
    assert [p.port for p in resolve(res, "carrier.test", transport="udp")] == [5071, 5072, 5073]


# -- errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ("carrier.test", None, "sctp", False),
    ("carrier.test", None, "udp", True),
    ("carrier.test", 0, None, False),
    ("carrier.test", 70000, None, False),
    ("", None, None, False),
    ("a" * 64 + ".test", None, None, False),
])
def test_misuse_raises_dns_error(server, clock, args):
    with pytest.raises(DnsError):
        asyncio.run(make(server, clock).resolve(*args))


@pytest.mark.parametrize("nameservers", [[], [("not-an-ip", 53)], [("127.0.0.1", 0)],
                                         [("127.0.0.1",)]])
def test_bad_nameservers_raise_dns_error(nameservers):
    with pytest.raises(DnsError):
        SipResolver(nameservers)


def test_dead_nameserver_is_not_an_exception(clock):
    with DnsServer() as s:
        s.drop_all()
        res = make(s, clock, timeout=0.2)
        assert resolve(res, "carrier.test") == []
        assert s.count("carrier.test", "NAPTR") >= 1


def test_system_resolver_reads_resolv_conf():
    try:
        res = SipResolver(None)
    except DnsError:
        pytest.skip("no /etc/resolv.conf here")
    assert res._resolver.nameservers
