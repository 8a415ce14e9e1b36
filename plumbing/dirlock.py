"""One process per data directory: an exclusive `flock` on DIR/LOCK.

Shared by the PD and the stores. The lock lives as long as the file
descriptor (it is released by the kernel when the process dies, however it
dies), so a stale lock never blocks a restart.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class DataDirLockedError(Exception):
    """Another process uses this data directory."""


class DirLock:
    def __init__(self, directory: str | os.PathLike[str], what: str) -> None:
        """Take the lock or raise DataDirLockedError naming `what` (e.g.
        "store") that holds it."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.path = path / "LOCK"
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise DataDirLockedError(
                f"{path} is in use by another {what} process (lock {self.path})"
            ) from None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
