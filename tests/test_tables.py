"""run_analysis, fill_missing_fields and the analyze / fill commands, on fake servers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

import corral
from corral import ServerSpec
from corral.backends.ollama import JSON_NUM_PREDICT
from corral.errors import UsageError
from tests.conftest import corral as corral_cli

LABELS = {"llama3.2": "pos", "mistral": "neg"}


def _label_responder(body: dict) -> str:
    """Model-dependent JSON: llama3.2 says pos, mistral says neg; prob is the text length."""
    text = body["messages"][-1]["content"]
    model = body["model"].split(":")[0]
    return json.dumps({"label": LABELS.get(model, "pos"), "prob": len(text) / 100})


@pytest.fixture
def two_model_server(fake_ollama_factory):
    return fake_ollama_factory(models=("llama3.2", "mistral"), slots=4, responder=_label_responder)


@pytest.fixture
def speeches() -> pd.DataFrame:
    return pd.DataFrame({
        "id": [10, 11, 12, 13, 14],
        "title": ["A", "B", "C", "D", "E"],
        "speech": ["We will rise.", "Taxes, again, \"too high\".", "", "Ünïcode ✓ speech\nwith lines",
                   "Short"],
    }, index=[100, 101, 102, 103, 104])


TEMPLATE = 'Return JSON {"label": string, "prob": float} for: {title}: {text}'


def test_fanout_columns_match_ollama_run_async(two_model_server, speeches) -> None:
    out = corral.run_analysis(speeches, text_column="speech", model_names=["llama3.2", "mistral"],
                              prompt_template=TEMPLATE, json_keys=("label", "prob"), fanout=True,
                              servers=[two_model_server.url], progress=False)
    assert list(out.index) == list(speeches.index)
    assert list(out.columns) == ["id", "title", "speech",
                                 "response_llama3.2", "label_llama3.2", "prob_llama3.2", "error_llama3.2",
                                 "response_mistral", "label_mistral", "prob_mistral", "error_mistral"]
    sent = out.drop(index=102)
    assert list(sent["label_llama3.2"]) == ["pos"] * 4 and list(sent["label_mistral"]) == ["neg"] * 4
    assert out.loc[102, "error_llama3.2"] == "not sent: empty text"
    assert pd.isna(out.loc[102, "label_mistral"])
    prompts = two_model_server.count_by_prompt()
    assert prompts['Return JSON {"label": string, "prob": float} for: A: We will rise.'] == 2
    assert sum(prompts.values()) == 8  # 4 non-empty rows x 2 models; the empty row is not sent


def test_json_keys_become_a_schema_sent_as_format(two_model_server, speeches) -> None:
    corral.run_analysis(speeches.head(1), text_column="speech", model_names="llama3.2",
                        prompt_template="{text}", json_keys=("label", "prob"),
                        servers=[two_model_server.url], progress=False, temperature=0, seed=3)
    (_, body), = two_model_server.requests
    assert body["format"] == {"type": "object", "properties": {"label": {}, "prob": {}},
                              "required": ["label", "prob"]}
    # JSON asks to Ollama get a token limit unless they have one (a runaway answer stays bounded)
    assert body["options"] == {"temperature": 0, "seed": 3, "num_predict": JSON_NUM_PREDICT}


def test_split_pulls_from_one_queue_slow_model_does_less(fake_ollama_factory) -> None:
    slow_model = "mistral"
    server = fake_ollama_factory(
        models=("llama3.2", slow_model), slots=8, responder=_label_responder,
        latency=lambda body: 0.08 if body["model"].startswith(slow_model) else 0.005)
    df = pd.DataFrame({"text": [f"row {i}" for i in range(120)]})
    out = corral.run_analysis(df, model_names=["llama3.2", slow_model], workers=2,
                              json_keys=("label", "prob"), prompt_template="{text}",
                              servers=[server.url], progress=False)
    counts = out["model"].value_counts()
    assert counts.sum() == 120 and out["error"].isna().all()
    assert counts["llama3.2"] > 4 * counts[slow_model], counts
    assert (out.loc[out["model"] == "llama3.2", "label"] == "pos").all()
    assert (out.loc[out["model"] == slow_model, "label"] == "neg").all()


def test_bad_json_is_reasked_then_kept_with_a_reason(fake_ollama_factory) -> None:
    answers = iter(["Sure! here you go", '```json\n{"label": "pos", "prob": 0.9}\n```'])
    server = fake_ollama_factory(responder=lambda body: next(answers, "never JSON"))
    df = pd.DataFrame({"text": ["first", "second"]})
    out = corral.run_analysis(df, json_keys=("label", "prob"), prompt_template="{text}",
                              servers=[server.url], progress=False, workers=1, max_json_retries=2)
    assert out.loc[0, "label"] == "pos" and out.loc[0, "prob"] == 0.9 and pd.isna(out.loc[0, "error"])
    seeds = [body.get("options", {}).get("seed") for _, body in server.requests]
    assert seeds[0] is None and seeds[1] is not None  # the re-ask changed the seed
    assert pd.isna(out.loc[1, "label"])
    assert "not JSON" in out.loc[1, "error"] and out.loc[1, "response"] == "never JSON"


def test_json_schema_from_pydantic_types_are_checked(fake_ollama_factory) -> None:
    pydantic = pytest.importorskip("pydantic")

    class Label(pydantic.BaseModel):
        label: str
        prob: float

    server = fake_ollama_factory(responder=lambda body: '{"label": "pos", "prob": "very"}')
    out = corral.run_analysis(pd.DataFrame({"text": ["x"]}), json_schema=Label, prompt_template="{text}",
                              servers=[server.url], progress=False, max_json_retries=0)
    assert out.loc[0, "error"].startswith("prob: ") and out.loc[0, "error"].endswith('got "very"')
    (_, body), = server.requests
    assert body["format"]["properties"]["prob"]["type"] == "number"


def test_polars_in_polars_out(two_model_server) -> None:
    pl = pytest.importorskip("polars")
    df = pl.DataFrame({"text": ["a", "b"]})
    out = corral.run_analysis(df, json_keys=("label",), prompt_template="{text}",
                              servers=[two_model_server.url], progress=False)
    assert isinstance(out, pl.DataFrame) and out["label"].to_list() == ["pos", "pos"]


@pytest.mark.parametrize("kwargs, fragment", [
    ({"text_column": "nope"}, "text column 'nope' is not in the table"),
    ({"prompt_template": "{text} {author}"}, "{author}, which is not a column"),
    ({"json_keys": ("label", "2bad")}, "'2bad' is not a valid name"),
    ({"prompt_template": "no field"}, "uses no column"),
])
def test_bad_arguments_are_clear_and_send_nothing(two_model_server, kwargs, fragment) -> None:
    with pytest.raises(UsageError) as info:
        corral.run_analysis(pd.DataFrame({"text": ["a"]}), servers=[two_model_server.url], progress=False,
                            **{"prompt_template": "{text}", **kwargs})
    assert fragment in str(info.value)
    assert two_model_server.requests == []


# -- fill missing fields --------------------------------------------------------------------------
def _fill_responder(body: dict) -> str:
    """Answers exactly the keys asked for, with recognisable values."""
    asked = re.search(r"fields from the text: ([^.]+)\.", body["messages"][-1]["content"]).group(1)
    return json.dumps({key: f"{key.lower()}-{body['model'].split(':')[0]}" for key in asked.split(", ")})


EVENTS = pd.DataFrame({
    "title_en": ["Opening of the bridge", "Visit to Paris", "Gala, \"annual\"", "All known", ""],
    "occ": ["opening", None, None, "visit", None],
    "place": [None, "Paris", None, "Rome", None],
})


def test_fill_asks_only_for_missing_fields_and_never_overwrites(fake_ollama_factory) -> None:
    server = fake_ollama_factory(responder=_fill_responder)
    out = corral.fill_missing_fields(EVENTS, title_col="title_en", json_fields=("Occasion", "City"),
                                     col_map={"Occasion": "occ", "City": "place"},
                                     servers=[server.url], progress=False)
    asked = [re.search(r"text: ([^.]+)\.", body["messages"][-1]["content"]).group(1)
             for _, body in server.requests]
    assert sorted(asked) == ["City", "Occasion", "Occasion, City"]  # rows 0, 1, 2; row 3 full; row 4 empty
    assert list(out["occ"]) == ["opening", "occasion-llama3.2", "occasion-llama3.2", "visit", None]
    assert list(out["place"]) == ["city-llama3.2", "Paris", "city-llama3.2", "Rome", None]
    assert out.loc[4, "fill_error"] == "not sent: empty text"
    assert pd.isna(out.loc[3, "fill_error"])


def test_fill_without_col_map_writes_computed_columns_and_fanout_suffixes(fake_ollama_factory) -> None:
    server = fake_ollama_factory(models=("llama3.2", "mistral"), responder=_fill_responder)
    df = pd.DataFrame({"title_en": ["t1", "t2"], "City": ["Oslo", None]})
    out = corral.fill_missing_fields(df, json_fields=("Occasion", "City"),
                                     model_names=["llama3.2", "mistral"], fanout=True,
                                     servers=[server.url], progress=False)
    assert out.loc[0, "City"] == "Oslo" and pd.isna(out.loc[1, "City"])  # the source is untouched
    assert pd.isna(out.loc[0, "computed_City_mistral"]) and out.loc[1, "computed_City_mistral"] == "city-mistral"
    assert list(out["computed_Occasion_llama3.2"]) == ["occasion-llama3.2", "occasion-llama3.2"]
    assert len(server.requests) == 4


def test_fill_csv_streamed_in_chunks_and_resumable(tmp_path: Path, fake_ollama_factory) -> None:
    server = fake_ollama_factory(responder=_fill_responder, slots=4)
    src = tmp_path / "events.csv"
    EVENTS.to_csv(src, index=False)
    out_csv = tmp_path / "events_filled.csv"
    corral.fill_missing_fields_from_csv(str(src), str(out_csv), chunk_size=2, title_col="title_en",
                                        json_fields=("Occasion", "City"),
                                        col_map={"Occasion": "occ", "City": "place"},
                                        servers=[server.url], progress="none")
    result = pd.read_csv(out_csv)
    assert list(result["title_en"].fillna("")) == list(EVENTS["title_en"])
    assert result.loc[1, "occ"] == "occasion-llama3.2" and result.loc[1, "place"] == "Paris"
    assert len(server.requests) == 3
    server.reset_stats()
    corral.fill_missing_fields_from_csv(str(src), str(out_csv), chunk_size=2, title_col="title_en",
                                        json_fields=("Occasion", "City"),
                                        col_map={"Occasion": "occ", "City": "place"},
                                        servers=[server.url], progress="none")
    assert server.requests == []  # resumed entirely from the journal beside the output
    assert pd.read_csv(out_csv).equals(result)


def test_cli_analyze_fanout_parquet_and_agreement(tmp_path: Path, two_model_server) -> None:
    df = pd.DataFrame({"speech": [f"speech number {i}, with a comma" for i in range(6)]})
    df.to_csv(tmp_path / "speeches.csv", index=False)
    (tmp_path / "prompt.txt").write_text(TEMPLATE.replace("{title}: ", ""))
    proc = corral_cli("analyze", "speeches.csv", "--text-column", "speech", "--prompt", "@prompt.txt",
                      "--json-keys", "label,prob", "--models", "llama3.2,mistral", "--fanout",
                      "--server", two_model_server.url, "-o", "labelled.parquet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = pd.read_parquet(tmp_path / "labelled.parquet")
    assert list(out["label_llama3.2"]) == ["pos"] * 6 and list(out["label_mistral"]) == ["neg"] * 6
    assert list(out["speech"]) == list(df["speech"])
    assert "6 rows written" in proc.stderr
    assert "label" in proc.stderr and "llama3.2" in proc.stderr  # the agreement table
    agree = corral_cli("agree", "labelled.parquet", "--key", "label", cwd=tmp_path)
    assert agree.returncode == 0, agree.stderr


def test_cli_fill_with_col_map(tmp_path: Path, fake_ollama_factory) -> None:
    server = fake_ollama_factory(responder=_fill_responder)
    EVENTS.to_csv(tmp_path / "events.csv", index=False)
    proc = corral_cli("fill", "events.csv", "-o", "events_filled.csv", "--fields", "Occasion,City",
                      "--col-map", "Occasion=occ,City=place", "--server", server.url, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = pd.read_csv(tmp_path / "events_filled.csv")
    assert out.loc[2, "occ"] == "occasion-llama3.2" and out.loc[0, "occ"] == "opening"
    assert len(server.requests) == 3


@pytest.mark.parametrize("args, fragment", [
    (["analyze", "t.csv", "--text-column", "nope", "-o", "o.csv"], "t.csv:1: no column 'nope' (columns: text)"),
    (["analyze", "t.csv", "--prompt", "{text} {who}", "-o", "o.csv"], "{who}, which is not a column"),
    (["analyze", "t.csv", "--json-keys", "a b", "-o", "o.csv"], "not a valid name"),
    (["analyze", "bad.csv", "-o", "o.csv"], "bad.csv"),
    (["analyze", "fake.parquet", "-o", "o.csv"], "fake.parquet"),
    (["fill", "t.csv", "-o", "o.csv", "--fields", "City", "--title-col", "zzz"], "t.csv:1: no column 'zzz'"),
])
def test_cli_table_errors_exit_2(tmp_path: Path, fake_ollama, args, fragment) -> None:
    pd.DataFrame({"text": ["a", "b"]}).to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "bad.csv").write_text('a,b\n1,2\n"3,4\n5,6,7\n')
    (tmp_path / "fake.parquet").write_text("not parquet")
    proc = corral_cli(*args, "--server", fake_ollama.url, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert fragment in proc.stderr and "Traceback" not in proc.stderr
    assert fake_ollama.requests == []
    assert not list(tmp_path.glob("*.part"))  # no stray half-written output


def test_csv_output_neutralises_formulas(tmp_path: Path, fake_ollama_factory) -> None:
    server = fake_ollama_factory(responder=lambda body: "=HYPERLINK(\"http://x\")")
    pd.DataFrame({"text": ["a"]}).to_csv(tmp_path / "t.csv", index=False)
    for extra, expected in (([], "'=HYPERLINK"), (["--keep-formulas"], "=HYPERLINK")):
        proc = corral_cli("analyze", "t.csv", "-o", "o.csv", "--server", server.url, *extra,
                          "--store", f"s{len(extra)}.db", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert pd.read_csv(tmp_path / "o.csv").loc[0, "response"].startswith(expected)


def test_split_mode_resume_keeps_who_answered(tmp_path: Path, two_model_server) -> None:
    df = pd.DataFrame({"text": [f"t{i}" for i in range(20)]})
    kwargs = dict(model_names=["llama3.2", "mistral"], json_keys=("label",), prompt_template="{text}",
                  servers=[ServerSpec(two_model_server.url, max_concurrency=2)], progress=False,
                  store=tmp_path / "j.db")
    first = corral.run_analysis(df, **kwargs)
    two_model_server.reset_stats()
    second = corral.run_analysis(df, **kwargs)
    assert two_model_server.requests == []
    assert list(second["model"]) == list(first["model"])
    assert list(second["label"]) == list(first["label"])


def test_analyze_file_python_front_equals_the_cli(tmp_path: Path, two_model_server) -> None:
    """`corral.analyze_file` is `corral analyze` from Python: same table, same columns, same manifest
    kind; a second call resumes from the journal beside the output and sends nothing."""
    df = pd.DataFrame({"speech": [f"speech number {i}" for i in range(7)] + [""]})
    df.to_csv(tmp_path / "speeches.csv", index=False)
    common = dict(text_column="speech", json_keys=["label", "prob"], fanout=True,
                  model_names=["llama3.2", "mistral"], servers=two_model_server.url, progress="none")
    report = corral.analyze_file(tmp_path / "speeches.csv", tmp_path / "py.parquet", **common)
    proc = corral_cli("analyze", "speeches.csv", "--text-column", "speech", "--json-keys", "label,prob",
                      "--models", "llama3.2,mistral", "--fanout", "--server", two_model_server.url,
                      "-o", "cli.parquet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    from_python = pd.read_parquet(tmp_path / "py.parquet")
    from_cli = pd.read_parquet(tmp_path / "cli.parquet")
    pd.testing.assert_frame_equal(from_python, from_cli)
    assert report.written == 8 and report.skipped_count == 1
    assert report.stats.ok == 14 and report.agreement is not None
    manifest = json.loads((tmp_path / "py.parquet.manifest.json").read_text())
    assert manifest["kind"] == "analyze" and manifest["status"] == "complete"
    sent = len(two_model_server.requests)
    again = corral.analyze_file(tmp_path / "speeches.csv", tmp_path / "py.parquet", **common)
    assert len(two_model_server.requests) == sent and again.stats.cached == 14
