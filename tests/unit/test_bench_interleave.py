"""The bench's interleaved ladders (bench/run.py): each rate goes to every server still
climbing, in turn forwards and backwards, before the next rate, the servers not being loaded are really stopped
(SIGSTOP: state T in /proc), a server whose step fails gets no further step and is
ended, and every process runs again (or is gone) afterwards."""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from bench.run import (
    Climb,
    Outcome,
    Server,
    Settings,
    Step,
    _resume_until_quiet,
    interleaved_ladders,
    spawn,
    stop,
)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _wait_state(pid: int, want: str, timeout: float = 2.0) -> str:
    deadline = time.monotonic() + timeout
    state = _state(pid)
    while state != want and time.monotonic() < deadline:
        time.sleep(0.01)
        state = _state(pid)
    return state


class Sleeper(Server):
    """A server that is only a process: `sleep`, in its own session, as the bench's are."""
    name = "sleeper"

    def __init__(self, workdir: Path, tag: str) -> None:
        super().__init__(workdir, users=None, tag=tag)  # type: ignore[arg-type]
        self.label = tag

    def start(self) -> float:
        self.proc = spawn(["sleep", "120"], self.workdir, "server")
        return 0.0


def _settings() -> Settings:
    return Settings(reg_rates=[], reg_seconds=0, call_rates=[], call_seconds=0,
                    ceiling_reg_extra=[], ceiling_call_extra=[], startup_samples=1,
                    quiet_s=0.0)


def test_interleaved_ladders_pause_others_and_stop_the_failed(tmp_path: Path) -> None:
    servers = [Sleeper(tmp_path, name) for name in ("a", "b", "c")]
    fails_at = {"a": 300, "b": 10_000, "c": 200}
    order: list[tuple[str, int]] = []
    states: list[dict[str, str]] = []
    try:
        for s in servers:
            s.start()

        def run_one(server: Sleeper, rate: int) -> Step:
            order.append((server.label, rate))
            states.append({s.label: _wait_state(s.proc.pid, "S" if s is server else "T")
                           for s in servers if s.proc.poll() is None})
            ok = rate < fails_at[server.label]
            return Step(rate, ok, "ok" if ok else "planted failure", asdict(Outcome()), 1, 0.0, 0.0)

        climbs = [Climb(s, lambda rate, s=s: run_one(s, rate)) for s in servers]
        interleaved_ladders(climbs, [100, 200, 300, 400], _settings())

        # forwards, backwards, forwards...: c failed at 200 and a at 300
        assert order == [("a", 100), ("b", 100), ("c", 100),
                         ("c", 200), ("b", 200), ("a", 200),
                         ("a", 300), ("b", 300),
                         ("b", 400)]
        # during each step the loaded server runs (S: sleeping in its syscall, not
        # stopped) and every other live one is stopped (T)
        for (label, _), seen in zip(order, states, strict=True):
            assert seen[label] == "S"
            assert all(state == "T" for other, state in seen.items() if other != label), seen
        assert [c.best for c in climbs] == [200, 400, 100]
        assert [len(c.steps) for c in climbs] == [3, 4, 2]
        assert [c.climbing for c in climbs] == [False, True, False]
        # the failed ones were ended at their failure, the one left runs again
        assert servers[0].proc.poll() == -signal.SIGTERM
        assert servers[2].proc.poll() == -signal.SIGTERM
        assert _wait_state(servers[1].proc.pid, "S") == "S"
    finally:
        for s in servers:
            stop(s.proc, grace=2.0)


def test_a_paused_server_is_stopped_by_stop(tmp_path: Path) -> None:
    """`stop` ends a server left paused (SIGSTOP holds SIGTERM until SIGCONT)."""
    s = Sleeper(tmp_path, "paused")
    s.start()
    try:
        s.pause()
        assert _wait_state(s.proc.pid, "T") == "T"
        t0 = time.monotonic()
        assert stop(s.proc, grace=5.0) == -signal.SIGTERM
        assert time.monotonic() - t0 < 4.0   # by the SIGTERM, not the SIGKILL after grace
    finally:
        stop(s.proc, grace=1.0)


@pytest.mark.parametrize("fail", [True, False])
def test_every_server_runs_again_after_an_error(tmp_path: Path, fail: bool) -> None:
    """A step that raises leaves no server stopped (SIGSTOP) behind."""
    servers = [Sleeper(tmp_path, name) for name in ("x", "y")]
    try:
        for s in servers:
            s.start()

        def run_one(rate: int) -> Step:
            if fail:
                raise RuntimeError("SIPp vanished")
            return Step(rate, True, "ok", asdict(Outcome()), 1, 0.0, 0.0)

        climbs = [Climb(s, run_one) for s in servers]
        if fail:
            with pytest.raises(RuntimeError):
                interleaved_ladders(climbs, [100], _settings())
        else:
            interleaved_ladders(climbs, [100], _settings())
        assert [_wait_state(s.proc.pid, "S") for s in servers] == ["S", "S"]
    finally:
        for s in servers:
            stop(s.proc, grace=2.0)


class Burner(Sleeper):
    """Busy for `busy_s` of CPU, then asleep: what came due while it was paused."""

    def __init__(self, workdir: Path, tag: str, busy_s: float) -> None:
        super().__init__(workdir, tag)
        self.busy_s = busy_s

    def start(self) -> float:
        code = ("import time\n"
                f"while time.process_time() < {self.busy_s}: pass\n"
                "time.sleep(120)\n")
        self.proc = spawn([sys.executable, "-c", code], self.workdir, "server")
        return 0.0


def test_a_resumed_server_runs_until_quiet(tmp_path: Path) -> None:
    s = Burner(tmp_path, "burner", busy_s=0.6)
    s.start()
    try:
        s.pause()
        assert _wait_state(s.proc.pid, "T") == "T"
        settings = _settings()
        settings.quiet_s, settings.resume_max_s = 0.5, 20.0
        t0 = time.monotonic()
        used = _resume_until_quiet(s, settings, poll_s=0.05)
        took = time.monotonic() - t0
        # it ran what was left of its 0.6 s of CPU, then stayed quiet for 0.5 s
        assert 0.3 < used < 1.0
        assert took >= used + 0.5
    finally:
        stop(s.proc, grace=2.0)


def test_a_server_that_never_quiets_down_is_loaded_after_resume_max_s(tmp_path: Path) -> None:
    s = Burner(tmp_path, "forever", busy_s=1e9)
    s.start()
    try:
        settings = _settings()
        settings.quiet_s, settings.resume_max_s = 0.5, 1.0
        t0 = time.monotonic()
        used = _resume_until_quiet(s, settings, poll_s=0.05)
        assert 1.0 <= time.monotonic() - t0 < 3.0
        assert used > 0.5
    finally:
        stop(s.proc, grace=2.0)


class TickClock(Sleeper):
    """Kamailio's clock in small (its src/core/timer.c): time counted in ticks of 50 ms
    sleeps, which a stopped process does not take, compared with the real time every
    20 ticks; a lag over 0.3 s is made up at once, and the timers that expire with it
    cost 0.3 s of CPU. Each comparison appends a line to `checks`."""

    def __init__(self, workdir: Path, tag: str) -> None:
        super().__init__(workdir, tag)
        self.checks = workdir / f"{tag}.checks"

    def start(self) -> float:
        code = ("import time\n"
                "ticks, last = 0, time.monotonic()\n"
                "while True:\n"
                "    time.sleep(0.05)\n"
                "    ticks += 1\n"
                "    if ticks % 20 == 0:\n"
                "        now = time.monotonic()\n"
                "        if now - last - 1.0 > 0.3:\n"
                "            end = time.process_time() + 0.3\n"
                "            while time.process_time() < end: pass\n"
                "        last = now\n"
                f"        with open({str(self.checks)!r}, 'a') as f: f.write('check\\n')\n")
        self.proc = spawn([sys.executable, "-c", code], self.workdir, "server")
        return 0.0

    def count(self) -> int:
        try:
            return self.checks.read_text().count("check")
        except FileNotFoundError:
            return 0


def test_a_resumed_server_with_a_tick_clock_is_loaded_after_its_resync(tmp_path: Path) -> None:
    """Quiet is not enough for a server whose clock lags until its next resync: that
    comes up to a resync interval after the resume, and the timers it expires must not
    fall into the step (Kamailio's `resume_min_s`)."""
    s = TickClock(tmp_path, "ticks")
    s.resume_min_s = 1.3   # one resync interval (20 ticks of 50 ms) and a margin
    s.start()
    try:
        deadline = time.monotonic() + 10.0
        while s.count() < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        seen = s.count()
        while s.count() == seen and time.monotonic() < deadline:
            time.sleep(0.005)
        s.pause()          # just after a resync: the next one is 20 ticks after the resume
        assert _wait_state(s.proc.pid, "T") == "T"
        checks = s.count()
        time.sleep(1.0)    # the lag the next resync finds
        settings = _settings()
        settings.quiet_s, settings.resume_max_s = 0.3, 10.0
        t0 = time.monotonic()
        used = _resume_until_quiet(s, settings, poll_s=0.05)
        took = time.monotonic() - t0
        # its resync ran (made up the lag, burnt its 0.3 s) before the step would start
        assert s.count() == checks + 1
        assert 0.2 < used < 0.6
        assert took >= 1.3
    finally:
        stop(s.proc, grace=2.0)
