"""One process per run folder: an exclusive ``flock`` held for the life of the process.

``RunLock(path)`` opens (creating) a lock file and takes a non-blocking exclusive ``fcntl.flock``
on it. A second process (or a second lock in the same process) fails at once with a one-line
:class:`RunLocked` naming the holder (pid, host, since when), read from the JSON the holder wrote
into the file. The kernel drops a ``flock`` when its holder exits, however it dies (even
``kill -9``), so a lock file left by a dead process is simply taken over; its old content only
ever serves the message. Where ``fcntl`` is missing (Windows) locking is a no-op.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from msd3d.errors import Msd3dError

try:  # POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "RunLock", "RunLocked", "read_holder"]

LOCK_NAME = ".msd3d.lock"
"""The lock file inside a run folder (also what marks a folder as an msd3d run)."""


class RunLocked(Msd3dError):
    """Another live process holds the lock."""


def read_holder(path: Path) -> dict[str, Any]:
    """The JSON a holder wrote into the lock file ({} when unreadable)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class RunLock:
    """An exclusive lock on ``path`` (a lock file) for ``what`` (used in the error message)."""

    def __init__(self, path: str | os.PathLike[str], what: str | None = None) -> None:
        self.path = Path(path)
        self.what = what or str(self.path.parent)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`RunLocked` at once (never waits)."""
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = read_holder(self.path)
                who = (
                    f"process {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('since', '?')}"
                    if holder
                    else "another process"
                )
                raise RunLocked(
                    f"{self.what} is in use by {who} (lock {self.path}); wait for it to finish or stop it first"
                ) from None
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (the file stays: removing it would race with a process about to lock it)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
