"""Significance report of a sweep: markdown, HTML and CSV from a long results table.

`python -m orchestrator.report --experiment NAME [--tracking-uri URI]` reads `results.parquet`
from the sweep's parent MLflow run (tag calsweep.kind=sweep, no parent) and logs the report back
to that run under `report/`; `--results TABLE.{csv,parquet}` reports on any table in the long
format of DESIGN.md (orchestrator.table: base-model rows have sft_dataset `base`, `none` or
empty; an empty lr is one lr per configuration; unknown benchmarks and metrics pass through).
Outputs in `--out` (default ./report-<experiment or file stem>): report.md, report.html
(self-contained), comparisons.csv (one row per test) and table1.csv (long: one row per
configuration x benchmark x metric, with its mean, bold flag, Holm p-values and marks).

The report opens with its findings (orchestrator.findings: sentences counted from the tests),
then its figures (orchestrator.figures: PNGs in `figures/`, linked from the markdown, embedded in
the HTML; a forest plot of the differences, per-language bars, accuracy vs ECE, and pooled
reliability diagrams when `write_report` gets predictions), then Table 1, the per-language
values, and ends with the table of every comparison; one list of blocks is written as markdown
and as HTML (orchestrator.render).

What is compared and how (details in orchestrator.stats):
- A configuration is (model, sft_dataset, smoothing) with one lr: the table's own where its lr
  is empty, else selected by `--select-lr-by` (mean over all languages of all benchmarks,
  direction from HIGHER_IS_BETTER). With a `split` column holding dev/validation rows the
  selection uses those rows and the report the others; otherwise selection sees the reported
  rows themselves (optimistic; the report says so).
- Per benchmark and metric (accuracy, entropy, ECE, RMS and any metric calsweep does not know):
  smoothing beta vs 0 (same model and dataset) and every tuned configuration vs its base model,
  paired over the languages both sides have; Holm across the `--family` (all tests, smoothing
  vs 0 only, tuned vs base only).
- Table 1: bold = better value among the smoothing values of one (model, dataset, benchmark,
  metric), none for a metric without a direction; `*` = differs from smoothing 0, `†` = differs
  from the base model (Holm p < alpha). Entropy counts lower as better only by convention
  (evaluators.metrics.HIGHER_IS_BETTER).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from evaluators.metrics import HIGHER_IS_BETTER
from orchestrator.findings import Finding, describe, findings, language_notes, method_sentence
from orchestrator.render import Block, Bold, Picture, Table, to_html, to_markdown
from orchestrator.stats import (
    EFFECT_KIND,
    FAMILIES,
    MARKS,
    SELECTED_BY_COLUMN,
    SMOOTHING_VS_ZERO,
    TESTS,
    TUNED_VS_BASE,
    Config,
    Family,
    ReportError,
    Values,
    apply_selection,
    is_base,
    plan_comparisons,
    recorded_selection,
    run_family,
    select_lr,
    split_for_selection,
    table1,
)
from orchestrator.table import read_table, validate

if TYPE_CHECKING:  # mlflow loads only when an experiment is read: --help stays fast
    import mlflow.tracking

    from orchestrator.figures import Image, Intervals

REPORT_METRICS = ("accuracy", "entropy", "ece", "rms")
NOT_METRICS = ("n_questions",)  # a split's size, which the sweep's table carries as a metric
PER_LANGUAGE_METRICS = ("accuracy", "ece")
RESULTS_FILE = "results.parquet"  # the name orchestrator.results logs to the parent run
OUTPUTS = {
    "markdown": "report.md",
    "html": "report.html",
    "comparisons": "comparisons.csv",
    "table1": "table1.csv",
}
__all__ = ["ReportError", "build_report", "main", "read_table", "write_report"]


@dataclass
class Report:
    """Everything the renderers need; built once by `build_report`."""

    test: str
    alpha: float
    family: str
    select_lr_by: str
    selection: pl.DataFrame  # model, sft_dataset, smoothing, lr, score, candidates
    configs: list[Config]
    benchmarks: list[str]
    metrics: tuple[str, ...]
    values: Values
    comparisons: pl.DataFrame
    table1: pl.DataFrame
    findings: list[list[Finding]]
    skipped: list[str]
    notes: list[str]
    intervals: Intervals  # (config, benchmark, metric) -> language -> (ci_low, ci_high); may be {}


def report_metrics(
    table: pl.DataFrame, metrics: tuple[str, ...] | None
) -> tuple[tuple[str, ...], list[str]]:
    """The metrics to report and a note on those left out. Default: REPORT_METRICS, then every
    metric without a direction (passed through); other known metrics need `metrics`."""
    present = list(dict.fromkeys(table["metric"]))
    if metrics is not None:
        if absent := [m for m in metrics if m not in present]:
            raise ReportError(
                f"no rows for metric(s) {', '.join(absent)}; the table has {', '.join(present)}"
            )
        return tuple(metrics), []
    unknown = [m for m in present if m not in HIGHER_IS_BETTER and m not in NOT_METRICS]
    chosen = (*(m for m in REPORT_METRICS if m in present), *unknown)
    if not chosen:
        raise ReportError(f"no metric to report; the table has {', '.join(present)}")
    notes = []
    if unknown:
        notes.append(
            f"Metric(s) {', '.join(unknown)} unknown to calsweep: reported without a direction "
            "(no bold value, no better/worse)."
        )
    if left := [m for m in present if m not in chosen and m not in NOT_METRICS]:
        notes.append(f"Also in the table, not reported: {', '.join(left)} (see --metrics).")
    return chosen, notes


def lr_selection(
    table: pl.DataFrame, select_lr_by: str
) -> tuple[pl.DataFrame, pl.DataFrame, list[str], str]:
    """(selection, rows to report, notes, the metric selected by): the lr of each configuration
    that has several, as the table records it (a sweep's choice) or selected by `select_lr_by`."""
    selection_rows, rows, how = split_for_selection(table)
    keys = ["model", "sft_dataset", "smoothing"]
    tuned = rows.filter(~is_base())
    fixed = tuned.filter(pl.col("lr").is_null()).unique(keys).height
    notes = []
    if fixed:
        which = (
            "every configuration"
            if fixed == tuned.unique(keys).height
            else f"{fixed} configuration{'s' * (fixed != 1)}"
        )
        notes.append(
            f"Learning rate: the table gives one lr for {which} (empty lr), taken as already "
            "selected; no lr is selected for these."
        )
    recorded = recorded_selection(table)
    if recorded is None:
        selection = select_lr(selection_rows, select_lr_by)
        how = f"selected by mean {select_lr_by} {how}"
    else:  # the sweep's own choice, shown with every candidate's score
        chosen, select_lr_by = recorded
        scores = select_lr(selection_rows, select_lr_by).drop("lr", "score")
        every = selection_rows.filter(pl.col("metric") == select_lr_by)
        means = every.group_by(*keys, "lr").agg(score=pl.col("value").mean())
        selection = chosen.join(means, on=[*keys, "lr"], how="left").join(scores, on=keys)
        how = (
            f"the one the sweep selected, by mean {select_lr_by} on the dev/validation rows "
            f"(column {SELECTED_BY_COLUMN}), not selected again"
        )
    if tuned.filter(pl.col("lr").is_not_null()).height:
        notes.append(f"Learning rate: {how}.")
        with_lr = tuned.filter(pl.col("lr").is_not_null())
        if (unselected := with_lr.join(selection, on=keys, how="anti").unique(keys)).height:
            names = ", ".join(
                "/".join(map(str, r)) for r in unselected.select(keys).sort(keys).rows()
            )
            notes.append(f"Left out, no rows to select an lr on: {names}.")
    return selection, rows, notes, select_lr_by


def table_intervals(rows: pl.DataFrame, configs: list[Config]) -> Intervals:
    """The table's `ci_low`/`ci_high` per reported configuration (none for older tables)."""
    if not {"ci_low", "ci_high"} <= set(rows.columns):
        return {}
    by_key = {(c.model, c.sft_dataset, c.smoothing, c.lr): c for c in configs}
    bounds = [pl.col(c).cast(pl.Float64, strict=False) for c in ("ci_low", "ci_high")]
    rows = rows.with_columns(bounds).drop_nulls(["ci_low", "ci_high"])
    intervals: Intervals = {}
    columns = ("model", "sft_dataset", "smoothing", "lr", "benchmark", "metric", "language")
    for *key, benchmark, metric, language, low, high in rows.select(
        *columns, "ci_low", "ci_high"
    ).iter_rows():
        if (config := by_key.get(tuple(key))) is not None:
            intervals.setdefault((config, benchmark, metric), {})[language] = (low, high)
    return intervals


def build_report(
    table: pl.DataFrame,
    test: str = "paired",
    select_lr_by: str = "accuracy",
    alpha: float = 0.05,
    metrics: tuple[str, ...] | None = None,
    family: Family = "all",
) -> Report:
    """Validate, take or select one lr per configuration, run the family of tests, build Table 1
    and the findings."""
    if test not in TESTS:
        raise ReportError(f"unknown test {test!r}; choose one of {', '.join(TESTS)}")
    if family not in FAMILIES:
        raise ReportError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    table, notes = validate(table)
    metrics, metric_notes = report_metrics(table, metrics)
    selection, rows, lr_notes, select_lr_by = lr_selection(table, select_lr_by)
    configs, values = apply_selection(rows, selection)
    benchmarks = sorted({b for _, b, _ in values})
    planned, skipped = plan_comparisons(configs, benchmarks, values, metrics, family)
    comparisons, failed = run_family(planned, test, alpha)  # type: ignore[arg-type]
    summary = table1(configs, benchmarks, values, comparisons, metrics, alpha)
    notes = [describe(configs, values), *lr_notes, *metric_notes, *notes]
    notes += language_notes(comparisons)
    return Report(
        test, alpha, family, select_lr_by, selection, configs, benchmarks, metrics, values,
        comparisons, summary, findings(comparisons, metrics), skipped + failed, notes,
        table_intervals(rows, configs),
    )  # fmt: skip


# ---- the report's blocks (orchestrator.render writes them as markdown and as HTML) -------------


def _num(x: float | None, spec: str = ".3f") -> str:
    return "–" if x is None or not np.isfinite(x) else format(x, spec)


def report_blocks(
    report: Report,
    title: str,
    figures: list[str] | None,
    images: list[tuple[Image, str]] | None = None,
    has_predictions: bool = False,
) -> list[Block]:
    """The report's content in order, findings first, then figures, every comparison last; both
    renderers consume it, so md and HTML agree. `images`: (figure, its PNG as a data URI)."""
    c = report.comparisons
    blocks: list[Block] = [("h1", f"Significance report: {title}"), ("h2", "Findings")]
    if c.height:
        blocks.append(("p", method_sentence(report.test, report.alpha, report.family, c.height)))
        for group in report.findings:
            blocks += [("h3", group[0].contrast), ("list", [f.sentence() for f in group])]
    else:
        blocks.append(("p", "No comparison ran (see the skipped comparisons below)."))
    if images:
        blocks.append(("h2", "Figures"))
        for image, uri in images:
            src = image.path.as_posix()
            blocks += [
                ("h3", image.title),
                ("figure", Picture(src, image.title, image.caption, uri)),
            ]
    pooled = (
        "Pooled reliability diagrams: in Figures above."
        if has_predictions
        else "Pooled reliability diagrams need predictions (per-question confidence and "
        "correctness: a sweep, or evaluators.score's predictions.parquet); this table has none."
    )
    if images and not has_predictions:
        blocks.append(("p", pooled))
    blocks += [("h2", "Data and method"), ("list", report.notes)]
    entropy = " Entropy: lower counted as better, by convention." * ("entropy" in report.metrics)
    legend = (
        f"Means over languages. Bold = better value among the smoothing values of one model, "
        f"dataset, benchmark and metric (none for a metric without a direction); "
        f"{MARKS[SMOOTHING_VS_ZERO]} = differs from smoothing 0; {MARKS[TUNED_VS_BASE]} = differs "
        f"from the base model (Holm p < {report.alpha}).{entropy}"
    )
    blocks += [("h2", "Table 1: means over languages"), ("p", legend)]
    blocks += [("table", _table1_cells(report)), ("h2", "Per-language results")]
    if report.intervals:
        blocks.append(("p", "In brackets: the 95% bootstrap interval (questions resampled)."))
    for benchmark in report.benchmarks:
        for metric in (m for m in PER_LANGUAGE_METRICS if m in report.metrics):
            for model in sorted({cfg.model for cfg in report.configs}):
                blocks.append(("h3", f"{benchmark} {metric}: {model}"))
                blocks.append(("table", _language_cells(report, benchmark, metric, model)))
    if report.selection.height:
        blocks += [("h2", f"Learning-rate selection (by mean {report.select_lr_by})")]
        blocks += [("table", _selection_cells(report))]
    blocks += [("h2", "Reliability diagrams"), ("p", pooled)]
    if figures:  # a sweep's per-run, per-language diagrams, logged to its child runs
        blocks += [("p", "Per run and language, in MLflow:"), ("list", figures)]
    if report.skipped:
        blocks += [("h2", f"Skipped comparisons ({len(report.skipped)})")]
        blocks += [("list", report.skipped)]
    significant = int(c["significant"].sum()) if c.height else 0
    blocks += [("h2", f"Comparisons ({c.height} tests, {significant} significant)")]
    blocks += [("p", f"A vs B; diff = mean A - mean B over the n paired languages; effect size "
                     f"{EFFECT_KIND[report.test]}; also in comparisons.csv.")]  # fmt: skip
    return [*blocks, ("table", _comparison_cells(c, report.test))]


def _selection_cells(report: Report) -> Table:
    head = ["model", "SFT dataset", "smoothing", "selected lr", f"mean {report.select_lr_by}"]
    rows = [
        [
            r["model"],
            r["sft_dataset"],
            f"{r['smoothing']:g}",
            f"{r['lr']:g}",
            _num(r["score"], ".4f"),
            r["candidates"],
        ]
        for r in report.selection.iter_rows(named=True)
    ]
    return [*head, "candidates (lr: mean)"], rows


def _table1_cells(report: Report) -> Table:
    cells = {
        (r["model"], r["config"], r["benchmark"], r["metric"]): r
        for r in report.table1.iter_rows(named=True)
    }
    columns = [(b, m) for b in report.benchmarks for m in dict.fromkeys(report.table1["metric"])]
    has_lr = any(cfg.lr is not None for cfg in report.configs)  # no lr column for a study table
    rows = []
    for cfg in report.configs:
        row = [cfg.model, cfg.label, *(["–" if cfg.lr is None else f"{cfg.lr:g}"] * has_lr)]
        for b, m in columns:
            r = cells.get((cfg.model, cfg.label, b, m))
            text = "–" if r is None else f"{r['mean']:.3f}{r['marks']}"
            row.append(Bold(text) if r and r["best"] else text)
        rows.append(row)
    head = ["model", "configuration", *(["lr"] * has_lr), *(f"{b} {m}" for b, m in columns)]
    return head, rows


def _comparison_cells(c: pl.DataFrame, test: str) -> Table:
    head = ["contrast", "model", "benchmark", "metric", "A", "B", "n", "mean A", "mean B", "diff"]
    statistic = "W" if test == "wilcoxon" else "t"
    rows = [
        [r["contrast"], r["model"], r["benchmark"], r["metric"], r["config_a"], r["config_b"],
         str(r["n"]), _num(r["mean_a"], ".4f"), _num(r["mean_b"], ".4f"),
         _num(r["mean_diff"], "+.4f"), _num(r[statistic], ".3g"), _num(r["p"], ".3g"),
         _num(r["p_holm"], ".3g"), _num(r["effect_size"], ".2f"), "yes" if r["significant"] else ""]
        for r in c.iter_rows(named=True)
    ]  # fmt: skip
    return [*head, statistic, "p", "p Holm", EFFECT_KIND[test], "significant"], rows


def _language_cells(report: Report, benchmark: str, metric: str, model: str) -> Table:
    """One row per language: each configuration's value and, where the table has one, its 95%
    bootstrap interval, ``0.412 [0.371, 0.455]``."""
    configs = [c for c in report.configs if c.model == model]
    by_config = [report.values.get((c, benchmark, metric), {}) for c in configs]
    bounds = [report.intervals.get((c, benchmark, metric), {}) for c in configs]
    languages = sorted(set().union(*by_config))
    cells = list(zip(by_config, bounds, strict=True))
    rows = [
        [lang, *(_with_interval(v.get(lang), b.get(lang)) for v, b in cells)] for lang in languages
    ]
    return ["language", *(c.label for c in configs)], rows


def _with_interval(value: float | None, bounds: tuple[float, float] | None) -> str:
    if bounds is None or value is None:
        return _num(value)
    return f"{_num(value)} [{_num(bounds[0])}, {_num(bounds[1])}]"


def write_report(
    table: pl.DataFrame,
    out_dir: Path,
    test: str = "paired",
    select_lr_by: str = "accuracy",
    *,
    alpha: float = 0.05,
    title: str = "results",
    figures: list[str] | None = None,
    family: Family = "all",
    metrics: tuple[str, ...] | None = None,
    predictions: pl.DataFrame | None = None,
    draw: bool = True,
) -> dict[str, Path]:
    """Write report.md, report.html, comparisons.csv, table1.csv and figures/*.png into out_dir;
    returns them by kind ("markdown", "html", "comparisons", "table1", "figure:<name>").

    `figures`: links to existing per-run diagrams (listed). `predictions`: one row per scored
    question (orchestrator.figures.prediction_columns: model, sft_dataset, smoothing, benchmark,
    optional lr, and confidence + correct or probs + gold) for pooled reliability diagrams.
    `draw=False` writes no figure. Raises ReportError on bad input."""
    from orchestrator.figures import png_data_uri, write_figures

    report = build_report(table, test, select_lr_by, alpha, metrics, family)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = write_figures(report, out_dir, predictions) if draw else []
    embedded = [(image, png_data_uri(out_dir / image.path)) for image in images]
    blocks = report_blocks(report, title, figures, embedded, predictions is not None)
    paths = {kind: out_dir / name for kind, name in OUTPUTS.items()}
    paths |= {f"figure:{image.name}": out_dir / image.path for image in images}
    paths["markdown"].write_text(to_markdown(blocks), encoding="utf-8")
    paths["html"].write_text(to_html(blocks, f"calsweep report: {title}"), encoding="utf-8")
    report.comparisons.write_csv(paths["comparisons"])
    report.table1.write_csv(paths["table1"])
    return paths


# ---- MLflow and CLI ------------------------------------------------------------------------------


def load_experiment(
    name: str, tracking_uri: str | None
) -> tuple[pl.DataFrame, mlflow.tracking.MlflowClient, str, list[str]]:
    """(results table, client, parent run id, reliability-diagram artifact URIs) of a sweep."""
    import mlflow.tracking

    from orchestrator.tracking import KIND_TAG, PARENT_TAG

    client = mlflow.tracking.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        names = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
        raise ReportError(f"no experiment {name!r} at {client.tracking_uri}; existing: {names}")
    runs = client.search_runs(
        [experiment.experiment_id],
        f"tags.`{KIND_TAG}` = 'sweep'",
        order_by=["attributes.start_time DESC"],
    )
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    if not parents:
        raise ReportError(f"experiment {name!r} has no sweep parent run (tag {KIND_TAG}=sweep)")
    parent = parents[0].info.run_id
    artifacts = [f.path for f in client.list_artifacts(parent)]
    if RESULTS_FILE not in artifacts:
        raise ReportError(
            f"the parent run {parent} of experiment {name!r} has no {RESULTS_FILE} artifact "
            f"(it has: {', '.join(artifacts) or 'nothing'}); has the sweep finished scoring?"
        )
    with tempfile.TemporaryDirectory() as tmp:
        table = pl.read_parquet(client.download_artifacts(parent, RESULTS_FILE, tmp))
    children = client.search_runs([experiment.experiment_id], f"tags.`{PARENT_TAG}` = '{parent}'")
    figures = [
        f"{run.info.run_name}: runs:/{run.info.run_id}/{f.path}"
        for run in sorted(children, key=lambda r: r.info.run_name or "")
        for f in client.list_artifacts(run.info.run_id, "reliability")
        if f.path.endswith(".png")
    ]
    return table, client, parent, figures


def report_artifact_folder(path: Path, out_dir: Path) -> str:
    """Where a file of the report in `out_dir` goes among a run's artifacts: under `report/`,
    in the same sub-folder (figures/), so the markdown's relative links still resolve."""
    return Path("report", path.parent.relative_to(out_dir)).as_posix()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.report", description=__doc__.split("\n")[0]
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--experiment", help="MLflow experiment (= sweep name) to report on")
    source.add_argument("--results", type=Path, help="long results table (.csv or .parquet)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLflow's own)")
    parser.add_argument("--out", type=Path, help="output directory (default: ./report-<name>)")
    parser.add_argument(
        "--test",
        choices=TESTS,
        default="paired",
        help="paired Student's t over languages (default), Welch's t, or Wilcoxon signed-rank",
    )
    parser.add_argument(
        "--select-lr-by",
        default="accuracy",
        metavar="METRIC",
        help="one lr per (model, dataset, smoothing): best mean of METRIC on the dev splits when "
        "the table has them, else on test (default: accuracy)",
    )
    parser.add_argument("--alpha", type=float, default=0.05, help="family-wise level for Holm")
    parser.add_argument(
        "--family",
        choices=FAMILIES,
        default="all",
        help="tests run and Holm-corrected together: all (default), smoothing (smoothing beta vs "
        "0 only, the study's family) or base (tuned vs base only)",
    )
    parser.add_argument(
        "--metrics",
        nargs="+",
        metavar="METRIC",
        help=f"metrics to report (default: {', '.join(REPORT_METRICS)} and any metric without "
        "a known direction that the table has)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 on bad input, with the reason on stderr)."""
    args = parse_args(argv)
    try:
        if args.results is not None:
            name, figures, client = args.results.stem, None, None
            table = read_table(args.results)
        else:
            name = args.experiment
            table, client, parent, figures = load_experiment(name, args.tracking_uri)
        out = args.out or Path(f"report-{name}")
        paths = write_report(
            table, out, args.test, args.select_lr_by, alpha=args.alpha, title=name,
            figures=figures, family=args.family,
            metrics=tuple(args.metrics) if args.metrics else None,
        )  # fmt: skip
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if client is not None:
        for path in paths.values():  # figures/ stays a folder, so the markdown's links resolve
            client.log_artifact(parent, str(path), report_artifact_folder(path, out))
        print(f"logged to MLflow run {parent} under report/")
    print("\n".join(f"wrote {p}" for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
