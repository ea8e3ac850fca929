"""Two-party calls with the box carrying the audio: real softphones, tones measured by FFT."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import numpy as np
import pytest

from appliance.media.tones import load_audio, tone_levels
from tests.peers.baresip import make_tone_wav
from tests.peers.sipp import run_sipp, scenario

pytestmark = pytest.mark.integration

RATE = 8000


def _levels(path, freqs: list[float]) -> list[float]:
    """Share of the spectrum at each frequency, over the middle of the recording
    (skipping the first half second: call setup, jitter-buffer fill)."""
    pcm = load_audio(path, RATE)
    assert pcm.size > RATE, f"{path}: only {pcm.size} samples recorded"
    window = pcm[RATE // 2 : RATE // 2 + 2 * RATE]
    assert np.abs(window.astype(np.int32)).max() > 500, f"{path}: silence"
    return tone_levels(window, RATE, freqs)


def _call(daemon, baresip_factory, tmp_path, caller_codecs: str, callee_codecs: str,
          seconds: float = 2.5) -> tuple:
    tone_a = make_tone_wav(tmp_path / "a.wav", 700.0, seconds=10)
    tone_b = make_tone_wav(tmp_path / "b.wav", 1100.0, seconds=10)
    alice = baresip_factory("alice", aor="sip:100@127.0.0.1", password=daemon.passwords["100"],
                            server_port=daemon.port, audio_in_wav=tone_a,
                            record_wav=tmp_path / "alice-heard.wav", audio_codecs=caller_codecs)
    bob = baresip_factory("bob", aor="sip:101@127.0.0.1", password=daemon.passwords["101"],
                          server_port=daemon.port, audio_in_wav=tone_b, auto_answer=True,
                          record_wav=tmp_path / "bob-heard.wav", audio_codecs=callee_codecs)
    alice.wait_registered(10)
    bob.wait_registered(10)
    alice.dial(f"sip:101@127.0.0.1:{daemon.port}")
    alice.wait_established(10)
    time.sleep(seconds)
    alice.hangup()
    alice.wait_closed(10)
    bob.wait_closed(10)
    daemon.wait_log("ended: hangup", 5)
    alice.stop()
    bob.stop()
    return tmp_path / "alice-heard.wav", tmp_path / "bob-heard.wav"


@pytest.mark.parametrize("caller, callee, mode", [
    ("PCMU", "PCMU", "forward"),
    ("PCMU", "PCMA", "transcode"),
    ("G722/16000/1", "PCMA", "transcode"),
    ("opus/48000/2", "PCMU", "transcode"),
])
def test_relayed_call_carries_each_tone_to_the_other_side(daemon_factory, baresip_factory,
                                                          tmp_path, caller, callee, mode):
    daemon = daemon_factory(auth_algorithms=["MD5"])
    alice_heard, bob_heard = _call(daemon, baresip_factory, tmp_path, caller, callee)
    assert f"({mode})" in daemon.log()  # the relay mode the box chose
    own, other = _levels(bob_heard, [1100.0, 700.0])
    assert other > 0.5, f"bob hears alice's 700 Hz at {other:.2f} of the spectrum"
    assert own < 0.05
    own, other = _levels(alice_heard, [700.0, 1100.0])
    assert other > 0.5, f"alice hears bob's 1100 Hz at {other:.2f} of the spectrum"
    assert own < 0.05
    # Per-leg media figures go with the call-ended event (logged with it).
    ended = [ln for ln in daemon.log().splitlines() if "ended: hangup" in ln][-1]
    assert "'packets'" in ended and "'lost'" in ended and "'jitter_ms'" in ended


def test_media_timeout_hangs_up_both_legs(daemon_factory, sipp_background, tmp_path) -> None:
    """SIPp sends no RTP at all: after media.timeout seconds the box sends BYE both ways."""
    daemon = daemon_factory(media={"timeout": 2})
    callee = sipp_background.uas("uas_callee", daemon.remote(),
                                 keys={"user": "101", "password": daemon.passwords["101"],
                                       "unregister": "no"})
    callee.wait_registered(10)
    start = time.monotonic()
    caller = run_sipp(scenario("uac_call_wait_bye"), daemon.remote(),
                      keys={"user": "100", "password": daemon.passwords["100"],
                            "callee": "101"}, workdir=tmp_path, timeout=30)
    caller.check()
    assert time.monotonic() - start >= 2
    callee.wait(15).check()
    assert caller.received(method="BYE") and callee.snapshot().received(method="BYE")
    daemon.wait_log("ended: media-timeout", 5)


def _shifted_pcap(src: str, dst: Path, offset: int) -> str:
    """A copy of one of SIPp's RFC 2833 pcaps whose RTP sequence numbers and timestamp are
    moved on by `offset`: the same digit pressed again is a new event (RFC 4733 §2.5.1.3),
    where a byte-identical replay would be a retransmission of the first one."""
    data = bytearray(Path(src).read_bytes())
    link = struct.unpack("<I", data[20:24])[0]
    l2 = 14 if link == 1 else 16
    off = 24
    while off < len(data):
        incl = struct.unpack("<I", data[off + 8 : off + 12])[0]
        ip = off + 16 + l2
        udp = ip + (data[ip] & 15) * 4
        rtp = udp + 8
        seq, ts = struct.unpack("!HI", data[rtp + 2 : rtp + 8])
        data[rtp + 2 : rtp + 8] = struct.pack("!HI", (seq + offset) % 65536,
                                              (ts + offset * 160) % 2**32)
        data[udp + 6 : udp + 8] = b"\0\0"  # IPv4 UDP checksum: none
        off += 16 + incl
    dst.write_bytes(bytes(data))
    return str(dst)


def test_rfc4733_digits_reach_the_pbx_in_order(daemon, sipp_background, tmp_path) -> None:
    """SIPp plays telephone-event packets (with their three end packets) for 1, 1, 2:
    the box reports each digit once, in order, the repeated one included."""
    pcaps = "/usr/share/sip-tester"
    scen = Path(scenario("uac_call_dtmf")).read_text().replace(
        f"{pcaps}/dtmf_2833_1.pcap", _shifted_pcap(f"{pcaps}/dtmf_2833_1.pcap",
                                                  tmp_path / "one-again.pcap", 50), 1)
    # the first press plays the shifted copy, the second SIPp's original file
    scen_path = tmp_path / "uac_call_dtmf.xml"
    scen_path.write_text(scen)
    callee = sipp_background.uas("uas_callee", daemon.remote(),
                                 keys={"user": "101", "password": daemon.passwords["101"]})
    callee.wait_registered(10)
    caller = run_sipp(scen_path, daemon.remote(),
                      keys={"user": "100", "password": daemon.passwords["100"],
                            "callee": "101", "hold_ms": 300}, workdir=tmp_path, timeout=30)
    caller.check()
    callee.wait(15).check()
    daemon.wait_log("ended: hangup", 5)
    digits = [ln.rsplit("DTMF ", 1)[1].split()[0] for ln in daemon.log().splitlines()
              if "DTMF " in ln and "(rfc4733)" in ln]
    assert digits == ["1", "1", "2"]
