"""SDP (RFC 4566) for plain SIP audio, and the RFC 3264 offer/answer rules the box needs.

aiortc's `aiortc.sdp.SessionDescription` is built for WebRTC and does not fit SIP
SDP: it drops every line it does not model (b=, i=, a=ptime, a=maxptime,
session-level a=sendrecv, vendor attributes), crashes with StopIteration on
an a=fmtp for a static payload type without a=rtpmap (`a=fmtp:18 annexb=no`,
common from phones), asserts on `m=audio 49170/2 ...` and cannot serialize a
c= line holding a host name. So this is a small parser of its own that keeps
unknown lines, in order, and round-trips what it reads.

Model: `SessionDescription` holds session-level fields and a list of
`MediaDescription`; every a= line is an `Attribute` kept in document order.
Codecs (`Codec`) are derived from the m= formats with a=rtpmap/a=fmtp (and the
RFC 3551 static table) and written back with `MediaDescription.set_codecs`.

The B2BUA uses:
- `rewrite(sdp, address, port, origin)`: point c=/m= at the box, drop the
  peer's ICE and rtcp-mux lines, and stamp the box's own o= line whose
  version goes up only when the content changed (RFC 3264 §8).
- `answer_codecs(offer, supported)`: RFC 3264 §6.1 codec choice.
- `build_offer(...)` / `build_answer(...)` for SDP the box originates.
"""

from __future__ import annotations

import copy
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")

#: RFC 3551 §6 static audio payload types: pt -> (encoding name, clock rate, channels).
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("PCMU", 8000, 1),
    3: ("GSM", 8000, 1),
    4: ("G723", 8000, 1),
    5: ("DVI4", 8000, 1),
    6: ("DVI4", 16000, 1),
    7: ("LPC", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),
    10: ("L16", 44100, 2),
    11: ("L16", 44100, 1),
    12: ("QCELP", 8000, 1),
    13: ("CN", 8000, 1),
    14: ("MPA", 90000, 1),
    15: ("G728", 8000, 1),
    16: ("DVI4", 11025, 1),
    17: ("DVI4", 22050, 1),
    18: ("G729", 8000, 1),
}

# Attributes that belong to the peer's transport and must not be passed on when
# the box puts its own address in the SDP (ICE, RFC 8839; rtcp-mux, RFC 5761).
TRANSPORT_ATTRIBUTES = frozenset({
    "candidate", "remote-candidates", "end-of-candidates", "ice-ufrag", "ice-pwd",
    "ice-options", "ice-lite", "ice-mismatch", "ice-pacing", "rtcp-mux", "rtcp-mux-only",
})

# Serialization order of the session-level and media-level line types (RFC 4566 §5).
_SESSION_ORDER = "vosiuepcbtrzka"


class SdpError(ValueError):
    """SDP that cannot be parsed; the SIP layer answers 400 or 488."""


@dataclass
class Codec:
    """One RTP payload format: a=rtpmap (or the static table) plus its a=fmtp."""

    payload_type: int
    name: str
    clock_rate: int
    channels: int = 1
    fmtp: str | None = None

    @property
    def encoding(self) -> str:
        """The a=rtpmap value after the payload type: "PCMU/8000", "opus/48000/2"."""
        base = f"{self.name}/{self.clock_rate}"
        return f"{base}/{self.channels}" if self.channels != 1 else base

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.name.lower(), self.clock_rate, self.channels)

    def matches(self, other: Codec) -> bool:
        """Same encoding (name case-insensitive, clock rate, channels); payload type ignored."""
        return self.key == other.key

    @property
    def is_telephone_event(self) -> bool:
        return self.name.lower() == "telephone-event"

    @property
    def is_comfort_noise(self) -> bool:
        return self.name.lower() == "cn"

    @classmethod
    def parse(cls, encoding: str, payload_type: int = -1, fmtp: str | None = None) -> Codec:
        """From "PCMU/8000" or "opus/48000/2" (the a=rtpmap value without the payload type)."""
        bits = encoding.strip().split("/")
        try:
            name, rate = bits[0], int(bits[1])
            channels = int(bits[2]) if len(bits) > 2 and bits[2] else 1
        except (IndexError, ValueError):
            raise SdpError(f"bad rtpmap encoding {encoding!r}") from None
        if not name:
            raise SdpError(f"bad rtpmap encoding {encoding!r}")
        return cls(payload_type, name, rate, channels, fmtp)

    @classmethod
    def static(cls, payload_type: int) -> Codec | None:
        entry = STATIC_PAYLOAD_TYPES.get(payload_type)
        return cls(payload_type, *entry) if entry else None


@dataclass
class Connection:
    """c=<nettype> <addrtype> <address>[/ttl][/count]; the suffix is kept as written."""

    address: str
    addrtype: str = "IP4"
    nettype: str = "IN"
    suffix: str = ""

    @classmethod
    def parse(cls, value: str) -> Connection:
        bits = value.split()
        if len(bits) != 3:
            raise SdpError(f"bad c= line {value!r}")
        nettype, addrtype, address = bits
        address, slash, suffix = address.partition("/")
        return cls(address, addrtype, nettype, slash + suffix)

    @classmethod
    def for_address(cls, address: str) -> Connection:
        return cls(address, "IP6" if ":" in address else "IP4")

    @property
    def is_null(self) -> bool:
        """The RFC 2543 hold address (0.0.0.0) or its IPv6 counterpart."""
        return self.address in ("0.0.0.0", "::")

    def __str__(self) -> str:
        return f"{self.nettype} {self.addrtype} {self.address}{self.suffix}"


@dataclass
class Origin:
    """o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address>."""

    username: str
    session_id: str
    version: int
    nettype: str = "IN"
    addrtype: str = "IP4"
    address: str = "0.0.0.0"

    @classmethod
    def parse(cls, value: str) -> Origin:
        bits = value.split()
        if len(bits) != 6:
            raise SdpError(f"bad o= line {value!r}")
        try:
            version = int(bits[2])
        except ValueError:
            raise SdpError(f"bad o= version {bits[2]!r}") from None
        return cls(bits[0], bits[1], version, bits[3], bits[4], bits[5])

    def __str__(self) -> str:
        return (f"{self.username} {self.session_id} {self.version} "
                f"{self.nettype} {self.addrtype} {self.address}")


@dataclass
class Attribute:
    """a=<name>[:<value>]; value None for a property attribute (a=sendrecv)."""

    name: str
    value: str | None = None

    @classmethod
    def parse(cls, value: str) -> Attribute:
        name, colon, rest = value.partition(":")
        return cls(name, rest if colon else None)

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name}:{self.value}"


class _Attributes:
    """Helpers over an ordered `attributes` list, shared by session and media level."""

    attributes: list[Attribute]

    def attribute(self, name: str) -> str | None:
        """The first value of attribute `name` ("" for a property attribute), or None."""
        for a in self.attributes:
            if a.name == name:
                return "" if a.value is None else a.value
        return None

    def attribute_values(self, name: str) -> list[str]:
        return ["" if a.value is None else a.value for a in self.attributes if a.name == name]

    def has_attribute(self, name: str) -> bool:
        return any(a.name == name for a in self.attributes)

    def set_attribute(self, name: str, value: str | None = None) -> None:
        """Replace the first `name` attribute in place (dropping any others), or append it."""
        for i, a in enumerate(self.attributes):
            if a.name == name:
                self.attributes[i] = Attribute(name, value)
                self.attributes[i + 1:] = [b for b in self.attributes[i + 1:] if b.name != name]
                return
        self.attributes.append(Attribute(name, value))

    def remove_attributes(self, names: Iterable[str]) -> None:
        names = set(names)
        self.attributes[:] = [a for a in self.attributes if a.name not in names]

    @property
    def direction(self) -> str | None:
        """The direction attribute written at this level, if any."""
        for a in self.attributes:
            if a.name in DIRECTIONS:
                return a.name
        return None

    @direction.setter
    def direction(self, value: str | None) -> None:
        if value is not None and value not in DIRECTIONS:
            raise ValueError(f"bad direction {value!r}")
        for i, a in enumerate(self.attributes):
            if a.name in DIRECTIONS:
                if value is None:
                    del self.attributes[i]
                else:
                    self.attributes[i] = Attribute(value)
                self.attributes[i + 1:] = [b for b in self.attributes[i + 1:]
                                           if b.name not in DIRECTIONS]
                return
        if value is not None:
            self.attributes.append(Attribute(value))


@dataclass
class MediaDescription(_Attributes):
    """One m= section with its i=, c=, b=, k= and a= lines."""

    media: str
    port: int
    proto: str
    formats: list[str]
    port_count: int | None = None
    information: str | None = None
    connection: Connection | None = None
    bandwidths: list[str] = field(default_factory=list)
    key: str | None = None
    attributes: list[Attribute] = field(default_factory=list)
    other: list[str] = field(default_factory=list)  # lines of unknown type, "x=..."

    @property
    def is_rtp(self) -> bool:
        return "RTP/" in self.proto.upper()

    @property
    def codecs(self) -> list[Codec]:
        """The formats in m= order as codecs (rtpmap, else the static table), fmtp attached.

        Formats with neither an rtpmap nor a static entry are left out.
        """
        if not self.is_rtp:
            return []
        rtpmap: dict[str, str] = {}
        fmtp: dict[str, str] = {}
        for a in self.attributes:
            if a.name in ("rtpmap", "fmtp") and a.value:
                pt, _, rest = a.value.partition(" ")
                (rtpmap if a.name == "rtpmap" else fmtp).setdefault(pt, rest.strip())
        out = []
        for fmt in self.formats:
            try:
                pt = int(fmt)
            except ValueError:
                continue
            if fmt in rtpmap:
                try:
                    codec = Codec.parse(rtpmap[fmt], pt)
                except SdpError:
                    continue
            else:
                codec = Codec.static(pt)
                if codec is None:
                    continue
            codec.fmtp = fmtp.get(fmt)
            out.append(codec)
        return out

    def set_codecs(self, codecs: Sequence[Codec]) -> None:
        """Make `codecs` the formats of this m= line, rewriting its rtpmap/fmtp lines.

        The new rtpmap/fmtp lines go where the first old one was (or first).
        """
        where = next((i for i, a in enumerate(self.attributes)
                      if a.name in ("rtpmap", "fmtp")), 0)
        rest = [a for a in self.attributes if a.name not in ("rtpmap", "fmtp")]
        where = min(where, len(rest))
        new = []
        for c in codecs:
            new.append(Attribute("rtpmap", f"{c.payload_type} {c.encoding}"))
            if c.fmtp:
                new.append(Attribute("fmtp", f"{c.payload_type} {c.fmtp}"))
        self.attributes[:] = rest[:where] + new + rest[where:]
        self.formats = [str(c.payload_type) for c in codecs]

    @property
    def ptime(self) -> int | None:
        value = self.attribute("ptime")
        try:
            return int(float(value)) if value else None
        except ValueError:
            return None

    @ptime.setter
    def ptime(self, value: int | None) -> None:
        if value is None:
            self.remove_attributes(["ptime"])
        else:
            self.set_attribute("ptime", str(value))

    def lines(self) -> list[str]:
        port = f"{self.port}/{self.port_count}" if self.port_count is not None else str(self.port)
        out = [f"m={' '.join([self.media, port, self.proto, *self.formats])}"]
        if self.information is not None:
            out.append(f"i={self.information}")
        if self.connection is not None:
            out.append(f"c={self.connection}")
        out += [f"b={b}" for b in self.bandwidths]
        if self.key is not None:
            out.append(f"k={self.key}")
        out += self.other
        out += [f"a={a}" for a in self.attributes]
        return out


@dataclass
class SessionDescription(_Attributes):
    """A whole SDP body: session-level lines and the media sections."""

    origin: Origin
    name: str = "-"
    version: int = 0
    information: str | None = None
    uri: str | None = None
    emails: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    connection: Connection | None = None
    bandwidths: list[str] = field(default_factory=list)
    times: list[str] = field(default_factory=lambda: ["t=0 0"])  # t=, r= lines as written
    zone: str | None = None
    key: str | None = None
    attributes: list[Attribute] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str | bytes) -> SessionDescription:
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SdpError("SDP is not UTF-8") from exc
        lines = [line.rstrip() for line in text.splitlines()]
        lines = [line for line in lines if line]
        if not lines or not lines[0].startswith("v="):
            raise SdpError("SDP must start with v=")
        session: SessionDescription | None = None
        version = 0
        origin: Origin | None = None
        fields: dict[str, object] = {}
        attrs: list[Attribute] = []
        other: list[str] = []
        times: list[str] = []
        emails: list[str] = []
        phones: list[str] = []
        bandwidths: list[str] = []
        media: list[MediaDescription] = []
        current: MediaDescription | None = None
        for line in lines:
            if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
                raise SdpError(f"bad SDP line {line!r}")
            kind, value = line[0], line[2:]
            if kind == "m":
                current = _parse_media(value)
                media.append(current)
            elif current is not None:
                if kind == "a":
                    current.attributes.append(Attribute.parse(value))
                elif kind == "c":
                    current.connection = Connection.parse(value)
                elif kind == "b":
                    current.bandwidths.append(value)
                elif kind == "i":
                    current.information = value
                elif kind == "k":
                    current.key = value
                else:
                    current.other.append(line)
            elif kind == "v":
                try:
                    version = int(value)
                except ValueError:
                    raise SdpError(f"bad v= line {line!r}") from None
            elif kind == "o":
                origin = Origin.parse(value)
            elif kind == "a":
                attrs.append(Attribute.parse(value))
            elif kind == "c":
                fields["connection"] = Connection.parse(value)
            elif kind == "b":
                bandwidths.append(value)
            elif kind in "tr":
                times.append(line)
            elif kind == "e":
                emails.append(value)
            elif kind == "p":
                phones.append(value)
            elif kind in "siuzk":
                fields[{"s": "name", "i": "information", "u": "uri", "z": "zone",
                        "k": "key"}[kind]] = value
            else:
                other.append(line)
        if origin is None:
            raise SdpError("SDP has no o= line")
        session = cls(origin=origin, version=version, attributes=attrs, other=other,
                      times=times or ["t=0 0"], emails=emails, phones=phones,
                      bandwidths=bandwidths, media=media)
        for name, value in fields.items():
            setattr(session, name, value)
        return session

    def lines(self, *, origin: bool = True) -> list[str]:
        out = [f"v={self.version}"]
        if origin:
            out.append(f"o={self.origin}")
        out.append(f"s={self.name}")
        if self.information is not None:
            out.append(f"i={self.information}")
        if self.uri is not None:
            out.append(f"u={self.uri}")
        out += [f"e={e}" for e in self.emails]
        out += [f"p={p}" for p in self.phones]
        if self.connection is not None:
            out.append(f"c={self.connection}")
        out += [f"b={b}" for b in self.bandwidths]
        out += self.times
        if self.zone is not None:
            out.append(f"z={self.zone}")
        if self.key is not None:
            out.append(f"k={self.key}")
        out += self.other
        out += [f"a={a}" for a in self.attributes]
        for m in self.media:
            out += m.lines()
        return out

    def __str__(self) -> str:
        return "\r\n".join(self.lines()) + "\r\n"

    def __bytes__(self) -> bytes:
        return str(self).encode()

    def copy(self) -> SessionDescription:
        return copy.deepcopy(self)

    def content(self) -> str:
        """Everything but the o= line: what decides whether the version must go up."""
        return "\r\n".join(self.lines(origin=False))

    def direction_of(self, media: MediaDescription) -> str:
        """Effective direction of `media`: its own attribute, the session's, or sendrecv."""
        return media.direction or self.direction or "sendrecv"

    def connection_of(self, media: MediaDescription) -> Connection | None:
        return media.connection or self.connection

    def audio(self) -> MediaDescription | None:
        """The first audio stream that is not disabled (port 0), if any."""
        return next((m for m in self.media if m.media == "audio" and m.port != 0), None)

    def remote_address(self, media: MediaDescription | None = None) -> tuple[str, int] | None:
        """(address, port) to send `media` (default: the first audio stream) to, or None.

        None when there is no such stream, it is disabled, or it is on hold with
        the 0.0.0.0 address.
        """
        media = media or self.audio()
        if media is None or media.port == 0:
            return None
        conn = self.connection_of(media)
        if conn is None or conn.is_null:
            return None
        return conn.address, media.port


def _parse_media(value: str) -> MediaDescription:
    bits = value.split()
    if len(bits) < 3:
        raise SdpError(f"bad m= line {value!r}")
    port_s, _, count_s = bits[1].partition("/")
    try:
        port = int(port_s)
        count = int(count_s) if count_s else None
    except ValueError:
        raise SdpError(f"bad m= port {bits[1]!r}") from None
    if not 0 <= port <= 65535:
        raise SdpError(f"bad m= port {bits[1]!r}")
    return MediaDescription(bits[0], port, bits[2], bits[3:], port_count=count)


def parse(text: str | bytes) -> SessionDescription:
    return SessionDescription.parse(text)


class SdpOrigin:
    """The box's own o= line for one SDP session (one call leg), with its version counter.

    RFC 3264 §8: each new SDP the box sends in a session carries the same
    session id and a version one higher than the previous *if the content
    changed*; a repeated SDP (a re-INVITE refresh) keeps the version.
    """

    def __init__(self, address: str, username: str = "appliance",
                 session_id: int | None = None, version: int | None = None) -> None:
        self.address = address
        self.username = username
        self.session_id = session_id if session_id is not None else secrets.randbelow(1 << 62)
        self.version = version if version is not None else self.session_id
        self._last: str | None = None

    def stamp(self, sdp: SessionDescription) -> SessionDescription:
        """Put this origin on `sdp` (in place), bumping the version if the content changed."""
        content = sdp.content()
        if self._last is not None and content != self._last:
            self.version += 1
        self._last = content
        sdp.origin = Origin(self.username, str(self.session_id), self.version, "IN",
                            "IP6" if ":" in self.address else "IP4", self.address)
        return sdp


def rewrite(sdp: SessionDescription | str | bytes, address: str,
            port: int | Sequence[int | None], origin: SdpOrigin) -> SessionDescription:
    """A copy of `sdp` pointing its media at the box: (address, port) and `origin`'s o= line.

    - `port` as an int goes to the first active audio stream; every other active
      stream is disabled (port 0), since the box relays one audio stream. A
      sequence gives one port per m= line (None or 0 disables that stream).
    - The session c= is set to `address`, media-level c= lines are folded into
      it. A hold address (0.0.0.0) is kept, and so is port 0 (rejected stream).
    - a=rtcp (RFC 3605) is moved to port+1; ICE attributes and rtcp-mux are
      dropped: they describe the peer's transport, not the box's.
    - The o= line becomes `origin`'s, its version raised only if the result
      differs from the last SDP stamped with `origin`.
    """
    sdp = parse(sdp) if isinstance(sdp, (str, bytes)) else sdp.copy()
    if isinstance(port, int):
        first = sdp.audio()
        ports: list[int | None] = [port if m is first else 0 for m in sdp.media]
    else:
        ports = list(port) + [0] * (len(sdp.media) - len(port))
    for m, new_port in zip(sdp.media, ports, strict=False):
        conn = sdp.connection_of(m)
        on_hold = conn is not None and conn.is_null
        if m.port != 0:
            m.port = new_port or 0
        # A stream on hold keeps its null address, now written at media level.
        m.connection = Connection(conn.address, conn.addrtype) if on_hold and m.port else None
        m.remove_attributes(TRANSPORT_ATTRIBUTES)
        if m.attribute("rtcp") is not None and m.port:
            m.set_attribute("rtcp", str(m.port + 1))
    sdp.remove_attributes(TRANSPORT_ATTRIBUTES)
    sdp.connection = Connection.for_address(address)
    return origin.stamp(sdp)


def answer_direction(offered: str, local: str = "sendrecv") -> str:
    """RFC 3264 §6.1: the answer's direction for an offered one, given what we want."""
    can_send = offered in ("sendrecv", "recvonly") and local in ("sendrecv", "sendonly")
    can_recv = offered in ("sendrecv", "sendonly") and local in ("sendrecv", "recvonly")
    return {(True, True): "sendrecv", (True, False): "sendonly",
            (False, True): "recvonly", (False, False): "inactive"}[(can_send, can_recv)]


def _as_codecs(supported: Iterable[Codec | str]) -> list[Codec]:
    return [c if isinstance(c, Codec) else Codec.parse(c) for c in supported]


def answer_codecs(offer: MediaDescription | SessionDescription,
                  supported: Iterable[Codec | str], *, prefer: str = "offer") -> list[Codec]:
    """The codecs to answer an offered audio stream with (RFC 3264 §6.1).

    `supported` lists what the box can take ("PCMU/8000", "opus/48000/2",
    "telephone-event/8000", or `Codec`s). The answer keeps the offer's payload
    type numbers and fmtp, in the offer's order (`prefer="offer"`) or in
    `supported`'s order (`prefer="local"`). telephone-event (RFC 4733) and CN
    are kept only at the clock rate of the first chosen audio codec, and only
    beside one. An empty list means the stream is to be rejected (port 0, or
    488 if nothing is left).
    """
    if isinstance(offer, SessionDescription):
        media = offer.audio()
        if media is None:
            return []
    else:
        media = offer
    local = _as_codecs(supported)
    offered = media.codecs
    pairs = [(o, next((i for i, s in enumerate(local) if s.matches(o)), None)) for o in offered]
    pairs = [(o, i) for o, i in pairs if i is not None]
    if prefer == "local":
        pairs.sort(key=lambda p: p[1])
    elif prefer != "offer":
        raise ValueError(f"prefer must be 'offer' or 'local', not {prefer!r}")
    audio = [copy.copy(o) for o, _ in pairs
             if not (o.is_telephone_event or o.is_comfort_noise)]
    if not audio:
        return []
    rate = audio[0].clock_rate
    extras = []
    for kind in ("telephone-event", "cn"):
        extra = next((o for o, _ in pairs if o.name.lower() == kind and o.clock_rate == rate),
                     None)
        if extra is not None:
            extras.append(copy.copy(extra))
    return audio + extras


def audio_codec(media: MediaDescription | None) -> Codec | None:
    """The first real audio codec of `media` (the one to send with), or None."""
    if media is None:
        return None
    return next((c for c in media.codecs if not (c.is_telephone_event or c.is_comfort_noise)),
                None)


def telephone_event(media: MediaDescription | None, clock_rate: int | None = None) -> Codec | None:
    """The telephone-event (RFC 4733) format of `media`, at `clock_rate` if given."""
    if media is None:
        return None
    return next((c for c in media.codecs if c.is_telephone_event
                 and (clock_rate is None or c.clock_rate == clock_rate)), None)


def build_offer(codecs: Iterable[Codec | str], address: str, port: int, origin: SdpOrigin, *,
                ptime: int | None = 20, direction: str = "sendrecv",
                session_name: str = "-") -> SessionDescription:
    """An offer for one audio stream. Codecs given as strings get payload types:

    the RFC 3551 static one when it exists (PCMU 0, PCMA 8, G722 9), else a
    dynamic one from 96 up (telephone-event gets 101 when free).
    """
    chosen = _as_codecs(codecs)
    used = {c.payload_type for c in chosen if c.payload_type >= 0}
    for c in chosen:
        if c.payload_type >= 0:
            continue
        static = next((pt for pt, entry in STATIC_PAYLOAD_TYPES.items()
                       if Codec(pt, *entry).matches(c)), None)
        if static is not None and static not in used:
            c.payload_type = static
        elif c.is_telephone_event and 101 not in used:
            c.payload_type = 101
        else:
            c.payload_type = next(pt for pt in range(96, 128) if pt not in used and pt != 101)
        used.add(c.payload_type)
    for c in chosen:
        if c.is_telephone_event and c.fmtp is None:
            c.fmtp = "0-16"
    media = MediaDescription("audio", port, "RTP/AVP", [])
    media.set_codecs(chosen)
    if ptime:
        media.ptime = ptime
    media.direction = direction
    sdp = SessionDescription(origin=Origin("-", "0", 0), name=session_name,
                             connection=Connection.for_address(address), media=[media])
    return origin.stamp(sdp)


def build_answer(offer: SessionDescription, supported: Iterable[Codec | str], address: str,
                 port: int, origin: SdpOrigin, *, direction: str = "sendrecv",
                 prefer: str = "offer", ptime: int | None = None) -> SessionDescription | None:
    """The box's answer to `offer`: the first audio stream accepted on (address, port).

    Every other stream is answered with port 0 (RFC 3264 §6). None when no
    audio codec is in common (answer 488 Not Acceptable Here).
    """
    first = offer.audio()
    if first is None:
        return None
    chosen = answer_codecs(first, supported, prefer=prefer)
    if not chosen:
        return None
    answer = SessionDescription(origin=Origin("-", "0", 0), name=offer.name or "-",
                                connection=Connection.for_address(address),
                                times=list(offer.times))
    for m in offer.media:
        if m is first:
            a = MediaDescription(m.media, port, m.proto, [])
            a.set_codecs(chosen)
            want = ptime or m.ptime
            if want:
                a.ptime = want
            a.direction = answer_direction(offer.direction_of(m), direction)
        else:
            a = MediaDescription(m.media, 0, m.proto, list(m.formats) or ["0"])
        answer.media.append(a)
    return origin.stamp(answer)


def is_sdp(content_type: str | None, body: bytes) -> bool:
    """A SIP body that is an SDP (RFC 3264 offer or answer)."""
    return bool(body) and (content_type or "").split(";")[0].strip().lower() == "application/sdp"
