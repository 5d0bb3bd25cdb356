"""Significance report of a sweep: markdown, HTML and CSV from a long results table.

`python -m orchestrator.report --experiment NAME [--tracking-uri URI]` reads `results.parquet`
from the sweep's parent MLflow run (tag calsweep.kind=sweep, no parent) and logs the report back
to that run under `report/`; `--results TABLE.{csv,parquet}` reports on any table in the long
format of DESIGN.md. Outputs in `--out` (default ./report-<experiment or file stem>): report.md,
report.html (self-contained), comparisons.csv (one row per test) and table1.csv (long: one row
per configuration x benchmark x metric, with its mean, bold flag, Holm p-values and marks).

What is compared and how (details in orchestrator.stats):
- A configuration is (model, sft_dataset, smoothing) with one lr, selected by `--select-lr-by`
  (mean over all languages of all benchmarks, direction from HIGHER_IS_BETTER). With a `split`
  column holding dev/validation rows the selection uses those rows and the report the others;
  otherwise selection sees the reported rows themselves (optimistic; the report says so).
- Per benchmark and metric (accuracy, entropy, ECE, RMS): smoothing beta vs 0 (same model and
  dataset) and every tuned configuration vs its base model; Holm across all of these tests.
- Table 1: bold = better value among the smoothing values of one (model, dataset, benchmark,
  metric); `*` = differs from smoothing 0, `†` = differs from the base model (Holm p < alpha).
  Entropy counts lower as better only by convention (evaluators.metrics.HIGHER_IS_BETTER).
"""

from __future__ import annotations

import argparse
import html
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from evaluators.metrics import HIGHER_IS_BETTER
from orchestrator.stats import (
    BASE_DATASET,
    EFFECT_KIND,
    MARKS,
    SMOOTHING_VS_ZERO,
    TESTS,
    TUNED_VS_BASE,
    Config,
    ReportError,
    Values,
    apply_selection,
    plan_comparisons,
    run_family,
    select_lr,
    split_for_selection,
    table1,
)

if TYPE_CHECKING:  # mlflow loads only when an experiment is read: --help stays fast
    import mlflow.tracking

REQUIRED_COLUMNS: dict[str, type[pl.DataType]] = {
    **dict.fromkeys(["model", "sft_dataset"], pl.String),
    **dict.fromkeys(["smoothing", "lr"], pl.Float64),
    **dict.fromkeys(["benchmark", "language", "metric"], pl.String),
    "value": pl.Float64,
}
REPORT_METRICS = ("accuracy", "entropy", "ece", "rms")
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
    select_lr_by: str
    selection: pl.DataFrame  # model, sft_dataset, smoothing, lr, score, candidates
    configs: list[Config]
    benchmarks: list[str]
    values: Values
    comparisons: pl.DataFrame
    table1: pl.DataFrame
    skipped: list[str]
    notes: list[str]


def read_table(path: Path) -> pl.DataFrame:
    """A long results table from parquet or CSV (CSV: empty smoothing/lr cells = base model)."""
    if not path.exists():
        raise ReportError(f"results table {path} does not exist")
    if path.suffix == ".parquet":
        return pl.read_parquet(path)
    if path.suffix == ".csv":
        return pl.read_csv(path, schema_overrides={"smoothing": pl.Float64, "lr": pl.Float64})
    raise ReportError(f"{path}: expected a .csv or .parquet file")


def validate(table: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    """Check the long format and cast its types; non-finite values are dropped and noted."""
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ReportError(
            f"results table lacks column(s) {', '.join(missing)}; "
            f"the long format has {', '.join(REQUIRED_COLUMNS)}"
        )
    try:
        table = table.with_columns(pl.col(c).cast(t) for c, t in REQUIRED_COLUMNS.items())
    except pl.exceptions.PolarsError as error:
        raise ReportError(f"results table has a column of the wrong type: {error}") from error
    tuned = pl.col("sft_dataset") != BASE_DATASET
    bad = table.filter(tuned & (pl.col("smoothing").is_null() | pl.col("lr").is_null()))
    if bad.height:
        raise ReportError(
            f"{bad.height} rows of tuned models (sft_dataset != {BASE_DATASET!r}) lack smoothing "
            f"or lr, e.g. model {bad['model'][0]!r}, dataset {bad['sft_dataset'][0]!r}"
        )
    keys = [c for c in (*REQUIRED_COLUMNS, "split") if c in table.columns and c != "value"]
    duplicated = table.filter(table.select(keys).is_duplicated())
    if duplicated.height:
        raise ReportError(
            f"{duplicated.height} rows share their key ({', '.join(keys)}), e.g. "
            f"{duplicated.row(0, named=True)}; average repeated runs (seeds) before reporting"
        )
    finite = table.filter(pl.col("value").is_finite())
    dropped = table.height - finite.height
    return finite, [
        f"{dropped} rows with a missing or non-finite value left out."
    ] if dropped else []


def build_report(
    table: pl.DataFrame,
    test: str = "paired",
    select_lr_by: str = "accuracy",
    alpha: float = 0.05,
    metrics: tuple[str, ...] = REPORT_METRICS,
) -> Report:
    """Validate, select one lr per configuration, run the comparison family, build Table 1."""
    if test not in TESTS:
        raise ReportError(f"unknown test {test!r}; choose one of {', '.join(TESTS)}")
    if unknown := [m for m in metrics if m not in HIGHER_IS_BETTER]:
        raise ReportError(f"metric(s) {', '.join(unknown)} have no direction (HIGHER_IS_BETTER)")
    table, notes = validate(table)
    selection_rows, rows, how = split_for_selection(table)
    selection = select_lr(selection_rows, select_lr_by)
    notes.append(f"Learning rate {how}.")
    keys = ["model", "sft_dataset", "smoothing"]
    tuned = rows.filter(pl.col("sft_dataset") != BASE_DATASET)
    if (unselected := tuned.join(selection, on=keys, how="anti").unique(keys)).height:
        names = ", ".join("/".join(map(str, r)) for r in unselected.select(keys).sort(keys).rows())
        notes.append(f"Left out, no rows to select an lr on: {names}.")
    configs, values = apply_selection(rows, selection)
    benchmarks = sorted({b for _, b, _ in values})
    planned, skipped = plan_comparisons(configs, benchmarks, values, metrics)
    comparisons, failed = run_family(planned, test, alpha)  # type: ignore[arg-type]
    summary = table1(configs, benchmarks, values, comparisons, metrics, alpha)
    return Report(
        test, alpha, select_lr_by, selection, configs, benchmarks, values,
        comparisons, summary, skipped + failed, notes,
    )  # fmt: skip


# ---- rendering: one list of blocks, written as markdown and as HTML ----------------------------


class Bold(str):
    """A table cell rendered in bold."""


Table = tuple[list[str], list[list[str]]]  # header, rows
Block = tuple[str, "str | list[str] | Table"]  # kind: h1 h2 h3 p list table


def _num(x: float | None, spec: str = ".3f") -> str:
    return "–" if x is None or not np.isfinite(x) else format(x, spec)


def report_blocks(report: Report, title: str, figures: list[str] | None) -> list[Block]:
    """The report's content in order; both renderers consume it, so md and HTML agree."""
    c = report.comparisons
    legend = (
        f"Test: {report.test} over languages, effect size {EFFECT_KIND[report.test]}; Holm "
        f"correction across all {c.height} comparisons, alpha {report.alpha}: "
        f"{int(c['significant'].sum())} significant. Table 1: bold = better value among the "
        f"smoothing values of one model, dataset, benchmark and metric; "
        f"{MARKS[SMOOTHING_VS_ZERO]} = differs from smoothing 0; {MARKS[TUNED_VS_BASE]} = differs "
        f"from the base model (Holm p < {report.alpha}). Entropy: lower counted as better."
    )
    blocks: list[Block] = [("h1", f"Significance report: {title}"), ("p", legend)]
    blocks += [("p", note) for note in report.notes]
    blocks += [("h2", f"Skipped comparisons ({len(report.skipped)})"), ("list", report.skipped)]
    blocks += [("h2", f"Learning-rate selection (by mean {report.select_lr_by})")]
    blocks += [("table", _selection_cells(report)), ("h2", "Table 1: means over languages")]
    blocks += [("table", _table1_cells(report)), ("h2", "Comparisons")]
    blocks += [("table", _comparison_cells(c, report.test)), ("h2", "Per-language results")]
    for benchmark in report.benchmarks:
        for metric in PER_LANGUAGE_METRICS:
            for model in sorted({cfg.model for cfg in report.configs}):
                blocks.append(("h3", f"{benchmark} {metric}: {model}"))
                blocks.append(("table", _language_cells(report, benchmark, metric, model)))
    figures = figures or ["none found (MLflow child-run artifacts reliability/*.png)"]
    return [*blocks, ("h2", "Reliability diagrams"), ("list", figures)]


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
    rows = []
    for cfg in report.configs:
        row = [cfg.model, cfg.label, "–" if cfg.lr is None else f"{cfg.lr:g}"]
        for b, m in columns:
            r = cells.get((cfg.model, cfg.label, b, m))
            text = "–" if r is None else f"{r['mean']:.3f}{r['marks']}"
            row.append(Bold(text) if r and r["best"] else text)
        rows.append(row)
    return ["model", "configuration", "lr", *(f"{b} {m}" for b, m in columns)], rows


def _comparison_cells(c: pl.DataFrame, test: str) -> Table:
    head = ["kind", "model", "benchmark", "metric", "A", "B", "n", "mean A", "mean B", "diff"]
    rows = [
        [r["kind"], r["model"], r["benchmark"], r["metric"], r["config_a"], r["config_b"],
         str(r["n"]), _num(r["mean_a"], ".4f"), _num(r["mean_b"], ".4f"),
         _num(r["mean_diff"], "+.4f"), _num(r["statistic"], ".3g"), _num(r["p"], ".3g"),
         _num(r["p_holm"], ".3g"), _num(r["effect_size"], ".2f"), "yes" if r["significant"] else ""]
        for r in c.iter_rows(named=True)
    ]  # fmt: skip
    statistic = "W" if test == "wilcoxon" else "t"
    return [*head, statistic, "p", "p Holm", EFFECT_KIND[test], "significant"], rows


def _language_cells(report: Report, benchmark: str, metric: str, model: str) -> Table:
    configs = [c for c in report.configs if c.model == model]
    by_config = [report.values.get((c, benchmark, metric), {}) for c in configs]
    languages = sorted(set().union(*by_config))
    rows = [[lang, *(_num(v.get(lang)) for v in by_config)] for lang in languages]
    return ["language", *(c.label for c in configs)], rows


def to_markdown(blocks: list[Block]) -> str:
    """GitHub-flavoured markdown; `*` and `|` in text are escaped so marks stay literal."""

    def text(x: str) -> str:
        escaped = x.replace("|", "\\|").replace("*", "\\*")
        return f"**{escaped}**" if isinstance(x, Bold) else escaped

    out = []
    for kind, payload in blocks:
        if kind == "table":
            head, rows = payload
            lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            out.append("\n".join(lines + ["| " + " | ".join(map(text, r)) + " |" for r in rows]))
        elif kind == "list":
            out.append("\n".join(f"- {text(item)}" for item in payload) or "- none")
        else:
            prefix = "#" * int(kind[1]) + " " if kind.startswith("h") else ""
            out.append(prefix + text(payload))
    return "\n\n".join(out) + "\n"


CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em;font-variant-numeric:tabular-nums}"
    "th,td{border:1px solid #ccc;padding:.2em .5em}th{background:#eee}"
    "tr:nth-child(even){background:#f8f8f8}"
)


def to_html(blocks: list[Block], title: str) -> str:
    """One self-contained page (inline CSS, no scripts, no external files) with the same content."""

    def cell(x: str, tag: str = "td") -> str:
        inner = f"<strong>{html.escape(x)}</strong>" if isinstance(x, Bold) else html.escape(x)
        return f"<{tag}>{inner}</{tag}>"

    body = []
    for kind, payload in blocks:
        if kind == "table":
            head, rows = payload
            trs = "".join("<tr>" + "".join(map(cell, r)) + "</tr>" for r in rows)
            thead = "".join(cell(h, "th") for h in head)
            body.append(f"<table><thead><tr>{thead}</tr></thead><tbody>{trs}</tbody></table>")
        elif kind == "list":
            items = "".join(f"<li>{html.escape(i)}</li>" for i in payload) or "<li>none</li>"
            body.append(f"<ul>{items}</ul>")
        else:
            body.append(f"<{kind}>{html.escape(payload)}</{kind}>")
    head = f"<meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style>"
    return (
        f"<!DOCTYPE html>\n<html><head>{head}</head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_report(
    table: pl.DataFrame,
    out_dir: Path,
    test: str = "paired",
    select_lr_by: str = "accuracy",
    *,
    alpha: float = 0.05,
    title: str = "results",
    figures: list[str] | None = None,
) -> dict[str, Path]:
    """Write report.md, report.html, comparisons.csv, table1.csv into out_dir; returns them by kind
    ("markdown", "html", "comparisons", "table1"). Raises ReportError on bad input."""
    report = build_report(table, test, select_lr_by, alpha)
    out_dir.mkdir(parents=True, exist_ok=True)
    blocks = report_blocks(report, title, figures)
    paths = {kind: out_dir / name for kind, name in OUTPUTS.items()}
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
            table, out, args.test, args.select_lr_by, alpha=args.alpha, title=name, figures=figures
        )
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if client is not None:
        for path in paths.values():
            client.log_artifact(parent, str(path), "report")
        print(f"logged to MLflow run {parent} under report/")
    print("\n".join(f"wrote {p}" for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
