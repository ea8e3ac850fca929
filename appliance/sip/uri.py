"""SIP, SIPS and TEL URIs (RFC 3261 §19.1, §25.1; RFC 3966).

Parsing is a hand-written scan (no backtracking regular expressions): URIs are
parsed on the hot path of every request.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote

from .memo import Memo

__all__ = ["URIError", "SipURI", "TelURI", "AbsoluteURI", "URI", "parse_uri", "unescape",
           "split_params"]


class URIError(ValueError):
    """A URI that does not follow the grammar of RFC 3261 §25.1 or RFC 3966."""


_SCHEME_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-.")
_BAD_URI_RE: Final = re.compile(r"[ \t\r\n<>\"]")
_HOST_RE: Final = re.compile(r"[A-Za-z0-9\-.]+")


def unescape(text: str) -> str:
    """Undo %HH escapes (RFC 3261 §19.1.2 compares user parts unescaped)."""
    return unquote(text, errors="surrogateescape") if "%" in text else text


def _parse_params(text: str) -> dict[str, str | None]:
    """`;a=b;c` → {'a': 'b', 'c': None}; names are case-insensitive (§19.1.4)."""
    params: dict[str, str | None] = {}
    for item in text.split(";"):
        if not item:
            continue
        name, eq, value = item.partition("=")
        name = name.strip().lower()
        if not name:
            raise URIError("empty URI parameter name")
        params[name] = value.strip() if eq else None
    return params


def _format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


class SipURI:
    """sip: or sips: URI. `user` and `password` keep their escapes as sent."""

    __slots__ = ("scheme", "user", "password", "host", "port", "params", "headers")

    def __init__(
        self,
        host: str,
        user: str | None = None,
        port: int | None = None,
        scheme: str = "sip",
        password: str | None = None,
        params: dict[str, str | None] | None = None,
        headers: str | None = None,
    ) -> None:
        self.scheme = scheme
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.params = params if params is not None else {}
        self.headers = headers

    @property
    def secure(self) -> bool:
        return self.scheme == "sips"

    @property
    def transport(self) -> str | None:
        t = self.params.get("transport")
        return t.lower() if t else None

    @property
    def host_bare(self) -> str:
        """Host without IPv6 brackets, for socket calls."""
        h = self.host
        return h[1:-1] if h.startswith("[") else h

    def copy(self) -> SipURI:
        return SipURI(self.host, self.user, self.port, self.scheme, self.password,
                      dict(self.params), self.headers)

    def __str__(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.append(":" + self.password)
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out.append(f":{self.port}")
        if self.params:
            out.append(_format_params(self.params))
        if self.headers:
            out.append("?" + self.headers)
        return "".join(out)

    def __repr__(self) -> str:
        return f"SipURI({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        """URI comparison per RFC 3261 §19.1.4 (the common cases)."""
        if not isinstance(other, SipURI):
            return NotImplemented
        if self.scheme != other.scheme or self.host.lower() != other.host.lower():
            return False
        if self.port != other.port:
            return False
        if unescape(self.user or "") != unescape(other.user or ""):
            return False
        if (self.password or "") != (other.password or ""):
            return False
        for name in ("user", "ttl", "method", "maddr", "transport"):
            a, b = self.params.get(name), other.params.get(name)
            if (a or "").lower() != (b or "").lower():
                return False
        for name in set(self.params) & set(other.params):
            a, b = self.params[name], other.params[name]
            if (a or "").lower() != (b or "").lower():
                return False
        return True

    def __hash__(self) -> int:
        return hash((self.scheme, self.host.lower(), self.port, unescape(self.user or "")))


class TelURI:
    """tel: URI (RFC 3966): a global (+...) or local number with phone-context."""

    __slots__ = ("number", "params")

    def __init__(self, number: str, params: dict[str, str | None] | None = None) -> None:
        self.number = number
        self.params = params if params is not None else {}

    scheme = "tel"

    @property
    def is_global(self) -> bool:
        return self.number.startswith("+")

    @property
    def digits(self) -> str:
        """The number without visual separators (RFC 3966 §5.1.1), keeping a leading +."""
        return "".join(c for c in self.number if c not in "-.()")

    @property
    def user(self) -> str:
        return self.digits

    def __str__(self) -> str:
        return "tel:" + self.number + _format_params(self.params)

    def __repr__(self) -> str:
        return f"TelURI({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TelURI):
            return NotImplemented
        return self.digits == other.digits and self.params == other.params

    def __hash__(self) -> int:
        return hash(self.digits)


class AbsoluteURI:
    """Any other scheme (RFC 3261 §25.1 absoluteURI): kept opaque."""

    __slots__ = ("scheme", "rest")

    def __init__(self, scheme: str, rest: str) -> None:
        self.scheme = scheme
        self.rest = rest

    user = None

    def __str__(self) -> str:
        return f"{self.scheme}:{self.rest}"

    def __repr__(self) -> str:
        return f"AbsoluteURI({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AbsoluteURI) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))


URI = SipURI | TelURI | AbsoluteURI


def _parse_host_port(text: str) -> tuple[str, int | None]:
    if not text:
        raise URIError("missing host")
    if text[0] == "[":
        end = text.find("]")
        if end < 0:
            raise URIError("unterminated IPv6 reference")
        host, rest = text[: end + 1], text[end + 1 :]
        inner = host[1:-1]
        if not inner or any(c not in "0123456789abcdefABCDEF:." for c in inner):
            raise URIError(f"bad IPv6 reference {host!r}")
    else:
        host, colon, port_s = text.partition(":")
        rest = colon + port_s
        if _HOST_RE.fullmatch(host) is None:
            raise URIError(f"bad host {host!r}")
    if not rest:
        return host, None
    if rest[0] != ":" or not rest[1:].isdigit() or len(rest) > 6:
        raise URIError(f"bad port in {text!r}")
    port = int(rest[1:])
    if port > 65535:
        raise URIError(f"port {port} out of range")
    return host, port


# The common `sip:user@host:port;params` in one linear regular expression; anything
# else (passwords, escapes in odd places, IPv6, headers, empty values) takes the scan.
_FAST_SIP_RE: Final = re.compile(
    r"(sips?):(?:([A-Za-z0-9\-_.!~*'()&=+$,%]+)@)?([A-Za-z0-9\-.]+)(?::([0-9]{1,5}))?"
    r"((?:;[^;?=@\x00-\x20<>\"]+(?:=[^;?=@\x00-\x20<>\"]+)?)*)")


def split_params(text: str) -> dict[str, str | None]:
    """`;name=value;name` already matched by a fast-path expression whose names and
    values hold no ';' or '=' (a SIP URI's here, Via's and name-addr's in message.py),
    so splitting there is exact: names lower-cased, bare names → None."""
    params: dict[str, str | None] = {}
    for item in text[1:].split(";"):
        name, _, value = item.partition("=")
        params[name.lower()] = value or None
    return params


# SIP URIs parsed by the fast path, shared by the messages that carry the same text
# (appliance/sip/memo.py): never change one, copy it (`SipURI.copy`).
_URIS: Final[Memo[SipURI]] = Memo(2048)


def parse_uri(text: str) -> URI:
    """Parse a URI as found in a Request-URI or inside < > of a name-addr."""
    known = _URIS.get(text)
    if known is not None:
        return known
    m = _FAST_SIP_RE.fullmatch(text)
    if m is not None:
        scheme, user, host, port, params = m.groups()
        if port is None or int(port) <= 65535:
            uri = SipURI(host, user, int(port) if port else None, scheme, None,
                         split_params(params) if params else {})
            _URIS.put(text, uri)
            return uri
    return _parse_uri(text)


def _parse_uri(text: str) -> URI:
    """The general parser behind parse_uri's fast path."""
    colon = text.find(":")
    if colon <= 0:
        raise URIError(f"no scheme in {text!r}")
    scheme = text[:colon].lower()
    if any(c not in _SCHEME_CHARS for c in scheme) or not scheme[0].isalpha():
        raise URIError(f"bad scheme in {text!r}")
    rest = text[colon + 1 :]
    if _BAD_URI_RE.search(rest):
        raise URIError(f"illegal character in URI {text!r}")
    if scheme in ("sip", "sips"):
        return _parse_sip(scheme, rest)
    if scheme == "tel":
        return _parse_tel(rest)
    if not rest:
        raise URIError("empty URI")
    return AbsoluteURI(scheme, rest)


def _parse_sip(scheme: str, rest: str) -> SipURI:
    # userinfo ends at the first '@' (it may itself hold '?', ';' and ':'; §25.1 user).
    at = rest.find("@")
    user = password = None
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        if not userinfo:
            raise URIError("empty user part")
        user, c, pw = userinfo.partition(":")
        password = pw if c else None
    rest, q, headers = rest.partition("?")
    hostport, _, params_s = rest.partition(";")
    host, port = _parse_host_port(hostport)
    params = _parse_params(params_s) if params_s else {}
    return SipURI(host, user, port, scheme, password, params, headers if q else None)


_TEL_CHARS: Final = frozenset("0123456789-.()*#abcdefABCDEF+")


def _parse_tel(rest: str) -> TelURI:
    number, _, params_s = rest.partition(";")
    if not number or any(c not in _TEL_CHARS for c in number) or "+" in number[1:]:
        raise URIError(f"bad telephone number {number!r}")
    params = _parse_params(params_s) if params_s else {}
    if not number.startswith("+") and "phone-context" not in params:
        # RFC 3966 §5.1.5: a local number must carry phone-context.
        raise URIError("local tel: number without phone-context")
    return TelURI(number, params)
