"""Significance report: statistics vs scipy called directly, Holm vs hand values and the
step-down definition, Table 1 vs hand-computed means, lr selection, marks, files, MLflow."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy import stats

from orchestrator.report import ReportError, build_report, main, write_report
from orchestrator.stats import compare, holm, with_selection

LANGS = {"global_mmlu": [f"g{i}" for i in range(10)], "mmlu_prox": [f"p{i}" for i in range(9)]}
BASE_SHIFT = {"accuracy": -0.05, "entropy": 0.3, "ece": -0.1}  # base: less accurate, calibrated
CONFIGS = [  # (model, SFT dataset), each tuned with smoothing {0, 0.1} x LRS
    ("m1", "alpaca"),
    ("m1", "tulu"),
    ("m2", "alpaca"),
]
LRS = (1e-5, 2e-5)


def best_lr(smoothing: float) -> float:
    """The synthetic data make 1e-5 best without smoothing and 2e-5 best with it."""
    return 1e-5 if smoothing == 0.0 else 2e-5


def synthetic_table(seed: int = 0) -> pl.DataFrame:
    """Seeded long table: a per-language difficulty shared by all configurations, so the paired
    test has power; smoothing 0.1 lowers ECE clearly and accuracy not at all."""
    rng = np.random.default_rng(seed)
    rows = []
    difficulty = {lang: rng.normal(0, 0.05) for langs in LANGS.values() for lang in langs}

    def add(run, model, dataset, smoothing, lr, shift):
        for bench, langs in LANGS.items():
            for lang in langs:
                d = difficulty[lang]
                values = {
                    "accuracy": 0.5 + d + shift["accuracy"] + rng.normal(0, 0.01),
                    "entropy": 1.5 - d + shift["entropy"] + rng.normal(0, 0.02),
                    "ece": 0.15 + d / 2 + shift["ece"] + rng.normal(0, 0.005),
                    "rms": 0.18 + d / 2 + shift["ece"] + rng.normal(0, 0.005),
                    "nll": 1.2 - d + rng.normal(0, 0.02),
                }
                for metric, value in values.items():
                    rows.append((run, model, dataset, smoothing, lr, bench, lang, metric, value))

    for model in ("m1", "m2"):
        add(f"base:{model}", model, "none", None, None, BASE_SHIFT)
    for model, dataset in CONFIGS:
        for smoothing in (0.0, 0.1):
            for lr in LRS:
                good = lr == best_lr(smoothing)
                shift = {
                    "accuracy": 0.0 if good else -0.04,
                    "entropy": 0.4 * smoothing * 10 - 0.5,
                    "ece": -0.06 * smoothing * 10,
                }
                run = f"{model}|{dataset}|lr={lr}|ls={smoothing}"
                add(run, model, dataset, smoothing, lr, shift)
    columns = ["run", "model", "sft_dataset", "smoothing", "lr", "benchmark", "language"]
    schema = {c: pl.String for c in columns} | {"smoothing": pl.Float64, "lr": pl.Float64}
    return pl.DataFrame(
        rows, schema={**schema, "metric": pl.String, "value": pl.Float64}, orient="row"
    )


@pytest.fixture(scope="module")
def table() -> pl.DataFrame:
    return synthetic_table()


@pytest.fixture(scope="module")
def report(table: pl.DataFrame):
    return build_report(table)


def values_of(table, model, dataset, smoothing, lr, bench, metric) -> dict[str, float]:
    """One configuration's value per language, straight from the raw table."""
    rows = table.filter(
        (pl.col("model") == model)
        & (pl.col("sft_dataset") == dataset)
        & (pl.col("smoothing").is_null() if smoothing is None else pl.col("smoothing") == smoothing)
        & (pl.col("lr").is_null() if lr is None else pl.col("lr") == lr)
        & (pl.col("benchmark") == bench)
        & (pl.col("metric") == metric)
    )
    return dict(zip(rows["language"], rows["value"], strict=True))


# ---- statistics ---------------------------------------------------------------------------------


def test_holm_hand_example() -> None:
    # sorted: .005*4=.02, .01*3=.03, .03*2=.06, .04*1=.04 -> running max .06
    assert np.allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    assert np.allclose(holm([0.5, 0.6]), [1.0, 1.0])  # capped at 1
    adjusted = holm([0.02, math.nan, 0.01])  # NaN stays out of the family: m = 2
    assert np.isnan(adjusted[1]) and np.allclose(adjusted[[0, 2]], [0.02, 0.02])
    assert holm([]).size == 0


def step_down_rejections(p: np.ndarray, alpha: float) -> set[int]:
    """Holm's procedure by its definition: reject in order while p_(i) <= alpha / (m - i)."""
    rejected = set()
    for i, index in enumerate(np.argsort(p, kind="stable")):
        if p[index] > alpha / (p.size - i):
            break
        rejected.add(int(index))
    return rejected


def test_holm_matches_step_down_procedure() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        p = rng.uniform(0, 0.1, size=rng.integers(1, 12)) ** rng.uniform(0.5, 3)
        adjusted = holm(p)
        for alpha in (0.001, 0.01, 0.05, 0.1):
            assert set(np.flatnonzero(adjusted <= alpha)) == step_down_rejections(p, alpha)


def test_compare_matches_scipy() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(0.5, 0.1, 12), rng.normal(0.45, 0.1, 12)
    paired = compare(a, b, "paired")
    ref = stats.ttest_rel(a, b)
    diff = a - b
    assert (paired.statistic, paired.p, paired.n) == pytest.approx((ref.statistic, ref.pvalue, 12))
    assert paired.effect_size == pytest.approx(diff.mean() / diff.std(ddof=1))

    welch = compare(a, b[:9], "welch")
    ref = stats.ttest_ind(a, b[:9], equal_var=False)
    assert (welch.statistic, welch.p, welch.df) == pytest.approx(
        (ref.statistic, ref.pvalue, ref.df)
    )
    pooled = math.sqrt((11 * a.var(ddof=1) + 8 * b[:9].var(ddof=1)) / 19)
    g = (a.mean() - b[:9].mean()) / pooled * (1 - 3 / (4 * 21 - 9))
    assert welch.effect_size == pytest.approx(g) and welch.n == 21

    wilcoxon = compare(a, b, "wilcoxon")
    ref = stats.wilcoxon(a, b)
    assert (wilcoxon.statistic, wilcoxon.p) == pytest.approx((ref.statistic, ref.pvalue))
    ranks = stats.rankdata(np.abs(diff))
    r = (ranks[diff > 0].sum() - ranks[diff < 0].sum()) / ranks.sum()
    assert wilcoxon.effect_size == pytest.approx(r)

    with pytest.raises(ValueError, match="at least 2"):
        compare(a[:1], b[:1])
    assert math.isnan(compare(a, a.copy(), "wilcoxon").p)  # no difference at all: undefined


# ---- report contents ----------------------------------------------------------------------------


def test_lr_selection_picks_best_mean_accuracy(report, table: pl.DataFrame) -> None:
    for row in report.selection.iter_rows(named=True):
        means = {
            lr: np.mean(
                [
                    v
                    for bench in LANGS
                    for v in values_of(
                        table,
                        row["model"],
                        row["sft_dataset"],
                        row["smoothing"],
                        lr,
                        bench,
                        "accuracy",
                    ).values()
                ]
            )
            for lr in LRS
        }
        assert row["lr"] == max(means, key=means.get) == best_lr(row["smoothing"])
        assert row["score"] == pytest.approx(means[row["lr"]])
    assert report.selection.height == len(CONFIGS) * 2


def test_lr_selection_uses_dev_split_when_present(table: pl.DataFrame) -> None:
    # dev rows say the *other* lr is best: the selection must follow dev, the report use test
    dev = table.with_columns(
        split=pl.lit("dev"),
        value=pl.when(pl.col("metric") == "accuracy")
        .then(pl.when(pl.col("lr") == 2e-5).then(1.0).otherwise(0.0))
        .otherwise(pl.col("value")),
    )
    both = pl.concat([table.with_columns(split=pl.lit("test")), dev])
    report = build_report(both)
    assert set(report.selection["lr"]) == {2e-5}
    assert any("dev/validation" in note for note in report.notes)
    no_dev = both.filter((pl.col("split") == "test") | (pl.col("sft_dataset") != "tulu"))
    assert any("Left out" in n and "m1/tulu/0.0" in n for n in build_report(no_dev).notes)
    assert any("optimistic" in note for note in build_report(table).notes)


def test_a_recorded_sweep_selection_is_taken_not_selected_again(table: pl.DataFrame) -> None:
    # The sweep selected lr 1e-5 everywhere by ECE on dev (as `with_selection` records it);
    # the report's own accuracy rule would pick 2e-5 for smoothing 0.1 (`best_lr`).
    dev = table.with_columns(split=pl.lit("dev"))
    test = table.filter(pl.col("lr").is_null() | (pl.col("lr") == 1e-5))
    both = pl.concat([test.with_columns(split=pl.lit("test")), dev])
    recorded = with_selection(both, "ece")
    assert set(recorded.filter(pl.col("lr_selected_by") == "ece")["lr"]) == {1e-5}

    report = build_report(recorded, select_lr_by="accuracy")
    assert set(report.selection["lr"]) == {1e-5} and report.select_lr_by == "ece"
    assert report.selection.height == len(CONFIGS) * 2
    assert any("the sweep selected, by mean ece" in note for note in report.notes)
    means = dev.filter(pl.col("metric") == "ece", pl.col("lr") == 1e-5)
    for row in report.selection.iter_rows(named=True):  # shown with the dev score it had
        mine = means.filter(
            pl.col("model") == row["model"],
            pl.col("sft_dataset") == row["sft_dataset"],
            pl.col("smoothing") == row["smoothing"],
        )
        assert row["score"] == pytest.approx(mine["value"].mean())
        assert "1e-05: " in row["candidates"] and "2e-05: " in row["candidates"]
    # without the record the report selects for itself, and loses the configurations whose
    # chosen lr has no test rows
    assert set(build_report(both, select_lr_by="accuracy").selection["lr"]) == {1e-5, 2e-5}


def test_table1_means_match_hand_computation(report, table: pl.DataFrame) -> None:
    t1 = report.table1
    assert t1.height == (len(CONFIGS) * 2 + 2) * 2 * 4  # configs (+ base) x benchmarks x metrics
    for row in t1.iter_rows(named=True):
        base = row["sft_dataset"] == "base"  # the report's label; the sweep writes "none"
        lr = None if base else best_lr(row["smoothing"])
        expected = np.mean(
            list(
                values_of(
                    table, row["model"], "none" if base else row["sft_dataset"],
                    row["smoothing"], lr, row["benchmark"], row["metric"],
                ).values()
            )
        )  # fmt: skip
        assert row["mean"] == pytest.approx(expected) and row["lr"] == lr
        assert row["n_languages"] == len(LANGS[row["benchmark"]])


def test_comparisons_match_scipy_and_holm(report, table: pl.DataFrame) -> None:
    c = report.comparisons
    # per (model, dataset): 1 smoothing comparison + 2 vs base; x 2 benchmarks x 4 metrics
    assert c.height == len(CONFIGS) * 3 * 2 * 4 and report.skipped == []
    row = c.filter(
        (pl.col("contrast") == "smoothing vs 0") & (pl.col("model") == "m1")
        & (pl.col("sft_dataset") == "tulu") & (pl.col("benchmark") == "mmlu_prox")
        & (pl.col("metric") == "ece")
    ).row(0, named=True)  # fmt: skip
    a = values_of(table, "m1", "tulu", 0.1, 2e-5, "mmlu_prox", "ece")
    b = values_of(table, "m1", "tulu", 0.0, 1e-5, "mmlu_prox", "ece")
    langs = sorted(a)
    ref = stats.ttest_rel([a[x] for x in langs], [b[x] for x in langs])
    assert (row["t"], row["p"], row["n"]) == pytest.approx((ref.statistic, ref.pvalue, 9))
    assert row["mean_diff"] == pytest.approx(np.mean([a[x] - b[x] for x in langs]))
    assert c["p_holm"].to_numpy() == pytest.approx(holm(c["p"].to_numpy()))
    assert row["significant"] and row["mean_diff"] < 0


@pytest.mark.parametrize("test", ["welch", "wilcoxon"])
def test_other_tests_match_scipy(table: pl.DataFrame, test: str) -> None:
    c = build_report(table, test=test).comparisons
    row = c.filter(
        (pl.col("contrast") == "tuned vs base") & (pl.col("model") == "m2")
        & (pl.col("config_a") == "alpaca ls=0") & (pl.col("benchmark") == "global_mmlu")
        & (pl.col("metric") == "accuracy")
    ).row(0, named=True)  # fmt: skip
    a = values_of(table, "m2", "alpaca", 0.0, 1e-5, "global_mmlu", "accuracy")
    b = values_of(table, "m2", "none", None, None, "global_mmlu", "accuracy")
    xa, xb = [a[k] for k in sorted(a)], [b[k] for k in sorted(a)]
    ref = stats.ttest_ind(xa, xb, equal_var=False) if test == "welch" else stats.wilcoxon(xa, xb)
    assert (row["W" if test == "wilcoxon" else "t"], row["p"]) == pytest.approx(
        (ref.statistic, ref.pvalue)
    )


def test_bold_and_significance_marks(report, tmp_path: Path) -> None:
    t1 = report.table1
    ece = t1.filter((pl.col("metric") == "ece") & (pl.col("sft_dataset") != "base"))
    # lower ECE is better: smoothing 0.1 is bold, and marked as differing from smoothing 0
    assert ece.filter(pl.col("best"))["smoothing"].to_list() == [0.1] * 6
    assert all("*" in m for m in ece.filter(pl.col("smoothing") == 0.1)["marks"])
    assert not t1.filter(pl.col("sft_dataset") == "base")["best"].any()  # base: group of one
    assert not any("*" in m for m in t1.filter(pl.col("smoothing") == 0.0)["marks"])
    for row in t1.iter_rows(named=True):  # marks agree with the Holm p-values
        assert ("*" in row["marks"]) == ((row["p_holm_vs_smoothing0"] or 1) < 0.05)
        assert ("†" in row["marks"]) == ((row["p_holm_vs_base"] or 1) < 0.05)
    entropy = t1.filter((pl.col("metric") == "entropy") & pl.col("best"))
    assert entropy["smoothing"].to_list() == [0.0] * 6  # lower entropy counts as better

    paths = write_report(pl.DataFrame(synthetic_table()), tmp_path)
    md = paths["markdown"].read_text()
    m1_tulu = next(line for line in md.splitlines() if line.startswith("| m1 | tulu ls=0.1 |"))
    cells = m1_tulu.split(" | ")
    ece_cell = cells[3 + 2]  # model, configuration, lr, then accuracy, entropy, ece
    assert ece_cell.startswith("**") and "\\*" in ece_cell and "†" in ece_cell
    assert "<strong>" in paths["html"].read_text()


def test_files_and_csv_round_trip(table: pl.DataFrame, tmp_path: Path) -> None:
    csv = tmp_path / "results.csv"
    table.write_csv(csv)  # base rows: empty smoothing/lr cells
    assert main(["--results", str(csv), "--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {
        "report.md", "report.html", "comparisons.csv", "table1.csv", "figures",
    }  # fmt: skip
    md = (out / "report.md").read_text()
    for heading in ("Table 1", "Comparisons", "Per-language results", "Reliability diagrams"):
        assert f"## {heading}" in md
    assert "### global_mmlu ece: m1" in md and "| g9 |" in md
    assert pl.read_csv(out / "comparisons.csv").height == 72


# ---- errors -------------------------------------------------------------------------------------


def test_missing_columns_are_named(table: pl.DataFrame) -> None:
    with pytest.raises(ReportError, match="lacks column.*smoothing, language"):
        build_report(table.drop("smoothing", "language"))


def test_too_few_languages_are_skipped_and_noted(table: pl.DataFrame, tmp_path: Path) -> None:
    # m2's base model was scored on a single MMLU-ProX language only
    one = table.filter(
        (pl.col("model") != "m2") | (pl.col("sft_dataset") != "none")
        | (pl.col("benchmark") != "mmlu_prox") | (pl.col("language") == "p0")
    )  # fmt: skip
    report = build_report(one)
    assert len(report.skipped) == 2 * 4  # 2 tuned configs of m2 x 4 metrics
    assert all("at least 2" in s for s in report.skipped)
    md = write_report(one, tmp_path)["markdown"].read_text()
    assert "## Skipped comparisons (8)" in md


def test_bad_inputs_give_clear_errors(table: pl.DataFrame, tmp_path: Path, capsys) -> None:
    with pytest.raises(ReportError, match="share their key"):
        build_report(pl.concat([table, table.head(1)]))
    with pytest.raises(ReportError, match="no direction"):
        build_report(table, select_lr_by="n_questions")
    assert main(["--results", str(tmp_path / "nope.parquet")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ---- MLflow -------------------------------------------------------------------------------------


def test_mlflow_round_trip(table: pl.DataFrame, tmp_path: Path, capsys) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("demo", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(experiment, tags={"calsweep.kind": "sweep"}).info.run_id
    child = client.create_run(
        experiment,
        run_name="m1|alpaca",
        tags={"calsweep.kind": "trial", "mlflow.parentRunId": parent},
    ).info.run_id
    png = tmp_path / "reliability_global_mmlu.png"
    png.write_bytes(b"\x89PNG")
    client.log_artifact(child, str(png), "reliability")

    assert main(["--experiment", "demo", "--tracking-uri", uri, "--out", str(tmp_path / "r")]) == 2
    assert "no results.parquet artifact" in capsys.readouterr().err
    assert main(["--experiment", "nope", "--tracking-uri", uri]) == 2
    assert "existing: Default, demo" in capsys.readouterr().err

    table.write_parquet(tmp_path / "results.parquet")
    client.log_artifact(parent, str(tmp_path / "results.parquet"))
    assert main(["--experiment", "demo", "--tracking-uri", uri, "--out", str(tmp_path / "r")]) == 0
    logged = {f.path for f in client.list_artifacts(parent, "report")}
    assert logged == {
        "report/report.md", "report/report.html", "report/comparisons.csv", "report/table1.csv",
        "report/figures",
    }  # fmt: skip
    md = (tmp_path / "r" / "report.md").read_text()
    assert f"m1\\|alpaca: runs:/{child}/reliability/reliability_global_mmlu.png" in md
