"""Tones and prompts: sine generators, join/leave beeps, WAV files, a frequency meter.

All samples are mono int16 numpy arrays at an explicit rate. WAV is read and
written with the standard `wave` module (16-bit PCM); `load_audio` uses PyAV
to open any format FFmpeg knows (a prompt in MP3 or Ogg) and resample it.
"""

from __future__ import annotations

import wave
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: DTMF frequency pairs (ITU-T Q.23), for in-band tones.
DTMF_FREQUENCIES = {
    "1": (697, 1209), "2": (697, 1336), "3": (697, 1477), "A": (697, 1633),
    "4": (770, 1209), "5": (770, 1336), "6": (770, 1477), "B": (770, 1633),
    "7": (852, 1209), "8": (852, 1336), "9": (852, 1477), "C": (852, 1633),
    "*": (941, 1209), "0": (941, 1336), "#": (941, 1477), "D": (941, 1633),
}


def silence(duration: float, rate: int = 8000) -> np.ndarray:
    return np.zeros(round(duration * rate), np.int16)


def tone(frequency: float | Sequence[float], duration: float, rate: int = 8000, *,
         level: float = -12.0, fade: float = 0.005, phase: float = 0.0) -> np.ndarray:
    """A sine (or a sum of sines, each at `level` dBFS) with `fade` seconds of ramp each end."""
    freqs = [frequency] if isinstance(frequency, (int, float)) else list(frequency)
    n = round(duration * rate)
    t = np.arange(n) / rate
    amplitude = 32767.0 * 10 ** (level / 20.0)
    signal = np.zeros(n)
    for f in freqs:
        signal += np.sin(2 * np.pi * f * t + phase)
    signal *= amplitude
    ramp = min(n // 2, round(fade * rate))
    if ramp:
        window = np.linspace(0.0, 1.0, ramp, endpoint=False)
        signal[:ramp] *= window
        signal[n - ramp:] *= window[::-1]
    return np.clip(np.round(signal), -32768, 32767).astype(np.int16)


def join_tone(rate: int = 8000) -> np.ndarray:
    """Two rising notes: someone joined the room."""
    return np.concatenate([tone(523.25, 0.12, rate), silence(0.03, rate),
                           tone(784.0, 0.18, rate)])


def leave_tone(rate: int = 8000) -> np.ndarray:
    """Two falling notes: someone left the room."""
    return np.concatenate([tone(784.0, 0.12, rate), silence(0.03, rate),
                           tone(523.25, 0.18, rate)])


def dtmf_tone(digit: str, duration: float = 0.1, rate: int = 8000,
              level: float = -10.0) -> np.ndarray:
    """The in-band dual tone of a DTMF digit."""
    try:
        pair = DTMF_FREQUENCIES[digit.upper()]
    except KeyError:
        raise ValueError(f"not a DTMF digit: {digit!r}") from None
    return tone(pair, duration, rate, level=level)


def write_wav(path: str | Path, samples: np.ndarray, rate: int = 8000) -> None:
    """Write mono 16-bit PCM."""
    data = np.asarray(samples, dtype="<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data.tobytes())


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read 16-bit PCM WAV as (mono int16 samples, rate); stereo is averaged to mono."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is read here (use load_audio)")
        channels, rate = w.getnchannels(), w.getframerate()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1).round().astype(np.int16)
    return data.astype(np.int16), rate


def load_audio(path: str | Path, rate: int = 8000) -> np.ndarray:
    """Any audio file FFmpeg reads, decoded by PyAV and resampled to mono int16 at `rate`."""
    import av

    chunks = []
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    return np.concatenate(chunks).astype(np.int16) if chunks else np.zeros(0, np.int16)


def peak_frequency(samples: np.ndarray, rate: int) -> float:
    """The strongest frequency in `samples` (Hann window, parabolic interpolation of the peak)."""
    x = np.asarray(samples, dtype=np.float64)
    if x.size < 8:
        raise ValueError("too few samples to measure a frequency")
    x = x - x.mean()
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    k = int(np.argmax(spectrum[1:-1])) + 1
    a, b, c = np.log(spectrum[k - 1:k + 2] + 1e-12)
    denom = a - 2 * b + c
    offset = 0.5 * (a - c) / denom if denom else 0.0
    return (k + offset) * rate / x.size


def tone_levels(samples: np.ndarray, rate: int, frequencies: Sequence[float],
                width: float = 15.0) -> list[float]:
    """Relative energy of each frequency (±`width` Hz) as a share of the whole spectrum."""
    x = np.asarray(samples, dtype=np.float64)
    x = x - x.mean()
    power = np.abs(np.fft.rfft(x * np.hanning(x.size))) ** 2
    freqs = np.fft.rfftfreq(x.size, 1.0 / rate)
    total = power.sum() or 1.0
    return [float(power[(freqs > f - width) & (freqs < f + width)].sum() / total)
            for f in frequencies]
