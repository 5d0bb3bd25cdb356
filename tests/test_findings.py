"""Findings follow the numbers: counts and directions come from the table, and change with it."""

from __future__ import annotations

import numpy as np
import polars as pl

from orchestrator.findings import Finding
from orchestrator.report import build_report

LANGS = ["de", "fr", "ja", "sw", "yo", "zh"]
SHIFT = {  # metric: (base, smoothing 0, smoothing 0.1), added to a per-language level
    "ece": (0.0, 0.10, 0.02),
    "accuracy": (0.0, 0.05, 0.05),
    "entropy": (0.0, -0.5, 0.2),
}


def table(bump: float = 0.0) -> pl.DataFrame:
    """Datasets d1, d2 x benchmarks b1, b2 = four configurations per smoothing value; `bump`
    is added to the smoothing-0.1 ECE of d2 on b2 (every language)."""
    rng = np.random.default_rng(3)
    rows = []
    sides = (("base", None, 0), ("d1", 0.0, 1), ("d1", 0.1, 2), ("d2", 0.0, 1), ("d2", 0.1, 2))
    for dataset, smoothing, side in sides:
        for benchmark in ("b1", "b2"):
            for i, lang in enumerate(LANGS):
                for metric, shift in SHIFT.items():
                    value = 0.3 + i / 40 + shift[side] + rng.normal(0, 0.003)
                    if (dataset, smoothing, benchmark, metric) == ("d2", 0.1, "b2", "ece"):
                        value += bump
                    rows.append(("m", dataset, smoothing, None, benchmark, lang, metric, value))
    columns = ["model", "sft_dataset", "smoothing", "lr", "benchmark", "language", "metric"]
    return pl.DataFrame(rows, schema=[*columns, "value"], orient="row")


def sentences(t: pl.DataFrame) -> dict[tuple[str, str], str]:
    report = build_report(t)
    return {(f.contrast, f.metric): f.sentence() for group in report.findings for f in group}


def smoothing_difference(t: pl.DataFrame, metric: str) -> float:
    """Mean over (dataset, benchmark) of the mean over languages of `metric` at 0.1 minus 0."""
    tuned = t.filter(pl.col("metric") == metric, pl.col("sft_dataset") != "base")
    wide = tuned.pivot("smoothing", index=["sft_dataset", "benchmark", "language"], values="value")
    per_config = wide.group_by("sft_dataset", "benchmark").agg(
        (pl.col("0.1") - pl.col("0.0")).mean()
    )
    return float(per_config["0.1"].mean())


def test_findings_follow_the_numbers() -> None:
    before = sentences(table())
    ece = before[("Smoothing 0.1 vs 0", "ece")]
    assert ece == (
        "Smoothing 0.1 vs 0: ECE lower (better) in 4 of 4 model × dataset × benchmark "
        f"configurations, significantly in 4; mean difference "
        f"{smoothing_difference(table(), 'ece'):+.3f}."
    )
    assert before[("Tuned (smoothing 0) vs base", "ece")].startswith(
        "Tuned (smoothing 0) vs base: ECE higher (worse) in 4 of 4"
    )
    entropy = before[("Smoothing 0.1 vs 0", "entropy")]
    assert "entropy higher in 4 of 4" in entropy and "better" not in entropy
    assert "bits" in entropy and "worse" not in entropy

    # d2 on b2 now has a higher ECE with smoothing than without: the sentence says so
    after = sentences(table(bump=0.15))
    assert after[("Smoothing 0.1 vs 0", "ece")] == (
        "Smoothing 0.1 vs 0: ECE lower (better) in 3 of 4 model × dataset × benchmark "
        "configurations, significantly in 3; higher (worse) in 1 (m d2 b2), significantly in 1; "
        f"mean difference {smoothing_difference(table(bump=0.15), 'ece'):+.3f}."
    )
    assert after[("Smoothing 0.1 vs 0", "accuracy")] == before[("Smoothing 0.1 vs 0", "accuracy")]


def test_sentence_wording() -> None:
    tie = Finding("Smoothing 0.2 vs 0", "accuracy", 4, 2, 2, 1, 0, 0.001)
    assert tie.sentence() == (
        "Smoothing 0.2 vs 0: accuracy higher (better) in 2 of 4 model × dataset × benchmark "
        "configurations, significantly in 1; lower (worse) in 2, significantly in 0; "
        "mean difference +0.001."
    )
    unknown = Finding("Smoothing 0.1 vs 0", "f1", 3, 0, 2, 0, 2, -0.01)
    assert unknown.sentence() == (
        "Smoothing 0.1 vs 0: f1 lower in 2 of 3 model × dataset × benchmark configurations, "
        "significantly in 2; unchanged in 1; mean difference -0.010."
    )
