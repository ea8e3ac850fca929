"""The state bus: a small typed publish/subscribe between call logic and displays.

The PBX publishes what happened; the web page, the front panel and the call
record writer subscribe. Publishers never import subscribers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger("appliance.bus")

E = TypeVar("E")


@dataclass(frozen=True, slots=True)
class ExtensionRegistered:
    extension: str
    contact: str
    expires: int


@dataclass(frozen=True, slots=True)
class ExtensionUnregistered:
    extension: str
    contact: str
    reason: str  # "unregistered" | "expired"


@dataclass(frozen=True, slots=True)
class CallRinging:
    call_id: str
    caller: str
    callee: str


@dataclass(frozen=True, slots=True)
class CallAnswered:
    call_id: str
    caller: str
    callee: str


@dataclass(frozen=True, slots=True)
class CallEnded:
    call_id: str
    caller: str
    callee: str
    status: int          # final status of the INVITE (200 for an answered call)
    reason: str          # "hangup", "cancelled", "busy", "no-answer", "unavailable", ...
    duration: float      # seconds of talk (0 when never answered)
    # per leg ("a" caller side, "b" callee side) when the box relayed the audio:
    # {"packets", "lost", "jitter_ms", "remote": {... from the peer's RTCP}}
    media: dict | None = None


@dataclass(frozen=True, slots=True)
class DtmfReceived:
    call_id: str
    leg: str             # "a" (caller) or "b" (callee)
    digit: str
    method: str          # "rfc4733" or "info"


@dataclass(frozen=True, slots=True)
class RoomJoined:
    room: str
    call_id: str
    caller: str
    count: int           # participants in the room now, this one included


@dataclass(frozen=True, slots=True)
class RoomLeft:
    room: str
    call_id: str
    caller: str
    count: int           # participants left in the room
    reason: str          # "hangup", "media-timeout", "shutdown", "ack-timeout", ...
    duration: float      # seconds in the room


@dataclass(frozen=True, slots=True)
class RoomRefused:
    room: str
    call_id: str
    caller: str
    status: int          # 486 (room full), or 0 when hung up after wrong PINs
    reason: str          # "full", "wrong-pin", "no-pin", ...


class Bus:
    """Synchronous fan-out; a failing subscriber is logged, never propagated."""

    def __init__(self) -> None:
        self._subs: dict[type, list[Callable[[Any], None]]] = {}
        self._all: list[Callable[[Any], None]] = []

    def subscribe(self, kind: type[E] | None, callback: Callable[[E], None]) -> None:
        """Receive events of `kind`, or every event when `kind` is None."""
        if kind is None:
            self._all.append(callback)
        else:
            self._subs.setdefault(kind, []).append(callback)

    def wants(self, kind: type) -> bool:
        """Whether an event of `kind` would reach anyone: a publisher on a hot path asks
        first and builds nothing for nobody (a call's three events, each a frozen
        dataclass and a fan-out, were ~15k of its 1.2M instructions: an estimate from
        callgrind, docs/performance.md)."""
        return bool(self._all) or kind in self._subs

    def publish(self, event: object) -> None:
        for cb in (*self._subs.get(type(event), ()), *self._all):
            try:
                cb(event)
            except Exception:
                log.exception("subscriber failed on %s", type(event).__name__)
