"""Every output file corral writes goes through :class:`AtomicOutput`, so all writers follow one rule.

Outputs are written to ``<target>.part`` and renamed onto ``<target>`` when complete, so a file at
the output path is always whole. The rule for what a writer leaves behind:

* The previous output is never touched until the new one is complete: a failed, interrupted or
  never-started job leaves it as it was.
* An incomplete ``.part`` is removed if no row reached it, and kept (for inspection) if it holds
  rows; the next run on the same output truncates and replaces it. Nothing is lost either way: the
  journal holds every answer, and a re-run writes the output again from it.
* A ``.part`` that is complete but cannot be renamed (say a folder now sits at the output path) is
  kept, since it is the finished output.

Around that rule:

* The target is the output path with its symlinks resolved, so ``-o link`` writes the file the
  link points to and the link stays a link.
* The ``.part`` is locked (:class:`corral.locks.FileLock`) before it is truncated, so a second
  process on the same output stops at once with one line, and never empties the first one's file.
* FIFOs, character devices, sockets and ``/dev/stdout`` (``/dev/stderr``, ``/dev/fd/N``) are
  streamed in place: no ``.part``, no rename, no lock. Renaming a file onto ``/dev/null`` would
  replace the device with a regular file (as root), and a reader of a FIFO wants the rows as they
  come.
* An output that is one of the job's inputs (after resolving links, hard links included) is a
  UsageError raised before anything is written: the job would read what it is overwriting.

Writers that need a path rather than a file object (pyarrow's ParquetWriter, numpy's memmap,
openpyxl) write to :attr:`AtomicOutput.path_for_writing`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from ..errors import UsageError
from ..locks import FileLock

__all__ = ["AtomicOutput", "check_not_input", "is_stream", "write_whole"]

PathLike = str | os.PathLike[str]

#: Paths that name this process's own standard streams: written in place whatever they point to.
_STD_STREAMS = ("/dev/stdout", "/dev/stderr")
_FD_FOLDERS = ("/dev/fd/", "/proc/self/fd/")


def is_stream(path: PathLike) -> bool:
    """Whether ``path`` is written in place: a FIFO, a character device, a socket, or a standard
    stream of this process (``/dev/stdout`` can be a regular file when the shell redirects it,
    and resolving it would name that file: it is still written through the stream)."""
    text = os.fspath(path)
    if text in _STD_STREAMS or text.startswith(_FD_FOLDERS):
        return True
    mode = _file_mode(path)
    return mode is not None and (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode))


def _file_mode(path: PathLike) -> int | None:
    """``st_mode`` of what ``path`` points to, or None if nothing is there."""
    try:
        return os.stat(path).st_mode
    except OSError:
        return None


def check_not_input(output: PathLike, inputs: Iterable[PathLike | None]) -> None:
    """UsageError if ``output`` is the same file as one of ``inputs`` (links followed)."""
    for source in inputs:
        if source is None or os.fspath(source) in ("", "-"):
            continue
        try:
            same = os.path.samefile(output, source)
        except OSError:  # either one does not exist (yet): they cannot be the same file
            continue
        if same:
            raise UsageError(f"{output}: the output is the input file {source}; "
                             "choose another output")


class AtomicOutput:
    """One output file, written whole or not at all (see the module docstring for the rule).

    ``busy_message`` is the one line a second writer of the same output gets. Nothing is created
    until :meth:`open` (or a writer given :attr:`path_for_writing`) writes, except the locked,
    empty ``.part``. Finish with :meth:`finish` (or :meth:`commit` / :meth:`abort`); every one of
    them is idempotent and releases the lock.
    """

    def __init__(self, path: PathLike, *, inputs: Iterable[PathLike | None] = (),
                 busy_message: str | None = None) -> None:
        self.path = Path(path)
        check_not_input(self.path, inputs)
        self.in_place = is_stream(self.path)
        self.target = self.path if self.in_place else Path(os.path.realpath(self.path))
        self.part: Path | None = None if self.in_place else Path(f"{self.target}.part")
        self._done = False
        self._lock: FileLock | None = None
        if self.part is not None:
            self._lock = FileLock(self.part, busy_message or (
                f"{self.path}: another corral process is writing this output ({self.part.name}); "
                "wait for it to finish, or choose another output"))

    @property
    def path_for_writing(self) -> Path:
        """Where the bytes go: the ``.part``, or the stream itself."""
        return self.part if self.part is not None else self.target

    @property
    def done(self) -> bool:
        return self._done

    def open(self, mode: str = "wb", **kwargs: Any) -> IO[Any]:
        """The file to write (``"w"``/``"wb"``; text options such as ``encoding`` pass through).

        A stream is opened for appending, so ``/dev/stdout`` redirected with ``>>`` keeps what the
        file held; FIFOs and devices do not care. Raises OSError for the caller to word."""
        if self.in_place:
            mode = mode.replace("w", "a")
        return open(self.path_for_writing, mode, **kwargs)  # noqa: SIM115 - the caller closes it

    def commit(self) -> None:
        """Rename the finished ``.part`` onto the target. A failed rename raises OSError and keeps
        the ``.part``; the lock is released either way."""
        if self._done:
            return
        self._done = True
        try:
            if self.part is not None:
                os.replace(self.part, self.target)
        finally:
            self._release()

    def abort(self, *, rows: int = 0) -> None:
        """Give up: the ``.part`` is removed unless it holds ``rows``; the target is untouched."""
        if self._done:
            return
        self._done = True
        try:
            if self.part is not None and rows == 0:
                self.part.unlink(missing_ok=True)
        except OSError:
            pass  # a .part we cannot remove is only a leftover: the next run replaces it
        finally:
            self._release()

    def finish(self, complete: bool, *, rows: int = 0) -> None:
        """:meth:`commit` if ``complete``, else :meth:`abort` keeping a ``.part`` that holds rows."""
        if complete:
            self.commit()
        else:
            self.abort(rows=rows)

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()


def write_whole(path: PathLike, data: bytes | str, *, inputs: Iterable[PathLike | None] = ()) -> Path:
    """Write a small file in one go under the same rule (a page, a manifest, a state file).

    Returns ``path`` as given. OSError is left to the caller, who
    knows what the file is; a failed write leaves no ``.part``."""
    output = AtomicOutput(path, inputs=inputs)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with output.open("wb") as handle:
            handle.write(payload)
    except BaseException:
        output.abort()
        raise
    output.commit()
    return output.path
