"""Requests read straight from their header lines: what the express paths share.

Most of what a box receives has one shape: a REGISTER (appliance/sip/register.py), the
first INVITE of a call, sent without credentials to be challenged, or the ACK of a
call's 200 (below). Building `Headers`, a `Request` and parsed values that nobody reads
is most of what answering them costs (docs/performance.md). An express path reads such
a datagram's lines with `read_head` and a table of the headers it reads, then makes
every check that
`parse_message` and `validate_request` (RFC 3261 §8.2) would make on them, with the
same parsers; anything else (an error, a header it does not know how to judge, any
doubt) gives None, and the general path answers the datagram as before, errors included.
So an express path never answers differently; tests/unit/test_register_express.py,
tests/unit/test_invite_express.py and tests/unit/test_ack_express.py send both paths
the same datagrams, mutated, and compare what they send.
"""

from __future__ import annotations

from typing import Final

from .endpoint import needs_stamp, stamped_text
from .memo import Memo
from .message import (
    MAX_CSEQ,
    SINGLE_HEADERS,
    Headers,
    ParseError,
    Request,
    Via,
    _is_token,
    _key,
    parse_name_addr,
    parse_request_via,
)
from .transaction import Peer
from .uri import SipURI, URIError, parse_uri

# `HeaderTable.spelled`'s slots: a name's length (its line's colon, under 32) and its
# first and last letters mixed into 7 bits (ASCII: the head is decoded as such). The
# last letter keeps apart Call-ID and Contact, both 7 letters from "C", which took
# turns in one slot and missed it in every request.
_SPELLED_SLOTS: Final = 32 << 7


class HeaderTable:
    """What an express path reads, by a header's lowercase full name: a code > 0 keeps
    the value (a second line of it: the general path); 0 ignores it, as the path's
    handler does; -1 marks one the general path would act on or refuse."""

    __slots__ = ("codes", "count", "_names", "spelled", "spelled_code")

    def __init__(self, codes: dict[str, int]) -> None:
        self.codes = codes
        self.count = max(codes.values()) + 1
        self._names: Memo[int] = Memo(2048)  # a name as written → its code, -2: not a token
        # The last name looked up in each slot (length, first and last letters), as
        # written, and its code: a line with its colon at that length that starts with
        # it has that name, found by `startswith` with no slice to hash (a phone spells
        # its names the same way in every request). ":" matches no line: its name is
        # not empty.
        self.spelled: list[str] = [":"] * _SPELLED_SLOTS
        self.spelled_code: list[int] = [0] * _SPELLED_SLOTS

    def code(self, name: str) -> int:
        code = self._names.get(name)
        if code is None:
            stripped = name.rstrip(" \t")
            code = self.codes.get(_key(stripped), 0) if _is_token(stripped) else -2
            self._names.put(name, code)
        return code


def read_head(data: bytes, method: str,
              table: HeaderTable) -> tuple[str, list[str | None], int] | None:
    """The Request-URI, the header values by code, and the length of the body that
    follows the header section, of a `method` request; None: not of the common shape
    (no CRLFCRLF, another method or version, a bare CR or LF (§7.5), a folded line
    (§7.3.1), a header the table refuses or a second one of a kept header)."""
    # Without a body the head ends the datagram (one comparison instead of a search; an
    # earlier CRLFCRLF, a body that ends with one, shows below as an empty line)
    end = len(data) - 4 if data.endswith(b"\r\n\r\n") else data.find(b"\r\n\r\n")
    if end < 0:
        return None
    try:
        text = data[:end].decode("ascii")
    except UnicodeDecodeError:
        return None
    lines = text.split("\r\n")
    rest = "".join(lines)  # a CR or LF left is a bare one
    if "\r" in rest or "\n" in rest:
        return None
    first = lines[0]  # method SP Request-URI SP SIP-Version, single spaces
    start = len(method) + 1
    if (len(first) < start + 8 or not first.startswith(method)
            or first[start - 1] != " " or not first.endswith(" SIP/2.0")):
        return None
    ruri = first[start:-8]
    if " " in ruri:
        return None
    values: list[str | None] = [None] * table.count
    spelled = table.spelled
    spelled_code = table.spelled_code
    for i in range(1, len(lines)):
        line = lines[i]
        if not line:
            return None  # the head ended before: a body, which ends with CRLFCRLF
        first = line[0]
        if first == " " or first == "\t":
            return None  # folded (§7.3.1)
        colon = line.find(":")
        if colon <= 0:
            return None
        slot = (colon << 7) | ((ord(first) + 3 * ord(line[colon - 1])) & 127)
        if slot < _SPELLED_SLOTS and line.startswith(spelled[slot]):
            code = spelled_code[slot]  # the same name (the same length): the same code
        else:
            name = line[:colon]
            code = table.code(name)
            if slot < _SPELLED_SLOTS:
                spelled[slot] = name
                spelled_code[slot] = code
        if code <= 0:
            if code == 0:
                continue
            return None
        if values[code] is not None:
            return None  # a second Via, Contact... or a repeated single one
        # "Name: value" as phones write it: one slice; any other spacing: stripped
        last = len(line) - 1
        if (colon + 2 <= last and line[colon + 1] == " " and line[colon + 2] != " "
                and line[colon + 2] != "\t" and line[last] != " " and line[last] != "\t"):
            values[code] = line[colon + 2:]
        else:
            values[code] = line[colon + 1:].strip(" \t")
    return ruri, values, len(data) - end - 4


def scalar_ok(value: str | None, limit: int) -> bool:
    """Max-Forwards, Expires: absent, or digits up to `limit` (validate_request)."""
    return value is None or (value.isdigit() and int(value) <= limit)


def cseq_number(cseq: str, method: str) -> int:
    """The number of a CSeq `num method` that validate_request accepts; -1 otherwise."""
    parts = cseq.split()
    if len(parts) != 2 or parts[1] != method or not parts[0].isdigit():
        return -1
    num = int(parts[0])
    return -1 if num > MAX_CSEQ else num


def one_via(text: str) -> Via | None:
    """The only Via of a request, parsed; None for several values, more than LWS
    around one, or one parse_via refuses."""
    if not text or "," in text or text != text.strip():
        return None
    try:
        return parse_request_via(text)
    except ParseError:
        return None


# A Request-URI's verdict by its text (a box's phones all send the same one or two;
# bounded, appliance/sip/memo.py: texts come from the network).
_RURI_OK: Final[Memo[bool]] = Memo(2048)


def ruri_ok(text: str) -> bool:
    """A SIP Request-URI validate_request accepts (a tel: one: the general path)."""
    ok = _RURI_OK.get(text)
    if ok is None:
        ok = _ruri_ok(text)
        _RURI_OK.put(text, ok)
    return ok


def _ruri_ok(text: str) -> bool:
    if not text or text[0] == "<" or "\t" in text:
        return False
    try:
        uri = parse_uri(text)
    except URIError:
        return False
    return isinstance(uri, SipURI) and uri.headers is None


# Contact values checked, by their text: a phone sends the same one every time.
_CONTACT_SEEN: Final[Memo[tuple[str, dict[str, str | None]]]] = Memo(2048)


def one_contact(text: str) -> tuple[str, dict[str, str | None]]:
    """The URI and parameters of one Contact value the general path accepts; ("", {})
    for anything else ('*', several values, a bad URI): the general path takes it."""
    found = _CONTACT_SEEN.get(text)
    if found is None:
        found = _contact(text)
        _CONTACT_SEEN.put(text, found)
    return found


def _contact(text: str) -> tuple[str, dict[str, str | None]]:
    if "," in text or text != text.strip():
        return "", {}
    try:
        value = parse_name_addr(text, "Contact")
        parse_uri(value.uri)
    except (URIError, ParseError):
        return "", {}
    return value.uri, value.params


def response_head(status_line: str, via_text: str, via: Via, source: Peer, from_: str,
                  to: str, call_id: str, cseq: str, tag: str) -> str:
    """§8.2.6.2: the status line, Via (stamped, §18.2.1), From, To with our tag, Call-ID
    and CSeq, as make_response copies them."""
    if needs_stamp(via, source):
        via_text = stamped_text(via, source)
    return (f"{status_line}\r\nVia: {via_text}\r\nFrom: {from_}\r\nTo: {to};tag={tag}"
            f"\r\nCall-ID: {call_id}\r\nCSeq: {cseq}")


def finish(head: list[str]) -> bytes:
    head.append("Content-Length: 0\r\n\r\n")
    return "\r\n".join(head).encode()


# -- the first INVITE of a call, without credentials ----------------------------------
_I_VIA: Final = 1
_I_FROM: Final = 2
_I_TO: Final = 3
_I_CALL_ID: Final = 4
_I_CSEQ: Final = 5
_I_MAX_FORWARDS: Final = 6
_I_EXPIRES: Final = 7
_I_CONTACT: Final = 8
_I_CONTENT_LENGTH: Final = 9
_I_SINGLE: Final = 10  # the other single headers (§20 table 2): kept to refuse repeats
_INVITE: Final = HeaderTable({
    # Credentials (either kind: the general path takes any INVITE that carries some),
    # options it answers 420 for, a route set: all left to it
    "proxy-authorization": -1, "authorization": -1, "require": -1, "proxy-require": -1,
    "route": -1,
    **{k: _I_SINGLE + i for i, k in enumerate(sorted(
        SINGLE_HEADERS - {"call-id", "cseq", "from", "to", "max-forwards", "content-length",
                          "expires"}))},
    "via": _I_VIA, "from": _I_FROM, "to": _I_TO, "call-id": _I_CALL_ID, "cseq": _I_CSEQ,
    "max-forwards": _I_MAX_FORWARDS, "expires": _I_EXPIRES, "contact": _I_CONTACT,
    "content-length": _I_CONTENT_LENGTH,
})


class InviteRequest:
    """What a digest challenge to an INVITE without credentials copies, as sent."""

    __slots__ = ("via_text", "via", "from_", "from_user", "to", "call_id", "cseq")

    def __init__(self, via_text: str, via: Via, from_: str, from_user: str, to: str,
                 call_id: str, cseq: str) -> None:
        self.via_text = via_text
        self.via = via
        self.from_ = from_
        self.from_user = from_user   # the user part of the From URI (an extension?)
        self.to = to
        self.call_id = call_id
        self.cseq = cseq


class _Head:
    """A request's lines as `read_head` gives them, with Via, From, To, Call-ID and CSeq
    present (§8.1.1), a Call-ID validate_request accepts, and the CSeq's number."""

    __slots__ = ("ruri", "values", "body", "via_text", "from_", "to", "call_id", "cseq",
                 "num")

    def __init__(self, ruri: str, values: list[str | None], body: int, via_text: str,
                 from_: str, to: str, call_id: str, cseq: str, num: int) -> None:
        self.ruri = ruri
        self.values = values
        self.body = body
        self.via_text = via_text
        self.from_ = from_
        self.to = to
        self.call_id = call_id
        self.cseq = cseq
        self.num = num


def _read_request(data: bytes, method: str) -> _Head | None:
    """`data` read with `_INVITE`'s table as a `method` request; None: not of that shape,
    a mandatory header missing, or a Call-ID or CSeq validate_request refuses."""
    read = read_head(data, method, _INVITE)
    if read is None:
        return None
    ruri, values, body = read
    via_text = values[_I_VIA]
    from_ = values[_I_FROM]
    to = values[_I_TO]
    call_id = values[_I_CALL_ID]
    cseq = values[_I_CSEQ]
    if via_text is None or from_ is None or to is None or call_id is None or cseq is None:
        return None
    if not call_id or " " in call_id:
        return None
    num = cseq_number(cseq, method)
    if num < 0:
        return None
    return _Head(ruri, values, body, via_text, from_, to, call_id, cseq, num)


def _checked_via(h: _Head) -> Via | None:
    """The request's only Via, once its Expires, Contact and Request-URI pass
    validate_request's checks; None otherwise."""
    values = h.values
    if not scalar_ok(values[_I_EXPIRES], 2**32 - 1):
        return None
    contact = values[_I_CONTACT]
    if contact is not None and not one_contact(contact)[0]:
        return None
    via = one_via(h.via_text)
    if via is None or not ruri_ok(h.ruri):
        return None
    return via


def read_invite(data: bytes) -> InviteRequest | None:
    """An INVITE datagram without credentials, outside any dialog, that the general
    path would accept and hand to the PBX; None: leave it to the general path."""
    if b"\r\nProxy-Authorization:" in data or b"\r\nAuthorization:" in data:
        return None  # credentials as phones spell them, found without reading the lines
    h = _read_request(data, "INVITE")
    if h is None:
        return None
    if ";tag=" in h.to.replace(" ", "").lower():
        return None  # within a dialog (and make_response would not add our tag)
    length = h.values[_I_CONTENT_LENGTH]
    if length is not None and (not length.isdigit() or len(length) > 10
                               or int(length) > h.body):
        return None  # §18.3: the general path answers 400
    mf = h.values[_I_MAX_FORWARDS]
    if not scalar_ok(mf, 255) or mf is not None and int(mf) == 0:
        return None  # 400, or 483 Too Many Hops
    via = _checked_via(h)
    if via is None:
        return None
    try:
        to_value = parse_name_addr(h.to, "To")
        from_value = parse_name_addr(h.from_, "From")
        from_uri = parse_uri(from_value.uri)
    except (ParseError, URIError):
        return None
    if "tag" in to_value.params or not isinstance(from_uri, SipURI) or not from_uri.user:
        return None  # within a dialog; or a caller that is no extension (403)
    return InviteRequest(h.via_text, via, h.from_, from_uri.user, h.to, h.call_id, h.cseq)


# -- the ACK of a 2xx, within a dialog (§13.2.2.4) -------------------------------------
# Read with the first INVITE's table (`_read_request`): the same headers matter, as
# credentials, Require and a route set go to the general path, and a second line of a
# kept or single header too.
_A_CONTENT_TYPE: Final = _INVITE.codes["content-type"]


class AckRequest:
    """What the PBX needs of an ACK within a dialog, as sent."""

    __slots__ = ("ruri", "via", "via_text", "from_", "to", "to_tag", "call_id", "cseq",
                 "cseq_text", "content_type")

    def __init__(self, ruri: str, via: Via, via_text: str, from_: str, to: str, to_tag: str,
                 call_id: str, cseq: int, cseq_text: str, content_type: str | None) -> None:
        self.ruri = ruri
        self.via = via
        self.via_text = via_text
        self.from_ = from_
        self.to = to
        self.to_tag = to_tag
        self.call_id = call_id
        self.cseq = cseq
        self.cseq_text = cseq_text
        self.content_type = content_type

    def request(self) -> Request:
        """The ACK as its dialog's owner reads it (Call.on_leg_ack, a room's leg): without
        a body, which is all they look at besides Content-Type."""
        items = [("via", self.via_text), ("from", self.from_), ("to", self.to),
                 ("call-id", self.call_id), ("cseq", self.cseq_text)]
        if self.content_type is not None:
            items.append(("content-type", self.content_type))
        return Request("ACK", self.ruri, Headers(items))


def read_ack(data: bytes) -> AckRequest | None:
    """An ACK datagram with a To tag and no body that the general path would accept and
    hand to the PBX; None: leave it to the general path."""
    h = _read_request(data, "ACK")
    if h is None:
        return None
    length = h.values[_I_CONTENT_LENGTH]
    if length is None:
        if h.body:
            return None  # on UDP the rest of the datagram is the body (§18.3)
    elif not length.isdigit() or len(length) > 10 or int(length) != 0:
        return None  # a body (or a bad length): the general path
    if not scalar_ok(h.values[_I_MAX_FORWARDS], 255):
        return None
    via = _checked_via(h)
    if via is None:
        return None
    try:
        tag = parse_name_addr(h.to, "To").tag
        parse_name_addr(h.from_, "From")
    except ParseError:
        return None
    if not tag:
        return None  # outside a dialog, or an empty tag: the general path
    return AckRequest(h.ruri, via, h.via_text, h.from_, h.to, tag, h.call_id, h.num, h.cseq,
                      h.values[_A_CONTENT_TYPE])
