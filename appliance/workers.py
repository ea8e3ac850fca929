"""SIP workers (`sip.workers: N`): more processes answering REGISTER and running calls.

One Python process is one core. With N workers the daemon starts N more processes
(`python -m appliance.workers`) that bind the same UDP address and port. A program in
the kernel (appliance/sip/reuseport.py) gives each request to one of the N+1 sockets,
always the same one for a given phone, and every response to the daemon. A worker
answers REGISTER with the same registrar, digest and transaction code as the daemon.

Calls. A worker runs a call with the daemon's call code when it is a plain call
between two extensions (`Call._stays_here`: over UDP, audio not relayed, callee
without forwarding, neither phone behind NAT); it hands anything else to the daemon
unparsed or, once parsed, with its transaction forgotten (carriers, rooms, feature
codes, lines, relayed audio; with lines or trunks configured also every INVITE
without credentials, since only the daemon knows the addresses a line's host
resolved to). The daemon answers those from the shared port as if they had come to
it. Once a worker runs a call it keeps it: a callee's redirect (3xx) to a number the
worker would not ring goes to the caller, whose phone may follow it (the daemon would
follow it itself). A worker's Via and Contact name a port of its own
(`Transports.listen_udp_own`), so the callee's answers and every request within its
dialogs come straight back to it; its requests leave from that port. The caller's ACKs, CANCEL and requests within
the call come from the phone that sent the INVITE, so they reach the same process
even when the phone sends them to the shared port (a phone set up with the box as
outbound proxy; SIPp); a request for a worker's dialog that reaches another process
(the callee's, through the shared port) goes to the worker whose own port its
Request-URI names, by way of the daemon. Call events (ringing, answered, ended, DTMF)
go to the daemon's bus. Calls whose phones sit behind NAT stay with the
daemon because a NAT box that opened a pinhole for port 5060 may drop what comes
from the worker's port.

Bindings are kept in step over a Unix datagram socket pair per worker: a worker
reports each change; the daemon applies it to its own location service (which
saves `registrations.json` and tells the bus, i.e. the web page and the LEDs) and
hands it on to the other workers; the daemon's own changes go to every worker. A
worker starts with all current bindings and only then binds its UDP socket. So
each process knows every binding, a few milliseconds late at most, and a 200 to
REGISTER lists all contacts of the extension (RFC 3261 §10.3 step 8). A changed
config.yaml is read again by every process (the workers when the daemon tells them):
calls in progress go on.

Digest nonces are keyed by `nonce.key`, so any process accepts any process's nonce;
nonce counts are tracked per process, which holds because a phone's datagrams stay
with one process. A worker that dies is started again after a second (its calls are
lost with it); one that is missing meanwhile leaves its phones to the kernel's hash
over the other sockets. A worker stops before the daemon and ends its calls with BYE.
If the kernel refuses the steering program, workers only register.

Messages on a socket pair (one datagram each):
    b"D" + port (2 bytes) + host length (1 byte) + host + a SIP datagram     both ways
        worker → daemon: not the worker's; daemon → worker: the worker's (an ACK, a
        request within its dialog sent to the shared port)
    b"V" + the same: a request the worker authenticated, its nonce's use   worker → daemon
        counted there (RFC 2617 §3.2.2), that it hands on: the daemon does not take that
        nonce for another process's (DigestServer.trusted)
    b"B" + a list of binding changes, in `marshal`'s format               both ways
        ["put", aor, Binding.to_json's dict] | ["del", aor, contact] | ["clr", aor]
        ["ref", aor, contact, expires_at, call_id, cseq]   a refresh, sent within a second
    b"E" + a list of [event class name, fields], in `marshal`'s format:
        a worker's call events                                           worker → daemon
    `marshal` (the interpreter's own format for its plain values) is read only by the
    same interpreter that wrote it, as the workers are (`sys.executable`), and costs a
    third of JSON's: 0.8 + 2.3 against 3.7 + 4.2 us per new binding, 1.3 + 1.6 against
    4.0 + 3.6 us per call event (timeit, written + read).
    b"R"  the daemon's bindings have all been sent: bind and serve       daemon → worker
    b"P" + the worker's own port, in ASCII digits                          worker → daemon
    b"C"  config.yaml changed: read it again                             daemon → worker
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import marshal
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .bus import (
    Bus,
    CallAnswered,
    CallEnded,
    CallRinging,
    DtmfReceived,
    ExtensionRegistered,
    ExtensionUnregistered,
)
from .pbx.location import Binding, Location
from .sip.digest import DigestServer
from .sip.transaction import OWN_PORT, Peer

log = logging.getLogger("appliance.workers")

RESTART_DELAY = 1.0   # seconds before a worker that exited is started again
# A refresh only moves a binding's expiry (and Call-ID, CSeq): the other processes hear of
# it within this many seconds, the last of a burst only. Everything else goes at once.
REFRESH_SYNC = 0.5
_BATCH = 100          # binding changes per message (a few hundred bytes each)
_BUFFER = 4 << 20     # socket pair buffers: a burst of changes or datagrams waits here
_BACKLOG = 100_000    # messages waiting for a full socket pair; beyond that they are dropped
_PORT = struct.Struct("!HB")
SHUTDOWN_GRACE = 3.0  # seconds a stopping worker waits for the answers to its BYEs
# The bus events of a worker's calls, by name (what b"E" may carry)
CALL_EVENTS: dict[str, type] = {e.__name__: e for e in (CallRinging, CallAnswered, CallEnded,
                                                        DtmfReceived)}

Op = list[Any]


def encode_datagram(data: bytes, host: str, port: int, kind: bytes = b"D") -> bytes:
    raw = host.encode()
    return kind + _PORT.pack(port, len(raw)) + raw + data


def _peer(cache: dict[tuple[str, int], Peer], host: str, port: int) -> Peer:
    """One Peer per UDP source a datagram was handed on for (as transport._Udp keeps),
    bounded because addresses come from the network."""
    peer = cache.get((host, port))
    if peer is None:
        if len(cache) >= 4096:
            cache.clear()
        peer = cache[(host, port)] = Peer("udp", host, port)
    return peer


def decode_datagram(msg: bytes) -> tuple[bytes, str, int]:
    port, n = _PORT.unpack_from(msg, 1)
    start = 1 + _PORT.size
    return msg[start + n:], msg[start:start + n].decode(), port


def encode_ops(ops: list[Op]) -> list[bytes]:
    out = []
    for i in range(0, len(ops), _BATCH):
        out.append(b"B" + marshal.dumps([_wire(op) for op in ops[i:i + _BATCH]]))
    return out


def _wire(op: Op) -> Op:
    kind = op[0]
    if kind == "put":
        return [kind, op[1], op[2].to_json()]
    if kind == "ref":
        b: Binding = op[2]
        return [kind, op[1], b.contact, b.expires_at, b.call_id, b.cseq]
    return op


def decode_ops(msg: bytes) -> list[Op]:
    return [[op[0], op[1], Binding.from_json(op[2])] if op[0] == "put" else op
            for op in marshal.loads(msg[1:])]


def encode_events(events: list[object]) -> bytes:
    """[class name, field values in order] each (the events are flat slotted dataclasses:
    `dataclasses.asdict` and its deep copies cost more than the call's other events)."""
    return b"E" + marshal.dumps([[type(e).__name__, [getattr(e, f) for f in type(e).__slots__]]
                                 for e in events])


def decode_events(msg: bytes) -> list[object]:
    """The call events of b"E"; a name that is not a call event is skipped."""
    out = []
    for name, values in marshal.loads(msg[1:]):
        kind = CALL_EVENTS.get(name)
        if kind is not None:
            out.append(kind(*values))
    return out


class _EventOutbox:
    """A worker's call events: those of one turn of the loop go to the daemon together."""

    def __init__(self, send: Callable[[bytes], None]) -> None:
        self.send = send
        self.events: list[object] = []

    def add(self, event: object) -> None:
        if not self.events:
            asyncio.get_running_loop().call_soon(self.flush)
        self.events.append(event)

    def flush(self) -> None:
        events, self.events = self.events, []
        for i in range(0, len(events), _BATCH):
            self.send(encode_events(events[i:i + _BATCH]))


# the requests of a call a worker handles when they come to the shared port
_CALL_METHODS = (b"INVITE ", b"ACK ", b"CANCEL ", b"BYE ", b"PRACK ", b"UPDATE ", b"INFO ",
                 b"OPTIONS ")
# what `dispatch` need not look into: responses, REGISTER, CANCEL (to the INVITE's URI)
_NEVER_IN_DIALOG = (b"SIP/2.0 ", b"REGISTER ", b"CANCEL ")


def _ruri_port(data: bytes) -> int:
    """The port in the Request-URI of a request datagram ("BYE sip:u@h:p;x SIP/2.0"), 0
    when there is none to be read simply (the parser then has the last word)."""
    eol = data.find(b"\r\n", 0, 1024)
    parts = data[:eol].split(b" ")
    if len(parts) != 3:
        return 0
    uri = parts[1]
    at = uri.rfind(b"@")
    hostport = uri[at + 1:] if at >= 0 else uri[uri.find(b":") + 1:]
    hostport = hostport.split(b";", 1)[0].split(b"?", 1)[0]
    colon = hostport.rfind(b":")
    port = hostport[colon + 1:]
    return int(port) if colon >= 0 and port.isdigit() and len(port) <= 5 else 0


def apply_ops(location: Location, ops: list[Op],
              publish: Callable[[object], None] | None = None) -> None:
    """Another process's binding changes into `location`; with `publish` (the daemon's
    bus) new and removed bindings are announced too."""
    for op in ops:
        kind, aor = op[0], op[1]
        if kind == "put":
            b: Binding = op[2]
            fresh = publish is not None and location.get(aor, b.contact) is None
            location.put(aor, b)
            if fresh and publish is not None:
                publish(ExtensionRegistered(aor, b.contact, b.expires_in(time.time())))
        elif kind == "del":
            if location.remove(aor, op[2]) is not None and publish is not None:
                publish(ExtensionUnregistered(aor, op[2], "unregistered"))
        elif kind == "clr":
            gone = location.remove_all(aor)
            if publish is not None:
                for b in gone:
                    publish(ExtensionUnregistered(aor, b.contact, "unregistered"))
        elif kind == "ref":
            location.refresh(aor, op[2], op[3], op[4], op[5])


class Channel:
    """One end of a socket pair on the event loop: whole messages in and out; what the
    socket cannot take yet waits, in order, until it can."""

    def __init__(self, sock: socket.socket, on_message: Callable[[bytes], None],
                 on_closed: Callable[[], None]) -> None:
        self.sock = sock
        sock.setblocking(False)
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, opt, _BUFFER)
        self.on_message = on_message
        self.on_closed = on_closed
        self.loop = asyncio.get_running_loop()
        self._backlog: list[bytes] = []
        self.dropped = 0
        self.closed = False
        self.loop.add_reader(sock.fileno(), self._readable)

    def send(self, msg: bytes) -> None:
        if self.closed:
            return
        if self._backlog:
            if len(self._backlog) >= _BACKLOG:
                # The other process has not read for a long while: drop, as UDP would.
                self.dropped += 1
                return
            self._backlog.append(msg)
            return
        try:
            self.sock.send(msg)
        except BlockingIOError:
            self._backlog.append(msg)
            self.loop.add_writer(self.sock.fileno(), self._writable)
        except OSError:
            self.close()

    def _writable(self) -> None:
        while self._backlog:
            try:
                self.sock.send(self._backlog[0])
            except BlockingIOError:
                return
            except OSError:
                self.close()
                return
            del self._backlog[0]
        self.loop.remove_writer(self.sock.fileno())

    def _readable(self) -> None:
        for _ in range(256):  # then let the loop breathe
            try:
                msg = self.sock.recv(1 << 17)
            except BlockingIOError:
                return
            except OSError:
                msg = b""
            if not msg:  # the other end is gone
                self.close()
                return
            try:
                self.on_message(msg)
            except Exception:
                log.exception("bad message from the other process (%d bytes)", len(msg))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.sock.fileno())
        if self._backlog:
            self.loop.remove_writer(self.sock.fileno())
        self.sock.close()
        self.on_closed()


class _Outbox:
    """Binding changes for the other side: those made during one turn of the loop go
    together at its end; refreshes within REFRESH_SYNC, the latest per binding."""

    def __init__(self, send: Callable[[bytes], None]) -> None:
        self.send = send
        self.ops: list[Op] = []
        self.refreshes: dict[tuple[str, str], Op] = {}

    def add(self, op: Op, at_once: bool = False) -> None:
        """`at_once`: send it (with any waiting) now, not at the end of the loop's turn."""
        kind, aor = op[0], op[1]
        if kind == "ref":
            if not self.refreshes:
                asyncio.get_running_loop().call_later(REFRESH_SYNC, self.flush_refreshes)
            self.refreshes[(aor, op[2].contact)] = op
            return
        if self.refreshes:  # an older refresh must not land after this change
            if kind == "clr":
                for key in [k for k in self.refreshes if k[0] == aor]:
                    del self.refreshes[key]
            else:
                self.refreshes.pop((aor, op[2].contact if kind == "put" else op[2]), None)
        self.ops.append(op)
        if at_once:
            self.flush()
        elif len(self.ops) == 1:
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        if not self.ops:
            return
        ops, self.ops = self.ops, []
        for msg in encode_ops(ops):
            self.send(msg)

    def flush_refreshes(self) -> None:
        refs, self.refreshes = list(self.refreshes.values()), {}
        for msg in encode_ops(refs):
            self.send(msg)


# -- the daemon's side -----------------------------------------------------------------

class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.channel: Channel | None = None
        self.outbox: _Outbox | None = None
        self.own_port: int | None = None  # where its dialogs are (b"P")

    @property
    def live(self) -> bool:
        """Running, its socket pair open: worth handing something to."""
        return self.channel is not None and not self.channel.closed


class WorkerPool:
    """The daemon's workers: starts them, feeds them bindings, takes their changes, their
    datagrams and their call events, starts again any that exits."""

    def __init__(self, count: int, argv: list[str], location: Location, bus: Bus,
                 on_datagram: Callable[[bytes, Peer], None], calls: bool = False,
                 digest: DigestServer | None = None) -> None:
        # the worker command line, without --fd and --index
        self.argv = [*argv, "--calls"] if calls else argv
        self.location = location
        self.bus = bus
        self.on_datagram = on_datagram
        self.digest = digest  # the daemon's: trusts a worker's nonce in what it hands on (V)
        self.workers = [_Worker(i + 1) for i in range(count)]
        self._origin: int | None = None   # the worker whose changes are being applied
        self._peers: dict[tuple[str, int], Peer] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._by_own_port: dict[int, _Worker] = {}
        self._stopping = False
        location.on_change = self._changed

    async def start(self) -> None:
        for w in self.workers:
            await self._spawn(w)
            self._tasks.append(asyncio.get_running_loop().create_task(self._supervise(w)))

    async def _spawn(self, w: _Worker) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            w.process = await asyncio.create_subprocess_exec(
                *self.argv, "--fd", str(theirs.fileno()), "--index", str(w.index),
                pass_fds=(theirs.fileno(),))
        finally:
            theirs.close()
        w.channel = Channel(ours, lambda msg: self._received(w, msg), lambda: None)
        w.outbox = _Outbox(w.channel.send)
        now = time.time()
        everything: list[Op] = [["put", aor, b] for aor in self.location.aors()
                                for b in self.location.bindings(aor, now)]
        for msg in encode_ops(everything):
            w.channel.send(msg)
        w.channel.send(b"R")
        log.info("worker %d started (pid %d) with %d bindings", w.index, w.process.pid,
                 len(everything))

    async def _supervise(self, w: _Worker) -> None:
        while True:
            assert w.process is not None
            code = await w.process.wait()
            if w.channel is not None:
                w.channel.close()
            if self._stopping:
                return
            log.warning("worker %d exited (%s); starting it again in %.0f s", w.index,
                        code, RESTART_DELAY)
            await asyncio.sleep(RESTART_DELAY)
            if self._stopping:
                return
            try:
                await self._spawn(w)
            except OSError as e:
                log.error("cannot start worker %d: %s", w.index, e)

    def reload(self) -> None:
        """config.yaml changed (and the daemon took it): every worker reads it again."""
        for w in self.workers:
            if w.channel is not None:
                w.channel.send(b"C")

    def dispatch(self, data: bytes, peer: Peer) -> None:
        """What reaches the daemon's shared socket, or a worker hands on, before parsing: a
        request whose Request-URI names a worker's own port (a request within that
        worker's dialog, sent to the box's port by a phone that uses it as outbound
        proxy) goes to that worker unparsed; the rest to the daemon's endpoint."""
        if self._by_own_port and not data.startswith(_NEVER_IN_DIALOG):
            w = self._by_own_port.get(_ruri_port(data))
            if w is not None and w.live:
                assert w.channel is not None
                w.channel.send(encode_datagram(data, peer.host, peer.port))
                return
        self.on_datagram(data, peer)

    async def stop(self) -> None:
        self._stopping = True
        for w in self.workers:
            if w.process is not None and w.process.returncode is None:
                w.process.terminate()
        for w in self.workers:
            if w.process is not None:
                try:  # a worker ends its calls first
                    await asyncio.wait_for(w.process.wait(), SHUTDOWN_GRACE + 2.0)
                except TimeoutError:
                    w.process.kill()
                    await w.process.wait()
        for t in self._tasks:
            t.cancel()

    # -- messages from a worker
    def _received(self, w: _Worker, msg: bytes) -> None:
        kind = msg[:1]
        if kind == b"D" or kind == b"V":
            data, host, port = decode_datagram(msg)
            peer = _peer(self._peers, host, port)
            if kind == b"V" and self.digest is not None:
                # Authenticated there, its nonce's use counted there: not a replay here.
                self.digest.trusted = w.index
                try:
                    self.on_datagram(data, peer)
                finally:
                    self.digest.trusted = None
            elif w.own_port is not None and _ruri_port(data) == w.own_port:
                self.on_datagram(data, peer)  # its own dialog, unknown there: answered here
            else:
                self.dispatch(data, peer)
        elif kind == b"B":
            self._apply(w.index, decode_ops(msg))
        elif kind == b"E":
            for event in decode_events(msg):
                self.bus.publish(event)
        elif kind == b"P":
            if w.own_port is not None:
                self._by_own_port.pop(w.own_port, None)
            w.own_port = int(msg[1:])
            self._by_own_port[w.own_port] = w

    def _apply(self, origin: int, ops: list[Op]) -> None:
        """A worker's binding changes: into the location service (which saves them and
        hands them on to the other workers) and onto the bus."""
        self._origin = origin
        try:
            apply_ops(self.location, ops, self.bus.publish)
        finally:
            self._origin = None
            for w in self.workers:
                if w.outbox is not None and w.live:
                    w.outbox.flush()

    def _changed(self, op: Op) -> None:
        """A change to the daemon's bindings: every worker but the one it came from. One
        the daemon made itself goes at once, before the daemon's 200 to the REGISTER; a
        worker's batch goes on when all of it is applied (`_apply`)."""
        for w in self.workers:
            if w.index != self._origin and w.outbox is not None and w.live:
                w.outbox.add(op, at_once=self._origin is None)


# -- the worker's side -----------------------------------------------------------------

async def serve(args: argparse.Namespace) -> None:
    from .daemon import nonce_secret, sip_timers
    from .pbx.core import Pbx
    from .sip.endpoint import Endpoint
    from .store.config import ConfigError, ConfigStore

    loop = asyncio.get_running_loop()
    data = Path(args.data)
    store = ConfigStore(data)
    cfg = store.load()
    endpoint = Endpoint(sip_timers(cfg), trace=args.sip_trace)
    endpoint.bind_host = args.bind
    location = Location(None)
    bus = Bus()
    pbx = Pbx(endpoint, cfg, location, bus, nonce_secret(data))
    pbx.worker = True
    pbx.digest.issuer = args.index  # its nonces carry its index; it counts only those
    endpoint.tu = pbx
    stop = asyncio.Event()
    ready = asyncio.Event()
    applying = False
    handle = endpoint.transports.on_message   # the endpoint's own: parse and handle
    peers: dict[tuple[str, int], Peer] = {}

    def received(msg: bytes) -> None:
        nonlocal applying
        kind = msg[:1]
        if kind == b"B":
            applying = True
            try:
                apply_ops(location, decode_ops(msg))
            finally:
                applying = False
        elif kind == b"D":  # ours, came to the daemon: an ACK, an in-dialog request
            datagram, host, port = decode_datagram(msg)
            peer = _peer(peers, host, port)
            pbx.elsewhere = None  # never back to the daemon: answered (481) or dropped here
            try:
                handle(datagram, peer)
            finally:
                pbx.elsewhere = to_daemon if calls else None
        elif kind == b"C":
            try:
                pbx.config = store.load()
                log.info("config.yaml read again")
            except ConfigError as e:  # the daemon took it: it may have changed again since
                log.error("config.yaml not read again: %s", e)
        elif kind == b"R":
            ready.set()

    channel = Channel(socket.socket(fileno=args.fd), received, stop.set)
    outbox = _Outbox(channel.send)

    def changed(op: Op) -> None:
        # A new, moved or removed binding reaches the daemon before the phone reads our
        # 200 (RFC 3261 §10.3 step 8: the bindings now in effect), so a call that another
        # worker hands to the daemon finds it there (Call._stays_here).
        if not applying:
            outbox.add(op, at_once=True)

    location.on_change = changed

    def hand_on(datagram: bytes, peer: Peer, kind: bytes = b"D") -> None:
        channel.send(encode_datagram(datagram, peer.host, peer.port, kind))

    # the datagram being handled: what Pbx.pass_on hands to the daemon
    current: tuple[bytes, Peer] | None = None

    def to_daemon(verified: bool = False) -> None:
        if current is not None:
            hand_on(*current, b"V" if verified else b"D")

    calls = bool(args.calls)
    if calls:
        pbx.elsewhere = to_daemon
        events = _EventOutbox(channel.send)
        for kind in CALL_EVENTS.values():
            bus.subscribe(kind, events.add)

    def on_message(datagram: bytes, peer: Peer) -> None:
        nonlocal current
        # What came to our own port is ours. On the shared port: REGISTER and, when we run
        # calls, the methods of a call (RFC 3261 methods are case-sensitive), but not a
        # new INVITE while the box relays the audio of extension calls (the daemon does
        # that); the rest is the daemon's, unparsed.
        if peer.transport != "udp" or peer.conn == OWN_PORT or datagram.startswith(
                b"REGISTER ") or (calls and datagram.startswith(_CALL_METHODS) and not (
                    datagram.startswith(b"INVITE ") and pbx.config.media.relay_extension_calls
                    and _ruri_port(datagram) != own)):
            current = (datagram, peer)
            try:
                handle(datagram, peer)
            finally:
                current = None
        else:
            hand_on(datagram, peer)

    endpoint.transports.on_message = on_message
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    done = asyncio.ensure_future(stop.wait())
    await asyncio.wait([asyncio.ensure_future(ready.wait()), done],
                       return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set():
        return
    own = 0
    if calls:  # first: a call may start with the first datagram on the shared port
        own = await endpoint.transports.listen_udp_own(args.bind)
        channel.send(b"P%d" % own)
    await endpoint.transports.listen_udp(args.bind, args.port, share=True)
    if calls:
        log.info("serving REGISTER and calls on udp %s:%d (dialogs on port %d) with %d "
                 "bindings", args.bind, args.port, own, len(location))
    else:
        log.info("serving REGISTER on udp %s:%d with %d bindings", args.bind, args.port,
                 len(location))
    from . import gcpolicy
    gcpolicy.start()
    collections = gcpolicy.FullCollections()  # as the daemon: full ones only when idle
    ticks = 0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
        collections.tick(endpoint.received, len(endpoint.layer))
        ticks += 1
        if ticks % 10 == 0:
            location.expire(time.time())  # the daemon expires and announces; this frees
    ended = pbx.hang_up_all()
    if ended:
        log.info("ending %d call(s)", ended)
        deadline = loop.time() + SHUTDOWN_GRACE
        while loop.time() < deadline and pbx.outstanding_byes():
            await asyncio.sleep(0.05)
    await endpoint.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.workers",
                                     description="a SIP worker (started by the daemon)")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--bind", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--sip-trace", action="store_true")
    parser.add_argument("--calls", action="store_true",
                        help="run calls between extensions too (the port's steering is on)")
    args = parser.parse_args(argv)
    from .daemon import setup_logging
    setup_logging(args.log_level, args.sip_trace, prefix=f"worker {args.index} ")
    with contextlib.suppress(ImportError):
        import uvloop  # type: ignore[import-not-found]
        uvloop.install()
    try:
        asyncio.run(serve(args))
    except OSError as e:
        log.error("worker %d cannot serve: %s", args.index, e)
        return 1
    except Exception:
        log.exception("worker %d failed", args.index)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
