"""The media engine against an independent RTP stack: FFmpeg's RTP muxer and SDP demuxer.

FFmpeg (through PyAV, no extra package) sends real paced RTP with its own SSRC,
sequence numbers, timestamps and RTCP sender reports, and receives RTP described
by an SDP file. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from pathlib import Path

import av
import numpy as np
import pytest

from appliance.media.mixer import Mixer, TickDriver
from appliance.media.relay import Relay
from appliance.media.rtp import PortAllocator, RtpEndpoint
from appliance.media.sdp import Codec
from appliance.media.tones import peak_frequency, tone, tone_levels

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
PCMU = Codec(0, "PCMU", 8000)
PCMA = Codec(8, "PCMA", 8000)


def allocator() -> PortAllocator:
    start = random.randrange(46000, 49000, 2)
    return PortAllocator(range(start, start + 200))


def free_even_port() -> int:
    """An even loopback UDP port with its odd neighbour free too (FFmpeg binds both)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port % 2:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s2:
                s2.bind((HOST, port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free even port pair")


def ffmpeg_send(port: int, freq: float, seconds: float, codec: str = "pcm_mulaw") -> None:
    """FFmpeg sends a tone as RTP to HOST:port, paced in real time, 20 ms a packet."""
    out = av.open(f"rtp://{HOST}:{port}?pkt_size=172", mode="w", format="rtp")
    stream = out.add_stream(codec, rate=8000, layout="mono")
    signal = tone(freq, seconds, 8000, level=-16.0)
    start = time.monotonic()
    for k, i in enumerate(range(0, len(signal), 160)):
        frame = av.AudioFrame.from_ndarray(signal[i:i + 160].reshape(1, -1), format="s16",
                                           layout="mono")
        frame.sample_rate = 8000
        frame.pts = i
        for packet in stream.encode(frame):
            out.mux(packet)
        time.sleep(max(0.0, start + (k + 1) * 0.02 - time.monotonic()))
    out.close()


def ffmpeg_receive(sdp_path: Path, seconds: float) -> np.ndarray:
    """FFmpeg receives the RTP stream the SDP file describes; returns the decoded samples."""
    inp = av.open(str(sdp_path), format="sdp", timeout=5.0,
                  options={"protocol_whitelist": "file,udp,rtp", "rw_timeout": "5000000"})
    chunks: list[np.ndarray] = []
    try:
        for frame in inp.decode(audio=0):
            chunks.append(frame.to_ndarray().reshape(-1))
            if sum(len(c) for c in chunks) >= seconds * 8000:
                break
    finally:
        inp.close()
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


def write_sdp(path: Path, port: int, codec: Codec) -> Path:
    path.write_text(f"v=0\r\no=- 1 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
                    f"m=audio {port} RTP/AVP {codec.payload_type}\r\n"
                    f"a=rtpmap:{codec.payload_type} {codec.encoding}\r\n")
    return path


def test_endpoint_receives_ffmpeg_rtp_and_rtcp() -> None:
    async def main() -> None:
        ep = await RtpEndpoint.open(HOST, allocator())
        ep.configure(PCMU)
        packets = []
        ep.on_rtp = lambda packet, data, arrival: packets.append(packet)
        await asyncio.to_thread(ffmpeg_send, ep.rtp_port, 440.0, 1.0)
        await asyncio.sleep(0.1)
        assert len(packets) == 50 and {len(p.payload) for p in packets} == {160}
        assert ep.latched and ep.stats.lost == 0 and ep.stats.expected == 50
        assert ep.stats.jitter_seconds < 0.02
        # FFmpeg's sender report, parsed with aiortc's RTCP classes, names the same SSRC.
        assert ep.remote_sender is not None and ep.rtcp_received >= 1
        assert ep.stats.ssrc == packets[0].ssrc
        ep.close()

    asyncio.run(main())


def test_relay_transcodes_between_two_ffmpeg_peers(tmp_path: Path) -> None:
    async def main() -> None:
        ports = allocator()
        a, b = await RtpEndpoint.open(HOST, ports), await RtpEndpoint.open(HOST, ports)
        a.configure(PCMU)
        b.configure(PCMA)
        rx = free_even_port()
        b.set_remote(HOST, rx)
        relay = Relay(a, b)
        relay.start()
        receiver = asyncio.create_task(
            asyncio.to_thread(ffmpeg_receive, write_sdp(tmp_path / "b.sdp", rx, PCMA), 1.2))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(ffmpeg_send, a.rtp_port, 440.0, 1.6)
        pcm = await receiver
        assert len(pcm) >= 8000
        assert abs(peak_frequency(pcm[800:], 8000) - 440.0) <= 0.02 * 440.0
        assert relay.mode == "transcode" and relay.ab.stats.sent == relay.ab.stats.transcoded_in
        relay.stop()
        a.close()
        b.close()

    asyncio.run(main())


def test_room_mixes_two_ffmpeg_talkers_for_a_listener(tmp_path: Path) -> None:
    async def main() -> None:
        ports = allocator()
        mixer = Mixer(8000)
        endpoints = {}
        for name in ("low", "high", "listener"):
            ep = await RtpEndpoint.open(HOST, ports)
            ep.configure(PCMU)
            endpoints[name] = ep
        rx = free_even_port()
        endpoints["listener"].set_remote(HOST, rx)
        for name, ep in endpoints.items():
            mixer.attach(ep, name)
        driver = TickDriver(mixer.tick)
        driver.start()
        receiver = asyncio.create_task(asyncio.to_thread(
            ffmpeg_receive, write_sdp(tmp_path / "listener.sdp", rx, PCMU), 1.2))
        await asyncio.sleep(0.3)
        await asyncio.gather(
            asyncio.to_thread(ffmpeg_send, endpoints["low"].rtp_port, 440.0, 1.6),
            asyncio.to_thread(ffmpeg_send, endpoints["high"].rtp_port, 660.0, 1.6))
        pcm = await receiver
        driver.stop()
        assert len(pcm) >= 8000
        # The mix from its first to its last sounding sample, contiguous: deleting the
        # zero-valued samples inside it would splice the waveform and smear the spectrum.
        sounding = np.flatnonzero(pcm)
        speech = pcm[sounding[0]:sounding[-1] + 1]
        low, high = tone_levels(speech, 8000, [440.0, 660.0])
        assert low > 0.2 and high > 0.2, (low, high)
        talkers = [mixer.participants[n].jitter.stats for n in ("low", "high")]
        assert all(s.played >= 70 and s.late <= 2 for s in talkers), talkers
        for ep in endpoints.values():
            ep.close()

    asyncio.run(main())
