"""Config files: ollama-batch-cluster's form read as is, the [[servers]] form, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.config import load_config, normalize_url, parse_config
from corral.errors import ConfigError
from tests.conftest import corral, write_jsonl

OLLAMA_BATCH_CLUSTER_CONFIG = '''model = "llama3.2"
system_message = """You are an alien that can only respond with strings of emoji characters."""

[ollama_instances]
#format: "hostname:port" = GPU index
"server1:11432" = 0
"server1:11433" = 1
"server2:11432" = 0
'''


def test_ollama_batch_cluster_config_is_read_as_is(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(OLLAMA_BATCH_CLUSTER_CONFIG)
    cfg = load_config(path)
    assert cfg.model == "llama3.2"
    assert cfg.system_message.startswith("You are an alien")
    assert [s.url for s in cfg.servers] == [
        "http://server1:11432", "http://server1:11433", "http://server2:11432"]
    assert [s.gpu for s in cfg.servers] == [0, 1, 0]
    assert all(s.api == "ollama" for s in cfg.servers)


def test_rich_servers_form() -> None:
    cfg = parse_config({
        "model": "llama3.2",
        "options": {"temperature": 0, "seed": 7},
        "servers": [
            {"url": "http://gpu1:11434", "api": "ollama", "models": ["llama3.2"], "max_concurrency": 4},
            {"url": "http://gpu2:8000/v1", "api": "openai", "api_key_env": "VLLM_KEY"},
        ],
    })
    first, second = cfg.servers
    assert (first.url, first.models, first.max_concurrency) == ("http://gpu1:11434", ("llama3.2",), 4)
    assert (second.url, second.api, second.api_key_env) == ("http://gpu2:8000", "openai", "VLLM_KEY")
    assert cfg.options == {"temperature": 0, "seed": 7}


@pytest.mark.parametrize("data, fragment", [
    ({"modle": "x"}, "unknown key(s) modle"),
    ({"servers": [{"url": "http://a:1", "max_concurency": 2}]}, "unknown key(s) max_concurency"),
    ({"servers": [{"url": "http://a:1", "api": "grpc"}]}, "unknown api"),
    ({"servers": [{"url": "ftp://a:1"}]}, "bad server URL"),
    ({"servers": [{"url": "http://a:port"}]}, "port is not a number"),
    ({"servers": [{"url": "http://a:1", "max_concurrency": 0}]}, "positive integer"),
    ({"servers": [{"api": "ollama"}]}, "missing url"),
    ({"ollama_instances": {"a:1": "zero"}}, "GPU index"),
    ({"servers": [{"url": "http://a:1"}, {"url": "a:1"}]}, "listed twice"),
])
def test_config_errors_are_clear(data: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "cluster.toml")
    assert fragment in str(info.value)
    assert "cluster.toml" in str(info.value)


def test_url_forms() -> None:
    assert normalize_url("127.0.0.1") == "http://127.0.0.1:11434"
    assert normalize_url("gpu1:11432") == "http://gpu1:11432"
    assert normalize_url("https://h.example/v1/", "openai") == "https://h.example"


def test_cli_unknown_config_key_exits_2_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text('model = "m"\nmax_concurency = 3\n')
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}])
    proc = corral("run", "p.jsonl", "--config", "c.toml", "-o", "out.jsonl", cwd=tmp_path)
    assert proc.returncode == 2
    assert "c.toml:2: unknown key(s) max_concurency" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_cli_invalid_toml(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text('model = "m\n')
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}])
    proc = corral("run", "p.jsonl", "--config", "c.toml", "-o", "out.jsonl", cwd=tmp_path)
    assert proc.returncode == 2
    assert "c.toml:1: invalid TOML" in proc.stderr
