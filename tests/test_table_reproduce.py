"""`corral analyze|fill --reproduce`, the report's producing run and raw answers, and `--encoding`."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import corral as corral_api
from corral.report.data import load
from tests.conftest import corral
from tests.fakes import FakeServer

TEXTS = ["Le café est fermé.", "Budget day", "broken answer please"]


def answer(body: dict[str, Any]) -> str:
    """Typed JSON for every text, except the one asking for a broken answer."""
    text = body["messages"][-1]["content"]
    if "broken" in text:
        return "Sorry, I cannot label that."
    return json.dumps({"label": "pos", "year": 2024, "City": "Paris"})


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    fake = FakeServer(api="ollama", models=("llama3.2", "mistral"), responder=answer).start()
    try:
        yield fake
    finally:
        fake.stop()


def manifest(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def test_analyze_reproduce_sends_again_compares_and_echoes_the_command_quoted(tmp_path: Path,
                                                                              server: FakeServer) -> None:
    pd.DataFrame({"text": TEXTS[:2]}).to_csv(tmp_path / "in.csv", index=False)
    first = corral("analyze", "in.csv", "-o", "out.csv", "--prompt", "Label this: {text}", "--json-keys",
                   "label:str,year:int", "-m", "llama3.2,mistral", "--fanout", "-s", server.url,
                   "--temperature", "0", "--progress", "none", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    server.reset_stats()

    again = corral("analyze", "--reproduce", "out.csv.manifest.json", "--progress", "none", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert server.completed == 4  # 2 rows x 2 models, really sent again into a fresh output and store
    (_, body), *_ = server.requests
    assert body["format"]["properties"] == {"label": {"type": "string"}, "year": {"type": "integer"}}
    assert body["options"]["temperature"] == 0 and body["messages"][-1]["content"].startswith("Label this: ")
    echoed = shlex.join(["corral", "analyze", "in.csv", "-o", "out.csv", "--prompt", "Label this: {text}"])
    assert f"corral: reproducing: {echoed}" in again.stderr
    assert "reproduce: 4 of 4 responses identical to the original run" in again.stderr
    redo = manifest(tmp_path / "out.reproduced.csv.manifest.json")
    assert redo["reproduction"]["identical"] == 4 and redo["job"]["reproduces"] == "out.csv.manifest.json"
    assert pd.read_csv(tmp_path / "out.reproduced.csv").equals(pd.read_csv(tmp_path / "out.csv"))
    twice = corral("analyze", "--reproduce", "out.csv.manifest.json", "--progress", "none", cwd=tmp_path)
    assert "out.reproduced.csv.corral.db exists (an earlier re-run?)" in twice.stderr


@pytest.mark.parametrize("extra, fragment", [
    (("-m", "other"), "--reproduce takes the job from the manifest; drop --models"),
    (("in.csv",), "drop INPUT"),
    (("--json-keys", "label"), "drop --json-keys"),
])
def test_reproduce_refuses_flags_that_change_the_job(tmp_path: Path, server: FakeServer,
                                                    extra: tuple[str, ...], fragment: str) -> None:
    pd.DataFrame({"text": TEXTS[:1]}).to_csv(tmp_path / "in.csv", index=False)
    assert corral("analyze", "in.csv", "-o", "out.csv", "-s", server.url, "--progress", "none",
                  cwd=tmp_path).returncode == 0
    refused = corral("analyze", "--reproduce", "out.csv.manifest.json", *extra, cwd=tmp_path)
    assert refused.returncode == 2 and fragment in refused.stderr, refused.stderr
    wrong = corral("fill", "--reproduce", "out.csv.manifest.json", cwd=tmp_path)
    assert wrong.returncode == 2
    assert "reproduce it with `corral analyze --reproduce out.csv.manifest.json`" in wrong.stderr


def test_fill_reproduce_keeps_typed_fields_and_the_column_map(tmp_path: Path, server: FakeServer) -> None:
    pd.DataFrame({"title_en": TEXTS[:2], "town": ["", "Rome"]}).to_csv(tmp_path / "events.csv", index=False)
    first = corral("fill", "events.csv", "-o", "filled.csv", "--fields", "City,year:int", "--col-map",
                   "City=town", "-s", server.url, "--progress", "none", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    server.reset_stats()
    again = corral("fill", "--reproduce", "filled.csv.manifest.json", "-o", "again.csv", "--progress", "none",
                   "--timeout", "30", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert server.completed == 2
    formats = [body["format"]["properties"] for _, body in server.requests]
    assert {"City": {"type": ["string", "null"]}, "year": {"type": ["integer", "null"]}} in formats
    assert "reproduce: 2 of 2 responses identical to the original run" in again.stderr
    assert manifest(tmp_path / "again.csv.manifest.json")["engine"]["timeout"] == 30  # how to run may change
    filled = pd.read_csv(tmp_path / "again.csv")
    assert list(filled["town"]) == ["Paris", "Rome"] and list(filled["computed_year"]) == [2024, 2024]


def test_report_shows_the_run_that_produced_the_data_and_raw_failed_answers(tmp_path: Path,
                                                                            server: FakeServer) -> None:
    pd.DataFrame({"text": TEXTS}).to_csv(tmp_path / "in.csv", index=False)
    args = ("analyze", "in.csv", "-o", "out.csv", "--json-keys", "label", "-s", server.url,
            "--json-retries", "0", "--progress", "none")
    assert corral(*args, cwd=tmp_path).returncode == 1  # the broken answer failed its row
    assert corral(*args, cwd=tmp_path).returncode == 1  # a resume: everything journaled, nothing sent
    data = load(tmp_path / "out.csv")
    assert [run["id"] for run in data.runs] == [1, 2] and data.manifest is not None
    assert data.manifest["run_id"] == 1 and data.manifest["counts"]["sent"] == 3
    (kind,) = data.errors
    assert kind.examples[0]["response"] == "Sorry, I cannot label that."
    made = corral("report", "out.csv", "-o", "report.html", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Manifest of the run that produced the data (run 1)" in page
    assert "raw answer" in page and "Sorry, I cannot label that." in page


@pytest.mark.parametrize("encoding", ["cp1252", "latin-1", "utf-16"])
def test_encoding_reads_csv_and_tsv_saved_by_other_tools(tmp_path: Path, server: FakeServer,
                                                        encoding: str) -> None:
    for name, sep in (("in.csv", ","), ("in.tsv", "\t")):
        (tmp_path / name).write_bytes(f"text{sep}n\r\n{TEXTS[0]}{sep}1\r\n".encode(encoding))
        out = f"out-{name}.parquet"
        done = corral("analyze", name, "-o", out, "--encoding", encoding, "-s", server.url,
                      "--progress", "none", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert pd.read_parquet(tmp_path / out).loc[0, "text"] == "Le café est fermé."
    filled = corral("fill", "in.csv", "-o", "filled.csv", "--fields", "City", "--title-col", "text",
                    "--encoding", encoding, "-s", server.url, "--progress", "none", cwd=tmp_path)
    assert filled.returncode == 0, filled.stderr
    embedded = corral("embed", "in.csv", "-o", "vectors.parquet", "-m", "llama3.2", "--encoding", encoding,
                      "-s", server.url, "--progress", "none", cwd=tmp_path)
    assert embedded.returncode == 0, embedded.stderr
    (tmp_path / "labels.csv").write_bytes("label_a,label_b\ncafé,café\nthé,café\n".encode(encoding))
    agreed = corral("agree", "labels.csv", "--key", "label", "--encoding", encoding, cwd=tmp_path)
    assert agreed.returncode == 0 and "2 models, 2 rows" in agreed.stdout, agreed.stderr


def test_the_python_fronts_take_an_encoding(tmp_path: Path, server: FakeServer) -> None:
    source = tmp_path / "events.csv"
    source.write_bytes("title_en,City\nLe café de Flore,\n".encode("cp1252"))
    corral_api.fill_missing_fields_from_csv(str(source), str(tmp_path / "out.csv"), title_col="title_en",
                                            json_fields=("City",), servers=[server.url], encoding="cp1252")
    assert pd.read_csv(tmp_path / "out.csv").loc[0, "title_en"] == "Le café de Flore"
    report = corral_api.analyze_file(source, tmp_path / "out.parquet", text_column="title_en",
                                     servers=[server.url], encoding="cp1252", progress=False)
    assert report.written == 1 and report.stats.ok == 1


@pytest.mark.parametrize("encoding, fragment", [
    ("cp1252", "in.csv:2: not UTF-8: byte 0xe9"),
    ("utf-16", "in.csv: file is UTF-16, not UTF-8"),
])
def test_a_file_that_is_not_utf8_names_encoding(tmp_path: Path, server: FakeServer, encoding: str,
                                                fragment: str) -> None:
    (tmp_path / "in.csv").write_bytes(f"text\n{TEXTS[0]}\n".encode(encoding))
    failed = corral("analyze", "in.csv", "-o", "out.csv", "-s", server.url, cwd=tmp_path)
    assert failed.returncode == 2
    (line,) = failed.stderr.strip().splitlines()
    assert fragment in line and "--encoding" in line, line
    assert not server.requests or all("café" not in json.dumps(b) for _, b in server.requests)
    (tmp_path / "labels.csv").write_bytes("label_a,label_b\ncafé,thé\n".encode(encoding))
    agree = corral("agree", "labels.csv", "--key", "label", cwd=tmp_path)
    assert agree.returncode == 2 and "labels.csv: " in agree.stderr and "--encoding" in agree.stderr
    assert len(agree.stderr.strip().splitlines()) == 1


def test_encoding_is_refused_for_formats_that_have_none(tmp_path: Path, server: FakeServer) -> None:
    pd.DataFrame({"text": ["a"]}).to_parquet(tmp_path / "in.parquet")
    refused = corral("analyze", "in.parquet", "-o", "out.csv", "--encoding", "cp1252", "-s", server.url,
                     cwd=tmp_path)
    assert refused.returncode == 2 and "for CSV and TSV input, not parquet" in refused.stderr
    unknown = corral("analyze", "in.parquet", "-o", "out.csv", "--encoding", "klingon", "-s", server.url,
                     cwd=tmp_path)
    assert unknown.returncode == 2 and "unknown encoding 'klingon'" in unknown.stderr
