"""Audio codecs as PCM in, payloads out: aiortc's coders behind one small interface.

aiortc ships PCMU, PCMA, G.722 and Opus (`aiortc.codecs`, built on PyAV's
codec contexts). Its `Decoder.decode` takes a `JitterFrame` and returns PyAV
frames; its `Encoder.encode` takes a PyAV frame and resamples it itself. The
relay and the mixer want mono int16 numpy samples at one rate, so this module
wraps them:

- `AiortcDecoder`: aiortc decoder, then one PyAV `AudioResampler` to mono s16
  at the rate the caller works in (the only place the relay and the mixer
  resample on the way in).
- `AiortcEncoder`: samples at the caller's rate into an `AudioFrame`; aiortc's
  encoder resamples to the codec's own rate and layout.
- `G711Decoder` / `G711Encoder`: the same G.711 as aiortc's coders, as numpy
  lookup tables (256 entries to decode, 65,536 to encode) that are *built by
  running aiortc's own coders once*. They decode or encode a whole 2-D block of
  frames in one gather, which is what lets the mixer handle hundreds of
  G.711 participants per 20 ms tick (a PyAV round trip costs ~30 µs a frame).
"""

from __future__ import annotations

import fractions
from abc import ABC, abstractmethod
from functools import cache

import numpy as np
from aiortc.codecs import get_decoder, get_encoder
from aiortc.codecs.g711 import PcmaDecoder, PcmaEncoder, PcmuDecoder, PcmuEncoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av import AudioFrame, AudioResampler

from .sdp import Codec

#: Sample rate of the audio each codec carries (not the RTP clock: G.722 runs
#: at 16 kHz on an 8 kHz RTP clock, RFC 3551 §4.5.2).
SAMPLE_RATES = {"pcmu": 8000, "pcma": 8000, "g722": 16000, "opus": 48000}

#: Opus bit rate for SIP legs. aiortc's default (96 kbit/s, for WebRTC music)
#: makes 400-byte packets; 32 kbit/s is wideband voice.
OPUS_BITRATE = 32000

PTIME = 0.02


class CodecError(ValueError):
    """A codec this build cannot decode or encode."""


def is_supported(codec: Codec) -> bool:
    """Whether `codec` can be decoded and encoded here (PCMU, PCMA, G722, opus)."""
    return codec.name.lower() in SAMPLE_RATES


def sample_rate(codec: Codec) -> int:
    try:
        return SAMPLE_RATES[codec.name.lower()]
    except KeyError:
        raise CodecError(f"no codec for {codec.encoding}") from None


def frame_clock(codec: Codec, ptime: float = PTIME) -> int:
    """RTP timestamp increment of one `ptime` frame (160 for PCMU and G.722, 960 for Opus)."""
    return round(codec.clock_rate * ptime)


def _parameters(codec: Codec) -> RTCRtpCodecParameters:
    return RTCRtpCodecParameters(
        mimeType=f"audio/{codec.name}",
        clockRate=codec.clock_rate,
        channels=codec.channels,
        payloadType=codec.payload_type,
    )


class Decoder(ABC):
    """Payload in, mono int16 samples at `rate` out (any length, possibly empty)."""

    rate: int

    @abstractmethod
    def decode(self, payload: bytes, timestamp: int) -> np.ndarray: ...


class Encoder(ABC):
    """Mono int16 samples at `rate` in, zero or more 20 ms payloads out."""

    rate: int

    @abstractmethod
    def encode(self, pcm: np.ndarray) -> list[bytes]: ...


@cache
def g711_tables(law: str) -> tuple[np.ndarray, np.ndarray]:
    """(decode, encode) tables for "pcmu" or "pcma", made by aiortc's own G.711 coders.

    decode: uint8 code -> int16 sample (256 entries).
    encode: int16 sample viewed as uint16 -> uint8 code (65,536 entries).
    """
    enc_cls, dec_cls = {"pcmu": (PcmuEncoder, PcmuDecoder),
                        "pcma": (PcmaEncoder, PcmaDecoder)}[law]
    samples = np.arange(65536, dtype=np.uint16).view(np.int16)
    padded = np.concatenate([samples, np.zeros(-len(samples) % 160, np.int16)])
    frame = AudioFrame.from_ndarray(padded.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 8000
    frame.pts = 0
    frame.time_base = fractions.Fraction(1, 8000)
    payloads, _ = enc_cls().encode(frame)
    encode = np.frombuffer(b"".join(payloads), np.uint8)[:65536].copy()
    decoded = dec_cls().decode(JitterFrame(bytes(range(256)), 0))
    decode = np.concatenate([f.to_ndarray().reshape(-1) for f in decoded]).astype(np.int16)
    assert encode.shape == (65536,) and decode.shape == (256,)
    encode.flags.writeable = False
    decode.flags.writeable = False
    return decode, encode


class G711Decoder(Decoder):
    """G.711 by table lookup; stateless, so a block of frames decodes in one gather."""

    rate = 8000

    def __init__(self, law: str) -> None:
        self.law = law
        self.table = g711_tables(law)[0]

    def decode(self, payload: bytes, timestamp: int = 0) -> np.ndarray:
        return self.table[np.frombuffer(payload, np.uint8)]


class G711Encoder(Encoder):
    """G.711 by table lookup, 160 samples (20 ms) a payload."""

    rate = 8000

    def __init__(self, law: str, ptime: float = PTIME) -> None:
        self.law = law
        self.table = g711_tables(law)[1]
        self.frame = round(8000 * ptime)
        self._carry = np.zeros(0, np.int16)

    def encode(self, pcm: np.ndarray) -> list[bytes]:
        if self._carry.size:
            pcm = np.concatenate([self._carry, pcm])
        whole = len(pcm) - len(pcm) % self.frame
        self._carry = pcm[whole:].astype(np.int16, copy=True)
        codes = self.table[pcm[:whole].astype(np.int16, copy=False).view(np.uint16)]
        return [codes[i:i + self.frame].tobytes() for i in range(0, whole, self.frame)]


class AiortcDecoder(Decoder):
    """aiortc's decoder for `codec`, resampled by PyAV to mono s16 at `rate`."""

    def __init__(self, codec: Codec, rate: int | None = None) -> None:
        self.codec = codec
        self.rate = rate or sample_rate(codec)
        self._decoder = get_decoder(_parameters(codec))
        self._resampler = AudioResampler(format="s16", layout="mono", rate=self.rate)

    def decode(self, payload: bytes, timestamp: int) -> np.ndarray:
        out = []
        for frame in self._decoder.decode(JitterFrame(payload, timestamp)):
            if (frame.sample_rate == self.rate and frame.layout.name == "mono"
                    and frame.format.name == "s16"):
                out.append(frame.to_ndarray().reshape(-1))  # already what we want (G.722 at 16k)
                continue
            for resampled in self._resampler.resample(frame):
                out.append(resampled.to_ndarray().reshape(-1))
        if not out:
            return np.zeros(0, np.int16)
        return out[0] if len(out) == 1 else np.concatenate(out)


class AiortcEncoder(Encoder):
    """aiortc's encoder for `codec`, fed mono s16 at `rate` (aiortc resamples to the codec)."""

    def __init__(self, codec: Codec, rate: int | None = None) -> None:
        self.codec = codec
        self.rate = rate or sample_rate(codec)
        self._encoder = get_encoder(_parameters(codec))
        if codec.name.lower() == "opus":
            # The codec context opens on the first frame; the bit rate can still change.
            self._encoder.codec.bit_rate = OPUS_BITRATE
        # A stereo codec (Opus) gets both channels filled: aiortc's own mono-to-stereo
        # upmix puts the voice 3 dB down.
        self._stereo = codec.channels == 2
        self._pts = 0
        self._time_base = fractions.Fraction(1, self.rate)

    def encode(self, pcm: np.ndarray) -> list[bytes]:
        pcm = np.asarray(pcm, dtype=np.int16)
        samples = pcm.size
        if self._stereo:
            frame = AudioFrame.from_ndarray(np.repeat(pcm, 2).reshape(1, -1), format="s16",
                                            layout="stereo")
        else:
            frame = AudioFrame.from_ndarray(np.ascontiguousarray(pcm).reshape(1, -1),
                                            format="s16", layout="mono")
        frame.sample_rate = self.rate
        frame.pts = self._pts
        frame.time_base = self._time_base
        self._pts += samples
        payloads, _ = self._encoder.encode(frame)
        return payloads


def create_decoder(codec: Codec, rate: int | None = None) -> Decoder:
    """A decoder for `codec` giving mono int16 at `rate` (default: the codec's own rate)."""
    name = codec.name.lower()
    native = sample_rate(codec)
    rate = rate or native
    if name in ("pcmu", "pcma") and rate == 8000:
        return G711Decoder(name)
    return AiortcDecoder(codec, rate)


def create_encoder(codec: Codec, rate: int | None = None) -> Encoder:
    """An encoder for `codec` taking mono int16 at `rate` (default: the codec's own rate)."""
    name = codec.name.lower()
    native = sample_rate(codec)
    rate = rate or native
    if name in ("pcmu", "pcma") and rate == 8000:
        return G711Encoder(name)
    return AiortcEncoder(codec, rate)
