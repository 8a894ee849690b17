"""Exclusive locks on the files a run writes, so two corral processes never write the same one.

Two `corral run` commands on the same output or journal would otherwise both truncate and write
``results.jsonl.part`` (each at its own offset: a file with holes, renamed to the output as if
complete) and both send every row. The lock is flock(2): the kernel drops it when the process ends,
even by SIGKILL, so a crashed run never leaves a stale lock and a resume needs no clean-up. flock
locks are advisory (only corral looks at them).

An output's ``.part`` file is locked itself. A journal is locked through a sibling file
(``results.jsonl.corral.db-lock``, beside SQLite's own ``-wal`` and ``-shm``), never the database
file: on BSD and macOS flock and SQLite's fcntl locks on one file interact. That sibling is removed
when the journal closes. Where flock does not exist (Windows) or the filesystem refuses it, no lock
is taken and the run goes on as before.
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

_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


class FileLock:
    """An exclusive lock held on ``path`` (created empty if missing, never truncated).

    ``remove=True`` deletes ``path`` on release (for lock-only files). Whoever takes the lock then
    checks that ``path`` is still the file it locked, since a releasing holder may have just removed
    it: otherwise two processes could each hold a lock on a different file of the same name.
    """

    def __init__(self, path: str | os.PathLike[str], busy_message: str, *, remove: bool = False) -> None:
        self.path = Path(path)
        self.remove = remove
        self._fd: int | None = None
        if fcntl is None:
            return
        for _ in range(10):  # a retry only when a holder removed the file between open and lock
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError:
                return  # the caller's own open reports why the file cannot be written
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in _BUSY:
                    raise UsageError(busy_message) from None
                return  # e.g. ENOLCK on a filesystem without locks: run unlocked rather than not at all
            if not remove or _same_file(fd, self.path):
                self._fd = fd
                return
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Idempotent; closing the descriptor drops the lock (after removing a lock-only file)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self.remove:
            try:
                self.path.unlink()
            except OSError:
                pass
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
