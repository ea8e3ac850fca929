"""The location service (RFC 3261 §10.2, §10.3): extension → contact bindings.

Bindings remember the flow a phone registered over (transport, source address
and stream connection) so that calls reach phones behind NAT and reuse their
TCP/TLS connection. They are kept in memory and written to `registrations.json`
(atomically) shortly after a change, so they survive a restart; expiry times
are wall-clock for the same reason.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ..sip.transaction import Peer
from ..store.atomic import atomic_write

log = logging.getLogger("appliance.location")

# seconds a refresh may wait before registrations.json is rewritten
REFRESH_SAVE_DELAY: Final = 30.0


@dataclass(slots=True)
class Binding:
    contact: str             # the Contact URI as the phone sent it
    expires_at: float        # wall-clock seconds
    call_id: str
    cseq: int
    peer: Peer               # the flow the REGISTER arrived over
    q: float = 1.0
    path: list[str] = field(default_factory=list)  # RFC 3327 Path, used as Route
    user_agent: str = ""

    # Written out, not generated: compiled, the dataclass's own __init__ (made at run
    # time) would be interpreted, for every REGISTER.
    def __init__(self, contact: str, expires_at: float, call_id: str, cseq: int, peer: Peer,
                 q: float = 1.0, path: list[str] | None = None, user_agent: str = "") -> None:
        self.contact = contact
        self.expires_at = expires_at
        self.call_id = call_id
        self.cseq = cseq
        self.peer = peer
        self.q = q
        self.path = [] if path is None else path
        self.user_agent = user_agent

    def expires_in(self, now: float) -> int:
        return max(0, int(round(self.expires_at - now)))

    def to_json(self) -> dict:
        p = self.peer
        return {"contact": self.contact, "expires_at": self.expires_at, "call_id": self.call_id,
                "cseq": self.cseq, "transport": p.transport, "host": p.host, "port": p.port,
                "q": self.q, "path": self.path, "user_agent": self.user_agent}

    @classmethod
    def from_json(cls, d: dict) -> Binding:
        return cls(d["contact"], float(d["expires_at"]), d["call_id"], int(d["cseq"]),
                   Peer(d["transport"], d["host"], int(d["port"])), float(d.get("q", 1.0)),
                   list(d.get("path", [])), d.get("user_agent", ""))


class Location:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._bindings: dict[str, dict[str, Binding]] = {}
        self.dirty = False       # a binding came, went or moved: save within a second
        # Told of every put/remove (not of expiry): SIP workers keep in step by it.
        self.on_change: Callable[[list[Any]], None] | None = None
        self.refreshed = False   # only refreshes since the last save: they can wait
        self._saved_at = time.monotonic()

    def needs_save(self) -> bool:
        """Whether the daemon's once-a-second housekeeping should save now. A refresh
        that is not saved yet costs nothing on a restart: the binding loaded back is
        still valid until its previous expiry, and phones refresh well before that.
        Rewriting 10,000 bindings every second for refreshes alone would not pay."""
        return self.dirty or (self.refreshed
                              and time.monotonic() - self._saved_at >= REFRESH_SAVE_DELAY)

    def __len__(self) -> int:
        return sum(len(b) for b in self._bindings.values())

    def bindings(self, aor: str, now: float) -> list[Binding]:
        """Live bindings of an extension, highest q first (expired ones dropped)."""
        found = self._bindings.get(aor)
        if not found:
            return []
        live = [b for b in found.values() if b.expires_at > now]
        if len(live) != len(found):
            for key in [k for k, b in found.items() if b.expires_at <= now]:
                del found[key]
            self.dirty = True
        if len(live) > 1:
            live.sort(key=lambda b: -b.q)
        return live

    def get(self, aor: str, contact: str) -> Binding | None:
        return self._bindings.get(aor, {}).get(contact)

    def put(self, aor: str, binding: Binding) -> None:
        found = self._bindings.setdefault(aor, {})
        old = found.get(binding.contact)
        found[binding.contact] = binding
        if (old is not None and (old.peer is binding.peer or old.peer == binding.peer)
                and old.q == binding.q
                and old.path == binding.path and old.user_agent == binding.user_agent):
            self.refreshed = True  # a refresh: only expiry, Call-ID and CSeq moved
            kind = "ref"
        else:
            self.dirty = True
            kind = "put"
        if self.on_change is not None:
            self.on_change([kind, aor, binding])

    def refresh(self, aor: str, contact: str, expires_at: float, call_id: str,
                cseq: int) -> None:
        """A refresh another process took (appliance/workers.py); unknown bindings (gone
        since) are left alone."""
        b = self._bindings.get(aor, {}).get(contact)
        if b is None:
            return
        b.expires_at, b.call_id, b.cseq = expires_at, call_id, cseq
        self.refreshed = True
        if self.on_change is not None:
            self.on_change(["ref", aor, b])

    def remove(self, aor: str, contact: str) -> Binding | None:
        found = self._bindings.get(aor)
        if not found:
            return None
        b = found.pop(contact, None)
        if not found:
            del self._bindings[aor]
        self.dirty = True
        if b is not None and self.on_change is not None:
            self.on_change(["del", aor, contact])
        return b

    def remove_all(self, aor: str) -> list[Binding]:
        self.dirty = True
        if self.on_change is not None:
            self.on_change(["clr", aor])
        return list(self._bindings.pop(aor, {}).values())

    def aors(self) -> list[str]:
        return list(self._bindings)

    def expire(self, now: float) -> list[tuple[str, Binding]]:
        """Drop expired bindings; returns what was dropped."""
        gone: list[tuple[str, Binding]] = []
        for aor in list(self._bindings):
            found = self._bindings[aor]
            for key in [k for k, b in found.items() if b.expires_at <= now]:
                gone.append((aor, found.pop(key)))
            if not found:
                del self._bindings[aor]
        if gone:
            self.dirty = True
        return gone

    # -- persistence ----------------------------------------------------------
    def snapshot(self) -> bytes:
        self.dirty = self.refreshed = False
        self._saved_at = time.monotonic()
        data = {aor: [b.to_json() for b in found.values()]
                for aor, found in self._bindings.items()}
        return json.dumps({"version": 1, "bindings": data}, separators=(",", ":")).encode()

    def save(self, data: bytes | None = None) -> None:
        if self.path is not None:
            atomic_write(self.path, data if data is not None else self.snapshot())

    def load(self, now: float) -> int:
        if self.path is None or not self.path.exists():
            return 0
        try:
            raw = json.loads(self.path.read_bytes())
            for aor, items in raw.get("bindings", {}).items():
                for d in items:
                    b = Binding.from_json(d)
                    if b.expires_at > now:
                        self._bindings.setdefault(aor, {})[b.contact] = b
        except (ValueError, KeyError, TypeError, OSError) as e:
            log.warning("ignoring unreadable %s: %s", self.path, e)
        return len(self)
