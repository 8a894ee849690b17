"""corral.tables.agreement and `corral agree`: values checked against hand-computed statistics.

Hand formulas used below (two raters, nominal labels):
  Cohen's κ = (p_o - p_e) / (1 - p_e), p_e = Σ_c p_A(c) · p_B(c).
  Krippendorff's α = 1 - (n - 1) · Σ_{c≠k} o_ck / Σ_{c≠k} n_c · n_k, where o is the coincidence
  matrix over pairable values (each unit answered by m ≥ 2 raters adds 1/(m-1) per ordered pair).
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from rich.console import Console

import corral.cli.agree  # noqa: F401  (registers `agree` before the CLI registry lists it)
from corral.cli import main
from corral.errors import UsageError
from corral.tables.agreement import AgreementReport, agreement

A, B, C = "llama3.2", "qwen3:8b", "hf.co/org/mistral-7b_q4"


def fanout(answers: dict[str, list], **extra: list) -> pd.DataFrame:
    """A frame shaped like run_analysis(fanout=True): {key}_{model}, response_ and error_ columns."""
    n = len(next(iter(answers.values())))
    data: dict[str, list] = {"text": [f"t{i}" for i in range(n)]}
    for model, labels in answers.items():
        data[f"label_{model}"] = labels
        data[f"prob_{model}"] = [None if v is None else 0.5 + 0.01 * i for i, v in enumerate(labels)]
        data[f"response_{model}"] = [None if v is None else "{}" for v in labels]
        data[f"error_{model}"] = ["HTTP 500" if v is None else None for v in labels]
    data.update(extra)
    return pd.DataFrame(data)


def pair(report: AgreementReport, a: str, b: str, key: str = "label") -> dict:
    pairs = report.keys[key].pairs
    return pairs[(pairs.model_a == a) & (pairs.model_b == b)].iloc[0].to_dict()


# ---------------------------------------------------------------------------------- statistics


def test_perfect_agreement_three_models() -> None:
    labels = ["pos", "neg", "neu", "pos", "neg"]
    report = agreement(fanout({A: labels, B: labels, C: labels}))
    ka = report.keys["label"]
    assert ka.models == [A, B, C]
    assert list(report.keys) == ["label", "prob"]  # every key, each at its own level
    assert ka.level == "nominal" and report.keys["prob"].level == "interval"
    assert len(ka.pairs) == 3
    assert (ka.pairs.percent_agreement == 100.0).all()
    assert (ka.pairs.cohen_kappa == 1.0).all()
    assert (ka.pairs.n == 5).all()
    assert ka.alpha == pytest.approx(1.0)
    assert ka.notes == []


def test_known_two_by_two_example() -> None:
    # Both yes 4, A yes/B no 2, A no/B yes 1, both no 3 (10 rows).
    a = ["yes"] * 4 + ["yes"] * 2 + ["no"] * 1 + ["no"] * 3
    b = ["yes"] * 4 + ["no"] * 2 + ["yes"] * 1 + ["no"] * 3
    ka = agreement(fanout({A: a, B: b}), key="label").keys["label"]
    row = pair(AgreementReport({"label": ka}), A, B)
    # p_o = 0.7; p_A(yes) = 0.6, p_B(yes) = 0.5 -> p_e = 0.3 + 0.2 = 0.5; κ = 0.2 / 0.5 = 0.4
    assert row["n"] == 10
    assert row["percent_agreement"] == pytest.approx(70.0)
    assert row["cohen_kappa"] == pytest.approx(0.4)
    # o_yy = 8, o_nn = 6, o_yn = o_ny = 3; n_yes = 11, n_no = 9, n = 20
    # α = 1 - 19 · 6 / (2 · 11 · 9) = 84 / 198
    assert ka.alpha == pytest.approx(84 / 198)
    table = ka.confusion[(A, B)]
    assert table.loc["yes", "yes"] == 4 and table.loc["yes", "no"] == 2
    assert table.loc["no", "yes"] == 1 and table.loc["no", "no"] == 3
    assert list(table.index) == list(table.columns) == ["no", "yes"]


def test_missing_answers_from_an_errored_model() -> None:
    a = ["x", "y", "x", "y", "x"]
    b = ["x", "y", "y", None, None]      # b errored on the last two rows
    df = fanout({A: a, B: b, C: a})
    assert df[f"error_{B}"].tolist()[-2:] == ["HTTP 500", "HTTP 500"]
    ka = agreement(df, key="label").keys["label"]
    ab, ac = pair(AgreementReport({"label": ka}), A, B), pair(AgreementReport({"label": ka}), A, C)
    # A vs B on the 3 shared rows: p_o = 2/3, p_A(x) = 2/3, p_B(x) = 1/3 -> p_e = 4/9, κ = 0.4
    assert ab["n"] == 3
    assert ab["percent_agreement"] == pytest.approx(200 / 3)
    assert ab["cohen_kappa"] == pytest.approx(0.4)
    assert ac["n"] == 5 and ac["cohen_kappa"] == pytest.approx(1.0)
    assert ka.n_rows == 5 and ka.n_complete == 3 and ka.n_alpha == 5

    # α on two raters with missing values: only the 3 pairable units count.
    # o_xx = 2, o_yy = 2, o_xy = o_yx = 1; n_x = n_y = 3, n = 6 -> α = 1 - 5 · 2 / 18 = 4/9
    two = agreement(fanout({A: a, B: b}), key="label").keys["label"]
    assert two.alpha == pytest.approx(4 / 9)
    assert two.n_alpha == 3


def test_label_normalisation() -> None:
    df = pd.DataFrame({
        f"label_{A}": [" Positive", "NEGATIVE", True, 1, "neutral"],
        f"label_{B}": ["positive\n", "negative", "true", 1.0, ""],   # "" = no answer
        f"response_{A}": ["{}"] * 5, f"response_{B}": ["{}"] * 5,
    })
    ka = agreement(df, key="label").keys["label"]
    row = pair(AgreementReport({"label": ka}), A, B)
    assert row["n"] == 4 and row["percent_agreement"] == 100.0
    assert ka.labels == ["1", "negative", "neutral", "positive", "true"]

    raw = agreement(df, key="label", normalize=False).keys["label"]
    raw_row = pair(AgreementReport({"label": raw}), A, B)
    assert raw_row["n"] == 5
    assert raw_row["percent_agreement"] == pytest.approx(20.0)  # only 1 == 1.0 matches


def test_gold_accuracy_and_macro_f1() -> None:
    gold = ["p", "p", "p", "n", "n", "n", None]
    a = ["p", "p", "n", "n", "n", "n", "p"]          # last row has no gold label: not scored
    b = ["p", "p", "p", "n", "n", "n", "n"]
    report = agreement(fanout({A: a, B: b}, human=gold), key="label", gold="human")
    scores = report.keys["label"].gold.set_index("model")
    # A: accuracy 5/6. class p: P = 1, R = 2/3, F1 = 0.8; class n: P = 3/4, R = 1, F1 = 6/7
    assert scores.loc[A, "n"] == 6
    assert scores.loc[A, "accuracy"] == pytest.approx(5 / 6)
    assert scores.loc[A, "macro_f1"] == pytest.approx((0.8 + 6 / 7) / 2)
    assert scores.loc[B, "accuracy"] == 1.0 and scores.loc[B, "macro_f1"] == 1.0


def test_columns_found_by_key_prefix_with_odd_model_names() -> None:
    df = fanout({A: ["a", "b"], B: ["a", "b"], C: ["a", "a"]}, stars_x=[1, 2])
    df[f"stars_{A}"], df[f"stars_{B}"], df[f"stars_{C}"] = [1, 5], [1, 4], [2, 5]
    report = agreement(df)
    assert list(report.keys) == ["label", "prob", "stars"]
    assert [ka.level for ka in report.keys.values()] == ["nominal", "interval", "ordinal"]
    assert report.keys["label"].columns == [f"label_{A}", f"label_{B}", f"label_{C}"]
    assert report.keys["stars"].models == [A, B, C]  # stars_x is not a model's column
    forced = agreement(df, key="prob", models=[C, A])
    assert forced.keys["prob"].models == [C, A]
    assert pair(forced, C, A, key="prob")["percent_agreement"] == 100.0


def test_key_columns_without_fanout_markers() -> None:
    df = pd.DataFrame({"label_m1": ["a", "b"], "label_m2": ["a", "b"], "label_conf_m1": [1, 2],
                       "label_conf_m2": [1, 2]})
    assert agreement(df, key="label").keys["label"].models == ["m1", "m2"]
    assert agreement(df, key="label_conf").keys["label_conf"].models == ["m1", "m2"]


# ------------------------------------------------------------------------------ degenerate cases


def test_one_model_only_is_a_usage_error() -> None:
    df = fanout({A: ["a", "b"]})
    with pytest.raises(UsageError, match=r"at least 2 models.*'label'.*label_llama3\.2"):
        agreement(df, key="label")
    with pytest.raises(UsageError, match="no columns for key 'topic'.*keys found: label, prob"):
        agreement(df, key="topic")
    with pytest.raises(UsageError, match="gold column 'truth'"):
        agreement(fanout({A: ["a"], B: ["a"]}), gold="truth")
    with pytest.raises(UsageError, match=r"no columns for model\(s\) gpt-4o"):
        agreement(fanout({A: ["a"], B: ["a"]}), models=[A, "gpt-4o"])
    with pytest.raises(UsageError, match=r"no column 'label_gpt-4o' for key 'label'"):
        agreement(fanout({A: ["a"], B: ["a"]}), key="label", models=[A, "gpt-4o"])
    with pytest.raises(UsageError, match="at least 2 models; got llama3.2"):
        agreement(fanout({A: ["a"], B: ["a"]}), models=[A])


def test_pair_with_no_rows_in_common() -> None:
    df = fanout({A: ["a", "b", None, None], B: [None, None, "a", "b"], C: ["a", "b", "a", "b"]})
    ka = agreement(df, key="label").keys["label"]
    row = pair(AgreementReport({"label": ka}), A, B)
    assert row["n"] == 0
    assert math.isnan(row["cohen_kappa"]) and math.isnan(row["percent_agreement"])  # NaN in frames
    as_dict = AgreementReport({"label": ka}).to_dict()["keys"]["label"]["pairs"][0]
    assert as_dict["cohen_kappa"] is None and as_dict["n"] == 0                     # None in JSON
    assert ka.confusion[(A, B)].empty
    assert any("no row in common" in note for note in ka.notes)
    assert ka.alpha == pytest.approx(1.0)  # every pairable unit agrees


def test_constant_labels_make_kappa_and_alpha_undefined() -> None:
    ka = agreement(fanout({A: ["x"] * 4, B: ["x"] * 4}), key="label").keys["label"]
    row = pair(AgreementReport({"label": ka}), A, B)
    assert row["percent_agreement"] == 100.0
    assert row["cohen_kappa"] is None or math.isnan(row["cohen_kappa"])
    assert ka.alpha is None
    assert any("κ is undefined" in note for note in ka.notes)
    assert any("fewer than 2 distinct values" in note for note in ka.notes)


def test_alpha_with_no_pairable_row() -> None:
    ka = agreement(fanout({A: ["a", None], B: [None, "b"]}), key="label").keys["label"]
    assert ka.alpha is None and ka.n_alpha == 0
    assert any("no row was answered by 2 or more" in note for note in ka.notes)


def test_outputs_frame_dict_and_render() -> None:
    report = agreement(fanout({A: ["a", "b", "a"], B: ["a", "b", "b"]}, gold=["a", "b", "a"]),
                       key="label", gold="gold")
    frame = report.to_frame()
    assert list(frame.columns) == ["key", "scope", "model_a", "model_b", "n", "percent_agreement",
                                   "cohen_kappa", "alpha", "level", "weights", "alpha_low", "alpha_high",
                                   "kappa_low", "kappa_high", "fleiss_kappa"]
    assert frame.scope.tolist() == ["pair", "all"]
    assert frame.alpha.iloc[1] == pytest.approx(report.keys["label"].alpha)
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    label = data["keys"]["label"]
    assert label["pairs"][0]["n"] == 3 and label["gold"][0]["accuracy"] == 1.0
    assert label["confusion"][0]["counts"] == [[1, 1], [0, 1]]
    console = Console(record=True, width=120)
    console.print(report.render(confusion=True))
    text = console.export_text()
    for needle in ("Cohen's κ", "Krippendorff's α", "66.7%", "Macro-F1", "Confusion: llama3.2"):
        assert needle in text


# -------------------------------------------------------------------------------------- the CLI


def run_cli(*args: str) -> int:
    with pytest.raises(SystemExit) as exc:
        main(["agree", *args])
    return exc.value.code or 0


def sample_frame() -> pd.DataFrame:
    a = ["yes"] * 6 + ["no"] * 4
    b = ["yes"] * 4 + ["no"] * 2 + ["yes"] + ["no"] * 3
    return fanout({A: a, B: b}, human=["yes"] * 5 + ["no"] * 5)


def test_cli_parquet_with_json_and_gold(tmp_path, capsys) -> None:
    path = tmp_path / "results.parquet"
    sample_frame().to_parquet(path)
    out = tmp_path / "agree.json"
    assert run_cli(str(path), "--key", "label", "--gold", "human", "--json", str(out),
                   "--confusion") == 0
    printed = capsys.readouterr().out
    assert "0.400" in printed and "70.0%" in printed and "Macro-F1" in printed
    data = json.loads(out.read_text())
    assert data["keys"]["label"]["pairs"][0]["cohen_kappa"] == pytest.approx(0.4)
    assert data["keys"]["label"]["gold"][0]["accuracy"] == pytest.approx(0.9)


def test_cli_csv_keeps_na_as_a_label(tmp_path, capsys) -> None:
    path = tmp_path / "results.csv"
    df = fanout({A: ["NA", "None", "x", "x"], B: ["na", "none", "x", None]})
    df.to_csv(path, index=False)
    assert run_cli(str(path), "--models", f"{B},{A}", "--gold", "label=text") == 0
    printed = capsys.readouterr().out
    assert "100.0%" in printed and "3 answered by all" in printed
    assert "Against gold column 'text'" in printed


@pytest.mark.parametrize("args, message", [
    (["missing.csv"], "no such file"),
    (["{csv}", "--key", "topic"], "no columns for key 'topic'"),
    (["{one}"], "at least 2 models"),
    (["{csv}", "--gold", "truth"], "gold column 'truth'"),
    (["{csv}", "--models", f"{A}"], "at least 2 models"),
])
def test_cli_usage_errors_exit_2(tmp_path, capsys, args, message) -> None:
    sample_frame().to_csv(tmp_path / "r.csv", index=False)
    fanout({A: ["a", "b"]}).to_csv(tmp_path / "one.csv", index=False)
    paths = {"csv": str(tmp_path / "r.csv"), "one": str(tmp_path / "one.csv")}
    argv = [a.format(**paths) if a.startswith("{") else str(tmp_path / a) if a.endswith(".csv")
            else a for a in args]
    assert run_cli(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("corral: error:") and message in err and "\n" not in err
