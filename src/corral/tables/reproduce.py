"""`corral analyze --reproduce` and `corral fill --reproduce`: a table job rebuilt from its manifest.

The manifest holds what each row was asked (template, keys or schema, fields, models, options,
system), the input file and its hash, the servers and the engine's settings; these become the
keyword arguments of `analyze_file_async` / `fill_file_async`, so the re-run is the one code path
the original took. The comparison with the original answers is `corral.reproduce`'s, shared with
`corral run --reproduce`.
"""

from __future__ import annotations

from typing import Any

from ..errors import UsageError
from ..manifest import spec_from_dict
from ..reproduce import Reproduction

#: The command-line parameters that define the job; with --reproduce the manifest gives them.
ANALYZE_JOB_FLAGS = ("input", "text_column", "prompt", "json_keys", "schema", "models", "fanout", "system",
                     "option", "temperature", "seed", "num_ctx", "max_tokens", "id_column", "column_prefix")
FILL_JOB_FLAGS = ("input", "fields", "title_col", "col_map", "models", "fanout", "prompt", "system",
                  "option", "temperature", "seed", "num_ctx", "max_tokens", "column_prefix")


def analyze_arguments(repro: Reproduction, servers_given: bool) -> dict[str, Any]:
    """`analyze_file_async`'s keywords for the job the manifest describes."""
    job = repro.job
    schema = job.get("format")
    return {
        **_common(repro, servers_given),
        "text_column": job.get("text_column") or "text",
        "prompt_template": job.get("prompt_template"),
        "json_keys": job.get("json_keys"),
        # an untyped ask's schema is rebuilt from its keys; a typed one is the schema itself
        "json_schema": schema if schema and _typed(schema) else None,
        "id_column": job.get("id_column"),
        "column_prefix": job.get("column_prefix") or "",
    }


def fill_arguments(repro: Reproduction, servers_given: bool) -> dict[str, Any]:
    """`fill_file_async`'s keywords for the job the manifest describes."""
    job = repro.job
    fields = job.get("fields_schema") or job.get("json_fields")
    if not fields:
        raise UsageError(f"{repro.manifest_path}: the manifest names no fields")
    return {
        **_common(repro, servers_given),
        "title_col": job.get("text_column") or "title_en",
        "json_fields": fields,
        "col_map": job.get("col_map"),
        "prompt_template": job.get("prompt_template"),
        "column_prefix": job.get("column_prefix") or "",
    }


def _common(repro: Reproduction, servers_given: bool) -> dict[str, Any]:
    """Models, options, servers and engine settings: what every table job records alike."""
    job, engine = repro.job, repro.engine
    local = bool(job.get("local")) and not servers_given
    out: dict[str, Any] = {
        "model_names": list(job.get("models") or []),
        "fanout": bool(job.get("fanout")),
        "system": job.get("system"),
        "local": local,
        "timeout": engine.get("timeout"),
        "max_concurrent_calls": engine.get("max_in_flight"),
        "encoding": job.get("encoding"),
        "max_json_retries": 2 if engine.get("content_retries") is None else engine["content_retries"],
        **dict(job.get("options") or {}),
    }
    if servers_given or local:
        return out
    recorded = [spec_from_dict(s["spec"]) for s in repro.manifest.get("servers") or [] if s.get("spec")]
    if not recorded:
        raise UsageError(f"{repro.manifest_path}: the manifest lists no servers; give --server URL")
    out["servers"] = recorded
    return out


def _typed(schema: dict[str, Any]) -> bool:
    properties = schema.get("properties") or {}
    return any(spec for spec in properties.values())
