"""SIP messages: parsing and serialization (RFC 3261 §7, §20, §25), sans-IO.

`parse_message(bytes)` splits the start line and header fields once and keeps
each header value as text; structured views (Via, From/To, CSeq, Contact) are
parsed on first access and cached. A proxy or registrar touching five headers
of a twenty-header REGISTER pays for five.

Malformed input raises `ParseError` (carrying the status to answer with, as
h11 does) and never anything else.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Final

from .memo import Memo
from .uri import URI, SipURI, URIError, parse_uri, split_params

__all__ = [
    "ParseError", "Headers", "Message", "Request", "Response", "NameAddr", "Via",
    "parse_message", "validate_request", "validate_response", "StreamFramer",
    "KEEPALIVE", "parse_name_addr", "parse_via", "own_via", "split_list", "canonical_name",
    "SUPPORTED_EXTENSIONS", "REASONS", "make_response", "unsupported_options",
]

SIP_VERSION: Final = "SIP/2.0"
MAX_CSEQ: Final = 2**31 - 1  # RFC 3261 §8.1.1.5: CSeq number < 2**31
MAX_MESSAGE: Final = 65535   # the largest UDP datagram; stream messages are held to the same
SUPPORTED_EXTENSIONS: Final = frozenset({"100rel", "timer", "replaces", "outbound", "path", "gruu"})


class ParseError(ValueError):
    """Unparseable or invalid input; `status` is what a UAS answers (RFC 4475)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# RFC 3261 §7.3.3 compact forms, plus RFC 3265/3515/4028/3841 ones.
COMPACT: Final = {
    "i": "call-id", "m": "contact", "e": "content-encoding", "l": "content-length",
    "c": "content-type", "f": "from", "s": "subject", "k": "supported", "t": "to",
    "v": "via", "o": "event", "r": "refer-to", "b": "referred-by", "u": "allow-events",
    "x": "session-expires", "a": "accept-contact", "j": "reject-contact",
    "d": "request-disposition", "y": "identity", "n": "identity-info",
}

_SPECIAL_CASE: Final = {
    "call-id": "Call-ID", "cseq": "CSeq", "www-authenticate": "WWW-Authenticate",
    "rack": "RAck", "rseq": "RSeq", "mime-version": "MIME-Version",
    "sip-etag": "SIP-ETag", "sip-if-match": "SIP-If-Match",
    "p-asserted-identity": "P-Asserted-Identity", "p-preferred-identity": "P-Preferred-Identity",
}

# Headers whose value is a comma-separated list (RFC 3261 §7.3.1). Others such as
# Authorization, Date or Call-ID contain commas that are not separators.
LIST_HEADERS: Final = frozenset({
    "via", "contact", "route", "record-route", "allow", "supported", "require",
    "proxy-require", "unsupported", "accept", "accept-encoding", "accept-language",
    "allow-events", "content-encoding", "content-language", "in-reply-to", "path",
    "service-route", "warning", "call-info", "alert-info", "error-info", "history-info",
    "diversion", "p-asserted-identity", "reason", "security-client", "security-server",
    "security-verify",
})

# Headers that may appear at most once (RFC 3261 §20, table 2).
SINGLE_HEADERS: Final = frozenset({
    "call-id", "cseq", "from", "to", "max-forwards", "content-length", "content-type",
    "expires", "min-expires", "rseq", "rack",
})

REASONS: Final = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted", 300: "Multiple Choices",
    301: "Moved Permanently", 302: "Moved Temporarily", 380: "Alternative Service",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable", 407: "Proxy Authentication Required",
    408: "Request Timeout", 410: "Gone", 413: "Request Entity Too Large",
    414: "Request-URI Too Long", 415: "Unsupported Media Type",
    416: "Unsupported URI Scheme", 420: "Bad Extension", 421: "Extension Required",
    423: "Interval Too Brief", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 482: "Loop Detected", 483: "Too Many Hops",
    484: "Address Incomplete", 485: "Ambiguous", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 491: "Request Pending", 493: "Undecipherable",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large", 600: "Busy Everywhere", 603: "Decline",
    604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}

# §25.1 token; a single character class, so matching is linear (no backtracking).
_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")


def _is_token(text: str) -> bool:
    return _TOKEN_RE.fullmatch(text) is not None


def _is_token_quick(text: str) -> bool:
    """_is_token, answered by string methods for letters, digits and '-' (what branches,
    tags and method names are made of) at half the regular expression's cost (148
    against 301 ns for a SIPp branch)."""
    return (text.isascii() and text.replace("-", "").isalnum()) or _is_token(text)


# Fast paths for the shapes nearly every phone sends: one linear regular expression
# (single character classes, no nested quantifiers) recognises a value whose parse is
# unambiguous; anything else (quotes, spaces, IPv6, escapes) goes through the general
# parser below, which gives the same result for what the fast path accepts.
_T: Final = r"A-Za-z0-9\-.!%*_+`'~"
_PARAMS: Final = rf"(?:;[{_T}]+(?:=[{_T}]+)?)*"
_FAST_VIA_RE: Final = re.compile(
    rf"SIP/2\.0/([A-Za-z]+) ([A-Za-z0-9\-.]+)(?::([0-9]{{1,5}}))?({_PARAMS})")
_FAST_NAME_ADDR_RE: Final = re.compile(
    rf'(?:"([^"\\\x00-\x1f]*)" ?)?<([^<>"\x00-\x20]+)>({_PARAMS})')


_CANONICAL: Final[dict[str, str]] = dict(_SPECIAL_CASE)


def canonical_name(name: str) -> str:
    """`call-id` → `Call-ID`, `via` → `Via`: the form we write on the wire."""
    known = _CANONICAL.get(name)
    if known is None:
        known = "-".join(part.capitalize() for part in name.split("-"))
        if len(_CANONICAL) < 1024:  # bounded: header names come from the network
            _CANONICAL[name] = known
    return known


# a header's key → "\r\nName: ", what Message.to_bytes writes before its value
_LINE_STARTS: Final[dict[str, str]] = {}


def _line_start(key: str) -> str:
    start = f"\r\n{canonical_name(key)}: "
    if len(_LINE_STARTS) < 1024:  # bounded: keys come from the network
        _LINE_STARTS[key] = start
    return start


# raw header name as written → lowercase full name; bounded, names come from the network
_KEYS: Final[dict[str, str]] = {}


def _key(name: str) -> str:
    key = _KEYS.get(name)
    if key is None:
        key = name.lower()
        key = COMPACT.get(key, key)
        if len(_KEYS) < 4096:
            _KEYS[name] = key
    return key


def split_list(value: str) -> list[str]:
    """Split a header value at commas outside quoted strings and <...> (§7.3.1)."""
    if "," not in value:
        v = value.strip()
        return [v] if v else []
    out: list[str] = []
    start = 0
    quoted = angle = False
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == "<":
            angle = True
        elif c == ">":
            angle = False
        elif c == "," and not angle:
            item = value[start:i].strip()
            if item:
                out.append(item)
            start = i + 1
        i += 1
    item = value[start:].strip()
    if item:
        out.append(item)
    return out


class Headers:
    """Ordered, case-insensitive multi-map of header fields.

    Entries are `(key, value)` with `key` the lowercase full name (compact forms
    expanded), so lookup is a string compare and output uses `canonical_name`.
    The first lookup builds an index (key → values in order) that every mutator
    drops; code that edits `_items` directly calls `changed()`. Entries and index
    values are tuples of strings, which the cycle collector stops tracking: a call
    keeps several parsed messages for 64*T1, and lists would each be scanned.
    """

    __slots__ = ("_items", "_index")

    def __init__(self, items: list[tuple[str, str]] | None = None) -> None:
        self._items: list[tuple[str, str]] = items if items is not None else []
        self._index: dict[str, tuple[str, ...]] | None = None

    def _build_index(self) -> dict[str, tuple[str, ...]]:
        index: dict[str, tuple[str, ...]] = {}
        for k, v in self._items:
            values = index.get(k)
            index[k] = (v,) if values is None else values + (v,)
        self._index = index
        return index

    def _values(self, name: str) -> tuple[str, ...] | None:
        index = self._index
        if index is None:
            index = self._build_index()
        values = index.get(name)
        if values is None:
            key = _key(name)
            if key != name:
                values = index.get(key)
        return values

    def changed(self) -> None:
        """Drop the lookup index after editing `_items` in place."""
        self._index = None

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self._values(name)
        return values[0] if values else default

    def get_all(self, name: str) -> list[str]:
        """Every value, list headers split into elements, in message order."""
        values = self._values(name)
        if not values:
            return []
        if _key(name) in LIST_HEADERS:
            out: list[str] = []
            for v in values:
                out.extend(split_list(v))
            return out
        return list(values)

    def count(self, name: str) -> int:
        values = self._values(name)
        return len(values) if values else 0

    def __contains__(self, name: str) -> bool:
        return bool(self._values(name))

    def add(self, name: str, value: str, first: bool = False) -> None:
        entry = (_key(name), value)
        if first:
            self._items.insert(0, entry)
        else:
            self._items.append(entry)
        self._index = None

    def set(self, name: str, value: str) -> None:
        """Replace every occurrence with one value, keeping the first one's place."""
        key = _key(name)
        self._index = None
        for i, (k, _) in enumerate(self._items):
            if k == key:
                self._items[i] = (key, value)
                self._items[i + 1 :] = [e for e in self._items[i + 1 :] if e[0] != key]
                return
        self._items.append((key, value))

    def remove(self, name: str) -> None:
        key = _key(name)
        self._items = [e for e in self._items if e[0] != key]
        self._index = None

    def pop_first(self, name: str) -> str | None:
        key = _key(name)
        for i, (k, v) in enumerate(self._items):
            if k == key:
                del self._items[i]
                self._index = None
                return v
        return None

    def items(self) -> Iterator[tuple[str, str]]:
        return ((k, v) for k, v in self._items)

    def copy(self) -> Headers:
        return Headers(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


def _parse_params(text: str, where: str) -> dict[str, str | None]:
    """Generic header parameters `;a=b;c;d="q s"` (§25.1 generic-param)."""
    params: dict[str, str | None] = {}
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t":
            i += 1
        if i >= n:
            break
        if text[i] != ";":
            raise ParseError(f"Malformed parameters in {where}")
        i += 1
        start = i
        while i < n and text[i] not in "=;":
            i += 1
        name = text[start:i].strip().lower()
        if not _is_token(name):
            raise ParseError(f"Malformed parameter name in {where}")
        value: str | None = None
        if i < n and text[i] == "=":
            i += 1
            while i < n and text[i] in " \t":
                i += 1
            if i < n and text[i] == '"':
                j = i + 1
                while j < n and text[j] != '"':
                    j += 2 if text[j] == "\\" else 1
                if j >= n:
                    raise ParseError(f"Unterminated quoted string in {where}")
                value = text[i : j + 1]
                i = j + 1
            else:
                start = i
                while i < n and text[i] != ";":
                    i += 1
                value = text[start:i].strip()
                if not value or " " in value or "\t" in value:
                    raise ParseError(f"Malformed parameter value in {where}")
        params[name] = value
    return params


def _format_params(params: dict[str, str | None]) -> str:
    return "".join([f";{k}" if v is None else f";{k}={v}" for k, v in params.items()])


class NameAddr:
    """From, To, Contact, Route, Record-Route values: display name, URI, params."""

    __slots__ = ("display", "uri", "params", "_parsed")

    def __init__(self, uri: str, display: str | None = None,
                 params: dict[str, str | None] | None = None) -> None:
        self.display = display
        self.uri = uri
        self.params = params if params is not None else {}
        self._parsed: URI | None = None

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    @property
    def parsed_uri(self) -> URI:
        if self._parsed is None:
            try:
                self._parsed = parse_uri(self.uri)
            except URIError as e:
                raise ParseError(f"Bad URI: {e}") from None
        return self._parsed

    def __str__(self) -> str:
        if self.display is not None:
            display = self.display.replace("\\", "\\\\").replace('"', '\\"')
            head = f'"{display}" <{self.uri}>'
        else:
            head = f"<{self.uri}>"
        return head + _format_params(self.params)

    def __repr__(self) -> str:
        return f"NameAddr({str(self)!r})"


# Values parsed by the fast paths, shared by the messages that carry the same text
# (appliance/sip/memo.py): a NameAddr or Via is never changed once parsed.
_NAME_ADDRS: Final[Memo[NameAddr]] = Memo(4096)
# Name-addrs by shape: the text with its tag's value cut out (`_cut_param`). A phone's
# From is the same in each new request but for the tag (§8.1.1.3), as a Via is but for
# the branch (below).
_NAME_ADDR_SHAPES: Final[Memo[NameAddr]] = Memo(2048)
_VIAS: Final[Memo[Via]] = Memo(2048)
# Vias by shape: the text with its branch's value cut out (`_cut_param`). A phone's
# requests carry the same Via but for the branch, new in each transaction (§8.1.1.7),
# so after its first request a Via is its shape's parse with the new branch, once that
# is checked to be a token as the fast path would check it.
_VIA_SHAPES: Final[Memo[Via]] = Memo(2048)


def parse_name_addr(value: str, where: str = "header") -> NameAddr:
    """Parse `name-addr / addr-spec` followed by header parameters (§20.10, §25.1)."""
    known = _NAME_ADDRS.get(value)
    if known is not None:
        return known
    # The URI holds no '>': the last one closes it, and its parameters follow.
    gt = value.rfind(">")
    cut = _cut_param(value, ";tag=", gt + 1)
    if cut is not None:
        shape = _NAME_ADDR_SHAPES.get(cut[0])
        if shape is not None and _is_token_quick(cut[1]):
            params = dict(shape.params)
            params["tag"] = cut[1]
            parsed = NameAddr(shape.uri, shape.display, params)
            parsed._parsed = shape._parsed  # the same URI text
            _NAME_ADDRS.put(value, parsed)
            return parsed
    m = _FAST_NAME_ADDR_RE.fullmatch(value)
    if m is not None:
        display, uri, params_text = m.groups()
        parsed = NameAddr(uri, display, split_params(params_text) if params_text else {})
        _NAME_ADDRS.put(value, parsed)
        if cut is not None and value[gt:].lower().count(";tag=") == 1:
            _NAME_ADDR_SHAPES.put(cut[0], parsed)
        return parsed
    return _parse_name_addr(value, where)


def name_addr_ok(value: str, where: str) -> bool:
    """Whether parse_name_addr accepts `value`, for a reader that needs no parse (an
    express path checking a request's From, whose tag is new in each call): a known
    shape with a token for the tag answers without building a NameAddr or keeping the
    text. (Kept, a From with a new tag each time turns `_NAME_ADDRS` over under load:
    at 12,000 registrations/s parse_name_addr took 5.0% of the daemon's CPU, half of
    it in that memo's lookups, missing in cold memory; this takes 2.6%: perf.)"""
    shape = tag_shape(value)
    if shape is not None and _NAME_ADDR_SHAPES.get(shape) is not None:
        return True
    try:
        parse_name_addr(value, where)
    except ParseError:
        return False
    return True


def tag_shape(value: str) -> str | None:
    """The shape name_addr_ok's fast path looks `value` up by: its text with the value
    of the header's tag cut out, when that value is a token; None otherwise. A shape
    `shape_known` confirmed once stands for every name-addr of that shape."""
    gt = value.rfind(">")
    cut = _cut_param(value, ";tag=", gt + 1)
    if cut is None or not _is_token_quick(cut[1]):
        return None
    return cut[0]


def shape_known(shape: str) -> bool:
    """Whether name-addrs of `shape` (from `tag_shape`) are read by their shape: one of
    them was parsed by the fast path, with one tag."""
    return _NAME_ADDR_SHAPES.get(shape) is not None


def _parse_name_addr(value: str, where: str) -> NameAddr:
    """The general parser behind parse_name_addr's fast path."""
    s = value.strip()
    if not s:
        raise ParseError(f"Empty {where}")
    display: str | None = None
    if s[0] == '"':
        j, n, chars = 1, len(s), []
        while j < n and s[j] != '"':
            if s[j] == "\\" and j + 1 < n:
                j += 1
            chars.append(s[j])
            j += 1
        if j >= n:
            raise ParseError(f"Unterminated quoted string in {where}")
        display = "".join(chars)
        rest = s[j + 1 :].lstrip(" \t")
        if not rest.startswith("<"):
            raise ParseError(f"Malformed {where}")
    else:
        lt = s.find("<")
        if lt > 0:
            display = " ".join(s[:lt].split())
            if not all(_is_token(w) for w in display.split(" ")):
                raise ParseError(f"Invalid display name in {where}")
            rest = s[lt:]
        elif lt == 0:
            rest = s
        else:
            # addr-spec: parameters after the first ';' belong to the header (§20.10).
            uri, semi, params = s.partition(";")
            uri = uri.rstrip(" \t")
            if " " in uri or "\t" in uri or "?" in uri or "," in uri:
                raise ParseError(f"Malformed URI in {where}")
            return NameAddr(uri, None, _parse_params(semi + params, where) if semi else {})
    gt = rest.find(">")
    if gt < 0:
        raise ParseError(f"Missing '>' in {where}")
    uri = rest[1:gt].strip()
    if not uri or " " in uri or "\t" in uri:
        raise ParseError(f"Malformed URI in {where}")
    tail = rest[gt + 1 :]
    return NameAddr(uri, display, _parse_params(tail, where) if tail.strip() else {})


class Via:
    """One Via value (§20.42): `SIP/2.0/UDP host:port;branch=...;received=...`."""

    __slots__ = ("transport", "host", "port", "params", "text")

    def __init__(self, transport: str, host: str, port: int | None = None,
                 params: dict[str, str | None] | None = None) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        self.params = params if params is not None else {}
        # The text parse_via's fast path read this from, when that is exactly how it
        # prints (str(self)): its parameter values are tokens. None: not known.
        self.text: str | None = None

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def sent_by(self) -> tuple[str, int | None]:
        return self.host, self.port

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"SIP/2.0/{self.transport} {self.host}{port}{_format_params(self.params)}"

    def __repr__(self) -> str:
        return f"Via({str(self)!r})"


def parse_via(value: str) -> Via:
    known = _VIAS.get(value)
    if known is not None:
        return known
    cut = _cut_param(value, ";branch=")
    if cut is not None:
        via = _via_of_shape(value, cut)
        if via is not None:
            _VIAS.put(value, via)
            return via
    return _parse_via_fresh(value, cut)


def parse_request_via(value: str) -> Via:
    """parse_via for the top Via of a request from the network, whose branch is new in
    each transaction (§8.1.1.7): its shape looked up first, and the text not kept (only
    a retransmission would carry it again, and the transaction layer answers that)."""
    cut = _cut_param(value, ";branch=")
    if cut is not None:
        via = _via_of_shape(value, cut)
        if via is not None:
            return via
    known = _VIAS.get(value)
    return known if known is not None else _parse_via_fresh(value, cut)


def _via_of_shape(value: str, cut: tuple[str, str]) -> Via | None:
    """The Via `value` made from its shape's parse (`cut`: `_cut_param`'s), or None."""
    shape = _VIA_SHAPES.get(cut[0])
    if shape is None or not _is_token_quick(cut[1]):
        return None
    params = dict(shape.params)
    params["branch"] = cut[1]
    via = Via(shape.transport, shape.host, shape.port, params)
    if shape.text is not None:
        via.text = value  # the same text around a token
    return via


def _parse_via_fresh(value: str, cut: tuple[str, str] | None) -> Via:
    m = _FAST_VIA_RE.fullmatch(value)
    if m is not None:
        transport, host, port, params_text = m.groups()
        if port is None or int(port) <= 65535:
            via = Via(transport.upper(), host, int(port) if port else None,
                      split_params(params_text) if params_text else {})
            if str(via) == value:
                via.text = value
            _VIAS.put(value, via)
            if cut is not None and value.lower().count(";branch=") == 1:
                _VIA_SHAPES.put(cut[0], via)
            return via
    return _parse_via(value)


def _cut_param(value: str, marker: str, since: int = 0) -> tuple[str, str] | None:
    """(`value` without the value of the first parameter `marker` (";branch=") at or
    after `since`, that value): the text up to the marker and from the ";" after it. A
    value the fast path matched whose shape has one such parameter (any case) gives
    the same shape only with the same text around that value: the shape's parse then
    differs from a fresh one only in that parameter, provided the new value is a token
    (no ';' to move the cut, no '>' to move a name-addr's `since`)."""
    start = value.find(marker, since)
    if start < 0:
        return None
    start += len(marker)
    end = value.find(";", start)
    if end < 0:
        return value[:start], value[start:]
    return value[:start] + value[end:], value[start:end]


def own_via(transport: str, host: str, port: int, branch: str) -> str:
    """The text of a Via of ours, `SIP/2.0/UDP host:port;branch=...;rport` (§8.1.1.7,
    RFC 3581 §3), its parse kept in the memo: the transaction layer reads the branch
    back from it, and each response to the request carries it back."""
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address
    transport = transport.upper()
    text = f"SIP/2.0/{transport} {host}:{port};branch={branch};rport"
    _VIAS.put(text, Via(transport, host, port, {"branch": branch, "rport": None}))
    return text


def _parse_via(value: str) -> Via:
    """The general parser behind parse_via's fast path."""
    parts = value.split("/", 2)
    if len(parts) != 3 or parts[0].strip().upper() != "SIP" or parts[1].strip() != "2.0":
        raise ParseError("Malformed Via")
    rest = parts[2].lstrip(" \t")
    i, n = 0, len(rest)
    while i < n and rest[i] not in " \t":
        i += 1
    transport = rest[:i].upper()
    if not _is_token(transport):
        raise ParseError("Malformed Via transport")
    rest = rest[i:].lstrip(" \t")
    hostport, semi, params = rest.partition(";")
    hostport = hostport.strip()
    # LWS is allowed around the ':' of sent-by (§25.1 HCOLON-like usage in practice).
    hostport = hostport.replace(" ", "").replace("\t", "")
    if not hostport:
        raise ParseError("Via without sent-by")
    try:
        host, port = _split_hostport(hostport)
    except ValueError:
        raise ParseError("Malformed Via sent-by") from None
    return Via(transport, host, port, _parse_params(semi + params, "Via") if semi else {})


def _split_hostport(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError
        host, rest = text[: end + 1], text[end + 1 :]
    else:
        host, colon, port = text.partition(":")
        rest = colon + port
        if not host or any(c in "<>@\"" for c in host):
            raise ValueError
    if not rest:
        return host, None
    if rest[0] != ":" or not rest[1:].isdigit() or int(rest[1:]) > 65535:
        raise ValueError
    return host, int(rest[1:])


class Message:
    """Common part of requests and responses; structured views are cached."""

    __slots__ = ("headers", "body", "_vias", "_from", "_to", "_cseq", "_contacts")

    def __init__(self, headers: Headers | None = None, body: bytes = b"") -> None:
        self.headers = headers if headers is not None else Headers()
        self.body = body
        self._vias: list[Via] | None = None
        self._from: NameAddr | None = None
        self._to: NameAddr | None = None
        self._cseq: tuple[int, str] | None = None
        self._contacts: tuple[dict | None, list[NameAddr]] | None = None

    # -- structured views ---------------------------------------------------
    @property
    def call_id(self) -> str:
        v = self.headers.get("call-id")
        if not v:
            raise ParseError("Missing Call-ID")
        return v

    @property
    def cseq(self) -> tuple[int, str]:
        if self._cseq is None:
            v = self.headers.get("cseq")
            if v is None:
                raise ParseError("Missing CSeq")
            parts = v.split()
            if len(parts) != 2 or not parts[0].isdigit() or not _is_token_quick(parts[1]):
                raise ParseError("Malformed CSeq")
            num = int(parts[0])
            if num > MAX_CSEQ:
                raise ParseError("CSeq number too large")
            self._cseq = (num, parts[1])
        return self._cseq

    @property
    def vias(self) -> list[Via]:
        if self._vias is None:
            self._vias = [parse_via(v) for v in self.headers.get_all("via")]
        return self._vias

    @property
    def top_via(self) -> Via:
        vias = self.vias
        if not vias:
            raise ParseError("Missing Via")
        return vias[0]

    @property
    def from_(self) -> NameAddr:
        if self._from is None:
            v = self.headers.get("from")
            if v is None:
                raise ParseError("Missing From")
            self._from = parse_name_addr(v, "From")
        return self._from

    @property
    def to(self) -> NameAddr:
        if self._to is None:
            v = self.headers.get("to")
            if v is None:
                raise ParseError("Missing To")
            self._to = parse_name_addr(v, "To")
        return self._to

    @property
    def contacts(self) -> list[NameAddr]:
        """Contact values; `Contact: *` yields a single NameAddr with uri '*'."""
        h = self.headers
        cached = self._contacts
        if cached is not None and cached[0] is h._index is not None:
            return cached[1]  # the headers are unchanged since (mutators drop the index)
        values = h.get_all("contact")
        if values == ["*"]:
            contacts = [NameAddr("*")]
        else:
            contacts = [parse_name_addr(v, "Contact") for v in values]
        self._contacts = (h._index, contacts)
        return contacts

    def invalidate(self) -> None:
        """Drop cached views after editing headers directly."""
        self._vias = self._from = self._to = self._cseq = self._contacts = None
        self.headers.changed()

    def set_from(self, value: NameAddr) -> None:
        self.headers.set("from", str(value))
        self._from = value

    def set_to(self, value: NameAddr) -> None:
        self.headers.set("to", str(value))
        self._to = value

    def set_vias(self, vias: list[Via]) -> None:
        self.headers.remove("via")
        for via in reversed(vias):
            self.headers.add("via", str(via), first=True)
        self._vias = list(vias)

    def push_via(self, via: Via) -> None:
        self.headers.add("via", str(via), first=True)
        self._vias = None

    def start_line(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """The message as sent: each header line as `\r\nName: value` from a table of
        line starts, one join (a line built by an f-string each and joined twice cost
        about half as much again, callgrind), Content-Length from the body."""
        parts = [self.start_line()]
        starts = _LINE_STARTS
        for k, v in self.headers._items:
            if k != "content-length":
                start = starts.get(k)
                if start is None:
                    start = _line_start(k)
                parts.append(start)
                parts.append(v)
        parts.append(f"\r\nContent-Length: {len(self.body)}\r\n\r\n")
        return "".join(parts).encode("utf-8", "surrogateescape") + self.body

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    def __str__(self) -> str:
        return self.to_bytes().decode("utf-8", "replace")


class Request(Message):
    __slots__ = ("method", "uri", "version", "_ruri")

    def __init__(self, method: str, uri: str, headers: Headers | None = None,
                 body: bytes = b"", version: str = SIP_VERSION) -> None:
        super().__init__(headers, body)
        self.method = method
        self.uri = uri
        self.version = version
        self._ruri: URI | None = None

    @property
    def ruri(self) -> URI:
        """The parsed Request-URI."""
        if self._ruri is None:
            try:
                self._ruri = parse_uri(self.uri)
            except URIError as e:
                raise ParseError(f"Bad Request-URI: {e}") from None
        return self._ruri

    def set_uri(self, uri: str | SipURI) -> None:
        self.uri = str(uri)
        self._ruri = uri if isinstance(uri, SipURI) else None

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class Response(Message):
    __slots__ = ("status", "reason", "version")

    def __init__(self, status: int, reason: str | None = None, headers: Headers | None = None,
                 body: bytes = b"", version: str = SIP_VERSION) -> None:
        super().__init__(headers, body)
        self.status = status
        self.reason = reason if reason is not None else REASONS.get(status, "Unknown")
        self.version = version

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


# -- parsing ------------------------------------------------------------------

# The header names parse_message met last, as written, with their keys, by slot: a
# name's length (its line's colon, under 32) and its first and last letters mixed into
# 7 bits, as express.read_head's `HeaderTable.spelled`. A line that starts with the name
# in its slot has that name (the slot fixes its length): found by `startswith`, with no
# slice to hash and look up. One tuple per slot, read once: a name never pairs with
# another's key. ":" starts no line (a name is not empty).
_SPELLED_SLOTS: Final = 32 << 7
_NOT_SPELLED: Final = (":", "")
_SPELLED: Final[list[tuple[str, str]]] = [_NOT_SPELLED] * _SPELLED_SLOTS


# A tuple, not `bytes | bytearray | memoryview`: compiled, the union was built anew in
# every call (two `|` operations, ~900 instructions a message, callgrind).
_BYTES_LIKE: Final = (bytes, bytearray, memoryview)


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        return data[:end], data[end + 4 :]
    end = data.find(b"\n\n")  # tolerate bare-LF senders (§7.5 robustness)
    if end >= 0:
        return data[:end], data[end + 2 :]
    return data.rstrip(b"\r\n"), b""


def parse_message(data: bytes, stream: bool = False) -> Request | Response:
    """Parse one message. On datagrams, Content-Length bounds the body (§18.3)."""
    if not isinstance(data, _BYTES_LIKE):
        raise ParseError("Not bytes")
    if data[:1] in (b"\r", b"\n") or not isinstance(data, bytes):
        data = bytes(data).lstrip(b"\r\n")  # §7.5: CRLFs before the start line are ignored
    if not data:
        raise ParseError("Empty message")
    head_b, body = _split_head(data)
    head = head_b.decode("utf-8", "surrogateescape")
    lines = head.split("\r\n")
    rest = "".join(lines)  # what is left of a CR or LF is a bare one: two scans, no count
    if "\r" in rest or "\n" in rest:
        # Not every line break is CRLF: refuse bare CRs, tolerate bare LFs (§7.5).
        if "\r" in head.replace("\r\n", ""):
            raise ParseError("Bare CR in header section")
        lines = head.replace("\r\n", "\n").split("\n")
    start = lines[0]
    items: list[tuple[str, str]] = []
    index: dict[str, tuple[str, ...]] | None = {}
    keys = _KEYS
    spelled = _SPELLED
    for line in lines[1:]:
        if not line:
            continue
        first = line[0]
        if first == " " or first == "\t":
            if not items:
                raise ParseError("Continuation line without a header")
            last, value = items[-1]
            items[-1] = (last, (value + " " + line.strip()).strip())  # §7.3.1 folding
            index = None  # holds the unfolded value: rebuilt on first lookup
            continue
        colon = line.find(":")
        if colon <= 0:
            raise ParseError("Malformed header line")
        slot = (colon << 7) | ((ord(first) + 3 * ord(line[colon - 1])) & 127)
        seen = spelled[slot] if slot < _SPELLED_SLOTS else _NOT_SPELLED
        if line.startswith(seen[0]):
            key = seen[1]  # the name last seen in this slot: the same text, the same key
        else:
            name = line[:colon]
            known = keys.get(name)
            if known is None:
                stripped = name.rstrip(" \t")
                if not _is_token(stripped):
                    raise ParseError("Malformed header name")
                known = _key(stripped)
            key = known
            if slot < _SPELLED_SLOTS:
                spelled[slot] = (name, known)
        value = line[colon + 1 :].strip(" \t")
        items.append((key, value))
        if index is not None:
            values = index.get(key)
            index[key] = (value,) if values is None else values + (value,)
    headers = Headers(items)
    headers._index = index

    # Content-Length (§20.14): mandatory on streams; on datagrams it bounds the body.
    cl_values = headers._values("content-length") or ()
    if len(cl_values) > 1:
        raise ParseError("Multiple Content-Length values")
    if cl_values:
        cl = cl_values[0]
        if not cl.isdigit() or len(cl) > 10:
            raise ParseError("Bad Content-Length")
        length = int(cl)
        if length > len(body):
            raise ParseError("Content-Length larger than message body")
        body = body[:length]
    elif stream:
        body = b""

    if start.startswith("SIP/"):
        return _parse_status_line(start, headers, body)
    return _parse_request_line(start, headers, body)


def _parse_request_line(start: str, headers: Headers, body: bytes) -> Request:
    parts = start.split(" ")
    if len(parts) != 3 or not all(parts):
        raise ParseError("Malformed Request-Line")
    method, uri, version = parts
    if not _is_token_quick(method):
        raise ParseError("Malformed method")
    if uri[0] == "<" or "\t" in uri:
        raise ParseError("Malformed Request-URI")
    if not version.upper().startswith("SIP/"):
        raise ParseError("Malformed SIP-Version")
    return Request(method, uri, headers, body, version)


def _parse_status_line(start: str, headers: Headers, body: bytes) -> Response:
    version, _, rest = start.partition(" ")
    code, _, reason = rest.partition(" ")
    if len(code) != 3 or not code.isdigit() or not "100" <= code <= "699":
        raise ParseError("Malformed Status-Line")
    return Response(int(code), reason, headers, body, version)


def _check_common(msg: Message) -> None:
    """Checks shared by requests and responses: mandatory and scalar fields."""
    h = msg.headers
    index = h._index
    if index is None:
        index = h._build_index()
    if len(index) < len(h._items) and any(len(index.get(k, ())) > 1 for k in SINGLE_HEADERS):
        seen: set[str] = set()
        for k, _ in h._items:  # name the first repeated one, in message order
            if k in SINGLE_HEADERS:
                if k in seen:
                    raise ParseError(f"Multiple {canonical_name(k)} header fields")
                seen.add(k)
    for name in ("to", "from", "call-id", "cseq"):
        if name not in index:
            raise ParseError(f"Missing {canonical_name(name)}")
    call_id = h.get("call-id")
    if not call_id or " " in call_id:
        raise ParseError("Malformed Call-ID")
    _ = msg.cseq, msg.from_, msg.to  # parse now: malformed values raise here
    if not msg.vias:
        raise ParseError("Missing Via")
    mf = h.get("max-forwards")
    if mf is not None and (not mf.isdigit() or int(mf) > 255):
        raise ParseError("Bad Max-Forwards")
    exp = h.get("expires")
    if exp is not None and (not exp.isdigit() or int(exp) > 2**32 - 1):
        raise ParseError("Bad Expires")
    for contact in msg.contacts:
        if contact.uri != "*":
            _ = contact.parsed_uri


def validate_request(req: Request) -> tuple[int, str] | None:
    """Semantic checks of §8.2 before a UAS or proxy acts on a request.

    Returns the (status, reason) to answer with, or None when acceptable.
    """
    if req.version.upper() != SIP_VERSION:
        return 505, "Version Not Supported"
    try:
        _check_common(req)
        if req.cseq[1] != req.method:
            return 400, "CSeq method does not match Request-Line"
        ruri = req.ruri
    except ParseError as e:
        return e.status, e.reason
    if not isinstance(ruri, SipURI) and ruri.scheme != "tel":
        return 416, "Unsupported URI Scheme"
    if isinstance(ruri, SipURI) and ruri.headers is not None:
        return 400, "Escaped headers not allowed in Request-URI"
    if req.method not in ("ACK", "CANCEL"):
        unknown = [o for o in req.headers.get_all("require")
                   if o.lower() not in SUPPORTED_EXTENSIONS]
        if unknown:
            return 420, "Bad Extension"
    return None


def validate_response(resp: Response) -> str | None:
    """Returns why a response must be dropped (§18.1.2), or None."""
    if resp.version.upper() != SIP_VERSION:
        return "unsupported version"
    try:
        _check_common(resp)
    except ParseError as e:
        return e.reason
    return None


def make_response(request: Request, status: int, reason: str | None = None,
                  to_tag: str | None = None, body: bytes = b"",
                  content_type: str | None = None) -> Response:
    """§8.2.6: a response copying Via, From, To (adding our tag), Call-ID and CSeq."""
    h = Headers()
    src = request.headers
    for k, v in src._items:
        if k == "via":
            h._items.append((k, v))
    for name in ("from", "to", "call-id", "cseq"):
        value = src.get(name)
        if value is not None:
            if name == "to" and to_tag and ";tag=" not in value.replace(" ", "").lower():
                value = f"{value};tag={to_tag}"
            h._items.append((name, value))
    if status == 100:
        ts = src.get("timestamp")  # §8.2.6.1
        if ts is not None:
            h._items.append(("timestamp", ts))
    if content_type:
        h._items.append(("content-type", content_type))
    return Response(status, reason, h, body)


def unsupported_options(req: Request) -> list[str]:
    """Require options we do not support, for the Unsupported header of a 420."""
    return [o for o in req.headers.get_all("require") if o.lower() not in SUPPORTED_EXTENSIONS]


# -- stream framing (§18.3) -----------------------------------------------------

KEEPALIVE: Final = b"\r\n\r\n"


class StreamFramer:
    """Cuts a TCP/TLS byte stream into messages using Content-Length.

    `feed(data)` returns a list of complete items: message bytes, or KEEPALIVE
    for an RFC 5626 §3.5.1 double-CRLF ping (to be answered with a single CRLF).
    Raises ParseError when the stream cannot be framed; the connection is then
    to be closed.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def pending(self) -> bytes:
        """Bytes received but not yet framed (what a framing error was about)."""
        return bytes(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        while buf:
            if buf[0] in (13, 10):
                # Keep-alive ping (CRLFCRLF) or stray CRLFs between messages.
                if buf.startswith(KEEPALIVE):
                    out.append(KEEPALIVE)
                    del buf[:4]
                    continue
                if len(buf) < 4 and KEEPALIVE.startswith(bytes(buf)):
                    break  # maybe the rest of a ping
                i = 0
                while i < len(buf) and buf[i] in (13, 10):
                    i += 1
                del buf[:i]
                continue
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_MESSAGE:
                    raise ParseError("Header section too long", 513)
                break
            length = _content_length(bytes(buf[:end]))
            total = end + 4 + length
            if total > MAX_MESSAGE + 4:
                raise ParseError("Message too large", 513)
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
        return out


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() in (b"content-length", b"l"):
            v = value.strip()
            if not v.isdigit():
                raise ParseError("Bad Content-Length")
            return int(v)
    return 0
