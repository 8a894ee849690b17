"""One batch while it runs: its rows read one at a time, its outcomes written as they come.

Rows are read from the input file only when the fair share gives this batch a turn, so a batch
holds no more rows in memory than it has in the engine's read-ahead window. Outcomes are written
to ``<output id>.part`` / ``<error id>.part`` the moment they arrive and the files are committed
when the batch ends. A restarted batch is read again from its first line: the journal answers
every row that was finished (nothing is sent again) and the files are written again whole, which is
how each ``custom_id`` appears exactly once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import IO

from ..requests import Request, request_key
from ..results import Outcome
from ..sinks.output import AtomicOutput
from .batches import Batch
from .files import Files
from .lines import expired_line, output_line
from .validate import input_file


class _LazyFile:
    """An output file opened on its first line: a batch with no failures has no error file."""

    def __init__(self, files: Files, file_id: str) -> None:
        self.files = files
        self.file_id = file_id
        self.lines = 0
        self._output: AtomicOutput | None = None
        self._handle: IO[bytes] | None = None

    def write(self, line: bytes) -> None:
        if self._handle is None:
            self._output = self.files.writer(self.file_id)
            self._handle = self._output.open("wb")
        self._handle.write(line)
        self.lines += 1

    def commit(self) -> bool:
        """Make the file whole at its path; False when it has no line (no file)."""
        if self._handle is None or self._output is None:
            return False
        self._handle.close()
        self._handle = None
        self._output.commit()
        return True

    def abort(self) -> None:
        if self._handle is not None and self._output is not None:
            self._handle.close()
            self._handle = None
            self._output.abort()


class ActiveBatch:
    """A batch being run. ``stopping`` is "cancelled" or "expired" once no more rows may start."""

    def __init__(self, batch: Batch, files: Files, key_kind: Callable[[str], str]) -> None:
        self.batch = batch
        self.files = files
        self._key_kind = key_kind
        self._rows: Iterator[Request] = iter(input_file(files.path(batch.input_file_id)))
        self.read_all = False
        self.outstanding = 0
        self.stopping: str | None = None
        self.finalizing = False
        self.output = _LazyFile(files, batch.file_id("output"))
        self.errors = _LazyFile(files, batch.file_id("error"))
        batch.completed = batch.failed = 0  # counted again as the rows come back (journal or engine)
        batch.usage = {"input_tokens": 0, "output_tokens": 0}

    @property
    def id(self) -> str:
        return self.batch.id

    @property
    def settled(self) -> bool:
        """Nothing more will arrive: all rows read (or no more may start) and none outstanding."""
        return self.outstanding == 0 and (self.read_all or self.stopping is not None)

    def next_request(self) -> Request | None:
        """The next row, keyed for this batch; None once all are read or the batch is stopping."""
        if self.stopping is not None or self.read_all:
            return None
        request = next(self._rows, None)
        if request is None:
            self.read_all = True
            return None
        request.key = self.key(request)
        request.meta["batch_id"] = self.batch.id
        self.outstanding += 1
        return request

    def key(self, request: Request) -> str:
        """The journal key: corral's stable key of the ask, salted with the batch id, so a restarted
        batch finds its own answers while another batch asking the same is answered afresh."""
        plain = request_key(request, self._key_kind(request.model))
        return hashlib.sha256(f"{self.batch.id}:{plain}".encode()).hexdigest()

    def record(self, outcome: Outcome) -> None:
        """Write one row's outcome to the output or the error file and count it."""
        self.outstanding -= 1
        if outcome.ok:
            self.output.write(output_line(self.batch.id, outcome))
            self.batch.completed += 1
            reply = outcome.reply
            if reply is not None:
                self.batch.usage["input_tokens"] += reply.prompt_eval_count or 0
                self.batch.usage["output_tokens"] += reply.eval_count or 0
        else:
            self.errors.write(output_line(self.batch.id, outcome))
            self.batch.failed += 1

    def unread(self) -> Iterator[Request]:
        """The rows never read (an expired batch's rest), one at a time."""
        if not self.read_all:
            yield from self._rows
            self.read_all = True

    def write_expired(self, request: Request) -> None:
        self.errors.write(expired_line(self.batch.id, request))
        self.batch.failed += 1

    def commit(self) -> tuple[bool, bool]:
        """Commit both files; whether each exists."""
        return self.output.commit(), self.errors.commit()

    def abort(self) -> None:
        self.output.abort()
        self.errors.abort()
