"""Read results back: ollama-batch-cluster's response-json-merge (parsed answers as one JSON array)
and printer.

Works on a folder of per-prompt JSON files or on a results JSONL (corral rows or Batch lines).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from ..checks import parse_json_response
from ..errors import InputError
from .files import ERRORS_FILE

__all__ = ["iter_result_files", "merge_responses", "parse_json_response"]


def iter_result_files(path: str | Path, *, errors: bool = False) -> Iterator[tuple[str, dict[str, Any]]]:
    """(label, {"prompt", "response", ...}) for each result, in name / line order. ``errors``: a
    folder's failed rows too (its ``errors.jsonl``, after the answer files)."""
    p = Path(path)
    if p.is_dir():
        for file in sorted(p.glob("*.json")):
            try:
                data = orjson.loads(file.read_bytes())
            except orjson.JSONDecodeError as exc:
                raise InputError(str(file), None, f"invalid JSON ({exc})") from None
            if not isinstance(data, dict):
                raise InputError(str(file), None, "expected a {\"prompt\", \"response\"} object")
            yield file.name, data
        failed = p / ERRORS_FILE
        if errors and failed.is_file():
            for _, row in iter_result_files(failed):
                yield f"{row.get('file') or ERRORS_FILE} (line {row.get('line', '?')})", row
        return
    if not p.exists():
        raise InputError(str(p), None, "no such file or folder")
    with open(p, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                data = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise InputError(str(p), number, f"invalid JSON ({exc})") from None
            if not isinstance(data, dict):
                raise InputError(str(p), number, "expected a JSON object")
            if "custom_id" in data and "response" in data and isinstance(data.get("response"), (dict, type(None))):
                body = (data.get("response") or {}).get("body") or {}
                choices = body.get("choices") or [{}]
                text = (choices[0].get("message") or {}).get("content")
                data = {"id": data["custom_id"], "prompt": None, "response": text, "error": data.get("error")}
            yield str(data.get("id", number)), data


def merge_responses(path: str | Path) -> tuple[list[Any], list[str]]:
    """Every parseable JSON answer as one list, and the labels of those that were not JSON."""
    merged: list[Any] = []
    skipped: list[str] = []
    for label, data in iter_result_files(path):
        try:
            merged.append(parse_json_response(data.get("response")))
        except ValueError:
            skipped.append(label)
    return merged, skipped
