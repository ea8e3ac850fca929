"""Reliable provisional responses: 100rel, RSeq, RAck and PRACK (RFC 3262), sans-IO.

Two small state machines, one per role, in the shape of the transaction layer:
no sockets, no clock reads; every entry point takes `now`, returns what is to be
sent, and `get_timer()` says when `handle_timer(now)` wants to be called.

* `ReliableProvisionals` (UAS, §3): one per INVITE server transaction we answer.
  `send()` stamps `Require: 100rel` and `RSeq`, keeps at most one reliable
  provisional unacknowledged, retransmits it on the §3 schedule, matches PRACKs
  (`on_prack()` → 200 or 481) and reports `timed_out` after 64*T1 without one.
  The caller passes every response it gets from here to
  `TransactionLayer.respond()` on the INVITE's server transaction.
* `ProvisionalAcknowledger` (UAC, §4): one per INVITE client transaction. It
  tracks the RSeq space of each early dialog (forks: one per To tag, RFC 3262
  erratum 4604) and says for each 1xx whether to PRACK it, pass it up, or drop it.

Helpers: `parse_rack`, `parse_rseq`, `rel100` / `wants_reliable` (what an INVITE
offers), `add_100rel` / `strip_100rel` (the option tag on our own requests, e.g.
for a carrier line whose "disable 100rel" switch is on) and `make_prack`.
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass

from .dialog import Dialog
from .message import Headers, Message, ParseError, Request, Response
from .transaction import Timers

__all__ = [
    "OPTION_TAG", "MAX_RSEQ", "Rel100", "rel100", "wants_reliable", "parse_rack",
    "parse_rseq", "format_rack", "add_100rel", "strip_100rel", "has_session_description",
    "ReliableProvisionals", "ProvisionalAcknowledger", "ProvisionalVerdict", "make_prack",
    "DELIVER", "PRACK", "RETRANSMISSION", "OUT_OF_ORDER", "INVALID",
]

OPTION_TAG = "100rel"
MAX_RSEQ = 2**32 - 1          # §7.1: RSeq is 1*DIGIT, 1 to 2**32 - 1; it never wraps (§3)
MAX_FIRST_RSEQ = 2**31 - 1    # §3: the first RSeq is between 1 and 2**31 - 1
MAX_CSEQ = 2**31 - 1          # RFC 3261 §8.1.1.5
GIVE_UP_T1 = 64               # §3: give up after 64*T1 without PRACK
MAX_EARLY_DIALOGS = 64        # forks tracked per INVITE; To tags come from the network


# -- option tag and header helpers ------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Rel100:
    """What a request says about 100rel (RFC 3262 §3).

    `required`: `Require: 100rel`: the UAS MUST send every 101-199 reliably (or
    reject the request with 420). `supported`: `Supported: 100rel`: the UAS MAY.
    Neither: the UAS MUST NOT send any provisional reliably.
    """

    required: bool
    supported: bool

    @property
    def allowed(self) -> bool:
        return self.required or self.supported


def _has_tag(headers: Headers, name: str) -> bool:
    return any(t.lower() == OPTION_TAG for t in headers.get_all(name))


def rel100(request: Message) -> Rel100:
    """Whether `request` requires or supports 100rel (Require / Supported, §3)."""
    h = request.headers
    return Rel100(required=_has_tag(h, "require"), supported=_has_tag(h, "supported"))


def wants_reliable(request: Message) -> bool:
    """True when the INVITE has 100rel in Require or Supported: reliable 1xx allowed."""
    return rel100(request).allowed


def _parse_number(text: str, low: int, high: int, what: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 10:
        raise ValueError(f"malformed {what}: {text!r}")
    n = int(text)
    if not low <= n <= high:
        raise ValueError(f"{what} out of range: {n}")
    return n


def parse_rseq(value: str | None) -> int:
    """An RSeq value (§7.1: 1*DIGIT, 1 to 2**32 - 1). Raises ValueError on garbage."""
    if value is None:
        raise ValueError("missing RSeq")
    return _parse_number(value.strip(), 1, MAX_RSEQ, "RSeq")


def parse_rack(value: str | None) -> tuple[int, int, str]:
    """An RAck value `response-num LWS CSeq-num LWS Method` (§7.2, §10).

    Returns (rseq, cseq, method). Raises ValueError on garbage.
    """
    if value is None:
        raise ValueError("missing RAck")
    parts = value.split()
    if len(parts) != 3:
        raise ValueError(f"malformed RAck: {value!r}")
    rseq = _parse_number(parts[0], 1, MAX_RSEQ, "RAck response-num")
    cseq = _parse_number(parts[1], 0, MAX_CSEQ, "RAck CSeq-num")
    method = parts[2]
    if not (method.isascii() and all(c.isalnum() or c in "-.!%*_+`'~" for c in method)):
        raise ValueError(f"malformed RAck method: {method!r}")
    return rseq, cseq, method


def format_rack(rseq: int, cseq: int, method: str) -> str:
    """The RAck value for the provisional with `rseq` to the request `cseq method`."""
    return f"{rseq} {cseq} {method}"


def add_100rel(headers: Headers, supported: bool = True) -> None:
    """Put 100rel in Supported (default) or, with `supported=False`, in Require.

    Does nothing when the tag is already in that header; other tags are kept.
    """
    name = "supported" if supported else "require"
    tags = headers.get_all(name)
    if any(t.lower() == OPTION_TAG for t in tags):
        return
    if tags:
        headers.set(name, ", ".join([*tags, OPTION_TAG]))
    else:
        headers.add(name, OPTION_TAG)


def strip_100rel(msg: Message) -> Message:
    """Remove 100rel from Supported and Require; drop a header left empty.

    For a line with the "disable 100rel" switch: the INVITE we send then carries
    100rel nowhere. Edits `msg` in place and returns it.
    """
    h = msg.headers
    for name in ("supported", "require"):
        if name not in h:
            continue
        tags = h.get_all(name)
        rest = [t for t in tags if t.lower() != OPTION_TAG]
        if len(rest) == len(tags):
            continue
        if rest:
            h.set(name, ", ".join(rest))
        else:
            h.remove(name)
    return msg


def has_session_description(msg: Message) -> bool:
    """Whether `msg` carries SDP (application/sdp, or inside a multipart body)."""
    if not msg.body:
        return False
    ctype = (msg.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    if ctype == "application/sdp":
        return True
    return ctype.startswith("multipart/") and b"application/sdp" in msg.body.lower()


# -- UAS ----------------------------------------------------------------------------------

class _Outstanding:
    """The reliable provisional sent and not yet PRACKed."""

    __slots__ = ("response", "rseq", "to_tag", "sdp", "started", "retransmissions",
                 "next_at", "give_up_at", "retransmitting")

    def __init__(self, response: Response, rseq: int, to_tag: str, now: float,
                 t1: float) -> None:
        self.response = response
        self.rseq = rseq
        self.to_tag = to_tag
        self.sdp = has_session_description(response)
        self.started = now
        self.retransmissions = 0
        self.next_at = now + t1                 # retransmission k at now + T1*(2**k - 1)
        self.give_up_at = now + GIVE_UP_T1 * t1
        self.retransmitting = True


class ReliableProvisionals:
    """UAS side of RFC 3262 (§3) for one INVITE server transaction.

    Usage, with `layer` the TransactionLayer and `txn` the INVITE's transaction::

        rel = ReliableProvisionals(invite, layer.timers)
        if (r := rel.send(make_response(invite, 183, to_tag=tag, body=sdp, ...), now)):
            layer.respond(txn, r, now)           # None: queued behind an unPRACKed one
        ...
        for r in rel.handle_timer(now):          # when now >= rel.get_timer()
            layer.respond(txn, r, now)
        if rel.timed_out:                        # 64*T1 without PRACK (§3)
            ... answer the INVITE 5xx, then rel.on_final(that_response)
        ...
        status = rel.on_prack(prack, now)        # answer the PRACK with this status
        for r in rel.responses_to_send():        # a queued provisional, released
            layer.respond(txn, r, now)
        if rel.can_send_final(200): ...          # then rel.on_final(response)

    Retransmissions run on every transport: §3 makes reliability end to end
    (the INVITE may have crossed UDP hops behind a TCP one).
    """

    __slots__ = ("invite", "offer", "timed_out", "final_sent", "acknowledged", "last_rseq",
                 "_t1",
                 "_next_rseq", "_cseq", "_method", "_call_id", "_from_tag", "_outstanding",
                 "_queue", "_released")

    def __init__(self, invite: Request, timers: Timers | None = None, *,
                 first_rseq: int | None = None) -> None:
        t1 = (timers if timers is not None else Timers()).t1
        if not t1 > 0:
            raise ValueError(f"invalid T1 {t1}")
        if first_rseq is None:
            first_rseq = secrets.randbelow(MAX_FIRST_RSEQ) + 1   # uniform in 1..2**31-1
        elif not 1 <= first_rseq <= MAX_FIRST_RSEQ:
            raise ValueError(f"first RSeq {first_rseq} not in 1..2**31-1")
        self.invite = invite
        self.offer = rel100(invite)
        self.timed_out = False        # 64*T1 passed without PRACK: reject the INVITE 5xx
        self.final_sent = False
        self.acknowledged: Response | None = None   # the provisional the last PRACK matched
        self.last_rseq: int | None = None           # RSeq of the last reliable 1xx sent
        self._t1 = t1
        self._next_rseq = first_rseq
        self._cseq, self._method = invite.cseq
        self._call_id = invite.call_id
        self._from_tag = invite.from_.tag
        self._outstanding: _Outstanding | None = None
        self._queue: deque[Response] = deque()
        self._released: list[Response] = []

    # -- state ---------------------------------------------------------------------------
    @property
    def required(self) -> bool:
        """The INVITE has `Require: 100rel`: every 101-199 MUST go through `send()`."""
        return self.offer.required

    @property
    def outstanding(self) -> Response | None:
        """The reliable provisional sent and not yet acknowledged, if any."""
        p = self._outstanding
        return p.response if p is not None else None

    @property
    def queued(self) -> int:
        """Reliable provisionals waiting for the outstanding one's PRACK."""
        return len(self._queue)

    # -- sending ---------------------------------------------------------------------------
    def send(self, response: Response, now: float) -> Response | None:
        """Make `response` a reliable provisional; return it to send now, or None if queued.

        Adds `Require: 100rel` and `RSeq` (§3) to `response` in place. Only one
        reliable provisional is unacknowledged at a time (§3: "The UAS MUST NOT send
        a second reliable provisional response until the first is acknowledged"):
        while one is, later ones wait, in order, and come out of
        `responses_to_send()` after the PRACK, each RSeq one higher.
        """
        status = response.status
        if not 101 <= status <= 199:
            raise ValueError(f"only 101-199 may be sent reliably (§3), not {status}")
        if not self.offer.allowed:
            raise ValueError("the INVITE offered no 100rel: MUST NOT send reliably (§3)")
        if self.final_sent:
            raise ValueError("no new reliable provisional after the final response (§3)")
        try:
            to_tag = response.to.tag
        except ParseError as e:
            raise ValueError(f"unusable To: {e}") from None
        if not to_tag:
            raise ValueError("a reliable provisional creates a dialog: To needs a tag")
        if response.cseq != (self._cseq, self._method):
            raise ValueError("the response's CSeq is not the INVITE's")
        if self._outstanding is not None or self._queue:
            self._queue.append(response)
            return None
        return self._start(response, to_tag, now)

    def _start(self, response: Response, to_tag: str, now: float) -> Response:
        rseq = self._next_rseq
        if rseq > MAX_RSEQ:
            raise ValueError("RSeq space exhausted (§3: RSeq MUST NOT wrap)")
        self.last_rseq = rseq
        self._next_rseq = rseq + 1
        h = response.headers
        add_100rel(h, supported=False)
        h.set("rseq", str(rseq))
        self._outstanding = _Outstanding(response, rseq, to_tag, now, self._t1)
        return response

    def responses_to_send(self) -> list[Response]:
        """Queued provisionals released by a PRACK (already stamped); emptied on read."""
        out = self._released
        self._released = []
        return out

    # -- timers ----------------------------------------------------------------------------
    def get_timer(self) -> float | None:
        """When `handle_timer` has work: the next retransmission or the 64*T1 deadline."""
        p = self._outstanding
        if p is None or not p.retransmitting:
            return None
        return min(p.next_at, p.give_up_at)

    def handle_timer(self, now: float) -> list[Response]:
        """Retransmissions due at `now` (at most one copy); may set `timed_out`.

        §3: "The reliable provisional response is passed to the transaction layer
        periodically with an interval that starts at T1 seconds and doubles for each
        retransmission" (no T2 cap), and "If a reliable provisional response is
        retransmitted for 64*T1 seconds without reception of a corresponding PRACK,
        the UAS SHOULD reject the original request with a 5xx response." So, from the
        first transmission at t0: copies at t0 + T1*(2**k - 1) = T1, 3T1, 7T1, 15T1,
        31T1, 63T1, then `timed_out` at t0 + 64*T1.
        """
        p = self._outstanding
        if p is None or not p.retransmitting:
            return []
        due = False
        while True:
            if p.give_up_at <= now:
                p.retransmitting = False
                self.timed_out = True
                return []
            if p.next_at > now:
                break
            due = True
            p.retransmissions += 1
            p.next_at = p.started + self._t1 * (2 ** (p.retransmissions + 1) - 1)
        return [p.response] if due else []

    # -- PRACK ---------------------------------------------------------------------------------
    def on_prack(self, prack: Request, now: float) -> int:
        """The status to answer `prack` with: 200 (matched), 481 (no match), 400 (bad RAck).

        §3: a PRACK matches when it is in the provisional's dialog and its RAck
        response-num, CSeq-num and method equal the provisional's RSeq, CSeq number
        and CSeq method. A match stops the retransmissions, removes the provisional
        from the unacknowledged ones (`acknowledged` is set to it) and releases the
        next queued provisional, if any, to `responses_to_send()`. A PRACK matching
        no unacknowledged reliable provisional gets 481.
        """
        if prack.method != "PRACK":
            raise ValueError(f"not a PRACK: {prack.method}")
        try:
            rseq, cseq, method = parse_rack(prack.headers.get("rack"))
            call_id, from_tag, to_tag = prack.call_id, prack.from_.tag, prack.to.tag
        except ValueError:   # ParseError included: a malformed request (RFC 3261 §8.2)
            return 400
        p = self._outstanding
        if (p is None or rseq != p.rseq or cseq != self._cseq or method != self._method
                or call_id != self._call_id or from_tag != self._from_tag
                or to_tag != p.to_tag):
            return 481
        self._outstanding = None
        self.acknowledged = p.response
        if self._queue and not self.final_sent:
            nxt = self._queue.popleft()
            self._released.append(self._start(nxt, nxt.to.tag or "", now))
        return 200

    # -- final response ---------------------------------------------------------------------
    def can_send_final(self, status: int = 200) -> bool:
        """Whether a final response with `status` may be sent now.

        §3: "The UAS MAY send a final response to the initial request before having
        received PRACKs for all unacknowledged reliable provisional responses, unless
        the final response is 2xx and any of the unacknowledged reliable provisional
        responses contained a session description. In that case, it MUST NOT send a
        final response until those provisional responses are acknowledged."
        """
        if not 200 <= status <= 299:
            return True
        p = self._outstanding
        return p is None or not p.sdp

    def on_final(self, response: Response) -> None:
        """The final response to the INVITE is being sent.

        Stops retransmitting (§3: the UAS "SHOULD NOT continue to retransmit the
        unacknowledged reliable provisional responses, but it MUST be prepared to
        process PRACK requests for those outstanding responses") and drops queued
        provisionals (§3: no new reliable provisionals after a final response).
        Raises ValueError for a 2xx that `can_send_final` forbids.
        """
        if response.status < 200:
            raise ValueError(f"not a final response: {response.status}")
        if not self.can_send_final(response.status):
            raise ValueError("2xx while a reliable provisional with SDP is unacknowledged")
        self.final_sent = True
        self._queue.clear()
        self._released.clear()
        if self._outstanding is not None:
            self._outstanding.retransmitting = False


# -- UAC ----------------------------------------------------------------------------------

DELIVER = "deliver"                # not a reliable provisional: pass it up as usual
PRACK = "prack"                    # in order: pass it up and send a PRACK with `rack`
RETRANSMISSION = "retransmission"  # already seen: drop, do not pass up, no new PRACK
OUT_OF_ORDER = "out_of_order"      # RSeq beyond last+1: drop (no PRACK, no processing)
INVALID = "invalid"                # Require: 100rel but no usable RSeq or To tag: drop


@dataclass(frozen=True, slots=True)
class ProvisionalVerdict:
    """What to do with a received 1xx (RFC 3262 §4)."""

    action: str
    rseq: int | None = None
    rack: str | None = None        # the RAck value for the PRACK, when action is PRACK
    to_tag: str | None = None

    @property
    def deliver(self) -> bool:
        """Pass the response to the TU (the B2BUA's call logic)."""
        return self.action == DELIVER or self.action == PRACK

    @property
    def is_retransmission(self) -> bool:
        return self.action == RETRANSMISSION

    @property
    def reliable(self) -> bool:
        """The 1xx was sent reliably (`Require: 100rel`, 101-199)."""
        return self.action != DELIVER


class ProvisionalAcknowledger:
    """UAC side of RFC 3262 (§4) for one INVITE client transaction.

    Keeps, per early dialog (To tag), the RSeq of the last in-order reliable
    provisional: forks choose their RSeq spaces independently (erratum 4600/4604).
    Drop it when the INVITE gets its final response (§4 keeps the number until then).

    Usage::

        v = acks.on_provisional(response)
        if v.action == PRACK:
            dialog = early_dialogs.get(v.to_tag) or Dialog.as_uac(invite, response, peer)
            layer.send_request(make_prack(dialog, v.rack, via, contact), peer, now)
        if v.deliver:
            ...   # the call logic sees the 1xx; never for a retransmission
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: dict[str, int] = {}   # To tag → RSeq of the last in-order reliable 1xx

    def last_rseq(self, to_tag: str) -> int | None:
        return self._last.get(to_tag)

    def on_provisional(self, response: Response) -> ProvisionalVerdict:
        """Classify a 1xx to our INVITE (§4).

        * 100, or no `Require: 100rel`: DELIVER (unreliable; erratum 4601: 100rel on a
          100 Trying MUST be ignored).
        * first reliable 1xx of this early dialog, or RSeq exactly last+1: PRACK.
        * RSeq equal to or below the last one: RETRANSMISSION ("Once a reliable
          provisional response is received, retransmissions of that response MUST be
          discarded"; "a UAC SHOULD NOT retransmit the PRACK request when it receives
          a retransmission of the provisional response being acknowledged").
        * RSeq above last+1: OUT_OF_ORDER ("that response MUST NOT be acknowledged with
          a PRACK, and MUST NOT be processed further by the UAC"; we discard it, the
          UAS retransmits the missing one until it is PRACKed).
        """
        status = response.status
        if not 101 <= status <= 199 or not _has_tag(response.headers, "require"):
            return ProvisionalVerdict(DELIVER)
        try:
            rseq = parse_rseq(response.headers.get("rseq"))
            to_tag = response.to.tag
            cseq, method = response.cseq
        except ValueError:   # ParseError included
            return ProvisionalVerdict(INVALID)
        if not to_tag:   # a reliable 1xx establishes a dialog (§4): no tag, no PRACK
            return ProvisionalVerdict(INVALID, rseq)
        last = self._last.get(to_tag)
        if last is None:
            if len(self._last) >= MAX_EARLY_DIALOGS:
                return ProvisionalVerdict(INVALID, rseq, to_tag=to_tag)
        elif rseq <= last:
            return ProvisionalVerdict(RETRANSMISSION, rseq, to_tag=to_tag)
        elif rseq != last + 1:
            return ProvisionalVerdict(OUT_OF_ORDER, rseq, to_tag=to_tag)
        self._last[to_tag] = rseq
        return ProvisionalVerdict(PRACK, rseq, format_rack(rseq, cseq, method), to_tag)


def make_prack(dialog: Dialog, rack: str, via: str, contact: str) -> Request:
    """The in-dialog PRACK (§4, §6) carrying `RAck: rack`; uses the dialog's next CSeq."""
    parse_rack(rack)   # refuse to put garbage on the wire
    request = dialog.create_request("PRACK", contact, via)
    request.headers.add("rack", rack)
    return request
