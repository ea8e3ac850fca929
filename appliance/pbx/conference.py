"""Conference rooms: callers dial a room number, enter its PIN and talk in a mixed room.

The dial plan hands a caller for a room number to `Conferences.admit` (from
`Call._hand_to_room`, after authentication). From there the room is the UAS
of that dialog itself:

1. ``486 Room full`` when the room already holds `max_participants` callers
   (those still entering the PIN count: their place is kept for them);
2. else an RTP endpoint from `pbx.ports` and ``200 OK`` with the SDP answer
   (RFC 3264 §6.1: the caller's first codec among PCMU, PCMA, G.722 and Opus,
   plus telephone-event at its clock rate when offered); an INVITE without
   SDP gets our offer and the answer comes in the ACK;
3. on the ACK, a room with a PIN puts the caller in a *lobby*: a one-person
   `Mixer` that plays the prompts to them alone and reports RFC 4733 digits;
   SIP INFO (application/dtmf-relay, application/dtmf) digits count as well.
   `PinEntry` (sans-IO) decides: the right PIN joins, a wrong one is told and
   asked again, and after three wrong tries (or three silences) the caller
   hears goodbye and gets a BYE;
4. joining moves the caller's endpoint into the room's `Mixer` (one `Mixer` and
   `TickDriver` per active room, made on the first join, stopped when the last
   one leaves); the others hear the join tone, the joiner hears the welcome,
   and every participant hears the mix of everyone but themself (N-1).

In the dialog: BYE (200, leave, close the endpoint), INFO (digits, 200),
re-INVITE/UPDATE (a new answer from the same endpoint; hold mutes the
caller in the room), OPTIONS. `media.timeout` seconds without RTP from a
caller ends its call with a BYE, and so does daemon shutdown
(`hang_up_all`). The bus gets `RoomJoined`, `RoomLeft` and `RoomRefused`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..bus import RoomJoined, RoomLeft, RoomRefused
from ..media.codecs import sample_rate
from ..media.dtmf import DtmfError, DtmfEvent, parse_dtmf_info
from ..media.mixer import Mixer, Participant, TickDriver
from ..media.prompts import Prompts
from ..media.rtp import PortsExhausted, RtpEndpoint
from ..media.sdp import (
    Codec,
    SdpError,
    SdpOrigin,
    SessionDescription,
    answer_codecs,
    audio_codec,
    build_answer,
    build_offer,
    parse,
    telephone_event,
)
from ..media.tones import join_tone, leave_tone
from ..sip.dialog import Dialog, new_tag
from ..sip.message import ParseError, Request, Response, make_response
from ..sip.transaction import ClientTransaction, Peer, ServerTransaction
from .call import next_hop
from .core import PendingBye

if TYPE_CHECKING:
    from .core import Pbx

log = logging.getLogger("appliance.conference")

#: What a room can take from a caller (aiortc's coders behind the mixer).
SUPPORTED = [Codec.parse(c) for c in (
    "PCMU/8000", "PCMA/8000", "G722/8000", "opus/48000/2",
    "telephone-event/8000", "telephone-event/16000", "telephone-event/48000")]
#: Our offer when the INVITE carried none (RFC 3264 §5).
OFFER = ["PCMU/8000", "PCMA/8000", "G722/8000", "telephone-event/8000"]

PTIME_MS = 20
PIN_TRIES = 3
PIN_TIMEOUT = 15.0  # seconds without a digit before the PIN prompt is repeated
WATCH_INTERVAL = 1.0  # how often media timeouts are checked
BYE_AFTER_PROMPT = 0.3  # seconds of silence after a goodbye before the BYE


def _is_sdp(req: Request | Response) -> bool:
    ctype = (req.headers.get("content-type") or "").split(";")[0].strip().lower()
    return bool(req.body) and ctype == "application/sdp"


def mix_rate(codec: Codec) -> int:
    """The rate a room (or lobby) mixes at for a caller with `codec`: 16 kHz for the
    wideband codecs (G.722, Opus), else 8 kHz (G.711 by table lookup)."""
    return 16000 if sample_rate(codec) > 8000 else 8000


# -- the PIN dialogue, sans-IO --------------------------------------------------------------

@dataclass(frozen=True)
class Play:
    """Play prompt `name` to the caller (after anything already queued)."""

    name: str


@dataclass(frozen=True)
class Join:
    """Put the caller in the room."""


@dataclass(frozen=True)
class Hangup:
    """End the call once the queued prompts have played."""

    reason: str


Action = Play | Join | Hangup


class PinEntry:
    """What a caller hears and what happens while they enter a room's PIN.

    Sans-IO: `start(now)`, `feed(digit, now)` and `handle_timer(now)` return
    the `Action`s to carry out; `get_timer()` says when `handle_timer` is due.

    - No PIN: welcome and join at once.
    - Digits collect until ``#`` or until as many digits as the PIN has; ``*``
      starts over; a ``#`` with nothing entered is ignored.
    - Right PIN: join, then the welcome. Wrong PIN: "wrong PIN" and the
      request again; the `max_tries`-th wrong PIN: "wrong PIN", goodbye, hang up.
    - `timeout` seconds without a digit: what was entered counts as a try;
      with nothing entered the request is repeated, and after `max_tries`
      such silences the caller hears goodbye and is hung up on.
    """

    def __init__(self, pin: str | None, *, max_tries: int = PIN_TRIES,
                 timeout: float = PIN_TIMEOUT) -> None:
        self.pin = pin or None
        self.max_tries = max_tries
        self.timeout = timeout
        self.state = "new"  # new → collecting → accepted | rejected
        self.digits = ""
        self.tries = 0  # wrong PINs entered
        self.silences = 0
        self._deadline: float | None = None

    def get_timer(self) -> float | None:
        return self._deadline if self.state == "collecting" else None

    def start(self, now: float) -> list[Action]:
        if self.state != "new":
            return []
        if self.pin is None:
            self.state = "accepted"
            return [Join(), Play("welcome")]
        self.state = "collecting"
        self._deadline = now + self.timeout
        return [Play("enter_pin")]

    def feed(self, digit: str, now: float) -> list[Action]:
        if self.state != "collecting":
            return []
        self._deadline = now + self.timeout
        if digit == "#":
            return self._check() if self.digits else []
        if digit == "*":
            self.digits = ""
            return []
        if not digit.isdigit():
            return []
        self.digits += digit
        if self.pin is not None and len(self.digits) >= len(self.pin):
            return self._check()
        return []

    def handle_timer(self, now: float) -> list[Action]:
        if self.state != "collecting" or self._deadline is None or now < self._deadline:
            return []
        self._deadline = now + self.timeout
        if self.digits:
            return self._check()
        self.silences += 1
        if self.silences >= self.max_tries:
            self.state = "rejected"
            return [Play("goodbye"), Hangup("no-pin")]
        return [Play("enter_pin")]

    def _check(self) -> list[Action]:
        entered, self.digits = self.digits, ""
        assert self.pin is not None
        if hmac.compare_digest(entered.encode(), self.pin.encode()):
            self.state = "accepted"
            return [Join(), Play("welcome")]
        self.tries += 1
        if self.tries >= self.max_tries:
            self.state = "rejected"
            return [Play("wrong_pin"), Play("goodbye"), Hangup("wrong-pin")]
        return [Play("wrong_pin"), Play("enter_pin")]


# -- media: a caller's lobby and the rooms ----------------------------------------------------

class _Lobby:
    """A one-person mixer: the caller hears only their prompts while entering the PIN.

    The prompts wait in a queue of its own and go to the mixer one 20 ms frame
    per tick, so that a key press can cut them short (barge-in).
    """

    def __init__(self, call: RoomCall) -> None:
        assert call.endpoint is not None and call.codec is not None
        self.call = call
        self.mixer = Mixer(mix_rate(call.codec), on_dtmf=self._dtmf)
        self.participant = self.mixer.attach(call.endpoint, call)
        self.queue: deque[np.ndarray] = deque()
        self.driver = TickDriver(self._tick, self.mixer.ptime)
        self.driver.start()

    def _dtmf(self, pid: Hashable, event: DtmfEvent) -> None:
        self.call.on_digit(event.digit, "rfc4733")

    def _tick(self, now: float) -> None:
        if self.queue and not self.participant.prompt:
            self.mixer.play(self.queue.popleft(), to=self.call)
        self.mixer.tick(now)

    def play(self, pcm: np.ndarray) -> None:
        n = self.mixer.samples
        self.queue.extend(pcm[i:i + n] for i in range(0, len(pcm), n))

    def flush(self) -> None:
        """Stop the prompts still to come (a key was pressed)."""
        self.queue.clear()

    def queued_seconds(self) -> float:
        return (len(self.queue) + len(self.participant.prompt)) * self.mixer.ptime

    def close(self) -> Participant | None:
        self.driver.stop()
        return self.mixer.remove(self.call)


class Room:
    """An active room: its mixer, the driver that ticks it, and who is in it."""

    def __init__(self, number: str, rate: int) -> None:
        self.number = number
        self.mixer = Mixer(rate, on_dtmf=self._dtmf)
        self.driver = TickDriver(self.mixer.tick, self.mixer.ptime)
        self.members: dict[RoomCall, float] = {}  # → loop time joined
        self.driver.start()

    def __len__(self) -> int:
        return len(self.members)

    def _dtmf(self, pid: Hashable, event: DtmfEvent) -> None:
        if isinstance(pid, RoomCall):
            pid.on_digit(event.digit, "rfc4733")

    def add(self, call: RoomCall, now: float, carry: Participant | None = None) -> Participant:
        """Attach `call`'s endpoint; keep the RTP numbering of its lobby stream (same
        SSRC, sequence and timestamps go on) so its phone sees one stream."""
        assert call.endpoint is not None
        p = self.mixer.attach(call.endpoint, call)
        if carry is not None and carry.codec.payload_type == p.codec.payload_type:
            p.ssrc, p.sequence, p.timestamp = carry.ssrc, carry.sequence, carry.timestamp
            p.detector = carry.detector
        tone = join_tone(self.mixer.rate)
        for other in self.members:
            self.mixer.play(tone, to=other)
        self.members[call] = now
        return p

    def remove(self, call: RoomCall) -> float | None:
        joined = self.members.pop(call, None)
        self.mixer.remove(call)
        if joined is not None and self.members:
            tone = leave_tone(self.mixer.rate)
            for other in self.members:
                self.mixer.play(tone, to=other)
        return joined

    def close(self) -> None:
        self.driver.stop()
        for call in list(self.members):
            self.mixer.remove(call)
        self.members.clear()


# -- one caller of a room ----------------------------------------------------------------------

class RoomCall:
    """The dialog between one caller and a room (the box is its UAS).

    States: opening (getting an RTP port) → answered (200 sent) → lobby (PIN)
    → joined → ended. Registered in `pbx.dialogs` under (Call-ID, our tag) and
    as `user_data` of its INVITE server transactions (RFC 6026 callbacks).
    """

    def __init__(self, rooms: Conferences, txn: ServerTransaction, req: Request, source: Peer,
                 number: str, caller: str) -> None:
        self.rooms = rooms
        self.pbx = rooms.pbx
        self.txn = txn
        self.req = req
        self.source = source
        self.number = number
        self.caller = caller or "anonymous"
        self.call_id = req.call_id
        self.tag = new_tag()
        self.state = "opening"
        self.reason = ""
        self.dialog: Dialog | None = None
        self.endpoint: RtpEndpoint | None = None
        self.origin: SdpOrigin | None = None
        self.codec: Codec | None = None
        self.event: Codec | None = None
        self.expect_rtp = True  # the caller's SDP says it sends to us
        self.on_hold = False
        self.pending_offer = False  # we offered in a 2xx: the answer comes in the ACK
        self.language = "en"
        self.pin: PinEntry | None = None
        self.lobby: _Lobby | None = None
        self.room: Room | None = None
        self.media_since = 0.0  # loop time media began (the media timeout counts from it)
        self._early_digits: list[str] = []
        self._pin_timer: asyncio.TimerHandle | None = None
        self._bye_timer: asyncio.TimerHandle | None = None
        txn.user_data = self

    def __repr__(self) -> str:
        return f"<RoomCall {self.caller} room {self.number} {self.state}>"

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.pbx.endpoint.loop

    @property
    def now(self) -> float:
        return self.loop.time()

    # -- answering ----------------------------------------------------------------------
    async def answer(self) -> None:
        """Answer the INVITE (or refuse it); never leaves it unanswered."""
        try:
            await self._answer()
        except Exception:
            log.exception("room %s: answering %s failed", self.number, self.caller)
            if self.state == "opening":
                self._refuse(500, "Server Internal Error")
            else:
                self.hang_up("failed")

    async def _answer(self) -> None:
        pbx, req = self.pbx, self.req
        offer: SessionDescription | None = None
        if req.body:
            if not _is_sdp(req):
                self._refuse(415, "Unsupported Media Type", accept="application/sdp")
                return
            try:
                offer = parse(req.body)
            except SdpError as e:
                log.info("room %s: bad SDP from %s: %s", self.number, self.caller, e)
                self._refuse(488, "Not Acceptable Here")
                return
            if not answer_codecs(offer, SUPPORTED):
                self._refuse(488, "Not Acceptable Here",
                             warning='305 appliance "no common audio codec"')
                return
        try:
            if not req.contacts:
                self._refuse(400, "Missing Contact")
                return
        except ParseError as e:
            self._refuse(400, e.reason)
            return
        address = pbx.endpoint.local_host(self.source)
        try:
            endpoint = await RtpEndpoint.open(address, pbx.ports)
        except (OSError, PortsExhausted) as e:
            log.error("room %s: no RTP port for %s: %s", self.number, self.caller, e)
            self._refuse(503, "No media ports available")
            return
        if self.state != "opening":  # cancelled, or shut down, meanwhile
            endpoint.close()
            return
        self.endpoint = endpoint
        self.origin = SdpOrigin(address)
        if offer is not None:
            sdp = self._answer_offer(offer)
            assert sdp is not None  # the codecs were checked above
        else:
            sdp = build_offer(OFFER, address, endpoint.rtp_port, self.origin, ptime=PTIME_MS)
            self.pending_offer = True
        resp = make_response(req, 200, "OK", to_tag=self.tag, body=bytes(sdp),
                             content_type="application/sdp")
        resp.headers.add("contact", f"<{pbx.endpoint.contact_uri(self.source, self.number)}>")
        resp.headers.add("allow", pbx.allow)
        try:
            self.dialog = Dialog.as_uas(req, resp, self.source)
        except ParseError as e:
            self._refuse(400, e.reason)
            return
        pbx.dialogs[(self.call_id, self.tag)] = self
        self.state = "answered"
        self.media_since = self.now
        pbx.endpoint.respond(self.txn, resp)
        log.info("room %s: answered %s (%s)", self.number, self.caller,
                 self.codec.encoding if self.codec else "offer sent")

    def _refuse(self, status: int, reason: str, **headers: str) -> None:
        if self.state == "opening":
            r = make_response(self.req, status, reason, to_tag=self.tag)
            for name, value in headers.items():
                r.headers.add(name.replace("_", "-"), value)
            self.pbx.endpoint.respond(self.txn, r)
            self.rooms.bus_refused(self, status, reason.lower().replace(" ", "-"))
        self._end(f"refused-{status}")

    def _answer_offer(self, offer: SessionDescription) -> SessionDescription | None:
        """Our answer from the same endpoint; applies the chosen codec and address."""
        assert self.endpoint is not None and self.origin is not None
        ep = self.endpoint
        chosen = answer_codecs(offer, SUPPORTED)
        if not chosen:
            return None
        # One audio codec (the caller's first we take) and its telephone-event: the
        # mixer decodes one payload type per participant.
        first = chosen[0]
        event = next((c for c in chosen if c.is_telephone_event), None)
        answer = build_answer(offer, [first] + ([event] if event else []), ep.host, ep.rtp_port,
                              self.origin, ptime=PTIME_MS)
        if answer is None:
            return None
        media = answer.audio()
        codec = audio_codec(media)
        assert codec is not None
        self._use(codec, telephone_event(media, codec.clock_rate), offer,
                  media.direction if media else "sendrecv")
        return answer

    def _take_answer(self, answer: SessionDescription) -> bool:
        """The caller's answer (in an ACK) to the offer we sent."""
        media = answer.audio()
        codec = next((c for c in (media.codecs if media else [])
                      if any(s.matches(c) for s in SUPPORTED) and not c.is_telephone_event),
                     None)
        if codec is None or media is None:
            return False
        direction = {"sendonly": "recvonly", "recvonly": "sendonly"}.get(
            answer.direction_of(media), answer.direction_of(media))
        self._use(codec, telephone_event(media, codec.clock_rate), answer, direction)
        return True

    def _use(self, codec: Codec, event: Codec | None, remote: SessionDescription,
             our_direction: str | None) -> None:
        """Point the endpoint at the caller's SDP and (re)configure its codec."""
        ep = self.endpoint
        assert ep is not None
        old_event = self.event.payload_type if self.event else None
        changed = self.codec is not None and (
            self.codec.payload_type != codec.payload_type or not self.codec.matches(codec)
            or old_event != (event.payload_type if event else None))
        addr = remote.remote_address()
        if addr is None:
            ep.set_remote(None, None)
        elif addr != ep.signalled:
            ep.set_remote(*addr)
        direction = our_direction or "sendrecv"
        ep.sending = direction in ("sendrecv", "sendonly")
        self.expect_rtp = direction in ("sendrecv", "recvonly")
        # The caller holds (a=sendonly from it, recvonly from us): its music must not
        # reach the room.
        self.on_hold = direction in ("recvonly", "inactive") or addr is None
        self.codec, self.event = codec, event
        ep.configure(codec, event)
        if changed:
            self._reattach()
        if self.room is not None and self in self.room.mixer:
            self.room.mixer.mute(self, self.on_hold)

    def _reattach(self) -> None:
        """A new codec mid-call: the mixer participant is made again for it."""
        if self.lobby is not None:
            self.lobby.close()
            self.lobby = _Lobby(self)
        elif self.room is not None:
            old = self.room.mixer.remove(self)
            p = self.room.mixer.attach(self.endpoint, self)  # type: ignore[arg-type]
            if old is not None:
                p.ssrc, p.sequence, p.timestamp = old.ssrc, old.sequence, old.timestamp

    # -- ACK, then the PIN or the room -----------------------------------------------------
    def on_ack(self, req: Request) -> None:
        if self.state == "ended" or self.dialog is None:
            return
        self.dialog.confirmed = True
        if self.pending_offer:
            self.pending_offer = False
            ok = False
            if _is_sdp(req):
                try:
                    ok = self._take_answer(parse(req.body))
                except SdpError:
                    ok = False
            if not ok:
                log.info("room %s: %s answered our offer with no usable SDP", self.number,
                         self.caller)
                self.hang_up("bad-sdp")
                return
        if self.state == "answered":
            self._start()

    def _start(self) -> None:
        conf = self.pbx.config.rooms.get(self.number)
        if conf is None:
            log.info("room %s is gone; ending %s", self.number, self.caller)
            self.hang_up("no-room")
            return
        self.language = conf.language or self.pbx.config.system.language
        self.media_since = self.now
        assert self.endpoint is not None
        self.endpoint.start_reports()
        self.pin = PinEntry(conf.pin)
        if conf.pin:
            self.state = "lobby"
            self.lobby = _Lobby(self)
            log.info("room %s: %s is entering the PIN", self.number, self.caller)
        self._run(self.pin.start(self.now))
        early, self._early_digits = self._early_digits, []
        for digit in early:
            self.on_digit(digit, "info")

    def on_digit(self, digit: str, how: str) -> None:
        if self.state == "answered" and len(self._early_digits) < 32:
            self._early_digits.append(digit)  # an INFO that overtook the ACK
            return
        if self.state != "lobby" or self.pin is None:
            if self.state == "joined":
                log.debug("room %s: %s pressed %s (%s)", self.number, self.caller, digit, how)
            return
        log.info("room %s: DTMF from %s (%s)", self.number, self.caller, how)
        if self.lobby is not None and self.pin.state == "collecting":
            self.lobby.flush()  # barge-in: a key stops the prompt (but not the goodbye)
        self._run(self.pin.feed(digit, self.now))

    def _run(self, actions: list[Action]) -> None:
        for action in actions:
            if self.state == "ended":
                return
            if isinstance(action, Play):
                self._play(action.name)
            elif isinstance(action, Join):
                self._join()
            elif isinstance(action, Hangup):
                self._hang_up_after_prompts(action.reason)
        self._arm_pin_timer()

    def _play(self, name: str) -> None:
        if self.lobby is not None:
            self.lobby.play(self.rooms.prompts.get(self.language, name, self.lobby.mixer.rate))
        elif self.room is not None and self in self.room.mixer:
            mixer = self.room.mixer
            mixer.play(self.rooms.prompts.get(self.language, name, mixer.rate), to=self)

    def _queued_seconds(self) -> float:
        if self.lobby is not None:
            return self.lobby.queued_seconds()
        if self.room is not None:
            p = self.room.mixer.participants.get(self)
            return len(p.prompt) * self.room.mixer.ptime if p is not None else 0.0
        return 0.0

    def _hang_up_after_prompts(self, reason: str) -> None:
        if reason in ("wrong-pin", "no-pin"):
            log.info("room %s: %s gave no right PIN (%s)", self.number, self.caller, reason)
            self.rooms.bus_refused(self, 0, reason)
        if self._bye_timer is None:
            self._bye_timer = self.loop.call_later(self._queued_seconds() + BYE_AFTER_PROMPT,
                                                   self.hang_up, reason)

    def _arm_pin_timer(self) -> None:
        if self._pin_timer is not None:
            self._pin_timer.cancel()
            self._pin_timer = None
        when = self.pin.get_timer() if self.pin is not None else None
        if when is not None and self.state == "lobby":
            self._pin_timer = self.loop.call_at(when, self._on_pin_timer)

    def _on_pin_timer(self) -> None:
        self._pin_timer = None
        if self.pin is not None and self.state == "lobby":
            self._run(self.pin.handle_timer(self.now))

    def _join(self) -> None:
        carry = None
        if self.lobby is not None:
            carry = self.lobby.close()
            self.lobby = None
        assert self.codec is not None
        room = self.rooms.room_for(self.number, self.codec)
        self.room = room
        room.add(self, self.now, carry)
        if self.on_hold:
            room.mixer.mute(self)
        self.state = "joined"
        count = len(room)
        log.info("room %s: %s joined (%d in the room)", self.number, self.caller, count)
        self.pbx.bus.publish(RoomJoined(self.number, self.call_id, self.caller, count))

    # -- in the dialog ----------------------------------------------------------------------
    def on_request(self, txn: ServerTransaction, req: Request) -> None:
        pbx = self.pbx
        dialog = self.dialog
        if dialog is None or self.state == "ended":
            pbx.reply(txn, 481, "Call/Transaction Does Not Exist")
            return
        if not dialog.check_remote_cseq(req):
            pbx.reply(txn, 500, "Out of order CSeq")
            return
        method = req.method
        if method == "BYE":
            pbx.reply(txn, 200, "OK")
            self._end("hangup")
        elif method == "INFO":
            self._info(txn, req)
        elif method in ("INVITE", "UPDATE"):
            self._reoffer(txn, req)
        elif method == "OPTIONS":
            pbx.reply(txn, 200, "OK", allow=pbx.allow, accept="application/sdp")
        elif method in ("PRACK", "NOTIFY", "REFER", "SUBSCRIBE", "MESSAGE"):
            pbx.reply(txn, 405, "Method Not Allowed")
        else:
            pbx.reply(txn, 501, "Not Implemented", allow=pbx.allow)

    def _info(self, txn: ServerTransaction, req: Request) -> None:
        if not req.body:
            self.pbx.reply(txn, 200, "OK")  # an empty INFO: a keep-alive
            return
        if req.headers.get("info-package"):
            self.pbx.reply(txn, 469, "Bad Info Package")  # RFC 6086: we support none
            return
        try:
            relay = parse_dtmf_info(req.headers.get("content-type") or "", req.body)
        except DtmfError:
            self.pbx.reply(txn, 415, "Unsupported Media Type",
                           accept="application/dtmf-relay, application/dtmf")
            return
        self.pbx.reply(txn, 200, "OK")
        self.on_digit(relay.signal, "info")

    def _reoffer(self, txn: ServerTransaction, req: Request) -> None:
        pbx = self.pbx
        assert self.dialog is not None and self.endpoint is not None
        if req.method == "INVITE":
            txn.user_data = self
        self.dialog.update_target(req)
        assert self.origin is not None
        body: bytes = b""
        if req.body:
            if not _is_sdp(req):
                pbx.reply(txn, 415, "Unsupported Media Type", accept="application/sdp")
                return
            try:
                answer = self._answer_offer(parse(req.body))
            except SdpError:
                answer = None
            if answer is None:
                pbx.reply(txn, 488, "Not Acceptable Here")
                return
            body = bytes(answer)
        elif req.method == "INVITE":
            codecs: list[Codec | str] = [self.codec] if self.codec else list(OFFER)
            if self.codec and self.event:
                codecs.append(self.event)
            ep = self.endpoint
            body = bytes(build_offer(codecs, ep.host, ep.rtp_port, self.origin, ptime=PTIME_MS))
            self.pending_offer = True
        r = make_response(req, 200, "OK", to_tag=self.tag)
        r.headers.add("contact", f"<{pbx.endpoint.contact_uri(self.source, self.number)}>")
        if body:
            r.headers.add("content-type", "application/sdp")
            r.body = body
        pbx.endpoint.respond(txn, r)

    def on_response(self, txn: ClientTransaction | None, resp: Response) -> None:
        pass  # we never send an INVITE in this dialog

    # -- RFC 6026 callbacks of our INVITE server transactions ---------------------------------
    def on_cancel(self, txn: ServerTransaction) -> None:
        if txn is self.txn and self.state == "opening":
            r = make_response(self.req, 487, "Request Terminated", to_tag=self.tag)
            self.pbx.endpoint.respond(self.txn, r)
            self._end("cancelled")

    def on_ack_timeout(self, txn: ServerTransaction) -> None:
        log.info("room %s: no ACK from %s", self.number, self.caller)
        self.hang_up("ack-timeout")

    def on_server_failure(self, txn: ServerTransaction) -> None:
        if txn is self.txn:
            self._end("unreachable")

    # -- ending -------------------------------------------------------------------------------
    def check_media(self, now: float, timeout: float) -> None:
        """BYE when the caller sent no RTP for `timeout` seconds (while it should)."""
        if timeout <= 0 or self.state not in ("lobby", "joined") or self.endpoint is None:
            return
        if not self.expect_rtp:
            return
        last = max(self.endpoint.last_rtp or 0.0, self.media_since)
        if now - last > timeout:
            log.info("room %s: no RTP from %s for %.0f s", self.number, self.caller, now - last)
            self.hang_up("media-timeout")

    def hang_up(self, reason: str) -> None:
        """End the call from our side: BYE, or 503 while the INVITE is unanswered."""
        if self.state == "ended":
            return
        if self.state == "opening":
            self._refuse(503, "Service Unavailable")
            return
        dialog = self.dialog
        if dialog is not None:
            ep = self.pbx.endpoint
            peer = next_hop(dialog)
            bye = dialog.create_request("BYE", "", ep.make_via(peer))
            ep.send_request(bye, peer).user_data = PendingBye(self.pbx.pending_byes, ep.layer.release)
        self._end(reason)

    def _end(self, reason: str) -> None:
        if self.state == "ended":
            return
        was = self.state
        self.state = "ended"
        self.reason = reason
        for timer in (self._pin_timer, self._bye_timer):
            if timer is not None:
                timer.cancel()
        self._pin_timer = self._bye_timer = None
        if self.lobby is not None:
            self.lobby.close()
            self.lobby = None
        room, self.room = self.room, None
        if room is not None:
            joined = room.remove(self)
            count = len(room)
            duration = self.now - joined if joined is not None else 0.0
            log.info("room %s: %s left: %s (%d in the room)", self.number, self.caller, reason,
                     count)
            self.pbx.bus.publish(RoomLeft(self.number, self.call_id, self.caller, count,
                                          reason, round(duration, 3)))
            if not room.members:
                self.rooms.room_emptied(room)
        elif was != "opening":
            log.info("room %s: %s ended before joining: %s", self.number, self.caller, reason)
        if self.endpoint is not None:
            self.endpoint.close()
        self.pbx.dialogs.pop((self.call_id, self.tag), None)
        self.rooms.calls.discard(self)


# -- the manager ------------------------------------------------------------------------------

class Conferences:
    """Every room caller and active room; `pbx.conferences` (set by the daemon)."""

    def __init__(self, pbx: Pbx, prompts: Prompts | None = None, *,
                 data: Path | str | None = None) -> None:
        self.pbx = pbx
        self.prompts = prompts or Prompts.for_data_dir(data)
        self.rooms: dict[str, Room] = {}
        self.calls: set[RoomCall] = set()
        self.stopping = False
        self._task: asyncio.Task[None] | None = None
        self._preload: asyncio.Task[None] | None = None
        self._answering: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Begin watching media timeouts; load the prompts in the background."""
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._watch())
        self._preload = loop.create_task(self._load_prompts())

    async def _load_prompts(self) -> None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            found = await loop.run_in_executor(None, self.prompts.preload)
        except Exception:  # noqa: BLE001 - prompts are loaded again on first use
            log.exception("loading the prompts failed")
            return
        log.info("prompts: %d voice files found, loaded in %.2f s", found,
                 time.monotonic() - started)

    def stop(self) -> None:
        """Daemon exit: drop every call and room without signalling (after hang_up_all)."""
        for task in (self._task, self._preload):
            if task is not None:
                task.cancel()
        self._task = self._preload = None
        for call in list(self.calls):
            call._end("shutdown")
        for room in list(self.rooms.values()):
            room.close()
        self.rooms.clear()

    def occupancy(self, number: str) -> int:
        """Callers of room `number`: in it, entering the PIN, or being answered."""
        return sum(1 for c in self.calls if c.number == number)

    def admit(self, txn: ServerTransaction, req: Request, source: Peer, number: str,
              caller: str) -> RoomCall | None:
        """A caller for room `number`: refuse it, or answer and start the PIN dialogue."""
        pbx = self.pbx
        conf = pbx.config.rooms.get(number)
        if conf is None:
            pbx.reply(txn, 404, "Not Found")
            return None
        if self.stopping:
            pbx.reply(txn, 503, "Service Unavailable")
            return None
        if self.occupancy(number) >= conf.max_participants:
            log.info("room %s is full (%d): %s gets 486", number, conf.max_participants,
                     caller)
            pbx.reply(txn, 486, "Room full")
            pbx.bus.publish(RoomRefused(number, req.call_id, caller, 486, "full"))
            return None
        call = RoomCall(self, txn, req, source, number, caller)
        self.calls.add(call)
        task = pbx.endpoint.loop.create_task(call.answer())
        self._answering.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._answering.discard)
        return call

    def room_for(self, number: str, codec: Codec) -> Room:
        room = self.rooms.get(number)
        if room is None:
            room = Room(number, mix_rate(codec))
            self.rooms[number] = room
            log.info("room %s opened (mixing at %d Hz)", number, room.mixer.rate)
        return room

    def room_emptied(self, room: Room) -> None:
        if self.rooms.get(room.number) is room and not room.members:
            room.close()
            del self.rooms[room.number]
            log.info("room %s closed", room.number)

    def bus_refused(self, call: RoomCall, status: int, reason: str) -> None:
        self.pbx.bus.publish(RoomRefused(call.number, call.call_id, call.caller, status, reason))

    def hang_up_all(self) -> int:
        """SIGTERM: BYE every room caller (503 to those not answered yet)."""
        self.stopping = True
        calls = list(self.calls)
        for call in calls:
            call.hang_up("shutdown")
        return len(calls)

    def participants(self, number: str) -> list[str]:
        room = self.rooms.get(number)
        return [c.caller for c in room.members] if room is not None else []

    async def _watch(self) -> None:
        """Once a second: media timeouts."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            timeout = self.pbx.config.media.timeout
            now = self.pbx.endpoint.loop.time()
            for call in list(self.calls):
                try:
                    call.check_media(now, timeout)
                except Exception:  # noqa: BLE001 - one broken call must not stop the watch
                    log.exception("room %s: media check of %s failed", call.number, call.caller)


__all__ = ["Conferences", "Hangup", "Join", "PinEntry", "Play", "Room", "RoomCall",
           "SUPPORTED", "mix_rate"]
