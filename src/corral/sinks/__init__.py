"""Writers of outputs: JSONL (corral rows or OpenAI Batch lines), one file per prompt, and (with the
``corral[tables]`` extra, imported from their modules) tables (``sinks.tables``) and vector files
(``sinks.vectors``). Every one writes through ``sinks.output.AtomicOutput``: one rule for links,
inputs, FIFOs, locks and what an incomplete output leaves.

Names load on first use, so a light writer (``sinks.output``, used by `corral serve`'s state file)
does not bring in the result rows and, through them, the HTTP stack."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .files import PromptFilesSink
    from .jsonl import JsonlSink, batch_line, chat_completion_body, result_line
    from .merge import iter_result_files, merge_responses, parse_json_response
    from .output import AtomicOutput, write_whole

_HOMES = {
    "PromptFilesSink": ".files",
    **dict.fromkeys(["JsonlSink", "batch_line", "chat_completion_body", "result_line"], ".jsonl"),
    **dict.fromkeys(["iter_result_files", "merge_responses", "parse_json_response"], ".merge"),
    **dict.fromkeys(["AtomicOutput", "write_whole"], ".output"),
}

__all__ = ["AtomicOutput", "JsonlSink", "PromptFilesSink", "batch_line", "chat_completion_body",
           "result_line", "iter_result_files", "merge_responses", "parse_json_response", "write_whole"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(home, __name__), name)
