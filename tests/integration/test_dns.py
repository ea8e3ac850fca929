"""DNS on loopback: RFC 3263 failover between SRV targets, and the DNS check.

Everything talks to 127.0.0.1 only: the test DNS servers (tests/peers/dnsserver.py)
and the SIP targets, which sit on different ports of 127.0.0.1 behind different
SRV target names. Addresses from the 192.0.2.0/24 and 198.51.100.0/24
documentation ranges appear only as record data; nothing is sent to them.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time

import pytest

from appliance.dnscheck import dns_check, format_report, main_dns_check
from appliance.sip.dns import SipResolver
from appliance.sip.message import Response, make_response, parse_message
from appliance.sip.transaction import Peer
from tests.peers.dnsserver import DnsServer

pytestmark = pytest.mark.integration

ANSWER_TIMEOUT = 0.5


# -- SIP targets and a tiny UAC ------------------------------------------------------------

class SipTarget(asyncio.DatagramProtocol):
    """A UDP SIP server on 127.0.0.1 that answers every request with `status` (None: silent)."""

    def __init__(self, status: int | None) -> None:
        self.status = status
        self.received: list[str] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        req = parse_message(data)
        self.received.append(req.method)
        if self.status is not None:
            self.transport.sendto(make_response(req, self.status, to_tag="t1").to_bytes(), addr)

    @property
    def port(self) -> int:
        return self.transport.get_extra_info("sockname")[1]


async def start_target(status: int | None) -> SipTarget:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(lambda: SipTarget(status),
                                                   local_addr=("127.0.0.1", 0))
    return proto


class _Uac(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answer: asyncio.Future = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr) -> None:
        msg = parse_message(data)
        if isinstance(msg, Response) and msg.status >= 200 and not self.answer.done():
            self.answer.set_result(msg.status)

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable
        if not self.answer.done():
            self.answer.set_exception(exc)


async def send_options(peer: Peer, timeout: float = ANSWER_TIMEOUT) -> int | None:
    """Final status of an OPTIONS to `peer`; None on timeout or transport error."""
    loop = asyncio.get_running_loop()
    transport, uac = await loop.create_datagram_endpoint(
        _Uac, remote_addr=(peer.host, peer.port))
    try:
        lport = transport.get_extra_info("sockname")[1]
        tag = secrets.token_hex(4)
        transport.sendto((
            f"OPTIONS sip:carrier.test SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bK{secrets.token_hex(8)};rport\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: <sip:pbx@127.0.0.1>;tag={tag}\r\n"
            f"To: <sip:carrier.test>\r\n"
            f"Call-ID: {secrets.token_hex(8)}@127.0.0.1\r\n"
            f"CSeq: 1 OPTIONS\r\n"
            f"Content-Length: 0\r\n\r\n").encode())
        return await asyncio.wait_for(uac.answer, timeout)
    except (TimeoutError, OSError):
        return None
    finally:
        transport.close()


async def options_with_failover(resolver: SipResolver, host: str
                                ) -> tuple[int | None, list[tuple[Peer, int | None]]]:
    """RFC 3263 §4.3 as the transaction user does it: next target on timeout or 503."""
    tried: list[tuple[Peer, int | None]] = []
    for peer in await resolver.resolve(host, None, None):
        status = await send_options(peer)
        tried.append((peer, status))
        if status is None or status == 503:
            resolver.mark_failed(peer)
            continue
        resolver.mark_ok(peer)
        return status, tried
    return None, tried


def carrier_zone(dns_server: DnsServer, first: SipTarget, second: SipTarget) -> None:
    dns_server.set("_sip._udp.carrier.test", "SRV",
                   f"10 0 {first.port} primary.carrier.test.",
                   f"20 0 {second.port} backup.carrier.test.", ttl=60)
    dns_server.set("primary.carrier.test", "A", "127.0.0.1")
    dns_server.set("backup.carrier.test", "A", "127.0.0.1")


# -- failover --------------------------------------------------------------------------

def test_failover_to_the_second_srv_target_when_the_first_is_silent():
    async def scenario(dns_server: DnsServer):
        silent, ok = await start_target(None), await start_target(200)
        carrier_zone(dns_server, silent, ok)
        resolver = SipResolver([dns_server.address], timeout=1.0)

        targets = await resolver.resolve("carrier.test", None, None)
        assert targets == [Peer("udp", "127.0.0.1", silent.port),
                           Peer("udp", "127.0.0.1", ok.port)]
        t0 = time.monotonic()
        status, tried = await options_with_failover(resolver, "carrier.test")
        assert status == 200
        assert tried == [(targets[0], None), (targets[1], 200)]
        assert time.monotonic() - t0 >= ANSWER_TIMEOUT
        assert silent.received == ["OPTIONS"] and ok.received == ["OPTIONS"]

        # the silent target is held down: the next request goes straight to the backup
        t0 = time.monotonic()
        status, tried = await options_with_failover(resolver, "carrier.test")
        assert status == 200 and tried == [(targets[1], 200)]
        assert time.monotonic() - t0 < ANSWER_TIMEOUT
        assert silent.received == ["OPTIONS"] and ok.received == ["OPTIONS", "OPTIONS"]
        assert dns_server.count("_sip._udp.carrier.test", "SRV") == 1   # cached

    with DnsServer() as dns_server:
        asyncio.run(scenario(dns_server))


def test_failover_on_503():
    async def scenario(dns_server: DnsServer):
        busy, ok = await start_target(503), await start_target(200)
        carrier_zone(dns_server, busy, ok)
        resolver = SipResolver([dns_server.address], timeout=1.0)
        status, tried = await options_with_failover(resolver, "carrier.test")
        assert status == 200
        assert [(p.port, s) for p, s in tried] == [(busy.port, 503), (ok.port, 200)]
        targets = await resolver.resolve("carrier.test", None, None)
        assert [p.port for p in targets] == [ok.port, busy.port]

    with DnsServer() as dns_server:
        asyncio.run(scenario(dns_server))


def test_all_targets_failing_is_reported_not_raised():
    async def scenario(dns_server: DnsServer):
        a, b = await start_target(503), await start_target(503)
        carrier_zone(dns_server, a, b)
        resolver = SipResolver([dns_server.address], timeout=1.0)
        status, tried = await options_with_failover(resolver, "carrier.test")
        assert status is None and [s for _, s in tried] == [503, 503]
        status, tried = await options_with_failover(resolver, "nowhere.test")
        assert status is None and tried == []

    with DnsServer() as dns_server:
        asyncio.run(scenario(dns_server))


# -- the DNS check -----------------------------------------------------------------------

def test_dns_check_reports_differing_answers():
    with DnsServer() as system, DnsServer() as other:
        system.set("sip.carrier.test", "A", "192.0.2.10")
        other.set("sip.carrier.test", "A", "198.51.100.7", "192.0.2.10")
        ref = ("127.0.0.1", other.port)
        [rep] = asyncio.run(dns_check(["sip.carrier.test"], [ref], system=[system.address],
                                      timeout=1.0))
    label = f"127.0.0.1:{other.port}"
    assert rep.resolvers == ["system", label]
    assert rep.differs and rep.differences == ["A"]
    assert rep.answers["system"]["A"] == ["192.0.2.10"]
    assert rep.answers[label]["A"] == ["192.0.2.10", "198.51.100.7"]
    assert rep.errors["system"]["SRV _sip._udp"] == "nxdomain"
    assert not rep.failed
    data = json.loads(json.dumps(rep.to_dict()))
    assert data["differs"] is True and data["answers"][label]["A"] == [
        "192.0.2.10", "198.51.100.7"]
    table = format_report([rep])
    assert "198.51.100.7" in table and "DIFFERS (A)" in table


def test_dns_check_same_answers_do_not_differ(capsys):
    zone = {("sip.carrier.test", "A"): ["192.0.2.10"],
            ("sip.carrier.test", "AAAA"): ["2001:db8::10"],
            ("_sip._udp.sip.carrier.test", "SRV"): ["10 0 5060 sip.carrier.test."]}
    with DnsServer(zone) as system, DnsServer(zone) as ref1, DnsServer(zone) as ref2:
        [rep] = asyncio.run(dns_check(["sip.carrier.test"],
                                      [f"127.0.0.1:{ref1.port}", ("127.0.0.1", ref2.port)],
                                      system=[system.address], timeout=1.0))
        assert not rep.differs and not rep.failed
        assert rep.addresses("system") == ["192.0.2.10", "2001:db8::10"]
        assert rep.answers[f"127.0.0.1:{ref2.port}"]["SRV _sip._udp"] == [
            "10 0 5060 sip.carrier.test"]
        rc = main_dns_check(["sip.carrier.test"], [f"127.0.0.1:{ref1.port}"],
                            f"127.0.0.1:{system.port}")
    out = capsys.readouterr().out
    assert rc == 0
    assert "sip.carrier.test: ok" in out and "2001:db8::10" in out


def test_dns_check_reports_a_timing_out_resolver():
    zone = {("sip.carrier.test", "A"): ["192.0.2.10"]}
    with DnsServer(zone) as system, DnsServer(zone) as good, DnsServer(zone) as dead:
        dead.drop_all()
        t0 = time.monotonic()
        [rep] = asyncio.run(dns_check(["sip.carrier.test"],
                                      [("127.0.0.1", good.port), ("127.0.0.1", dead.port)],
                                      system=[system.address], timeout=0.5))
        assert time.monotonic() - t0 < 2.0   # the lookups run concurrently
    dead_label = f"127.0.0.1:{dead.port}"
    assert set(rep.errors[dead_label].values()) == {"timeout"}
    assert len(rep.errors[dead_label]) == 4
    assert rep.errors["system"].get("A") is None
    assert not rep.differs          # a resolver that did not answer does not count
    assert rep.failed
    assert "TIMEOUT" in format_report([rep]) and "sip.carrier.test: FAILED" in format_report([rep])


def test_main_dns_check_bad_resolver_and_differences(capsys):
    assert main_dns_check(["x.test"], ["not-an-ip"], None) == 2
    assert "resolver must be an IP address" in capsys.readouterr().err
    with DnsServer({("sip.carrier.test", "A"): ["192.0.2.1"]}) as a, \
            DnsServer({("sip.carrier.test", "A"): ["192.0.2.2"]}) as b:
        assert main_dns_check(["sip.carrier.test"], [f"127.0.0.1:{b.port}"],
                              f"127.0.0.1:{a.port}") == 1
    assert "DIFFERS (A)" in capsys.readouterr().out
