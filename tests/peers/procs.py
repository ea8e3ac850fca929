"""Start and reliably stop helper processes (SIPp, baresip, ...).

Every process runs in its own session (so its process group id == its pid);
``stop()`` signals that group only, SIGTERM first and SIGKILL after a grace
period.  Processes still alive at interpreter exit are killed the same way.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

_live: dict[int, subprocess.Popen] = {}


def _kill_group(pid: int, sig: int) -> None:
    """Signal the process group of our (not yet reaped) child ``pid``; the
    child is its group leader (start_new_session), so the ids are ours."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


@atexit.register
def _reap_all() -> None:  # pragma: no cover - safety net
    for pid, proc in list(_live.items()):
        if proc.poll() is None:
            _kill_group(pid, signal.SIGKILL)
            try:
                proc.wait(2)
            except subprocess.TimeoutExpired:
                pass
        _live.pop(pid, None)


class Proc:
    """A child process with stdout/stderr going to files in ``logdir``."""

    def __init__(self, argv: Sequence[str], *, logdir: Path, name: str,
                 cwd: Path | None = None, env: dict[str, str] | None = None,
                 stdin_pipe: bool = False) -> None:
        self.argv = [str(a) for a in argv]
        self.name = name
        logdir = Path(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = logdir / f"{name}.stdout"
        self.stderr_path = logdir / f"{name}.stderr"
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        full_env = dict(os.environ)
        full_env.setdefault("TERM", "dumb")
        if env:
            full_env.update(env)
        try:
            self.popen = subprocess.Popen(
                self.argv, cwd=str(cwd or logdir), env=full_env,
                stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                stdout=self._out, stderr=self._err, start_new_session=True,
            )
        except BaseException:
            self._out.close()
            self._err.close()
            raise
        self.pid = self.popen.pid
        _live[self.pid] = self.popen

    # -- state -------------------------------------------------------------
    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for exit; return the exit code, or None on timeout."""
        try:
            rc = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._closed()
        return rc

    def signal(self, sig: int) -> None:
        if self.alive():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, grace: float = 3.0) -> int:
        """SIGTERM the process group, then SIGKILL after ``grace`` seconds."""
        # only while the child is unreaped: its pid (and group id) cannot
        # have been reused by another process
        if self.popen.poll() is None:
            _kill_group(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                if self.popen.poll() is None:
                    _kill_group(self.pid, signal.SIGKILL)
                self.popen.wait(5)
        self._closed()
        return self.popen.returncode

    def _closed(self) -> None:
        _live.pop(self.pid, None)
        for f in (self._out, self._err):
            if not f.closed:
                f.close()

    # -- output ------------------------------------------------------------
    def stdout(self) -> str:
        return _read(self.stdout_path)

    def stderr(self) -> str:
        return _read(self.stderr_path)

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _read(path: Path) -> str:
    try:
        return Path(path).read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def wait_until(pred, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll ``pred()`` until it returns a truthy value; return it or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
