"""A tiny in-process SIP registrar + stateless authenticating proxy.

FOR HARNESS SELF-TESTS ONLY: it lets the SIPp scenarios, the TLS shim and
the helpers be exercised before the real daemon exists.  It is deliberately
simple (stateless proxy, no B2BUA, no retransmission handling of its own) and
must never be used to judge the daemon.

Behaviour:
* REGISTER: 401 with one WWW-Authenticate per configured algorithm (in the
  order given, e.g. SHA-256 then MD5, qop="auth"); a valid digest -> 200 that
  lists every binding ``Contact: <...>;expires=N``; a bad password or unknown
  user -> ``wrong_status`` (same response for both).  ``Contact: *`` with
  Expires 0 removes all bindings, Expires 0 removes one.
* INVITE without To-tag: 407 with Proxy-Authenticate (ACK absorbed); with a
  valid Proxy-Authorization it is forwarded (Record-Route, Via added) to the
  binding of the Request-URI user, or answered 480 if there is none.
* CANCEL, ACK, in-dialog requests: forwarded statelessly (CANCEL/ACK to the
  same target as the INVITE); responses routed back by Via.
TCP/TLS bindings are reached over the connection the REGISTER came in on.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import socket
import ssl
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from . import rawsip
from .certs import make_self_signed
from .ports import free_port


@dataclass
class Flow:
    transport: str  # udp/tcp/tls
    sock: socket.socket
    addr: tuple[str, int]
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, data: bytes) -> None:
        try:
            if self.transport == "udp":
                self.sock.sendto(data, self.addr)
            else:
                with self.lock:
                    self.sock.sendall(data)
        except OSError:
            pass


@dataclass
class Binding:
    contact: str  # the URI inside <>
    expires: int
    flow: Flow


def _uri_of(contact_value: str) -> str:
    m = re.search(r"<([^>]*)>", contact_value)
    return (m.group(1) if m else contact_value.split(";")[0]).strip()


def _user_of(uri: str) -> str:
    m = re.match(r"sips?:([^@;>]+)@", uri)
    return m.group(1) if m else ""


def _hostport_of(uri: str) -> tuple[str, int, str]:
    m = re.match(r"sips?:(?:[^@]*@)?(\[[^\]]+\]|[^:;>?]+)(?::(\d+))?([^>]*)", uri)
    if not m:
        raise ValueError(uri)
    host = m.group(1).strip("[]")
    port = int(m.group(2) or 5060)
    tp = re.search(r";transport=(\w+)", m.group(3) or "", re.I)
    return host, port, (tp.group(1).lower() if tp else "udp")


def _branch_of(via: str) -> str:
    m = re.search(r";branch=([^;,\s]+)", via)
    return m.group(1) if m else ""


def _split_top_via(msg: rawsip.SipMessage) -> tuple[str, list[tuple[str, str]]]:
    """Return (top via value, headers with the top via removed)."""
    out, top = [], None
    for n, v in msg.headers:
        if top is None and rawsip.canon(n) == "via":
            parts = _split_commas(v)
            top = parts[0]
            if len(parts) > 1:
                out.append((n, ", ".join(parts[1:])))
            continue
        out.append((n, v))
    return top or "", out


_split_commas = rawsip.split_header_list


def _serialize(start: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    hs = [(n, v) for n, v in headers if rawsip.canon(n) != "content-length"]
    lines = [start] + [f"{n}: {v}" for n, v in hs] + [f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class StubPbx:
    """Start with ``with StubPbx(users={"100": "pw"}) as pbx:``; then
    ``pbx.port`` (UDP+TCP), ``pbx.tls_port``, ``pbx.log`` (list of
    (direction, transport, bytes)), ``pbx.bindings``."""

    def __init__(self, users: dict[str, str], *, realm: str = "stub",
                 algorithms: tuple[str, ...] = ("MD5",), wrong_status: int = 403,
                 tls: bool = True, certdir: Path | None = None,
                 challenge_invite: bool = True, record_route: bool = True,
                 host: str = "127.0.0.1") -> None:
        self.users = dict(users)
        self.realm = realm
        self.algorithms = algorithms
        self.wrong_status = wrong_status
        self.challenge_invite = challenge_invite
        self.record_route = record_route
        self.host = host
        self.port = free_port("both", host)
        self.tls_port = free_port("tcp", host) if tls else None
        self.bindings: dict[str, list[Binding]] = {}
        self.log: list[tuple[str, str, bytes]] = []
        self.auth_headers_seen: list[str] = []
        self._nonces: set[str] = set()
        self._absorb_ack: set[str] = set()
        self._txn_target: dict[str, tuple[str, Flow]] = {}  # incoming INVITE branch -> (uri, flow)
        self._resp_route: dict[str, Flow] = {}  # our branch -> inbound flow
        self._aliases: dict[tuple[str, int], Flow] = {}  # sent-by -> stream flow
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._certdir = certdir
        self._tls_ctx: ssl.SSLContext | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    # ------------------------------------------------------------------ life
    def start(self) -> StubPbx:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind((self.host, self.port))
        self.udp = u
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind((self.host, self.port))
        t.listen(16)
        self._socks += [u, t]
        self._spawn(self._udp_loop)
        self._spawn(self._accept_loop, t, "tcp")
        if self.tls_port:
            if self._certdir is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="stubpbx-")
                self._certdir = Path(self._tmp.name)
            d = Path(self._certdir)
            crt, key = make_self_signed(d, "stubpbx")
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(crt), str(key))
            self._tls_ctx = ctx
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((self.host, self.tls_port))
            s.listen(16)
            self._socks.append(s)
            self._spawn(self._accept_loop, s, "tls")
        return self

    def stop(self) -> None:
        self._stop.set()
        for s in self._socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass
        for th in self._threads:
            th.join(2)
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> StubPbx:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self, fn, *args) -> None:
        th = threading.Thread(target=fn, args=args, daemon=True)
        th.start()
        self._threads.append(th)

    def address(self, transport: str = "udp") -> str:
        port = self.tls_port if transport in ("tls", "l1") else self.port
        return f"{self.host}:{port}"

    # ------------------------------------------------------------- network
    def _udp_loop(self) -> None:
        self.udp.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data, addr = self.udp.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data.strip():
                continue
            self._dispatch(data, Flow("udp", self.udp, addr[:2]))

    def _accept_loop(self, lsock: socket.socket, transport: str) -> None:
        lsock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, addr = lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._socks.append(conn)
            self._spawn(self._conn_loop, conn, addr, transport)

    def _conn_loop(self, conn: socket.socket, addr, transport: str) -> None:
        if transport == "tls":
            try:
                conn.settimeout(5)
                conn = self._tls_ctx.wrap_socket(conn, server_side=True)
                self._socks.append(conn)
            except (OSError, ssl.SSLError):
                conn.close()
                return
        conn.settimeout(0.2)
        flow = Flow(transport, conn, addr[:2])
        buf = bytearray()
        while not self._stop.is_set():
            try:
                chunk = conn.recv(65535)
            except TimeoutError:
                continue
            except (OSError, ssl.SSLError):
                break
            if not chunk:
                break
            buf += chunk
            while (m := rawsip.split_stream(buf)) is not None:
                self._dispatch(m, flow)
        try:
            conn.close()
        except OSError:
            pass

    def _send(self, flow: Flow, data: bytes) -> None:
        self.log.append(("out", flow.transport, data))
        flow.send(data)

    # -------------------------------------------------------------- logic
    def _dispatch(self, data: bytes, flow: Flow) -> None:
        self.log.append(("in", flow.transport, data))
        if flow.transport != "udp":
            # a UA may put its connection's own port in Contact (baresip does)
            self._aliases[flow.addr] = flow
        try:
            msg = rawsip.parse_message(data)
            with self._lock:
                if msg.is_response:
                    self._on_response(msg)
                else:
                    self._on_request(msg, flow)
        except Exception as e:  # keep serving; record the problem
            self.log.append(("error", flow.transport, repr(e).encode()))

    def _reply(self, req: rawsip.SipMessage, flow: Flow, status: int, reason: str,
               extra: list[tuple[str, str]] = (), body: bytes = b"") -> None:
        hs: list[tuple[str, str]] = []
        for n, v in req.headers:
            c = rawsip.canon(n)
            if c in ("via", "from", "call-id", "cseq"):
                hs.append((n, v))
            elif c == "to":
                if ";tag=" not in v and status > 100:
                    v += ";tag=" + hashlib.md5((req.call_id or "").encode()).hexdigest()[:10]
                hs.append((n, v))
        hs += list(extra)
        hs.append(("Server", "stub-pbx"))
        self._send(flow, _serialize(f"SIP/2.0 {status} {reason}", hs, body))

    def _challenge(self, proxy: bool) -> list[tuple[str, str]]:
        nonce = secrets.token_hex(16)
        self._nonces.add(nonce)
        name = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        return [(name, f'Digest realm="{self.realm}", nonce="{nonce}", algorithm={a}, qop="auth"')
                for a in self.algorithms]

    def _check_auth(self, req: rawsip.SipMessage, header: str) -> str | None:
        """'ok' / 'bad' / None (no credentials)."""
        v = req.header(header)
        if not v:
            return None
        self.auth_headers_seen.append(v)
        a = rawsip.parse_challenge(v)
        user = a.get("username", "")
        if user not in self.users or a.get("nonce") not in self._nonces:
            return "bad"
        alg = a.get("algorithm", "MD5")
        if alg.upper() not in (x.upper() for x in self.algorithms):
            return "bad"
        want = rawsip.digest_response(
            algorithm=alg, username=user, realm=a.get("realm", ""), password=self.users[user],
            method=req.method or "", uri=a.get("uri", ""), nonce=a.get("nonce", ""),
            qop=a.get("qop"), nc=a.get("nc", "00000001"), cnonce=a.get("cnonce"))
        return "ok" if want == a.get("response") else "bad"

    def _remember_alias(self, req: rawsip.SipMessage, flow: Flow) -> None:
        if flow.transport == "udp":
            return
        via = req.header("Via") or ""
        m = re.match(r"SIP/2\.0/\w+\s+(\[[^\]]+\]|[^:;\s]+)(?::(\d+))?", via)
        if m:
            self._aliases[(m.group(1).strip("[]"), int(m.group(2) or 5060))] = flow
        ct = req.header("Contact")
        if ct and ct.strip() != "*":
            try:
                h, p, _ = _hostport_of(_uri_of(ct))
                self._aliases[(h, p)] = flow
            except ValueError:
                pass

    def _on_request(self, req: rawsip.SipMessage, flow: Flow) -> None:
        self._remember_alias(req, flow)
        m = req.method
        branch = _branch_of(req.header("Via") or "")
        if m == "REGISTER":
            return self._on_register(req, flow)
        if m == "OPTIONS" and ";tag=" not in (req.header("To") or ""):
            return self._reply(req, flow, 200, "OK")
        if m == "ACK" and branch in self._absorb_ack:
            return
        if m in ("CANCEL", "ACK") and branch in self._txn_target:
            uri, tflow = self._txn_target[branch]
            return self._forward(req, flow, uri, tflow)
        if ";tag=" in (req.header("To") or ""):
            return self._forward_in_dialog(req, flow)
        if m == "INVITE":
            return self._on_invite(req, flow, branch)
        if m == "CANCEL":
            return self._reply(req, flow, 481, "Call/Transaction Does Not Exist")
        if m == "ACK":
            return
        self._reply(req, flow, 405, "Method Not Allowed")

    def _on_register(self, req: rawsip.SipMessage, flow: Flow) -> None:
        st = self._check_auth(req, "Authorization")
        if st is None:
            return self._reply(req, flow, 401, "Unauthorized", self._challenge(False))
        if st == "bad":
            reason = "Forbidden" if self.wrong_status == 403 else "Unauthorized"
            extra = self._challenge(False) if self.wrong_status == 401 else []
            return self._reply(req, flow, self.wrong_status, reason, extra)
        aor = _user_of(_uri_of(req.header("To") or ""))
        exp_hdr = req.header("Expires")
        default_exp = int(exp_hdr) if exp_hdr and exp_hdr.isdigit() else 3600
        binds = self.bindings.setdefault(aor, [])
        for cv in req.header_all("Contact"):
            for c in _split_commas(cv):
                if c.strip() == "*":
                    if default_exp == 0:
                        binds.clear()
                    continue
                uri = _uri_of(c)
                em = re.search(r";expires=(\d+)", c.split(">")[-1])
                exp = int(em.group(1)) if em else default_exp
                binds[:] = [b for b in binds if b.contact != uri]
                if exp > 0:
                    binds.append(Binding(uri, min(exp, 3600), flow))
        extra = [("Contact", f"<{b.contact}>;expires={b.expires}") for b in binds]
        self._reply(req, flow, 200, "OK", extra)

    def _on_invite(self, req: rawsip.SipMessage, flow: Flow, branch: str) -> None:
        if self.challenge_invite:
            st = self._check_auth(req, "Proxy-Authorization")
            if st != "ok":
                self._absorb_ack.add(branch)
                if st == "bad":
                    return self._reply(req, flow, 403, "Forbidden")
                return self._reply(req, flow, 407, "Proxy Authentication Required",
                                   self._challenge(True))
        user = _user_of(req.uri or "")
        binds = self.bindings.get(user) or []
        if not binds:
            self._absorb_ack.add(branch)
            return self._reply(req, flow, 480, "Temporarily Unavailable")
        b = binds[-1]
        self._reply(req, flow, 100, "Trying")
        self._txn_target[branch] = (b.contact, b.flow)
        self._forward(req, flow, b.contact, b.flow, record_route=self.record_route)

    def _forward_in_dialog(self, req: rawsip.SipMessage, flow: Flow) -> None:
        headers = list(req.headers)
        routes = [(i, v) for i, (n, v) in enumerate(headers) if rawsip.canon(n) == "route"]
        if routes:
            i, v = routes[0]
            parts = _split_commas(v)
            if f":{self.port}" in parts[0] or (self.tls_port and f":{self.tls_port}" in parts[0]):
                parts = parts[1:]
                if parts:
                    headers[i] = (headers[i][0], ", ".join(parts))
                else:
                    del headers[i]
        req = rawsip.SipMessage(req.raw, req.start_line, headers, req.body)
        target = req.uri or ""
        h, p, tp = _hostport_of(target)
        tflow = self._aliases.get((h, p))
        if tflow is None:
            tflow = Flow("udp", self.udp, (h, p))
        self._forward(req, flow, target, tflow)

    def _forward(self, req: rawsip.SipMessage, inflow: Flow, target_uri: str,
                 tflow: Flow, record_route: bool = False) -> None:
        in_branch = _branch_of(req.header("Via") or "")
        key = in_branch + ("/ack2xx" if req.method == "ACK" and in_branch not in self._txn_target else "")
        our_branch = "z9hG4bKstub" + hashlib.md5(key.encode()).hexdigest()[:16]
        self._resp_route[our_branch] = inflow
        port = self.tls_port if tflow.transport == "tls" else self.port
        via = f"SIP/2.0/{tflow.transport.upper()} {self.host}:{port};branch={our_branch}"
        headers: list[tuple[str, str]] = [("Via", via)]
        for n, v in req.headers:
            c = rawsip.canon(n)
            if c == "max-forwards":
                try:
                    v = str(int(v) - 1)
                except ValueError:
                    v = "69"
            if c == "proxy-authorization":
                continue
            headers.append((n, v))
        if record_route:
            rport = self.tls_port if inflow.transport == "tls" else self.port
            tp = "" if inflow.transport == "udp" else f";transport={inflow.transport}"
            headers.insert(1, ("Record-Route", f"<sip:{self.host}:{rport};lr{tp}>"))
        start = f"{req.method} {target_uri} SIP/2.0"
        self._send(tflow, _serialize(start, headers, req.body))

    def _on_response(self, resp: rawsip.SipMessage) -> None:
        top, rest = _split_top_via(resp)
        flow = self._resp_route.get(_branch_of(top))
        if flow is None:
            return
        self._send(flow, _serialize(resp.start_line, rest, resp.body))
