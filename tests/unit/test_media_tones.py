"""Tone generators, WAV files and the frequency meter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appliance.media.tones import (
    dtmf_tone,
    join_tone,
    leave_tone,
    load_audio,
    peak_frequency,
    read_wav,
    silence,
    tone,
    tone_levels,
    write_wav,
)


@pytest.mark.parametrize(("freq", "rate"), [(440.0, 8000), (1004.0, 8000), (3000.0, 16000)])
def test_tone_frequency_and_level(freq: float, rate: int) -> None:
    x = tone(freq, 0.5, rate, level=-6.0)
    assert x.dtype == np.int16 and len(x) == rate // 2
    assert abs(peak_frequency(x, rate) - freq) < 1.0
    assert abs(np.abs(x).max() - 32767 * 10 ** (-6 / 20)) < 50
    assert abs(int(x[0])) < 100 and abs(int(x[-1])) < 300  # faded, no click


def test_full_scale_tone_does_not_wrap() -> None:
    x = tone([500.0, 700.0], 0.2, 8000, level=0.0)  # two full-scale sines: clipped, not wrapped
    assert x.max() == 32767 and x.min() == -32768


def test_dtmf_join_leave() -> None:
    x = dtmf_tone("5", 0.2)
    levels = tone_levels(x, 8000, [770.0, 1336.0, 697.0, 1209.0])
    assert levels[0] > 0.3 and levels[1] > 0.3 and max(levels[2:]) < 0.01
    with pytest.raises(ValueError):
        dtmf_tone("x")
    j, leave = join_tone(), leave_tone()
    assert len(j) == len(leave) == 2640
    assert peak_frequency(j[:900], 8000) < peak_frequency(j[-1400:], 8000)  # rising
    assert peak_frequency(leave[:900], 8000) > peak_frequency(leave[-1400:], 8000)  # falling
    assert not silence(0.1).any() and len(silence(0.1, 16000)) == 1600


def test_wav_round_trip_and_pyav_loading(tmp_path: Path) -> None:
    x = tone(440.0, 0.5, 16000)
    path = tmp_path / "prompt.wav"
    write_wav(path, x, 16000)
    y, rate = read_wav(path)
    assert rate == 16000 and np.array_equal(x, y)
    z = load_audio(path, 8000)  # decoded and resampled by PyAV
    assert abs(len(z) - 4000) < 100 and abs(peak_frequency(z, 8000) - 440.0) < 3.0


def test_read_wav_stereo_and_rejects_8_bit(tmp_path: Path) -> None:
    import wave

    stereo = tmp_path / "stereo.wav"
    with wave.open(str(stereo), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.array([100, 300, -100, -300], "<i2").tobytes())
    mono, rate = read_wav(stereo)
    assert mono.tolist() == [200, -200] and rate == 8000
    eight = tmp_path / "eight.wav"
    with wave.open(str(eight), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(8000)
        w.writeframes(b"\x80\x80")
    with pytest.raises(ValueError):
        read_wav(eight)
