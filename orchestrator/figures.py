"""The report's figures (matplotlib, Agg, PNG): what the tables say, drawn.

- `forest`: per configuration (model x dataset x benchmark) and contrast, the mean difference
  A - B over languages with its 95% paired t interval (mean ± t_{0.975,n-1} sd/sqrt(n) over the
  languages both sides have); filled marker = significant (Holm, as in the comparisons); one
  panel per metric; a zero line.
- `per_language`: per model and benchmark, accuracy and ECE per language of the base model and
  each smoothing value (one row of panels per SFT dataset), languages ordered by base accuracy;
  error bars = the table's bootstrap interval (`ci_low`/`ci_high`) where it has one.
- `scatter`: per benchmark, accuracy vs ECE per language; colour = base or smoothing value,
  marker = SFT dataset, one panel per model.
- `reliability`: per benchmark, a pooled reliability diagram per configuration (all its
  languages' questions together), drawn by evaluators.reliability; needs predictions
  (PREDICTION_COLUMNS).

Colours are Okabe-Ito (colour-blind safe). matplotlib loads only when a figure is drawn, so
importing the report stays cheap; the report imports this module lazily too.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from orchestrator.findings import METRIC_NAMES
from orchestrator.stats import SELECTION_SPLITS, SMOOTHING_VS_ZERO, Config

if TYPE_CHECKING:
    from matplotlib.figure import Figure as MplFigure

    from orchestrator.report import Report

OKABE_ITO = ("#0072B2", "#E69F00", "#D55E00", "#009E73", "#CC79A7", "#56B4E9", "#F0E442")
# smoothing 0, then increasing values: vermillion (none), sky blue, blue, then the others
SMOOTHING_COLOURS = ("#D55E00", "#56B4E9", "#0072B2", "#009E73", "#CC79A7", "#E69F00", "#F0E442")
BASE_COLOUR = "#000000"
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
AXIS_LABELS = {
    "accuracy": "accuracy (fraction correct)",
    "entropy": "entropy (bits)",
    "ece": "ECE (fraction, 15 equal-width bins)",
    "rms": "RMS calibration error (fraction)",
}
LANGUAGE_METRICS = ("accuracy", "ece")
SCATTER_METRICS = ("accuracy", "ece")  # x, y
PREDICTION_COLUMNS = ("model", "sft_dataset", "smoothing", "benchmark", "confidence", "correct")
RELIABILITY_BINS = 15  # as the ECE: equal-width, right-closed (evaluators.metrics)
DPI = 100
Intervals = dict[tuple[Config, str, str], dict[str, tuple[float, float]]]  # like stats.Values


@dataclass(frozen=True)
class Image:
    """One written figure: `path` is relative to the report directory (for the markdown link)."""

    name: str  # e.g. "forest", "language-Gemma2-2B-GlobalMMLU"
    path: Path
    title: str
    caption: str


def _pyplot():  # noqa: ANN202 - the module, loaded on first use
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def axis_label(metric: str) -> str:
    return AXIS_LABELS.get(metric, METRIC_NAMES.get(metric, metric))


def smoothing_colour(config: Config, smoothing_values: list[float]) -> str:
    """Black for a base model, else one Okabe-Ito colour per smoothing value (sorted)."""
    if config.is_base:
        return BASE_COLOUR
    return SMOOTHING_COLOURS[smoothing_values.index(config.smoothing) % len(SMOOTHING_COLOURS)]


# ---- forest plot ---------------------------------------------------------------------------------


def paired_interval(a: dict[str, float], b: dict[str, float]) -> tuple[float, float, int]:
    """95% paired t interval of mean(a - b) over the languages both have: (low, high, n)."""
    from scipy.stats import t

    common = sorted(a.keys() & b.keys())
    diff = np.array([a[k] - b[k] for k in common])
    if diff.size < 2:
        return math.nan, math.nan, int(diff.size)
    half = t.ppf(0.975, diff.size - 1) * diff.std(ddof=1) / math.sqrt(diff.size)
    return float(diff.mean() - half), float(diff.mean() + half), int(diff.size)


def contrast_name(contrast: str, smoothing_a: float) -> str:
    if contrast == SMOOTHING_VS_ZERO:
        return f"smoothing {smoothing_a:g} vs 0"
    return f"tuned (smoothing {smoothing_a:g}) vs base"


def forest_rows(report: Report) -> pl.DataFrame:
    """The comparisons with a 95% interval and a row label, in plotting order (top to bottom):
    contrast, benchmark, model, dataset. Columns of the comparisons plus `ci_low`, `ci_high`,
    `label`, `group` (the contrast's name)."""
    by_label = {(c.model, c.label): c for c in report.configs}
    c = report.comparisons.with_columns(order=pl.col("contrast") != SMOOTHING_VS_ZERO)
    c = c.sort("order", "smoothing_a", "benchmark", "model", "sft_dataset", maintain_order=True)
    lows, highs, groups = [], [], []
    for r in c.iter_rows(named=True):
        a, b = by_label[(r["model"], r["config_a"])], by_label[(r["model"], r["config_b"])]
        key = (r["benchmark"], r["metric"])
        low, high, _ = paired_interval(report.values[(a, *key)], report.values[(b, *key)])
        lows.append(low)
        highs.append(high)
        groups.append(contrast_name(r["contrast"], r["smoothing_a"]))
    label = pl.concat_str("model", "sft_dataset", "benchmark", separator=" ")
    return c.with_columns(
        ci_low=pl.Series(lows, dtype=pl.Float64),
        ci_high=pl.Series(highs, dtype=pl.Float64),
        group=pl.Series(groups, dtype=pl.String),
        label=label,
    ).drop("order")


def forest(report: Report) -> MplFigure:
    """One panel per metric; y = configuration x contrast (rows of `forest_rows`, same order in
    every panel), x = mean difference A - B with its 95% interval. Each panel holds, per contrast
    group, one scatter of filled markers (significant) and one of hollow ones."""
    plt = _pyplot()
    rows = forest_rows(report)
    metrics = [m for m in report.metrics if m in set(rows["metric"])]
    keys = list(dict.fromkeys(rows.select("group", "label").rows()))  # every (group, label)
    position = {key: len(keys) - 1 - i for i, key in enumerate(keys)}  # first at the top
    groups = list(dict.fromkeys(g for g, _ in keys))
    colour = {g: OKABE_ITO[i % len(OKABE_ITO)] for i, g in enumerate(groups)}
    height = max(3.5, 1.6 + 0.17 * len(keys))
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(3.1 * len(metrics) + 2.6, height), sharey=True, squeeze=False
    )
    for ax, metric in zip(axes[0], metrics, strict=True):
        part = rows.filter(pl.col("metric") == metric)
        for group in groups:
            g = part.filter(pl.col("group") == group)
            y = np.array([position[(group, label)] for label in g["label"]])
            x = g["mean_diff"].to_numpy()
            err = np.vstack([x - g["ci_low"].to_numpy(), g["ci_high"].to_numpy() - x])
            ax.errorbar(x, y, xerr=err, fmt="none", ecolor=colour[group], elinewidth=1)
            significant = g["significant"].to_numpy()
            for filled in (True, False):
                keep = significant == filled
                ax.scatter(
                    x[keep], y[keep], s=22, zorder=3, edgecolors=colour[group], linewidths=1.2,
                    facecolors=colour[group] if filled else "white",
                    gid=f"{group}|{'significant' if filled else 'not significant'}",
                )  # fmt: skip
        ax.axvline(0, color="grey", linewidth=0.8, zorder=1)
        for boundary in np.cumsum([sum(g == grp for g, _ in keys) for grp in groups])[:-1]:
            ax.axhline(len(keys) - boundary - 0.5, color="#bbbbbb", linewidth=0.6)
        unit = " bits" if metric == "entropy" else ""
        ax.set_title(METRIC_NAMES.get(metric, metric))
        ax.set_xlabel(f"difference A - B{unit and ' (bits)'}")
        ax.grid(axis="x", color="#eeeeee")
        ax.set_axisbelow(True)
    axes[0][0].set_yticks([position[k] for k in keys], [label for _, label in keys], fontsize=7)
    last = axes[0][-1]
    for group in groups:  # the contrast's name beside its block of rows, right of the last panel
        ys = [position[k] for k in keys if k[0] == group]
        last.text(
            1.03,
            (min(ys) + max(ys)) / 2,
            group,
            rotation=270,
            va="center",
            ha="left",
            fontsize=8,
            color=colour[group],
            transform=last.get_yaxis_transform(),
        )
    axes[0][0].set_ylim(-0.7, len(keys) - 0.3)
    handles = [
        plt.Line2D([], [], color=colour[g], marker="o", linestyle="-", label=g) for g in groups
    ]
    handles += [
        plt.Line2D([], [], color="grey", marker="o", linestyle="", label="significant (Holm)"),
        plt.Line2D([], [], color="grey", marker="o", markerfacecolor="white", linestyle="",
                   label="not significant"),
    ]  # fmt: skip
    fig.suptitle(
        "Differences A - B (e.g. smoothing 0.1 minus 0): mean over languages, 95% paired t "
        "interval", y=1.0 - 0.08 / height, va="top",
    )  # fmt: skip
    fig.legend(handles=handles, loc="upper center", ncol=min(4, len(handles)), fontsize=8,
               frameon=False, bbox_to_anchor=(0.5, 1.0 - 0.4 / height))  # fmt: skip
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.8 / height))
    return fig


# ---- per language -------------------------------------------------------------------------------


def language_order(report: Report, model: str, benchmark: str) -> list[str]:
    """Languages of one model and benchmark, by the base model's accuracy (lowest first), else
    by the mean accuracy of the model's configurations, else by name."""
    configs = [c for c in report.configs if c.model == model]
    languages = sorted(
        set().union(*(report.values.get((c, benchmark, m), {}) for c in configs
                      for m in LANGUAGE_METRICS))
    )  # fmt: skip
    base = next((c for c in configs if c.is_base), None)
    reference = report.values.get((base, benchmark, "accuracy"), {}) if base else {}
    if not reference:
        per = [report.values.get((c, benchmark, "accuracy"), {}) for c in configs]
        reference = {
            lang: float(np.mean([v[lang] for v in per if lang in v]))
            for lang in languages
            if any(lang in v for v in per)
        }
    return sorted(languages, key=lambda lang: (reference.get(lang, math.inf), lang))


def per_language(report: Report, model: str, benchmark: str) -> MplFigure:
    """Rows of panels: per metric (accuracy, ECE) and SFT dataset, grouped bars per language:
    base model, then each smoothing value; bar i of a group is configuration i of the panel's
    legend. Each bar's gid is "<configuration label>|<language>"."""
    plt = _pyplot()
    configs = [c for c in report.configs if c.model == model]
    base = [c for c in configs if c.is_base]
    datasets = list(dict.fromkeys(c.sft_dataset for c in configs if not c.is_base)) or [None]
    smoothing_values = sorted({c.smoothing for c in configs if not c.is_base})
    metrics = [m for m in LANGUAGE_METRICS if m in report.metrics]
    languages = language_order(report, model, benchmark)
    width_in = max(8.0, 1.4 + 0.32 * len(languages))
    panels = [(m, d) for m in metrics for d in datasets]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(width_in, 0.6 + 2.3 * len(panels)), squeeze=False
    )
    x = np.arange(len(languages))
    for ax, (metric, dataset) in zip(axes[:, 0], panels, strict=True):
        shown = base + [c for c in configs if c.sft_dataset == dataset and not c.is_base]
        width = 0.85 / max(1, len(shown))
        for i, config in enumerate(shown):
            values = report.values.get((config, benchmark, metric), {})
            heights = np.array([values.get(lang, np.nan) for lang in languages])
            intervals = report.intervals.get((config, benchmark, metric), {})
            err = None
            if intervals:
                low = np.array([intervals.get(lang, (np.nan, np.nan))[0] for lang in languages])
                high = np.array([intervals.get(lang, (np.nan, np.nan))[1] for lang in languages])
                err = np.vstack([heights - low, high - heights])
                err = np.where(np.isfinite(err), np.clip(err, 0, None), 0)
            bars = ax.bar(
                x + (i - (len(shown) - 1) / 2) * width, np.nan_to_num(heights), width,
                yerr=err, error_kw={"elinewidth": 0.6, "ecolor": "#555555"},
                color=smoothing_colour(config, smoothing_values),
                label="base" if config.is_base else f"smoothing {config.smoothing:g}",
            )  # fmt: skip
            for bar, lang in zip(bars, languages, strict=True):
                bar.set_gid(f"{config.label}|{lang}")
        ax.set_xticks(x, languages, rotation=90, fontsize=8)
        ax.set_xlim(-0.6, len(languages) - 0.4)
        ax.set_ylabel(axis_label(metric) if metric != "ece" else "ECE (fraction)", fontsize=8)
        ax.set_title(f"{METRIC_NAMES.get(metric, metric)}: {dataset or 'base'}", fontsize=9,
                     loc="left")  # fmt: skip
        ax.grid(axis="y", color="#eeeeee")
        ax.set_axisbelow(True)
        ax.legend(fontsize=7, ncol=len(shown), loc="upper left", frameon=False)
        ax.margins(y=0.18)
    bars_note = " (error bars: 95% bootstrap interval)" if report.intervals else ""
    fig.suptitle(f"{model}, {benchmark}: per language, ordered by base accuracy{bars_note}",
                 fontsize=10)  # fmt: skip
    fig.supxlabel("language", fontsize=8)
    fig.tight_layout()
    return fig


# ---- accuracy vs ECE --------------------------------------------------------------------------


def scatter(report: Report, benchmark: str) -> MplFigure:
    """One panel per model: a point per (configuration, language), x = accuracy, y = ECE.
    One scatter per configuration, its gid the configuration's label."""
    plt = _pyplot()
    models = sorted({c.model for c in report.configs})
    smoothing_values = sorted({c.smoothing for c in report.configs if not c.is_base})
    datasets = sorted({c.sft_dataset for c in report.configs if not c.is_base})
    fig, axes = plt.subplots(
        1, len(models), figsize=(4.2 * len(models) + 0.5, 4.6), squeeze=False, sharey=True
    )
    x_metric, y_metric = SCATTER_METRICS
    for ax, model in zip(axes[0], models, strict=True):
        for config in (c for c in report.configs if c.model == model):
            xs = report.values.get((config, benchmark, x_metric), {})
            ys = report.values.get((config, benchmark, y_metric), {})
            common = sorted(xs.keys() & ys.keys())
            marker = "*" if config.is_base else MARKERS[datasets.index(config.sft_dataset) % 7]
            ax.scatter(
                [xs[k] for k in common], [ys[k] for k in common], s=40 if config.is_base else 18,
                marker=marker, color=smoothing_colour(config, smoothing_values), alpha=0.75,
                edgecolors="none", gid=config.label,
            )  # fmt: skip
        ax.set_title(model, fontsize=10)
        ax.set_xlabel(axis_label(x_metric), fontsize=8)
        ax.grid(color="#eeeeee")
        ax.set_axisbelow(True)
    axes[0][0].set_ylabel(axis_label(y_metric), fontsize=8)
    handles = [plt.Line2D([], [], marker="*", color=BASE_COLOUR, linestyle="", label="base")]
    handles += [
        plt.Line2D([], [], marker="o", color=SMOOTHING_COLOURS[i % 7], linestyle="",
                   label=f"smoothing {s:g}")
        for i, s in enumerate(smoothing_values)
    ]  # fmt: skip
    handles += [
        plt.Line2D([], [], marker=MARKERS[i % 7], color="grey", linestyle="", label=d)
        for i, d in enumerate(datasets)
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(f"{benchmark}: accuracy vs ECE, one point per configuration and language")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


# ---- pooled reliability diagrams ----------------------------------------------------------------


def prediction_columns(predictions: pl.DataFrame) -> pl.DataFrame:
    """Check a predictions frame and return it with `confidence` and `correct` columns.

    One row per question of a scored split: model, sft_dataset (`base`/`none`/empty for a base
    model), smoothing (empty for a base model), benchmark, optionally lr (then only the report's
    selected lr is drawn) and split (dev/validation rows are left out), and either
    `confidence` (the top option's probability) and `correct` (whether the top option is the
    gold one), or `probs` (list of option probabilities) and `gold` (the gold option's index),
    as evaluators.score's predictions.parquet has them.
    """
    from orchestrator.stats import ReportError

    frame = predictions
    if "confidence" not in frame.columns and {"probs", "gold"} <= set(frame.columns):
        probs = frame["probs"].to_list()
        frame = frame.with_columns(
            confidence=pl.Series([float(max(p)) for p in probs], dtype=pl.Float64),
            correct=pl.Series(
                [int(np.argmax(p)) == int(g) for p, g in zip(probs, frame["gold"], strict=True)]
            ),
        )
    if missing := [c for c in PREDICTION_COLUMNS if c not in frame.columns]:
        raise ReportError(
            f"predictions lack column(s) {', '.join(missing)}; they need "
            f"{', '.join(PREDICTION_COLUMNS)} (or probs and gold instead of confidence, correct)"
        )
    if "split" in frame.columns:  # dev/validation questions select the lr; the report shows test
        frame = frame.filter(~pl.col("split").is_in(SELECTION_SPLITS))
    dataset = pl.col("sft_dataset").cast(pl.String)
    base = dataset.is_null() | dataset.str.strip_chars().str.to_lowercase().is_in(
        ["base", "none", ""]
    )
    return frame.with_columns(
        sft_dataset=pl.when(base).then(pl.lit("base")).otherwise(dataset),
        smoothing=pl.when(base).then(None).otherwise(pl.col("smoothing").cast(pl.Float64)),
        confidence=pl.col("confidence").cast(pl.Float64),
        correct=pl.col("correct").cast(pl.Float64),
    )


def pooled_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = RELIABILITY_BINS):
    """Equal-width, right-closed bins as evaluators.metrics bins the ECE: a list of dicts with
    lower, upper, count, mean_confidence, accuracy (what evaluators.reliability draws)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=n_bins)
    hit_sum = np.bincount(index, weights=correct, minlength=n_bins)
    return [
        {"lower": edges[b], "upper": edges[b + 1], "count": int(count[b]),
         "mean_confidence": conf_sum[b] / count[b] if count[b] else math.nan,
         "accuracy": hit_sum[b] / count[b] if count[b] else math.nan}
        for b in range(n_bins)
    ]  # fmt: skip


def reliability_panels(
    report: Report, predictions: pl.DataFrame
) -> Iterator[tuple[str, dict[str, list[dict]]]]:
    """(benchmark, {configuration name: pooled bins}) for the report's configurations."""
    frame = prediction_columns(predictions)
    for benchmark in report.benchmarks:
        panels = {}
        for config in report.configs:
            rows = frame.filter(
                pl.col("model") == config.model,
                pl.col("sft_dataset") == config.sft_dataset,
                pl.col("benchmark") == benchmark,
                pl.col("smoothing").is_null()
                if config.smoothing is None
                else pl.col("smoothing") == config.smoothing,
            )
            if "lr" in rows.columns and config.lr is not None:
                rows = rows.filter(pl.col("lr").cast(pl.Float64) == config.lr)
            if rows.height:
                bins = pooled_bins(rows["confidence"].to_numpy(), rows["correct"].to_numpy())
                panels[f"{config.model} {config.label} (n={rows.height})"] = bins
        if panels:
            yield benchmark, panels


# ---- writing ------------------------------------------------------------------------------------


def _save(fig: MplFigure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    _pyplot().close(fig)


def _slug(*parts: str) -> str:
    return "-".join("".join(ch if ch.isalnum() or ch in "._" else "_" for ch in p) for p in parts)


def write_figures(
    report: Report, out_dir: Path, predictions: pl.DataFrame | None = None
) -> list[Image]:
    """Draw every figure into out_dir/figures/; returns them in report order."""
    images: list[Image] = []

    def add(fig: MplFigure, name: str, title: str, caption: str) -> None:
        relative = Path("figures") / f"{name}.png"
        _save(fig, out_dir / relative)
        images.append(Image(name, relative, title, caption))

    if report.comparisons.height:
        add(
            forest(report),
            "forest",
            "Forest plot: differences with 95% intervals",
            "Per configuration and contrast, mean difference A - B over languages with its 95% "
            "paired t interval; filled = significant (Holm), hollow = not; zero line grey.",
        )
    if any(m in report.metrics for m in LANGUAGE_METRICS):
        for model in sorted({c.model for c in report.configs}):
            for benchmark in report.benchmarks:
                add(
                    per_language(report, model, benchmark),
                    _slug("language", model, benchmark),
                    f"Per language: {model}, {benchmark}",
                    "Accuracy and ECE per language, base model (black) and each smoothing value, "
                    "one row of panels per SFT dataset; languages ordered by base accuracy."
                    + (" Error bars: 95% bootstrap intervals." if report.intervals else ""),
                )
    if all(m in report.metrics for m in SCATTER_METRICS):
        for benchmark in report.benchmarks:
            add(scatter(report, benchmark), _slug("scatter", benchmark),
                f"Accuracy vs ECE: {benchmark}",
                "One point per configuration and language; colour = base model or smoothing "
                "value, marker = SFT dataset.")  # fmt: skip
    if predictions is not None:
        from evaluators.reliability import plot_reliability_overview

        for benchmark, panels in reliability_panels(report, predictions):
            name = _slug("reliability", benchmark)
            title = f"{benchmark}: pooled reliability diagrams"
            plot_reliability_overview(panels, title, out_dir / "figures" / f"{name}.png")
            images.append(Image(name, Path("figures") / f"{name}.png", title,
                                "Per configuration, all its languages' questions pooled: accuracy "
                                f"per confidence bin ({RELIABILITY_BINS} equal-width bins), "
                                "diagonal = perfect calibration."))  # fmt: skip
    return images


def png_data_uri(path: Path) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
