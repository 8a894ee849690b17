"""Check a batch's input file the way OpenAI does, before anything is sent.

Every line must be an OpenAI Batch request (``custom_id``, ``method`` POST, ``url`` the batch's
endpoint, ``body`` with a ``model``), and ``custom_id`` must be unique. A file with any bad line
fails the batch at ``validating`` with the line numbers in ``errors``. Lines are parsed by
corral's own prompt-file reader (`corral.sources.PromptFile`), streaming: memory does not grow with
the file (duplicate ids are found through a set of 64-bit hashes, not of the ids).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..errors import InputError
from ..sources import Defaults, PromptFile

MAX_ERRORS = 100  # listed in ``errors``; the count of the rest is said in the last one


@dataclass(slots=True)
class Checked:
    total: int = 0
    models: dict[str, int] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    bad_lines: int = 0

    def add_error(self, line: int | None, code: str, message: str, param: str | None = None) -> None:
        self.bad_lines += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append({"code": code, "message": message, "param": param, "line": line})


def input_file(path: Path) -> PromptFile:
    """The reader of a batch's input: JSONL, no defaults (every line names its own model)."""
    return PromptFile(path, Defaults(), fmt="jsonl")


class _RawLines:
    """The file's raw lines, read forward alongside the parser, for a second look at a bad line."""

    def __init__(self, path: Path) -> None:
        self._handle = open(path, "rb")  # noqa: SIM115  (closed by close())
        self._number = 0

    def line(self, number: int) -> bytes:
        raw = b""
        while self._number < number:
            raw = self._handle.readline()
            self._number += 1
        return raw

    def close(self) -> None:
        self._handle.close()


def _url_of(raw: bytes) -> Any:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return data.get("url") if isinstance(data, dict) else None


def check_input(path: Path, endpoint: str) -> Checked:
    checked = Checked()
    seen: set[int] = set()
    raw_lines = _RawLines(path)
    try:
        _check_lines(path, endpoint, checked, seen, raw_lines)
    finally:
        raw_lines.close()
    if checked.total == 0 and not checked.bad_lines:
        checked.add_error(None, "empty_file", "the input file has no requests")
    if checked.bad_lines > len(checked.errors):
        checked.errors.append({"code": "too_many_errors", "param": None, "line": None,
                               "message": f"{checked.bad_lines - len(checked.errors)} more bad lines "
                                          "not listed"})
    return checked


def _check_lines(path: Path, endpoint: str, checked: Checked, seen: set[int], raw_lines: _RawLines) -> None:
    for item in input_file(path).checked():
        if isinstance(item, InputError):
            if "JSON" in item.problem:
                checked.add_error(item.line, "invalid_json_line", item.problem)
                continue
            # A request for another endpoint is refused as such, as OpenAI does, even when its body
            # would not fit this one either.
            url = _url_of(raw_lines.line(item.line)) if item.line else None
            if isinstance(url, str) and url != endpoint:
                checked.add_error(item.line, "mismatched_endpoint", f"url {url!r} differs from the "
                                  f"batch's endpoint {endpoint}", param="url")
            else:
                checked.add_error(item.line, "invalid_request", item.problem)
            continue
        line = item.meta.get("line")
        if not item.meta.get("batch"):
            checked.add_error(line, "invalid_request", "not an OpenAI Batch request: each line needs "
                              "custom_id, method, url and body")
            continue
        if item.meta.get("url") != endpoint:
            checked.add_error(line, "mismatched_endpoint", f"url {item.meta.get('url')!r} differs from "
                              f"the batch's endpoint {endpoint}", param="url")
            continue
        fingerprint = hash(item.id)
        if fingerprint in seen:
            checked.add_error(line, "duplicate_custom_id", f"custom_id {item.id!r} is used by an "
                              "earlier line; each must be unique", param="custom_id")
            continue
        seen.add(fingerprint)
        checked.total += 1
        checked.models[item.model] = checked.models.get(item.model, 0) + 1
