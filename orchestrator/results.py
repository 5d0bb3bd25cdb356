"""Record scoring results: MLflow metrics and artifacts, the long results table, the summary.

The long table (model, sft_dataset, smoothing, lr, benchmark, language, split, metric, value) is
the format the significance report reads (DESIGN.md, "Significance report"); dev/validation rows
appear only when the lr is selected on them, and go to MLflow as `eval_dev/...`; the selected
trials' rows then carry the metric in `lr_selected_by`.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import polars as pl
import yaml

from evaluators.evaluate import SplitResult
from evaluators.reliability import plot_reliability_overview
from orchestrator.config import SweepConfig
from orchestrator.execution import ResultKey, ScoredModel, scoring_settings
from orchestrator.plan import Plan, base_key, describe
from orchestrator.report import report_artifact_folder, write_report
from orchestrator.stats import with_selection
from orchestrator.tracking import SweepTracker

RESULTS_FILE = "results.parquet"


def _identity(model: ScoredModel) -> dict[str, object]:
    """The columns that name a model in the long table; base models: smoothing/lr null."""
    trial = model.trial
    return {
        "run": model.run_name,
        "model": trial.model if trial else model.key.removeprefix("base:"),
        "sft_dataset": trial.sft_dataset if trial else "none",
        "smoothing": trial.label_smoothing if trial else None,
        "lr": trial.learning_rate if trial else None,
    }


FLOAT_COLUMNS = dict.fromkeys(["smoothing", "lr", "ci_low", "ci_high"], pl.Float64)


def long_table(models: list[ScoredModel], results: dict[ResultKey, SplitResult]) -> pl.DataFrame:
    """One row per (model, benchmark, language, split, metric); base models: smoothing/lr null.
    `ci_low`/`ci_high`: the value's 95% bootstrap interval, where the metric has one."""
    by_key = {m.key: m for m in models}
    rows = []
    for (key, benchmark, language, split), result in results.items():
        identity = _identity(by_key[key])
        for metric, value in result.metrics.items():
            low, high = result.intervals.get(metric, (None, None))
            rows.append(
                {
                    **identity,
                    "benchmark": benchmark,
                    "language": language,
                    "split": split,
                    "metric": metric,
                    "value": float(value),
                    "ci_low": low,
                    "ci_high": high,
                }
            )
    return pl.DataFrame(rows, schema_overrides=FLOAT_COLUMNS)


def prediction_table(
    models: list[ScoredModel], results: dict[ResultKey, SplitResult]
) -> pl.DataFrame:
    """One row per scored question (confidence, correct), named like the long table: the
    report pools them into a reliability diagram per configuration."""
    by_key = {m.key: m for m in models}
    frames = [
        pl.DataFrame(
            {
                "confidence": result.predictions["confidence"],
                "correct": [
                    p == g
                    for p, g in zip(
                        result.predictions["predicted"], result.predictions["gold"], strict=True
                    )
                ],
            }
        ).with_columns(
            **{k: pl.lit(v) for k, v in _identity(by_key[key]).items()},
            benchmark=pl.lit(benchmark),
            split=pl.lit(split),
        )
        for (key, benchmark, _, split), result in results.items()
    ]
    # base models' smoothing/lr are null-typed literals: relaxed concat makes them Float64
    return pl.concat(frames, how="vertical_relaxed")


def mlflow_metrics(table: pl.DataFrame) -> dict[str, float]:
    """`eval/<benchmark>/<lang>/<metric>` and `eval/<benchmark>/mean/<metric>` for one model
    (`eval_dev/...` for dev/validation splits)."""
    prefix = pl.when(pl.col("split") == "test").then(pl.lit("eval")).otherwise(pl.lit("eval_dev"))
    table = table.with_columns(prefix=prefix)
    metrics = {
        f"{r['prefix']}/{r['benchmark']}/{r['language']}/{r['metric']}": r["value"]
        for r in table.iter_rows(named=True)
    }
    means = table.group_by("prefix", "benchmark", "metric").agg(pl.col("value").mean())
    for r in means.iter_rows(named=True):
        metrics[f"{r['prefix']}/{r['benchmark']}/mean/{r['metric']}"] = r["value"]
    return metrics


def run_params(config: SweepConfig, plan: Plan) -> dict[str, dict[str, object]]:
    """Each child run's params by ledger key: the grid point and the recipe, flat for MLflow's
    compare view; a base model's source."""
    params: dict[str, dict[str, object]] = {
        job.id: {
            "model": job.spec.model,
            "model_source": config.models[job.spec.model].source,
            "sft_dataset": job.spec.sft_dataset,
            "lr": job.spec.learning_rate,
            "smoothing": job.spec.label_smoothing,
            "seed": job.spec.seed,
            "trial_id": job.id,
            **{f"train.{k}": v for k, v in config.training.model_dump().items()},
        }
        for job in plan.jobs
    }
    for model in plan.base_models:
        params[base_key(model)] = {
            "model": model,
            "sft_dataset": "none",
            "model_source": config.models[model].source,
            "seed": config.seed,  # few-shot sampling when scoring, as on the trial runs
        }
    return params


def record_plan(config: SweepConfig, plan: Plan, tracker: SweepTracker) -> None:
    """The parent run's params and the resolved config and plan, before anything trains: a
    sweep that crashes on its first trial still documents what it was."""
    tracker.log_params(
        tracker.parent_id,
        {
            "trials": len(plan.trials),
            "base_models": len(plan.base_models),
            "splits": len(plan.splits),
            **{f"scoring.{k}": v for k, v in scoring_settings(config).model_dump().items()},
        },
    )
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "sweep.yaml").write_text(yaml.safe_dump(config.model_dump(), sort_keys=False))
        (Path(tmp) / "plan.txt").write_text(describe(config, plan))
        for name in ("sweep.yaml", "plan.txt"):
            tracker.log_artifact(tracker.parent_id, Path(tmp) / name)


def record_results(
    config: SweepConfig,
    tracker: SweepTracker,
    models: list[ScoredModel],
    failed: dict[str, str],
    results: dict[ResultKey, SplitResult],
) -> str:
    """The long results table and the report, on disk and in the parent run (each model's own
    run was recorded as it was scored); returns the summary to print."""
    table = with_selection(long_table(models, results), config.evaluation.select_lr_by)
    out = config.sweep_dir
    table.write_parquet(out / RESULTS_FILE)
    parent = tracker.parent_id
    tracker.log_metrics(parent, {"failed_trials": len(failed)})
    tracker.log_artifact(parent, out / RESULTS_FILE)
    # The report selects the lr by the sweep's own metric: by another one it would pick
    # checkpoints whose test splits were never scored (only the sweep's choices were).
    selection = config.evaluation.select_lr_by or "accuracy"
    report = write_report(
        table,
        out / "report",
        select_lr_by=selection,
        title=config.name,
        predictions=prediction_table(models, results),
    )
    for path in report.values():  # figures/ stays a folder, so the markdown's links resolve
        tracker.log_artifact(parent, path, report_artifact_folder(path, out / "report"))
    tracker.finish(parent, failed=bool(failed))
    return summary_text(table, failed, tracker.ui_hint(), out, report["html"])


def record_model(
    tracker: SweepTracker,
    model: ScoredModel,
    table: pl.DataFrame,
    results: dict[ResultKey, SplitResult],
) -> None:
    """A model's artifacts (predictions, per-split table, reliability diagrams), then its run
    is FINISHED; its metrics were logged as its splits were scored."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        predictions = pl.concat(
            [
                pl.DataFrame(r.predictions).with_columns(
                    benchmark=pl.lit(bench), language=pl.lit(lang), split=pl.lit(split)
                )
                for (_, bench, lang, split), r in sorted(results.items())
            ],
            how="diagonal_relaxed",
        )
        predictions.write_parquet(tmp_path / "predictions.parquet")
        table.pivot("metric", index=["benchmark", "language", "split"], values="value").write_csv(
            tmp_path / "split_metrics.csv"
        )
        tracker.log_artifact(model.run_id, tmp_path / "predictions.parquet")
        tracker.log_artifact(model.run_id, tmp_path / "split_metrics.csv")
        for benchmark in sorted({k[1] for k in results if k[3] == "test"}):
            png = tmp_path / f"reliability_{benchmark}.png"
            plot_reliability_overview(
                {
                    lang: r.reliability
                    for (_, b, lang, split), r in sorted(results.items())
                    if b == benchmark and split == "test"
                },
                title=f"{model.run_name} — {benchmark}",
                path=png,
            )
            tracker.log_artifact(model.run_id, png, "reliability")
    tracker.finish(model.run_id)


def summary_text(
    table: pl.DataFrame, failed: dict[str, str], ui_hint: str, out: Path, report: Path
) -> str:
    """Per configuration and benchmark: mean accuracy and ECE over test languages."""
    means = (
        table.filter(pl.col("metric").is_in(["accuracy", "ece"]), pl.col("split") == "test")
        .group_by("run", "benchmark", "metric")
        .agg(pl.col("value").mean())
        .with_columns(column=pl.col("benchmark") + " " + pl.col("metric"))
        .pivot("column", index="run", values="value")
        .sort("run")
    )
    columns = sorted(c for c in means.columns if c != "run")
    width = max(len(r) for r in means["run"]) if means.height else 10
    lines = [
        "",
        "Summary (means over languages; accuracy higher is better, ECE lower is better)",
        f"{'configuration':<{width}}  " + "  ".join(f"{c:>20}" for c in columns),
    ]
    for row in means.iter_rows(named=True):
        cells = [row[c] for c in columns]
        lines.append(
            f"{row['run']:<{width}}  "
            + "  ".join(
                f"{v:>20.4f}" if v is not None and not math.isnan(v) else f"{'-':>20}"
                for v in cells
            )
        )
    for name, error in failed.items():
        lines.append(f"FAILED {name}: {error.strip().splitlines()[-1] if error.strip() else ''}")
    lines += [
        "",
        f"results table: {out / RESULTS_FILE}",
        f"significance report: {report}",
        f"compare runs: {ui_hint}",
    ]
    return "\n".join(lines)
