"""The conference mixer: N-1 mixes checked by FFT, saturation, prompts, the tick driver."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from aiortc.rtp import RtpPacket

from appliance.media.codecs import create_decoder, create_encoder, frame_clock, sample_rate
from appliance.media.dtmf import TelephoneEventGenerator
from appliance.media.mixer import Mixer, TickDriver, mixer_benchmark
from appliance.media.rtp import RtpEndpoint
from appliance.media.sdp import Codec
from appliance.media.tones import peak_frequency, tone, tone_levels

from .test_media_relay import allocator
from .test_media_rtp import HOST, peer

PCMU = Codec(0, "PCMU", 8000)
PCMA = Codec(8, "PCMA", 8000)
G722 = Codec(9, "G722", 8000)
OPUS = Codec(111, "opus", 48000, 2)
TE = Codec(101, "telephone-event", 8000)
PTIME = 0.02


class Talker:
    """A simulated phone: sends a tone in its codec, keeps what the room sends back."""

    def __init__(self, name: str, codec: Codec, signal: np.ndarray) -> None:
        self.name, self.codec = name, codec
        rate = sample_rate(codec)
        enc = create_encoder(codec, rate)
        step = rate // 50
        self.payloads = [b for i in range(0, len(signal), step)
                         for b in enc.encode(signal[i:i + step])]
        self.received: list[bytes] = []
        self.seq, self.ts, self.ssrc = 100, 1000, hash(name) & 0xFFFFFFFF

    def packet(self, i: int) -> RtpPacket:
        p = RtpPacket(payload_type=self.codec.payload_type, sequence_number=self.seq + i,
                      timestamp=self.ts + i * frame_clock(self.codec), ssrc=self.ssrc,
                      payload=self.payloads[i % len(self.payloads)])
        return p

    def heard(self, skip: float = 0.3) -> tuple[np.ndarray, int]:
        dec = create_decoder(self.codec)
        packets = [RtpPacket.parse(d) for d in self.received]
        pcm = np.concatenate([dec.decode(p.payload, p.timestamp) for p in packets])
        rate = dec.rate
        return pcm[round(skip * rate):], rate


def run_room(mixer: Mixer, talkers: list[Talker], ticks: int = 75) -> None:
    for t in talkers:
        mixer.add(t.name, t.codec, t.received.append)
    for k in range(ticks):
        now = 1.0 + k * PTIME
        for t in talkers:
            mixer.push(t.name, t.packet(k), now - 0.004)
        mixer.tick(now)


def assert_hears(pcm: np.ndarray, rate: int, present: list[float], absent: list[float]) -> None:
    levels = tone_levels(pcm, rate, present + absent)
    for f, level in zip(present, levels[:len(present)], strict=True):
        assert level > 0.2, (f, levels)
    for f, level in zip(absent, levels[len(present):], strict=True):
        assert level < 0.01, (f, levels)


FREQS = {"a": 440.0, "b": 660.0, "c": 880.0}


def test_each_participant_hears_the_others_but_not_itself() -> None:
    talkers = [Talker(n, PCMU, tone(f, 1.0, 8000, level=-16.0)) for n, f in FREQS.items()]
    mixer = Mixer(8000)
    run_room(mixer, talkers)
    for t in talkers:
        pcm, rate = t.heard()
        others = [f for n, f in FREQS.items() if n != t.name]
        assert_hears(pcm, rate, others, [FREQS[t.name]])
        assert len(t.received) == 75
        p = RtpPacket.parse(t.received[0])
        assert p.payload_type == 0 and p.marker == 1 and len(p.payload) == 160
    assert mixer.stats.sent == 225


@pytest.mark.parametrize("rate", [8000, 16000])
def test_mixed_codecs(rate: int) -> None:
    codecs = {"a": PCMU, "b": G722, "c": OPUS}
    talkers = [Talker(n, codecs[n], tone(f, 1.0, sample_rate(codecs[n]), level=-16.0))
               for n, f in FREQS.items()]
    mixer = Mixer(rate)
    run_room(mixer, talkers, ticks=75)
    for t in talkers:
        pcm, pcm_rate = t.heard(skip=0.4)
        others = [f for n, f in FREQS.items() if n != t.name]
        assert_hears(pcm, pcm_rate, others, [FREQS[t.name]])
        steps = {(RtpPacket.parse(b).timestamp - RtpPacket.parse(a).timestamp) & 0xFFFFFFFF
                 for a, b in zip(t.received, t.received[1:], strict=False)}
        assert steps == {frame_clock(t.codec)}


def test_loud_inputs_saturate_instead_of_wrapping() -> None:
    # Three full-scale sines in phase: any two sum to twice the int16 range.
    talkers = [Talker(n, PCMA, tone(500.0, 1.0, 8000, level=0.0, fade=0)) for n in "abc"]
    mixer = Mixer(8000)
    run_room(mixer, talkers)
    reference = tone(500.0, 1.0, 8000, level=0.0, fade=0).astype(np.int32)
    for t in talkers:
        pcm, rate = t.heard(skip=0.0)
        assert abs(peak_frequency(pcm[2400:], rate) - 500.0) < 10.0
        loud = np.abs(reference) > 20000
        n = min(len(pcm), len(reference)) - 640
        # Aligned by the buffer delay: find the lag with the best match.
        lag = max(range(0, 640, 8), key=lambda d: float(np.dot(pcm[d:d + 2000].astype(float),
                                                                 reference[:2000])))
        got = pcm[lag:lag + n].astype(np.int32)
        # Where the sum overflows, the output is pinned at full scale with the right sign.
        mask = loud[:n]
        assert np.all(np.sign(got[mask]) == np.sign(reference[:n][mask]))
        assert np.abs(got[mask]).min() > 30000
        assert pcm.max() <= 32767 and pcm.min() >= -32768


def test_saturation_with_constant_levels() -> None:
    # Sample-exact check on the mix: +30000 + +30000 must become +32767, never negative.
    talkers = [Talker("a", PCMU, np.full(8000, 30000, np.int16)),
               Talker("b", PCMU, np.full(8000, 30000, np.int16)),
               Talker("c", PCMU, np.full(8000, -30000, np.int16))]
    mixer = Mixer(8000)
    run_room(mixer, talkers, ticks=20)
    pcm_c, _ = talkers[2].heard(skip=0.1)
    assert pcm_c.min() == 32124  # G.711 mu-law full scale
    pcm_a, _ = talkers[0].heard(skip=0.1)  # hears +30000 - 30000 = 0
    assert np.abs(pcm_a).max() <= 8


def test_prompt_mute_remove_and_dtmf() -> None:
    digits: list[tuple[object, str]] = []
    mixer = Mixer(8000, on_dtmf=lambda pid, event: digits.append((pid, event.digit)))
    a = Talker("a", PCMU, tone(440.0, 1.0, 8000, level=-16.0))
    b = Talker("b", PCMU, tone(660.0, 1.0, 8000, level=-16.0))
    for t in (a, b):
        mixer.add(t.name, t.codec, t.received.append, telephone_event=TE)
    mixer.mute("b")
    mixer.play(tone(1500.0, 1.0, 8000, level=-16.0))  # to everybody
    mixer.play(tone(2500.0, 1.0, 8000, level=-16.0), to="b")  # to b only
    events = TelephoneEventGenerator().rtp_packets("#", payload_type=101, ssrc=1,
                                                   sequence_number=1, timestamp=0)
    for k in range(50):
        now = 1.0 + k * PTIME
        mixer.push("a", a.packet(k), now)
        mixer.push("b", b.packet(k), now)
        if k < len(events):
            mixer.push("a", events[k][1], now)
        mixer.tick(now)
    pcm_a, rate = a.heard()
    assert_hears(pcm_a, rate, [1500.0], [660.0, 440.0, 2500.0])  # b is muted
    pcm_b, rate = b.heard()
    assert_hears(pcm_b, rate, [440.0, 1500.0, 2500.0], [660.0])
    assert digits == [("a", "#")]
    assert mixer.remove("b") is not None and "b" not in mixer and len(mixer) == 1
    assert mixer.remove("b") is None
    with pytest.raises(KeyError):
        mixer.add("a", PCMU, a.received.append)


def test_tick_driver_keeps_time_and_counts_overruns() -> None:
    async def main() -> None:
        deadlines: list[float] = []

        def tick(deadline: float) -> None:
            deadlines.append(deadline)
            if len(deadlines) == 5:
                time.sleep(0.05)  # a stall of two and a half ticks

        driver = TickDriver(tick, 0.02)
        driver.start()
        await asyncio.sleep(0.4)
        driver.stop()
        assert driver.overruns >= 1 and driver.skipped >= 1
        steps = np.diff(deadlines)
        # Deadlines stay on the 20 ms grid (no drift); only the skipped tick is missing.
        assert np.allclose(steps[steps < 0.03], 0.02)
        assert np.isclose(steps, 0.04).sum() >= 1
        assert 15 <= driver.ticks <= 20 and driver.cpu > 0

    asyncio.run(main())


def test_room_over_loopback_udp() -> None:
    async def main() -> None:
        ports = allocator()
        mixer = Mixer(8000)
        phones, endpoints = [], []
        for name in "ab":
            ep = await RtpEndpoint.open(HOST, ports)
            phone = await peer()
            ep.configure(PCMU)
            ep.set_remote(*phone.address)
            mixer.attach(ep, name)
            phones.append(phone)
            endpoints.append(ep)
        driver = TickDriver(mixer.tick)
        driver.start()
        talk = {"a": Talker("a", PCMU, tone(440.0, 1.0, 8000, level=-16.0)),
                "b": Talker("b", PCMU, tone(660.0, 1.0, 8000, level=-16.0))}
        for k in range(40):
            for t, ep, phone in zip(talk.values(), endpoints, phones, strict=True):
                phone.send(t.packet(k).serialize(), ep.local_address)
            await asyncio.sleep(0.02)
        driver.stop()
        mixer.remove("a")
        assert endpoints[0].on_rtp is None and endpoints[1].on_rtp is not None
        for t, phone in zip(talk.values(), phones, strict=True):
            while not phone.queue.empty():
                t.received.append(phone.queue.get_nowait()[0])
        assert len(talk["a"].received) >= 30
        pcm, rate = talk["a"].heard(skip=0.15)
        assert abs(peak_frequency(pcm, rate) - 660.0) < 13.0
        pcm, rate = talk["b"].heard(skip=0.15)
        assert abs(peak_frequency(pcm, rate) - 440.0) < 9.0
        for x in endpoints + phones:
            x.close()

    asyncio.run(main())


def test_benchmark_reports() -> None:
    result = mixer_benchmark(10, 0.3)
    for key in ("ticks", "overruns", "tick_cpu_ms_mean", "tick_cpu_ms_p99", "push_cpu_ms_mean"):
        assert key in result
    assert result["participants"] == 10 and result["sent"] > 0 and result["ticks"] >= 10
