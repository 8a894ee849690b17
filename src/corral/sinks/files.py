"""One JSON file per prompt, as ollama-batch-cluster writes them: {"prompt", "response"}.

ollama-batch-cluster names files by epoch time plus a random number; corral names them by input
position, counted from 1 like the failure list, and the request's hash (``000042-3f9a1c2b7d.json``):
they sort in input order, never collide, and a re-run rewrites the same file rather than adding a
second copy. They are indented 4 spaces, as that script writes them. Each file is written whole
(corral.sinks.output.write_whole), so a crash never leaves half an answer.

Rows that failed get no answer file; they are listed in the folder's ``errors.jsonl`` (one line per
failed row: its line, the file it would have had, the prompt and the error), which `corral show DIR
--errors` prints. That list is rewritten whole by every run that finishes, and removed when nothing
failed, so it always describes the folder as it is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

import orjson

from ..errors import UsageError
from ..results import Outcome
from .output import AtomicOutput, write_whole

ERRORS_FILE = "errors.jsonl"


class PromptFilesSink:
    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.rows = 0
        self.failed = 0
        self._errors: AtomicOutput | None = None
        self._errors_file: IO[bytes] | None = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"{self.folder}: cannot create the output folder: {exc.strerror or exc}") from None

    def name_for(self, outcome: Outcome) -> str:
        return f"{outcome.request.index + 1:06d}-{outcome.request.key[:10]}.json"

    def write(self, outcome: Outcome) -> None:
        if not outcome.ok:
            self._write_error(outcome)
            return
        path = self.folder / self.name_for(outcome)
        data = json.dumps({"prompt": outcome.request.prompt, "response": outcome.text},
                          indent=4, ensure_ascii=False) + "\n"
        try:
            write_whole(path, data)
        except OSError as exc:
            raise UsageError(f"{path}: cannot write: {exc.strerror or exc}") from None
        self.rows += 1

    def _write_error(self, outcome: Outcome) -> None:
        path = self.folder / ERRORS_FILE
        row: dict[str, Any] = {
            "line": outcome.request.meta.get("line"), "id": outcome.request.id,
            "file": self.name_for(outcome), "prompt": outcome.request.prompt, "error": outcome.error,
            "error_kind": outcome.error_kind, "status_code": outcome.status_code,
            "attempts": outcome.attempts, "server": outcome.server, "model": outcome.request.model}
        try:
            if self._errors_file is None:
                self._errors = AtomicOutput(path, busy_message=(
                    f"{path}: another corral process is writing this folder; wait for it to finish"))
                self._errors_file = self._errors.open("wb")
            self._errors_file.write(orjson.dumps(row) + b"\n")
        except OSError as exc:
            raise UsageError(f"{path}: cannot write: {exc.strerror or exc}") from None
        self.failed += 1

    def close(self, complete: bool = True) -> None:
        """A finished run leaves the error list of this run only: none when nothing failed."""
        handle, self._errors_file = self._errors_file, None
        if handle is not None and self._errors is not None:
            try:
                handle.close()
                self._errors.finish(complete, rows=self.failed)
            except OSError as exc:
                raise UsageError(f"{self.folder / ERRORS_FILE}: cannot write: {exc.strerror or exc}") from None
            finally:
                self._errors.abort(rows=self.failed)
        elif complete:
            (self.folder / ERRORS_FILE).unlink(missing_ok=True)
