"""Exclusive locks on the files a run writes, so two corral processes never write the same one.

Two `corral run` commands on the same output or journal would otherwise both truncate and write
``results.jsonl.part`` (each at its own offset: a file with holes, renamed to the output as if
complete) and both send every row. The lock is flock(2) on the file itself: the kernel drops it
when the process ends, even by SIGKILL, so a crashed run never leaves a stale lock and a resume
needs no clean-up. No lock file is left beside the output. flock locks are advisory (only corral
looks at them) and do not interact with SQLite's own fcntl locks. Where flock does not exist
(Windows) or the filesystem refuses it, no lock is taken and the run goes on as before.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .errors import UsageError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class FileLock:
    """An exclusive lock held on ``path`` (created empty if missing, never truncated)."""

    def __init__(self, path: str | os.PathLike[str], busy_message: str) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        if fcntl is None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return  # the caller's own open reports why the file cannot be written
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UsageError(busy_message) from None
            return  # e.g. ENOLCK on a filesystem without locks: run unlocked rather than not at all
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Idempotent; closing the descriptor drops the lock."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
