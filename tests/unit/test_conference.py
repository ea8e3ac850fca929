"""Conference rooms without a network peer: the PIN dialogue (sans-IO), the prompts,
and a room call driven through a fake SIP endpoint (real RTP sockets on loopback)."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import numpy as np
import pytest

from appliance.bus import Bus, RoomJoined, RoomLeft, RoomRefused
from appliance.media import prompts as prompts_mod
from appliance.media.prompts import NAMES, TEXTS, Prompts, fallback_tone, generate
from appliance.media.rtp import PortAllocator
from appliance.media.sdp import Codec, parse
from appliance.media.tones import peak_frequency, tone, write_wav
from appliance.pbx.conference import (
    Conferences,
    Hangup,
    Join,
    PinEntry,
    Play,
    mix_rate,
)
from appliance.sip.message import Request, make_response, parse_message
from appliance.sip.transaction import ClientTransaction, Peer
from appliance.store.config import Config, Room

# -- PinEntry ---------------------------------------------------------------------------------


def feed(pin: PinEntry, digits: str, now: float = 0.0) -> list:
    out = []
    for d in digits:
        out += pin.feed(d, now)
    return out


def test_no_pin_joins_at_once_with_a_welcome() -> None:
    pin = PinEntry(None)
    assert pin.start(0.0) == [Join(), Play("welcome")]
    assert pin.state == "accepted" and pin.get_timer() is None
    assert feed(pin, "1234#") == []


def test_right_pin_by_length_or_pound() -> None:
    pin = PinEntry("2468")
    assert pin.start(0.0) == [Play("enter_pin")]
    assert feed(pin, "246") == []
    assert pin.feed("8", 1.0) == [Join(), Play("welcome")]
    assert pin.state == "accepted"
    assert pin.feed("#", 1.1) == []  # the pound after a complete PIN changes nothing

    pin = PinEntry("2468")
    pin.start(0.0)
    assert feed(pin, "#") == []  # a stray pound with nothing entered
    assert feed(pin, "12*") == []  # star starts over
    assert feed(pin, "2468") == [Join(), Play("welcome")]


def test_short_pin_submitted_with_pound_is_wrong() -> None:
    pin = PinEntry("2468")
    pin.start(0.0)
    assert feed(pin, "24#") == [Play("wrong_pin"), Play("enter_pin")]
    assert pin.tries == 1 and pin.digits == ""


def test_three_wrong_pins_hang_up() -> None:
    pin = PinEntry("2468")
    pin.start(0.0)
    assert feed(pin, "1111") == [Play("wrong_pin"), Play("enter_pin")]
    assert feed(pin, "9999") == [Play("wrong_pin"), Play("enter_pin")]
    assert feed(pin, "0000") == [Play("wrong_pin"), Play("goodbye"), Hangup("wrong-pin")]
    assert pin.state == "rejected" and pin.get_timer() is None
    assert feed(pin, "2468") == []  # too late


def test_silence_repeats_the_request_then_hangs_up() -> None:
    pin = PinEntry("123", timeout=10.0)
    pin.start(0.0)
    assert pin.get_timer() == 10.0
    assert pin.handle_timer(9.9) == []  # not yet
    assert pin.handle_timer(10.0) == [Play("enter_pin")]
    assert pin.get_timer() == 20.0
    assert pin.handle_timer(20.0) == [Play("enter_pin")]
    assert pin.handle_timer(30.0) == [Play("goodbye"), Hangup("no-pin")]
    assert pin.state == "rejected"


def test_a_digit_restarts_the_timer_and_a_partial_pin_counts_as_a_try() -> None:
    pin = PinEntry("123", timeout=10.0)
    pin.start(0.0)
    pin.feed("1", 5.0)
    assert pin.get_timer() == 15.0
    assert pin.handle_timer(15.0) == [Play("wrong_pin"), Play("enter_pin")]
    assert pin.tries == 1 and pin.silences == 0


def test_mix_rate() -> None:
    assert mix_rate(Codec(0, "PCMU", 8000)) == 8000
    assert mix_rate(Codec(8, "PCMA", 8000)) == 8000
    assert mix_rate(Codec(9, "G722", 8000)) == 16000
    assert mix_rate(Codec(111, "opus", 48000, 2)) == 16000


# -- prompts ----------------------------------------------------------------------------------


def test_every_prompt_has_both_languages() -> None:
    assert set(TEXTS) == {"en", "zh"}
    assert set(TEXTS["zh"]) == set(NAMES) == {"enter_pin", "wrong_pin", "welcome", "goodbye"}


def test_missing_prompt_plays_a_tone_and_is_logged_once(tmp_path, caplog) -> None:
    p = Prompts([tmp_path])
    with caplog.at_level(logging.WARNING, "appliance.media.prompts"):
        a = p.get("en", "enter_pin", 8000)
        b = p.get("en", "enter_pin", 16000)
        p.get("en", "enter_pin", 8000)
    assert len([r for r in caplog.records if "enter_pin" in r.message]) == 1
    assert a.dtype == np.int16 and a.size == round(0.3 * 8000) and b.size == round(0.3 * 16000)
    assert abs(peak_frequency(a, 8000) - 440) < 5
    assert fallback_tone("wrong_pin", 8000).size != fallback_tone("goodbye", 8000).size


def test_prompt_files_are_found_resampled_trimmed_and_levelled(tmp_path) -> None:
    builtin, data = tmp_path / "builtin", tmp_path / "data"
    (builtin / "en").mkdir(parents=True)
    (data / "prompts" / "en").mkdir(parents=True)
    quiet = tone(500, 1.0, 22050, level=-30.0)
    padded = np.concatenate([np.zeros(22050, np.int16), quiet, np.zeros(22050, np.int16)])
    write_wav(builtin / "en" / "welcome.wav", padded, 22050)
    write_wav(builtin / "en" / "goodbye.wav", tone(700, 0.5, 22050), 22050)
    write_wav(data / "prompts" / "en" / "goodbye.wav", tone(900, 0.5, 22050), 22050)
    p = Prompts([data / "prompts", builtin])

    welcome = p.get("en", "welcome", 8000)
    assert 1.0 <= welcome.size / 8000 <= 1.2  # the second of silence each side is gone
    assert abs(peak_frequency(welcome, 8000) - 500) < 3
    peak_db = 20 * np.log10(np.abs(welcome.astype(np.int32)).max() / 32767)
    assert abs(peak_db - prompts_mod.PEAK_DBFS) < 0.5
    # the data folder's own recording comes first
    assert abs(peak_frequency(p.get("en", "goodbye", 16000), 16000) - 900) < 3
    assert p.find("zh", "goodbye") is None


def test_unreadable_prompt_file_falls_back(tmp_path) -> None:
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "welcome.wav").write_bytes(b"not a wav file at all")
    pcm = Prompts([tmp_path]).get("en", "welcome", 8000)
    assert pcm.size and pcm.dtype == np.int16


@pytest.mark.skipif(prompts_mod.espeak_binary() is None, reason="espeak-ng not installed")
def test_espeak_generates_english_and_chinese(tmp_path) -> None:
    made = generate(tmp_path, languages=["en", "zh"])
    assert len(made) == 2 * len(NAMES)
    p = Prompts([tmp_path])
    for lang in ("en", "zh"):
        pcm = p.get(lang, "enter_pin", 8000)
        assert 1.0 < pcm.size / 8000 < 10.0
        assert p.is_available(lang, "enter_pin")
    assert generate(tmp_path) == []  # kept unless forced


# -- a room call through a fake SIP endpoint ---------------------------------------------------


class FakeEndpoint:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.responses: list = []
        self.requests: list = []
        self.sent_txns: list = []
        self.released: list = []
        self.layer = SimpleNamespace(release=self.released.append)

    @property
    def now(self) -> float:
        return self.loop.time()

    def local_host(self, peer=None) -> str:
        return "127.0.0.1"

    def contact_uri(self, peer, user=None) -> str:
        return f"sip:{user}@127.0.0.1:5060"

    def make_via(self, peer) -> str:
        return "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKroomtest"

    def respond(self, txn, resp) -> None:
        self.responses.append(resp)

    def send_request(self, req, peer):
        self.requests.append(req)
        n = len(self.sent_txns)
        self.sent_txns.append(ClientTransaction(n, req, peer, req.method, (str(n), req.method),
                                                b""))
        return self.sent_txns[-1]


class FakePbx:
    allow = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE"

    def __init__(self, loop, rooms: dict[str, Room], timeout: int = 60) -> None:
        self.endpoint = FakeEndpoint(loop)
        self.config = Config(rooms=rooms)
        self.config.media.timeout = timeout
        self.dialogs: dict = {}
        self.ports = PortAllocator(range(41000, 41100))
        self.bus = Bus()
        self.events: list = []
        self.bus.subscribe(None, self.events.append)
        self.pending_byes: set = set()

    def reply(self, txn, status, reason=None, **headers):
        resp = make_response(txn.request, status, reason, to_tag=txn.request.to.tag or "t0")
        for k, v in headers.items():
            resp.headers.add(k.replace("_", "-"), v)
        self.endpoint.respond(txn, resp)
        return resp


OFFER = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
         "m=audio 42000 RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
         "a=fmtp:101 0-15\r\na=sendrecv\r\n")
PEER = Peer("udp", "127.0.0.1", 5099)


def request(method: str, cseq: int, to_tag: str | None = None, body: str = "",
            ctype: str = "application/sdp", call_id: str = "room-call-1") -> Request:
    to = "<sip:800@127.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
    head = (f"{method} sip:800@127.0.0.1 SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK" + f"{method}{cseq}\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:100@127.0.0.1>;tag=caller\r\n"
            f"To: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
            "Contact: <sip:100@127.0.0.1:5099>\r\n")
    if body:
        head += f"Content-Type: {ctype}\r\n"
    msg = parse_message((head + f"Content-Length: {len(body)}\r\n\r\n" + body).encode())
    assert isinstance(msg, Request)
    return msg


def txn_for(req: Request) -> SimpleNamespace:
    return SimpleNamespace(request=req, user_data=None)


def run(coro):
    return asyncio.run(coro)


def test_room_call_pin_info_join_bye_and_full() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        pbx = FakePbx(loop, {"800": Room(pin="2468", max_participants=1)})
        rooms = Conferences(pbx, Prompts([]))  # type: ignore[arg-type]
        ep = pbx.endpoint

        invite = request("INVITE", 1, body=OFFER)
        call = rooms.admit(txn_for(invite), invite, PEER, "800", "100")
        assert call is not None
        await asyncio.sleep(0.05)
        ok = ep.responses[-1]
        assert ok.status == 200 and ok.headers.get("contact") == "<sip:800@127.0.0.1:5060>"
        answer = parse(ok.body).audio()
        assert answer.formats == ["8", "101"]  # the caller's first codec and telephone-event
        assert pbx.dialogs[(invite.call_id, call.tag)] is call

        # the room is full while this caller enters the PIN
        other = request("INVITE", 1, body=OFFER, call_id="room-call-2")
        assert rooms.admit(txn_for(other), other, PEER, "800", "101") is None
        assert ep.responses[-1].status == 486 and ep.responses[-1].reason == "Room full"
        assert any(isinstance(e, RoomRefused) and e.status == 486 for e in pbx.events)

        call.on_ack(request("ACK", 1, call.tag))
        assert call.state == "lobby"
        for i, digit in enumerate("2468"):
            info = request("INFO", 2 + i, call.tag, f"Signal={digit}\r\nDuration=160\r\n",
                           "application/dtmf-relay")
            call.on_request(txn_for(info), info)
            assert ep.responses[-1].status == 200
        assert call.state == "joined"
        assert rooms.participants("800") == ["100"]
        assert [e.count for e in pbx.events if isinstance(e, RoomJoined)] == [1]

        bye = request("BYE", 9, call.tag)
        call.on_request(txn_for(bye), bye)
        assert ep.responses[-1].status == 200
        assert call.state == "ended" and call.endpoint.closed
        assert not pbx.dialogs and not rooms.calls and "800" not in rooms.rooms
        left = [e for e in pbx.events if isinstance(e, RoomLeft)]
        assert left and left[0].reason == "hangup" and left[0].count == 0
        assert pbx.ports.in_use == 0

    run(main())


def test_room_call_reinvite_hold_unknown_info_and_shutdown_bye() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        pbx = FakePbx(loop, {"800": Room()})
        rooms = Conferences(pbx, Prompts([]))  # type: ignore[arg-type]
        ep = pbx.endpoint
        invite = request("INVITE", 1, body=OFFER)
        call = rooms.admit(txn_for(invite), invite, PEER, "800", "100")
        await asyncio.sleep(0.05)
        first = parse(ep.responses[-1].body)
        call.on_ack(request("ACK", 1, call.tag))
        assert call.state == "joined"  # no PIN

        hold = request("INVITE", 2, call.tag, OFFER.replace("a=sendrecv", "a=sendonly"))
        txn = txn_for(hold)
        call.on_request(txn, hold)
        r = ep.responses[-1]
        assert r.status == 200 and txn.user_data is call
        again = parse(r.body)
        assert again.audio().direction == "recvonly" and not call.endpoint.sending
        assert again.origin.version == first.origin.version + 1
        assert rooms.rooms["800"].mixer.participants[call].muted

        resume = request("INVITE", 3, call.tag, OFFER)
        call.on_request(txn_for(resume), resume)
        assert call.endpoint.sending and not rooms.rooms["800"].mixer.participants[call].muted

        weird = request("INFO", 4, call.tag, "hello", "text/plain")
        call.on_request(txn_for(weird), weird)
        assert ep.responses[-1].status == 415
        stale = request("INFO", 2, call.tag)
        call.on_request(txn_for(stale), stale)
        assert ep.responses[-1].status == 500  # CSeq went backwards

        assert rooms.hang_up_all() == 1
        bye = ep.requests[-1]
        assert bye.method == "BYE" and bye.uri == "sip:100@127.0.0.1:5099"
        assert len(pbx.pending_byes) == 1
        (pending,) = pbx.pending_byes
        bye_txn = ep.sent_txns[-1]
        assert bye_txn.user_data is pending
        pending.on_response(bye_txn, make_response(bye, 200))
        assert not pbx.pending_byes
        assert ep.released == [bye_txn]  # answered: the transaction keeps no parsed BYE
        assert call.state == "ended" and call.reason == "shutdown"
        rooms.stop()

    run(main())


def test_media_timeout_and_bad_offers() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        pbx = FakePbx(loop, {"800": Room()}, timeout=5)
        rooms = Conferences(pbx, Prompts([]))  # type: ignore[arg-type]
        ep = pbx.endpoint

        g729 = OFFER.replace("RTP/AVP 8 0 101", "RTP/AVP 18")
        invite = request("INVITE", 1, body=g729)
        rooms.admit(txn_for(invite), invite, PEER, "800", "100")
        await asyncio.sleep(0.05)
        assert ep.responses[-1].status == 488
        assert not rooms.calls and pbx.ports.in_use == 0

        invite = request("INVITE", 1, body=OFFER, call_id="room-call-3")
        call = rooms.admit(txn_for(invite), invite, PEER, "800", "100")
        await asyncio.sleep(0.05)
        call.on_ack(request("ACK", 1, call.tag, call_id="room-call-3"))
        now = loop.time()
        call.check_media(now + 4.0, 5)
        assert call.state == "joined"
        call.check_media(now + 6.0, 5)
        assert call.state == "ended" and call.reason == "media-timeout"
        assert ep.requests[-1].method == "BYE"

    run(main())


def test_cancel_while_the_port_opens_gets_487() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        pbx = FakePbx(loop, {"800": Room()})
        rooms = Conferences(pbx, Prompts([]))  # type: ignore[arg-type]
        invite = request("INVITE", 1, body=OFFER)
        txn = txn_for(invite)
        call = rooms.admit(txn, invite, PEER, "800", "100")
        call.on_cancel(txn)
        await asyncio.sleep(0.05)
        assert [r.status for r in pbx.endpoint.responses] == [487]
        assert call.state == "ended" and pbx.ports.in_use == 0 and not pbx.dialogs

    run(main())


def test_three_wrong_pins_by_info_end_with_a_bye_after_the_goodbye() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        pbx = FakePbx(loop, {"800": Room(pin="2468")})
        rooms = Conferences(pbx, Prompts([]))  # type: ignore[arg-type]
        ep = pbx.endpoint
        invite = request("INVITE", 1, body=OFFER)
        call = rooms.admit(txn_for(invite), invite, PEER, "800", "100")
        await asyncio.sleep(0.05)
        # an INFO that overtakes the ACK is kept for the PIN
        first = request("INFO", 2, call.tag, "Signal=1\r\n", "application/dtmf-relay")
        call.on_request(txn_for(first), first)
        call.on_ack(request("ACK", 1, call.tag))
        assert call.pin.digits == "1"
        assert call.lobby.queued_seconds() == 0.0  # the key cut the enter-PIN prompt short
        for i, digit in enumerate("11199990000"):
            info = request("INFO", 3 + i, call.tag, digit, "application/dtmf")
            call.on_request(txn_for(info), info)
            assert ep.responses[-1].status == 200
        assert call.pin.state == "rejected"
        queued = call.lobby.queued_seconds()  # "wrong PIN" and goodbye, nothing else
        expected = (fallback_tone("wrong_pin", 8000).size + fallback_tone("goodbye", 8000).size)
        assert abs(queued - expected / 8000) < 0.05
        assert not any(r.method == "BYE" for r in ep.requests)
        refused = [e for e in pbx.events if isinstance(e, RoomRefused)]
        assert refused and refused[0].reason == "wrong-pin"
        await asyncio.sleep(queued + 0.5)
        assert [r.method for r in ep.requests] == ["BYE"]
        assert call.state == "ended" and call.reason == "wrong-pin"
        assert not any(isinstance(e, RoomJoined) for e in pbx.events)
        assert "800" not in rooms.rooms

    run(main())
