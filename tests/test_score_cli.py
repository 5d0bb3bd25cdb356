"""`python -m evaluators.score` end to end on a tiny model: outputs, temperature scaling, cache."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl

from evaluators.score import main


def test_scores_splits_writes_outputs_and_reuses_the_cache(
    tmp_path: Path, tiny_model_dir: Path, capsys
) -> None:
    out = tmp_path / "out"
    args = [
        "--model",
        str(tiny_model_dir),
        "--out",
        str(out),
        "--languages",
        "de",
        "ja",
        "--limit",
        "3",
        "--dtype",
        "float32",
        "--temperature-scaling",
    ]
    assert main(args) == 0
    metrics = pl.read_csv(out / "split_metrics.csv")
    assert metrics.height == 4  # (global_mmlu, mmlu_prox) x (de, ja)
    assert set(metrics["n_questions"]) == {3.0}
    for column in ("accuracy", "entropy", "ece", "rms", "sce", "ace", "temperature", "ts_nll"):
        assert all(math.isfinite(v) for v in metrics[column])
    predictions = pl.read_parquet(out / "predictions.parquet")
    assert predictions.height == 12
    for probs, k in zip(predictions["probs"], predictions["num_options"], strict=True):
        assert len(probs) == k and abs(sum(probs) - 1.0) < 1e-9
    assert (out / "reliability_global_mmlu.png").stat().st_size > 0
    assert (out / "reliability" / "mmlu_prox_ja.png").is_file()
    first = capsys.readouterr().out

    cached = sorted(p.stat().st_mtime_ns for p in (out / "cache").iterdir())
    assert main(args) == 0
    assert sorted(p.stat().st_mtime_ns for p in (out / "cache").iterdir()) == cached
    assert capsys.readouterr().out.split("(")[0] == first.split("(")[0]


def test_unknown_source_benchmark_is_a_clear_error(tmp_path: Path, capsys) -> None:
    code = main(
        [
            "--model",
            "x",
            "--out",
            str(tmp_path),
            "--benchmarks",
            "global_mmlu",
            "--source",
            "mmlu_prox=/nope",
        ]
    )
    assert code == 2
    assert "--source for ['mmlu_prox']" in capsys.readouterr().err


def test_subject_filter(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "out"
    args = ["--model", str(tiny_model_dir), "--out", str(out), "--languages", "sw"]
    assert main([*args, "--benchmarks", "global_mmlu", "--subjects", "cldr_months"]) == 0
    predictions = pl.read_parquet(out / "predictions.parquet")
    assert set(predictions["subject"]) == {"cldr_months"} and predictions.height == 10
