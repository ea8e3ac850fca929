"""Crash-safe file replacement: temporary file, fsync, rename, fsync of the folder.

After power loss a reader finds the old file or the new one, never a torn mix.
Temporary files are named `.tmp-<target>.<pid>.<random>` so no loader mistakes
them for the real file; a writer killed mid-way leaves one behind, and
`clean_temp_files` removes those whose writer process is gone.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

TEMP_PREFIX = ".tmp-"


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes,
    mode: int = 0o600,
    *,
    owner: tuple[int, int] | None = None,
) -> None:
    """Replace `path` with `data` atomically and durably (file mode `mode`, optional uid/gid)."""
    target = Path(path)
    if target.is_symlink():  # replace the file the link points at, keep the link
        target = target.resolve()
    folder = target.parent
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{target.name}.{os.getpid()}.", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            if owner is not None:
                os.fchown(f.fileno(), *owner)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clean_temp_files(folder: str | os.PathLike[str], target: str | None = None) -> list[Path]:
    """Remove temporary files left by dead writers (of `target` only, if given)."""
    prefix = TEMP_PREFIX + (f"{target}." if target else "")
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix) or not entry.is_file(follow_symlinks=False):
            continue
        pid = _writer_pid(entry.name)
        if pid is not None and _alive(pid):
            continue  # a write in progress
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def _writer_pid(name: str) -> int | None:
    parts = name[len(TEMP_PREFIX) :].rsplit(".", 2)  # target, pid, random
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return int(parts[1])


def _alive(pid: int) -> bool:
    if pid <= 0:  # kill(0, ...) would address our process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
