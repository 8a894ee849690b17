"""corral.settings.resolve: one precedence for every front (flag or keyword, config, environment)."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral import ServerSpec
from corral.errors import UsageError
from corral.settings import resolve

CONFIG = """
model = "from-config"
system_message = "config system"
timeout = 42
max_attempts = 7
hedge = false
[options]
temperature = 0.5
seed = 3
[[servers]]
url = "http://127.0.0.1:9001"
[[servers]]
url = "http://127.0.0.1:9002"
max_concurrency = 2
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


def test_config_fills_what_was_not_said(config: Path) -> None:
    job = resolve(config=str(config))
    assert [s.url for s in job.servers] == ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
    assert (job.model, job.system, job.timeout, job.max_attempts, job.hedge) == (
        "from-config", "config system", 42, 7, False)
    assert job.options == {"temperature": 0.5, "seed": 3}


def test_explicit_wins_and_options_merge_key_by_key(config: Path) -> None:
    job = resolve(config=config, servers=["127.0.0.1:9100"], model="m", system="s",
                  options={"temperature": 0}, timeout=5, max_attempts=2, hedge=True)
    assert [s.url for s in job.servers] == ["http://127.0.0.1:9100"]
    assert (job.model, job.system, job.timeout, job.max_attempts, job.hedge) == ("m", "s", 5, 2, True)
    assert job.options == {"temperature": 0, "seed": 3}


def test_config_as_dict_or_parsed_is_the_same(config: Path) -> None:
    import tomllib

    from corral.config import load_config

    by_path = resolve(config=config)
    by_dict = resolve(config=tomllib.loads(CONFIG))
    by_config = resolve(config=load_config(config))
    assert by_path.servers == by_dict.servers == by_config.servers
    assert by_path.options == by_dict.options == by_config.options


def test_environment_is_the_last_resort(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:9555")
    job = resolve()
    assert [s.url for s in job.servers] == ["http://127.0.0.1:9555"]
    assert job.hedge is True and job.max_attempts == 5 and job.timeout is None
    with pytest.raises(UsageError, match="no servers"):
        resolve(require_servers=True)


def test_workers_fill_only_servers_without_their_own_slots(config: Path) -> None:
    job = resolve(config=config, workers=3)
    assert [s.max_concurrency for s in job.servers] == [3, 2]
    with pytest.raises(UsageError, match="workers"):
        resolve(config=config, workers=0)


def test_engine_settings_carry_the_job_defaults(config: Path) -> None:
    settings = resolve(config=config, servers=[ServerSpec(url="http://127.0.0.1:1")]).engine_settings(
        concurrency=4)
    assert (settings.timeout, settings.hedge, settings.retry.max_attempts, settings.concurrency) == (
        42, False, 7, 4)


def test_unknown_api_is_one_clear_error() -> None:
    with pytest.raises(UsageError, match="api must be one of"):
        resolve(servers=["127.0.0.1:1"], api="grpc")
