"""asyncio transports for SIP: UDP, TCP and TLS listeners and connections (RFC 3261 §18).

This is the I/O edge of the sans-IO core: it turns datagrams and stream bytes
into `(bytes, Peer)` pairs for the endpoint, and sends bytes to a `Peer`.
Stream connections are kept in a table by id so that a request to a phone
reuses the connection the phone registered over (RFC 5626 style), and double
CRLF keep-alives are answered with a single CRLF (RFC 5626 §3.5.1).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any, cast

from . import reuseport
from .message import KEEPALIVE, ParseError, StreamFramer
from .transaction import OWN_PORT, Peer

log = logging.getLogger("appliance.sip.transport")

OnMessage = Callable[[bytes, Peer], None]
OnError = Callable[[Peer], None]

IDLE_TIMEOUT = 3600.0  # streams idle this long are closed (a registered phone refreshes sooner)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, owner: Transports, conn: int | None = None) -> None:
        self.owner = owner
        self.conn = conn
        self.transport: asyncio.DatagramTransport | None = None
        self.peers: dict[tuple, Peer] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if data in (b"\r\n\r\n", b"\r\n", b"\0\0\0\0"):
            # RFC 5626 §4.4.1 STUN keep-alives are not parsed; a CRLF ping gets nothing on UDP.
            return
        # Phones send from the same address all day: reuse one Peer per address
        # (immutable), bounded because addresses come from the network.
        peers = self.peers
        peer = peers.get(addr)
        if peer is None:
            if len(peers) >= 4096:
                peers.clear()
            peer = peers[addr] = Peer("udp", addr[0], addr[1], self.conn)
        self.owner.on_message(data, peer)

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable etc.
        log.debug("udp error: %s", exc)


class _Stream(asyncio.Protocol):
    """One TCP or TLS connection, inbound or outbound."""

    def __init__(self, owner: Transports, kind: str) -> None:
        self.owner = owner
        self.kind = kind
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.conn_id = next(owner._ids)
        self.peer: Peer | None = None
        self.last_activity = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = Peer(self.kind, host, port, self.conn_id)
        self.owner._register(self)

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.owner.loop.time()
        try:
            items = self.framer.feed(data)
        except ParseError as e:
            # Unframeable (e.g. a negative Content-Length): answer if we can, then close,
            # since nothing after it on this stream can be delimited (§18.3).
            log.info("closing %s: %s", self.peer, e.reason)
            if self.owner.on_unframeable is not None and self.peer is not None:
                self.owner.on_unframeable(bytes(self.framer.pending), self.peer, e)
            if self.transport:
                self.transport.close()
            return
        for item in items:
            if item == KEEPALIVE:
                if self.transport:
                    self.transport.write(b"\r\n")  # RFC 5626 §3.5.1 pong
                continue
            assert self.peer is not None
            self.owner.on_message(item, self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._unregister(self)


def _udp_socket(host: str) -> tuple[int, socket.socket]:
    """A UDP socket for `host`'s family with 4 MB buffers (as far as net.core.*mem_max
    allows): a burst waits in the kernel instead of being dropped."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    for opt, size in ((socket.SO_RCVBUF, 4 << 20), (socket.SO_SNDBUF, 4 << 20)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, size)
        except OSError:
            pass
    return family, sock


class Transports:
    """The daemon's SIP sockets and its table of stream connections."""

    def __init__(self, on_message: OnMessage, on_error: OnError,
                 tls_client_context: ssl.SSLContext | None = None) -> None:
        self.on_message = on_message
        self.on_error = on_error
        self.loop = asyncio.get_event_loop()
        self._ids = itertools.count(1)
        self._udp: dict[int, _Udp] = {}          # family → protocol
        self._udp_own: dict[int, _Udp] = {}      # family → a worker's own port (its dialogs)
        self.steered = False  # the UDP port's group runs appliance/sip/reuseport.py's program
        self._servers: list[asyncio.AbstractServer] = []
        self._conns: dict[int, _Stream] = {}
        self._by_addr: dict[tuple[str, str, int], _Stream] = {}
        self._pending: dict[tuple[str, str, int], list[bytes]] = {}
        self.tls_client_context = tls_client_context
        self.local: dict[str, tuple[str, int]] = {}  # transport → (bind host, port)
        self.on_unframeable: Callable[[bytes, Peer, ParseError], None] | None = None
        self._udp_out: list[tuple[asyncio.DatagramTransport, bytes, tuple[str, int]]] = []
        # An attribute, not only a method: a harness replaces it (a compiled class's
        # methods cannot be assigned)
        self.send: Callable[[Peer, bytes], None] = self.send_to

    # -- listeners ----------------------------------------------------------
    async def listen_udp(self, host: str, port: int, *, share: bool = False,
                         steer: int = 0) -> int:
        """Bind UDP. `share`: join the port's SO_REUSEPORT group (a SIP worker);
        `steer`: found the group and keep each sender to one of its `steer` sockets
        (appliance/sip/reuseport.py)."""
        family, sock = _udp_socket(host)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if share or steer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if steer:
            try:
                reuseport.steer(sock, steer)
                self.steered = True
            except OSError as e:
                log.warning("cannot keep each phone to one process (%s): the kernel's "
                            "hash decides, which may split a phone's transactions", e)
        sock.setblocking(False)
        _, proto = await self.loop.create_datagram_endpoint(lambda: _Udp(self), sock=sock)
        self._udp[family] = proto
        bound = sock.getsockname()[1]
        if not self._udp_own:  # a worker's Via and Contact name its own port
            self.local["udp"] = (host, bound)
        return bound

    async def listen_udp_own(self, host: str) -> int:
        """A port of this process alone, beside a shared one (a SIP worker): our Via and
        Contact name it, so the answers to our requests and the requests within our
        dialogs come back to this process, not to whichever the kernel picks on the
        shared port. Requests leave from it; responses leave from the port their request
        came to (§18.2.2)."""
        family, sock = _udp_socket(host)
        sock.bind((host, 0))
        sock.setblocking(False)
        _, proto = await self.loop.create_datagram_endpoint(lambda: _Udp(self, OWN_PORT),
                                                            sock=sock)
        self._udp_own[family] = proto
        bound = sock.getsockname()[1]
        self.local["udp"] = (host, bound)
        return bound

    async def listen_stream(self, kind: str, host: str, port: int,
                            ssl_context: ssl.SSLContext | None = None) -> int:
        server = await self.loop.create_server(
            lambda: _Stream(self, kind), host, port, ssl=ssl_context, reuse_address=True,
            backlog=1024)
        self._servers.append(server)
        # Any: uvloop's `sockets` is a list where the stubs say tuple, and compiled code
        # checks the declared type
        bound = cast(Any, server).sockets[0].getsockname()[1]
        self.local[kind] = (host, bound)
        return bound

    # -- sending ------------------------------------------------------------
    def send_to(self, peer: Peer, data: bytes) -> None:
        if peer.transport == "udp":
            family = socket.AF_INET6 if ":" in peer.host else socket.AF_INET
            proto = self._udp.get(family)
            if self._udp_own and (peer.conn == OWN_PORT or not data.startswith(b"SIP/2.0 ")):
                proto = self._udp_own.get(family, proto)
            if proto is None or proto.transport is None:
                self.on_error(peer)
                return
            # Sent at the end of this turn of the loop, with the rest of the batch: a burst
            # of datagrams wakes each receiver once instead of once per datagram (on
            # loopback a third of the CPU per registration was sendmsg waking SIPp).
            out = self._udp_out
            if not out:
                self.loop.call_soon(self.flush_udp)
            out.append((proto.transport, data, (peer.host, peer.port)))
            return
        conn = self._conns.get(peer.conn) if peer.conn is not None else None
        if conn is None:
            conn = self._by_addr.get((peer.transport, peer.host, peer.port))
        if conn is not None and conn.transport is not None and not conn.transport.is_closing():
            conn.transport.write(data)
            return
        key = (peer.transport, peer.host, peer.port)
        if key in self._pending:
            self._pending[key].append(data)
            return
        self._pending[key] = [data]
        self.loop.create_task(self._connect(peer))

    def flush_udp(self) -> None:
        """Send the datagrams queued by `send` during this turn of the loop, in order."""
        out = self._udp_out
        self._udp_out = []
        for transport, data, addr in out:
            if transport.is_closing():
                continue
            try:
                transport.sendto(data, addr)
            except OSError as e:
                log.info("send to %s:%s failed: %s", addr[0], addr[1], e)

    async def _connect(self, peer: Peer) -> None:
        key = (peer.transport, peer.host, peer.port)
        ctx = self.tls_client_context if peer.transport == "tls" else None
        try:
            _, proto = await asyncio.wait_for(self.loop.create_connection(
                lambda: _Stream(self, peer.transport), peer.host, peer.port, ssl=ctx,
                server_hostname=peer.host if ctx else None), timeout=10)
        except (TimeoutError, OSError, ssl.SSLError) as e:
            log.info("cannot connect to %s %s:%s: %s", peer.transport, peer.host, peer.port, e)
            self._pending.pop(key, None)
            self.on_error(peer)
            return
        for data in self._pending.pop(key, []):
            proto.transport.write(data)  # type: ignore[union-attr]

    def has_connection(self, conn: int | None) -> bool:
        return conn is not None and conn in self._conns

    # -- bookkeeping ----------------------------------------------------------
    def _register(self, conn: _Stream) -> None:
        assert conn.peer is not None
        conn.last_activity = self.loop.time()
        self._conns[conn.conn_id] = conn
        self._by_addr[(conn.kind, conn.peer.host, conn.peer.port)] = conn

    def _unregister(self, conn: _Stream) -> None:
        self._conns.pop(conn.conn_id, None)
        if conn.peer is not None:
            key = (conn.kind, conn.peer.host, conn.peer.port)
            if self._by_addr.get(key) is conn:
                del self._by_addr[key]

    def close_idle(self) -> None:
        now = self.loop.time()
        for conn in list(self._conns.values()):
            if now - conn.last_activity > IDLE_TIMEOUT and conn.transport:
                conn.transport.close()

    async def close(self) -> None:
        self.flush_udp()
        for server in self._servers:
            server.close()
        for conn in list(self._conns.values()):
            if conn.transport:
                conn.transport.close()
        for proto in (*self._udp.values(), *self._udp_own.values()):
            if proto.transport:
                proto.transport.close()
        for server in self._servers:
            await server.wait_closed()
