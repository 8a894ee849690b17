"""Agreement at every level of measurement, each figure checked against a reference library on the
same data (krippendorff, scikit-learn, statsmodels) and against published textbook values, with
missing answers; and the same figures from Python, `corral agree` and `corral report`."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import krippendorff
import numpy as np
import pandas as pd
import polars as pl
import pytest
from sklearn.metrics import cohen_kappa_score, f1_score
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

from corral.errors import UsageError
from corral.sources.tables import read_table
from corral.tables.agreement import agreement, views
from tests.conftest import corral

MODELS = ["llama3.2", "qwen3:8b", "gemma3"]
LEVELS = ["nominal", "ordinal", "interval", "ratio"]


def ratings(rows: int = 80, seed: int = 7, missing: float = 0.15) -> pd.DataFrame:
    """Three models rating 1-5 near a hidden truth, a score in [0, 1] and a label; some answers
    missing (the model errored on that row), as a fan-out run leaves them."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(1, 6, rows)
    data: dict[str, Any] = {"text": [f"t{i}" for i in range(rows)], "human": truth}
    for model in MODELS:
        gone = rng.random(rows) < missing
        stars = np.clip(truth + rng.integers(-1, 2, rows), 1, 5).astype(float)
        prob = np.round(np.clip(truth / 5 + rng.normal(0, 0.1, rows), 0, 1), 3)
        label = np.where(stars >= 3, "positive", "negative").astype(object)
        stars[gone], prob[gone], label[gone] = np.nan, np.nan, None
        data[f"stars_{model}"] = pd.array([None if np.isnan(v) else int(v) for v in stars], dtype="Int64")
        data[f"prob_{model}"] = prob
        data[f"label_{model}"] = label
        data[f"response_{model}"] = ["{}"] * rows
        data[f"error_{model}"] = ["HTTP 500" if g else None for g in gone]
    return pd.DataFrame(data)


def reliability(df: pd.DataFrame, key: str, codes: dict[Any, int] | None = None) -> np.ndarray:
    """models × rows, NaN for no answer: the krippendorff package's input."""
    out = []
    for model in MODELS:
        column = df[f"{key}_{model}"].astype(object).tolist()
        out.append([np.nan if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))
                    else (codes[v] if codes else float(v)) for v in column])
    return np.array(out, dtype=float)


# ------------------------------------------------------------------ Krippendorff's α, every level


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("key", ["stars", "prob"])
def test_alpha_matches_krippendorff_at_every_level(key: str, level: str) -> None:
    df = ratings()
    data = reliability(df, key)
    assert np.isnan(data).any()                       # missing answers are part of the test
    expected = krippendorff.alpha(reliability_data=data, level_of_measurement=level)
    ka = agreement(df, key=key, level=level, n_boot=0).keys[key]
    assert ka.level == level and not ka.level_inferred
    assert ka.alpha == pytest.approx(expected, abs=1e-12)


def test_alpha_nominal_on_text_labels_matches_krippendorff() -> None:
    df = ratings()
    data = reliability(df, "label", {"negative": 0, "positive": 1})
    ka = agreement(df, key="label", n_boot=0).keys["label"]
    assert ka.level == "nominal" and ka.level_inferred
    assert ka.alpha == pytest.approx(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"),
                                     abs=1e-12)


@pytest.mark.parametrize("level, published", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849),
                                              ("ratio", 0.797)])
def test_krippendorffs_published_example(level: str, published: float) -> None:
    """Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 observers, 12 units."""
    n = np.nan
    observers = {"A": [1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n], "B": [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3],
                 "C": [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n], "D": [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n]}
    df = pd.DataFrame({f"value_{o}": v for o, v in observers.items()})
    ka = agreement(df, key="value", level=level, n_boot=0).keys["value"]
    assert round(ka.alpha, 3) == published
    assert ka.alpha == pytest.approx(krippendorff.alpha(reliability_data=np.array(list(observers.values())),
                                                        level_of_measurement=level), abs=1e-12)


# ------------------------------------------------------------------ Cohen's κ, weighted and not


@pytest.mark.parametrize("weights", ["none", "linear", "quadratic"])
def test_weighted_kappa_matches_scikit_learn(weights: str) -> None:
    df = ratings()
    report = agreement(df, key="stars", weights=weights, n_boot=0)
    ka = report.keys["stars"]
    assert ka.weights == weights
    for pair in ka.pairs.to_dict("records"):
        a, b = df[f"stars_{pair['model_a']}"], df[f"stars_{pair['model_b']}"]
        both = a.notna() & b.notna()
        assert pair["n"] == int(both.sum()) < len(df)  # rows both answered
        expected = cohen_kappa_score(a[both].astype(int), b[both].astype(int), labels=[1, 2, 3, 4, 5],
                                     weights=None if weights == "none" else weights)
        assert pair["cohen_kappa"] == pytest.approx(expected, abs=1e-12)


def test_default_weights_follow_the_level() -> None:
    report = agreement(ratings(), n_boot=0)
    assert {k: (ka.level, ka.weights) for k, ka in report.keys.items()} == {
        "stars": ("ordinal", "linear"), "prob": ("interval", "quadratic"), "label": ("nominal", "none")}
    # Weights need an order: a nominal key stays unweighted even when weights are asked for.
    assert agreement(ratings(), key="label", weights="quadratic", n_boot=0).keys["label"].weights == "none"


def test_quadratic_kappa_on_an_interval_key_uses_the_scale_of_values_seen() -> None:
    df = ratings()
    pair = agreement(df, key="prob", n_boot=0).keys["prob"].pairs.iloc[0]
    a, b = df[f"prob_{MODELS[0]}"], df[f"prob_{MODELS[1]}"]
    both = a.notna() & b.notna()
    scale = np.unique(pd.concat([df[f"prob_{m}"] for m in MODELS]).dropna())
    position = {v: i for i, v in enumerate(scale)}   # scikit-learn takes labels, not continuous values
    expected = cohen_kappa_score(a[both].map(position), b[both].map(position), labels=list(range(len(scale))),
                                 weights="quadratic")
    assert pair["cohen_kappa"] == pytest.approx(expected, abs=1e-12)


# ------------------------------------------------------------------ Fleiss' κ


def test_fleiss_kappa_matches_statsmodels_on_the_rows_all_answered() -> None:
    df = ratings()
    for key in ("label", "stars"):
        ka = agreement(df, key=key, n_boot=0).keys[key]
        block = df[[f"{key}_{m}" for m in MODELS]].astype(object)
        complete = block[block.notna().all(axis=1)]
        assert ka.n_complete == len(complete) < len(df)
        codes = complete.apply(lambda col: col.map(str)).to_numpy()
        table, _ = aggregate_raters(codes)
        assert ka.fleiss_kappa == pytest.approx(fleiss_kappa(table, method="fleiss"), abs=1e-12)


def test_fleiss_kappa_textbook_example() -> None:
    """Fleiss (1971) as worked on Wikipedia: 10 subjects, 14 raters, 5 categories, κ = 0.210."""
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    answers = [[f"c{j}" for j, count in enumerate(row) for _ in range(count)] for row in table]
    df = pd.DataFrame({f"cat_r{r}": [row[r] for row in answers] for r in range(14)})
    ka = agreement(df, key="cat", n_boot=0).keys["cat"]
    assert round(ka.fleiss_kappa, 3) == 0.210
    assert ka.fleiss_kappa == pytest.approx(fleiss_kappa(np.array(table)), abs=1e-12)


def test_no_fleiss_kappa_for_two_models_or_interval_keys() -> None:
    df = ratings()
    two = agreement(df, key="label", models=MODELS[:2], n_boot=0).keys["label"]
    assert two.fleiss_kappa is None
    assert agreement(df, key="prob", n_boot=0).keys["prob"].fleiss_kappa is None


# ------------------------------------------------------------------ bootstrap intervals


def test_bootstrap_intervals_are_seeded_and_bracket_the_estimate() -> None:
    df = ratings()
    first = agreement(df, n_boot=300, seed=11).to_frame()
    again = agreement(df, n_boot=300, seed=11).to_frame()
    other = agreement(df, n_boot=300, seed=12).to_frame()
    pd.testing.assert_frame_equal(first, again)
    assert not first[["alpha_low", "kappa_low"]].equals(other[["alpha_low", "kappa_low"]])
    pairs, overall = first[first.scope == "pair"], first[first.scope == "all"]
    assert (pairs.kappa_low <= pairs.cohen_kappa).all() and (pairs.cohen_kappa <= pairs.kappa_high).all()
    assert (overall.alpha_low <= overall.alpha).all() and (overall.alpha <= overall.alpha_high).all()
    assert (pairs.kappa_high - pairs.kappa_low > 0).all()
    # A key's intervals do not depend on which other keys were analysed alongside.
    alone = agreement(df, key="prob", n_boot=300, seed=11).to_frame()
    together = first[first.key == "prob"].reset_index(drop=True)
    pd.testing.assert_frame_equal(alone, together)


def test_bootstrap_matches_resampling_rows_with_the_reference() -> None:
    """The pattern-count bootstrap has the distribution of resampling rows and recomputing
    krippendorff.alpha on each resample: the two intervals agree to sampling error."""
    df = ratings(rows=60)
    data = reliability(df, "stars")
    rng = np.random.default_rng(3)
    pairable = np.nonzero((~np.isnan(data)).sum(axis=0) >= 2)[0]
    naive = [krippendorff.alpha(reliability_data=data[:, rng.choice(pairable, len(pairable))],
                                level_of_measurement="ordinal") for _ in range(400)]
    ka = agreement(df, key="stars", n_boot=400, seed=3).keys["stars"]
    low, high = np.percentile(naive, [2.5, 97.5])
    assert ka.alpha_low == pytest.approx(low, abs=0.04) and ka.alpha_high == pytest.approx(high, abs=0.04)


def test_no_intervals_when_ci_is_none() -> None:
    frame = agreement(ratings(), ci=None).to_frame()
    assert frame[["alpha_low", "alpha_high", "kappa_low", "kappa_high"]].isna().all().all()
    assert frame.alpha.notna().any()


# ------------------------------------------------------------------ levels read off the values


def test_levels_inferred_the_same_from_csv_text_and_typed_columns(tmp_path: Path) -> None:
    df = ratings()
    df.to_csv(tmp_path / "out.csv", index=False)
    df.to_parquet(tmp_path / "out.parquet")
    as_text = read_table(tmp_path / "out.csv")                  # corral's reader: every cell text
    assert as_text[f"prob_{MODELS[0]}"].dropna().map(type).eq(str).all()
    typed = agreement(df, seed=5).to_dict()
    assert agreement(as_text, seed=5).to_dict() == typed
    assert agreement(pd.read_parquet(tmp_path / "out.parquet"), seed=5).to_dict() == typed
    prob = typed["keys"]["prob"]
    assert prob["level"] == "interval" and prob["confusion"] == []  # never 50 labels
    assert typed["keys"]["stars"]["level"] == "ordinal" and len(typed["keys"]["stars"]["confusion"]) == 3


def test_ordered_categorical_is_ordinal_on_its_categories() -> None:
    scale = pd.CategoricalDtype(["low", "mid", "high"], ordered=True)
    df = pd.DataFrame({"risk_a": pd.Series(["low", "mid", "high", "high", None], dtype=scale),
                       "risk_b": pd.Series(["low", "high", "high", "mid", "low"], dtype=scale)})
    ka = agreement(df, key="risk", n_boot=0).keys["risk"]
    assert (ka.level, ka.weights) == ("ordinal", "linear")
    expected = cohen_kappa_score([0, 1, 2, 2], [0, 2, 2, 1], labels=[0, 1, 2], weights="linear")
    assert ka.pairs.cohen_kappa.iloc[0] == pytest.approx(expected)
    data = np.array([[0, 1, 2, 2, np.nan], [0, 2, 2, 1, 0]])
    assert ka.alpha == pytest.approx(krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal"))


def test_level_per_key_and_level_errors() -> None:
    df = ratings()
    report = agreement(df, level={"stars": "interval"}, n_boot=0)
    assert [ka.level for ka in report.keys.values()] == ["interval", "interval", "nominal"]
    with pytest.raises(UsageError, match="level 'interval' for key 'label' needs numbers.*'positive'"):
        agreement(df, key="label", level="interval")
    with pytest.raises(UsageError, match="not one of nominal, ordinal, interval, ratio"):
        agreement(df, key="stars", level="ordnial")
    with pytest.raises(UsageError, match="weights 'cubic'"):
        agreement(df, key="stars", weights="cubic")
    with pytest.raises(UsageError, match="levels given for key.*topic"):
        agreement(df, key="stars", level={"topic": "ordinal"})
    negative = pd.DataFrame({"d_a": [-1.5, 2.0, 3.0], "d_b": [-1.0, 2.5, 3.0]})
    with pytest.raises(UsageError, match="ratio.*≥ 0"):
        agreement(negative, key="d", level="ratio")


def test_gold_scores_numbers_by_mean_absolute_error() -> None:
    df = ratings()
    gold = agreement(df, key="stars", gold="human", n_boot=0).keys["stars"].gold.set_index("model")
    model = MODELS[0]
    answered = df[f"stars_{model}"].notna()
    errors = (df[f"stars_{model}"][answered].astype(float) - df.human[answered]).abs()
    assert gold.loc[model, "n"] == answered.sum()
    assert gold.loc[model, "mae"] == pytest.approx(errors.mean())
    assert gold.loc[model, "accuracy"] == pytest.approx((errors == 0).mean())
    expected_f1 = f1_score(df.human[answered], df[f"stars_{model}"][answered].astype(int), average="macro")
    assert gold.loc[model, "macro_f1"] == pytest.approx(expected_f1) and expected_f1 > 0.2


# ------------------------------------------------------------------ fronts: polars, HTML, CLI, report


def test_polars_frames_give_the_same_report() -> None:
    df = ratings()
    expected = agreement(df, seed=1).to_dict()
    assert agreement(pl.from_pandas(df), seed=1).to_dict() == expected
    assert agreement(pl.from_pandas(df).lazy(), seed=1).to_dict() == expected
    with pytest.raises(UsageError, match="pandas or polars DataFrame, not dict"):
        agreement({"a": [1]})


def test_jupyter_shows_tables() -> None:
    report = agreement(ratings(), gold={"stars": "human"})
    page = report._repr_html_()
    assert page.count("<table>") == 4 and "dataclass" not in page and "KeyAgreement(" not in page
    for key, kd in report.to_dict()["keys"].items():
        assert html.escape(views.title(key, kd)) in page
        for line in views.summary_lines(kd):
            assert html.escape(line) in page
    assert "Fleiss&#x27; κ" in page and "95% CI" in page and "nominal, inferred" in page


def faked_answer(body: dict[str, Any]) -> str:
    text = body["messages"][-1]["content"]
    number = int(re.search(r"item (\d+)", text).group(1))  # type: ignore[union-attr]
    model = body["model"]
    shift = {"llama3.2": 0, "mistral": 1, "gemma3": 2}[model.split(":")[0]]
    stars = 1 + (number + (shift if number % 3 == 0 else 0)) % 5
    prob = round(((number * 37 + shift * (number % 4)) % 50) / 50, 2)  # ~50 distinct values
    return json.dumps({"label": "pos" if stars >= 3 else "neg", "prob": prob, "stars": stars})


def test_analyze_agree_and_report_show_the_same_figures(tmp_path: Path, fake_ollama_factory) -> None:
    server = fake_ollama_factory(models=("llama3.2", "mistral", "gemma3"), slots=4, responder=faked_answer)
    pd.DataFrame({"text": [f"item {i}" for i in range(60)]}).to_csv(tmp_path / "items.csv", index=False)
    run = corral("analyze", "items.csv", "--text-column", "text", "--json-keys", "label,prob,stars",
                 "--models", "llama3.2,mistral,gemma3", "--fanout", "-s", server.url, "-o", "labelled.csv",
                 cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    saved = json.loads((tmp_path / "labelled.csv.manifest.json").read_text())["agreement"]
    assert {k: kd["level"] for k, kd in saved["keys"].items()} == {
        "label": "nominal", "prob": "interval", "stars": "ordinal"}
    assert saved["keys"]["prob"]["confusion"] == []           # not a 50 × 50 table of "labels"
    assert len(saved["keys"]["prob"]["labels"]) > 20

    agree = corral("agree", "labelled.csv", "--json", "agree.json", cwd=tmp_path)
    assert agree.returncode == 0, agree.stderr
    printed = json.loads((tmp_path / "agree.json").read_text())
    python = agreement(pd.read_csv(tmp_path / "labelled.csv")).to_dict()
    assert printed == saved == python

    made = corral("report", "labelled.csv", "-o", "report.html", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    page = (tmp_path / "report.html").read_text()
    for kd in saved["keys"].values():
        lines = views.summary_lines(kd)
        for line in lines:
            assert line in agree.stdout
            assert html.escape(line) in page
        for row in views.pair_table(kd)[1]:
            assert "".join(f"<td class=num style=\"text-align:right\">{html.escape(c)}</td>"
                           for c in row[2:]) in page
    assert "fig-confusion-2-0" in page and "fig-confusion-1-0" not in page  # stars yes, prob no
