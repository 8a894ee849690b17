"""Flag handling shared by the commands: logging, -O options, @file arguments, schemas.

Servers and the config are resolved once, for every front, by `corral.settings.resolve`.
orjson is imported where a value is parsed, so building the command line stays light."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from ..errors import UsageError

API_KEY_ENV_HELP = ("Environment variable holding the API key for --server URLs (e.g. OPENROUTER_API_KEY); "
                    "OpenAI-compatible servers without one use OPENAI_API_KEY.")


RPM_HELP = "Most requests started per minute on each --server URL (any 60-second window)."
TPM_HELP = ("Most tokens (prompt + completion) per minute on each --server URL, estimated before the "
            "answer and corrected by its usage.")


def keyed(servers: list[str], api: str, api_key_env: str | None, rpm: int | None = None,
          tpm: int | None = None) -> Any:
    """--server URLs for a Python front, with --api-key-env, --rpm and --tpm applied
    (settings.keyed_servers)."""
    from ..settings import check_per_minute

    check_per_minute(rpm, "--rpm")
    check_per_minute(tpm, "--tpm")
    if not servers or not (api_key_env or rpm or tpm):
        return servers or None
    from ..settings import keyed_servers

    return keyed_servers(servers, api, api_key_env, rpm=rpm, tpm=tpm)


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="corral: %(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr:
            handler.setFormatter(_RedactingFormatter("corral: %(message)s"))
    logging.getLogger("corral").setLevel(level)


class _RedactingFormatter(logging.Formatter):
    """Log lines with URL credentials hidden (a server URL with ``user:pass@`` or ``?api_key=``
    appears in probe and retry messages)."""

    def format(self, record: logging.LogRecord) -> str:
        from ..secrets import redact_url

        return redact_url(super().format(record))


def parse_option_pairs(pairs: list[str], flag: str = "--option") -> dict[str, Any]:
    """``-O temperature=0 -O stop='["\\n"]'``: values are JSON when they parse, else strings."""
    import orjson

    options: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise UsageError(f"{flag} {pair!r}: expected NAME=VALUE, e.g. {flag} temperature=0")
        name, raw = pair.split("=", 1)
        try:
            options[name.strip()] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            options[name.strip()] = raw
    return options


def read_text_arg(value: str | None, flag: str) -> str | None:
    """``@file.txt`` reads the text from a file, as curl does."""
    if value is None or not value.startswith("@"):
        return value
    path = Path(value[1:])
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{flag} {value}: cannot read {path}: {exc.strerror or exc}") from None


def load_schema(value: str | None) -> Any:
    """--schema: a JSON Schema inline or from a file (``@schema.json`` or a path)."""
    import orjson

    if value is None:
        return None
    text = value
    if value.startswith("@") or Path(value).is_file():
        path = Path(value.lstrip("@"))
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--schema: cannot read {path}: {exc.strerror or exc}") from None
    try:
        schema = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"--schema: not valid JSON ({exc})") from None
    if not isinstance(schema, dict):
        raise UsageError("--schema must be a JSON object (a JSON Schema)")
    return schema


def model_options(pairs: list[str], temperature: float | None = None, seed: int | None = None,
                  num_ctx: int | None = None, max_tokens: int | None = None) -> dict[str, Any]:
    """``-O NAME=VALUE`` pairs plus the options that have flags of their own (the flags win); a
    name corral does not know is an error with a did-you-mean (``--extra-option`` sends it)."""
    from ..options import check_options

    options = check_options(parse_option_pairs(pairs), "--option")
    for name, value in (("temperature", temperature), ("seed", seed), ("num_ctx", num_ctx),
                        ("num_predict", max_tokens)):
        if value is not None:
            options[name] = value
    return options
