"""The timed-playout jitter buffer, on a simulated clock."""

from __future__ import annotations

import random

from aiortc.rtp import RtpPacket

from appliance.media.jitter import JitterBuffer

PTIME = 0.02
F = 160  # samples per 20 ms at 8 kHz


def packet(i: int, *, seq0: int = 1000, ts0: int = 50000, ssrc: int = 7) -> RtpPacket:
    return RtpPacket(payload_type=0, sequence_number=(seq0 + i) & 0xFFFF,
                     timestamp=(ts0 + i * F) & 0xFFFFFFFF, ssrc=ssrc, payload=bytes([i % 256]) * F)


def run(jb: JitterBuffer, arrivals: list[tuple[float, RtpPacket]], duration: float,
        phase: float = 0.007) -> list[tuple[float, RtpPacket | None]]:
    """Push packets at their arrival times and pop on a 20 ms tick grid; return the pops."""
    arrivals = sorted(arrivals, key=lambda a: a[0])
    out = []
    k = 0
    for tick in range(round(duration / PTIME)):
        now = phase + tick * PTIME
        while k < len(arrivals) and arrivals[k][0] <= now:
            jb.push(arrivals[k][1], arrivals[k][0])
            k += 1
        out.append((now, jb.pop(now)))
    return out


def played(pops: list[tuple[float, RtpPacket | None]]) -> list[int]:
    return [p.sequence_number for _, p in pops if p is not None]


def test_steady_stream_plays_every_packet_in_order_after_the_depth() -> None:
    jb = JitterBuffer.fixed(0.04)
    arrivals = [(0.1 + i * PTIME, packet(i)) for i in range(100)]
    pops = run(jb, arrivals, 2.4)
    assert played(pops) == [1000 + i for i in range(100)]
    first = next(t for t, p in pops if p is not None)
    assert 0.1 + 0.03 <= first <= 0.1 + 0.05
    # Once playing, no gaps.
    start = next(i for i, (_, p) in enumerate(pops) if p is not None)
    assert all(p is not None for _, p in pops[start:start + 100])
    assert jb.stats.late == jb.stats.duplicates == jb.stats.empty - (len(pops) - start - 100) == 0


def test_reordered_packets_come_out_in_order() -> None:
    jb = JitterBuffer.fixed(0.04)
    arrivals = [(0.1 + i * PTIME, packet(i)) for i in range(30)]
    arrivals[5], arrivals[6] = (arrivals[6][0] + 0.005, arrivals[5][1]), (arrivals[5][0],
                                                                          arrivals[6][1])
    arrivals[12] = (arrivals[12][0] + 0.025, arrivals[12][1])  # 25 ms late, within the depth
    pops = run(jb, arrivals, 1.0)
    assert played(pops) == [1000 + i for i in range(30)]
    assert jb.stats.late == 0


def test_duplicates_are_played_once() -> None:
    jb = JitterBuffer.fixed(0.04)
    arrivals = [(0.1 + i * PTIME, packet(i)) for i in range(20)]
    arrivals += [(0.1 + 3 * PTIME + 0.001, packet(3)),  # while still buffered
                 (0.1 + 15 * PTIME, packet(8))]  # long after it was played
    pops = run(jb, arrivals, 0.8)
    assert played(pops) == [1000 + i for i in range(20)]
    assert jb.stats.duplicates == 2 and jb.stats.late == 0


def test_late_packet_is_dropped_and_its_tick_is_empty() -> None:
    jb = JitterBuffer.fixed(0.04)
    arrivals = [(0.1 + i * PTIME, packet(i)) for i in range(20)]
    arrivals[10] = (arrivals[10][0] + 0.09, arrivals[10][1])
    pops = run(jb, arrivals, 0.8)
    assert played(pops) == [1000 + i for i in range(20) if i != 10]
    assert jb.stats.late == 1
    start = next(i for i, (_, p) in enumerate(pops) if p is not None)
    assert pops[start + 10][1] is None and pops[start + 11][1] is not None


def test_sequence_and_timestamp_wrap_around() -> None:
    jb = JitterBuffer.fixed(0.04)
    arrivals = [(0.1 + i * PTIME, packet(i, seq0=65530, ts0=2**32 - 5 * F)) for i in range(40)]
    arrivals[6] = (arrivals[7][0] + 0.005, arrivals[6][1])  # overtaken by packet 7
    pops = run(jb, arrivals, 1.2)
    assert played(pops) == [(65530 + i) & 0xFFFF for i in range(40)]
    assert jb.stats.late == jb.stats.resets == 0


def test_adaptive_depth_grows_with_jitter_and_stays_bounded() -> None:
    rng = random.Random(4)
    jb = JitterBuffer(min_depth=0.04, max_depth=0.12, adaptive=True)
    # The first packet comes on the fastest path; the others up to 80 ms later.
    arrivals = [(0.1 + i * PTIME + (rng.uniform(0, 0.08) if i else 0.0), packet(i))
                for i in range(500)]
    pops = run(jb, arrivals, 10.5)
    missing = {p.sequence_number for _, p in arrivals} - set(played(pops))
    assert missing and jb.stats.late == len(missing)  # at first, before it adapted
    assert max(missing) < 1000 + 50  # none after the first second
    assert jb.stats.increases >= 1
    assert 0.08 <= jb.delay <= 0.12 and jb.depth <= 0.12


def test_fixed_depth_does_not_grow() -> None:
    rng = random.Random(5)
    jb = JitterBuffer.fixed(0.04)
    arrivals = [(0.1 + i * PTIME + rng.uniform(0, 0.05), packet(i)) for i in range(300)]
    run(jb, arrivals, 6.5)
    assert jb.stats.late > 0 and jb.delay <= 0.04 + 0.03


def test_sender_clock_drift_is_followed() -> None:
    for factor, counter in ((0.995, "decreases"), (1.005, "increases")):
        jb = JitterBuffer.fixed(0.04)
        # 20 s of packets from a sender whose clock is 0.5% fast / slow.
        arrivals = [(0.1 + i * PTIME * factor, packet(i)) for i in range(1000)]
        pops = run(jb, arrivals, 20.5)
        assert getattr(jb.stats, counter) >= 3, (factor, jb.stats)
        assert jb.depth <= 0.04 + PTIME + 0.001
        assert len(played(pops)) >= 990
        assert len(jb) <= 4  # the buffer did not fill up


def test_new_ssrc_and_timestamp_jump_resynchronise() -> None:
    jb = JitterBuffer.fixed(0.04)
    arrivals = [(0.1 + i * PTIME, packet(i)) for i in range(20)]
    arrivals += [(0.1 + (20 + i) * PTIME, packet(i, seq0=1, ts0=999, ssrc=8)) for i in range(20)]
    arrivals += [(0.1 + (40 + i) * PTIME, packet(i, seq0=500, ts0=10**9, ssrc=8))
                 for i in range(20)]
    pops = run(jb, arrivals, 1.5)
    assert jb.stats.resets == 2
    assert len(played(pops)) >= 56


def test_silence_suppression_gap_is_not_a_reset() -> None:
    jb = JitterBuffer.fixed(0.04)
    # 10 packets, 1 s of silence (no packets, timestamps advance), 10 more.
    arrivals = [(0.1 + i * PTIME, packet(i)) for i in range(10)]
    arrivals += [(0.1 + i * PTIME, packet(i)) for i in range(60, 70)]
    pops = run(jb, arrivals, 1.6)
    assert played(pops) == [1000 + i for i in range(10)] + [1000 + i for i in range(60, 70)]
    assert jb.stats.resets == 0 and jb.stats.late == 0
