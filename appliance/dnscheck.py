"""The DNS check: does the system resolver tell the same story as public resolvers?

A carrier line that fails only on some boxes is often a DNS problem: a router's
resolver that drops SRV queries, a stale or hijacked A record, a split-horizon
answer. `dns_check()` asks the system resolver and each reference resolver the
same questions for every host (A, AAAA, SRV _sip._udp.HOST, SRV _sip._tcp.HOST)
and reports the answers side by side:

* `answers[resolver][query]`: sorted addresses (SRV: "priority weight port target");
* `errors[resolver][query]`: "timeout", "nxdomain", "servfail" (NODATA is an
  empty answer, not an error);
* `differs`: two resolvers that answered a query (NXDOMAIN and NODATA count as
  the empty answer; timeouts and failures do not count) gave different sets;
* `failed`: some resolver timed out or failed, or nobody returned an address.

`HostReport.to_dict()` is JSON-able (for the web page), `format_report()` is a
plain-text table, `main_dns_check()` is the body of `appliance dns-check`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.sip.dns import DnsError, Lookup, SipResolver

__all__ = ["dns_check", "HostReport", "format_report", "main_dns_check", "parse_resolver",
           "DEFAULT_REFERENCE", "QUERIES"]

# DNSPod and AliDNS public resolvers: reachable from where the boxes are installed.
DEFAULT_REFERENCE: tuple[str, ...] = ("119.29.29.29", "223.5.5.5")
SYSTEM = "system"
# (label, record type, name prefix)
QUERIES: tuple[tuple[str, str, str], ...] = (
    ("A", "A", ""),
    ("AAAA", "AAAA", ""),
    ("SRV _sip._udp", "SRV", "_sip._udp."),
    ("SRV _sip._tcp", "SRV", "_sip._tcp."),
)
_ADDRESS_QUERIES = ("A", "AAAA")


@dataclass
class HostReport:
    """What every resolver said about one host."""

    host: str
    resolvers: list[str]                                   # labels, system first
    answers: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    errors: dict[str, dict[str, str]] = field(default_factory=dict)
    differences: list[str] = field(default_factory=list)   # query labels that differ

    @property
    def differs(self) -> bool:
        return bool(self.differences)

    @property
    def failed(self) -> bool:
        """A resolver timed out or failed, or no resolver knows an address for the host."""
        if any(e != "nxdomain" for errs in self.errors.values() for e in errs.values()):
            return True
        return not any(ans.get(q) for ans in self.answers.values() for q in _ADDRESS_QUERIES)

    def addresses(self, resolver: str) -> list[str]:
        """A and AAAA answers of one resolver, sorted."""
        ans = self.answers.get(resolver, {})
        return sorted({a for q in _ADDRESS_QUERIES for a in ans.get(q, [])})

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "resolvers": list(self.resolvers),
            "answers": {r: {q: list(v) for q, v in a.items()} for r, a in self.answers.items()},
            "errors": {r: dict(e) for r, e in self.errors.items()},
            "differs": self.differs,
            "differences": list(self.differences),
            "failed": self.failed,
        }


def parse_resolver(spec: str | tuple[str, int], port: int = 53) -> tuple[str, int]:
    """"IP", "IP:port", "[IPv6]:port", bare IPv6 or (IP, port) -> (IP, port)."""
    if isinstance(spec, tuple):
        ip, p = spec
    else:
        spec = spec.strip()
        ip, p = spec, port
        if spec.startswith("["):
            ip, _, rest = spec[1:].partition("]")
            if rest:
                if not rest.startswith(":") or not rest[1:].isdigit():
                    raise DnsError(f"resolver must be IP or IP:port, got {spec!r}")
                p = int(rest[1:])
        elif spec.count(":") == 1:
            ip, _, ptext = spec.partition(":")
            if not ptext.isdigit():
                raise DnsError(f"resolver must be IP or IP:port, got {spec!r}")
            p = int(ptext)
    try:
        ip = str(ipaddress.ip_address(ip))
    except ValueError:
        raise DnsError(f"resolver must be an IP address, got {ip!r}") from None
    if type(p) is not int or not 1 <= p <= 65535:
        raise DnsError(f"resolver port must be 1-65535, got {p!r}")
    return ip, p


def _label(ip: str, port: int) -> str:
    if port == 53:
        return ip
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _text(lookup: Lookup, rdtype: str) -> list[str]:
    if rdtype == "SRV":
        return sorted(f"{r.priority} {r.weight} {r.port} {r.target.to_text(omit_final_dot=True)}"
                      for r in lookup.records)
    return sorted({r.address for r in lookup.records},
                  key=lambda a: (ipaddress.ip_address(a).version, ipaddress.ip_address(a)))


async def dns_check(hosts: list[str],
                    reference: Sequence[str | tuple[str, int]] = DEFAULT_REFERENCE,
                    system: list[tuple[str, int]] | None = None, port: int = 53,
                    timeout: float = 2.0) -> list[HostReport]:
    """Ask the system resolver and every reference resolver about every host.

    `reference`: "IP", "IP:port" or (IP, port); `port` is the default port.
    `system`: None for /etc/resolv.conf, else (IP, port) pairs standing in for
    it. `timeout`: per lookup; all lookups run concurrently, so the whole check
    takes about one timeout at worst. Raises `DnsError` for a bad resolver spec
    or a missing system configuration.
    """
    resolvers: list[tuple[str, SipResolver]] = [(SYSTEM, SipResolver(system, timeout))]
    for spec in reference:
        ip, p = parse_resolver(spec, port)
        label = _label(ip, p)
        n = 2
        while label in (lbl for lbl, _ in resolvers):
            label = f"{_label(ip, p)}#{n}"
            n += 1
        resolvers.append((label, SipResolver([(ip, p)], timeout)))

    async def one(res: SipResolver, host: str, rdtype: str, prefix: str) -> Lookup:
        try:
            return await res.lookup(prefix + host, rdtype)
        except DnsError:
            return Lookup("invalid")

    jobs = [(h, label, qlabel, rdtype, one(res, h, rdtype, prefix))
            for h in hosts for label, res in resolvers for qlabel, rdtype, prefix in QUERIES]
    results = await asyncio.gather(*(job[-1] for job in jobs))

    reports = {h: HostReport(h, [label for label, _ in resolvers]) for h in hosts}
    seen: dict[str, dict[str, set[tuple[str, ...]]]] = {h: {} for h in hosts}
    for (h, label, qlabel, rdtype, _), lookup in zip(jobs, results, strict=True):
        rep = reports[h]
        values = _text(lookup, rdtype)
        rep.answers.setdefault(label, {})[qlabel] = values
        rep.errors.setdefault(label, {})
        if lookup.status not in ("ok", "nodata"):
            rep.errors[label][qlabel] = lookup.status
        if lookup.answered:  # NXDOMAIN/NODATA: the empty set; timeouts: not an answer
            seen[h].setdefault(qlabel, set()).add(tuple(values))
    for h, rep in reports.items():
        rep.differences = [q for q, _, _ in QUERIES if len(seen[h].get(q, ())) > 1]
    return [reports[h] for h in hosts]


def _cell(rep: HostReport, resolver: str, query: str) -> str:
    err = rep.errors.get(resolver, {}).get(query)
    if err:
        return "NXDOMAIN" if err == "nxdomain" else err.upper()
    return ", ".join(rep.answers.get(resolver, {}).get(query, [])) or "-"


def format_report(reports: Sequence[HostReport]) -> str:
    """A plain-text table: one row per host and query, one column per resolver."""
    if not reports:
        return "no hosts checked\n"
    resolvers = reports[0].resolvers
    rows: list[list[str]] = [["host", "query", *resolvers, ""]]
    for rep in reports:
        for i, (q, _, _) in enumerate(QUERIES):
            mark = "DIFFERS" if q in rep.differences else ""
            rows.append([rep.host if i == 0 else "", q,
                         *(_cell(rep, r, q) for r in rep.resolvers), mark])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths).rstrip())
    lines.append("")
    for rep in reports:
        if rep.differs:
            state = "DIFFERS (" + ", ".join(rep.differences) + ")"
        elif rep.failed:
            state = "FAILED"
        else:
            state = "ok"
        if rep.differs and rep.failed:
            state += ", FAILED"
        lines.append(f"{rep.host}: {state}")
    return "\n".join(lines) + "\n"


def main_dns_check(hosts: list[str], reference: list[str] | None, system: str | None) -> int:
    """`appliance dns-check HOST... [--reference IP[:port]]... [--system IP[:port]]`.

    Prints the table; returns 0 when every host resolves everywhere alike, 1 when
    one differs or fails, 2 for a bad resolver argument (the CLI's usage code).
    `system` may list several resolvers separated by commas.
    """
    try:
        sys_servers = ([parse_resolver(s) for s in system.split(",") if s.strip()]
                       if system else None)
        refs = [parse_resolver(r) for r in reference] if reference is not None else list(
            DEFAULT_REFERENCE)
        reports = asyncio.run(dns_check(hosts, refs, sys_servers))
    except DnsError as e:
        print(f"dns-check: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(format_report(reports))
    return 1 if any(r.differs or r.failed for r in reports) else 0
