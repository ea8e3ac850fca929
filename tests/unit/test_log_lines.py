"""The daemon's log handler (appliance/loglines.py LogLines): format, batching, tracebacks,
and the direct way in for a call's lines (loglines.info)."""

from __future__ import annotations

import asyncio
import io
import logging
import re

from appliance import loglines
from appliance.loglines import LogLines


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


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_calls_line_goes_straight_to_the_daemons_handler_and_reads_the_same(
        monkeypatch) -> None:
    """loglines.info writes the line LogRecord and Logger.info would have written, to
    the byte, without making a record, while the daemon's handler is the only one."""
    out = Counting()
    handler = LogLines(out, "worker 2 ")
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [handler])  # pytest's own, put back after
    monkeypatch.setattr(loglines, "_handler", handler)
    monkeypatch.setattr(root, "level", logging.INFO)
    made: list[logging.LogRecord] = []
    factory = logging.getLogRecordFactory()

    def counting(*args, **kwargs) -> logging.LogRecord:
        made.append(factory(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(logging, "_logRecordFactory", counting)
    log = logging.getLogger("appliance.pbx.call")
    for now in (1_800_000_000.25, 1_800_000_000.999, 1_800_000_001.0):
        monkeypatch.setattr("time.time", lambda now=now: now)
        loglines.info(log, "call %s → %s ended: %s (%d), %.1f s", "100", "101", "hangup",
                      16, 12.345)
        assert made == []  # no record
        log.info("call %s → %s ended: %s (%d), %.1f s", "100", "101", "hangup", 16, 12.345)
        assert len(made) == 1
        made.clear()
    lines = out.getvalue().splitlines()
    assert len(lines) == 6 and out.writes == 6  # outside a loop: one write each
    assert lines[0] == lines[1] and lines[2] == lines[3] and lines[4] == lines[5]
    assert lines[2].endswith(",999 INFO  worker 2 appliance.pbx.call: call 100 → 101 ended: "
                             "hangup (16), 12.3 s")
    assert ",250 INFO  " in lines[0] and ",000 INFO  " in lines[4]


def test_with_another_handler_or_the_level_above_info_it_is_logger_info(monkeypatch) -> None:
    out = Counting()
    handler = LogLines(out)
    seen = Records()
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [handler, seen])  # a test capturing logs, say
    monkeypatch.setattr(loglines, "_handler", handler)
    monkeypatch.setattr(root, "level", logging.INFO)
    log = logging.getLogger("appliance.pbx.call")
    loglines.info(log, "call %s → %s answered", "100", "101")
    assert [r.getMessage() for r in seen.records] == ["call 100 → 101 answered"]
    assert out.getvalue().endswith(" INFO  appliance.pbx.call: call 100 → 101 answered\n")
    # a handler on the way up also sees it; a level above INFO silences it
    monkeypatch.setattr(root, "handlers", [handler])
    monkeypatch.setattr(logging.getLogger("appliance"), "handlers", [seen])
    loglines.info(log, "call %s → %s: no answer", "100", "101")
    assert len(seen.records) == 2 and out.getvalue().count("\n") == 2
    monkeypatch.setattr(log, "level", logging.WARNING)
    log.manager._clear_cache()
    loglines.info(log, "call %s → %s: not registered", "100", "101")
    assert len(seen.records) == 2 and out.getvalue().count("\n") == 2
    log.manager._clear_cache()


def test_a_line_reads_as_logging_formats_it() -> None:
    """`line` against logging's own Formatter on the daemon's format, for every
    millisecond of a second and each level name (and one no level has)."""
    handler = LogLines(io.StringIO(), prefix="worker 2 ")
    formatter = logging.Formatter("%(asctime)s %(levelname)-5s worker 2 %(name)s: %(message)s")
    for ms in range(0, 1000, 7):
        for level in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "NOTE"):
            created = 1_700_000_000 + ms / 1000 + 0.0004
            record = logging.makeLogRecord({"name": "appliance.call", "levelname": level,
                                            "msg": "call 1 → 2", "created": created,
                                            "msecs": (created - int(created)) * 1000})
            assert handler.line(created, level, "appliance.call", "call 1 → 2") == (
                formatter.format(record) + "\n")
