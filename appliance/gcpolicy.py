"""When the daemon runs Python's cycle collector.

Under load the daemon holds every transaction for 64*T1 (32 s): about a million
GC-tracked objects at 6,000 registrations/s. A collection walks every object in the
generations it collects, so its pause grows with what is young (gen0, gen1) or with
everything (a full collection: ~0.5 s at that size, long enough for phones to
retransmit). The hot paths free their objects by reference counting: a call and a
registration leave no cyclic garbage (tests/unit/test_gcpolicy.py), so:

* gen0 is collected often and small: a young cycle (an exception and its traceback) is
  found within a few thousand allocations, at pauses of a few ms;
* what survives gen0 is not walked again until a full collection. A call's objects live
  for its whole length (seconds) and its transactions 32 s more; with gen1 collected
  every other gen0 collection each of them was walked twice, and the collector took 22%
  of the daemon's CPU at 3,000-4,000 calls/s (9% now; BENCH_GC_REPORT of
  bench/appliance_md5_first.py);
* a full collection runs only when the box is idle (no SIP message for a second, at
  most once a minute) or, under load that never lets up, every ten minutes: cycles that
  form among older objects wait for it. Idle also means the transactions of the last
  load have ended (at most `DRAINED` left): a full collection walks all of them (0.67 s
  per process one second after a 4,000 calls/s load), and traffic that resumes during
  the pause overflows the socket. They end within 64*T1 (32 s) of the last message.
"""

from __future__ import annotations

import gc
import time

THRESHOLDS = (2_000, 1 << 30, 1 << 30)   # gen1 and full collections: never automatic
IDLE_EVERY = 60.0                        # seconds between full collections while idle
BUSY_EVERY = 600.0                       # seconds, at the latest, under constant load
DRAINED = 1_000                          # live transactions at which a pause is short


def start() -> None:
    """After start-up: everything built so far lives for the whole run (gc.freeze)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)


class FullCollections:
    """Called once a second with the count of SIP messages received so far and of the
    transactions alive."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._last = clock()
        self._seen = -1

    def tick(self, received: int, transactions: int = 0) -> bool:
        """Run a full collection if it is time; True if it ran. `received`: SIP messages
        received so far; `transactions`: how many are alive now."""
        now = self._clock()
        idle = received == self._seen and transactions <= DRAINED
        self._seen = received
        since = now - self._last
        if (idle and since >= IDLE_EVERY) or since >= BUSY_EVERY:
            gc.collect()
            self._last = self._clock()
            return True
        return False
