"""Raw SIP over UDP/TCP/TLS from Python: send arbitrary bytes, read responses,
and a digest-authenticating REGISTER client (MD5, SHA-256, SHA-512-256).

SIPp 3.6.1 (Debian 12) only computes MD5 (and AKAv1-MD5) digests and has no
TLS, so tests that need SHA-256 (RFC 8760) or TLS without baresip use this.

Typical use::

    with SipClient("udp", ("127.0.0.1", port)) as c:
        res = register(c, user="100", password="pw", domain="127.0.0.1",
                       algorithm="SHA-256")
        assert res.final.status == 200

    # RFC 4475 torture message, CRLF-normalised, responses collected for 1 s
    responses = send_raw(data, "udp", ("127.0.0.1", port), collect=1.0)

Everything binds to loopback; TLS never verifies the (self-signed) server
certificate.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

CRLF = b"\r\n"

# RFC 3261 7.3.3 compact header forms
COMPACT = {
    "i": "call-id", "m": "contact", "e": "content-encoding", "l": "content-length",
    "c": "content-type", "f": "from", "s": "subject", "k": "supported", "t": "to",
    "v": "via", "o": "event", "r": "refer-to", "b": "referred-by", "u": "allow-events",
    "x": "session-expires", "a": "accept-contact", "j": "reject-contact", "d": "request-disposition",
    "y": "identity", "n": "identity-info",
}


def canon(name: str) -> str:
    n = name.strip().lower()
    return COMPACT.get(n, n)


# ---------------------------------------------------------------------------
# message parsing
# ---------------------------------------------------------------------------
@dataclass
class SipMessage:
    """A parsed SIP message. Header lookup is case-insensitive and understands
    compact forms; folded lines are unfolded.  ``raw`` keeps the exact bytes."""

    raw: bytes
    start_line: str
    headers: list[tuple[str, str]]
    body: bytes
    source: tuple[str, int] | None = None  # UDP: the address it came from

    @property
    def is_response(self) -> bool:
        return self.start_line.startswith("SIP/")

    @property
    def status(self) -> int | None:
        if not self.is_response:
            return None
        try:
            return int(self.start_line.split()[1])
        except (IndexError, ValueError):
            return None

    @property
    def reason(self) -> str:
        parts = self.start_line.split(None, 2)
        return parts[2] if self.is_response and len(parts) > 2 else ""

    @property
    def method(self) -> str | None:
        if self.is_response:
            return None
        return self.start_line.split(" ", 1)[0]

    @property
    def uri(self) -> str | None:
        if self.is_response:
            return None
        parts = self.start_line.split()
        return parts[1] if len(parts) > 1 else None

    def header(self, name: str, default: str | None = None) -> str | None:
        """First value of header ``name``."""
        want = canon(name)
        for n, v in self.headers:
            if canon(n) == want:
                return v
        return default

    def header_all(self, name: str) -> list[str]:
        """All values (one per header line, comma lists are not split)."""
        want = canon(name)
        return [v for n, v in self.headers if canon(n) == want]

    @property
    def cseq_method(self) -> str | None:
        c = self.header("CSeq")
        return c.split()[-1] if c else None

    @property
    def call_id(self) -> str | None:
        return self.header("Call-ID")

    def text(self) -> str:
        return self.raw.decode("utf-8", "replace")

    def __str__(self) -> str:  # pragma: no cover - debugging aid
        return self.text()


def parse_message(data: bytes) -> SipMessage:
    """Parse one SIP message (lenient: accepts bare LF line ends)."""
    sep = data.find(b"\r\n\r\n")
    seplen = 4
    lf = data.find(b"\n\n")
    if sep < 0 or (0 <= lf < sep):
        sep, seplen = lf, 2
    if sep < 0:
        head, body = data, b""
    else:
        head, body = data[:sep], data[sep + seplen:]
    lines = re.split(rb"\r?\n", head)
    # skip leading empty lines (keep-alives)
    while lines and not lines[0].strip():
        lines.pop(0)
    start = lines[0].decode("utf-8", "replace").strip() if lines else ""
    headers: list[tuple[str, str]] = []
    for raw in lines[1:]:
        line = raw.decode("utf-8", "replace")
        if line[:1] in (" ", "\t") and headers:
            n, v = headers[-1]
            headers[-1] = (n, (v + " " + line.strip()).strip())
            continue
        if ":" not in line:
            continue
        n, v = line.split(":", 1)
        headers.append((n.strip(), v.strip()))
    return SipMessage(raw=data, start_line=start, headers=headers, body=body)


def reply(req: SipMessage, status: int, reason: str, *, to_tag: str = "phone",
          body: bytes = b"", contact: str | None = None) -> bytes:
    """A phone's response to `req` (§8.2.6: Via, From, Call-ID, CSeq copied, To tagged)."""
    lines = [f"SIP/2.0 {status} {reason}"]
    for name in ("via", "from", "call-id", "cseq"):
        for v in req.header_all(name):
            lines.append(f"{name}: {v}")
    lines.append(f"To: {req.header('to')};tag={to_tag}")
    if contact is not None:
        lines.append(f"Contact: {contact}")
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


PHONE_SDP = (b"v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
             b"t=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


def answer_call(phone: SipClient, user: str, sdp: bytes = PHONE_SDP) -> tuple[bytes, SipMessage]:
    """Be the called phone `user` until the caller hangs up: take the INVITE, ring, answer
    with `sdp`, take the ACK, answer the BYE. Returns the 200 sent and the ACK received."""
    invite = phone.recv(10)
    assert invite is not None and invite.method == "INVITE", invite
    tag = f"phone{user}"
    phone.send(reply(invite, 180, "Ringing", to_tag=tag))
    ok = reply(invite, 200, "OK", to_tag=tag, body=sdp, contact=f"<sip:{user}@127.0.0.1>")
    phone.send(ok)
    ack = phone.recv(5)
    assert ack is not None and ack.method == "ACK", ack
    bye = phone.recv(10)
    assert bye is not None and bye.method == "BYE", bye
    phone.send(reply(bye, 200, "OK"))
    return ok, ack


def _content_length(head: bytes) -> int:
    m = re.search(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\d+)", head)
    return int(m.group(1)) if m else 0


def split_stream(buf: bytearray) -> bytes | None:
    """Pop one complete message off a stream buffer (TCP/TLS framing by
    Content-Length), or return None if it is not complete yet.  Leading CRLF
    keep-alives are dropped."""
    while buf[:2] == b"\r\n":
        del buf[:2]
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    clen = _content_length(bytes(buf[:end]))
    total = end + 4 + clen
    if len(buf) < total:
        return None
    msg = bytes(buf[:total])
    del buf[:total]
    return msg


# ---------------------------------------------------------------------------
# digest authentication (RFC 2617 / RFC 7616 / RFC 8760)
# ---------------------------------------------------------------------------
_HASHES = {
    "MD5": lambda b: hashlib.md5(b).hexdigest(),
    "SHA-256": lambda b: hashlib.sha256(b).hexdigest(),
    "SHA-512-256": lambda b: hashlib.new("sha512_256", b).hexdigest(),
}


def parse_challenge(value: str) -> dict[str, str]:
    """Parse 'Digest realm="x", nonce="y", ...' into a lower-cased dict
    (plus 'scheme')."""
    value = value.strip()
    scheme, _, rest = value.partition(" ")
    out = {"scheme": scheme}
    for m in re.finditer(r'([A-Za-z0-9_-]+)\s*=\s*("((?:[^"\\]|\\.)*)"|[^,\s]+)', rest):
        k = m.group(1).lower()
        v = m.group(3) if m.group(3) is not None else m.group(2)
        out[k] = v
    return out


def digest_response(*, algorithm: str, username: str, realm: str, password: str,
                    method: str, uri: str, nonce: str, qop: str | None = None,
                    nc: str = "00000001", cnonce: str | None = None,
                    body: bytes = b"") -> str:
    alg = algorithm.upper()
    sess = alg.endswith("-SESS")
    base = alg[:-5] if sess else alg
    h = _HASHES[base]
    ha1 = h(f"{username}:{realm}:{password}".encode())
    if sess:
        ha1 = h(f"{ha1}:{nonce}:{cnonce}".encode())
    if qop == "auth-int":
        ha2 = h(f"{method}:{uri}:{h(body)}".encode())
    else:
        ha2 = h(f"{method}:{uri}".encode())
    if qop:
        return h(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}".encode())
    return h(f"{ha1}:{nonce}:{ha2}".encode())


def authorization(challenge: dict[str, str], *, username: str, password: str,
                  method: str, uri: str, nc: int = 1, cnonce: str | None = None,
                  body: bytes = b"") -> str:
    """Build an Authorization / Proxy-Authorization value answering ``challenge``."""
    alg = challenge.get("algorithm", "MD5")
    qops = [q.strip() for q in challenge.get("qop", "").split(",") if q.strip()]
    qop = "auth" if "auth" in qops else (qops[0] if qops else None)
    cnonce = cnonce or secrets.token_hex(8)
    ncs = f"{nc:08x}"
    resp = digest_response(algorithm=alg, username=username, realm=challenge.get("realm", ""),
                           password=password, method=method, uri=uri,
                           nonce=challenge.get("nonce", ""), qop=qop, nc=ncs,
                           cnonce=cnonce, body=body)
    parts = [f'username="{username}"', f'realm="{challenge.get("realm", "")}"',
             f'nonce="{challenge.get("nonce", "")}"', f'uri="{uri}"',
             f'response="{resp}"', f"algorithm={alg}"]
    if qop:
        parts += [f"qop={qop}", f"nc={ncs}", f'cnonce="{cnonce}"']
    if "opaque" in challenge:
        parts.append(f'opaque="{challenge["opaque"]}"')
    return "Digest " + ", ".join(parts)


def pick_challenge(msg: SipMessage, algorithm: str | None = None,
                   header: str | None = None) -> dict[str, str] | None:
    """Choose the challenge of ``msg`` (401 or 407) for ``algorithm`` (any if None).
    Algorithm absent in a challenge means MD5."""
    header = header or ("Proxy-Authenticate" if msg.status == 407 else "WWW-Authenticate")
    chs = [parse_challenge(v) for v in msg.header_all(header)]
    chs = [c for c in chs if c.get("scheme", "").lower() == "digest"]
    if algorithm is None:
        return chs[0] if chs else None
    for c in chs:
        if c.get("algorithm", "MD5").upper() == algorithm.upper():
            return c
    return None


# ---------------------------------------------------------------------------
# transport
# ---------------------------------------------------------------------------
def client_tls_context() -> ssl.SSLContext:
    """TLS client context that accepts any server certificate (self-signed)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class SipClient:
    """One local SIP endpoint talking to ``remote`` over udp/tcp/tls.

    For TCP/TLS a single connection is opened at construction and kept, so the
    server can send requests back on it (connection reuse)."""

    def __init__(self, transport: str, remote: tuple[str, int], *,
                 local_host: str = "127.0.0.1", local_port: int = 0,
                 connect_timeout: float = 5.0) -> None:
        self.transport = transport.lower()
        if self.transport not in ("udp", "tcp", "tls"):
            raise ValueError(f"bad transport {transport!r}")
        self.remote = (remote[0], int(remote[1]))
        fam = socket.AF_INET6 if ":" in remote[0] else socket.AF_INET
        if self.transport == "udp":
            self.sock = socket.socket(fam, socket.SOCK_DGRAM)
            self.sock.bind((local_host, local_port))
        else:
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((local_host, local_port))
            s.settimeout(connect_timeout)
            s.connect(self.remote)
            if self.transport == "tls":
                s = client_tls_context().wrap_socket(s, server_hostname=None)
            self.sock = s
        self.local = self.sock.getsockname()[:2]
        self._buf = bytearray()
        self.received: list[SipMessage] = []  # everything read, in order
        self.sent: list[bytes] = []

    # names used in generated headers
    @property
    def via_transport(self) -> str:
        return self.transport.upper()

    @property
    def uri_param(self) -> str:
        return "" if self.transport == "udp" else f";transport={self.transport}"

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.sent.append(data)
        if self.transport == "udp":
            self.sock.sendto(data, self.remote)
        else:
            self.sock.sendall(data)

    def send_to(self, data: bytes, addr: tuple[str, int]) -> None:
        """UDP: send to another address than `remote` (a dialog's remote target)."""
        self.sent.append(data)
        self.sock.sendto(data, addr)

    def recv(self, timeout: float = 5.0) -> SipMessage | None:
        """Next message from the remote, or None on timeout / closed stream."""
        deadline = time.monotonic() + timeout
        while True:
            if self.transport != "udp":
                m = split_stream(self._buf)
                if m is not None:
                    msg = parse_message(m)
                    self.received.append(msg)
                    return msg
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                if self.transport == "udp":
                    data, addr = self.sock.recvfrom(65535)
                    if not data.strip():
                        continue  # keep-alive
                    msg = parse_message(data)
                    msg.source = addr[:2]
                    self.received.append(msg)
                    return msg
                chunk = self.sock.recv(65535)
            except TimeoutError:
                return None
            except ssl.SSLError:
                return None
            if not chunk:
                return None
            self._buf += chunk

    def recv_all(self, duration: float) -> list[SipMessage]:
        """Collect every message arriving within ``duration`` seconds."""
        out = []
        deadline = time.monotonic() + duration
        while (left := deadline - time.monotonic()) > 0:
            m = self.recv(left)
            if m is None:
                break
            out.append(m)
        return out

    def recv_final(self, *, cseq_method: str | None = None, call_id: str | None = None,
                   timeout: float = 5.0) -> SipMessage | None:
        """Skip provisional responses (and unrelated messages); return the
        first final response matching ``cseq_method``/``call_id``."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            m = self.recv(left)
            if m is None:
                return None
            if not m.is_response or (m.status or 0) < 200:
                continue
            if cseq_method and m.cseq_method != cseq_method:
                continue
            if call_id and m.call_id != call_id:
                continue
            return m
        return None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> SipClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def normalize_crlf(data: bytes) -> bytes:
    """Turn bare LF line ends of a header block into CRLF (torture test files
    are often stored with LF).  The body is left alone."""
    sep = data.find(b"\n\n")
    if sep < 0 or b"\r\n\r\n" in data[:sep + 4]:
        return data
    head, body = data[:sep], data[sep + 2:]
    head = re.sub(rb"(?<!\r)\n", b"\r\n", head)
    return head + b"\r\n\r\n" + body


def send_raw(data: bytes | str, transport: str, remote: tuple[str, int], *,
             collect: float = 1.0, stop_on_final: bool = True) -> list[SipMessage]:
    """Send arbitrary bytes once and return what comes back within ``collect``
    seconds (returns early after a final response if ``stop_on_final``)."""
    with SipClient(transport, remote) as c:
        c.send(data)
        out: list[SipMessage] = []
        deadline = time.monotonic() + collect
        while (left := deadline - time.monotonic()) > 0:
            m = c.recv(left)
            if m is None:
                break
            out.append(m)
            if stop_on_final and m.is_response and (m.status or 0) >= 200:
                break
        return out


# ---------------------------------------------------------------------------
# REGISTER with digest
# ---------------------------------------------------------------------------
def new_branch() -> str:
    return "z9hG4bK" + secrets.token_hex(8)


def new_tag() -> str:
    return secrets.token_hex(6)


@dataclass
class RegisterResult:
    challenge: SipMessage | None  # the 401/407 (None if the server said 200 straight away)
    final: SipMessage | None      # last final response (None on timeout)
    exchanges: list[tuple[bytes, SipMessage | None]] = field(default_factory=list)
    authorization: str | None = None

    @property
    def status(self) -> int | None:
        return self.final.status if self.final else None

    def transcript(self) -> str:
        out = []
        for req, resp in self.exchanges:
            out.append(">>> sent\n" + req.decode("utf-8", "replace"))
            out.append("<<< received\n" + (resp.text() if resp else "(nothing)"))
        return "\n".join(out)


def build_request(method: str, uri: str, *, client: SipClient, from_uri: str, to_uri: str,
                  call_id: str, cseq: int, from_tag: str, to_tag: str | None = None,
                  extra_headers: Iterable[str] = (), body: bytes = b"",
                  content_type: str | None = None, contact: str | None = None,
                  branch: str | None = None) -> bytes:
    host, port = client.local
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/{client.via_transport} {host}:{port};branch={branch or new_branch()};rport",
        "Max-Forwards: 70",
        f"From: <{from_uri}>;tag={from_tag}",
        f"To: <{to_uri}>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
    ]
    if contact:
        lines.append(f"Contact: {contact}")
    lines += list(extra_headers)
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def register(client: SipClient, *, user: str, password: str, domain: str,
             expires: int | None = 3600, contact: str | None = None,
             auth_user: str | None = None, algorithm: str | None = "SHA-256",
             request_uri: str | None = None, call_id: str | None = None,
             cseq: int = 1, extra_headers: Iterable[str] = (),
             timeout: float = 5.0) -> RegisterResult:
    """REGISTER, answer a 401/407 digest challenge for ``algorithm`` (None:
    the first challenge offered) and return both responses.

    ``contact`` defaults to ``<sip:USER@LOCALIP:LOCALPORT[;transport=x]>``;
    pass "*" with expires=0 to remove all bindings.  Raises LookupError if the
    server offers no challenge with the wanted algorithm."""
    host, port = client.local
    if contact is None:
        contact = f"<sip:{user}@{host}:{port}{client.uri_param}>"
    ruri = request_uri or f"sip:{domain}"
    aor = f"sip:{user}@{domain}"
    call_id = call_id or f"{secrets.token_hex(8)}@{host}"
    tag = new_tag()
    hdrs = list(extra_headers)
    if expires is not None:
        hdrs.append(f"Expires: {expires}")

    def one(cs: int, auth_hdr: list[str]) -> tuple[bytes, SipMessage | None]:
        req = build_request("REGISTER", ruri, client=client, from_uri=aor, to_uri=aor,
                            call_id=call_id, cseq=cs, from_tag=tag, contact=contact,
                            extra_headers=auth_hdr + hdrs)
        client.send(req)
        resp = client.recv_final(cseq_method="REGISTER", call_id=call_id, timeout=timeout)
        return req, resp

    res = RegisterResult(challenge=None, final=None)
    req, resp = one(cseq, [])
    res.exchanges.append((req, resp))
    res.final = resp
    if resp is None or resp.status not in (401, 407):
        return res
    res.challenge = resp
    ch = pick_challenge(resp, algorithm)
    if ch is None:
        offered = resp.header_all("WWW-Authenticate") + resp.header_all("Proxy-Authenticate")
        raise LookupError(f"no {algorithm} challenge offered: {offered}\n{resp.text()}")
    hname = "Proxy-Authorization" if resp.status == 407 else "Authorization"
    value = authorization(ch, username=auth_user or user, password=password,
                          method="REGISTER", uri=ruri)
    res.authorization = value
    req, resp = one(cseq + 1, [f"{hname}: {value}"])
    res.exchanges.append((req, resp))
    res.final = resp
    return res


def split_header_list(value: str) -> list[str]:
    """Split a comma-separated header value, respecting quotes and <...>."""
    parts, cur, quoted, angle = [], "", False, 0
    for ch in value:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            angle += 1
        elif not quoted and ch == ">":
            angle -= 1
        if ch == "," and not quoted and angle == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def parse_contacts(msg: SipMessage) -> list[tuple[str, dict[str, str]]]:
    """Contacts of a message as (uri, header params), e.g. the bindings
    listed in a 200 to REGISTER: [("sip:100@127.0.0.1:5062", {"expires": "3600"})].
    "*" is returned as ("*", {})."""
    out = []
    for v in msg.header_all("Contact"):
        for c in split_header_list(v):
            if c.strip() == "*":
                out.append(("*", {}))
                continue
            m = re.match(r'^(?:"[^"]*"\s*|[^<"]*)?<([^>]*)>(.*)$', c)
            if m:
                uri, rest = m.group(1), m.group(2)
            else:
                uri, _, rest = c.partition(";")
                rest = ";" + rest if rest else ""
            params = {}
            for p in rest.split(";"):
                if p.strip():
                    k, _, val = p.strip().partition("=")
                    params[k.lower()] = val.strip('"')
            out.append((uri.strip(), params))
    return out


def mask_volatile(text: str) -> str:
    """Blank out per-request values (tags, branches, nonces, Call-IDs,
    cnonce/opaque, Date, ports in Via/received/rport) so that two responses can
    be compared byte-for-byte, e.g. wrong password vs unknown user."""
    rules = [
        (r"(;tag=)[^;,\s>]+", r"\1*"),
        (r"(;branch=)[^;,\s]+", r"\1*"),
        (r"(;rport=)\d+", r"\1*"),
        (r"(;received=)[^;,\s]+", r"\1*"),
        (r'((?:nonce|opaque|cnonce)=)"[^"]*"', r'\1"*"'),
        (r"(?im)^(Call-ID|i)([ \t]*:[ \t]*).*$", r"\1\2*"),
        (r"(?im)^(CSeq[ \t]*:[ \t]*)\d+", r"\1*"),
        (r"(?im)^(Date[ \t]*:[ \t]*).*$", r"\1*"),
        (r"(?im)^(Via[ \t]*:[ \t]*SIP/2\.0/\w+[ \t]+[^:;\s]+):\d+", r"\1:*"),
    ]
    for pat, rep in rules:
        text = re.sub(pat, rep, text)
    return text


__all__ = [
    "SipMessage", "parse_message", "split_stream", "parse_challenge", "digest_response",
    "authorization", "pick_challenge", "client_tls_context", "SipClient", "send_raw",
    "normalize_crlf", "register", "RegisterResult", "build_request", "mask_volatile",
    "parse_contacts", "split_header_list",
    "new_branch", "new_tag",
]
