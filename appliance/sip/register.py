"""A REGISTER read straight from its header lines: the registrar's express path.

Nearly every REGISTER a box sees has one shape: one Via, From, To, Call-ID, CSeq, at
most one Contact and one Authorization, no body. Building `Headers`, a `Request` and
parsed values the registrar never reads is most of what a registration costs
(docs/performance.md). `read_register` reads such a datagram's lines and makes every
check `parse_message` and `validate_request` (RFC 3261 §8.2) would make on it, with the
same parsers (`parse_via`, `parse_name_addr`, `parse_uri`); anything else (an
error, a header it does not know how to judge, any doubt) gives None, and the general
path answers the datagram as before, errors included. So the express path never
answers differently: tests/unit/test_register_express.py sends both paths the same
datagrams, mutated, and compares what they send.
"""

from __future__ import annotations

from typing import Final

from .message import (
    MAX_CSEQ,
    SINGLE_HEADERS,
    ParseError,
    Via,
    _is_token,
    _key,
    parse_name_addr,
    parse_via,
)
from .uri import SipURI, TelURI, URIError, parse_uri

# What the express path reads, by the header's lowercase full name; any other header it
# ignores, as the registrar does (0), unless it is one the general path would act on or
# refuse (-1: Require's 420, Path's Supported in the 200, a body's type, and the single
# headers the general path checks for repeats).
_VIA: Final = 1
_FROM: Final = 2
_TO: Final = 3
_CALL_ID: Final = 4
_CSEQ: Final = 5
_MAX_FORWARDS: Final = 6
_EXPIRES: Final = 7
_CONTACT: Final = 8
_AUTHORIZATION: Final = 9
_CONTENT_LENGTH: Final = 10
_USER_AGENT: Final = 11
_COUNT: Final = 12
_CODES: Final[dict[str, int]] = {
    **{k: -1 for k in ("require", "path", "content-type", *SINGLE_HEADERS)},
    "via": _VIA, "from": _FROM, "to": _TO, "call-id": _CALL_ID, "cseq": _CSEQ,
    "max-forwards": _MAX_FORWARDS, "expires": _EXPIRES, "contact": _CONTACT,
    "authorization": _AUTHORIZATION, "content-length": _CONTENT_LENGTH,
    "user-agent": _USER_AGENT,
}
# header name as written → its code, -2 for a name that is not a token
_NAME_CODES: Final[dict[str, int]] = {}


def _code(name: str) -> int:
    code = _NAME_CODES.get(name)
    if code is None:
        stripped = name.rstrip(" \t")
        code = _CODES.get(_key(stripped), 0) if _is_token(stripped) else -2
        _remember(_NAME_CODES, name, code)
    return code


# A Request-URI's verdict by its text (a box's phones all send the same one or two).
_RURI_OK: Final[dict[str, bool]] = {}


class RegisterRequest:
    """The header values of a REGISTER the registrar reads, as sent (stripped of LWS)."""

    __slots__ = ("via_text", "via", "from_", "to", "call_id", "cseq", "cseq_num", "aor",
                 "contact", "contact_params", "expires", "authorization", "user_agent")

    def __init__(self) -> None:
        self.via_text = ""
        self.via: Via | None = None
        self.from_ = ""
        self.to = ""
        self.call_id = ""
        self.cseq = ""
        self.cseq_num = 0
        self.aor: str | None = None        # the user part of the To URI
        self.contact: str | None = None    # the Contact URI; None: a query (§10.2.3)
        self.contact_params: dict[str, str | None] = {}
        self.expires: str | None = None
        self.authorization: str | None = None
        self.user_agent = ""


def read_register(data: bytes) -> RegisterRequest | None:
    """The REGISTER datagram `data` if the general path would accept it and it has the
    common shape; None: leave it to the general path."""
    end = data.find(b"\r\n\r\n")
    if end < 0 or end + 4 != len(data):
        return None  # a body, or none of the header section's end
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return None
    lines = text.split("\r\n")  # the last two are the empty ones of the final CRLFCRLF
    breaks = len(lines) - 1
    if text.count("\r") != breaks or text.count("\n") != breaks:
        return None  # a bare CR or LF (§7.5)
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[0] != "REGISTER" or parts[2] != "SIP/2.0":
        return None
    values: list[str | None] = [None] * _COUNT  # by header code: each at most once
    for i in range(1, breaks - 1):
        line = lines[i]
        if not line or line[0] == " " or line[0] == "\t":
            return None  # folded (§7.3.1)
        colon = line.find(":")
        if colon <= 0:
            return None
        code = _code(line[:colon])
        if code <= 0:
            if code == 0:
                continue
            return None
        if values[code] is not None:
            return None  # a second Via, Contact, Authorization... or a repeated single one
        value = line[colon + 1 :].strip(" \t")
        if code == _EXPIRES:
            if not value.isdigit() or int(value) > 2**32 - 1:
                return None
        elif code == _MAX_FORWARDS:
            if not value.isdigit() or int(value) > 255:
                return None
        elif code == _CONTENT_LENGTH and value != "0":
            return None
        values[code] = value
    r = RegisterRequest()
    r.via_text = values[_VIA] or ""
    r.from_ = values[_FROM] or ""
    r.to = values[_TO] or ""
    r.call_id = values[_CALL_ID] or ""
    r.cseq = values[_CSEQ] or ""
    r.contact = values[_CONTACT]
    r.authorization = values[_AUTHORIZATION]
    r.expires = values[_EXPIRES]
    r.user_agent = values[_USER_AGENT] or ""
    return r if _checked(r, parts[1]) else None


def _checked(r: RegisterRequest, ruri: str) -> bool:
    """§8.2's checks of the general path on what `read_register` collected; the parsed
    values filled in."""
    call_id = r.call_id
    if not call_id or " " in call_id or not r.from_ or not r.to or not r.via_text:
        return False
    cseq = r.cseq.split()
    if len(cseq) != 2 or cseq[1] != "REGISTER" or not cseq[0].isdigit():
        return False
    num = int(cseq[0])
    if num > MAX_CSEQ:
        return False
    r.cseq_num = num
    to = _TO_SEEN.get(r.to)
    if to is None:
        to = _aor(r.to)
        _remember(_TO_SEEN, r.to, to)
    if not to[0]:
        return False
    r.aor = to[1]
    contact = r.contact
    if contact is not None:
        found = _CONTACT_SEEN.get(contact)
        if found is None:
            found = _contact(contact)
            _remember(_CONTACT_SEEN, contact, found)
        if not found[0]:
            return False
        r.contact = found[0]
        r.contact_params = found[1]
    via = r.via_text
    if "," in via or via != via.strip():
        return False  # several Via values, or more than LWS around one
    try:
        parse_name_addr(r.from_, "From")
        r.via = parse_via(via)
    except ParseError:
        return False
    ok = _RURI_OK.get(ruri)
    if ok is None:
        ok = _ruri_ok(ruri)
        _remember(_RURI_OK, ruri, ok)
    return ok


# To and Contact values checked, by their text: a phone sends the same ones in every
# refresh (the To of a REGISTER has no tag). Bounded: values come from the network.
_TO_SEEN: Final[dict[str, tuple[bool, str | None]]] = {}
_CONTACT_SEEN: Final[dict[str, tuple[str, dict[str, str | None]]]] = {}


def _remember(cache: dict, text: str, value: object) -> None:
    """Keep `value` for `text` in one of this module's caches, bounded (their keys come
    from the network): a full cache starts again."""
    if len(cache) >= 4096:
        cache.clear()
    cache[text] = value


def _aor(to: str) -> tuple[bool, str | None]:
    """(True, the user part) of a To value the general path accepts (None: a URI
    without one); False for one it refuses, or that carries a tag (a request within a
    dialog: the general path answers 481)."""
    try:
        value = parse_name_addr(to, "To")
        uri = parse_uri(value.uri)
    except (URIError, ParseError):
        return False, None
    if "tag" in value.params or not isinstance(uri, SipURI | TelURI):
        return False, None
    return True, uri.user


def _contact(text: str) -> tuple[str, dict[str, str | None]]:
    """The URI and parameters of one Contact value the general path accepts; ("", {})
    for anything else ('*', several values, a bad URI): the general path takes it."""
    if "," in text or text != text.strip():
        return "", {}
    try:
        value = parse_name_addr(text, "Contact")
        parse_uri(value.uri)
    except (URIError, ParseError):
        return "", {}
    return value.uri, value.params


def _ruri_ok(text: str) -> bool:
    """A Request-URI validate_request accepts for a SIP URI (a tel: one: the general path)."""
    if not text or text[0] == "<" or "\t" in text:
        return False
    try:
        uri = parse_uri(text)
    except URIError:
        return False
    return isinstance(uri, SipURI) and uri.headers is None
