"""Conference mixing: N-1 mixes of every participant, one 20 ms tick at a time.

aiortc has no mixer; its codecs and PyAV's resampler are used per participant
(`appliance.media.codecs`). Each tick:

1. pop each participant's due packet from its `JitterBuffer`;
2. decode into one (participants x samples) int16 block: G.711 participants at
   8 kHz all at once by table lookup, the others (G.722, Opus, G.711 into a
   16 kHz room, odd packet sizes) one by one through aiortc + PyAV;
3. sum the block in int32; each participant's mix is the sum minus its own row
   (N-1), plus any prompt or tone being played, clipped to int16 (saturating,
   never wrapping);
4. encode: G.711 rows in one gather per law, the others one by one; send each
   participant its RTP packet under its own SSRC / sequence / timestamp.

`TickDriver` calls `Mixer.tick` every 20 ms on the event loop's monotonic
clock: deadlines are start + k x 20 ms, so there is no drift; a late tick runs
at once, whole missed ticks are skipped and counted, as are overruns.
`mixer_benchmark()` measures the CPU one tick costs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import statistics
import struct
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiortc.rtp import RtpPacket

from .codecs import create_decoder, create_encoder, frame_clock, g711_tables
from .dtmf import DtmfEvent, TelephoneEventDetector
from .jitter import JitterBuffer
from .rtp import RtpEndpoint
from .sdp import Codec

log = logging.getLogger(__name__)

_HEADER = struct.Struct("!BBHLL")
_LAWS = ("pcmu", "pcma")


class Participant:
    """One member of a room: its jitter buffer, coders and outgoing RTP numbering."""

    def __init__(self, pid: Hashable, codec: Codec, send: Callable[[bytes], Any], *,
                 rate: int, ptime: float, telephone_event: Codec | None = None,
                 jitter: JitterBuffer | None = None) -> None:
        self.id = pid
        self.codec = codec
        self.send = send
        self.jitter = jitter or JitterBuffer(codec.clock_rate, ptime)
        name = codec.name.lower()
        self.law = name if name in _LAWS and rate == 8000 else None
        self.decoder = create_decoder(codec, rate)
        self.encoder = None if self.law else create_encoder(codec, rate)
        self.samples = round(rate * ptime)
        self.frame_clock = frame_clock(codec, ptime)
        self.payload_type = codec.payload_type
        self.event_pt = telephone_event.payload_type if telephone_event else None
        self.detector = TelephoneEventDetector()
        self.ssrc = random.getrandbits(32)
        self.sequence = random.getrandbits(16)
        self.timestamp = random.getrandbits(32)
        self.marker = 1
        self.muted = False
        self.endpoint: RtpEndpoint | None = None  # set by Mixer.attach
        self._carry = np.zeros(0, np.int16)
        self.prompt: deque[np.ndarray] = deque()
        self.frames_in = 0
        self.silent_ticks = 0
        self.sent = 0

    def __repr__(self) -> str:
        return f"<Participant {self.id!r} {self.codec.encoding}>"

    def emit(self, payload: bytes) -> None:
        data = _HEADER.pack(0x80, (self.marker << 7) | self.payload_type, self.sequence,
                            self.timestamp, self.ssrc) + payload
        self.marker = 0
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.timestamp = (self.timestamp + self.frame_clock) & 0xFFFFFFFF
        self.sent += 1
        self.send(data)

    def pcm(self, packet: RtpPacket | None) -> np.ndarray | None:
        """The slow path: decode into the carry, return one tick of samples when there is one."""
        if packet is not None and packet.payload_type == self.payload_type:
            pcm = self.decoder.decode(packet.payload, packet.timestamp)
            if pcm.size:
                self._carry = np.concatenate([self._carry, pcm]) if self._carry.size else pcm
        n = self.samples
        carry = self._carry
        if carry.size < n:
            return None
        if carry.size > 4 * n:  # the sender's clock runs fast: keep the newest
            carry = carry[-2 * n:]
        out, self._carry = carry[:n], carry[n:]
        return out


@dataclass
class MixerStats:
    ticks: int = 0
    skipped_ticks: int = 0  # ticks the driver never ran (time jumped)
    sent: int = 0
    dtmf: int = 0


class Mixer:
    """The mixing engine of one conference room (sans-IO: the caller supplies `now`).

    `rate` is the mixing rate (8000 or 16000 Hz); participants whose codec runs
    at another rate are resampled by PyAV on the way in and out.
    """

    def __init__(self, rate: int = 8000, ptime: float = 0.02, *,
                 on_dtmf: Callable[[Hashable, DtmfEvent], None] | None = None,
                 jitter_factory: Callable[[Codec], JitterBuffer] | None = None) -> None:
        self.rate = rate
        self.ptime = ptime
        self.samples = round(rate * ptime)
        self.on_dtmf = on_dtmf
        self.jitter_factory = jitter_factory
        self.participants: dict[Hashable, Participant] = {}
        self.stats = MixerStats()
        self.last_tick: float | None = None
        self._prompt: deque[np.ndarray] = deque()
        self._prompts_to = 0  # participants with a personal prompt queued
        self._rebuild()

    def __len__(self) -> int:
        return len(self.participants)

    def __contains__(self, pid: object) -> bool:
        return pid in self.participants

    def _rebuild(self) -> None:
        self._order = list(self.participants.values())
        self._law_rows = {}
        for law in _LAWS:
            rows = [i for i, p in enumerate(self._order) if p.law == law]
            if rows:
                self._law_rows[law] = (np.array(rows), [self._order[i] for i in rows])
        self._other_rows = [(i, p) for i, p in enumerate(self._order) if p.law is None]

    # -- membership -----------------------------------------------------------------------

    def add(self, pid: Hashable, codec: Codec, send: Callable[[bytes], Any], *,
            telephone_event: Codec | None = None,
            jitter: JitterBuffer | None = None) -> Participant:
        """Join `pid`, who sends and receives `codec`; `send(datagram)` carries its RTP out."""
        if pid in self.participants:
            raise KeyError(f"participant {pid!r} is already in the room")
        if jitter is None and self.jitter_factory is not None:
            jitter = self.jitter_factory(codec)
        p = Participant(pid, codec, send, rate=self.rate, ptime=self.ptime,
                        telephone_event=telephone_event, jitter=jitter)
        self.participants[pid] = p
        self._rebuild()
        return p

    def attach(self, endpoint: RtpEndpoint, pid: Hashable | None = None) -> Participant:
        """Join the peer of a configured `RtpEndpoint`: its RTP feeds the room, the mix goes back."""
        if endpoint.codec is None:
            raise ValueError("configure the endpoint's codec before attaching it")
        pid = endpoint if pid is None else pid
        p = self.add(pid, endpoint.codec, endpoint.send_rtp,
                     telephone_event=endpoint.telephone_event)

        def on_rtp(packet: RtpPacket, data: bytes, arrival: float) -> None:
            self.push(pid, packet, arrival)

        endpoint.on_rtp = on_rtp
        p.endpoint = endpoint
        return p

    def remove(self, pid: Hashable) -> Participant | None:
        p = self.participants.pop(pid, None)
        if p is not None:
            if p.endpoint is not None:
                p.endpoint.on_rtp = None  # attached: stop feeding the room
                p.endpoint = None
            if p.prompt:
                self._prompts_to -= 1
            self._rebuild()
        return p

    def mute(self, pid: Hashable, muted: bool = True) -> None:
        self.participants[pid].muted = muted

    # -- input ----------------------------------------------------------------------------

    def push(self, pid: Hashable, packet: RtpPacket, now: float) -> None:
        """An RTP packet from participant `pid`, arrived at `now`."""
        p = self.participants.get(pid)
        if p is None:
            return
        if packet.payload_type == p.event_pt:
            event = p.detector.feed(packet)
            if event is not None:
                self.stats.dtmf += 1
                if self.on_dtmf is not None:
                    self.on_dtmf(pid, event)
            return
        p.jitter.push(packet, now)

    def play(self, pcm: np.ndarray, to: Hashable | None = None) -> None:
        """Mix `pcm` (int16 at the room's rate) into everybody's output, or only `to`'s."""
        pcm = np.asarray(pcm, dtype=np.int16)
        chunks = [pcm[i:i + self.samples] for i in range(0, len(pcm), self.samples)]
        if to is None:
            self._prompt.extend(chunks)
        else:
            p = self.participants[to]
            if not p.prompt:
                self._prompts_to += 1
            p.prompt.extend(chunks)

    # -- the tick -------------------------------------------------------------------------

    def tick(self, now: float) -> int:
        """Mix and send one frame for every participant; returns packets sent."""
        n_ticks = 1
        if self.last_tick is not None:
            n_ticks = max(1, round((now - self.last_tick) / self.ptime))
        self.last_tick = now
        self.stats.ticks += 1
        parts = self._order
        n = len(parts)
        if n_ticks > 1:
            self.stats.skipped_ticks += n_ticks - 1
            for p in parts:  # leave a gap in the timestamps for the ticks that never ran
                p.timestamp = (p.timestamp + (n_ticks - 1) * p.frame_clock) & 0xFFFFFFFF
        prompt = self._prompt.popleft() if self._prompt else None
        if n == 0:
            return 0
        S = self.samples
        block = np.zeros((n, S), np.int16)

        # 1-2: pop and decode.
        fast: dict[str, tuple[list[int], list[bytes]]] = {}
        for i, p in enumerate(parts):
            packet = p.jitter.pop(now)
            if packet is not None:
                p.frames_in += 1
                if (p.law is not None and len(packet.payload) == S and not p._carry.size
                        and packet.payload_type == p.payload_type):
                    if not p.muted:
                        rows, payloads = fast.setdefault(p.law, ([], []))
                        rows.append(i)
                        payloads.append(packet.payload)
                    continue
            else:
                p.silent_ticks += 1
            pcm = p.pcm(packet)
            if pcm is not None and not p.muted:
                block[i] = pcm
        for law, (rows, payloads) in fast.items():
            codes = np.frombuffer(b"".join(payloads), np.uint8).reshape(len(rows), S)
            block[rows] = g711_tables(law)[0][codes]

        # 3: N-1 mix, saturating.
        total = block.sum(axis=0, dtype=np.int32)
        if prompt is not None:
            total[:prompt.size] += prompt
        mix = total - block  # int32
        if self._prompts_to:
            for i, p in enumerate(parts):
                if p.prompt:
                    chunk = p.prompt.popleft()
                    mix[i, :chunk.size] += chunk
                    if not p.prompt:
                        self._prompts_to -= 1
        np.clip(mix, -32768, 32767, out=mix)
        out = mix.astype(np.int16)

        # 4: encode and send.
        sent = 0
        for law, (rows, members) in self._law_rows.items():
            codes = g711_tables(law)[1][out[rows].view(np.uint16)]
            for j, p in enumerate(members):
                p.emit(codes[j].tobytes())
            sent += len(members)
        for i, p in self._other_rows:
            for payload in p.encoder.encode(out[i]):  # type: ignore[union-attr]
                p.emit(payload)
                sent += 1
        self.stats.sent += sent
        return sent


class TickDriver:
    """Call `callback(deadline)` every `interval` seconds on the running loop's clock.

    Deadlines are start + k x interval (no drift). A tick that starts late runs
    at once; when whole intervals were missed they are skipped (`skipped`). An
    `overrun` is a callback that ended after the next deadline.
    """

    def __init__(self, callback: Callable[[float], Any], interval: float = 0.02) -> None:
        self.callback = callback
        self.interval = interval
        self.ticks = 0
        self.overruns = 0
        self.skipped = 0
        self.max_lateness = 0.0
        self.cpu = 0.0  # thread CPU seconds spent in the callback
        self.cpu_max = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._next = 0.0

    @property
    def running(self) -> bool:
        return self._handle is not None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._next = self._loop.time() + self.interval
        self._handle = self._loop.call_at(self._next, self._fire)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        loop = self._loop
        assert loop is not None
        deadline = self._next
        started = time.monotonic()
        begun = loop.time()
        lateness = max(0.0, begun - deadline)
        self.max_lateness = max(self.max_lateness, lateness)
        c0 = time.thread_time()
        try:
            self.callback(deadline)
        except Exception:
            log.exception("tick callback failed")
        cpu = time.thread_time() - c0
        self.cpu += cpu
        self.cpu_max = max(self.cpu_max, cpu)
        self.ticks += 1
        if self._handle is None:  # stopped from inside the callback
            return
        ended = begun + (time.monotonic() - started)  # uvloop's loop.time() is cached
        self._next = deadline + self.interval
        if ended > self._next:
            self.overruns += 1
            behind = ended - self._next
            if behind >= self.interval:
                missed = math.floor(behind / self.interval)
                self.skipped += missed
                self._next += missed * self.interval
        self._handle = loop.call_at(self._next, self._fire)


def mixer_benchmark(participants: int = 100, seconds: float = 5.0, *, codec: str = "PCMU",
                    rate: int = 8000, udp: bool = False) -> dict[str, float]:
    """Run a room of `participants` all talking for `seconds` on a real event loop.

    Every tick each participant's packet is parsed from bytes and pushed into
    the room (what the RTP endpoint does on receive), then the room ticks. With
    `udp` the mixes are sent over a loopback UDP socket, else to a no-op. CPU
    times are thread CPU, in milliseconds per 20 ms tick. Runs its own loop:
    call it outside one.
    """
    from .tones import tone

    name, _, clock = codec.partition("/")
    c = Codec(0 if name.upper() == "PCMU" else 8 if name.upper() == "PCMA" else 96, name,
              int(clock or (48000 if name.lower() == "opus" else 8000)),
              2 if name.lower() == "opus" else 1)
    src_rate = 8000 if name.lower() in _LAWS else {"g722": 16000, "opus": 48000}[name.lower()]
    # A few distinct one-second loops of talk, pre-encoded.
    loops = []
    for k in range(8):
        enc = create_encoder(c, src_rate)
        sig = tone(300 + 70 * k, 1.0, src_rate, level=-20.0)
        step = round(src_rate * 0.02)
        loops.append([b for i in range(0, len(sig), step) for b in enc.encode(sig[i:i + step])])
    step_ts = frame_clock(c)

    async def run() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        sink = None
        if udp:
            import socket
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            rx.bind(("127.0.0.1", 0))
            sink_addr = rx.getsockname()
            tx, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                        local_addr=("127.0.0.1", 0))
            sink = tx

            def send(data: bytes) -> None:
                tx.sendto(data, sink_addr)
        else:
            def send(data: bytes) -> None:
                return None

        mixer = Mixer(rate)
        senders = []
        for i in range(participants):
            mixer.add(i, c, send)
            senders.append([random.getrandbits(32), random.getrandbits(16),
                            random.getrandbits(32), loops[i % len(loops)], i * 7])
        push_cpu: list[float] = []
        tick_cpu: list[float] = []

        def on_tick(deadline: float) -> None:
            arrival = loop.time()
            c0 = time.thread_time()
            for i, s in enumerate(senders):
                ssrc, seq, ts, frames, k = s
                data = _HEADER.pack(0x80, c.payload_type, seq, ts, ssrc) + frames[k % len(frames)]
                mixer.push(i, RtpPacket.parse(data), arrival)
                s[1] = (seq + 1) & 0xFFFF
                s[2] = (ts + step_ts) & 0xFFFFFFFF
                s[4] = k + 1
            c1 = time.thread_time()
            mixer.tick(deadline)
            c2 = time.thread_time()
            push_cpu.append(c1 - c0)
            tick_cpu.append(c2 - c1)

        driver = TickDriver(on_tick)
        wall0, cpu0 = time.monotonic(), time.process_time()
        driver.start()
        await asyncio.sleep(seconds)
        driver.stop()
        wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
        if sink is not None:
            sink.close()
            rx.close()
        ticks = tick_cpu[10:] or tick_cpu  # leave out the warm-up
        pushes = push_cpu[10:] or push_cpu
        ms = 1000.0
        return {
            "participants": participants,
            "seconds": round(wall, 3),
            "ticks": driver.ticks,
            "overruns": driver.overruns,
            "skipped": driver.skipped,
            "max_lateness_ms": round(driver.max_lateness * ms, 3),
            "tick_cpu_ms_mean": round(statistics.fmean(ticks) * ms, 3),
            "tick_cpu_ms_p99": round(float(np.percentile(ticks, 99)) * ms, 3),
            "tick_cpu_ms_max": round(max(ticks) * ms, 3),
            "push_cpu_ms_mean": round(statistics.fmean(pushes) * ms, 3),
            "process_cpu_percent": round(100.0 * cpu / wall, 1),
            "sent": mixer.stats.sent,
            "received_frames": sum(p.frames_in for p in mixer.participants.values()),
        }

    return asyncio.run(run())
