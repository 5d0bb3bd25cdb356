"""The report's figures carry the data they claim: values read back from the matplotlib objects
equal the comparisons and the table; the HTML embeds every PNG and the markdown links them."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy import stats

from orchestrator import figures
from orchestrator.report import build_report, write_report

LANGUAGES = ("de", "fr", "sw", "yo", "zh")


def small_table(seed: int = 0, intervals: bool = False) -> pl.DataFrame:
    """Two models, base + one dataset at smoothing 0 and 0.1, two benchmarks, 5 languages."""
    rng = np.random.default_rng(seed)
    rows = []
    difficulty = {lang: rng.normal(0, 0.05) for lang in LANGUAGES}
    for model in ("m1", "m2"):
        for dataset, smoothing, shift in (("base", None, -0.05), ("alpaca", 0.0, 0.0),
                                          ("alpaca", 0.1, 0.01)):  # fmt: skip
            for bench in ("gmmlu", "prox"):
                for lang in LANGUAGES:
                    d = difficulty[lang]
                    metrics = {
                        "accuracy": 0.5 + d + shift + rng.normal(0, 0.01),
                        "entropy": 1.5 - d + rng.normal(0, 0.05),
                        "ece": 0.15 - (smoothing or 0.0) + d / 2 + rng.normal(0, 0.005),
                        "rms": 0.18 - (smoothing or 0.0) + rng.normal(0, 0.005),
                    }
                    for metric, value in metrics.items():
                        rows.append((model, dataset, smoothing, None, bench, lang, metric, value))
    table = pl.DataFrame(
        rows,
        schema=["model", "sft_dataset", "smoothing", "lr", "benchmark", "language", "metric",
                "value"],
        orient="row",
        schema_overrides={"smoothing": pl.Float64, "lr": pl.Float64},
    )  # fmt: skip
    if intervals:
        table = table.with_columns(ci_low=pl.col("value") - 0.02, ci_high=pl.col("value") + 0.03)
    return table


@pytest.fixture(scope="module")
def report():
    return build_report(small_table(intervals=True))


def test_paired_interval_is_the_t_interval_over_languages() -> None:
    a = {"x": 1.0, "y": 2.0, "z": 4.0, "only_a": 9.0}
    b = {"x": 0.5, "y": 1.0, "z": 2.5}
    low, high, n = figures.paired_interval(a, b)
    diff = np.array([0.5, 1.0, 1.5])
    ref = stats.t.interval(0.95, 2, loc=diff.mean(), scale=stats.sem(diff))
    assert n == 3 and (low, high) == pytest.approx(ref)


def test_forest_markers_sit_at_the_mean_differences(report) -> None:
    fig = figures.forest(report)
    rows = figures.forest_rows(report)
    assert rows.height == report.comparisons.height
    metrics = list(dict.fromkeys(rows["metric"]))
    axes = fig.axes[: len(metrics)]
    labels = [t.get_text() for t in axes[0].get_yticklabels()]
    for ax, metric in zip(axes, metrics, strict=True):
        assert ax.get_title() == figures.METRIC_NAMES[metric]
        part = rows.filter(pl.col("metric") == metric)
        expected = {  # (group, label) -> (mean_diff, significant)
            (r["group"], r["label"]): (r["mean_diff"], r["significant"])
            for r in part.iter_rows(named=True)
        }
        seen = {}
        for collection in ax.collections:
            gid = collection.get_gid()
            if not gid:
                continue  # the error bars
            group, kind = gid.split("|")
            for x, y in collection.get_offsets():
                label = labels[len(labels) - 1 - int(round(y))]
                seen[(group, label)] = (x, kind == "significant")
        assert seen.keys() == expected.keys()
        for key, (x, significant) in seen.items():
            assert x == pytest.approx(expected[key][0])
            assert significant == expected[key][1]
    # the comparisons' own numbers, not recomputed ones
    joined = rows.join(report.comparisons, on=["contrast", "model", "sft_dataset", "benchmark",
                                               "metric", "config_a", "config_b"])  # fmt: skip
    assert np.allclose(joined["mean_diff"], joined["mean_diff_right"])
    assert (joined["ci_low"] <= joined["mean_diff"]).all()
    assert (joined["mean_diff"] <= joined["ci_high"]).all()


def test_per_language_bars_are_the_table_values_in_base_accuracy_order(report) -> None:
    model, bench = "m1", "prox"
    order = figures.language_order(report, model, bench)
    base = next(c for c in report.configs if c.model == model and c.is_base)
    base_accuracy = report.values[(base, bench, "accuracy")]
    assert order == sorted(LANGUAGES, key=base_accuracy.get)
    fig = figures.per_language(report, model, bench)
    panels = [ax for ax in fig.axes if ax.patches]
    assert [ax.get_title(loc="left") for ax in panels] == ["accuracy: alpaca", "ECE: alpaca"]
    for ax, metric in zip(panels, ("accuracy", "ece"), strict=True):
        assert [t.get_text() for t in ax.get_xticklabels()] == order
        by_config = {c.label: c for c in report.configs if c.model == model}
        bars = [p for p in ax.patches if p.get_gid()]
        assert len(bars) == 3 * len(LANGUAGES)
        for bar in bars:
            label, lang = bar.get_gid().split("|")
            assert bar.get_height() == pytest.approx(
                report.values[(by_config[label], bench, metric)][lang]
            )
        lefts = [bar.get_x() for bar in bars if bar.get_gid().startswith("base|")]
        assert lefts == sorted(lefts)  # bars drawn left to right in the claimed order
        # error bars: one segment per bar, from ci_low to ci_high (value - 0.02, + 0.03)
        segments = [s for c in ax.collections for s in c.get_segments()]
        assert len(segments) == len(bars)
        spans = sorted(round(float(s[1, 1] - s[0, 1]), 6) for s in segments)
        assert spans == pytest.approx([0.05] * len(bars))


def test_per_language_without_intervals_has_no_error_bars() -> None:
    report = build_report(small_table())
    assert report.intervals == {}
    fig = figures.per_language(report, "m2", "gmmlu")
    assert not any(c.get_segments() for ax in fig.axes for c in ax.collections)


def test_scatter_points_are_accuracy_and_ece_per_language(report) -> None:
    fig = figures.scatter(report, "gmmlu")
    for ax in fig.axes:
        model = ax.get_title()
        by_config = {c.label: c for c in report.configs if c.model == model}
        drawn = {c.get_gid(): c.get_offsets() for c in ax.collections}
        assert drawn.keys() == by_config.keys()
        for label, points in drawn.items():
            config = by_config[label]
            acc = report.values[(config, "gmmlu", "accuracy")]
            ece = report.values[(config, "gmmlu", "ece")]
            expected = sorted((acc[k], ece[k]) for k in LANGUAGES)
            assert np.allclose(sorted(map(tuple, points)), expected)


def test_pooled_bins_match_the_ece_binning() -> None:
    from evaluators.metrics import reliability_bins

    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(4), size=500)
    gold = rng.integers(0, 4, 500)
    confidence, correct = probs.max(1), (probs.argmax(1) == gold).astype(float)
    ours = figures.pooled_bins(confidence, correct)
    theirs = reliability_bins(probs, gold)
    for a, b in zip(ours, theirs, strict=True):
        assert a["count"] == b.count
        if b.count:
            assert (a["accuracy"], a["mean_confidence"]) == pytest.approx(
                (b.accuracy, b.mean_confidence)
            )


def predictions_frame(report, probs_and_gold: bool = False) -> pl.DataFrame:
    rng = np.random.default_rng(4)
    frames = []
    for config in report.configs:
        for bench in report.benchmarks:
            probs = rng.dirichlet(np.ones(4), size=40)
            gold = rng.integers(0, 4, 40)
            columns = {
                "model": config.model,
                "sft_dataset": "none" if config.is_base else config.sft_dataset,
                "smoothing": config.smoothing,
                "benchmark": bench,
            }
            if probs_and_gold:
                columns |= {"probs": probs.tolist(), "gold": gold}
            else:
                columns |= {"confidence": probs.max(1), "correct": probs.argmax(1) == gold}
            frames.append(pl.DataFrame(columns, schema_overrides={"smoothing": pl.Float64}))
    return pl.concat(frames)


def test_reliability_panels_pool_every_question(report) -> None:
    for probs_and_gold in (False, True):
        predictions = predictions_frame(report, probs_and_gold)
        panels = dict(figures.reliability_panels(report, predictions))
        assert set(panels) == set(report.benchmarks)
        for bench_panels in panels.values():
            assert len(bench_panels) == len(report.configs)
            assert all(sum(b["count"] for b in bins) == 40 for bins in bench_panels.values())
    dev = predictions_frame(report).with_columns(split=pl.lit("dev"))
    with_dev = pl.concat([predictions_frame(report).with_columns(split=pl.lit("test")), dev])
    for bench_panels in dict(figures.reliability_panels(report, with_dev)).values():
        assert all(sum(b["count"] for b in bins) == 40 for bins in bench_panels.values())


def test_prediction_columns_are_checked() -> None:
    from orchestrator.report import ReportError

    with pytest.raises(ReportError, match="confidence"):
        figures.prediction_columns(pl.DataFrame({"model": ["m"]}))


def test_report_embeds_and_links_every_figure(tmp_path: Path, report) -> None:
    table = small_table(intervals=True)
    predictions = predictions_frame(report)
    paths = write_report(table, tmp_path, predictions=predictions)
    pngs = sorted(tmp_path.glob("figures/*.png"))
    names = {p.stem for p in pngs}
    # 1 forest + per (model, benchmark) 4 + per benchmark scatter 2 + reliability 2
    assert len(pngs) == 1 + 4 + 2 + 2 and "forest" in names
    assert {k.removeprefix("figure:") for k in paths if k.startswith("figure:")} == names
    assert all(paths[f"figure:{p.stem}"] == p for p in pngs)
    markdown = paths["markdown"].read_text()
    html = paths["html"].read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert sorted(links) == sorted(f"figures/{p.name}" for p in pngs)
    assert all((tmp_path / link).is_file() for link in links)
    uris = re.findall(r"<img src='data:image/png;base64,([^']+)'", html)
    assert sorted(base64.b64decode(u) for u in uris) == sorted(p.read_bytes() for p in pngs)
    assert "figures/" not in html  # self-contained: no file references
    # figures come after the findings and before Table 1
    assert (
        markdown.index("## Findings") < markdown.index("## Figures") < markdown.index("## Table 1")
    )
    assert "need predictions" not in markdown


def test_table_without_predictions_says_what_reliability_diagrams_need(tmp_path: Path) -> None:
    paths = write_report(small_table(), tmp_path)
    markdown = paths["markdown"].read_text()
    assert "Pooled reliability diagrams need predictions" in markdown
    assert not list(tmp_path.glob("figures/reliability*"))
    assert len(list(tmp_path.glob("figures/*.png"))) == 1 + 4 + 2


def test_per_language_tables_show_each_value_with_its_interval(tmp_path: Path) -> None:
    table = small_table(intervals=True)
    markdown = write_report(table, tmp_path, draw=False)["markdown"].read_text()
    assert "In brackets: the 95% bootstrap interval" in markdown
    for r in table.filter(pl.col("metric").is_in(["accuracy", "ece"])).iter_rows(named=True):
        assert f"{r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]" in markdown, r
    plain = write_report(small_table(), tmp_path / "plain", draw=False)["markdown"].read_text()
    assert "In brackets" not in plain and " [0." not in plain
