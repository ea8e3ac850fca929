"""A jitter buffer with timed playout, for the conference mixer.

aiortc's `aiortc.jitterbuffer.JitterBuffer` reorders by sequence number and
hands a frame out as soon as it is complete: it has no notion of *when* a
frame is due, so it cannot feed a mixer that ticks every 20 ms. This one
schedules by RTP timestamp against the caller's clock.

Model. The first packet anchors the stream: packet timestamp `ts` is due at

    due(ts) = anchor_time + (ts - anchor_ts) / clock_rate + delay

and `pop(now)` returns the buffered packet whose timestamp is due at `now`
(within half a frame), or None (the caller conceals or plays silence).
A packet's *relative delay* is `arrival - (anchor_time + (ts - anchor_ts) /
clock_rate)`; over a sliding window (1 s) its minimum `lo` is the fastest
path and its maximum `hi` the slowest. The playout `delay` is kept at

    lo + depth,  depth = min_depth                                   (fixed)
                 depth = clamp(hi - lo + ptime/2 + 5 ms, min, max)   (adaptive)

moving one whole frame at a time: up by inserting one empty tick, down by
dropping one frame (down only when two evaluations, half a second apart, agree). Following `lo` also absorbs clock drift between the
sender and our ticks. Timestamps are unwrapped to 64 bits (32-bit wrap) and
sequence numbers are not needed for ordering, so their wrap is harmless.
Late packets (their tick has passed), duplicates and a new SSRC or a jump of
more than `resync` seconds (the stream restarted) are handled and counted.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass

from aiortc.rtp import RtpPacket


@dataclass
class JitterStats:
    received: int = 0  # pushed and accepted
    played: int = 0  # returned by pop
    empty: int = 0  # pops that found nothing due while playing
    late: int = 0  # arrived after their tick
    duplicates: int = 0
    dropped: int = 0  # stale in the buffer (frame skipped to cut delay) or overflow
    resets: int = 0
    increases: int = 0  # playout delay raised one frame
    decreases: int = 0  # playout delay lowered one frame


class JitterBuffer:
    """Timed-playout jitter buffer: `push(packet, now)` on arrival, `pop(now)` every tick.

    `now` is any monotonic clock in seconds (the event loop's), the same for both.
    """

    def __init__(self, clock_rate: int = 8000, ptime: float = 0.02, *,
                 min_depth: float = 0.04, max_depth: float = 0.1, adaptive: bool = True,
                 window: float = 1.0, resync: float = 2.0, capacity: int = 64) -> None:
        if min_depth > max_depth:
            raise ValueError("min_depth must not exceed max_depth")
        self.clock_rate = clock_rate
        self.ptime = ptime
        self.frame = round(clock_rate * ptime)
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.adaptive = adaptive
        self.resync = resync
        self.capacity = capacity
        self._window_len = max(4, round(window / ptime))
        self._adapt_every = max(2, self._window_len // 2)
        self.stats = JitterStats()
        self._ssrc: int | None = None
        self._reset_stream()

    def _reset_stream(self) -> None:
        self._anchor_time: float | None = None
        self._anchor_ts = 0
        self._highest: int | None = None
        self.delay = self.min_depth
        self._keys: list[int] = []
        self._packets: dict[int, RtpPacket] = {}
        self._last_played: int | None = None
        self._served: float | None = None  # every timestamp up to here had its tick
        self._recent: deque[int] = deque(maxlen=self._window_len)
        self._window: deque[float] = deque(maxlen=self._window_len)
        self._since_adapt = 0
        self._lower = False

    @classmethod
    def fixed(cls, depth: float, clock_rate: int = 8000, ptime: float = 0.02,
              **kwargs: object) -> JitterBuffer:
        """A buffer that keeps `depth` seconds above the fastest path (drift still followed)."""
        return cls(clock_rate, ptime, min_depth=depth, max_depth=depth, adaptive=False,
                   **kwargs)  # type: ignore[arg-type]

    def reset(self) -> None:
        self._reset_stream()
        self._ssrc = None

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def depth(self) -> float:
        """Current buffering above the fastest path of the last window, in seconds."""
        if not self._window:
            return self.delay
        return self.delay - min(self._window)

    # -- helpers --------------------------------------------------------------------------

    def _unwrap(self, ts: int) -> int:
        if self._highest is None:
            self._highest = ts
            return ts
        diff = (ts - self._highest) % (1 << 32)
        if diff >= 1 << 31:
            diff -= 1 << 32
        ext = self._highest + diff
        if ext > self._highest:
            self._highest = ext
        return ext

    def _relative(self, ext: int, now: float) -> float:
        assert self._anchor_time is not None
        return now - (self._anchor_time + (ext - self._anchor_ts) / self.clock_rate)

    def _position(self, now: float) -> float:
        """The (extended) timestamp that should be playing at `now`."""
        assert self._anchor_time is not None
        return self._anchor_ts + (now - self._anchor_time - self.delay) * self.clock_rate

    # -- push / pop -----------------------------------------------------------------------

    def push(self, packet: RtpPacket, now: float) -> bool:
        """Take one arrived packet; False if it was late, a duplicate or otherwise dropped."""
        if self._ssrc is not None and packet.ssrc != self._ssrc:
            self._reset_stream()
            self.stats.resets += 1
        self._ssrc = packet.ssrc
        ext = self._unwrap(packet.timestamp)
        if self._anchor_time is None:
            self._anchor_time = now
            self._anchor_ts = ext
        rel = self._relative(ext, now)
        if abs(rel - self.delay) > self.resync:
            # The stream jumped (timestamps restarted, a long hold): start again from here.
            self._reset_stream()
            self.stats.resets += 1
            self._highest = packet.timestamp
            ext = packet.timestamp
            self._anchor_time = now
            self._anchor_ts = ext
            rel = 0.0
        self._window.append(rel)
        self._since_adapt += 1
        if self._since_adapt >= self._adapt_every:
            self._adapt()
        if self._last_played is not None and ext <= self._last_played:
            if ext in self._recent:
                self.stats.duplicates += 1
            else:
                self.stats.late += 1
            return False
        if ext in self._packets:
            self.stats.duplicates += 1
            return False
        if self._served is not None and ext <= self._served:
            self.stats.late += 1  # its tick has passed
            return False
        bisect.insort(self._keys, ext)
        self._packets[ext] = packet
        self.stats.received += 1
        while len(self._keys) > self.capacity:
            del self._packets[self._keys.pop(0)]
            self.stats.dropped += 1
        return True

    def pop(self, now: float) -> RtpPacket | None:
        """The packet due at the tick `now`, or None (nothing due: conceal or play silence)."""
        if self._anchor_time is None:
            return None
        pos = self._position(now)
        half = self.frame / 2
        keys = self._keys
        while keys and keys[0] < pos - half:
            # Stale: its tick has passed (the delay was lowered, or ticks were skipped).
            del self._packets[keys.pop(0)]
            self.stats.dropped += 1
        if self._served is None or pos + half > self._served:
            self._served = pos + half
        if keys and keys[0] <= pos + half:
            ext = keys.pop(0)
            self._last_played = ext
            self._recent.append(ext)
            self.stats.played += 1
            return self._packets.pop(ext)
        if self._last_played is not None:
            self.stats.empty += 1
        return None

    # -- adaptation -----------------------------------------------------------------------

    def _adapt(self) -> None:
        self._since_adapt = 0
        lo, hi = min(self._window), max(self._window)
        if self.adaptive:
            depth = min(self.max_depth, max(self.min_depth, hi - lo + self.ptime / 2 + 0.005))
        else:
            depth = self.min_depth
        diff = lo + depth - self.delay
        if diff > self.ptime / 4:
            self.delay += self.ptime
            self.stats.increases += 1
            self._lower = False
        elif diff < -self.ptime:
            # Lower only when two evaluations in a row agree: one early outlier does not
            # cost a frame.
            if self._lower:
                self.delay -= self.ptime
                self.stats.decreases += 1
            self._lower = not self._lower
        else:
            self._lower = False
