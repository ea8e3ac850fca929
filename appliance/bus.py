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

    def publish(self, event: object) -> None:
        for cb in (*self._subs.get(type(event), ()), *self._all):
            try:
                cb(event)
            except Exception:
                log.exception("subscriber failed on %s", type(event).__name__)
