"""When the daemon runs Python's cycle collector.

Under load the daemon holds every transaction for 64*T1 (32 s): about a million
GC-tracked objects at 6,000 registrations/s. A collection walks every object in the
generations it collects, so its pause grows with what is young (gen0, gen1) or with
everything (a full collection: ~0.5 s at that size, long enough for phones to
retransmit). The hot path frees its objects by reference counting (no cycles), so:

* gen0 and gen1 are collected often and small (short pauses, the same total work);
* a full collection runs only when the box is idle (no SIP message for a second, at
  most once a minute) or, under load that never lets up, every ten minutes.
"""

from __future__ import annotations

import gc
import time

THRESHOLDS = (10_000, 2, 1 << 30)   # the third: no automatic full collection
IDLE_EVERY = 60.0                   # seconds between full collections while idle
BUSY_EVERY = 600.0                  # seconds, at the latest, under constant load


def start() -> None:
    """After start-up: everything built so far lives for the whole run (gc.freeze)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)


class FullCollections:
    """Called once a second with the count of SIP messages received so far."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._last = clock()
        self._seen = -1

    def tick(self, received: int) -> bool:
        """Run a full collection if it is time; True if it ran."""
        now = self._clock()
        idle = received == self._seen
        self._seen = received
        since = now - self._last
        if (idle and since >= IDLE_EVERY) or since >= BUSY_EVERY:
            gc.collect()
            self._last = self._clock()
            return True
        return False
