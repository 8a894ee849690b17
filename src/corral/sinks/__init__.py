"""Writers of results: JSONL (corral rows or OpenAI Batch lines) and one file per prompt."""

from .files import PromptFilesSink
from .jsonl import JsonlSink, batch_line, chat_completion_body, result_line
from .merge import iter_result_files, merge_responses, parse_json_response

__all__ = ["JsonlSink", "PromptFilesSink", "batch_line", "chat_completion_body", "result_line",
           "iter_result_files", "merge_responses", "parse_json_response"]
