"""The daemon's log lines: its handler, and a direct way in for the lines of every call.

A call writes three lines (ringing, answered, ended). Through `Logger.info` each makes a
`LogRecord` (about twenty attributes, the source file's name taken apart) and walks the
logger hierarchy to its handlers: the three lines were 10% of a call's CPU in-process,
the records alone 4% (py-spy); without them a call went from 464 to 422 us
(bench/inprocess.py, docs/performance.md). `info(logger, msg, *args)` hands such a line straight
to the handler while nothing else could see the record: the daemon's `LogLines` is the
only handler on the way up from `logger` (at the root), no logger on the way filters,
and INFO is enabled. Anything else (a test capturing logs, a handler added later) takes
`logger.info` as before, so what is written, and who sees it, is the same either way.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import time
from typing import TextIO

_PADDED = {name: name.ljust(5) for name in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")}
_handler: LogLines | None = None  # the daemon's (setup_logging), once installed


def install(handler: LogLines | None) -> None:
    """`handler`: the root logger's, for `info`; None: every line through Logger.info."""
    global _handler
    _handler = handler


def info(logger: logging.Logger, msg: str, *args: object) -> None:
    """`logger.info(msg, *args)`, straight to the daemon's handler when nothing else
    would see the record (see the module's docstring)."""
    handler = _handler
    if (handler is not None and logger.isEnabledFor(logging.INFO)
            and handler.level <= logging.INFO and _sole(logger, handler)):
        handler.write(handler.line(time.time(), "INFO", logger.name, msg % args if args else msg))
    else:
        logger.info(msg, *args)


def _sole(logger: logging.Logger, handler: logging.Handler) -> bool:
    """Whether `handler` is the only one a record of `logger` would reach, unfiltered."""
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters or node.disabled:
            return False
        if node.handlers:
            return len(node.handlers) == 1 and node.handlers[0] is handler
        if not node.propagate:
            return False
        node = node.parent
    return False


class LogLines(logging.Handler):
    """The log's handler: one line per record, "time LEVEL name: message", and the lines
    of one turn of the event loop leave in one write at its end, like the UDP datagrams
    (a call logs three lines; a write each was 4% of the CPU at 1,500 calls/s). Outside
    a running loop (start-up, executor threads) they leave at once, and at exit. The
    time is formatted once a second, the line with one f-string: logging's generic
    Formatter cost as much as the rest of the record."""

    def __init__(self, out: TextIO, prefix: str = "") -> None:
        super().__init__()
        self.out = out
        self.prefix = prefix       # what marks a worker's lines ("worker 1 ")
        self.lines: list[str] = []
        self._second = -1
        self._stamp = ""
        self._tracebacks = logging.Formatter()
        atexit.register(self.flush_now)

    def handle(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        # no filters, and no lock: the loop's thread appends; other threads write at once
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.line(record.created, record.levelname, record.name,
                             record.getMessage())
            if record.exc_info:
                line += self._tracebacks.formatException(record.exc_info) + "\n"
        except Exception:
            self.handleError(record)
            return
        self.write(line)

    def line(self, created: float, level: str, name: str, message: str) -> str:
        """The line of a record made at `created` (time.time()), as LogRecord takes it
        apart: whole seconds, then milliseconds."""
        second = int(created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        msecs = min(int((created - second) * 1000), 999)
        # no format specs: compiled, `{msecs:03d} {level:<5}` were two generic format
        # calls, 10k instructions a line (callgrind)
        return (f"{self._stamp},{str(1000 + msecs)[1:]} {_PADDED.get(level) or level.ljust(5)}"
                f" {self.prefix}{name}: {message}\n")

    def write(self, text: str) -> None:
        if not self.lines:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                with contextlib.suppress(OSError, ValueError):
                    self.out.write(text)
                    self.out.flush()
                return
            loop.call_soon(self.flush_now)
        self.lines.append(text)

    def flush_now(self) -> None:
        if self.lines:
            text, self.lines = "".join(self.lines), []
            with contextlib.suppress(OSError, ValueError):  # stderr closed: nothing to do
                self.out.write(text)
                self.out.flush()
