"""The long results table the report reads: loading, base-model labels, validation.

Columns: model, sft_dataset, smoothing, lr, benchmark, language, metric, value (DESIGN.md,
"Significance report"); any other column (`split`, `run`, interval columns) may be present.
- Base-model rows: `sft_dataset` is `base`, `none` (what the sweep writes) or empty; they become
  `base` here, with smoothing and lr cleared.
- Tuned rows need a smoothing value. An empty lr means the table holds one (already selected)
  lr for that configuration, so the report selects none; a configuration has all its lr cells
  empty or none of them.
- Unknown benchmark and metric names pass through.
- A malformed table (missing column, non-numeric number, repeated key, ...) raises ReportError
  with one line that names the first offending rows: data rows counted from 1, so row r is line
  r + 1 of a CSV file.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from orchestrator.stats import BASE_DATASET, ReportError

REQUIRED_COLUMNS = (
    "model", "sft_dataset", "smoothing", "lr", "benchmark", "language", "metric", "value",
)  # fmt: skip
NUMBER_COLUMNS = ("smoothing", "lr", "value")
NAME_COLUMNS = ("model", "benchmark", "language", "metric")  # must not be empty
BASE_LABELS = ("base", "none", "")  # sft_dataset of an untuned model (compared lower-case)
ROW = "_row"  # 1-based data-row number, carried through validation for error messages
SHOWN_ROWS = 5


def read_table(path: Path) -> pl.DataFrame:
    """A long results table from parquet or CSV, the required columns as text (checked later)."""
    if not path.exists():
        raise ReportError(f"results table {path} does not exist")
    if path.suffix == ".parquet":
        return pl.read_parquet(path)
    if path.suffix == ".csv":
        header = pl.read_csv(path, n_rows=0).columns
        as_text = {c: pl.String for c in REQUIRED_COLUMNS if c in header}
        try:
            return pl.read_csv(path, schema_overrides=as_text)
        except pl.exceptions.PolarsError as error:
            first = str(error).strip().splitlines()[0]
            raise ReportError(f"{path}: not a readable CSV table: {first}") from error
    raise ReportError(f"{path}: expected a .csv or .parquet file")


def _rows(bad: pl.DataFrame, what: str) -> str:
    """'3 rows <what>: rows 4, 9, 12' with at most SHOWN_ROWS numbers."""
    shown = ", ".join(map(str, bad[ROW].head(SHOWN_ROWS)))
    more = ", ..." if bad.height > SHOWN_ROWS else ""
    return f"{bad.height} row{'s' * (bad.height != 1)} {what}: row {shown}{more}"


def _key(row: dict) -> str:
    lr = "" if row["lr"] is None else f" lr={row['lr']}"
    smoothing = "" if row["smoothing"] is None else f" ls={row['smoothing']}"
    return (
        f"{row['model']}/{row['sft_dataset']}{smoothing}{lr} "
        f"{row['benchmark']}/{row['language']}/{row['metric']}"
    )


def _as_number(table: pl.DataFrame, column: str) -> pl.DataFrame:
    """Cast a column to Float64; text that is not a number raises (empty text = missing)."""
    if table[column].dtype.is_numeric() or table[column].dtype == pl.Null:
        return table.with_columns(pl.col(column).cast(pl.Float64))
    text = pl.col(column).cast(pl.String).str.strip_chars()
    text = pl.when(text == "").then(None).otherwise(text)
    table = table.with_columns(text.alias(column), text.cast(pl.Float64, strict=False).alias("_x"))
    bad = table.filter(pl.col(column).is_not_null() & pl.col("_x").is_null())
    if bad.height:
        first = bad.row(0, named=True)
        raise ReportError(
            f"results table: {_rows(bad, f'have a non-numeric {column}')} "
            f"({column} {first[column]!r} in {first['model']}/{first['sft_dataset']} "
            f"{first['benchmark']}/{first['language']}/{first['metric']})"
        )
    return table.with_columns(pl.col("_x").alias(column)).drop("_x")


def validate(table: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    """Check the long format, cast its types, label base models; returns (table, notes).

    Rows with a missing or non-finite value are left out and noted, not refused.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ReportError(
            f"results table lacks column(s) {', '.join(missing)}; "
            f"the long format has {', '.join(REQUIRED_COLUMNS)}"
        )
    table = table.with_row_index(ROW, offset=1).with_columns(
        pl.col(c).cast(pl.String) for c in ("sft_dataset", *NAME_COLUMNS)
    )
    if "split" in table.columns:
        table = table.with_columns(pl.col("split").cast(pl.String))
    for column in NUMBER_COLUMNS:
        table = _as_number(table, column)
    empty = pl.any_horizontal(pl.col(c).is_null() | (pl.col(c).str.strip_chars() == "")
                              for c in NAME_COLUMNS)  # fmt: skip
    if (bad := table.filter(empty)).height:
        names = "/".join(NAME_COLUMNS)
        raise ReportError(f"results table: {_rows(bad, f'lack a {names}')}")
    label = pl.col("sft_dataset").str.strip_chars().str.to_lowercase()
    is_base = pl.col("sft_dataset").is_null() | label.is_in(BASE_LABELS)
    table = table.with_columns(
        sft_dataset=pl.when(is_base).then(pl.lit(BASE_DATASET)).otherwise(pl.col("sft_dataset")),
        smoothing=pl.when(is_base).then(None).otherwise(pl.col("smoothing")),
        lr=pl.when(is_base).then(None).otherwise(pl.col("lr")),
    )
    tuned = pl.col("sft_dataset") != BASE_DATASET
    if (bad := table.filter(tuned & pl.col("smoothing").is_null())).height:
        raise ReportError(
            f"results table: {_rows(bad, 'of tuned models lack a smoothing value')} (base-model "
            f"rows have sft_dataset {', '.join(repr(b) for b in BASE_LABELS)} or none)"
        )
    config = ["model", "sft_dataset", "smoothing"]
    mixed = pl.col("lr").is_null().any().over(config) & pl.col("lr").is_not_null().any().over(
        config
    )
    if (bad := table.filter(tuned & mixed & pl.col("lr").is_null())).height:
        raise ReportError(
            f"results table: {_rows(bad, 'have an empty lr where other rows of their')} "
            f"configuration have one ({_key(bad.row(0, named=True))}); empty lr means one lr "
            "for the whole configuration"
        )
    keys = [
        *(c for c in REQUIRED_COLUMNS if c != "value"),
        *(["split"] * ("split" in table.columns)),
    ]
    repeated = (
        table.group_by(keys, maintain_order=True)
        .agg(pl.col(ROW))
        .filter(pl.col(ROW).list.len() > 1)
    )
    if repeated.height:
        groups = "; ".join(" and ".join(map(str, rows)) for rows in repeated[ROW].head(3))
        more = "; ..." if repeated.height > 3 else ""
        raise ReportError(
            f"results table: {repeated.height} group(s) of rows share their key "
            f"({', '.join(keys)}): rows {groups}{more} ({_key(repeated.row(0, named=True))}); "
            "average repeated runs (seeds) before reporting"
        )
    finite = table.filter(pl.col("value").is_finite())
    dropped = table.height - finite.height
    notes = [f"{dropped} rows with a missing or non-finite value left out."] if dropped else []
    return finite.drop(ROW), notes
