"""The calls researchers already know, exactly (OllamaManager's and Ollama-run-async's), typos that
never pass silently, and the embedded model from every Python front (issue 19, items 3-5).

Counted at the fake servers, never timed: what was sent, with which options, how many at once.
"""

from __future__ import annotations

import inspect
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest

import corral
from corral.config import ServerSpec
from corral.errors import UnknownNameError, UsageError
from tests.conftest import corral as corral_cli
from tests.conftest import one_line_error


def texts(n: int) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"row {i}" for i in range(n)], "title_en": [f"t{i}" for i in range(n)]})


def sent_options(server: Any) -> list[dict[str, Any]]:
    return [body.get("options", {}) for _, body in server.requests]


# -- item 3: OllamaManager's order and defaults --------------------------------------------------

def test_batch_generate_takes_ollama_managers_positional_order(fake_ollama_factory) -> None:
    server = fake_ollama_factory(models=("mistral",))
    results = corral.batch_generate(["a", "b"], "mistral", 5, 0.1, servers=[server.url])
    assert [r["response"] for r in results] == ["echo: a", "echo: b"]
    assert {body["model"] for _, body in server.requests} == {"mistral"}


@pytest.mark.parametrize("front", [corral.batch_generate, corral.batch_generate_async])
def test_batch_generate_signature_is_the_seeds_then_keyword_only(front: Any) -> None:
    params = list(inspect.signature(front).parameters.values())
    assert [(p.name, p.default) for p in params[:4]] == [
        ("prompts", inspect.Parameter.empty), ("model", "qwen3:8b"), ("max_concurrent", 5),
        ("rate_limit_delay", 0.1)]
    assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in params[4:])


@pytest.mark.parametrize("front", [corral.batch_benchmark, corral.batch_benchmark_async])
def test_batch_benchmark_signature_is_the_seeds(front: Any) -> None:
    params = list(inspect.signature(front).parameters.values())
    assert [(p.name, p.default) for p in params[:3]] == [
        ("models", inspect.Parameter.empty), ("prompt", "Hello, how are you?"), ("num_runs", 3)]
    assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in params[3:])


def test_default_model_gives_way_to_the_configs_but_a_given_one_wins(tmp_path: Path,
                                                                     fake_ollama_factory) -> None:
    server = fake_ollama_factory(models=("qwen3:8b", "llama3.2"))
    config = {"model": "llama3.2", "servers": [{"url": server.url}]}
    assert corral.batch_generate(["a"], config=config)[0]["model"] == "llama3.2"
    assert corral.batch_generate(["a"], "qwen3:8b", config=config)[0]["model"] == "qwen3:8b"
    assert corral.batch_generate(["a"], servers=[server.url])[0]["model"] == "qwen3:8b"


def test_ollama_clients_options_dict_and_keep_alive_are_taken(fake_ollama) -> None:
    corral.batch_generate(["a"], "llama3.2", options={"temperature": 0}, keep_alive="10m", seed=1,
                          servers=[fake_ollama.url])
    (_, body), = fake_ollama.requests
    assert body["options"] == {"temperature": 0, "seed": 1} and body["keep_alive"] == "10m"


def test_servers_in_the_old_second_place_is_a_clear_error(fake_ollama) -> None:
    with pytest.raises(UsageError, match="max_concurrent must be a positive integer.*servers= is a keyword"):
        corral.batch_generate(["a"], "llama3.2", [fake_ollama.url])
    assert fake_ollama.requests == []


@pytest.mark.parametrize("cap", [1, 2, 3])
def test_workers_is_the_most_calls_at_once_on_a_server(fake_ollama_factory, cap: int) -> None:
    """Learnt slots used to climb to twice ``workers``: 3 reached 6 in flight."""
    server = fake_ollama_factory(latency=0.03)
    out = corral.run_analysis(texts(40), workers=cap, model_names="llama3.2", servers=[server.url],
                              progress=False)
    assert out["error"].isna().all()
    assert server.max_in_flight == cap


def test_workers_caps_a_server_whose_config_allows_more(fake_ollama_factory) -> None:
    server = fake_ollama_factory(latency=0.03)
    corral.fill_missing_fields(texts(30), json_fields=("City",), workers=2, model_names="llama3.2",
                               servers=[ServerSpec(server.url, max_concurrency=8)], progress=False)
    assert server.max_in_flight == 2


def test_a_default_workers_gives_way_to_a_servers_own_slots(fake_ollama_factory) -> None:
    """Only a workers given on purpose overrides the config; left at 3, a server configured for
    4 gets its 4 (and Ollama-run-async's 3 still holds for a server without a config)."""
    configured, plain = fake_ollama_factory(latency=0.03), fake_ollama_factory(latency=0.03)
    config = {"servers": [{"url": configured.url, "max_concurrency": 4}]}
    corral.run_analysis(texts(40), model_names="llama3.2", config=config, progress=False)
    assert configured.max_in_flight > 3
    corral.run_analysis(texts(40), model_names="llama3.2", servers=[plain.url], progress=False)
    assert plain.max_in_flight == 3


def test_max_concurrent_is_the_most_requests_at_once(fake_ollama_factory) -> None:
    server = fake_ollama_factory(latency=0.03)
    results = corral.batch_generate([f"q{i}" for i in range(30)], "llama3.2", 2, 0, servers=[server.url])
    assert all(r["success"] for r in results)
    assert server.max_in_flight == 2


def test_max_concurrent_calls_caps_all_servers_together(fake_ollama_factory) -> None:
    """One fake under two names is two servers to corral, and counts the fleet's calls at once."""
    server = fake_ollama_factory(latency=0.03)
    corral.run_analysis(texts(30), workers=4, max_concurrent_calls=2, model_names="llama3.2",
                        servers=[server.url, server.url.replace("127.0.0.1", "localhost")], progress=False)
    assert server.max_in_flight == 2 and server.completed == 30


def test_fill_cli_takes_ollama_run_asyncs_spellings(tmp_path: Path, fake_ollama_factory) -> None:
    server = fake_ollama_factory(models=("a", "b"))
    pd.DataFrame({"title": ["Opening of the bridge", "Harvest fair"], "place": ["Bern", None]}).to_csv(
        tmp_path / "events.csv", index=False)
    proc = corral_cli("fill", "events.csv", "--output_csv", "out.csv", "--models", "a,b", "--fanout",
                      "--json_fields", "Occasion,City", "--title_col", "title", "--col_map", "City=place",
                      "--chunk_size", "1", "--batch_size", "4", "--max_concurrent_calls", "2",
                      "-s", server.url, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = pd.read_csv(tmp_path / "out.csv")
    assert {"computed_Occasion_a", "computed_City_b", "fill_error_a"} <= set(out.columns)
    assert len(server.requests) == 4  # two rows, two models


def test_analyze_cli_takes_underscore_spellings(tmp_path: Path, fake_ollama) -> None:
    texts(3).to_csv(tmp_path / "in.csv", index=False)
    proc = corral_cli("analyze", "in.csv", "--output_csv", "out.csv", "--text_column", "text",
                      "--json_keys", "label", "--chunk_size", "2", "-s", fake_ollama.url, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "label" in pd.read_csv(tmp_path / "out.csv").columns


# -- item 4: typos never pass silently -----------------------------------------------------------

FRONTS: list[tuple[str, Any, dict[str, Any], str, str]] = [
    # (name, call, good kwargs, typo, suggestion)
    ("run_analysis", lambda url, **kw: corral.run_analysis(texts(2), servers=[url], progress=False, **kw),
     {}, "temprature", "temperature"),
    ("run_analysis", lambda url, **kw: corral.run_analysis(texts(2), servers=[url], progress=False, **kw),
     {}, "max_concurrent", "max_concurrent_calls"),
    ("fill_missing_fields", lambda url, **kw: corral.fill_missing_fields(texts(2), servers=[url], **kw),
     {}, "title_column", "title_col"),
    ("batch_generate", lambda url, **kw: corral.batch_generate(["a"], "llama3.2", servers=[url], **kw),
     {}, "num_predcit", "num_predict"),
    ("embed", lambda url, **kw: corral.embed(["a"], "llama3.2", servers=[url], **kw),
     {}, "dimension", "dimensions"),
    ("batch_benchmark", lambda url, **kw: corral.batch_benchmark(["llama3.2"], servers=[url], **kw),
     {}, "num_run", "num_runs"),
]


@pytest.mark.parametrize(("front", "call", "good", "typo", "meant"), FRONTS,
                         ids=[f"{f[0]}-{f[3]}" for f in FRONTS])
def test_a_misspelt_keyword_is_an_error_with_a_did_you_mean(fake_ollama, front: str, call: Any,
                                                             good: dict[str, Any], typo: str, meant: str) -> None:
    with pytest.raises(UnknownNameError) as caught:
        call(fake_ollama.url, **good, **{typo: 0})
    assert str(caught.value).startswith(f"{front}() got an unknown keyword argument {typo!r}; "
                                        f"did you mean {meant!r}?")
    assert isinstance(caught.value, TypeError)  # as Python's own for a bad keyword
    assert fake_ollama.requests == []  # nothing was sent


def test_file_fronts_name_themselves(tmp_path: Path, fake_ollama) -> None:
    texts(2).to_csv(tmp_path / "in.csv", index=False)
    with pytest.raises(UnknownNameError, match=r"^analyze_file\(\) .* 'text_colum'; did you mean 'text_column'"):
        corral.analyze_file(tmp_path / "in.csv", tmp_path / "out.csv", text_colum="text", servers=[fake_ollama.url])
    with pytest.raises(UnknownNameError, match=r"^fill_missing_fields_from_csv\(\) .* did you mean 'title_col'"):
        corral.fill_missing_fields_from_csv(str(tmp_path / "in.csv"), str(tmp_path / "o.csv"), title_column="x")
    assert not (tmp_path / "out.csv").exists() and fake_ollama.requests == []


def test_an_unknown_option_in_options_is_refused_too(fake_ollama) -> None:
    with pytest.raises(UnknownNameError, match="unknown model option 'temprature'; did you mean 'temperature'"):
        corral.embed(["a"], "llama3.2", servers=[fake_ollama.url], options={"temprature": 0})
    with pytest.raises(UnknownNameError, match="a prompt's options: unknown model option 'sed'"):
        corral.batch_generate([{"prompt": "a", "options": {"sed": 1}}], "llama3.2", servers=[fake_ollama.url])
    assert fake_ollama.requests == []


def test_extra_options_are_sent_and_recorded_on_purpose(tmp_path: Path, fake_ollama) -> None:
    manifest = tmp_path / "m.json"
    corral.run_analysis(texts(2), model_names="llama3.2", servers=[fake_ollama.url], progress=False,
                        temperature=0, extra_options={"dry_multiplier": 0.8}, manifest=manifest)
    assert sent_options(fake_ollama) == [{"temperature": 0, "dry_multiplier": 0.8}] * 2
    assert orjson.loads(manifest.read_bytes())["job"]["options"] == {"temperature": 0, "dry_multiplier": 0.8}


def write_events(tmp_path: Path) -> None:
    texts(2).to_csv(tmp_path / "in.csv", index=False)


@pytest.mark.parametrize(("toml", "expected"), [
    ('model = "llama3.2"\noptions = { temprature = 0 }\n',
     "c.toml:2: options: unknown model option 'temprature'; did you mean 'temperature'?"),
    ('model = "llama3.2"\ntmeout = 5\n', "c.toml:2: unknown key(s) tmeout; did you mean 'timeout'?"),
])
def test_config_typos_are_one_line_naming_the_file(tmp_path: Path, fake_ollama, toml: str,
                                                    expected: str) -> None:
    write_events(tmp_path)
    (tmp_path / "c.toml").write_text(toml + f'[[servers]]\nurl = "{fake_ollama.url}"\n')
    proc = corral_cli("analyze", "in.csv", "-o", "out.csv", "--config", "c.toml", cwd=tmp_path)
    assert proc.returncode == 2
    assert expected in one_line_error(proc.stderr)
    assert fake_ollama.requests == []


def test_config_extra_options_and_the_cli_flag_are_sent(tmp_path: Path, fake_ollama) -> None:
    write_events(tmp_path)
    (tmp_path / "c.toml").write_text('options = { seed = 1 }\nextra_options = { dry_multiplier = 0.8 }\n'
                                     f'[[servers]]\nurl = "{fake_ollama.url}"\n')
    proc = corral_cli("analyze", "in.csv", "-o", "out.csv", "--config", "c.toml", "-m", "llama3.2",
                      "--extra-option", "dry_base=1.75", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sent_options(fake_ollama) == [{"seed": 1, "dry_multiplier": 0.8, "dry_base": 1.75}] * 2


@pytest.mark.parametrize(("args", "expected"), [
    (["--temprature", "0"], "--temperature"),
    (["-O", "temprature=0"], "unknown model option 'temprature'; did you mean 'temperature'?"),
])
def test_cli_typos_are_refused_with_a_suggestion(tmp_path: Path, fake_ollama, args: list[str],
                                                 expected: str) -> None:
    write_events(tmp_path)
    proc = corral_cli("analyze", "in.csv", "-o", "out.csv", "-s", fake_ollama.url, *args, cwd=tmp_path)
    assert proc.returncode == 2
    assert expected in proc.stderr
    assert fake_ollama.requests == []


# -- item 5: the embedded model from every Python front -------------------------------------------

@pytest.fixture
def embedded(monkeypatch: pytest.MonkeyPatch, fake_ollama_factory) -> Any:
    """The embedded server stood in for by a fake llama.cpp (the real one is tested in test_local):
    what the fronts must do is start it, ask its model and stop it with the job."""
    server = fake_ollama_factory(api="openai", models=("smollm2",), llamacpp=True)
    started: list[int] = []

    def start_local(n_parallel: int, stack: ExitStack, *, embedding: bool = False) -> ServerSpec:
        started.append(n_parallel)
        return ServerSpec(url=server.url, api="openai", models=("smollm2",), name="local")

    monkeypatch.setattr("corral.settings.start_local", start_local)
    server.started = started
    return server


LOCAL_CALLS: list[tuple[str, Any]] = [
    ("run_analysis", lambda **kw: corral.run_analysis(texts(2), model_names="ignored", progress=False, **kw)),
    ("fill_missing_fields", lambda **kw: corral.fill_missing_fields(texts(2), json_fields=("City",),
                                                                    progress=False, **kw)),
    ("batch_generate", lambda **kw: corral.batch_generate(["a", "b"], **kw)),
    ("embed", lambda **kw: corral.embed(["a", "b"], **kw)),
    ("batch_benchmark", lambda **kw: corral.batch_benchmark(["ignored"], num_runs=2, **kw)),
]


@pytest.mark.parametrize("spelling", [{"local": True}, {"servers": "local"}, {"servers": ["local"]}],
                         ids=["local=True", "servers=local", "servers=[local]"])
@pytest.mark.parametrize(("front", "call"), LOCAL_CALLS, ids=[c[0] for c in LOCAL_CALLS])
def test_every_front_runs_on_the_embedded_model(embedded: Any, front: str, call: Any,
                                                spelling: dict[str, Any]) -> None:
    call(**spelling)
    assert len(embedded.started) == 1
    assert len(embedded.requests) == (1 if front == "embed" else 2)  # embed: one batch of two
    assert {body["model"] for _, body in embedded.requests} == {"smollm2"}


def test_analyze_file_runs_on_the_embedded_model(tmp_path: Path, embedded: Any) -> None:
    texts(2).to_csv(tmp_path / "in.csv", index=False)
    report = corral.analyze_file(tmp_path / "in.csv", tmp_path / "out.csv", servers="local", progress=False)
    assert report.written == 2 and len(embedded.requests) == 2
    manifest = orjson.loads(Path(report.manifest).read_bytes())
    assert manifest["job"]["local"] is True


def test_a_server_table_typo_gets_a_did_you_mean(fake_ollama) -> None:
    config = {"servers": [{"url": fake_ollama.url, "max_concurency": 4}]}
    with pytest.raises(UsageError, match=r"servers\[1\]: unknown key\(s\) max_concurency; "
                                         r"did you mean 'max_concurrency'\? allowed: "):
        corral.run_analysis(texts(2), config=config, progress=False)
    assert fake_ollama.requests == []
