"""`corral.ray.Processor`: run_analysis as a callable class for Ray Data's ``map_batches``.

    import ray, corral.ray
    ds = ray.data.read_parquet("big/")
    out = ds.map_batches(corral.ray.Processor, compute=ray.data.ActorPoolStrategy(size=8),
                         batch_size=512, batch_format="pandas", num_cpus=0.5,
                         fn_constructor_kwargs={"config": "cluster.toml", "num_actors": 8,
                                                "text_column": "text", "prompt_template": "..."})
    out.write_parquet("out/")

Each actor owns one engine (see `corral.ray.worker`) with its share of every server's slots
(`corral.ray.slots`), so the fleet's configured slots are what is in flight in all, whatever the
number of actors. ``num_actors`` must be the actor pool's size.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pandas as pd

from ..config import Config
from ..sources.tables import to_pandas
from .worker import ActorEngine, TableJob, actor_settings, fleet_key, my_share, resolve_fleet

log = logging.getLogger("corral")


class Processor:
    """Fills run_analysis's columns (``response``, one per JSON key, ``model``, ``error``; with
    ``fanout=True`` each suffixed ``_<model>``) for every batch. A failing row gets its reason in
    ``error``; ``__call__`` never raises for a row's failure.

    Keywords: ``config`` (a cluster TOML path readable on every node, a dict of the same content, or
    a `corral.Config`), or ``servers`` (URLs) with ``api``; ``num_actors`` (the pool size: slots are
    shared among that many actors); ``workers`` (slots of a server whose config does not say
    ``max_concurrency``; default 8 for Ollama, 16 for OpenAI-compatible servers); and
    run_analysis's ``text_column``, ``model_names`` (default: the config's model),
    ``prompt_template``, ``json_keys``, ``json_schema``, ``fanout``, ``system``, ``id_column``,
    ``timeout``, ``max_json_retries``, ``max_attempts``, ``column_prefix`` (put before every new
    column's name, for a table whose own columns are named like the answers); other keywords are model options
    (``temperature=0, seed=1``). ``job_name`` tells two concurrent corral stages of one Ray job apart.
    """

    def __init__(self, *, config: str | dict[str, Any] | Config | None = None, servers: Any = None,
                 api: str = "ollama", num_actors: int = 1, workers: int | None = None,
                 text_column: str = "text", model_names: str | Sequence[str] | None = None,
                 prompt_template: str | None = None, json_keys: Sequence[str] | str | None = None,
                 json_schema: Any = None, fanout: bool = False, system: str | None = None,
                 id_column: str | None = None, timeout: float | None = None, max_json_retries: int = 2,
                 max_attempts: int | None = None, job_name: str = "", column_prefix: str = "",
                 **options: Any) -> None:
        specs, resolved = resolve_fleet(config, servers, api, workers, system=system, options=options,
                                        timeout=timeout, max_attempts=max_attempts)
        models = model_names or resolved.model
        if not models:
            from ..errors import UsageError

            raise UsageError("no model: give model_names=... or a config with model = ...")
        self.job = TableJob(
            text_column=text_column, model_names=(models,) if isinstance(models, str) else tuple(models),
            prompt_template=prompt_template, json_keys=json_keys, json_schema=json_schema,
            fanout=fanout, system=resolved.system, options=resolved.options,
            id_column=id_column, column_prefix=column_prefix)
        self.index, self.servers = my_share(specs, num_actors, fleet_key(specs, num_actors, job_name))
        log.info("corral actor %d/%d: %s", self.index, num_actors,
                 ", ".join(f"{s.label} x{s.max_concurrency}" for s in self.servers))
        self.engine = ActorEngine(self.servers, actor_settings(resolved.timeout, resolved.max_attempts,
                                                               max_json_retries))

    def __call__(self, batch: Any) -> pd.DataFrame:
        frame = pd.DataFrame(batch) if isinstance(batch, dict) else to_pandas(batch)  # "numpy" format
        return self.engine.run_frame(frame, self.job)
