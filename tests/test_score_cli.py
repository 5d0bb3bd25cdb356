"""`python -m evaluators.score` end to end on a tiny model: outputs, temperature scaling, cache."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import yaml

from evaluators.benchmarks import BUNDLED, MMLU_PROX, resolve_source
from evaluators.score import main, parse_args, requests_for, settings_from_args
from orchestrator.config import load_config
from orchestrator.execution import scoring_settings
from orchestrator.plan import expand

REPO = Path(__file__).resolve().parents[1]


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
    for metric in ("accuracy", "entropy", "ece", "rms"):  # 95% bootstrap intervals beside them
        low, high = metrics[f"{metric}_ci_low"], metrics[f"{metric}_ci_high"]
        assert all(0 <= lo <= hi for lo, hi in zip(low, high, strict=True))
    assert all(lo <= v <= hi for lo, v, hi in zip(*(metrics[c] for c in (
        "accuracy_ci_low", "accuracy", "accuracy_ci_high")), strict=True))  # fmt: skip
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


def test_the_sweeps_evaluation_section_and_the_cli_ask_for_the_same_scores(tmp_path: Path) -> None:
    """Equal settings and requests: a sweep and the CLI share score-cache entries."""
    metrics = {"ece_bins": 10, "rms_bin_size": 20, "bootstrap_resamples": 0, "bootstrap_seed": 2}
    evaluation = {"mode": "loglik", "dtype": "float32", "max_batch_tokens": 512, "num_fewshot": 1}
    bench = {"languages": ["de", "sw"], "limit": 5, "subjects": ["cldr_months"]}
    (tmp_path / "model").mkdir()
    sweep = {
        "name": "t",
        "seed": 3,
        "models": {"m": {"source": "./model"}},
        "sft_datasets": {"d": {"format": "alpaca", "source": "bundled"}},
        "grid": {"learning_rate": [1e-4], "label_smoothing": [0.0], "model": ["m"]}
        | {"sft_dataset": ["d"]},
        "evaluation": {**evaluation, "metrics": metrics, "benchmarks": {"global_mmlu": bench}},
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    config = load_config(tmp_path / "sweep.yaml")

    argv = ["--model", "m", "--out", str(tmp_path), "--benchmarks", "global_mmlu", "--seed", "3"]
    argv += ["--languages", "de", "sw", "--limit", "5", "--subjects", "cldr_months"]
    argv += [f"--{k.replace('_', '-')}={v}" for k, v in {**evaluation, **metrics}.items()]
    args = parse_args(argv)
    assert settings_from_args(args) == scoring_settings(config)
    assert requests_for(args) == expand(config).splits


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


def test_default_output_is_one_line_per_split_on_a_cold_datasets_cache(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "-m", "evaluators.score", "--model", str(tiny_model_dir)]
    command += ["--out", str(out), "--languages", "de", "sw", "--limit", "2"]
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "cold-cache")}
    env.pop("HF_DATASETS_DISABLE_PROGRESS_BARS", None)
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert len(lines) == 5, lines  # (global_mmlu, mmlu_prox) x (de, sw), then where it wrote
    assert [line.split(":")[0] for line in lines[:4]] == [
        "[1/4] global_mmlu/de",
        "[2/4] global_mmlu/sw",
        "[3/4] mmlu_prox/de",
        "[4/4] mmlu_prox/sw",
    ]
    assert lines[4].startswith(f"wrote {out}/predictions.parquet")
    assert any((tmp_path / "cold-cache").iterdir())  # the cache really was filled from cold


def test_unknown_language_and_missing_split_fail_before_the_model_loads(
    tmp_path: Path, capsys
) -> None:
    mirror = tmp_path / "prox"
    shutil.copytree(resolve_source(MMLU_PROX, BUNDLED), mirror)
    (mirror / "ja" / "validation-00000-of-00001.parquet").unlink()
    args = ["--model", "no/such-model", "--out", str(tmp_path / "out")]
    assert main([*args, "--languages", "de", "xx", "am"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown language(s) xx (valid: global_mmlu: am ar ")
    assert err.count("\n") == 1

    prox = [*args, "--benchmarks", "mmlu_prox", "--source", f"mmlu_prox={mirror}"]
    assert main([*prox, "--languages", "ja", "--temperature-scaling"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: MMLU-ProX ja/test cannot be loaded from '{mirror}': the mirror has no "
        "ja/validation-00000-of-00001.parquet (hub layout: <config>/<split>-*.parquet)\n"
    )
    assert main([*prox, "--languages", "de", "--subjects", "cldr_nope"]) == 2
    assert "has no subject(s) ['cldr_nope']" in capsys.readouterr().err
