"""Read prompt files line by line, in every shape our users have, without holding the file in memory.

Shapes of a JSONL line, detected per line:

* ``{"role": "user", "content": "..."}``: ollama-batch-cluster's file, one message per line
* ``{"prompt": "...", "system"?: ..., "model"?: ..., "id"?: ..., "options"?: {...}, "format"?: ...}``
* ``{"messages": [...], "model"?: ..., "id"?: ...}``
* OpenAI Batch API lines: ``{"custom_id", "method", "url", "body": {...}}``

``--format text`` reads one prompt per line. A file is first scanned (validated, counted, its models
listed) so that a malformed line is reported before any request is sent; then it is read again to
run. Both passes stream. A scan's report is kept in the job's journal under `scan_key` (the file's
SHA-256 and everything that changes how a line parses), so re-running a job skips the first pass.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..errors import InputError, UsageError
from ..requests import Request, build_messages, canonical_options

BATCH_URLS = {"/v1/chat/completions": "chat", "/v1/completions": "generate", "/v1/embeddings": "embed"}
# OpenAI body fields that map onto our own option names; the rest pass through to OpenAI servers.
_BODY_OPTIONS = {
    "temperature": "temperature", "top_p": "top_p", "seed": "seed", "stop": "stop",
    "max_tokens": "num_predict", "max_completion_tokens": "num_predict",
    "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
}
_LINE_KEYS = {"prompt", "messages", "role", "content", "model", "id", "custom_id", "system",
              "options", "format", "keep_alive", "name"}
MAX_LINE_BYTES = 64 * 1024 * 1024


@dataclass(slots=True)
class Defaults:
    """Job-wide settings a line may override."""

    model: str | None = None
    system: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    format: Any = None
    keep_alive: str | int | None = None
    endpoint: str = "chat"


@dataclass(slots=True)
class ScanReport:
    """What the validation pass learnt."""

    rows: int = 0
    models: dict[str, int] = field(default_factory=dict)
    invalid: list[str] = field(default_factory=list)
    openai_batch: bool = False
    bad_lines: list[int] = field(default_factory=list)   # skipped with --skip-invalid
    #: Explicit ids that read like a line number ("12", "~12"): an implicit id steps aside for them
    #: (`PromptFile._implicit_id`), so a kept report must carry them.
    line_like_ids: list[str] = field(default_factory=list)

    def to_json(self) -> bytes:
        return orjson.dumps({"rows": self.rows, "models": self.models, "invalid": self.invalid,
                             "openai_batch": self.openai_batch, "bad_lines": self.bad_lines,
                             "line_like_ids": self.line_like_ids})

    @classmethod
    def from_json(cls, data: bytes | str) -> ScanReport:
        fields = orjson.loads(data)
        return cls(rows=fields["rows"], models=fields["models"], invalid=fields["invalid"],
                   openai_batch=fields["openai_batch"], bad_lines=fields["bad_lines"],
                   line_like_ids=fields.get("line_like_ids", []))


#: Changes whenever what a scan finds could change for the same bytes (parsing rules, checks).
SCAN_VERSION = 2


class PromptFile:
    """A JSONL or text prompt file; iterate it for Requests (after ``scan()``)."""

    def __init__(self, path: str | os.PathLike[str], defaults: Defaults, *, fmt: str = "auto",
                 skip_invalid: bool = False) -> None:
        self.path = Path(path)
        self.defaults = defaults
        self.fmt = _detect_format(self.path, fmt)
        self._where = str(self.path)
        self._default_options = canonical_options(defaults.options)
        # A line of only a prompt (and an id) takes the short way in _request when the defaults
        # alone make it valid: most prompt files, and every row a resume skips over.
        self._plain_ok = bool(defaults.model) and isinstance(defaults.model, str) and (
            defaults.system is None or isinstance(defaults.system, str))
        self.skip_invalid = skip_invalid
        self._bad_lines: set[int] = set()
        self._explicit_ids = _SeenIds()
        self.report: ScanReport | None = None

    def _lines(self) -> Iterator[tuple[int, str | _Bad]]:
        """(line number, text) for every non-blank line; encoding problems are InputErrors."""
        try:
            handle = open(self.path, "rb")
        except FileNotFoundError:
            raise InputError(str(self.path), None, "file not found") from None
        except IsADirectoryError:
            raise InputError(str(self.path), None, "is a folder, not a prompt file") from None
        except PermissionError:
            raise InputError(str(self.path), None, "permission denied") from None
        with handle:
            for number, raw in enumerate(handle, 1):
                if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]  # a UTF-8 byte-order mark, as Windows editors write
                elif number == 1 and (wide := wide_encoding(raw)):
                    # Windows "Unicode": every line would be garbage, so say what the file is, once
                    yield number, _Bad(f"file is {wide}, not UTF-8: save it as UTF-8")
                    return
                if len(raw) > MAX_LINE_BYTES:
                    yield number, _Bad(f"line is {len(raw) / 1e6:.0f} MB; the limit is "
                                       f"{MAX_LINE_BYTES / 1e6:.0f} MB")
                    continue
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    yield number, _Bad(f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                                       f"{exc.start + 1}); re-save the file as UTF-8")
                    continue
                if "\x00" in text:
                    yield number, _Bad("contains a NUL byte; is this a binary file?")
                    continue
                if text.strip():
                    yield number, text

    def scan_key(self, sha256: str) -> str:
        """What a scan's report depends on: the file's bytes (``sha256``), how it is read, the
        defaults a line may lack, and this code's version of the rules."""
        d = self.defaults
        return hashlib.sha256(orjson.dumps([
            SCAN_VERSION, sha256, self.fmt, self.skip_invalid, d.model, d.system, d.options, d.format,
            d.keep_alive, d.endpoint], option=orjson.OPT_SORT_KEYS)).hexdigest()

    def adopt(self, report: ScanReport) -> ScanReport:
        """Take the report an earlier scan of the same bytes and settings made (see `scan_key`)."""
        self._bad_lines = set(report.bad_lines)
        self._explicit_ids = _SeenIds()
        for explicit in report.line_like_ids:
            self._explicit_ids.add(explicit)
        self.report = report
        return report

    def scan(self) -> ScanReport:
        """Validate every line before anything is sent; raise InputError on the first bad one."""
        report = ScanReport()
        ids = _SeenIds()
        kinds: set[bool] = set()
        for number, text in self._lines():
            try:
                request = self._parse(number, text)
                if request.meta.get("explicit_id"):
                    if not ids.add(request.id):
                        raise InputError(str(self.path), number, f"duplicate id {request.id!r}")
                    if _LINE_LIKE.fullmatch(request.id):
                        report.line_like_ids.append(request.id)
                kinds.add(bool(request.meta.get("batch")))
                if len(kinds) > 1:
                    raise InputError(str(self.path), number,
                                     "mixes OpenAI Batch lines with other line shapes; use one shape per file")
            except InputError as exc:
                if not self.skip_invalid:
                    raise
                self._bad_lines.add(number)
                report.invalid.append(str(exc))
                continue
            report.rows += 1
            report.models[request.model] = report.models.get(request.model, 0) + 1
        if report.rows == 0 and not report.invalid:
            raise InputError(str(self.path), None, "no prompts: the file is empty")
        report.openai_batch = kinds == {True}
        self._explicit_ids = ids
        report.bad_lines = sorted(self._bad_lines)
        self.report = report
        return report

    def checked(self) -> Iterator[Request | InputError]:
        """Every non-blank line parsed, or its error, streaming: for callers that validate a file
        their own way (the gateway lists every bad line, as OpenAI's Batch API does)."""
        for number, text in self._lines():
            try:
                yield self._parse(number, text)
            except InputError as exc:
                yield exc

    def __iter__(self) -> Iterator[Request]:
        for number, text in self._lines():
            if number in self._bad_lines:
                continue
            yield self._parse(number, text)

    # -- parsing ------------------------------------------------------------------------------------
    def _parse(self, number: int, text: str | _Bad) -> Request:
        where = self._where
        if isinstance(text, _Bad):
            raise InputError(where, number, text.problem)
        if self.fmt == "text":
            return self._request(number, {"prompt": text.rstrip("\r\n")})
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise InputError(where, number, f"invalid JSON ({_short_json_error(exc)})") from None
        if isinstance(data, str):
            data = {"prompt": data}
        if not isinstance(data, dict):
            raise InputError(where, number, f"expected a JSON object, found {type(data).__name__}")
        if "body" in data and "custom_id" in data:
            return self._batch_request(number, data)
        return self._request(number, data)

    def _request(self, number: int, data: dict[str, Any]) -> Request:
        d = self.defaults
        if self._plain_ok and "prompt" in data and data.keys() <= _PLAIN_LINE:
            prompt, explicit = data["prompt"], data.get("id")
            if type(prompt) is str and (explicit is None or type(explicit) in (str, int)):
                return Request(
                    index=0, id=str(explicit) if explicit is not None else self._implicit_id(number),
                    model=d.model,  # type: ignore[arg-type]  # _plain_ok: a str
                    messages=build_messages(prompt, d.system),
                    options=dict(self._default_options), format=d.format, endpoint=d.endpoint,
                    keep_alive=d.keep_alive, meta={"line": number, "explicit_id": explicit is not None})
        where = self._where
        system = data.get("system", d.system)
        if system is not None and not isinstance(system, str):
            raise InputError(where, number, f"system must be a string, not {_kind(system)}")
        if "messages" in data:
            problem = _messages_problem(data["messages"])
            if problem:
                raise InputError(where, number, f"messages {problem}")
            built = build_messages(None, system, data["messages"])
        elif "prompt" in data:
            prompt = data["prompt"]
            if not isinstance(prompt, str):
                raise InputError(where, number, f"prompt must be a string, not {_kind(prompt)}")
            built = build_messages(prompt, system)
        elif "content" in data:
            content = data["content"]
            if not isinstance(content, str):
                raise InputError(where, number, f"content must be a string, not {_kind(content)}")
            role = data.get("role", "user")
            if not isinstance(role, str):
                raise InputError(where, number, f"role must be a string, not {_kind(role)}")
            built = build_messages(None, system, [{"role": role, "content": content}])
        else:
            found = ", ".join(sorted(data)) or "nothing"
            raise InputError(where, number, "expected one of prompt, messages, role+content or an OpenAI "
                                            f"Batch line (custom_id+body); found {found}")
        model = data.get("model", d.model)
        if not model or not isinstance(model, str):
            raise InputError(where, number, "no model: give --model, model = in the config, or a model field")
        options = data.get("options", self._default_options)
        if options is self._default_options:  # most lines: the defaults, canonical once for the whole file
            merged = dict(self._default_options)
        elif isinstance(options, dict):
            merged = canonical_options({**self.defaults.options, **options})
        else:
            raise InputError(where, number, "options must be an object")
        explicit = data.get("custom_id", data.get("id"))
        if explicit is not None and (not isinstance(explicit, (str, int)) or isinstance(explicit, bool)):
            raise InputError(where, number, f"id must be a string or a number, not {_kind(explicit)}")
        return Request(
            index=0,
            id=str(explicit) if explicit is not None else self._implicit_id(number),
            model=model,
            messages=built,
            options=merged,
            format=data.get("format", d.format),
            endpoint=d.endpoint,
            keep_alive=data.get("keep_alive", d.keep_alive),
            meta={"line": number, "explicit_id": explicit is not None},
        )

    def _implicit_id(self, number: int) -> str:
        """A line without an id is named by its line number, unless another line's explicit id
        is that number: then ``~N`` (``~~N``...), so no two rows ever share an id."""
        candidate = str(number)
        while candidate in self._explicit_ids:
            candidate = "~" + candidate
        return candidate

    def _batch_request(self, number: int, data: dict[str, Any]) -> Request:
        where = str(self.path)
        body = data["body"]
        url = data.get("url", "/v1/chat/completions")
        if not isinstance(body, dict):
            raise InputError(where, number, f"body must be an object, not {_kind(body)}")
        custom_id = data["custom_id"]
        if not isinstance(custom_id, (str, int)) or isinstance(custom_id, bool):
            raise InputError(where, number, f"custom_id must be a string, not {_kind(custom_id)}")
        endpoint = BATCH_URLS.get(url) if isinstance(url, str) else None
        if endpoint is None:
            shown = repr(url) if isinstance(url, str) else _kind(url)
            raise InputError(where, number, f"unsupported url {shown}; use one of {', '.join(BATCH_URLS)}")
        if data.get("method", "POST") != "POST":
            raise InputError(where, number, "method must be POST")
        model = body.get("model")
        if model is not None and (not isinstance(model, str) or not model):
            raise InputError(where, number, f"body.model must be a model name, not {_kind(model)}")
        model = model or self.defaults.model
        if not model:
            raise InputError(where, number, "body has no model and no default model was given")
        options: dict[str, Any] = dict(self.defaults.options)
        extra: dict[str, Any] = {}
        fmt = self.defaults.format
        messages: list[dict[str, Any]] = []
        inputs: list[str] | None = None
        for name, value in body.items():
            if name in ("model", "stream"):
                continue
            if name == "messages":
                problem = _messages_problem(value)
                if problem:
                    raise InputError(where, number, f"body.messages {problem}")
                messages = build_messages(None, self.defaults.system, value)
            elif name == "prompt" and endpoint == "generate":
                if not isinstance(value, str):
                    raise InputError(where, number, f"body.prompt must be a string, not {_kind(value)}")
                messages = build_messages(value, self.defaults.system)
            elif name == "input" and endpoint == "embed":
                if isinstance(value, str):
                    inputs = [value]
                elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                    inputs = list(value)
                else:
                    raise InputError(where, number, "body.input must be a string or a non-empty list of "
                                                    f"strings, not {_kind(value)}")
            elif name == "response_format":
                fmt = value
            elif name in _BODY_OPTIONS:
                options[_BODY_OPTIONS[name]] = value
            else:
                extra[name] = value
        if endpoint != "embed" and not messages:
            raise InputError(where, number, "body has no messages" if endpoint == "chat" else "body has no prompt")
        if endpoint == "embed" and inputs is None:
            raise InputError(where, number, "body has no input")
        return Request(
            index=0, id=str(custom_id), model=model, messages=messages,
            options=canonical_options(options), format=fmt, endpoint=endpoint, inputs=inputs,
            extra=extra, keep_alive=self.defaults.keep_alive,
            meta={"line": number, "explicit_id": True, "batch": True, "url": url},
        )


_LINE_LIKE = re.compile(r"~*[0-9]+")


_PLAIN_LINE = frozenset({"prompt", "id"})


class _SeenIds:
    """The explicit ids seen so far, to refuse a duplicate. Past `IN_MEMORY` ids they move to a
    temporary SQLite file (deleted when closed), so scanning a file of millions of ids keeps memory
    flat: a set of a million ids alone is ~80 MB."""

    IN_MEMORY = 20_000

    def __init__(self) -> None:
        self._set: set[str] = set()
        self._db: sqlite3.Connection | None = None

    def add(self, item: str) -> bool:
        """False when ``item`` was seen before."""
        if self._db is None:
            if item in self._set:
                return False
            self._set.add(item)
            if len(self._set) >= self.IN_MEMORY:
                # A private temporary file, used by one thread at a time but closed wherever the
                # scan is collected (a notebook's job scans on a thread of its own).
                self._db = sqlite3.connect("", check_same_thread=False)
                self._db.execute("CREATE TABLE ids (id TEXT PRIMARY KEY) WITHOUT ROWID")
                self._db.executemany("INSERT INTO ids VALUES (?)", ((i,) for i in self._set))
                self._set = set()
            return True
        try:
            self._db.execute("INSERT INTO ids VALUES (?)", (item,))
        except sqlite3.IntegrityError:
            return False
        return True

    def __contains__(self, item: object) -> bool:
        if self._db is None:
            return item in self._set
        return self._db.execute("SELECT 1 FROM ids WHERE id = ?", (item,)).fetchone() is not None

    def __del__(self) -> None:
        if self._db is not None:
            self._db.close()


@dataclass(slots=True)
class _Bad:
    problem: str


def wide_encoding(head: bytes) -> str | None:
    """``"UTF-32"`` or ``"UTF-16"`` when ``head`` starts with that encoding's byte-order mark
    (UTF-32's little-endian mark begins with UTF-16's, so it is tried first)."""
    if head[:4] in (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff"):
        return "UTF-32"
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "UTF-16"
    return None


def _kind(value: Any) -> str:
    """How a JSON value is named in an error: ``null``, ``a number (5)``, ``a list``..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value[:40]!r})"
    return "a list" if isinstance(value, list) else "an object"


def _messages_problem(messages: Any) -> str | None:
    """Why ``messages`` is not a non-empty list of {role, content} objects, or None."""
    if not isinstance(messages, list) or not messages:
        return f"must be a non-empty list of {{role, content}} objects, not {_kind(messages)}"
    for i, message in enumerate(messages, 1):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            return f"must be {{role, content}} objects; item {i} is {_kind(message)}"
        if not isinstance(message["role"], str):
            return f"item {i}: role must be a string, not {_kind(message['role'])}"
        content = message["content"]
        if not isinstance(content, (str, list)):
            return f"item {i}: content must be a string (or a list of parts), not {_kind(content)}"
    return None


def _short_json_error(exc: orjson.JSONDecodeError) -> str:
    return str(exc).split(":", 1)[0] + f" at column {exc.colno}" if exc.colno else str(exc)


def _detect_format(path: Path, fmt: str) -> str:
    if fmt not in ("auto", "jsonl", "text"):
        raise UsageError(f"--format must be auto, jsonl or text, not {fmt!r}")
    if fmt != "auto":
        return fmt
    return "text" if path.suffix.lower() in (".txt", ".text") else "jsonl"
