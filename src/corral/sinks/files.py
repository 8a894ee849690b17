"""One JSON file per prompt, as ollama-batch-cluster writes them: {"prompt", "response"}.

ollama-batch-cluster names files by epoch time plus a random number; corral names them by input
position and the request's hash instead (``000042-3f9a1c2b7d.json``): they sort in input order,
never collide, and a re-run rewrites the same file rather than adding a second copy. Each file is
written whole (corral.sinks.output.write_whole), so a crash never leaves half an answer.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from ..errors import UsageError
from ..results import Outcome
from .output import write_whole


class PromptFilesSink:
    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.rows = 0
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"{self.folder}: cannot create the output folder: {exc.strerror or exc}") from None

    def name_for(self, outcome: Outcome) -> str:
        return f"{outcome.request.index:06d}-{outcome.request.key[:10]}.json"

    def write(self, outcome: Outcome) -> None:
        if not outcome.ok:
            return  # failures are listed in the summary and the JSONL output, not as answer files
        path = self.folder / self.name_for(outcome)
        data = orjson.dumps({"prompt": outcome.request.prompt, "response": outcome.text},
                            option=orjson.OPT_INDENT_2)
        try:
            write_whole(path, data)
        except OSError as exc:
            raise UsageError(f"{path}: cannot write: {exc.strerror or exc}") from None
        self.rows += 1

    def close(self, complete: bool = True) -> None:
        return None
