"""The report on the study's own published table (../shared/data/study_results_long.csv): it runs
as is, its smoothing-vs-0 tests equal scipy's paired t-test computed here from the CSV, and
`--family smoothing` Holm-corrects over exactly those tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy import stats

from orchestrator.report import main

STUDY = Path(__file__).resolve().parents[2] / "shared" / "data" / "study_results_long.csv"
KEYS = ["model", "sft_dataset", "benchmark", "metric"]
pytestmark = pytest.mark.skipif(not STUDY.exists(), reason=f"{STUDY} not present")


def smoothing_tests_from_csv() -> pl.DataFrame:
    """Smoothing beta vs 0 per (model, dataset, benchmark, metric), paired over languages."""
    study = pl.read_csv(STUDY).filter(pl.col("sft_dataset") != "base")
    zero = study.filter(pl.col("smoothing") == 0.0).drop("smoothing", "lr")
    rows = []
    for (beta, *key), side in study.filter(pl.col("smoothing") > 0).group_by("smoothing", *KEYS):
        pairs = side.join(zero, on=[*KEYS, "language"], suffix="_zero").sort("language")
        result = stats.ttest_rel(pairs["value"], pairs["value_zero"])
        rows.append((*key, beta, pairs.height, result.statistic, result.pvalue))
    return pl.DataFrame(rows, schema=[*KEYS, "smoothing_a", "n", "t_ref", "p_ref"], orient="row")


def brute_force_holm(p: list[float]) -> list[float]:
    """Holm by its definition: the i-th smallest p times (m - i + 1), made monotone, capped."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    adjusted, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, (len(p) - rank) * p[i])
        adjusted[i] = min(1.0, running)
    return adjusted


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("study")
    for family in ("all", "smoothing"):
        argv = ["--results", str(STUDY), "--out", str(out / family), "--family", family]
        assert main(argv) == 0
    return {family: out / family for family in ("all", "smoothing")}


def test_smoothing_comparisons_equal_scipy_paired_over_languages(reports) -> None:
    comparisons = pl.read_csv(reports["all"] / "comparisons.csv")
    ours = comparisons.filter(pl.col("contrast") == "smoothing vs 0")
    reference = smoothing_tests_from_csv()
    joined = ours.join(reference, on=[*KEYS, "smoothing_a"], how="full", coalesce=True)
    assert ours.height == reference.height == joined.height == 3 * 3 * 2 * 4 * 2
    assert (joined["smoothing_b"] == 0.0).all() and (joined["n"] == joined["n_right"]).all()
    assert set(joined["n"]) == {42, 29}  # GlobalMMLU, MMLU-ProX languages
    assert joined["t"].to_numpy() == pytest.approx(joined["t_ref"].to_numpy(), rel=1e-9)
    assert joined["p"].to_numpy() == pytest.approx(joined["p_ref"].to_numpy(), rel=1e-9)
    assert comparisons.filter(pl.col("contrast") == "tuned vs base")["smoothing_b"].is_null().all()
    assert comparisons.height == 360  # + tuned vs base: 27 tuned configurations x 2 x 4


def test_family_smoothing_corrects_over_exactly_those_tests(reports) -> None:
    every = pl.read_csv(reports["all"] / "comparisons.csv")
    family = pl.read_csv(reports["smoothing"] / "comparisons.csv")
    assert set(family["contrast"]) == {"smoothing vs 0"} and family.height == 144
    assert family["p_holm"].to_list() == pytest.approx(brute_force_holm(family["p"].to_list()))
    assert (family["significant"] == (family["p_holm"] < 0.05)).all()
    # the same tests, corrected over all 360 in the default family: never smaller
    same = family.join(every, on=["contrast", *KEYS, "smoothing_a"], suffix="_all")
    assert same["p"].to_numpy() == pytest.approx(same["p_all"].to_numpy())
    assert same.height == 144 and np.all(
        same["p_holm_all"].to_numpy() >= same["p_holm"].to_numpy() - 1e-15
    )
    assert every["p_holm"].to_list() == pytest.approx(brute_force_holm(every["p"].to_list()))


def test_report_opens_with_findings(reports) -> None:
    md = (reports["smoothing"] / "report.md").read_text()
    lines = [line for line in md.splitlines() if line]
    assert lines[1] == "## Findings" and "144 tests of the family (smoothing vs 0)" in lines[2]
    assert "Smoothing 0.1 vs 0: ECE lower (better) in" in md and "Tuned" not in md
    assert md.index("## Findings") < md.index("## Table 1") < md.index("## Comparisons")
    assert md.rstrip().endswith("|")  # the comparison table comes last
