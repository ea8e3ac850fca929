"""Dialogs (RFC 3261 §12), sans-IO: state and in-dialog request construction."""

from __future__ import annotations

from .message import Headers, NameAddr, ParseError, Request, Response, parse_name_addr
from .tokens import token_hex
from .transaction import Peer

__all__ = ["Dialog", "new_tag", "new_call_id"]


def new_tag() -> str:
    return token_hex(6)


def new_call_id(host: str) -> str:
    return f"{token_hex(10)}@{host}"


class Dialog:
    """One side's view of a dialog: IDs, sequence numbers, target and route set."""

    __slots__ = ("call_id", "local_tag", "remote_tag", "local_uri", "remote_uri",
                 "local_seq", "remote_seq", "remote_target", "route_set", "secure",
                 "peer", "confirmed")

    def __init__(self, call_id: str, local_tag: str, remote_tag: str, local_uri: NameAddr,
                 remote_uri: NameAddr, local_seq: int, remote_seq: int | None,
                 remote_target: str, route_set: list[str], peer: Peer,
                 secure: bool = False) -> None:
        self.call_id = call_id
        self.local_tag = local_tag
        self.remote_tag = remote_tag
        self.local_uri = local_uri      # without tag
        self.remote_uri = remote_uri    # without tag
        self.local_seq = local_seq
        self.remote_seq = remote_seq
        self.remote_target = remote_target
        self.route_set = route_set
        self.secure = secure
        self.peer = peer
        self.confirmed = False

    @property
    def id(self) -> tuple[str, str, str]:
        return self.call_id, self.local_tag, self.remote_tag

    # as_uas and as_uac call Dialog(...) with positional arguments: `cls(name=...)` in a
    # classmethod went through Python's generic call with keywords (10-15k instructions
    # each under mypyc, callgrind). The order is __init__'s.
    @staticmethod
    def as_uas(request: Request, response: Response, source: Peer) -> Dialog:
        """§12.1.1: built from the request received and the response we sent."""
        frm, to = request.from_, response.to
        contacts = request.contacts
        if not contacts or to.tag is None:
            raise ParseError("Cannot create a dialog without Contact and To tag")
        return Dialog(request.call_id, to.tag, frm.tag or "", NameAddr(to.uri, to.display),
                      NameAddr(frm.uri, frm.display), 0, request.cseq[0], contacts[0].uri,
                      request.headers.get_all("record-route"), source,
                      request.uri.startswith("sips:"))

    @staticmethod
    def as_uac(request: Request, response: Response, peer: Peer) -> Dialog:
        """§12.1.2: built from the request we sent and the response received."""
        frm, to = request.from_, response.to
        contacts = response.contacts
        target = contacts[0].uri if contacts else request.uri
        return Dialog(request.call_id, frm.tag or "", to.tag or "", NameAddr(frm.uri, frm.display),
                      NameAddr(to.uri, to.display), request.cseq[0], None, target,
                      list(reversed(response.headers.get_all("record-route"))), peer,
                      request.uri.startswith("sips:"))

    def update_target(self, msg: Request | Response) -> None:
        """§12.2: a target refresh (re-INVITE, UPDATE, their 2xx) replaces the target."""
        contacts = msg.headers.get_all("contact")
        if contacts:
            try:
                self.remote_target = parse_name_addr(contacts[0], "Contact").uri
            except ParseError:
                pass

    def check_remote_cseq(self, request: Request) -> bool:
        """§12.2.2: a lower CSeq than the last is out of order (answer 500)."""
        seq = request.cseq[0]
        if request.method in ("ACK", "CANCEL"):
            return True
        if self.remote_seq is not None and seq <= self.remote_seq:
            return False
        self.remote_seq = seq
        return True

    def create_request(self, method: str, contact: str, via: str,
                       cseq: int | None = None) -> Request:
        """§12.2.1.1: an in-dialog request. ACK and CANCEL pass the INVITE's CSeq."""
        if cseq is None:
            self.local_seq += 1
            cseq = self.local_seq
        items = [("via", via)]  # Headers' entries, keys as Headers.add makes them
        uri = self.remote_target
        routes = self.route_set
        if routes and ";lr" not in routes[0]:
            # Strict routing (§12.2.1.1): the first route becomes the Request-URI.
            first = parse_name_addr(routes[0], "Route")
            uri = first.uri
            routes = routes[1:] + [f"<{self.remote_target}>"]
        for r in routes:
            items.append(("route", r))
        items.append(("max-forwards", "70"))
        items.append(("from", f"{self.local_uri};tag={self.local_tag}"))
        items.append(("to", f"{self.remote_uri};tag={self.remote_tag}"))
        items.append(("call-id", self.call_id))
        items.append(("cseq", f"{cseq} {method}"))
        if method not in ("ACK", "CANCEL", "BYE"):
            items.append(("contact", contact))
        return Request(method, uri, Headers(items))
