"""Writers of outputs: JSONL (corral rows or OpenAI Batch lines), one file per prompt, and (with the
``corral[tables]`` extra, imported from their modules) tables (``sinks.tables``) and vector files
(``sinks.vectors``). Every one writes through ``sinks.output.AtomicOutput``: one rule for links,
inputs, FIFOs, locks and what an incomplete output leaves."""

from .files import PromptFilesSink
from .jsonl import JsonlSink, batch_line, chat_completion_body, result_line
from .merge import iter_result_files, merge_responses, parse_json_response
from .output import AtomicOutput, write_whole

__all__ = ["AtomicOutput", "JsonlSink", "PromptFilesSink", "batch_line", "chat_completion_body",
           "result_line", "iter_result_files", "merge_responses", "parse_json_response", "write_whole"]
