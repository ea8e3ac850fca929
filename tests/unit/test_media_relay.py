"""The relay on loopback UDP: plain forwarding, transcoding (checked by FFT), DTMF, timeouts."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest
from aiortc.codecs import get_decoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtcpPacket, RtcpRrPacket, RtpPacket

from appliance.media.codecs import create_encoder, frame_clock, sample_rate
from appliance.media.dtmf import TelephoneEvent, TelephoneEventDetector, TelephoneEventGenerator
from appliance.media.relay import Relay, Transcoder
from appliance.media.rtp import PortAllocator, RtpEndpoint
from appliance.media.sdp import Codec
from appliance.media.tones import peak_frequency, tone

from .test_media_rtp import HOST, Peer, peer, until

PCMU = Codec(0, "PCMU", 8000)
PCMA = Codec(8, "PCMA", 8000)
G722 = Codec(9, "G722", 8000)
OPUS = Codec(111, "opus", 48000, 2)
TE8 = Codec(101, "telephone-event", 8000)
TE48 = Codec(110, "telephone-event", 48000)


def allocator() -> PortAllocator:
    start = random.randrange(20000, 29000, 2)
    return PortAllocator(range(start, start + 200))


class Call:
    """Two phones talking through two box endpoints and a relay."""

    def __init__(self, a: RtpEndpoint, b: RtpEndpoint, pa: Peer, pb: Peer, relay: Relay):
        self.a, self.b, self.pa, self.pb, self.relay = a, b, pa, pb, relay
        self.digits: list[tuple[RtpEndpoint, str]] = []

    @classmethod
    async def make(cls, codec_a: Codec, codec_b: Codec, te_a: Codec | None = None,
                   te_b: Codec | None = None) -> Call:
        ports = allocator()
        a, b = await RtpEndpoint.open(HOST, ports), await RtpEndpoint.open(HOST, ports)
        pa, pb = await peer(), await peer()
        a.configure(codec_a, te_a)
        b.configure(codec_b, te_b)
        a.set_remote(*pa.address)
        b.set_remote(*pb.address)
        relay = Relay(a, b)
        call = cls(a, b, pa, pb, relay)
        relay.on_dtmf = lambda ep, event: call.digits.append((ep, event.digit))
        relay.start()
        return call

    def close(self) -> None:
        self.relay.stop()
        for x in (self.a, self.b, self.pa, self.pb):
            x.close()


def encode_tone(codec: Codec, freq: float, seconds: float = 1.0, *, ssrc: int = 0x5151,
                seq: int = 65500, ts: int = 2**32 - 4000) -> list[bytes]:
    """RTP datagrams of a sine in `codec`, numbered across the sequence/timestamp wrap."""
    rate = sample_rate(codec)
    enc = create_encoder(codec, rate)
    signal = tone(freq, seconds, rate, level=-10.0)
    step = rate // 50
    out = []
    for i in range(0, len(signal), step):
        for payload in enc.encode(signal[i:i + step]):
            out.append(RtpPacket(payload_type=codec.payload_type, sequence_number=seq & 0xFFFF,
                                 timestamp=ts & 0xFFFFFFFF, ssrc=ssrc,
                                 payload=payload).serialize())
            seq += 1
            ts += frame_clock(codec)
    return out


def decode(codec: Codec, packets: list[RtpPacket]) -> tuple[np.ndarray, int]:
    """Decode with aiortc's own decoder (independent of the code under test): mono, native rate."""
    dec = get_decoder(RTCRtpCodecParameters(mimeType=f"audio/{codec.name}",
                                            clockRate=codec.clock_rate, channels=codec.channels,
                                            payloadType=codec.payload_type))
    chunks = []
    rate = 8000
    for p in packets:
        for frame in dec.decode(JitterFrame(p.payload, p.timestamp)):
            arr = frame.to_ndarray().reshape(-1)
            if frame.layout.name == "stereo":
                arr = arr.reshape(-1, 2)[:, 0]
            chunks.append(arr)
            rate = frame.sample_rate
    return np.concatenate(chunks), rate


async def send_all(phone: Peer, datagrams: list[bytes], to: tuple[str, int]) -> None:
    for i, d in enumerate(datagrams):
        phone.send(d, to)
        if i % 10 == 9:
            await asyncio.sleep(0.001)


async def collect(phone: Peer, count: int, timeout: float = 3.0) -> list[bytes]:
    out = []
    while len(out) < count:
        data, _ = await phone.recv(timeout)
        out.append(data)
    return out


def test_same_codec_is_forwarded_untouched() -> None:
    async def main() -> None:
        call = await Call.make(PCMU, PCMU, TE8, TE8)
        assert call.relay.mode == "forward" and not call.relay.transcoding
        sent = encode_tone(PCMU, 440.0, 0.5)
        await send_all(call.pa, sent, call.a.local_address)
        got = await collect(call.pb, len(sent))
        assert got == sent  # byte for byte: SSRC, sequence numbers, timestamps, payload
        back = encode_tone(PCMU, 660.0, 0.2, ssrc=0x7777)
        await send_all(call.pb, back, call.b.local_address)
        assert await collect(call.pa, len(back)) == back
        assert call.relay.ab.stats.forwarded == len(sent)
        call.close()

    asyncio.run(main())


def test_forwarding_maps_payload_types() -> None:
    async def main() -> None:
        call = await Call.make(PCMU, Codec(0, "pcmu", 8000), TE8, Codec(96, "telephone-event", 8000))
        packets = TelephoneEventGenerator().rtp_packets("7", payload_type=101, ssrc=0x5151,
                                                        sequence_number=9, timestamp=800)
        datagrams = [p.serialize() for _, p in packets]
        await send_all(call.pa, datagrams + [RtpPacket(payload_type=13, ssrc=1).serialize()],
                       call.a.local_address)
        got = await collect(call.pb, len(datagrams))
        assert [RtpPacket.parse(d).payload_type for d in got] == [96] * len(datagrams)
        assert [d[2:] for d in got] == [d[2:] for d in datagrams]  # only the PT byte changed
        assert RtpPacket.parse(got[0]).marker == 1
        await until(lambda: call.relay.ab.stats.dropped == 1)  # CN was not negotiated
        assert call.digits == [(call.a, "7")]
        call.close()

    asyncio.run(main())


@pytest.mark.parametrize(("src", "dst"), [(PCMU, PCMA), (PCMA, PCMU), (PCMU, OPUS),
                                          (OPUS, PCMU), (PCMU, G722), (G722, PCMA)],
                         ids=lambda c: c.name)
def test_transcoding_keeps_the_tone(src: Codec, dst: Codec) -> None:
    async def main() -> None:
        call = await Call.make(src, dst)
        assert call.relay.mode == "transcode"
        freq = 440.0
        sent = encode_tone(src, freq, 1.0)
        await send_all(call.pa, sent, call.a.local_address)
        got = [RtpPacket.parse(d) for d in await collect(call.pb, len(sent) - 3)]
        assert {p.payload_type for p in got} == {dst.payload_type}
        assert len({p.ssrc for p in got}) == 1 and got[0].ssrc != 0x5151
        seqs = [p.sequence_number for p in got]
        assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False))
        steps = {(b.timestamp - a.timestamp) & 0xFFFFFFFF for a, b in zip(got, got[1:],
                                                                          strict=False)}
        assert steps == {frame_clock(dst)}
        assert got[0].marker == 1 and not any(p.marker for p in got[1:])
        pcm, rate = decode(dst, got)
        measured = peak_frequency(pcm[rate // 10:], rate)
        assert abs(measured - freq) <= 0.02 * freq, measured
        # And the other way round, another tone.
        back = encode_tone(dst, 1000.0, 0.6, ssrc=0x6262)
        await send_all(call.pb, back, call.b.local_address)
        got_back = [RtpPacket.parse(d) for d in await collect(call.pa, len(back) - 3)]
        pcm, rate = decode(src, got_back)
        assert abs(peak_frequency(pcm[rate // 10:], rate) - 1000.0) <= 20.0
        call.close()

    asyncio.run(main())


def test_transcoder_keeps_gaps_and_drops_old_packets() -> None:
    tc = Transcoder(PCMU, PCMA)
    datagrams = encode_tone(PCMU, 440.0, 0.4)
    packets = [RtpPacket.parse(d) for d in datagrams]
    out = []
    for i, p in enumerate(packets):
        if i not in (5, 6):  # two lost
            out += tc.feed(p)
    out += tc.feed(packets[3])  # too old now
    assert tc.dropped == 1 and len(out) == len(packets) - 2
    ts = [(p.timestamp - out[0].timestamp) & 0xFFFFFFFF for p in out]
    assert ts[:6] == [0, 160, 320, 480, 640, 1120]  # the gap stays a gap
    assert [p.marker for p in out[:7]] == [1, 0, 0, 0, 0, 1, 0]


def test_dtmf_crosses_a_transcoding_relay() -> None:
    async def main() -> None:
        call = await Call.make(PCMU, OPUS, TE8, TE48)
        audio = encode_tone(PCMU, 440.0, 0.2, seq=100, ts=16000)
        events = TelephoneEventGenerator().rtp_packets(
            "5", payload_type=101, ssrc=0x5151, sequence_number=110, timestamp=16000 + 1600)
        datagrams = audio + [p.serialize() for _, p in events]
        await send_all(call.pa, datagrams, call.a.local_address)
        got = [RtpPacket.parse(d) for d in await collect(call.pb, len(datagrams) - 1)]
        te = [p for p in got if p.payload_type == TE48.payload_type]
        voice = [p for p in got if p.payload_type == OPUS.payload_type]
        assert len(te) == len(events) and len({p.ssrc for p in got}) == 1
        assert len({p.timestamp for p in te}) == 1
        # Same timeline: the event starts 200 ms (9600 ticks at 48 kHz) after the first audio.
        assert (te[0].timestamp - voice[0].timestamp) & 0xFFFFFFFF == 9600
        durations = [TelephoneEvent.parse(p.payload).duration for p in te]
        assert durations[-1] == 800 * 6 and TelephoneEvent.parse(te[-1].payload).end
        det = TelephoneEventDetector()
        assert [e.digit for p in te if (e := det.feed(p))] == ["5"]
        assert call.digits == [(call.a, "5")]
        call.close()

    asyncio.run(main())


def test_rtcp_is_forwarded_only_when_forwarding() -> None:
    async def main() -> None:
        for codec_b, forwarded in ((PCMU, True), (PCMA, False)):
            call = await Call.make(PCMU, codec_b)
            rtcp_b = await peer()
            call.b.set_remote(HOST, call.pb.address[1], rtcp_b.address[1])
            rr = bytes(RtcpRrPacket(ssrc=0x5151))
            call.pa.send(rr, (HOST, call.a.rtcp_port))
            await until(lambda c=call: c.a.rtcp_received == 1)
            if forwarded:
                data, _ = await rtcp_b.recv()
                assert data == rr
            else:
                await asyncio.sleep(0.05)
                assert rtcp_b.queue.empty()
                assert call.a._report_task is not None  # each leg reports for itself
            rtcp_b.close()
            call.close()
        assert RtcpPacket.parse(rr)[0].ssrc == 0x5151

    asyncio.run(main())


def test_media_timeout() -> None:
    async def main() -> None:
        call = await Call.make(PCMU, PCMU)
        fired: list[float] = []
        loop = asyncio.get_running_loop()
        call.relay.watch(0.3, lambda: fired.append(loop.time()))
        t0 = loop.time()
        # Media keeps flowing for 0.5 s: no timeout.
        for d in encode_tone(PCMU, 440.0, 0.5):
            call.pa.send(d, call.a.local_address)
            await asyncio.sleep(0.02)
        assert not fired and call.relay.idle() < 0.1
        assert call.relay.last_activity is not None and call.relay.last_activity > t0
        await until(lambda: bool(fired), timeout=1.0)
        assert 0.25 <= fired[0] - call.relay.last_activity <= 0.6
        call.close()

    asyncio.run(main())
