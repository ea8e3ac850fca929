"""The daemon's log handler (appliance/daemon.py LogLines): format, batching, tracebacks."""

from __future__ import annotations

import asyncio
import io
import logging
import re

from appliance.daemon import LogLines


class Counting(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


def _logger(out: io.StringIO, prefix: str = "") -> logging.Logger:
    log = logging.getLogger(f"appliance.test.{id(out)}")
    log.propagate = False
    log.handlers = [LogLines(out, prefix)]
    log.setLevel(logging.INFO)
    return log


def test_the_lines_of_one_loop_turn_leave_in_one_write() -> None:
    out = Counting()
    log = _logger(out, prefix="worker 1 ")

    async def turn() -> None:
        log.info("call %s → %s answered", "100", "101")
        log.warning("second")
        assert out.writes == 0  # still waiting for the end of the turn
        await asyncio.sleep(0)

    asyncio.run(turn())
    assert out.writes == 1
    lines = out.getvalue().splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.fullmatch(stamp + rf" INFO  worker 1 {log.name}: call 100 → 101 answered",
                        lines[0]), lines[0]
    assert re.fullmatch(stamp + rf" WARNING worker 1 {log.name}: second", lines[1]), lines[1]


def test_outside_a_loop_a_line_leaves_at_once_with_its_traceback() -> None:
    out = Counting()
    log = _logger(out)
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed on %s", "input")
    assert out.writes == 1
    text = out.getvalue()
    assert f"ERROR {log.name}: failed on input\nTraceback (most recent call last):" in text
    assert text.endswith("ValueError: boom\n")
