"""Any long table: base labels, empty lr, pass-through names, one-line errors, language gaps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from orchestrator.report import ReportError, build_report, main
from orchestrator.table import validate

LANGS = ["de", "fr", "ja", "sw", "yo", "zh"]


def small_table(base_label: str | None = "base", lr: float | None = None) -> pl.DataFrame:
    """One model: base, and dataset `d` at smoothing 0 and 0.1 (one lr each); benchmark `b`."""
    rng = np.random.default_rng(0)
    rows = []
    for dataset, smoothing, shift in ((base_label, None, 0.0), ("d", 0.0, 0.1), ("d", 0.1, 0.02)):
        for i, lang in enumerate(LANGS):
            for metric, value in (("ece", 0.05 + shift + i / 100), ("accuracy", 0.4 + i / 50)):
                value += rng.normal(0, 0.003)
                rows.append(("m", dataset, smoothing, lr, "b", lang, metric, value))
    schema = {"model": pl.String, "sft_dataset": pl.String, "smoothing": pl.Float64,
              "lr": pl.Float64, "benchmark": pl.String, "language": pl.String,
              "metric": pl.String, "value": pl.Float64}  # fmt: skip
    return pl.DataFrame(rows, schema=schema, orient="row")


@pytest.mark.parametrize("label", ["base", "none", "", None, "Base"])
def test_base_labels_are_one_base_model(label: str | None) -> None:
    report = build_report(small_table(label))
    assert [c.label for c in report.configs] == ["base", "d ls=0", "d ls=0.1"]
    contrasts = report.comparisons.group_by("contrast").len().sort("contrast").rows()
    assert contrasts == [("smoothing vs 0", 2), ("tuned vs base", 4)]  # x 2 metrics
    assert (
        report.comparisons.filter(pl.col("contrast") == "tuned vs base")["smoothing_b"]
        .is_null()
        .all()
    )


def test_empty_lr_is_one_lr_per_configuration(tmp_path: Path) -> None:
    csv = tmp_path / "study.csv"
    small_table().write_csv(csv)  # lr column entirely empty, as in the study's table
    assert main(["--results", str(csv), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.count("empty lr") == 1 and "every configuration" in md
    assert "Learning-rate selection" not in md  # nothing was selected
    assert "| model | configuration | b accuracy |" in md  # no lr column


def test_unknown_names_and_extra_columns_pass_through() -> None:
    table = small_table().with_columns(
        metric=pl.col("metric").replace({"accuracy": "f1"}),
        benchmark=pl.lit("my-bench"),
        split=pl.lit("test"),
        value_low=pl.col("value") - 0.01,
    )
    report = build_report(table)
    assert report.metrics == ("ece", "f1") and report.benchmarks == ["my-bench"]
    f1 = report.table1.filter(pl.col("metric") == "f1")
    assert f1.height == 3 and not f1["best"].any()  # no direction: no bold value
    sentences = [f.sentence() for group in report.findings for f in group if f.metric == "f1"]
    assert sentences and not any("better" in s or "worse" in s for s in sentences)
    assert any("f1 unknown to calsweep" in note for note in report.notes)


def test_missing_languages_are_paired_on_the_intersection() -> None:
    table = small_table().filter(
        ~((pl.col("smoothing") == 0.1) & pl.col("language").is_in(["sw", "yo"]))
    )
    report = build_report(table)
    row = report.comparisons.filter(
        (pl.col("contrast") == "smoothing vs 0") & (pl.col("metric") == "ece")
    ).row(0, named=True)
    assert (row["n"], row["only_b"], row["only_a"]) == (4, "sw, yo", "")
    assert any("d ls=0 has sw, yo that d ls=0.1 lacks" in n and "4 languages" in n
               for n in report.notes)  # fmt: skip


def one_line_error(table: pl.DataFrame) -> str:
    with pytest.raises(ReportError) as error:
        validate(table)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_malformed_tables_get_one_line_naming_the_rows(tmp_path: Path, capsys) -> None:
    table = small_table()
    assert "lacks column(s) metric" in one_line_error(table.drop("metric"))
    message = one_line_error(pl.concat([table, table[[3, 7]]]))
    assert "2 group(s) of rows share their key" in message and "rows 4 and 37; 8 and 38" in message
    text = table.with_columns(pl.col("value").cast(pl.String))
    text = text.with_columns(
        value=pl.when(pl.int_range(pl.len()).is_in([4, 20])).then(pl.lit("n/a")).otherwise("value")
    )
    message = one_line_error(text)
    assert "2 rows have a non-numeric value: row 5, 21" in message and "'n/a'" in message
    no_smoothing = table.with_columns(
        smoothing=pl.when(pl.col("sft_dataset") == "d").then(None).otherwise("smoothing")
    )
    assert "24 rows of tuned models lack a smoothing value: row 13, 14" in one_line_error(
        no_smoothing
    )
    mixed = table.with_columns(lr=pl.when(pl.col("language") == "de").then(1e-5).otherwise(None))
    assert "have an empty lr where other rows" in one_line_error(mixed)

    csv = tmp_path / "bad.csv"
    text.write_csv(csv)
    assert main(["--results", str(csv), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "non-numeric value: row 5, 21" in err
