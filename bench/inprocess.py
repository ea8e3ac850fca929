#!/usr/bin/env python3
"""The CPU of the daemon's message path per call, in-process: no sockets, no SIPp.

    .venv/bin/python bench/inprocess.py                   # 5 rounds of 4,000 calls
    .venv/bin/python bench/inprocess.py --phases          # and the time of each message
    .venv/bin/python bench/inprocess.py --without express_invite --without direct_log
    .venv/bin/python bench/inprocess.py --registrations     # per registration instead

One Pbx and Endpoint, configured as bench/run.py configures the daemon (two extensions,
signalling only), with the transport replaced by a list. Each call is the bench's
(bench/sipp/call_caller.xml and call_callee.xml): INVITE, 407, ACK, INVITE with
credentials, 100, INVITE to the callee, 180, 200, ACK, ACK, BYE, BYE, 200, 200, every
datagram fed to `Endpoint._on_bytes` as the socket would, the callee's answers built from
what the daemon sent it. Logging is the daemon's (`setup_logging`, into /dev/null) and so
is the collector's policy (`gcpolicy.start`). Timers run on the event loop, which turns
every 50 calls; transactions live on as in the daemon (no run here reaches 64*T1).

It reports the process's CPU time per call, this script's own building of the datagrams
included (about 15 us of it here). On a noisy machine, alternate the variants and
compare medians: a single round varies by ±10% here. `--without` switches off, for an
A/B comparison in one build, the express challenge (`express_invite`: the general path
answers every INVITE), the express ACK (`express_ack`: the general path takes the
caller's ACK of the 200) or the direct log lines (`direct_log`: through `Logger.info`).

`--registrations` measures the bench's registration instead (bench/sipp/register.xml:
REGISTER, 401, REGISTER with credentials, 200), by 2,000 extensions in turn from one
port as a SIPp process sends them, each with a new Call-ID, tag and branches: every
one after the first 2,000 refreshes a binding. `--calls` is then registrations per round.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance import gcpolicy, loglines  # noqa: E402
from appliance.bus import Bus  # noqa: E402
from appliance.daemon import setup_logging  # noqa: E402
from appliance.pbx.core import Pbx  # noqa: E402
from appliance.pbx.location import Location  # noqa: E402
from appliance.sip.endpoint import Endpoint  # noqa: E402
from appliance.sip.transaction import Peer, Timers  # noqa: E402
from appliance.store.config import Extension, default_config  # noqa: E402

CALLER = Peer("udp", "127.0.0.1", 30000)
CALLEE = Peer("udp", "127.0.0.1", 40000)
PASSWORDS = {"1000": "pa", "2000": "pb"}
SDP_A = ("v=0\r\no=- 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
         "t=0 0\r\nm=audio 6000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\n"
         "a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n")
SDP_B = ("v=0\r\no=- 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
         "t=0 0\r\nm=audio 6002 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n")
_NONCE = re.compile(rb'nonce="([^"]*)"')
_CSEQ = re.compile(rb"\r\nCSeq: ([^\r]*)")


def header(data: bytes, name: str) -> str:
    found = re.search(rb"\r\n" + name.encode() + rb": ([^\r]*)\r\n", data)
    assert found, (name, data[:200])
    return found[1].decode()


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


class Box:
    def __init__(self, without: set[str], extensions: int = 0) -> None:
        for n in range(3000, 3000 + extensions):  # as bench/run.py makes them
            PASSWORDS[str(n)] = f"p{n}"
        cfg = default_config()
        cfg.extensions = {n: Extension(password=pw) for n, pw in PASSWORDS.items()}
        cfg.media.relay_extension_calls = False  # as bench/run.py: signalling only
        self.endpoint = ep = Endpoint(Timers())
        self.sent: list[tuple[Peer, bytes]] = []
        ep.transports.send = lambda peer, data: self.sent.append((peer, data))
        ep.transports.local["udp"] = ("127.0.0.1", 5060)
        self.pbx = Pbx(ep, cfg, Location(None), Bus(), b"k" * 32)
        ep.tu = self.pbx
        if "express_invite" in without:
            ep.express_invite = None
        if "express_ack" in without:
            ep.express_ack = None
        if "direct_log" in without:
            loglines.install(None)
        self.feed = ep._on_bytes
        self.realm = self.pbx.digest.realm

    def credentials(self, name: str, user: str, method: str, uri: str, nonce: str) -> str:
        ha1 = _md5(f"{user}:{self.realm}:{PASSWORDS[user]}")
        response = _md5(f"{ha1}:{nonce}:00000001:abcdef:auth:{_md5(f'{method}:{uri}')}")
        return (f'{name}: Digest username="{user}",realm="{self.realm}",nonce="{nonce}",'
                f'uri="{uri}",response="{response}",algorithm=MD5,cnonce="abcdef",qop=auth,'
                f"nc=00000001\r\n")

    def register(self, i: int, n: int) -> None:
        """Registration `i` of extension 3000 + i mod n, as SIPp sends it."""
        user = str(3000 + i % n)
        head = ("REGISTER sip:127.0.0.1:5060 SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:30000;branch=z9hG4bK-{i}-{{0}};rport\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:{user}@127.0.0.1>;tag=1SIPpTag00{i}\r\n"
                f"To: <sip:{user}@127.0.0.1>\r\nCall-ID: {i}-reg@127.0.0.1\r\n"
                f"CSeq: {{0}} REGISTER\r\nContact: <sip:{user}@127.0.0.1:30000>\r\n")
        tail = "Expires: 3600\r\nUser-Agent: sipp-bench\r\nContent-Length: 0\r\n\r\n"
        self.feed((head.format(1) + tail).encode(), CALLER)
        nonce = _NONCE.search(self.sent[-1][1])[1].decode()
        uri = "sip:127.0.0.1:5060"
        ha1 = _md5(f"{user}:{self.realm}:{PASSWORDS[user]}")
        response = _md5(f"{ha1}:{nonce}:00000001:6b8b4567:auth:{_md5(f'REGISTER:{uri}')}")
        auth = (f'Authorization: Digest username="{user}",realm="{self.realm}",'
                f'cnonce="6b8b4567",nc=00000001,qop=auth,uri="{uri}",nonce="{nonce}",'
                f'response="{response}",algorithm=MD5\r\n')
        self.feed((head.format(2) + auth + tail).encode(), CALLER)
        assert self.sent[-1][1].startswith(b"SIP/2.0 200 "), self.sent[-1][1][:80]
        self.sent.clear()

    def register_callee(self) -> None:
        def register(cseq: int, auth: str = "") -> bytes:
            return ("REGISTER sip:127.0.0.1:5060 SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK-r{cseq}\r\n"
                    "From: <sip:2000@127.0.0.1>;tag=r1\r\nTo: <sip:2000@127.0.0.1>\r\n"
                    f"Call-ID: reg2000@127.0.0.1\r\nCSeq: {cseq} REGISTER\r\n"
                    "Contact: <sip:2000@127.0.0.1:40000>\r\nMax-Forwards: 70\r\n"
                    f"Expires: 7200\r\n{auth}Content-Length: 0\r\n\r\n").encode()
        self.feed(register(1), CALLEE)
        nonce = _NONCE.search(self.sent[-1][1])[1].decode()
        self.feed(register(2, self.credentials("Authorization", "2000", "REGISTER",
                                               "sip:127.0.0.1:5060", nonce)), CALLEE)
        assert self.sent[-1][1].startswith(b"SIP/2.0 200 "), self.sent[-1][1][:80]
        self.sent.clear()

    def call(self, i: int) -> None:
        """One call, as the bench's SIPp caller and callee make it."""
        target, within = self.answer(i)
        for cseq, method in ((2, "ACK"), (3, "BYE")):
            self.feed(self.in_dialog(i, target, within, cseq, method), CALLER)
        self.hang_up()

    def answer(self, i: int) -> tuple[str, str]:
        """Call `i` up to the caller's 200: INVITE, 407, ACK, INVITE with credentials,
        the callee's 180 and 200. Returns the 200's Contact URI and the dialog's From,
        Call-ID and To lines (what the caller's ACK and BYE carry)."""
        sent, feed = self.sent, self.feed
        dialog = (f"Max-Forwards: 70\r\nFrom: <sip:1000@127.0.0.1>;tag=1SIPpTag00{i}\r\n"
                  f"Call-ID: {i}-call@127.0.0.1\r\n")

        def invite(cseq: int, auth: str = "") -> bytes:
            return ("INVITE sip:2000@127.0.0.1:5060 SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP 127.0.0.1:30000;branch=z9hG4bK-{i}-{cseq};rport\r\n"
                    f"{dialog}To: <sip:2000@127.0.0.1>\r\nCSeq: {cseq} INVITE\r\n"
                    f"Contact: <sip:1000@127.0.0.1:30000>\r\n{auth}User-Agent: sipp-bench\r\n"
                    f"Content-Type: application/sdp\r\nContent-Length: {len(SDP_A)}\r\n\r\n"
                    f"{SDP_A}").encode()

        feed(invite(1), CALLER)
        challenge = sent[-1][1]
        assert challenge.startswith(b"SIP/2.0 407 "), challenge[:80]
        feed(("ACK sip:2000@127.0.0.1:5060 SIP/2.0\r\n"
              f"Via: SIP/2.0/UDP 127.0.0.1:30000;branch=z9hG4bK-{i}-1;rport\r\n{dialog}"
              f"To: {header(challenge, 'To')}\r\nCSeq: 1 ACK\r\n"
              "Content-Length: 0\r\n\r\n").encode(), CALLER)
        nonce = _NONCE.search(challenge)[1].decode()
        feed(invite(2, self.credentials("Proxy-Authorization", "1000", "INVITE",
                                        "sip:2000@127.0.0.1:5060", nonce)), CALLER)
        out = self.last(CALLEE, b"INVITE ")
        answer = (f"Via: {header(out, 'Via')}\r\nFrom: {header(out, 'From')}\r\n"
                  f"To: {header(out, 'To')};tag=1SIPpTag01{i}\r\n"
                  f"Call-ID: {header(out, 'Call-ID')}\r\nCSeq: {header(out, 'CSeq')}\r\n"
                  "Contact: <sip:127.0.0.1:40000;transport=UDP>\r\n")
        feed(f"SIP/2.0 180 Ringing\r\n{answer}Content-Length: 0\r\n\r\n".encode(), CALLEE)
        feed((f"SIP/2.0 200 OK\r\n{answer}Content-Type: application/sdp\r\n"
              f"Content-Length: {len(SDP_B)}\r\n\r\n{SDP_B}").encode(), CALLEE)
        ok = self.last(CALLER, b"SIP/2.0 200 ")
        target = header(ok, "Contact").split("<", 1)[1].split(">", 1)[0]
        return target, f"{dialog}To: {header(ok, 'To')}\r\n"

    @staticmethod
    def in_dialog(i: int, target: str, within: str, cseq: int, method: str) -> bytes:
        """The caller's ACK or BYE of call `i`, as SIPp sends them."""
        return (f"{method} {target} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:30000;branch=z9hG4bK-{i}-{cseq + 1};rport\r\n"
                f"{within}CSeq: {cseq} {method}\r\nContact: <sip:1000@127.0.0.1:30000>\r\n"
                "Content-Length: 0\r\n\r\n").encode()

    def hang_up(self) -> None:
        """The callee's 200 to the last BYE the daemon sent it."""
        bye = self.last(CALLEE, b"BYE ")
        self.feed((f"SIP/2.0 200 OK\r\nVia: {header(bye, 'Via')}\r\n"
                   f"From: {header(bye, 'From')}\r\nTo: {header(bye, 'To')}\r\n"
                   f"Call-ID: {header(bye, 'Call-ID')}\r\nCSeq: {header(bye, 'CSeq')}\r\n"
                   "Content-Length: 0\r\n\r\n").encode(), CALLEE)
        self.sent.clear()

    def last(self, peer: Peer, start: bytes) -> bytes:
        """The last datagram sent to `peer` that starts with `start`."""
        for to, data in reversed(self.sent):
            if to == peer and data.startswith(start):
                return data
        raise AssertionError(f"no {start!r} to {peer}: {[d[:20] for _, d in self.sent]}")


def _phase(data: bytes) -> str:
    """A datagram's name in the --phases table: method or status, and its CSeq."""
    first = data[:data.index(b"\r\n")].decode()
    cseq = _CSEQ.search(data)[1].decode()
    what = first.split(" ")[1] if first.startswith("SIP/") else first.split(" ")[0]
    auth = ", credentials" if b"\r\nProxy-Authorization:" in data else ""
    return f"{what} ({cseq}{auth})"


async def run(args: argparse.Namespace) -> None:
    box = Box(set(args.without), 2000 if args.registrations else 0)
    box.register_callee()
    box.call(0)
    gcpolicy.start()  # as the daemon after start-up
    phases: dict[str, list[float]] = {}
    if args.phases:
        feed, clock = box.feed, time.perf_counter

        def timed(data: bytes, peer: Peer) -> None:
            t = clock()
            feed(data, peer)
            elapsed = clock() - t
            spent = phases.setdefault(_phase(data), [0, 0.0])
            spent[0] += 1
            spent[1] += elapsed
        box.feed = timed
    i = 1
    what = "call"
    one = box.call
    if args.registrations:
        what = "registration"

        def one(i: int) -> None:
            box.register(i, 2000)
        box.register(0, 2000)
        assert box.pbx.location.get("3000", "sip:3000@127.0.0.1:30000"), "not bound"
    for r in range(args.rounds):
        cpu = time.process_time()
        for _ in range(args.calls):
            one(i)
            i += 1
            if i % 50 == 0:
                await asyncio.sleep(0)  # timers and the log's flush
        spent = time.process_time() - cpu
        print(f"round {r + 1}: {spent / args.calls * 1e6:.1f} us of CPU per {what}",
              flush=True)
    if args.phases:
        print(f"\n{'datagram':34} {'us each (wall)':>14}")
        for name, (n, t) in phases.items():
            print(f"{name:34} {t / n * 1e6:14.1f}")
        print(f"{'a call':34} {sum(t / n for n, t in phases.values()) * 1e6:14.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=4000,
                        help="calls (or registrations) per round")
    parser.add_argument("--registrations", action="store_true",
                        help="the bench's registration instead of its call")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--phases", action="store_true",
                        help="also time each datagram (wall clock, with the timing's cost)")
    parser.add_argument("--without", action="append", default=[],
                        choices=["express_invite", "express_ack", "direct_log"])
    args = parser.parse_args()
    setup_logging("info", False)
    logging.getLogger().handlers[0].out = open(os.devnull, "w")  # type: ignore[attr-defined]
    import uvloop
    uvloop.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
