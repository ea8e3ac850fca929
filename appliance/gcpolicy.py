"""When the daemon runs Python's cycle collector.

A SIP server under load breaks the collector's premise that most objects die young: a
call's objects live for its whole length (seconds) and its transactions 64*T1 (32 s)
longer. A young collection walks every object made since the last one that still
lives, so under load it walks nearly everything a call makes once, finds nothing, and
took 4–6% of the daemon's CPU at 1,000 calls/s and 8% at 1,200 (BENCH_GC_REPORT of
bench/appliance_md5_first.py, docs/performance.md). The hot paths free their objects by
reference counting: a call, a registration and a refused datagram leave no cyclic
garbage (tests/unit/test_gcpolicy.py). So `tick`, once a second:

* under SIP load (at least `BUSY_RATE` messages in the last second) turns automatic
  collection off and freezes what was made since the last tick (`gc.freeze`, constant
  time): no collection walks it, reference counting still frees it;
* otherwise collects gen0 automatically, every 2,000 net allocations: a young cycle
  (an exception kept with its traceback, the media paths) is found within a few
  thousand allocations. What survives gen0 is not walked again before a full
  collection (`THRESHOLDS`): with gen1 collected every other gen0 collection, each of a
  call's objects was walked twice;
* runs a full collection (`gc.unfreeze`, `gc.collect`, `gc.freeze`), which finds every
  cycle there is:
  - when the box is idle: no SIP message for a second, at most once a minute, and the
    transactions of the last load ended (at most `DRAINED` left; a full collection
    walks all of them: 0.67 s per process one second after a 4,000 calls/s load, and
    traffic that resumes during the pause overflows the socket);
  - under load that never lets up, every ten minutes.
"""

from __future__ import annotations

import gc
import time

THRESHOLDS = (2_000, 1 << 30, 1 << 30)   # gen1 and full collections: never automatic
BUSY_RATE = 1_000                        # SIP messages a second: nothing young is walked
IDLE_EVERY = 60.0                        # seconds between full collections while idle
BUSY_EVERY = 600.0                       # seconds, at the latest, under constant load
DRAINED = 1_000                          # live transactions at which a pause is short


def start() -> None:
    """After start-up: everything built so far lives for the whole run."""
    gc.set_threshold(*THRESHOLDS)
    full_collection()


def full_collection() -> None:
    """Collect every generation, the frozen objects included; freeze what survives."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class FullCollections:
    """Called once a second with the count of SIP messages received so far and of the
    transactions alive."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._last = clock()
        self._seen = -1

    def tick(self, received: int, transactions: int = 0) -> bool:
        """Young collections on or off by the load; a full collection if it is time
        (True if it ran). `received`: SIP messages received so far; `transactions`: how
        many are alive now."""
        if self._seen >= 0 and received - self._seen >= BUSY_RATE:
            gc.disable()
            gc.freeze()
        else:
            gc.enable()
        now = self._clock()
        idle = received == self._seen and transactions <= DRAINED
        self._seen = received
        since = now - self._last
        if (idle and since >= IDLE_EVERY) or since >= BUSY_EVERY:
            full_collection()
            self._last = self._clock()
            return True
        return False
