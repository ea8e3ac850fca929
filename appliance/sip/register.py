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

from .express import (
    HeaderTable,
    cseq_number,
    one_contact,
    one_via,
    read_head,
    ruri_ok,
    scalar_ok,
)
from .memo import Memo
from .message import (
    SINGLE_HEADERS,
    ParseError,
    Via,
    name_addr_ok,
    parse_name_addr,
    shape_known,
    tag_shape,
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
_REGISTER: Final = HeaderTable({
    **{k: -1 for k in ("require", "path", "content-type", *SINGLE_HEADERS)},
    "via": _VIA, "from": _FROM, "to": _TO, "call-id": _CALL_ID, "cseq": _CSEQ,
    "max-forwards": _MAX_FORWARDS, "expires": _EXPIRES, "contact": _CONTACT,
    "authorization": _AUTHORIZATION, "content-length": _CONTENT_LENGTH,
    "user-agent": _USER_AGENT,
})


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
    read = read_head(data, "REGISTER", _REGISTER)
    if read is None or read[2]:
        return None  # not of the common shape, or a body
    ruri, values, _ = read
    expires = values[_EXPIRES]
    length = values[_CONTENT_LENGTH]
    if (not scalar_ok(expires, 2**32 - 1) or not scalar_ok(values[_MAX_FORWARDS], 255)
            or length is not None and length != "0"):
        return None
    r = RegisterRequest()
    r.via_text = values[_VIA] or ""
    r.from_ = values[_FROM] or ""
    r.to = values[_TO] or ""
    r.call_id = values[_CALL_ID] or ""
    r.cseq = values[_CSEQ] or ""
    r.contact = values[_CONTACT]
    r.authorization = values[_AUTHORIZATION]
    r.expires = expires
    r.user_agent = values[_USER_AGENT] or ""
    return r if _checked(r, ruri) else None


def _checked(r: RegisterRequest, ruri: str) -> bool:
    """§8.2's checks of the general path on what `read_register` collected; the parsed
    values filled in."""
    call_id = r.call_id
    if not call_id or " " in call_id or not r.from_ or not r.to or not r.via_text:
        return False
    num = cseq_number(r.cseq, "REGISTER")
    if num < 0:
        return False
    r.cseq_num = num
    phone = _PHONES.get(r.to)
    if phone is None:
        phone = _Phone(r.to)
        _PHONES.put(r.to, phone)
    if not phone.ok:
        return False
    r.aor = phone.aor
    contact = r.contact
    if contact is not None:
        if contact == phone.contact_text:
            found = phone.contact
        else:
            found = one_contact(contact)
            phone.contact_text = contact
            phone.contact = found
        if not found[0]:
            return False
        r.contact = found[0]
        r.contact_params = found[1]
    from_ = r.from_
    shape = tag_shape(from_)
    if shape is None or shape != phone.from_shape:
        if not name_addr_ok(from_, "From"):
            return False
        if shape is not None and shape_known(shape):
            phone.from_shape = shape
    r.via = one_via(r.via_text)
    return r.via is not None and ruri_ok(ruri)


class _Phone:
    """What the checks concluded about the REGISTERs of one To value: a phone sends the
    same To (a REGISTER's has no tag), Contact and From but for its tag in every refresh.
    One record per phone, found by one lookup, instead of a memo for each header: the
    lookups of a phone's entries missed in cold memory, ~4% of the daemon's CPU at
    10,000 registrations/s (perf). Each value is checked afresh when it differs from the
    last one seen with this To."""

    __slots__ = ("ok", "aor", "contact_text", "contact", "from_shape")

    def __init__(self, to: str) -> None:
        self.ok, self.aor = _aor(to)
        self.contact_text: str | None = None  # the last Contact value, and one_contact's
        self.contact: tuple[str, dict[str, str | None]] = ("", {})
        self.from_shape: str | None = None    # the last From's shape name_addr_ok took


# Phones by their To text. Bounded (appliance/sip/memo.py): values come from the network.
_PHONES: Final[Memo[_Phone]] = Memo(2048)


def _aor(to: str) -> tuple[bool, str | None]:
    """(True, the user part) of a To value the general path accepts (None: a URI
    without one); False for one it refuses, or that carries a tag (a request within a
    dialog: the general path answers 481), or ";tag=" anywhere, spaced or in any case
    (make_response would not add our tag to it)."""
    if ";tag=" in to.replace(" ", "").lower():
        return False, None
    try:
        value = parse_name_addr(to, "To")
        uri = parse_uri(value.uri)
    except (URIError, ParseError):
        return False, None
    if "tag" in value.params or not isinstance(uri, SipURI | TelURI):
        return False, None
    return True, uri.user
