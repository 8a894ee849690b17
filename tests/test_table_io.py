"""corral.sources.tables and corral.sinks.tables: faithful round trips, chunking, schema stability,
formula safety, clear errors."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corral.errors import InputError, UsageError
from corral.sinks.tables import TableWriter, neutralize_formulas
from corral.sources.tables import _count_records, count_rows, detect_format, read_table, read_table_chunks, to_pandas

# Every kind of text that breaks naive CSV handling; None is an empty cell.
NASTY = {
    "id": ["00123", "007", "1", "0042", "9", "10", "000"],
    "text": [
        'Hello, "world", again',
        "line one\nline two\r\nline three",
        "emoji 😀 CJK 中文 RTL مرحبا",
        "  padded both sides  ",
        None,
        "tab\there, and ; semicolons",
        '"',
    ],
    "note": ["NA", "null", None, "N/A", "nan", "None", ""],
}
# The last note is an empty string: in CSV it is indistinguishable from missing, so it reads back as
# missing; everything else comes back exactly.
EXPECTED = {**NASTY, "note": ["NA", "null", None, "N/A", "nan", "None", None]}


def _cells(frame: pd.DataFrame) -> dict[str, list[object]]:
    """Column -> values with every missing marker as None, for exact comparison."""
    return {str(c): [None if pd.isna(v) else v for v in frame[c].tolist()] for c in frame.columns}


@pytest.fixture
def nasty_csv(tmp_path: Path) -> Path:
    """The fixture written by the csv module, i.e. by someone other than us."""
    path = tmp_path / "nasty.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(NASTY)
        for row in zip(*NASTY.values()):
            writer.writerow(["" if v is None else v for v in row])
    return path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ---- reading ------------------------------------------------------------------------------------

def test_csv_reads_text_exactly(nasty_csv: Path) -> None:
    frame = read_table(nasty_csv)
    assert _cells(frame) == EXPECTED
    assert pd.isna(frame.loc[4, "text"])          # an empty cell is missing...
    assert frame.loc[0, "note"] == "NA"           # ...but the text "NA" is text


def test_bom_is_accepted(tmp_path: Path) -> None:
    path = _write(tmp_path / "bom.csv", "\ufeffid,name\n01,Zoë\n".encode())
    assert _cells(read_table(path)) == {"id": ["01"], "name": ["Zoë"]}


@pytest.mark.parametrize("size", [1, 2, 3, 1000])
def test_chunked_reading_equals_whole(nasty_csv: Path, size: int) -> None:
    chunks = list(read_table_chunks(nasty_csv, chunk_size=size))
    assert all(len(c) <= size for c in chunks)
    assert len(chunks) == -(-7 // size)
    joined = pd.concat(chunks)
    assert list(joined.index) == list(range(7))   # row positions in the file, across chunks
    assert _cells(joined) == EXPECTED


def test_columns_select_and_order(nasty_csv: Path) -> None:
    frame = read_table_chunks(nasty_csv, chunk_size=3, columns=["note", "id"])
    assert _cells(pd.concat(frame)) == {"note": EXPECTED["note"], "id": EXPECTED["id"]}
    with pytest.raises(InputError, match=r"nasty\.csv: no column 'speech' \(columns: id, text, note\)"):
        read_table_chunks(nasty_csv, columns=["speech"])


def test_header_only_file_gives_one_empty_chunk(tmp_path: Path) -> None:
    chunks = list(read_table_chunks(_write(tmp_path / "h.csv", b"a,b\n")))
    assert len(chunks) == 1 and list(chunks[0].columns) == ["a", "b"] and chunks[0].empty


def test_tsv(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.tab", b'id\ttext\n007\t"a\tb"\n008\tplain, text\n')
    assert _cells(read_table(path)) == {"id": ["007", "008"], "text": ["a\tb", "plain, text"]}


def test_jsonl_keeps_types_and_strings(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "007", "n": 1, "x": 0.1, "tags": ["a"], "ok": true}\n\n'
                    '{"id": "008", "n": null, "x": 0.30000000000000004, "tags": [], "ok": false}\n',
                    encoding="utf-8")
    frame = read_table(path)
    assert frame["id"].tolist() == ["007", "008"]
    assert str(frame["n"].dtype) == "Int64" and frame["n"][0] == 1 and pd.isna(frame["n"][1])
    assert frame["x"].tolist() == [0.1, 0.30000000000000004]
    assert frame["ok"].tolist() == [True, False]
    out = tmp_path / "out.csv"
    with TableWriter(out) as writer:
        writer.write(frame)
    assert out.read_text(encoding="utf-8").splitlines()[1:] == [
        '007,1,0.1,"[""a""]",True', "008,,0.30000000000000004,[],False"]


def test_count_rows(nasty_csv: Path, tmp_path: Path) -> None:
    assert count_rows(nasty_csv) == 7             # 3 embedded line breaks are not rows
    blank = _write(tmp_path / "blank.csv", b'a,b\r\n\r\n1,"x\r\n"\r\n\n2,y')
    assert count_rows(blank) == 2 == len(read_table(blank))
    assert count_rows(_write(tmp_path / "odd.csv", b'a,b\n1,"x\n')) is None
    assert count_rows(_write(tmp_path / "n.jsonl", b'{"a":1}\n\n{"a":2}\n{"a":3}')) == 3
    pq.write_table(pa.table({"a": list(range(42))}), tmp_path / "p.parquet")
    assert count_rows(tmp_path / "p.parquet") == 42
    data = nasty_csv.read_bytes()
    for block in (1, 2, 5, 7):                    # quote parity and blank lines across blocks
        assert _count_records(nasty_csv, quoted=True, block_size=block) == 8, data


# ---- round trips --------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet", ".jsonl", ".xlsx"])
def test_round_trip_from_csv(nasty_csv: Path, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"out{suffix}"
    with TableWriter(out) as writer:
        for chunk in read_table_chunks(nasty_csv, chunk_size=2):
            writer.write(chunk)
    back = read_table(out)
    if suffix == ".xlsx":   # XML normalises "\r\n" inside a cell to "\n"
        back["text"] = back["text"].str.replace("\n", "\r\n").str.replace("\r\r", "\r")
        back.loc[1, "text"] = back.loc[1, "text"].replace("one\r\n", "one\n")
    assert _cells(back) == EXPECTED
    if suffix == ".parquet":
        assert all(f.type == pa.string() for f in pq.read_schema(out))


def test_csv_to_csv_is_stable(nasty_csv: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "1.csv", tmp_path / "2.csv"
    for source, target in ((nasty_csv, first), (first, second)):
        with TableWriter(target) as writer:
            for chunk in read_table_chunks(source, chunk_size=3):
                writer.write(chunk)
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes().count(b"id,text,note") == 1   # header once
    assert b"\r\n" in first.read_bytes()                    # embedded CRLF kept inside its quotes


def test_parquet_schema_stable_when_first_chunk_is_all_null(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    with TableWriter(out) as writer:
        writer.write(pd.DataFrame({"id": ["1", "2"], "answer": [None, None]}))
        writer.write(pd.DataFrame({"answer": ["yes", None], "id": ["3", "4"]}))  # other order
        writer.write(pd.DataFrame({"id": ["5"]}))                                # missing column
    schema = pq.read_schema(out)
    assert [(f.name, f.type) for f in schema] == [("id", pa.string()), ("answer", pa.string())]
    assert _cells(read_table(out)) == {"id": ["1", "2", "3", "4", "5"],
                                       "answer": [None, None, "yes", None, None]}


def test_parquet_incompatible_later_chunk_is_a_clear_error(tmp_path: Path) -> None:
    writer = TableWriter(tmp_path / "out.parquet")
    writer.write(pd.DataFrame({"score": [1, 2]}))
    writer.write(pd.DataFrame({"score": ["3"]}))             # castable: fine
    with pytest.raises(UsageError, match=r"column 'score' was int64 in the first chunk"):
        writer.write(pd.DataFrame({"score": ["high"]}))
    with pytest.raises(UsageError, match=r"new columns \['extra'\]"):
        writer.write(pd.DataFrame({"score": [1], "extra": [2]}))
    writer.close(complete=False)


# ---- formulas -----------------------------------------------------------------------------------

FORMULAS = pd.DataFrame({"text": ["=1+1", "+SUM(A1)", "-2+3", "@cmd", "\t=x", "\r=x", "-5",
                                  "+3.5e2", "plain", None], "n": list(range(10))})
NEUTRAL = ["'=1+1", "'+SUM(A1)", "'-2+3", "'@cmd", "'\t=x", "'\r=x", "-5", "+3.5e2", "plain", None]


def test_neutralize_formulas_returns_a_copy() -> None:
    source = FORMULAS.copy()
    assert _cells(neutralize_formulas(source))["text"] == NEUTRAL
    assert _cells(source) == _cells(FORMULAS)
    as_object = FORMULAS.astype({"text": object})
    assert _cells(neutralize_formulas(as_object))["text"] == NEUTRAL


@pytest.mark.parametrize(("suffix", "flag", "expected"), [
    (".csv", True, NEUTRAL), (".csv", False, FORMULAS["text"].tolist()),
    (".parquet", True, FORMULAS["text"].tolist()), (".jsonl", True, FORMULAS["text"].tolist()),
    (".xlsx", True, [v.replace("\r", "\n") if isinstance(v, str) else v for v in FORMULAS["text"]]),
])
def test_formula_neutralisation_only_for_csv(tmp_path: Path, suffix: str, flag: bool,
                                             expected: list[object]) -> None:
    out = tmp_path / f"f{suffix}"
    with TableWriter(out, neutralize_formulas=flag) as writer:
        writer.write(FORMULAS)
    assert _cells(read_table(out))["text"] == [None if pd.isna(v) else v for v in expected]


# ---- writer mechanics ---------------------------------------------------------------------------

def test_part_file_then_rename(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    writer = TableWriter(out)
    writer.write(pd.DataFrame({"a": ["1"]}))
    assert not out.exists() and (tmp_path / "out.csv.part").exists()
    writer.close()
    assert out.read_text() == "a\n1\n" and not (tmp_path / "out.csv.part").exists()
    writer.close()                                                # idempotent


def test_failure_leaves_only_the_part_file(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    out.write_text("previous complete output")
    with pytest.raises(RuntimeError):
        with TableWriter(out) as writer:
            writer.write(pd.DataFrame({"a": ["1", "2"]}))
            raise RuntimeError("crash mid-run")
    assert out.read_text() == "previous complete output"         # never replaced by a half file
    assert _cells(read_table(tmp_path / "out.parquet.part", fmt="parquet")) == {"a": ["1", "2"]}


def test_polars_input(tmp_path: Path) -> None:
    pl = pytest.importorskip("polars")
    frame = pl.DataFrame({"id": ["007", None], "n": [1, 2]})
    assert _cells(to_pandas(frame)) == {"id": ["007", None], "n": [1, 2]}
    assert _cells(to_pandas(frame.lazy())) == {"id": ["007", None], "n": [1, 2]}
    out = tmp_path / "pl.jsonl"
    with TableWriter(out) as writer:
        writer.write(frame)
    assert [json.loads(x) for x in out.read_text().splitlines()] == [
        {"id": "007", "n": 1}, {"id": None, "n": 2}]
    with pytest.raises(UsageError, match="pandas or polars DataFrame"):
        to_pandas([{"a": 1}])


def test_jsonl_output_is_exact(tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    with TableWriter(out) as writer:
        writer.write(pd.DataFrame({"t": ["a/b 😀", None], "x": [0.1 + 0.2, np.nan]}))
    assert out.read_text(encoding="utf-8") == ('{"t":"a/b 😀","x":0.30000000000000004}\n'
                                               '{"t":null,"x":null}\n')


def test_detect_format() -> None:
    assert [detect_format(f"x{s}") for s in (".CSV", ".tab", ".pq", ".ndjson", ".xls")] == [
        "csv", "tsv", "parquet", "jsonl", "excel"]
    with pytest.raises(UsageError, match=r"x\.txt: unknown table format '\.txt'"):
        detect_format("x.txt")
    with pytest.raises(UsageError, match="directory"):
        TableWriter("/nonexistent-dir/out.csv")


# ---- bad input ----------------------------------------------------------------------------------

BAD_INPUTS = [
    ("missing.csv", None, "no such file"),
    ("empty.csv", b"", "empty file"),
    ("blank.csv", b"\n\n", "empty file (no header row)"),
    # record 7 per pandas, but line 8 in an editor because of the embedded newline
    ("fields.csv", b'a,b,c\n"x\ny",2,3\n4,5,6\n7,8,9\n1,2,3\n4,5,6\n1,2,3,4,5\n',
     ":8: bad CSV: expected 3 fields, found 5 (unbalanced quotes?)"),
    ("first_row.csv", b"a,b,c\n1,2,3,4,5\n6,7,8\n",
     ":2: bad CSV: expected 3 fields, found 5 (unbalanced quotes?)"),
    ("eof.csv", b'a,b,c\n\n1,2,3\n\n4,"5,6\n7,8,9\n',
     ":5: bad CSV: a quoted field starting on this line never ends (unbalanced quotes?)"),
    ("latin1.csv", "name,city\nZoë,Köln\n".encode() + "Zoë,Köln\n".encode("latin-1"),
     ":3: not UTF-8: byte 0xeb at column 3"),
    ("utf16.csv", "a,b\n1,2\n".encode("utf-16"), ": file is UTF-16, not UTF-8"),
    ("nul.csv", b"a,b\n1,2\n3,4\x005\n", ":3: NUL byte in a text file"),
    ("fake.parquet", b"id,text\n1,hello\n", ": not a Parquet file"),
    ("bad.jsonl", b'{"a": 1}\n\n{"a": 2,}\n', ":3: bad JSON"),
    ("list.jsonl", b'{"a": 1}\n[1, 2]\n', ":2: expected a JSON object, found list"),
    ("latin1.jsonl", b'{"a": "x"}\n{"a": "Zo\xeb"}\n', ":2: not UTF-8: byte 0xeb"),
    ("fake.xlsx", b"not a zip", ": not a readable Excel file"),
]


@pytest.mark.parametrize(("name", "data", "message"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_names_file_and_line(tmp_path: Path, name: str, data: bytes | None,
                                       message: str) -> None:
    path = tmp_path / name
    if data is not None:
        path.write_bytes(data)
    with pytest.raises(InputError) as caught:
        read_table(path)
    text = str(caught.value)
    expected = f"{path}{message}" if message[0] == ":" else f"{path}: {message}"
    assert text.startswith(expected), text
    assert isinstance(caught.value, UsageError)      # the CLI prints one line and exits 2


def test_error_in_a_later_chunk_has_the_right_line(tmp_path: Path) -> None:
    rows = "".join(f'{i},"multi\nline {i}"\n' for i in range(50))
    path = _write(tmp_path / "late.csv", f"id,text\n{rows}50,ok,extra\n".encode())
    chunks = read_table_chunks(path, chunk_size=10)
    assert len(next(chunks)) == 10                   # the first rows are fine
    with pytest.raises(InputError) as caught:
        list(chunks)
    assert str(caught.value) == f"{path}:102: bad CSV: expected 2 fields, found 3 (unbalanced quotes?)"


def test_nul_byte_beyond_the_first_chunk(tmp_path: Path) -> None:
    path = _write(tmp_path / "nul.csv", b"a\n" + b"x\n" * 30 + b"y\x00\n")
    with pytest.raises(InputError, match=r"nul\.csv:32: NUL byte"):
        list(read_table_chunks(path, chunk_size=5))


def test_excel_without_openpyxl_says_what_to_install(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "x.xlsx", b"PK")
    monkeypatch.setitem(sys.modules, "openpyxl", None)          # makes `import openpyxl` fail
    with pytest.raises(UsageError, match=r"x\.xlsx: Excel files need the openpyxl package: "
                                         r"pip install openpyxl"):
        read_table(path)
    with pytest.raises(UsageError, match="pip install openpyxl"):
        TableWriter(tmp_path / "out.xlsx")


def test_a_csv_chunk_longer_than_a_slice_is_written_whole_with_one_header(tmp_path: Path, monkeypatch) -> None:
    """A chunk goes out in slices (CSV_SLICE_ROWS rows): one header, every row, formulas neutralized
    and a bare carriage return quoted in whichever slice they fall."""
    monkeypatch.setattr("corral.sinks.tables.CSV_SLICE_ROWS", 4)
    frame = pd.DataFrame({"id": [str(i) for i in range(10)],
                          "text": ["=1+1" if i == 6 else "a\rb" if i == 9 else f"row {i}" for i in range(10)]})
    out = tmp_path / "out.csv"
    with TableWriter(out) as writer:
        writer.write(frame)
        writer.write(frame.iloc[:0])
        writer.write(frame.iloc[:3])
    lines = out.read_text(encoding="utf-8").split("\n")
    assert lines[0] == "id,text" and lines.count("id,text") == 1
    back = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert back["id"].tolist() == [str(i) for i in range(10)] + ["0", "1", "2"]
    assert back["text"][6] == "'=1+1" and back["text"][9] == "a\rb"
