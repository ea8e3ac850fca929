"""SIP digest authentication: RFC 3261 §22.4, RFC 2617 §3, RFC 8760 (SHA-256), qop=auth.

Sans-IO: nothing here reads a clock or touches a socket; callers pass ``now``.

Server nonces are stateless (RFC 2617 §3.2.1 suggests a time-stamped, keyed-hash nonce):

    nonce = base64url(timestamp[8] || salt[6] || BLAKE2b-MAC(secret, ts || salt || realm, 16 bytes))

so any nonce we issued can be checked and dated without storage. Only the highest nonce-count
seen per nonce is kept (RFC 2617 §3.2.2 replay protection), in a bounded table.
"""

import binascii
import enum
import hashlib
import hmac
import importlib
import itertools
import re
import secrets
import struct
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from .memo import Memo

__all__ = [
    "Challenge",
    "Credentials",
    "DigestError",
    "DigestServer",
    "Verdict",
    "answer_challenge",
    "compute_ha1",
    "compute_response",
    "compute_response_ha1",
    "normalize_algorithm",
    "parse_challenge",
    "parse_credentials",
    "select_challenge",
]


class DigestError(ValueError):
    """Malformed digest header, or an algorithm/qop this module cannot compute."""


# --- algorithms (RFC 2617 §3.2.2.2, RFC 8760 §2.2) ---------------------------------------------

_HashFn = Callable[[bytes], Any]


def _builtin_md5() -> _HashFn:
    """CPython's own MD5, where it is built: for the short strings of a digest it costs
    half of OpenSSL's through hashlib, which sets up an EVP context per hash."""
    try:
        md5: _HashFn = importlib.import_module("_md5").md5
    except (ImportError, AttributeError):
        return hashlib.md5
    return md5


_MD5: Final = _builtin_md5()

# canonical name -> (hash constructor, is "-sess" variant)
_ALGORITHMS: Final[dict[str, tuple[_HashFn, bool]]] = {
    "MD5": (_MD5, False),
    "MD5-sess": (_MD5, True),
    "SHA-256": (hashlib.sha256, False),
    "SHA-256-sess": (hashlib.sha256, True),
}
_CANONICAL: Final = {name.upper(): name for name in _ALGORITHMS}


def normalize_algorithm(value: str) -> str:
    """Case-insensitive algorithm name -> canonical spelling ("MD5", "SHA-256", "MD5-sess", ...).

    Unknown names are upper-cased and returned as-is, so a parser can still report them.
    """
    upper = value.upper()
    return _CANONICAL.get(upper, upper)


def _algorithm(name: str) -> tuple[_HashFn, bool]:
    entry = _ALGORITHMS.get(name) or _ALGORITHMS.get(normalize_algorithm(name))
    if entry is None:
        raise DigestError(f"unsupported digest algorithm {name!r}")
    return entry


def compute_ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """H(username:realm:password), the value a server may store instead of the password.

    For "-sess" algorithms this is still the plain inner hash; the session key is derived per
    request by compute_response_ha1 (RFC 2617 §3.2.2.2).
    """
    fn, _ = _algorithm(algorithm)
    return fn(f"{username}:{realm}:{password}".encode()).hexdigest()


def compute_response_ha1(
    algorithm: str,
    ha1: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
) -> str:
    """request-digest from a precomputed HA1 (RFC 2617 §3.2.2.1; RFC 3261 §22.4)."""
    fn, sess = _algorithm(algorithm)
    if sess:
        if not cnonce:
            raise DigestError("-sess algorithms need a cnonce")
        ha1 = fn(f"{ha1}:{nonce}:{cnonce}".encode()).hexdigest()
    ha2 = fn(f"{method}:{uri}".encode()).hexdigest()  # qop=auth or absent: A2 = Method:digest-uri
    return _request_digest(fn, ha1, ha2, nonce, qop, nc, cnonce)


def _request_digest(fn: _HashFn, ha1: str, ha2: str, nonce: str, qop: str | None,
                    nc: str | None, cnonce: str | None) -> str:
    """KD(H(A1), nonce:nc:cnonce:qop:H(A2)) (RFC 2617 §3.2.2.1)."""
    if qop is None:  # RFC 2069 compatibility form
        return fn(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()
    if qop != "auth":  # auth-int would need the message body
        raise DigestError(f"unsupported qop {qop!r}")
    if nc is None or cnonce is None:
        raise DigestError("qop=auth needs nc and cnonce")
    return fn(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}".encode()).hexdigest()


def compute_response(
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
) -> str:
    """request-digest for a cleartext password (RFC 2617 §3.2.2)."""
    ha1 = compute_ha1(algorithm, username, realm, password)
    return compute_response_ha1(algorithm, ha1, method, uri, nonce, qop, nc, cnonce)


# --- header grammar (RFC 3261 §25.1, RFC 2617 §3.2) --------------------------------------------

_WS: Final = r"[ \t\r\n]*+"  # LWS incl. line folding; possessive quantifiers never backtrack
_TOKEN: Final = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]++"
_SCHEME_RE: Final = re.compile(rf"{_WS}({_TOKEN})(?:[ \t\r\n]++|\Z)")
# auth-param = token LWS "=" LWS ( token / quoted-string ), then "," or end. Unquoted values are
# read leniently (any visible char but DQUOTE, comma, backslash) for sloppy user agents.
_PARAM_RE: Final = re.compile(
    rf"{_WS}({_TOKEN}){_WS}={_WS}"
    r'(?:"((?:[^"\\]++|\\[\s\S])*+)"|([^\x00-\x20",\\\x7f]++))'
    rf"{_WS}(?:,[ \t\r\n,]*+|\Z)"
)
_QUOTED_PAIR_RE: Final = re.compile(r"\\([\s\S])")
_TOKEN_RE: Final = re.compile(_TOKEN)


def _is_nc(nc: str) -> bool:
    """nc-value = 8LHEX (RFC 2617 §3.2.2), ASCII hex digits only (`int(nc, 16)` would
    also take "0x", "_" and other scripts' digits). A loop, not a regex: compiled, it
    costs about half (0.9k instructions against 1.7k, callgrind)."""
    if len(nc) != 8:
        return False
    for ch in nc:
        c = ord(ch)
        if not (48 <= c <= 57 or 65 <= c <= 70 or 97 <= c <= 102):
            return False
    return True


# What phones send: `Digest name="value", name=token, ...` with single spaces, no escapes,
# and these names (RFC 2617 §3.2.1-2, RFC 8760), written in lower case. Anything else
# goes to the general parser.
_FAST_NAMES: Final = frozenset({"username", "realm", "nonce", "uri", "response", "algorithm",
                                "cnonce", "qop", "nc", "opaque", "stale", "domain"})


def _parse_params(value: str) -> dict[str, str]:
    """'Digest a=b, c="d"' -> {"a": "b", "c": "d"}: names lower-cased, quoted-pairs undone."""
    if value.startswith("Digest "):
        fast = _split_fast(value)
        if fast is not None:
            return fast
    return _parse_params_general(value)


def _split_fast(value: str, quoted: list[str] | None = None) -> dict[str, str] | None:
    """The items of `Digest ...` cut by position and checked as they are cut, no regular
    expression: a name from _FAST_NAMES, then "=" and a quoted value without a backslash
    (no quoted-pair to undo) or a token of printable characters without a space, quote,
    backslash or comma; "," or ", " between items. None for anything else, a repeated
    name included: the general parser decides, and gives the same result for what this
    accepts (tests/unit/test_digest.py). (A regex that checked the whole value first
    cost as much as the cutting.) The names and separators are checked exactly, so a
    backslash anywhere is in an item: the whole value is searched for one once. A quoted
    value is taken as the general parser takes it, any character but DQUOTE and
    backslash; `isprintable`, ~25 instructions a character, checks the tokens only.
    `quoted`, if given, gets the names of the quoted items, in order."""
    if "\\" in value:
        return None
    params: dict[str, str] = {}
    count = 0
    pos, end = 7, len(value)  # after "Digest "
    while True:
        eq = value.find("=", pos)
        if eq < 0:
            return None
        name = value[pos:eq]
        if name not in _FAST_NAMES:
            return None
        if eq + 1 < end and value[eq + 1] == '"':
            close = value.find('"', eq + 2)
            if close < 0:
                return None
            item = value[eq + 2 : close]
            pos = close + 1
            if quoted is not None:
                quoted.append(name)
        else:
            pos = value.find(",", eq + 1)
            if pos < 0:
                pos = end
            item = value[eq + 1 : pos]
            if not item or not item.isprintable() or " " in item or '"' in item:
                return None
        params[name] = item
        count += 1
        if len(params) != count:
            return None  # a repeated name
        if pos == end:
            return params
        if value[pos] != ",":
            return None
        pos += 1
        if pos < end and value[pos] == " ":
            pos += 1
        if pos == end:
            return None  # a trailing separator


def _parse_params_general(value: str) -> dict[str, str]:
    m = _SCHEME_RE.match(value)
    if m is None or m.group(1).lower() != "digest":
        raise DigestError(f"not a Digest header: {value[:60]!r}")
    params: dict[str, str] = {}
    pos, end = m.end(), len(value)
    while pos < end:
        m = _PARAM_RE.match(value, pos)
        if m is None:
            raise DigestError(f"malformed auth-param at offset {pos}: {value[pos : pos + 40]!r}")
        name, quoted, token = m.groups()
        name = name.lower()
        if name in params:  # RFC 7235 §2.1: each parameter name only once
            raise DigestError(f"duplicate auth-param {name!r}")
        if quoted is None:
            params[name] = token
        elif "\\" in quoted:
            params[name] = _QUOTED_PAIR_RE.sub(r"\1", quoted)
        else:
            params[name] = quoted
        pos = m.end()
    return params


def _require(params: dict[str, str], *names: str) -> None:
    missing = [n for n in names if n not in params]
    if missing:
        raise DigestError(f"missing auth-param(s): {', '.join(missing)}")


def _quote(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise DigestError("CR/LF not allowed in a quoted-string")  # no header injection
    if "\\" in value or '"' in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{value}"'


def _token_or_quote(value: str) -> str:
    return value if _TOKEN_RE.fullmatch(value) else _quote(value)


# params that RFC 2617 / RFC 7616 write as bare tokens; everything else is a quoted-string
_BARE: Final = frozenset({"algorithm", "stale", "nc", "charset", "userhash"})


def _extras(parts: list[str], params: dict[str, str], known: frozenset[str]) -> str:
    for name, value in params.items():
        if name not in known:
            parts.append(f"{name}={_token_or_quote(value) if name in _BARE else _quote(value)}")
    return ", ".join(parts)


_CHALLENGE_KNOWN: Final = frozenset({"realm", "nonce", "algorithm", "qop", "opaque", "stale"})
_CREDENTIALS_KNOWN: Final = frozenset(
    {"username", "realm", "nonce", "uri", "response", "algorithm", "cnonce", "opaque", "qop", "nc"}
)


@dataclass(slots=True)
class Challenge:
    """A WWW-Authenticate / Proxy-Authenticate Digest challenge (RFC 3261 §22.1, §25.1).

    ``params`` holds every auth-param as parsed (lower-case names, unquoted values); to_header()
    renders the typed fields and then any param in ``params`` they do not cover (e.g. domain).
    """

    realm: str
    nonce: str
    algorithm: str = "MD5"  # RFC 2617 §3.2.1: absent means MD5
    qop: list[str] = field(default_factory=list)
    opaque: str | None = None
    stale: bool = False
    params: dict[str, str] = field(default_factory=dict)

    def to_header(self) -> str:
        # field order follows the digest-cln ABNF of RFC 3261 §25.1
        parts = [f"Digest realm={_quote(self.realm)}", f"nonce={_quote(self.nonce)}"]
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        if self.stale:
            parts.append("stale=TRUE")
        parts.append(f"algorithm={_token_or_quote(self.algorithm)}")
        if self.qop:
            parts.append(f"qop={_quote(','.join(self.qop))}")
        return _extras(parts, self.params, _CHALLENGE_KNOWN)


@dataclass(slots=True)
class Credentials:
    """An Authorization / Proxy-Authorization Digest response (RFC 3261 §22.2, §25.1)."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    qop: str | None = None
    cnonce: str | None = None
    nc: str | None = None  # 8 hex digits, exactly as sent
    opaque: str | None = None
    params: dict[str, str] = field(default_factory=dict)

    # Written out, not generated: compiled, the dataclass's own __init__ (made at run
    # time) was interpreted and cost a tenth of the digest check.
    def __init__(self, username: str, realm: str, nonce: str, uri: str, response: str,
                 algorithm: str = "MD5", qop: str | None = None, cnonce: str | None = None,
                 nc: str | None = None, opaque: str | None = None,
                 params: dict[str, str] | None = None) -> None:
        self.username = username
        self.realm = realm
        self.nonce = nonce
        self.uri = uri
        self.response = response
        self.algorithm = algorithm
        self.qop = qop
        self.cnonce = cnonce
        self.nc = nc
        self.opaque = opaque
        self.params = {} if params is None else params

    def to_header(self) -> str:
        # field order follows the dig-resp ABNF of RFC 3261 §25.1; qop and nc are bare tokens
        parts = [
            f"Digest username={_quote(self.username)}",
            f"realm={_quote(self.realm)}",
            f"nonce={_quote(self.nonce)}",
            f"uri={_quote(self.uri)}",
            f"response={_quote(self.response)}",
            f"algorithm={_token_or_quote(self.algorithm)}",
        ]
        if self.cnonce is not None:
            parts.append(f"cnonce={_quote(self.cnonce)}")
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        if self.qop is not None:
            parts.append(f"qop={_token_or_quote(self.qop)}")
        if self.nc is not None:
            parts.append(f"nc={_token_or_quote(self.nc)}")
        return _extras(parts, self.params, _CREDENTIALS_KNOWN)


def parse_challenge(value: str) -> Challenge:
    """Parse a WWW-Authenticate / Proxy-Authenticate header value; DigestError on garbage."""
    p = _parse_params(value)
    _require(p, "realm", "nonce")
    qop = p.get("qop")
    return Challenge(
        realm=p["realm"],
        nonce=p["nonce"],
        algorithm=normalize_algorithm(p.get("algorithm", "MD5")),
        qop=[q for q in (s.strip().lower() for s in qop.split(",")) if q] if qop else [],
        opaque=p.get("opaque"),
        stale=p.get("stale", "").lower() == "true",
        params=p,
    )


def parse_credentials(value: str) -> Credentials:
    """Parse an Authorization / Proxy-Authorization header value; DigestError on garbage."""
    if "\\" not in value and value.startswith("Digest "):
        parts = value.split('"')
        if len(parts) & 1:
            key = '""'.join(parts[0::2])
            shape = _SHAPES.get(key)
            if shape is not None:
                p = _shaped(shape.items, parts)
                if not shape.checked:
                    return _credentials(p)
                return Credentials(p["username"], p["realm"], p["nonce"], p["uri"],
                                   p["response"], shape.algorithm, shape.qop,
                                   p.get("cnonce"), shape.nc, p.get("opaque"), p)
            quoted: list[str] = []
            fast = _split_fast(value, quoted)
            if fast is None:
                return _credentials(_parse_params_general(value))
            creds = _credentials(fast)
            _SHAPES.put(key, _Shape(fast, quoted, creds))
            return creds
    return _credentials(_parse_params(value))


def _credentials(p: dict[str, str]) -> Credentials:
    if ("username" not in p or "realm" not in p or "nonce" not in p or "uri" not in p
            or "response" not in p):
        _require(p, "username", "realm", "nonce", "uri", "response")
    qop = p.get("qop")
    nc = p.get("nc")
    if qop is not None:
        qop = qop.lower()
        if "cnonce" not in p or nc is None:
            _require(p, "cnonce", "nc")  # RFC 2617 §3.2.2: both MUST accompany qop
    if nc is not None and not _is_nc(nc):
        raise DigestError(f"nc must be 8 hex digits, got {nc!r}")
    algorithm = p.get("algorithm")
    return Credentials(
        username=p["username"],
        realm=p["realm"],
        nonce=p["nonce"],
        uri=p["uri"],
        response=p["response"],
        algorithm="MD5" if algorithm is None else normalize_algorithm(algorithm),
        qop=qop,
        cnonce=p.get("cnonce"),
        nc=nc,
        opaque=p.get("opaque"),
        params=p,
    )


# Credentials by their shape: the value with the text inside its quotes taken out
# (SIPp's: username, realm, cnonce, uri, nonce and response quoted, nc, qop and
# algorithm tokens). A phone sends one shape for every user and every nonce, so a box
# sees a few. `_split_fast` cuts a value only in its unquoted text (its names, "=",
# tokens, separators; a quoted text ends at the next DQUOTE), so for two values of one
# shape without a backslash it makes the same items but for the quoted texts, and
# `split('"')` gives those. Bounded (appliance/sip/memo.py): values come from the network.
class _Shape:
    """A shape's items, in order: a name and its token, or None for the next quoted
    text. `checked`: qop, nc and algorithm are tokens (or absent), so parse_credentials'
    checks, which read only those and the names, came out as for the first value of the
    shape, and their results are kept."""

    __slots__ = ("items", "checked", "qop", "nc", "algorithm")

    items: list[tuple[str, str | None]]

    def __init__(self, params: dict[str, str], quoted: list[str], creds: Credentials) -> None:
        """The shape of a value `_split_fast` cut into `params`, `quoted` naming its
        quoted items (each DQUOTE of such a value opens or closes one), read as `creds`."""
        names = set(quoted)
        self.items = [(name, None if name in names else item) for name, item in params.items()]
        self.checked = all(name not in creds.params or name not in names
                           for name in ("qop", "nc", "algorithm"))
        self.qop = creds.qop
        self.nc = creds.nc
        self.algorithm = creds.algorithm


_SHAPES: Final[Memo[_Shape]] = Memo(256)


def _shaped(shape: list[tuple[str, str | None]], parts: list[str]) -> dict[str, str]:
    """The items of a value `parts` (its text split at DQUOTEs) of a known `shape`."""
    params: dict[str, str] = {}
    i = 1
    for name, token in shape:
        if token is None:
            params[name] = parts[i]
            i += 2
        else:
            params[name] = token
    return params


# --- client side -------------------------------------------------------------------------------


def select_challenge(challenges: Iterable[Challenge]) -> Challenge:
    """The first challenge whose algorithm we support (RFC 8760 §2.4: topmost is preferred)."""
    for challenge in challenges:
        if challenge.algorithm in _ALGORITHMS:
            return challenge
    raise DigestError("no challenge with a supported algorithm")


def answer_challenge(
    challenge: Challenge,
    method: str,
    uri: str,
    username: str,
    password: str,
    cnonce: str | None = None,
    nc: int = 1,
) -> Credentials:
    """Build Credentials for ``challenge`` (RFC 3261 §22.2). Uses qop=auth whenever offered."""
    if "auth" in challenge.qop:
        if not 0 < nc <= 0xFFFFFFFF:
            raise DigestError(f"nonce-count out of range: {nc}")
        qop: str | None = "auth"
        nc_value: str | None = f"{nc:08x}"
        if cnonce is None:
            cnonce = secrets.token_hex(8)
    elif challenge.qop:
        raise DigestError(f"no supported qop in {challenge.qop!r}")  # e.g. auth-int only
    else:  # RFC 2069 style: no qop, so no cnonce or nc either (RFC 2617 §3.2.2)
        qop = nc_value = cnonce = None
    response = compute_response(
        challenge.algorithm,
        username,
        challenge.realm,
        password,
        method,
        uri,
        challenge.nonce,
        qop,
        nc_value,
        cnonce,
    )
    return Credentials(
        username=username,
        realm=challenge.realm,
        nonce=challenge.nonce,
        uri=uri,
        response=response,
        algorithm=challenge.algorithm,
        qop=qop,
        cnonce=cnonce,
        nc=nc_value,
        opaque=challenge.opaque,  # RFC 2617 §3.2.2: opaque is echoed unchanged
    )


# --- server side -------------------------------------------------------------------------------


class Verdict(enum.Enum):
    OK = "ok"
    STALE = "stale"  # right password, expired nonce: re-challenge with stale=TRUE (§3.2.1)
    FAIL = "fail"
    # right password over a nonce another process of the box issued (`DigestServer.issuer`):
    # that process counts its uses, this one cannot tell a replay
    FOREIGN = "foreign"


_TS: Final = struct.Struct(">d")
_SALT_LEN: Final = 6
_COUNTER_BITS: Final = 8 * _SALT_LEN - 8  # the salt's first byte names the issuing process
_COUNTER_MASK: Final = (1 << _COUNTER_BITS) - 1
_MAC_LEN: Final = 16
_NONCE_RAW_LEN: Final = _TS.size + _SALT_LEN + _MAC_LEN  # 30 bytes -> 40 base64 chars, no padding
_NONCE_RE: Final = re.compile(r"[A-Za-z0-9_-]{40}")  # canonical form only: one string per nonce


# base64url (RFC 4648 §5) by way of binascii: base64's urlsafe functions are four
# interpreted calls each, a tenth of a nonce's check.
_TO_URLSAFE: Final = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE: Final = bytes.maketrans(b"-_", b"+/")


def _b64url_encode(raw: bytes) -> str:
    return binascii.b2a_base64(raw, newline=False).translate(_TO_URLSAFE).decode("ascii")


def _b64url_decode(text: str) -> bytes:
    """`text` of base64url characters only, its length a multiple of 4 (the caller checks)."""
    return binascii.a2b_base64(text.encode("ascii").translate(_FROM_URLSAFE))


def nonce_issuer(nonce: str) -> int:
    """The process of the box that minted `nonce` (check it with nonce_time first)."""
    return _b64url_decode(nonce)[_TS.size]


class DigestServer:
    """Issues stateless nonces and checks Credentials against them (RFC 2617 §3.2, §4.5).

    ``now`` should come from one clock for both challenges() and verify(); a nonce issued "in
    the future" (clock stepped back) is treated as expired, which just costs one re-challenge.
    """

    def __init__(
        self,
        realm: str,
        secret: bytes | None = None,
        nonce_ttl: float = 300.0,
        algorithms: Iterable[str] = ("SHA-256", "MD5"),
        *,
        allow_no_qop: bool = True,
        max_nonces: int = 100_000,
        tracked_since: float = float("-inf"),
        issuer: int = 0,
    ) -> None:
        self.realm = realm
        self.nonce_ttl = nonce_ttl
        # caller's order is preference order: RFC 8760 §2.4 lists the preferred challenge first
        self.algorithms = tuple(dict.fromkeys(normalize_algorithm(a) for a in algorithms))
        for name in self.algorithms:
            _algorithm(name)  # raises DigestError if unsupported
        if not self.algorithms:
            raise ValueError("at least one algorithm is required")
        if max_nonces < 1:
            raise ValueError("max_nonces must be positive")
        self.allow_no_qop = allow_no_qop  # RFC 2069 clients; nonces then reusable until expiry
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        if len(self._secret) > 64:  # BLAKE2b keys are at most 64 bytes
            self._secret = hashlib.sha256(self._secret).digest()
        # Nonce salts: a random start, then a counter. Unique per process without a
        # getrandom() call per challenge; the HMAC is what makes a nonce unforgeable.
        self._salts = itertools.count(int.from_bytes(secrets.token_bytes(_SALT_LEN), "big"))
        self._header_templates: dict[bool, list[tuple[str, str]]] = {}
        self._realm_bytes = realm.encode()
        self._keyed = hashlib.blake2b(key=self._secret, digest_size=_MAC_LEN)
        self._dummy_password = secrets.token_hex(16)  # equal work for unknown users
        # H(A1) by username, with the algorithm and password it was made from, and H(A2)
        # by "method:uri" with its algorithm: a phone sends the same ones in each
        # registration. Bounded (appliance/sip/memo.py): usernames come from the network;
        # an unknown one is kept with the dummy password, so it costs what a known one does.
        self._ha1s: Memo[tuple[str, str, str]] = Memo(4096)
        self._ha2s: Memo[tuple[str, str]] = Memo(256)
        # The nonces this server minted lately, with their (issue time, issuer): a phone
        # answers a challenge within milliseconds, so its nonce is found here, the same
        # string, without being decoded and its MAC computed again (12k of a
        # registration's instructions). Bounded (appliance/sip/memo.py), since anyone can
        # ask for challenges: a nonce no longer here is checked by its MAC, as before.
        # 16,384: over a second of challenges at 15,000/s, so a phone's retransmission
        # after a backlog is found here too (at 4,096, an overloaded daemon spent ~1.5%
        # of its CPU decoding such nonces and checking their MAC: perf).
        self._minted: Memo[tuple[float, int]] = Memo(16384)
        self._max_nonces = max_nonces
        # nonce -> (highest nc accepted, issue time), and (issue time, nonce) in the order
        # they were first counted, oldest first: the table forgets from the front, one at a
        # time. (The dict's own order is the same, but its first key, found after many
        # deletions from the front, costs a scan over them: 8.4 against 0.8 us a nonce at
        # 100,000.) The issue time is kept in the queue too, so that deciding whether to
        # forget the oldest does not look it up in the table, in cold memory, each time.
        self._seen: dict[str, tuple[int, float]] = {}
        self._order: deque[tuple[float, str]] = deque()
        # untracked nonces issued at or before this time may have been forgotten -> STALE.
        # `tracked_since`: when this server started counting (a process's start): the
        # counts of older nonces, valid under a kept secret, went with the last process,
        # so a request replayed across a restart is answered stale, not taken.
        self._floor = tracked_since
        # Which process of the box this is (0: the daemon, N: SIP worker N): its nonces
        # carry it, and only it counts their uses (RFC 2617 §3.2.2 replay protection).
        self.issuer = issuer & 0xFF
        # While the daemon handles a request a worker has authenticated and counted: that
        # worker's index (appliance/workers.py, b"V"); its nonces are then not foreign.
        self.trusted: int | None = None

    # nonces

    def make_nonce(self, now: float) -> str:
        salt = (self.issuer << _COUNTER_BITS) | (next(self._salts) & _COUNTER_MASK)
        head = _TS.pack(now) + salt.to_bytes(_SALT_LEN, "big")
        mac = self._mac(head)
        nonce = _b64url_encode(head + mac)
        self._minted.put(nonce, (now, self.issuer))  # what _nonce_origin would decode
        return nonce

    def _mac(self, head: bytes) -> bytes:
        """Keyed BLAKE2b (RFC 7693 §2.5: a MAC by design), a third of HMAC-SHA256's cost;
        the keyed state is set up once and copied."""
        mac = self._keyed.copy()
        mac.update(head + self._realm_bytes)
        return mac.digest()

    def nonce_time(self, nonce: str) -> float | None:
        """Issue time of a nonce we minted for this realm, or None if forged/garbled."""
        origin = self._nonce_origin(nonce)
        return None if origin is None else origin[0]

    def _nonce_origin(self, nonce: str) -> tuple[float, int] | None:
        """(issue time, issuing process) of a nonce this box minted: from the memo of the
        nonces minted here lately, or from one decoding and its MAC checked."""
        minted = self._minted.get(nonce)
        if minted is not None:
            return minted
        if not _NONCE_RE.fullmatch(nonce):
            return None
        raw = _b64url_decode(nonce)
        head = raw[: _TS.size + _SALT_LEN]
        mac = self._mac(head)
        if not hmac.compare_digest(mac, raw[_TS.size + _SALT_LEN :]):
            return None
        return _TS.unpack_from(raw)[0], raw[_TS.size]

    def challenges(self, now: float, stale: bool = False) -> list[Challenge]:
        """One challenge per algorithm, preferred first (RFC 8760 §2.4), sharing a fresh nonce."""
        nonce = self.make_nonce(now)
        return [Challenge(self.realm, nonce, alg, ["auth"], stale=stale) for alg in self.algorithms]

    def challenge_headers(self, now: float, stale: bool = False) -> list[str]:
        """challenges() as header values: the same text, formatted once per process
        with only the fresh nonce put in (the registrar's hot path)."""
        parts = self._header_templates.get(stale)
        if parts is None:
            marker = "\x00"  # the nonce's place; only the realm, before it, is not ours
            parts = []
            for alg in self.algorithms:
                text = Challenge(self.realm, marker, alg, ["auth"], stale=stale).to_header()
                before, _, after = text.rpartition(marker)
                parts.append((before, after))
            self._header_templates[stale] = parts
        nonce = self.make_nonce(now)
        return [before + nonce + after for before, after in parts]

    # verification

    def verify(
        self,
        creds: Credentials,
        method: str,
        password_lookup: Callable[[str], str | None],
        now: float,
    ) -> Verdict:
        """Check ``creds`` for a request with ``method``.

        creds.uri is hashed as sent and deliberately not compared with the Request-URI: proxies
        may rewrite the latter (RFC 3261 §22.4 only asks that the response be computed over it).
        """
        fail = Verdict.FAIL
        if creds.realm != self.realm or creds.algorithm not in self.algorithms:
            return fail
        qop = creds.qop
        nc = 0
        if qop is None:
            if not self.allow_no_qop:
                return fail
        elif qop == "auth" and creds.cnonce and creds.nc and _is_nc(creds.nc):
            nc = int(creds.nc, 16)
            if nc == 0:  # counting starts at 00000001
                return fail
        else:
            return fail
        origin = self._nonce_origin(creds.nonce)  # None: not ours (forged, or an older key)

        # Same hashing for unknown users and wrong passwords: neither timing nor verdict tells.
        password = password_lookup(creds.username)
        known = password is not None
        try:
            expected = self._expected(
                creds, password if password is not None else self._dummy_password, method)
        except DigestError:
            return fail
        match = hmac.compare_digest(expected.encode(), creds.response.lower().encode())
        if not (match and known):
            return fail
        if origin is None:
            # RFC 2617 §3.2.1: an invalid nonce with a valid digest over it means the client
            # knows the password: stale=TRUE lets it retry at once rather than prompt (e.g.
            # with a nonce minted before the nonce key or format changed).
            return Verdict.STALE

        issued, issuer = origin
        age = now - issued
        if not 0.0 <= age <= self.nonce_ttl:
            return Verdict.STALE
        if qop is None:
            return Verdict.OK  # RFC 2069 style: no nonce-count to track
        if issuer != self.issuer:
            return Verdict.OK if issuer == self.trusted else Verdict.FOREIGN
        return self._count(creds.nonce, nc, issued, now)

    def _expected(self, creds: Credentials, password: str, method: str) -> str:
        """compute_response for `creds`, H(A1) and H(A2) remembered (not for "-sess"
        algorithms, whose H(A1) takes the nonce, RFC 2617 §3.2.2.2)."""
        algorithm = creds.algorithm
        fn, sess = _algorithm(algorithm)
        if sess:
            return compute_response(algorithm, creds.username, self.realm, password, method,
                                    creds.uri, creds.nonce, creds.qop, creds.nc, creds.cnonce)
        username = creds.username
        one = self._ha1s.get(username)
        if one is not None and one[0] == algorithm and one[1] == password:
            ha1 = one[2]
        else:
            ha1 = compute_ha1(algorithm, username, self.realm, password)
            self._ha1s.put(username, (algorithm, password, ha1))
        a2 = f"{method}:{creds.uri}"
        two = self._ha2s.get(a2)
        if two is not None and two[0] == algorithm:
            ha2 = two[1]
        else:
            ha2 = fn(a2.encode()).hexdigest()
            self._ha2s.put(a2, (algorithm, ha2))
        return _request_digest(fn, ha1, ha2, creds.nonce, creds.qop, creds.nc, creds.cnonce)

    def _count(self, nonce: str, nc: int, issued: float, now: float) -> Verdict:
        """Nonce-count replay check (RFC 2617 §3.2.2): nc must grow for each use of a nonce."""
        seen = self._seen
        last = seen.get(nonce)
        if last is None:
            self._forget(now)
            if issued <= self._floor:
                return Verdict.STALE  # its state may have been dropped; make the client refresh
            self._order.append((issued, nonce))
        elif nc <= last[0]:
            return Verdict.FAIL
        seen[nonce] = (nc, issued)
        return Verdict.OK

    def _forget(self, now: float) -> None:
        """Before a nonce is first counted: forget the oldest counted ones that have expired,
        and while the table is full. Each raises the floor so that a forgotten nonce is never
        taken again, only answered with STALE. One at a time: a table of 100,000 rebuilt at
        once stalled the process for ~40 ms every 12,500 new nonces (a second at 25,000
        registrations/s)."""
        order = self._order
        seen = self._seen
        cutoff = now - self.nonce_ttl
        while order and (order[0][0] <= cutoff or len(seen) >= self._max_nonces):
            issued, nonce = order.popleft()
            del seen[nonce]
            if issued > self._floor:
                self._floor = issued

    @property
    def tracked_nonces(self) -> int:
        """Number of nonces whose nonce-count is currently remembered."""
        return len(self._seen)
