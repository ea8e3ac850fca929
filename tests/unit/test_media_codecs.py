"""The codec wrappers: G.711 tables agree with aiortc's coders; every aiortc codec round-trips."""

from __future__ import annotations

import fractions

import numpy as np
import pytest
from aiortc.codecs.g711 import PcmaDecoder, PcmaEncoder, PcmuDecoder, PcmuEncoder
from aiortc.jitterbuffer import JitterFrame
from av import AudioFrame

from appliance.media.codecs import (
    AiortcDecoder,
    AiortcEncoder,
    CodecError,
    G711Decoder,
    G711Encoder,
    create_decoder,
    create_encoder,
    g711_tables,
    is_supported,
)
from appliance.media.sdp import Codec
from appliance.media.tones import peak_frequency, tone

PCMU = Codec(0, "PCMU", 8000)
PCMA = Codec(8, "PCMA", 8000)
G722 = Codec(9, "G722", 8000)
OPUS = Codec(111, "opus", 48000, 2)


@pytest.mark.parametrize(("law", "enc_cls", "dec_cls"),
                         [("pcmu", PcmuEncoder, PcmuDecoder), ("pcma", PcmaEncoder, PcmaDecoder)])
def test_g711_tables_match_aiortc(law: str, enc_cls: type, dec_cls: type) -> None:
    rng = np.random.default_rng(1)
    pcm = rng.integers(-32768, 32767, 160 * 20, dtype=np.int16)
    frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = 8000, 0, fractions.Fraction(1, 8000)
    expected = b"".join(enc_cls().encode(frame)[0])
    assert b"".join(G711Encoder(law).encode(pcm)) == expected
    decoded = dec_cls().decode(JitterFrame(expected, 0))[0].to_ndarray().reshape(-1)
    assert np.array_equal(G711Decoder(law).decode(expected), decoded)


def test_g711_tables_are_standard() -> None:
    ulaw_dec, ulaw_enc = g711_tables("pcmu")
    alaw_dec, alaw_enc = g711_tables("pcma")
    # G.711 fixed points: mu-law 0xFF/0x7F decode to 0, 0x00 to -32124; A-law 0xD5 to 8.
    assert ulaw_dec[0xFF] == 0 and ulaw_dec[0x00] == -32124 and ulaw_dec[0x80] == 32124
    assert alaw_dec[0xD5] == 8 and alaw_dec[0x55] == -8
    assert ulaw_enc[np.uint16(0)] == 0xFF and alaw_enc[np.uint16(0)] == 0xD5
    # Decoding an encoded value stays close (companding error < 1/16 of magnitude + step).
    x = np.arange(-32768, 32767, 97, dtype=np.int16)
    for dec, enc in ((ulaw_dec, ulaw_enc), (alaw_dec, alaw_enc)):
        y = dec[enc[x.view(np.uint16)]].astype(np.int32)
        assert np.all(np.abs(y - x) <= np.abs(x.astype(np.int32)) // 16 + 132)


def test_g711_encoder_carries_partial_frames() -> None:
    enc = G711Encoder("pcmu")
    assert enc.encode(np.zeros(100, np.int16)) == []
    out = enc.encode(np.zeros(300, np.int16))
    assert [len(p) for p in out] == [160, 160]
    assert len(enc.encode(np.zeros(80, np.int16))) == 1  # 80 carried + 80


def test_factory_picks_tables_for_g711_at_8k() -> None:
    assert isinstance(create_decoder(PCMU), G711Decoder)
    assert isinstance(create_encoder(PCMA), G711Encoder)
    assert isinstance(create_decoder(PCMU, 16000), AiortcDecoder)
    assert isinstance(create_encoder(OPUS, 8000), AiortcEncoder)
    assert is_supported(G722) and is_supported(OPUS) and not is_supported(Codec(18, "G729", 8000))
    with pytest.raises(CodecError):
        create_decoder(Codec(18, "G729", 8000))


@pytest.mark.parametrize("codec", [PCMU, PCMA, G722, OPUS], ids=lambda c: c.name)
@pytest.mark.parametrize("rate", [8000, 16000])
def test_round_trip_keeps_frequency(codec: Codec, rate: int) -> None:
    enc, dec = create_encoder(codec, rate), create_decoder(codec, rate)
    signal = tone(440.0, 1.0, rate)
    step = rate // 50
    out = []
    ts = 0
    for i in range(0, len(signal), step):
        for payload in enc.encode(signal[i:i + step]):
            out.append(dec.decode(payload, ts))
            ts += codec.clock_rate // 50
    pcm = np.concatenate(out)
    assert len(pcm) >= 0.9 * len(signal)
    assert abs(peak_frequency(pcm[rate // 10:], rate) - 440.0) < 440.0 * 0.02
    if codec is OPUS:
        assert max(len(p) for p in enc.encode(signal[:step])) < 200  # voice bit rate, not 96k
