"""Conference rooms with real peers: baresip phones talk in a room, SIPp enters PINs.

Every baresip sends its own sine (`make_tone_wav`, -20 dBFS) and records what it
hears (sndfile, the decoded stream). The recordings are checked with an FFT
(Hann window, WINDOW seconds) taken after everybody joined and the personal
prompts are over (a joiner hears the welcome, then a join tone per later joiner)
and before anybody left. `levels` gives each frequency's peak (within ±2 Hz) in
dB above the median of the spectrum (150-3400 Hz). A phone must hear every other
phone's tone (>= PRESENT_DB above the median, within SPREAD_DB of the loudest)
and not its own: at least ABSENT_BELOW_DB under the weakest tone it hears.
G.711 distortion products of the mix sit about 45-50 dB under the tones, a leak
of the phone's own voice (no N-1) would be level with them.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import pytest

from appliance.media.tones import read_wav
from tests.integration import conftest
from tests.peers.baresip import Baresip, make_tone_wav
from tests.peers.fixtures import needs_baresip, needs_sipp
from tests.peers.sipp import run_sipp, scenario, start_sipp

pytestmark = [pytest.mark.integration, needs_baresip]

# Off any common grid (no low-order product of the others lands on a tone) and away
# from the join/leave notes (523 and 784 Hz), their doubles and the 440 Hz beep.
FREQS = [413, 637, 871, 1163, 1487]
PRESENT_DB = 30.0  # a heard tone: this far above the median of the spectrum
SPREAD_DB = 10.0  # and this close to the loudest heard tone
ABSENT_BELOW_DB = 35.0  # an unheard tone: this far under the weakest heard one
WINDOW = 1.0  # seconds analysed
WELCOME = 1.6  # the English welcome prompt, seconds
JOIN_TONE = 0.35  # seconds


def settle(n: int) -> float:
    """Seconds after the last of `n` joined until every personal prompt is over: the
    first joiner hears its welcome, then one join tone for each later joiner."""
    return WELCOME + JOIN_TONE * (n - 1) + 0.3

MORE_EXTENSIONS = {n: {"password": f"pw-{n}-secret", "name": f"Ext {n}"}
                   for n in ("104", "105", "106")}


@pytest.fixture
def rooms_daemon(daemon_factory, monkeypatch):
    """daemon_factory that also takes the `rooms` and `media` sections of config.yaml."""
    extra = tuple(s for s in ("rooms", "media") if s not in conftest.SECTIONS)
    monkeypatch.setattr(conftest, "SECTIONS", conftest.SECTIONS + extra)

    def make(**kw):
        kw.setdefault("auth_algorithms", ["MD5"])  # baresip 1.0 refuses anything else
        # RTP ports of our own, below the ephemeral range and away from the default
        # 10000-20000 that other daemons on this machine (other tests) may be using.
        base = 20000 + 2 * random.randrange(6000 - 200)
        kw["media"] = {"rtp_port_min": base, "rtp_port_max": base + 399, **kw.get("media", {})}
        return daemon_factory(**kw)

    return make


def levels(wav: Path, start: float, length: float, freqs: list[int]) -> dict[int, float]:
    """dB above the spectrum's median (150-3400 Hz) at each frequency (peak within ±2 Hz)
    in `length` seconds of `wav` from `start`."""
    x, rate = read_wav(wav)
    a, b = round(start * rate), round((start + length) * rate)
    seg = x[a:b].astype(np.float64)
    assert seg.size >= 0.9 * length * rate, f"{wav}: {x.size / rate:.2f} s, wanted {start}+{length}"
    seg -= seg.mean()
    spec = np.abs(np.fft.rfft(seg * np.hanning(seg.size)))
    f = np.fft.rfftfreq(seg.size, 1.0 / rate)
    floor = float(np.median(spec[(f > 150) & (f < 3400)])) or 1e-9
    return {q: round(float(20 * np.log10(spec[(f > q - 2) & (f < q + 2)].max() / floor + 1e-12)),
                     1) for q in freqs}


class Phone:
    def __init__(self, ua: Baresip, user: str, freq: int, wav: Path) -> None:
        self.ua, self.user, self.freq, self.wav = ua, user, freq, wav
        self.established = 0.0  # monotonic time the call was up (recording starts)


def phones(baresip_factory, daemon, tmp_path: Path, users: list[str],
           freqs: list[int]) -> list[Phone]:
    out = []
    for user, freq in zip(users, freqs, strict=True):
        tone = make_tone_wav(tmp_path / f"tone{freq}.wav", freq, seconds=25, amplitude=0.1)
        wav = tmp_path / f"heard-{user}.wav"
        ua = baresip_factory(user, aor=f"sip:{user}@127.0.0.1", password=daemon.passwords[user],
                             server_port=daemon.port, audio_in_wav=tone, record_wav=wav)
        out.append(Phone(ua, user, freq, wav))
    for p in out:
        p.ua.wait_registered(10)
    return out


def call_room(p: Phone, daemon, room: str, pin: str | None = None) -> None:
    p.ua.dial(f"sip:{room}@127.0.0.1:{daemon.port}")
    p.ua.wait_established(10)
    p.established = time.monotonic()
    if pin is not None:
        p.ua.send_dtmf(pin)


def hang_up_all(ps: list[Phone]) -> None:
    for p in ps:
        p.ua.hangup()
    for p in ps:
        p.ua.wait_closed(10)
        p.ua.stop()  # writes the recording to p.wav


def check_mix(ps: list[Phone], window_at: float, never: list[int] = ()) -> dict:
    """Each phone hears the others' tones and neither its own nor those in `never`."""
    report = {}
    for p in ps:
        heard = [q.freq for q in ps if q is not p]
        absent = [p.freq, *never]
        lv = levels(p.wav, window_at - p.established, WINDOW, heard + absent)
        report[p.user] = lv
        loudest, weakest = max(lv[f] for f in heard), min(lv[f] for f in heard)
        for f in heard:
            assert lv[f] >= PRESENT_DB and lv[f] >= loudest - SPREAD_DB, \
                f"{p.user} does not hear {f} Hz: {lv}"
        for f in absent:
            assert lv[f] <= weakest - ABSENT_BELOW_DB, f"{p.user} hears {f} Hz: {lv}"
    print("levels, dB over the median of the spectrum:", report)
    return report


def test_three_callers_hear_each_other_but_not_themselves(rooms_daemon, baresip_factory,
                                                          tmp_path) -> None:
    daemon = rooms_daemon(rooms={"800": {"name": "Sales"}})
    ps = phones(baresip_factory, daemon, tmp_path, ["100", "101", "102"], FREQS[:3])
    for p in ps:
        call_room(p, daemon, "800")
    daemon.wait_log("room 800: 102 joined (3 in the room)", 5)
    last = ps[-1].established
    time.sleep(max(0.0, last + settle(3) + WINDOW + 0.3 - time.monotonic()))
    hang_up_all(ps)
    check_mix(ps, last + settle(3))
    daemon.wait_log("room 800 closed", 5)
    log = daemon.log()
    assert "room 800: 100 left: hangup" in log
    assert "Traceback" not in log


def test_five_callers_then_a_sixth_gets_486(rooms_daemon, baresip_factory, tmp_path) -> None:
    daemon = rooms_daemon(rooms={"800": {}}, extensions=MORE_EXTENSIONS)  # max_participants 5
    users = ["100", "101", "102", "103", "104"]
    ps = phones(baresip_factory, daemon, tmp_path, users, FREQS)
    for p in ps:
        call_room(p, daemon, "800")
    daemon.wait_log("room 800: 104 joined (5 in the room)", 5)
    last = ps[-1].established

    sixth = baresip_factory("105", aor="sip:105@127.0.0.1", password=daemon.passwords["105"],
                            server_port=daemon.port)
    sixth.wait_registered(10)
    sixth.dial(f"sip:800@127.0.0.1:{daemon.port}")
    closed = sixth.wait_event("CALL_CLOSED", 10)
    assert "486" in closed.param and "Room full" in closed.param, closed.text()

    time.sleep(max(0.0, last + settle(5) + WINDOW + 0.3 - time.monotonic()))
    hang_up_all(ps)
    check_mix(ps, last + settle(5))
    log = daemon.log()
    assert "room 800 is full (5): 105 gets 486" in log
    assert "Traceback" not in log


def test_pin_right_joins_wrong_three_times_is_hung_up(rooms_daemon, baresip_factory,
                                                      tmp_path) -> None:
    """RFC 4733 digits from baresip: two callers with the right PIN talk; a third with
    three wrong PINs never gets into the room and is hung up on."""
    daemon = rooms_daemon(rooms={"801": {"pin": "2468", "language": "en"}})
    a, c, b = phones(baresip_factory, daemon, tmp_path, ["100", "101", "102"], FREQS[:3])
    call_room(a, daemon, "801", "2468")
    daemon.wait_log("room 801: 100 joined (1 in the room)", 5)
    call_room(c, daemon, "801", "2468#")
    daemon.wait_log("room 801: 101 joined (2 in the room)", 5)

    call_room(b, daemon, "801")
    lobby_start = time.monotonic()
    b.ua.send_dtmf("1357")
    b.ua.send_dtmf("9999#")
    b.ua.send_dtmf("0000")
    b.ua.wait_closed(10)  # wrong PIN, goodbye, BYE from the room
    lobby_end = time.monotonic()
    log = daemon.log()
    assert "room 801: 102 gave no right PIN (wrong-pin)" in log
    assert "102 joined" not in log

    # While B was entering PINs (and sending its tone), A and C heard each other only.
    window = lobby_start + settle(2)
    assert lobby_end >= window + WINDOW, "B left the lobby too soon for the analysis"
    hang_up_all([a, c])
    check_mix([a, c], window, never=[b.freq])
    b.ua.stop()
    # B heard only its prompts: neither A's nor C's tone.
    lv = levels(b.wav, window - b.established, WINDOW, [a.freq, c.freq])
    print("B heard, dB over the median:", lv)
    assert max(lv.values()) < PRESENT_DB, lv
    assert "Traceback" not in daemon.log()


@needs_sipp
def test_sipp_pin_by_info_and_by_rfc2833(rooms_daemon, tmp_path) -> None:
    """SIP INFO (application/dtmf-relay): three wrong PINs end in a BYE. RFC 2833
    telephone-events replayed from Debian's pcap files: the right PIN joins. The room
    speaks Chinese."""
    daemon = rooms_daemon(rooms={"802": {"pin": "1234", "language": "zh"}})
    wrong = run_sipp(scenario("room_info_wrong_pin"), daemon.remote(), workdir=tmp_path / "w",
                     timeout=30, keys={"user": "103", "password": daemon.passwords["103"],
                                       "callee": "802", "d1": "4", "d2": "3", "d3": "2",
                                       "d4": "1"})
    wrong.check()
    assert len(wrong.received(status=200, cseq_method="INFO")) == 12
    assert wrong.received(method="BYE")
    assert "room 802: 103 gave no right PIN (wrong-pin)" in daemon.log()

    right = run_sipp(scenario("room_rfc2833_pin"), daemon.remote(), workdir=tmp_path / "r",
                     timeout=30, keys={"user": "100", "password": daemon.passwords["100"],
                                       "callee": "802", "hold_ms": 1500})
    right.check()
    answer = right.final_responses("INVITE")[-1]
    assert answer.status == 200 and b"telephone-event/8000" in answer.body
    log = daemon.log()
    assert "room 802: 100 joined (1 in the room)" in log
    assert "room 802: 100 left: hangup" in log
    assert "Traceback" not in log


@needs_sipp
def test_media_timeout_ends_a_silent_caller(rooms_daemon, tmp_path) -> None:
    daemon = rooms_daemon(rooms={"800": {}}, media={"timeout": 2})
    started = time.monotonic()
    res = run_sipp(scenario("room_call_wait_bye"), daemon.remote(), workdir=tmp_path,
                   timeout=30, keys={"user": "100", "password": daemon.passwords["100"],
                                     "callee": "800"})
    res.check()
    assert time.monotonic() - started < 10
    log = daemon.log()
    assert "room 800: 100 left: media-timeout" in log
    # One audio codec (the first offered, PCMU) and telephone-event, as offered.
    assert res.log_values()["answer_m"].split()[3:] == ["0", "101"]


@needs_sipp
def test_shutdown_says_bye_to_every_participant(rooms_daemon, baresip_factory,
                                                tmp_path) -> None:
    daemon = rooms_daemon(rooms={"800": {}})
    silent = start_sipp(scenario("room_call_wait_bye"), daemon.remote(), workdir=tmp_path,
                        timeout=30, keys={"user": "101", "password": daemon.passwords["101"],
                                          "callee": "800"})
    (p,) = phones(baresip_factory, daemon, tmp_path, ["100"], FREQS[:1])
    call_room(p, daemon, "800")
    daemon.wait_log("(2 in the room)", 10)
    daemon.proc.stop()  # SIGTERM: BYE to both, wait for their 200s
    p.ua.wait_closed(5)
    silent.wait(10).check()
    log = daemon.log()
    assert "left: shutdown" in log
    assert "Traceback" not in log
