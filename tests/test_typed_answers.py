"""Typed answers: json_keys with types becomes a typed schema sent to the server, typed columns out,
and a value of the wrong type re-asked, then failed with the reason."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import corral
from corral.errors import UsageError
from tests.conftest import corral as run_cli
from tests.fakes import FakeServer

#: How each row's text makes the fake answer: right at once, wrong once then right, always wrong.
ANSWERS = {
    "good": [{"label": "pos", "prob": 0.9, "n": 3, "sure": True}],
    "late": [{"label": "neg", "prob": "high", "n": 1, "sure": False},
             {"label": "neg", "prob": 0.2, "n": 1, "sure": False}],
    "bad": [{"label": "pos", "prob": "high", "n": 2, "sure": True}],
}


class Answers:
    """A responder answering each prompt from ANSWERS in turn (the last answer repeats)."""

    def __init__(self) -> None:
        self.asked: Counter[str] = Counter()

    def __call__(self, body: dict[str, Any]) -> str:
        text = body["messages"][-1]["content"]
        word = text.split()[-1]
        turn = self.asked[text]
        self.asked[text] += 1
        answers = ANSWERS.get(word, ANSWERS["good"])
        return json.dumps(answers[min(turn, len(answers) - 1)])


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, FakeServer]]:
    ollama = FakeServer(api="ollama").start()
    openai = FakeServer(api="openai").start()
    try:
        yield {"ollama": ollama, "openai": openai}
    finally:
        ollama.stop()
        openai.stop()


@pytest.fixture
def server(servers: dict[str, FakeServer]) -> FakeServer:
    servers["ollama"].reset_stats()
    servers["ollama"].responder = Answers()
    return servers["ollama"]


def frame() -> pd.DataFrame:
    return pd.DataFrame({"text": ["good", "late", "bad"]})


TYPED = {"label": str, "prob": float, "n": int, "sure": bool}


def test_a_dict_of_types_is_sent_as_a_typed_schema_and_gives_typed_columns(server: FakeServer) -> None:
    out = corral.run_analysis(frame(), json_keys=TYPED, prompt_template="{text}", servers=[server.url],
                              progress=False, workers=1, max_json_retries=1)
    body = server.requests[0][1]
    assert body["format"]["properties"] == {"label": {"type": "string"}, "prob": {"type": "number"},
                                            "n": {"type": "integer"}, "sure": {"type": "boolean"}}
    assert body["format"]["required"] == ["label", "prob", "n", "sure"]
    assert str(out["prob"].dtype) == "float64" and str(out["n"].dtype) == "Int64"
    assert str(out["sure"].dtype) == "boolean" and pd.api.types.is_string_dtype(out["label"])
    # wrong type first, then right: re-asked once and kept
    assert out.loc[1, "prob"] == 0.2 and pd.isna(out.loc[1, "error"])
    # always wrong: re-asked up to max_json_retries, then the row fails with the reason
    assert out.loc[2, "error"] == 'prob: expected number, got "high"'
    assert pd.isna(out.loc[2, "prob"]) and pd.isna(out.loc[2, "n"])
    assert json.loads(out.loc[2, "response"])["prob"] == "high"
    assert server.responder.asked == {"good": 1, "late": 2, "bad": 2}  # type: ignore[union-attr]


@pytest.mark.parametrize("spelling", ["label:str,prob:float,n:int,sure:bool",
                                      ["label:str", "prob:float", "n:int", "sure:bool"]])
def test_the_typed_string_spelling(server: FakeServer, spelling: Any) -> None:
    out = corral.run_analysis(frame().head(1), json_keys=spelling, prompt_template="{text}",
                              servers=[server.url], progress=False)
    assert server.requests[0][1]["format"]["properties"]["n"] == {"type": "integer"}
    assert out.loc[0, "n"] == 3 and str(out["n"].dtype) == "Int64"


def test_a_json_schema_as_json_keys(server: FakeServer) -> None:
    schema = {"type": "object", "properties": {"label": {"type": "string", "enum": ["pos", "neg"]},
                                               "prob": {"type": "number"}}, "required": ["label", "prob"]}
    out = corral.run_analysis(frame(), json_keys=schema, prompt_template="{text}", servers=[server.url],
                              progress=False, max_json_retries=0)
    assert server.requests[0][1]["format"] == schema
    assert out.loc[0, "label"] == "pos" and out["label"].isna().sum() == 2
    assert out.loc[1, "error"] == 'prob: expected number, got "high"'


def test_a_pydantic_model_as_json_keys(server: FakeServer) -> None:
    pydantic = pytest.importorskip("pydantic")

    class Label(pydantic.BaseModel):
        label: str
        prob: float

    out = corral.run_analysis(frame(), json_keys=Label, prompt_template="{text}", servers=[server.url],
                              progress=False, max_json_retries=1)
    assert server.requests[0][1]["format"]["properties"]["prob"]["type"] == "number"
    assert out.loc[1, "prob"] == 0.2 and str(out["prob"].dtype) == "float64"
    assert out.loc[2, "error"].startswith("prob: ") and out.loc[2, "error"].endswith('got "high"')


def test_openai_servers_get_a_json_schema_response_format(servers: dict[str, FakeServer]) -> None:
    server = servers["openai"]
    server.reset_stats()
    server.responder = Answers()
    out = corral.run_analysis(frame().head(2), json_keys={"prob": float}, prompt_template="{text}",
                              servers=[server.url], api="openai", progress=False, max_json_retries=1)
    fmt = server.requests[0][1]["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["schema"]["properties"] == {"prob": {"type": "number"}}
    assert list(out["prob"]) == [0.9, 0.2]


def test_fill_asks_typed_fields_nullable_and_types_the_columns(server: FakeServer) -> None:
    df = pd.DataFrame({"title_en": ["good", "bad"], "prob": [None, None]})
    out = corral.fill_missing_fields(df, "title_en", {"prob": float, "n": int}, servers=[server.url],
                                     progress=False, max_json_retries=0, column_prefix="x_")
    body = server.requests[0][1]
    assert body["format"]["properties"] == {"prob": {"type": ["number", "null"]},
                                            "n": {"type": ["integer", "null"]}}
    assert str(out["x_computed_n"].dtype) == "Int64" and out.loc[0, "x_computed_n"] == 3
    assert out.loc[1, "x_fill_error"] == 'prob: expected number or null, got "high"'


def test_cli_typed_keys_give_typed_parquet_columns(server: FakeServer, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    source = tmp_path / "in.csv"
    frame().to_csv(source, index=False)
    output = tmp_path / "out.parquet"
    result = run_cli("analyze", str(source), "-o", str(output), "--json-keys",
                     "label:str,prob:float,n:int,sure:bool", "-s", server.url, "--json-retries", "1",
                     "--progress", "none", "--prompt", "{text}")
    assert result.returncode == 1, result.stderr  # the always-wrong row failed
    schema = pq.read_schema(output)
    assert str(schema.field("prob").type) == "double" and str(schema.field("n").type) == "int64"
    assert str(schema.field("sure").type) == "bool"
    assert str(schema.field("label").type) in ("string", "large_string")
    table = pd.read_parquet(output)
    assert table.loc[2, "error"] == 'prob: expected number, got "high"'


@pytest.mark.parametrize("json_keys, fragment", [
    ({"prob": "decimal"}, "the type of 'prob' is 'decimal'"),
    ("prob:list", "the type of 'prob' is 'list'"),
    ({"2bad": int}, "'2bad' is not a valid name"),
])
def test_bad_typed_keys_are_refused_before_sending(server: FakeServer, json_keys: Any, fragment: str) -> None:
    with pytest.raises(UsageError) as caught:
        corral.run_analysis(frame(), json_keys=json_keys, prompt_template="{text}", servers=[server.url],
                            progress=False)
    assert fragment in str(caught.value)
    assert not server.requests


def test_fill_with_a_pydantic_model_keeps_its_definitions(servers: dict[str, FakeServer]) -> None:
    pydantic = pytest.importorskip("pydantic")
    import enum

    class Mood(enum.Enum):
        calm = "calm"
        angry = "angry"

    class Fields(pydantic.BaseModel):
        mood: Mood
        year: int

    server = servers["ollama"]
    server.reset_stats()
    server.responder = None  # the fake answers what the schema asks for
    df = pd.DataFrame({"title_en": ["a speech"], "year": [None]})
    out = corral.fill_missing_fields(df, "title_en", Fields, servers=[server.url], progress=False)
    schema = server.requests[0][1]["format"]
    assert "$defs" in schema and schema["properties"]["mood"]["$ref"].startswith("#/$defs/")
    assert out.loc[0, "computed_mood"] == "calm" and out.loc[0, "computed_year"] == 0
    assert str(out["computed_year"].dtype) == "Int64" and pd.isna(out.loc[0, "fill_error"])
