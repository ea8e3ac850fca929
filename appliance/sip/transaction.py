"""SIP transactions (RFC 3261 §17, with the RFC 6026 corrections), sans-IO.

The layer is a plain object in the style of aioquic's `QuicConnection`: it never
touches a socket or a clock. Every entry point takes `now`; what is to be sent is
queued (`datagrams_to_send()`), what the transaction user (TU) must hear about is
queued as events (`next_event()`), and `get_timer()` says when `handle_timer(now)`
wants to be called next.

The four state machines follow the figures of RFC 3261 §17.1.1 (INVITE client),
§17.1.2 (non-INVITE client), §17.2.1 (INVITE server) and §17.2.2 (non-INVITE
server), with RFC 6026's "Accepted" state on both INVITE machines. Beyond §17 the
layer also does, because every TU would otherwise have to:

* retransmit a 2xx to INVITE on unreliable transports until its ACK arrives and
  report `AckTimeout` after 64*T1 without one (§13.3.1.4);
* send 100 Trying for an INVITE the TU has not answered within 200 ms (§17.2.1);
* give up on an INVITE client transaction stuck in Proceeding 64*T1 after the TU
  sent a CANCEL for it (§9.1), so that memory stays bounded.

Performance notes: transactions are found with one dict lookup on a tuple key.
Timers are `(deadline, txn, handler, generation)` entries in one FIFO per delay
(`_after`: every timer is set a fixed delay from now, and the delays are few), so
setting and firing one is O(1); a heap takes only what would break a FIFO's order.
A transaction's generation is bumped when a state change cancels its timers (and on
termination), which makes older entries stale; stale entries are skipped when
popped. Outgoing messages are serialized once and the bytes kept for retransmission.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from heapq import heappop, heappush
from itertools import count
from typing import Any, Final

from .message import Headers, ParseError, Request, Response, Via, make_response
from .tokens import token_hex

__all__ = [
    "Peer", "Timers", "ClientTransaction", "ServerTransaction", "TransactionLayer",
    "RequestReceived", "ResponseReceived", "TransactionTimeout", "TransportError",
    "AckTimeout", "Event", "make_cancel", "new_branch", "reply_peer", "server_key", "MAGIC_COOKIE", "OWN_PORT",
]

MAGIC_COOKIE: Final = "z9hG4bK"    # §8.1.1.7: branch values of RFC 3261 implementations
TRYING_DELAY: Final = 0.2          # §17.2.1: send 100 Trying if the TU has not answered by then
TIMER_D_UNRELIABLE: Final = 32.0   # §17.1.1.2: Timer D > 32 s on unreliable transports
_MAX_FIFOS: Final = 32             # distinct timer delays with a FIFO of their own (`_after`)

_RELIABLE: Final = frozenset({"tcp", "tls", "sctp", "ws", "wss"})
# `Peer.conn` of a datagram that came to a SIP worker's own UDP port (appliance/workers.py,
# Transports.listen_udp_own): the answers leave from that port again.
OWN_PORT: Final = -1


@dataclass(frozen=True, slots=True)
class Peer:
    """The other end of a message: transport, address and, on streams, the connection."""

    transport: str            # "udp" | "tcp" | "tls" (lowercase)
    host: str                 # IP literal without brackets
    port: int
    conn: int | None = None   # stream connection id (None: the transport picks or opens one)

    @property
    def reliable(self) -> bool:
        return self.transport in _RELIABLE


@dataclass(slots=True)
class Timers:
    """RFC 3261 Table 4 base values; the layer reads them once, at construction."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0


def new_branch() -> str:
    """A fresh, globally unique branch parameter (§8.1.1.7)."""
    return MAGIC_COOKIE + token_hex(8)


# -- transactions -----------------------------------------------------------------

class ClientTransaction:
    """One client transaction (§17.1): the request sent and where it went.

    `state` is one of "calling" (INVITE only), "trying" (non-INVITE only),
    "proceeding", "completed", "accepted" (INVITE only, RFC 6026), "terminated".
    After `TransactionLayer.release()` with a final response in, `request` is None.
    """

    __slots__ = ("id", "request", "peer", "state", "is_invite", "method", "user_data",
                 "_key", "_pkey", "_gen", "_interval", "_data", "_ack", "_reliable",
                 "_cancel_at")

    def __init__(self, id: int, request: Request, peer: Peer, method: str,
                 key: tuple, data: bytes) -> None:
        self.id = id
        self.request = request
        self.peer = peer
        self.method = method
        self.is_invite = method == "INVITE"
        self.state = "calling" if self.is_invite else "trying"
        self.user_data: Any = None
        self._key = key
        self._pkey = (peer.transport, peer.host, peer.port)
        self._gen = 0
        self._data = data                 # the request, serialized once
        self._ack: bytes | None = None    # ACK for a non-2xx final (INVITE)
        self._reliable = peer.reliable
        self._interval = 0.0
        self._cancel_at: float | None = None

    def __repr__(self) -> str:
        return f"<ClientTransaction #{self.id} {self.method} {self.state}>"


class ServerTransaction:
    """One server transaction (§17.2).

    `source` is where the request came from, `peer` where responses go
    (`TransactionLayer.response_peer`). `state` is one of "trying" (non-INVITE
    only), "proceeding", "completed", "confirmed" (INVITE only), "accepted"
    (INVITE only, RFC 6026), "terminated". For a CANCEL, `cancels` is the INVITE
    server transaction it matches (§9.2), or None. After `TransactionLayer.release()`
    (which a non-INVITE completing over UDP with no `user_data` gets by itself),
    `request` and `last_response` may be None: only the bytes it resends are kept.
    """

    __slots__ = ("id", "request", "source", "peer", "state", "is_invite", "method",
                 "cancels", "last_response", "user_data", "_key", "_index", "_pkey",
                 "_ack_key", "_gen", "_interval", "_data", "_acked", "_reliable")

    def __init__(self, id: int, request: Request, source: Peer, peer: Peer, method: str,
                 key: tuple, index: dict) -> None:
        self.id = id
        self.request = request
        self.source = source
        self.peer = peer
        self.method = method
        self.is_invite = method == "INVITE"
        self.state = "proceeding" if self.is_invite else "trying"
        self.cancels: ServerTransaction | None = None
        self.last_response: Response | None = None
        self.user_data: Any = None
        self._key = key
        self._index = index               # the dict `_key` lives in
        self._pkey = (peer.transport, peer.host, peer.port)
        self._ack_key: tuple | None = None
        self._gen = 0
        self._interval = 0.0
        self._data: bytes | None = None   # last response, serialized once
        self._acked = False
        self._reliable = source.reliable

    def __repr__(self) -> str:
        return f"<ServerTransaction #{self.id} {self.method} {self.state}>"


# -- events -------------------------------------------------------------------------

@dataclass(slots=True)
class RequestReceived:
    """A new request for the TU.

    `txn` is None for an ACK matching no INVITE server transaction awaiting it
    (the ACK for a 2xx, RFC 6026). For a CANCEL, `txn` is the CANCEL's own server
    transaction and `txn.cancels` the INVITE transaction it matches, or None.
    """

    txn: ServerTransaction | None
    request: Request
    source: Peer

    # Written out, not generated: compiled, a dataclass's own __init__ (made at run
    # time) is interpreted, and one of these is made for every message.
    def __init__(self, txn: ServerTransaction | None, request: Request, source: Peer) -> None:
        self.txn = txn
        self.request = request
        self.source = source


@dataclass(slots=True)
class ResponseReceived:
    """A response for the TU; `txn` None for a 2xx after Timer M or a stray response."""

    txn: ClientTransaction | None
    response: Response
    source: Peer

    def __init__(self, txn: ClientTransaction | None, response: Response, source: Peer) -> None:
        self.txn = txn  # written out, as RequestReceived's
        self.response = response
        self.source = source


@dataclass(slots=True)
class TransactionTimeout:
    """Timer B or F (no final response), or Timer H (no ACK for a non-2xx final)."""

    txn: ClientTransaction | ServerTransaction


@dataclass(slots=True)
class TransportError:
    """The transport failed towards the transaction's peer (§17.1.4, §17.2.4)."""

    txn: ClientTransaction | ServerTransaction


@dataclass(slots=True)
class AckTimeout:
    """A 2xx to INVITE was not ACKed within 64*T1 (§13.3.1.4): the TU sends BYE."""

    txn: ServerTransaction


Event = RequestReceived | ResponseReceived | TransactionTimeout | TransportError | AckTimeout

Txn = ClientTransaction | ServerTransaction
# Each timer handler takes the transaction kind it is armed for.
_Handler = Callable[["TransactionLayer", Any, float], None]


# What a transaction holds instead of its request once released (`release`); `request`
# stays typed Request, which the compiled layer (tools/build_native.py) enforces.
RELEASED: Final = Request("RELEASED", "sip:released.invalid")


# -- the layer ----------------------------------------------------------------------

class TransactionLayer:
    """All client and server transactions of one SIP endpoint."""

    __slots__ = ("timers", "_t1", "_t2", "_t4", "_t64", "_timer_d", "_clients", "_servers",
                 "_servers_2543", "_acks", "_by_peer", "_heap", "_seq", "_ids", "_out",
                 "_events", "_ended", "_fifos", "_queues", "dropped", "_wake", "_wake_known")

    def __init__(self, timers: Timers | None = None) -> None:
        self.timers = timers = timers if timers is not None else Timers()
        if not (timers.t1 > 0 and timers.t2 > 0 and timers.t4 >= 0):
            raise ValueError(f"invalid timer values {timers}")
        self._t1 = timers.t1
        self._t2 = timers.t2
        self._t4 = timers.t4
        self._t64 = 64 * timers.t1                               # Timers B, F, H, J, L, M
        self._timer_d = max(TIMER_D_UNRELIABLE, self._t64)
        self._clients: dict[tuple, ClientTransaction] = {}      # (branch, method)
        self._servers: dict[tuple, ServerTransaction] = {}      # (branch, host, port, method)
        self._servers_2543: dict[tuple, ServerTransaction] = {}  # §17.2.3 fallback keys
        self._acks: dict[tuple, ServerTransaction] = {}         # (Call-ID, CSeq, To tag) of 2xx
        self._by_peer: dict[tuple, dict[Txn, None]] = {}        # (transport, host, port)
        # Timers by delay (`_after`): a FIFO each, and the heap for the rest. A call's
        # transactions live on for 32 s after it ends (RFC 6026), so at 3,000 calls/s a
        # heap held ~10^5 entries and each timer cost a sift through cold memory.
        self._heap: list[tuple] = []
        self._fifos: dict[float, deque[tuple]] = {}
        self._queues: list[deque[tuple]] = []   # the FIFOs' deques, for the merge
        # wake_by's answer while _wake_known: a lower bound of get_timer's, kept by each
        # timer set and recomputed after handle_timer
        self._wake: float | None = None
        self._wake_known = False
        self._seq = count()
        self._ids = count(1)
        self._out: list[tuple[Peer, bytes]] = []
        self._events: deque[Event] = deque()
        self._ended: list[Txn] = []   # terminated since the events were last drained
        self.dropped = 0   # input dropped as unusable (metrics)

    # -- public API: output ---------------------------------------------------------
    def datagrams_to_send(self) -> list[tuple[Peer, bytes]]:
        """Everything queued for sending, oldest first; the queue is emptied."""
        out = self._out
        self._out = []
        return out

    def next_event(self) -> Event | None:
        """The next event for the TU; None once all are taken. Then the `user_data` of
        transactions that ended meanwhile is let go: no event can name them any more,
        and a TU object that points back at its transaction (a call at its INVITE) is
        then freed by reference counting instead of waiting for the cycle collector."""
        events = self._events
        if events:
            return events.popleft()
        ended = self._ended
        if ended:
            for txn in ended:
                txn.user_data = None
            ended.clear()
        return None

    def get_timer(self) -> float | None:
        """The earliest deadline at which `handle_timer` has work, or None."""
        heap = self._heap
        while heap:
            entry = heap[0]
            if entry[2]._gen == entry[4]:
                break
            heappop(heap)  # stale: its transaction changed state or ended
        best: float | None = heap[0][0] if heap else None
        for queue in self._queues:
            while queue:
                entry = queue[0]
                if entry[1]._gen == entry[3]:
                    when: float = entry[0]
                    if best is None or when < best:
                        best = when
                    break
                queue.popleft()
        return best

    def wake_by(self) -> float | None:
        """A time no later than get_timer's (None only if that is None): what a driver
        arms its clock for. get_timer scans every FIFO's head (popping stale ones), and
        a driver asks after each message it hands in (~16 per call, 30k instructions of
        a call's 1.2M, callgrind); this answer is kept and moved earlier by each timer
        set. A timer whose transaction moved on keeps it early, which costs a wake-up in
        which handle_timer finds nothing due; after handle_timer it is exact again."""
        if self._wake_known:
            return self._wake
        wake = self.get_timer()
        self._wake = wake
        self._wake_known = True
        return wake

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at `now`, in deadline order."""
        self._wake_known = False
        heap = self._heap
        queues = self._queues
        while True:
            first: deque[tuple] | None = None   # the FIFO whose head is due first
            due = 0.0
            for queue in queues:
                if queue and (first is None or queue[0][0] < due):
                    due = queue[0][0]
                    first = queue
            if heap and (first is None or heap[0][0] <= due):
                if heap[0][0] > now:
                    return
                _, _, txn, handler, gen = heappop(heap)
            elif first is not None and due <= now:
                _, txn, handler, gen = first.popleft()
            else:
                return
            if txn._gen == gen:
                handler(self, txn, now)

    def __len__(self) -> int:
        return len(self._clients) + len(self._servers) + len(self._servers_2543)

    @property
    def linger(self) -> float:
        """The longest a transaction lives on after its final response (Timers D, H, J,
        L, M): after that no event will name it."""
        return self._timer_d

    # -- public API: input ----------------------------------------------------------
    def receive(self, msg: Request | Response, source: Peer, now: float) -> None:
        """A parsed, validated message from `source`. Unusable input is dropped."""
        if isinstance(msg, Request):
            self._receive_request(msg, source, now)
        elif isinstance(msg, Response):
            self._receive_response(msg, source, now)
        else:
            self.dropped += 1

    def send_request(self, request: Request, peer: Peer, now: float) -> ClientTransaction:
        """Start a client transaction for `request` (whose top Via carries the branch)."""
        method = request.method
        if method == "ACK":
            raise ValueError("ACK creates no transaction: use send_stateless")
        try:
            branch = request.top_via.params.get("branch")
        except ParseError as e:
            raise ValueError(f"request has no usable Via: {e}") from None
        if not branch:
            raise ValueError("request's top Via has no branch")
        key = (branch, method)
        clients = self._clients
        if key in clients:
            raise ValueError(f"a {method} client transaction with branch {branch} exists")
        data = request.to_bytes()
        txn = ClientTransaction(next(self._ids), request, peer, method, key, data)
        clients[key] = txn
        self._index_peer(txn)
        self._out.append((peer, data))
        t1 = self._t1
        if txn.is_invite:
            if not txn._reliable:
                txn._interval = t1
                self._after(now, t1, txn, _timer_a)
            self._after(now, self._t64, txn, _timer_b)
        else:
            if not txn._reliable:
                txn._interval = t1
                self._after(now, t1, txn, _timer_e)
            self._after(now, self._t64, txn, _timer_f)
            if method == "CANCEL":
                self._cancel_sent(branch, now)
        return txn

    def respond(self, txn: ServerTransaction, response: Response, now: float) -> None:
        """Send `response` through `txn`, driving its state machine.

        Responses the state machine does not accept (a second final response, any
        response after termination) are discarded, as §17.2.1/§17.2.2 require.
        """
        status = response.status
        if status < 100:
            raise ValueError(f"invalid status {status}")
        state = txn.state
        if txn.is_invite:
            if state == "proceeding":
                self._send_response(txn, response)
                if status < 200:
                    return
                txn._gen += 1   # cancels the 100 Trying timer
                if status < 300:
                    self._enter_accepted(txn, response, now)
                else:
                    txn.state = "completed"
                    if not txn._reliable:
                        txn._interval = self._t1
                        self._after(now, self._t1, txn, _timer_g)
                    self._after(now, self._t64, txn, _timer_h)
            elif state == "accepted" and status < 300 and status >= 200:
                # RFC 6026 §7.1: a 2xx from the TU in Accepted is sent (and becomes
                # the one retransmitted).
                self._send_response(txn, response)
        elif state == "trying" or state == "proceeding":
            self._send_response(txn, response)
            if status < 200:
                txn.state = "proceeding"
                return
            txn.state = "completed"
            if txn._reliable:
                self._terminate(txn)   # Timer J = 0
            else:
                self._after(now, self._t64, txn, _timer_j)
                if txn.user_data is None:
                    # A registrar's 10,000 phones would otherwise keep 32 s of parsed
                    # REGISTERs and 200s in memory.
                    self.release(txn)

    def respond_stateless(self, txn: ServerTransaction, response: Response) -> None:
        """Send a final `response` as a stateless UAS (§8.2.7) and end `txn` at once:
        no retransmission of the response, a retransmitted request is answered anew, an
        ACK is ignored. RFC 3261 wants digest challenges answered this way, so that a
        flood of unauthenticated requests leaves no transaction state behind."""
        if response.status < 200:
            raise ValueError("a stateless UAS sends no provisional responses")
        if txn.state not in ("trying", "proceeding"):
            return
        self._send_response(txn, response)
        self._terminate(txn)
        self.release(txn)

    def forget(self, txn: ServerTransaction) -> None:
        """End a server transaction that has sent nothing, as if its request had never
        come: another process answers it (a SIP worker handing a call to the daemon).
        A retransmission of the request starts a new transaction."""
        if txn.state in ("trying", "proceeding") and txn.last_response is None:
            self._terminate(txn)
            self.release(txn)

    def release(self, txn: Txn) -> None:
        """The TU is done with `txn`: drop its `user_data` and, once the final response
        is out (or in), the parsed messages. What the layer still does until the
        transaction ends (resend the final response or the ACK, absorb
        retransmissions, match the ACK of a 2xx) needs only the bytes and keys it
        keeps; RFC 2543 INVITEs keep theirs, their ACK is matched by the response's tag."""
        txn.user_data = None
        state = txn.state
        if state == "trying" or state == "proceeding" or state == "calling":
            return
        if isinstance(txn, ServerTransaction):
            if txn.is_invite and txn._index is not self._servers:
                return
            txn.last_response = None
        txn.request = RELEASED

    def ack_of_2xx(self, via: Via, call_id: str, cseq: int, to_tag: str) -> bool:
        """What receiving an ACK with top Via `via` does here when no INVITE server
        transaction has its branch: the 2xx it acknowledges (by Call-ID, CSeq number and
        To tag) stops being retransmitted (§13.3.1.4). False, with nothing done: one has
        it, or the branch is no RFC 3261 one (§17.2.3); `receive` must judge the ACK."""
        key = server_key(via, "INVITE")
        if key is None or key in self._servers:
            return False
        txn = self._acks.get((call_id, cseq, to_tag))
        if txn is not None:
            txn._acked = True
        return True

    def has_server(self, key: tuple) -> bool:
        """Whether a server transaction with this `server_key` exists: a request with it
        is a retransmission."""
        return key in self._servers

    def answered(self, key: tuple, source: Peer, peer: Peer, data: bytes, now: float) -> None:
        """A non-INVITE request (`server_key` `key`) that the TU answered
        with the final response `data` without a parsed request (the registrar's express
        path): sent, and the transaction kept Completed as `respond` then `release` keep
        it, the response bytes only, to answer retransmissions until Timer J (§17.2.2)."""
        txn = ServerTransaction(next(self._ids), RELEASED, source, peer, key[3], key,
                                self._servers)
        txn.state = "completed"
        txn._data = data
        self._servers[key] = txn
        self._out.append((peer, data))
        if txn._reliable:
            self._terminate(txn)   # Timer J = 0
        else:
            # Not indexed by peer: `transport_error` has nothing to tell about it. Over
            # UDP it comes only from a send with no socket of the peer's family, and
            # the response has gone out already; an answer to a retransmission that
            # fails so is lost as a datagram would be. (The index held every answered
            # REGISTER of SIPp's one address, ~480,000 at 15,000/s, a dict whose
            # inserts took 1.5% of the daemon's CPU: perf.)
            self._after(now, self._t64, txn, _timer_j)

    def send_bytes(self, peer: Peer, data: bytes) -> None:
        """Queue a serialized message outside any transaction (a stateless UAS's answer)."""
        self._out.append((peer, data))

    def send_stateless(self, msg: Request | Response, peer: Peer) -> None:
        """Queue a message outside any transaction (ACK for 2xx, stray replies)."""
        self._out.append((peer, msg.to_bytes()))

    def transport_error(self, peer: Peer, now: float) -> None:
        """The transport failed towards `peer`: its transactions end (§17.1.4, §17.2.4).

        A transaction matches when transport, host and port are equal and the
        connection ids are equal or either is None. The TU gets `TransportError`
        for each, except for client transactions that already delivered a final
        response (Completed, Accepted) and INVITE server ones already Confirmed.
        """
        bucket = self._by_peer.get((peer.transport, peer.host, peer.port))
        if not bucket:
            return
        conn = peer.conn
        for txn in list(bucket):
            tconn = txn.peer.conn
            if conn is not None and tconn is not None and tconn != conn:
                continue
            state = txn.state
            quiet = state == "confirmed" or (
                isinstance(txn, ClientTransaction) and state in ("completed", "accepted"))
            if not quiet:
                self._events.append(TransportError(txn))
            self._terminate(txn)

    def response_peer(self, request: Request, source: Peer) -> Peer:
        """Where responses to `request` received from `source` go (§18.2.2, RFC 3581).

        Reliable transports: back on the same connection. Unreliable: to `maddr`
        if the top Via has one (RFC 3581 §4 gives maddr precedence over rport);
        with `rport`, to the source address and port; otherwise to the source
        address and the sent-by port (5060 by default).
        """
        if source.transport in _RELIABLE:
            return source
        return reply_peer(request.top_via, source)

    def find_server(self, request: Request) -> ServerTransaction | None:
        """The server transaction `request` matches (§17.2.3).

        For an ACK, the INVITE transaction it acknowledges; for a CANCEL, the
        INVITE transaction it would cancel (§9.2), not the CANCEL's own.
        """
        try:
            method = request.method
            if method == "ACK":
                return self._match_ack(request)
            if method == "CANCEL":
                method = "INVITE"
            return self._match(request, method)[2]
        except (ParseError, ValueError):
            return None

    # -- matching -------------------------------------------------------------------
    def _match(self, req: Request, method: str) -> tuple[dict, tuple, ServerTransaction | None]:
        """(index, key, transaction) for `req` matched as if its method were `method`."""
        via = req.top_via
        key: tuple | None = server_key(via, method)
        if key is not None:
            index = self._servers
        else:
            # RFC 2543 peers (§17.2.3): Request-URI, To tag, From tag, Call-ID,
            # CSeq number, top Via, plus the method to tell INVITE/CANCEL/others apart.
            index = self._servers_2543
            key = (req.uri, req.to.tag, req.from_.tag, req.call_id, req.cseq[0], method,
                   str(via))
        return index, key, index.get(key)

    def _match_ack(self, ack: Request) -> ServerTransaction | None:
        """The INVITE server transaction an ACK belongs to (§17.2.3), if any."""
        via = ack.top_via
        key = server_key(via, "INVITE")
        if key is not None:
            return self._servers.get(key)
        # RFC 2543: the ACK's To tag is the tag of the response the transaction sent;
        # the INVITE had no To tag (initial) or the same one (re-INVITE).
        index = self._servers_2543
        to_tag = ack.to.tag
        rest = (ack.from_.tag, ack.call_id, ack.cseq[0], "INVITE", str(via))
        txn = index.get((ack.uri, None, *rest))
        if txn is not None and txn.last_response is not None:
            try:
                if txn.last_response.to.tag == to_tag:
                    return txn
            except ParseError:
                pass
        if to_tag is not None:
            return index.get((ack.uri, to_tag, *rest))
        return None

    # -- requests -------------------------------------------------------------------
    def _receive_request(self, req: Request, source: Peer, now: float) -> None:
        method = req.method
        try:
            if method == "ACK":
                self._receive_ack(req, source, now)
                return
            index, key, txn = self._match(req, method)
            if txn is not None:
                # A retransmission (§17.2.1, §17.2.2): re-send the last response in
                # Proceeding (a provisional) and Completed (the final); absorb otherwise.
                state = txn.state
                if (state == "proceeding" or state == "completed") and txn._data is not None:
                    self._out.append((txn.peer, txn._data))
                return
            peer = self.response_peer(req, source)
            cancels = self._match(req, "INVITE")[2] if method == "CANCEL" else None
        except (ParseError, ValueError):
            self.dropped += 1
            return
        txn = ServerTransaction(next(self._ids), req, source, peer, method, key, index)
        txn.cancels = cancels
        index[key] = txn
        self._index_peer(txn)
        if txn.is_invite:
            self._after(now, TRYING_DELAY, txn, _timer_trying)
        self._events.append(RequestReceived(txn, req, source))

    def _receive_ack(self, ack: Request, source: Peer, now: float) -> None:
        txn = self._match_ack(ack)
        if txn is not None:
            state = txn.state
            if state == "completed":
                # ACK for our non-2xx final: Confirmed, absorbing further ACKs.
                txn.state = "confirmed"
                txn._gen += 1   # stops Timers G and H
                if txn._reliable:
                    self._terminate(txn)   # Timer I = 0
                else:
                    self._after(now, self._t4, txn, _timer_i)
                return
            if state != "accepted":
                return   # Confirmed: absorbed; Proceeding: an ACK for nothing we sent
        else:
            tag = ack.to.tag
            txn = self._acks.get((ack.call_id, ack.cseq[0], tag))
        if txn is not None:
            # The ACK for our 2xx (§13.3.1.4): stop retransmitting (`_timer_2xx` reads
            # the flag). Timer L, set with the 2xx, still keeps the transaction for
            # INVITE retransmissions (RFC 6026).
            txn._acked = True
        self._events.append(RequestReceived(None, ack, source))

    # -- responses ------------------------------------------------------------------
    def _receive_response(self, resp: Response, source: Peer, now: float) -> None:
        try:
            key = (resp.top_via.params.get("branch"), resp.cseq[1])
        except (ParseError, ValueError):
            self.dropped += 1
            return
        txn = self._clients.get(key)
        events = self._events
        if txn is None:
            events.append(ResponseReceived(None, resp, source))
            return
        status = resp.status
        state = txn.state
        if txn.is_invite:
            if state == "calling" or state == "proceeding":
                if status < 200:
                    if state == "calling":
                        txn.state = "proceeding"
                        txn._gen += 1   # stops Timers A and B
                        if txn._cancel_at is not None:
                            self._schedule(txn._cancel_at, txn, _timer_cancelled)
                    events.append(ResponseReceived(txn, resp, source))
                elif status < 300:
                    txn.state = "accepted"  # RFC 6026 §7.2
                    txn._gen += 1
                    self._after(now, self._t64, txn, _timer_m)
                    events.append(ResponseReceived(txn, resp, source))
                else:
                    txn.state = "completed"
                    txn._gen += 1
                    try:
                        ack = _make_ack(txn.request, resp).to_bytes()
                    except (ParseError, ValueError, IndexError):
                        ack = None
                    txn._ack = ack
                    if ack is not None:
                        self._out.append((txn.peer, ack))
                    events.append(ResponseReceived(txn, resp, source))
                    if txn._reliable:
                        self._terminate(txn)   # Timer D = 0
                    else:
                        self._after(now, self._timer_d, txn, _timer_d)
            elif state == "completed":
                if status >= 300 and txn._ack is not None:
                    self._out.append((txn.peer, txn._ack))   # re-send ACK, absorb
            elif state == "accepted" and 200 <= status < 300:
                events.append(ResponseReceived(txn, resp, source))
        elif state == "trying" or state == "proceeding":
            if status < 200:
                txn.state = "proceeding"
                events.append(ResponseReceived(txn, resp, source))
                return
            txn.state = "completed"
            txn._gen += 1   # stops Timers E and F
            events.append(ResponseReceived(txn, resp, source))
            if txn._reliable:
                self._terminate(txn)   # Timer K = 0
            else:
                self._after(now, self._t4, txn, _timer_k)
        # non-INVITE Completed: retransmitted finals are absorbed

    # -- helpers --------------------------------------------------------------------
    def _schedule(self, when: float, txn: Txn, handler: _Handler) -> None:
        heappush(self._heap, (when, next(self._seq), txn, handler, txn._gen))
        self._earlier_wake(when)

    def _earlier_wake(self, when: float) -> None:
        if self._wake_known:
            wake = self._wake
            if wake is None or when < wake:
                self._wake = when

    def _after(self, now: float, delay: float, txn: Txn, handler: _Handler) -> None:
        """A timer `delay` from `now`. The delays are few (200 ms; T1 doubled up to T2;
        T4; 64*T1; Timer D) and the timers of one delay expire in the order they were
        set, so each delay has a FIFO. A timer that would break its FIFO's order (a
        caller whose `now` went back) goes to the heap, as do delays beyond
        `_MAX_FIFOS` (odd Timers values)."""
        when = now + delay
        queue = self._fifos.get(delay)
        if queue is None:
            if len(self._fifos) >= _MAX_FIFOS:
                self._schedule(when, txn, handler)
                return
            queue = self._fifos[delay] = deque()
            self._queues.append(queue)
        elif queue and queue[-1][0] > when:
            self._schedule(when, txn, handler)
            return
        queue.append((when, txn, handler, txn._gen))
        self._earlier_wake(when)

    def _index_peer(self, txn: Txn) -> None:
        bucket = self._by_peer.get(txn._pkey)
        if bucket is None:
            self._by_peer[txn._pkey] = {txn: None}
        else:
            bucket[txn] = None

    def _send_response(self, txn: ServerTransaction, response: Response) -> None:
        data = response.to_bytes()
        txn.last_response = response
        txn._data = data
        self._out.append((txn.peer, data))

    def _enter_accepted(self, txn: ServerTransaction, response: Response, now: float) -> None:
        """2xx to INVITE (RFC 6026 §7.1): Timer L, and 2xx retransmission until ACKed."""
        txn.state = "accepted"
        request = txn.request
        try:
            tag = response.to.tag
        except ParseError:
            tag = None
        ack_key = (request.call_id, request.cseq[0], tag)
        txn._ack_key = ack_key
        self._acks[ack_key] = txn
        if not txn._reliable:
            txn._interval = self._t1
            self._after(now, self._t1, txn, _timer_2xx)
        self._after(now, self._t64, txn, _timer_l)

    def _cancel_sent(self, branch: str, now: float) -> None:
        """§9.1: an INVITE still without a final response 64*T1 after its CANCEL is gone."""
        invite = self._clients.get((branch, "INVITE"))
        if invite is None or invite._cancel_at is not None:
            return
        invite._cancel_at = now + self._t64
        if invite.state == "proceeding":
            self._schedule(invite._cancel_at, invite, _timer_cancelled)
        # in Calling, Timer B runs out first; entering Proceeding schedules the guard

    def _terminate(self, txn: Txn) -> None:
        txn.state = "terminated"
        txn._gen += 1
        self._ended.append(txn)
        if isinstance(txn, ServerTransaction):
            index = txn._index
            if index.get(txn._key) is txn:
                del index[txn._key]
            ack_key = txn._ack_key
            if ack_key is not None and self._acks.get(ack_key) is txn:
                del self._acks[ack_key]
            txn.cancels = None   # do not keep the INVITE's transaction alive
        elif self._clients.get(txn._key) is txn:
            del self._clients[txn._key]
        bucket = self._by_peer.get(txn._pkey)
        if bucket is not None:
            bucket.pop(txn, None)
            if not bucket:
                del self._by_peer[txn._pkey]


def server_key(via: Via, method: str) -> tuple | None:
    """The server transaction key of a request with top Via `via` (§17.2.3): branch,
    sent-by host in lower case, port, method; None for a branch without the magic cookie
    (RFC 2543, matched by the request's other fields)."""
    branch = via.params.get("branch")
    if branch is None or not branch.startswith(MAGIC_COOKIE):
        return None
    return (branch, via.host.lower(), via.port, method)


def reply_peer(via: Via, source: Peer) -> Peer:
    """Where responses go over an unreliable transport (§18.2.2, RFC 3581 §4) for a
    request from `source` whose top Via is `via`: `maddr`, else with `rport` the source,
    else the source address and the sent-by port."""
    params = via.params
    maddr = params.get("maddr")
    if maddr:
        host = maddr[1:-1] if maddr.startswith("[") else maddr
    elif "rport" in params:
        return source
    else:
        host = source.host
    port = via.port or (5061 if source.transport == "tls" else 5060)
    if host == source.host and port == source.port:
        return source
    return Peer(source.transport, host, port, source.conn)


# -- timer handlers (module functions: heap entries hold no closures) -------------

def _timer_a(layer: TransactionLayer, txn: ClientTransaction, now: float) -> None:
    """INVITE client, Calling: retransmit, double the interval (§17.1.1.2)."""
    layer._out.append((txn.peer, txn._data))
    txn._interval *= 2
    layer._after(now, txn._interval, txn, _timer_a)


def _timer_b(layer: TransactionLayer, txn: ClientTransaction, now: float) -> None:
    layer._events.append(TransactionTimeout(txn))
    layer._terminate(txn)


def _timer_e(layer: TransactionLayer, txn: ClientTransaction, now: float) -> None:
    """non-INVITE client: retransmit; MIN(2*interval, T2) in Trying, T2 in Proceeding."""
    layer._out.append((txn.peer, txn._data))
    if txn.state == "proceeding":
        txn._interval = layer._t2
    else:
        txn._interval = min(2 * txn._interval, layer._t2)
    layer._after(now, txn._interval, txn, _timer_e)


def _timer_f(layer: TransactionLayer, txn: ClientTransaction, now: float) -> None:
    layer._events.append(TransactionTimeout(txn))
    layer._terminate(txn)


def _resend_capped(layer: TransactionLayer, txn: Txn, now: float, handler: _Handler) -> None:
    """Send the kept bytes again and re-arm `handler` after MIN(2*interval, T2)."""
    data = txn._data
    if data is not None:
        layer._out.append((txn.peer, data))
    txn._interval = min(2 * txn._interval, layer._t2)
    layer._after(now, txn._interval, txn, handler)


def _timer_g(layer: TransactionLayer, txn: ServerTransaction, now: float) -> None:
    """INVITE server, Completed: retransmit the final, MIN(2*interval, T2)."""
    _resend_capped(layer, txn, now, _timer_g)


def _timer_h(layer: TransactionLayer, txn: ServerTransaction, now: float) -> None:
    layer._events.append(TransactionTimeout(txn))
    layer._terminate(txn)


def _timer_2xx(layer: TransactionLayer, txn: ServerTransaction, now: float) -> None:
    """INVITE server, Accepted: retransmit the 2xx until ACKed (§13.3.1.4)."""
    if not txn._acked:
        _resend_capped(layer, txn, now, _timer_2xx)


def _timer_l(layer: TransactionLayer, txn: ServerTransaction, now: float) -> None:
    if not txn._acked:
        layer._events.append(AckTimeout(txn))
    layer._terminate(txn)


def _timer_trying(layer: TransactionLayer, txn: ServerTransaction, now: float) -> None:
    """§17.2.1: the TU has not answered the INVITE within 200 ms: send 100 Trying."""
    if txn.last_response is None and txn.state == "proceeding":
        layer._send_response(txn, make_response(txn.request, 100))


def _timer_cancelled(layer: TransactionLayer, txn: ClientTransaction, now: float) -> None:
    """§9.1: no final response 64*T1 after the CANCEL: the INVITE is given up."""
    layer._events.append(TransactionTimeout(txn))
    layer._terminate(txn)


def _end(layer: TransactionLayer, txn: Txn, now: float) -> None:
    """Timers D, I, J, K, M: the absorbing period is over."""
    layer._terminate(txn)


_timer_d = _timer_i = _timer_j = _timer_k = _timer_m = _end


# -- request construction -------------------------------------------------------------

def _copy_base(request: Request, method: str) -> Headers:
    """Via (the top one only), Route, Max-Forwards, From and Call-ID for ACK/CANCEL."""
    h = request.headers
    vias = h.get_all("via")
    if not vias:
        raise ValueError("request has no Via")
    out = Headers()
    out.add("via", vias[0])
    for route in h.get_all("route"):
        out.add("route", route)
    out.add("max-forwards", "70")
    for name in ("from", "to", "call-id"):
        value = h.get(name)
        if value is None:
            raise ValueError(f"request has no {name}")
        out.add(name, value)
    out.add("cseq", f"{request.cseq[0]} {method}")
    return out


def _make_ack(invite: Request, response: Response) -> Request:
    """§17.1.1.3: the ACK for a non-2xx final, built by the transaction itself."""
    headers = _copy_base(invite, "ACK")
    to = response.headers.get("to")
    if to is not None:
        headers.set("to", to)   # the response's To, with the UAS's tag
    return Request("ACK", invite.uri, headers)


def make_cancel(invite: Request) -> Request:
    """§9.1: a CANCEL for `invite` (same Request-URI, Call-ID, From, To, CSeq number,
    top Via and Route set; Max-Forwards 70)."""
    return Request("CANCEL", invite.uri, _copy_base(invite, "CANCEL"))
