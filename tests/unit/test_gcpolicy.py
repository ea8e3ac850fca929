"""The collector policy: gen0 only automatically, and under SIP load not even that (what
is new is frozen once a second); full collections when idle or after ten minutes of
load; and the hot paths leave no cyclic garbage for the full one to find."""

import asyncio
import contextlib
import gc
from collections import Counter
from collections.abc import Iterator

from appliance import gcpolicy


def test_full_collection_when_idle_or_after_ten_minutes(monkeypatch):
    runs = []
    monkeypatch.setattr(gc, "collect", lambda *a: runs.append(a) or 0)
    monkeypatch.setattr(gc, "freeze", lambda: None)
    monkeypatch.setattr(gc, "unfreeze", lambda: None)
    clock = [0.0]
    full = gcpolicy.FullCollections(clock=lambda: clock[0])
    received = 0
    for _ in range(int(gcpolicy.BUSY_EVERY) - 1):   # busy: a message every second
        clock[0] += 1.0
        received += 5
        assert not full.tick(received)
    clock[0] += 1.0
    received += 5
    assert full.tick(received) and runs == [()]   # ten minutes of load: now
    clock[0] += gcpolicy.IDLE_EVERY - 1
    assert not full.tick(received)   # idle, but the last one is too recent
    clock[0] += 1.0
    assert full.tick(received)       # idle and a minute since
    clock[0] += 1.0
    assert not full.tick(received)
    assert len(runs) == 2


def test_idle_collection_waits_for_the_transactions_to_end(monkeypatch):
    """No SIP message for a second is not enough while the last load's transactions live
    on (32 s): a full collection would walk them all while traffic may resume."""
    runs = []
    monkeypatch.setattr(gc, "collect", lambda *a: runs.append(a) or 0)
    monkeypatch.setattr(gc, "freeze", lambda: None)
    monkeypatch.setattr(gc, "unfreeze", lambda: None)
    clock = [gcpolicy.IDLE_EVERY]
    full = gcpolicy.FullCollections(clock=lambda: clock[0])
    clock[0] += gcpolicy.IDLE_EVERY
    assert not full.tick(100, 50_000)   # load until now
    for live in (50_000, 20_000, gcpolicy.DRAINED + 1):
        clock[0] += 1.0
        assert not full.tick(100, live)   # quiet, but the transactions are still there
    clock[0] += 1.0
    assert full.tick(100, gcpolicy.DRAINED) and runs == [()]


def test_start_freezes_and_sets_thresholds():
    old = gc.get_threshold()
    try:
        gcpolicy.start()
        assert gc.get_threshold() == gcpolicy.THRESHOLDS and gc.isenabled()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*old)


class _Generations:
    """The generations the collector starts on, seen through gc.callbacks."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self.seen.append(info["generation"])

    def __enter__(self) -> "_Generations":
        self._old = gc.get_threshold()
        gcpolicy.start()
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)
        gc.unfreeze()
        gc.enable()
        gc.set_threshold(*self._old)


def test_light_load_collects_gen0_only():
    """Below BUSY_RATE young cycles are found quickly; survivors of gen0 are not walked
    again before a full collection."""
    with _Generations() as generations:
        full = gcpolicy.FullCollections(clock=lambda: 0.0)
        for received in (0, 10, gcpolicy.BUSY_RATE - 1 + 10):
            assert not full.tick(received)
            assert gc.isenabled()
        kept = [[] for _ in range(50 * gcpolicy.THRESHOLDS[0])]  # fifty gen0 collections' worth
        assert kept and generations.seen and set(generations.seen) == {0}


def test_under_load_nothing_young_is_walked():
    """From BUSY_RATE messages a second, what a load makes is never walked by a
    collection before a full one: each tick freezes it. When the load drops, gen0
    collections resume."""
    with _Generations() as generations:
        full = gcpolicy.FullCollections(clock=lambda: 0.0)
        received = 0
        assert not full.tick(received)
        kept = []
        for _ in range(5):
            received += gcpolicy.BUSY_RATE
            assert not full.tick(received)
            assert not gc.isenabled()
            frozen = gc.get_freeze_count()
            kept.append([[] for _ in range(20_000)])   # a second's worth of a busy box
            assert gc.get_freeze_count() == frozen
        assert generations.seen == []
        frozen = gc.get_freeze_count()
        received += gcpolicy.BUSY_RATE
        assert not full.tick(received)
        assert gc.get_freeze_count() >= frozen + 20_000 and gc.get_count()[0] < 5
        received += gcpolicy.BUSY_RATE - 1
        assert not full.tick(received)
        assert gc.isenabled()
        kept.append([[] for _ in range(5 * gcpolicy.THRESHOLDS[0])])
        assert set(generations.seen) == {0}


class _Node:
    def __init__(self) -> None:
        self.me = self


def test_cycles_frozen_under_load_are_found_by_the_full_collection():
    """A cycle that became garbage under load has been frozen by a tick; the full
    collection must look at the frozen objects too (gc.collect alone does not)."""
    import weakref

    clock = [0.0]
    with _Generations():
        full = gcpolicy.FullCollections(clock=lambda: clock[0])
        assert not full.tick(0)
        node = _Node()
        gone = weakref.ref(node)
        del node
        clock[0] += 1.0
        assert not full.tick(gcpolicy.BUSY_RATE)   # busy: frozen, not collected
        assert gone() is not None
        gc.collect()
        assert gone() is not None                  # what a plain collection leaves
        clock[0] += gcpolicy.IDLE_EVERY
        assert full.tick(gcpolicy.BUSY_RATE)       # idle: the full collection
        assert gone() is None


@contextlib.contextmanager
def _collector_off() -> Iterator[None]:
    """No automatic collection: gc.collect() then counts the cyclic garbage of what
    ran, no more."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_registrations_leave_no_cyclic_garbage(loop):
    """The policy leaves cycles among older objects to the full collection: the
    registrar's two paths must make none (a challenge, a registration, a refresh)."""
    from tests.unit.test_register_express import PASSWORDS, PHONES, Box, _datagram, authorization

    boxes = []
    with _collector_off():
        for express in (True, False):
            box = Box(express=express)
            boxes.append(box)
            gc.collect()
            for n in range(1, 201):
                box.feed(_datagram(PHONES[0], n, None))
                answer = box.feed(_datagram(PHONES[0], n, authorization(box, "1000",
                                                                      PASSWORDS["1000"])))
                assert answer[0][1].startswith(b"SIP/2.0 200 OK")
            box.endpoint.layer.handle_timer(box.endpoint.now + 100.0)  # Timer J ends them
            assert gc.collect() == 0, "cyclic garbage from the registrar"
    assert boxes[0].served == 400 and boxes[1].served == 0


def test_refused_datagrams_leave_no_cyclic_garbage(loop):
    """What anyone can send: RFC 4475's torture messages (malformed, unknown schemes,
    unsupported extensions, bad URIs), a wrong password and a broken datagram, through
    both paths. Under load their cycles, if any, would wait for a full collection."""
    from pathlib import Path

    from appliance.sip.transaction import Peer
    from tests.unit.test_register_express import PASSWORDS, PHONES, Box, _datagram, authorization

    torture = [path.read_bytes() for path in
               sorted((Path(__file__).parent.parent / "data" / "rfc4475").glob("*.dat"))]
    assert len(torture) == 50
    with _collector_off():
        for express in (True, False):
            for hook in ("express_register", "express_invite"):
                box = Box(express=express, hook=hook)
                answered = 0
                for round_ in range(3):
                    if round_ == 1:
                        gc.collect()   # what the first round imported on first use
                    for i, datagram in enumerate(torture):
                        peer = Peer("udp", "192.0.2.7", 5000 + i)
                        answered += bool(box.feed(datagram, peer))
                    wrong = authorization(box, "1000", PASSWORDS["1000"] + "x")
                    answer = box.feed(_datagram(PHONES[0], 10 + round_, wrong))
                    assert answer[0][1].startswith(b"SIP/2.0 401")
                    box.feed(b"INVITE sip:1000@example.com SIP/2.0\r\nVia: \xff\r\n\r\n")
                assert answered > 90
                box.endpoint.layer.handle_timer(box.endpoint.now + 100.0)
                box.endpoint.pump()
                assert gc.collect() == 0, ("cyclic garbage from refused datagrams", express, hook)


SDP = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       b"m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


def _message(start: str, lines: list[str], body: bytes = b"") -> bytes:
    extra = ["Content-Type: application/sdp"] if body else []
    head = "\r\n".join([start, *lines, *extra, f"Content-Length: {len(body)}"])
    return head.encode() + b"\r\n\r\n" + body


def test_calls_leave_no_cyclic_garbage():
    """A whole call through the PBX (challenge, ringing, answer, ACK, BYE) in process, as
    the bench's SIPp scenario makes it: nothing for the cycle collector afterwards. And
    while its transactions live on (32 s of Timers L, M and J, and the BYE's stale Timer F
    entry), an ended call keeps no parsed message: the BYE it sent is released once
    answered, and the ACK it would send again is kept as bytes."""
    from appliance.bus import Bus
    from appliance.pbx.core import Pbx
    from appliance.pbx.location import Binding, Location
    from appliance.sip.digest import answer_challenge, parse_challenge
    from appliance.sip.endpoint import Endpoint
    from appliance.sip.message import Request
    from appliance.sip.transaction import RELEASED, Peer, Timers
    from appliance.store.config import Extension, default_config
    from tests.peers.rawsip import SipMessage, parse_message

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    cfg = default_config()
    cfg.extensions = {"200": Extension(password="caller-pw"), "300": Extension(password="x1234")}
    cfg.media.relay_extension_calls = False
    endpoint = Endpoint(Timers())
    sent: list[tuple[Peer, bytes]] = []
    endpoint.transports.send = lambda peer, data: sent.append((peer, data))
    endpoint.transports.local["udp"] = ("127.0.0.1", 5060)
    pbx = Pbx(endpoint, cfg, Location(None), Bus(), b"k" * 32)
    endpoint.tu = pbx
    caller, callee = Peer("udp", "127.0.0.1", 5070), Peer("udp", "127.0.0.1", 5080)
    pbx.location.put("300", Binding("sip:300@127.0.0.1:5080", 2e9, "reg", 1, callee))
    later: list = []   # what a call leaves to run later (its stand-in's end): run at once

    class Handle:
        def __init__(self, item: tuple) -> None:
            self.item = item

        def cancel(self) -> None:   # the ring timer of an answered call
            if self.item in later:
                later.remove(self.item)

    def call_later(delay: float, fn, *args) -> Handle:
        later.append((fn, args))
        return Handle(later[-1])

    loop.call_later = call_later  # type: ignore

    def feed(data: bytes, peer: Peer) -> list[SipMessage]:
        endpoint._on_bytes(data, peer)
        out = [parse_message(d) for _, d in sent]
        sent.clear()
        return out

    def h(m: SipMessage, name: str) -> str:
        value = m.header(name)
        assert value is not None, (name, m.start_line)
        return value

    def copied(m: SipMessage, *names: str) -> list[str]:
        return [f"{name}: {h(m, name)}" for name in names]

    def one_call(n: int) -> None:
        ruri = "sip:300@127.0.0.1:5060"
        via = f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-{n}-{{}};rport"
        common = [f"From: <sip:200@127.0.0.1>;tag=a{n}", f"Call-ID: call-{n}",
                  "Max-Forwards: 70"]
        invite = [*common, "To: <sip:300@127.0.0.1>", "Contact: <sip:200@127.0.0.1:5070>"]
        [challenge] = feed(_message(f"INVITE {ruri} SIP/2.0",
                                    [via.format(1), *invite, "CSeq: 1 INVITE"], SDP), caller)
        assert challenge.start_line.startswith("SIP/2.0 407")
        assert feed(_message(f"ACK {ruri} SIP/2.0", [via.format(1), *common,
                                                    *copied(challenge, "To"), "CSeq: 1 ACK"]),
                    caller) == []
        creds = answer_challenge(parse_challenge(h(challenge, "proxy-authenticate")), "INVITE",
                                 ruri, "200", "caller-pw")
        out = feed(_message(f"INVITE {ruri} SIP/2.0", [
            via.format(2), *invite, "CSeq: 2 INVITE",
            f"Proxy-Authorization: {creds.to_header()}"], SDP), caller)
        [leg_b] = [m for m in out if m.start_line.startswith("INVITE ")]
        answer = [*copied(leg_b, "Via", "From"), f"To: {h(leg_b, 'to')};tag=b{n}",
                  *copied(leg_b, "Call-ID", "CSeq"), "Contact: <sip:300@127.0.0.1:5080>"]
        feed(_message("SIP/2.0 180 Ringing", answer), callee)
        [ok] = [m for m in feed(_message("SIP/2.0 200 OK", answer, SDP), callee)
                if m.start_line.startswith("SIP/2.0 200")]
        target = h(ok, "contact").strip("<>")
        dialog = [*common, *copied(ok, "To")]
        feed(_message(f"ACK {target} SIP/2.0", [via.format(3), *dialog, "CSeq: 2 ACK"]),
             caller)
        out = feed(_message(f"BYE {target} SIP/2.0", [via.format(4), *dialog, "CSeq: 3 BYE"]),
                   caller)
        [bye] = [m for m in out if m.start_line.startswith("BYE ")]
        feed(_message("SIP/2.0 200 OK", copied(bye, "Via", "From", "To", "Call-ID", "CSeq")),
             callee)

    one_call(0)   # first: what a call imports on first use
    gc.collect()
    gc.disable()
    try:
        for n in range(1, 51):
            one_call(n)
        kept = Counter(o.method for o in gc.get_objects()
                       if isinstance(o, Request) and o is not RELEASED)
        assert not kept, kept   # of the calls 0 to 50
        endpoint.layer.handle_timer(endpoint.now + 1000.0)  # every transaction ends
        endpoint.pump()
        for fn, args in later:
            fn(*args)
        assert not pbx.calls and not pbx.dialogs
        assert gc.collect() == 0, "cyclic garbage from calls"
    finally:
        gc.enable()
        asyncio.set_event_loop(None)
        loop.close()
