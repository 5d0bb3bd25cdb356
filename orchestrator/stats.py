"""Statistics of a long results table: lr selection, tests between configurations, Holm, Table 1.

Languages are the samples: a configuration has one value per language split (e.g. its ECE on
Global-MMLU `de`). The default test is Student's paired t-test over the languages both sides have
(`scipy.stats.ttest_rel`), because a language's difficulty moves both configurations together.
Welch (`ttest_ind(equal_var=False)`, languages as independent samples) and the Wilcoxon
signed-rank test (paired, no normality assumption) are available. Effect sizes match the test:
- paired: Cohen's d_z = mean(a - b) / sd(a - b), ddof 1;
- welch: Hedges' g = (mean a - mean b) / pooled sd (ddof 1) * (1 - 3 / (4 (n_a + n_b) - 9));
- wilcoxon: matched-pairs rank-biserial r = (R+ - R-) / (R+ + R-), over the non-zero
  differences (scipy's default `zero_method="wilcox"` drops zero differences too).
Holm is implemented here (statsmodels is not a dependency) and tested against the step-down
definition. Its family is selectable (FAMILIES): all tests (smoothing beta vs 0 and tuned vs
base), smoothing vs 0 only (the study's), or tuned vs base only; only the family's tests run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl

from evaluators.metrics import HIGHER_IS_BETTER

StatTest = Literal["paired", "welch", "wilcoxon"]
TESTS: tuple[StatTest, ...] = ("paired", "welch", "wilcoxon")
EFFECT_KIND = {"paired": "Cohen's d_z", "welch": "Hedges' g", "wilcoxon": "rank-biserial r"}
MIN_SAMPLES = 2
BASE_DATASET = "base"  # sft_dataset of an untuned model once validated (smoothing and lr null)
SELECTION_SPLITS = ("dev", "validation")
SMOOTHING_VS_ZERO, TUNED_VS_BASE = "smoothing vs 0", "tuned vs base"
MARKS = {SMOOTHING_VS_ZERO: "*", TUNED_VS_BASE: "†"}
Family = Literal["all", "smoothing", "base"]
FAMILIES: dict[Family, tuple[str, ...]] = {  # the contrasts tested and Holm-corrected together
    "all": (SMOOTHING_VS_ZERO, TUNED_VS_BASE),
    "smoothing": (SMOOTHING_VS_ZERO,),
    "base": (TUNED_VS_BASE,),
}
RESULT_SCHEMA: dict[str, type[pl.DataType]] = {
    **dict.fromkeys(["n", "n_a", "n_b"], pl.Int64),
    **dict.fromkeys(["mean_a", "mean_b", "mean_diff", "t", "W", "df", "p"], pl.Float64),
    "effect_size": pl.Float64,
}
COMPARISON_COLUMNS: dict[str, type[pl.DataType]] = {
    **dict.fromkeys(["contrast", "model", "sft_dataset", "benchmark", "metric"], pl.String),
    **dict.fromkeys(["smoothing_a", "smoothing_b"], pl.Float64),  # smoothing_b null: base model
    **dict.fromkeys(["config_a", "config_b"], pl.String),
    **dict.fromkeys(["lr_a", "lr_b"], pl.Float64),
}
LANGUAGE_COLUMNS = ("only_a", "only_b")  # languages one side lacks (comma-separated), not tested
Values = dict[tuple["Config", str, str], dict[str, float]]  # (config, bench, metric) -> lang -> v


class ReportError(ValueError):
    """Bad input (table, experiment, option) the user must fix; the CLI prints it, no traceback."""


@dataclass(frozen=True)
class Config:
    """One reported configuration; lr is the selected one (None for a base model)."""

    model: str
    sft_dataset: str
    smoothing: float | None
    lr: float | None

    @property
    def is_base(self) -> bool:
        return self.sft_dataset == BASE_DATASET

    @property
    def label(self) -> str:
        return "base" if self.is_base else f"{self.sft_dataset} ls={self.smoothing:g}"

    def sort_key(self) -> tuple[str, bool, str, float]:
        return (self.model, not self.is_base, self.sft_dataset, self.smoothing or 0.0)


@dataclass(frozen=True)
class ComparisonResult:
    """A vs B. `n`: languages in the test (pairs; for welch n_a + n_b). `p` NaN = undefined."""

    n: int
    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    mean_diff: float
    statistic: float  # t, or W for wilcoxon
    df: float  # NaN for wilcoxon
    p: float
    effect_size: float


def _safe_ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when the denominator is zero (constant samples)."""
    return numerator / denominator if denominator > 0 else math.nan


def cohens_dz(a: np.ndarray, b: np.ndarray) -> float:
    """Paired effect size: mean difference over the standard deviation (ddof 1) of differences."""
    diff = a - b
    return _safe_ratio(float(diff.mean()), float(diff.std(ddof=1)))


def hedges_g(a: np.ndarray, b: np.ndarray) -> float:
    """Independent-samples effect size: Cohen's d with the pooled sd, small-sample corrected."""
    n_a, n_b = a.size, b.size
    pooled = math.sqrt(((n_a - 1) * a.var(ddof=1) + (n_b - 1) * b.var(ddof=1)) / (n_a + n_b - 2))
    return _safe_ratio(float(a.mean() - b.mean()), pooled) * (1 - 3 / (4 * (n_a + n_b) - 9))


def rank_biserial(a: np.ndarray, b: np.ndarray) -> float:
    """Matched-pairs rank-biserial correlation in [-1, 1]; positive when A tends to exceed B."""
    from scipy import stats

    diff = (a - b)[a != b]
    if diff.size == 0:
        return math.nan
    ranks = stats.rankdata(np.abs(diff))
    return float((ranks[diff > 0].sum() - ranks[diff < 0].sum()) / ranks.sum())


def compare(a: np.ndarray, b: np.ndarray, test: StatTest = "paired") -> ComparisonResult:
    """Test A against B; for paired tests `a[i]` and `b[i]` are the same language.

    Raises ValueError with fewer than 2 values on a side (callers skip and count those).
    """
    from scipy import stats  # here, not at the top: it alone takes a second to import

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; choose one of {', '.join(TESTS)}")
    paired = test != "welch"
    if paired and a.shape != b.shape:
        raise ValueError(f"paired test needs aligned samples, got {a.size} and {b.size} values")
    if min(a.size, b.size) < MIN_SAMPLES:
        raise ValueError(f"need at least {MIN_SAMPLES} languages per side, got {a.size}/{b.size}")
    if test == "paired":
        res = stats.ttest_rel(a, b)
        statistic, p, df, effect = res.statistic, res.pvalue, res.df, cohens_dz(a, b)
    elif test == "welch":
        res = stats.ttest_ind(a, b, equal_var=False)
        statistic, p, df, effect = res.statistic, res.pvalue, res.df, hedges_g(a, b)
    elif np.all(a == b):  # scipy raises here; "no difference at all" is undefined, not an error
        statistic, p, df, effect = math.nan, math.nan, math.nan, math.nan
    else:
        res = stats.wilcoxon(a, b)
        statistic, p, df, effect = res.statistic, res.pvalue, math.nan, rank_biserial(a, b)
    return ComparisonResult(
        n=a.size if paired else a.size + b.size,
        n_a=a.size,
        n_b=b.size,
        mean_a=float(a.mean()),
        mean_b=float(b.mean()),
        mean_diff=float(a.mean() - b.mean()),
        statistic=float(statistic),
        df=float(df),
        p=float(p),
        effect_size=float(effect),
    )


def holm(p_values: np.ndarray | list[float]) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error control under any dependence).

    Sorted ascending, p_(i) is multiplied by (m - i + 1) (1-based i), capped at 1 and made
    monotone by a running maximum, so `adjusted <= alpha` rejects exactly what the step-down
    procedure rejects at level alpha. NaN entries stay NaN and do not count in m.
    """
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, math.nan)
    defined = np.flatnonzero(~np.isnan(p))
    m = defined.size
    order = defined[np.argsort(p[defined], kind="stable")]
    adjusted[order] = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    return adjusted


def split_for_selection(table: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, str]:
    """(rows to select the lr on, rows to report, how the selection was done)."""
    if "split" in table.columns:
        is_dev = pl.col("split").is_in(SELECTION_SPLITS)
        if table.filter(is_dev).height:
            how = "on the dev/validation rows; the report uses the other rows"
            return table.filter(is_dev), table.filter(~is_dev), how
    how = (
        "on the reported rows themselves (the table has no dev/validation rows): "
        "optimistic, since selection and tests see the same data"
    )
    return table, table, how


def is_base() -> pl.Expr:
    """Rows of an untuned model, in a validated table or as the sweep writes them ("none")."""
    return pl.col("sft_dataset").is_null() | pl.col("sft_dataset").is_in([BASE_DATASET, "none"])


SELECTION_KEYS = ["model", "sft_dataset", "smoothing"]  # a configuration, one lr chosen for it
# The sweep's record of its lr choice: on every row of a selected trial, the metric it used.
SELECTED_BY_COLUMN = "lr_selected_by"


def select_lr(selection: pl.DataFrame, metric: str) -> pl.DataFrame:
    """Per (model, sft_dataset, smoothing) with lrs: the lr with the best mean `metric` over all
    languages of all benchmarks (ties: the smaller lr), with every candidate's score.

    Configurations whose lr is empty (one lr, already selected) are not in the result."""
    if metric not in HIGHER_IS_BETTER:
        choices = ", ".join(HIGHER_IS_BETTER)
        raise ReportError(f"cannot select the lr by {metric!r}: no direction; choose {choices}")
    tuned = selection.filter(~is_base(), pl.col("lr").is_not_null())
    rows = tuned.filter(pl.col("metric") == metric)
    if tuned.height and not rows.height:
        present = ", ".join(sorted(tuned["metric"].unique()))
        raise ReportError(f"no {metric!r} rows to select the lr on; metrics present: {present}")
    scores = (
        rows.group_by(*SELECTION_KEYS, "lr")
        .agg(score=pl.col("value").mean())
        .sort(["score", "lr"], descending=[HIGHER_IS_BETTER[metric], False])
    )
    lr_text = pl.col("lr").map_elements("{:g}".format, return_dtype=pl.String)
    candidate = pl.format("{}: {}", lr_text, pl.col("score").round(4))
    candidates = scores.sort("lr").group_by(SELECTION_KEYS).agg(candidates=candidate.str.join(", "))
    best = scores.group_by(SELECTION_KEYS, maintain_order=True).first()
    return best.join(candidates, on=SELECTION_KEYS).sort(SELECTION_KEYS)


def with_selection(table: pl.DataFrame, metric: str | None) -> pl.DataFrame:
    """The table with the sweep's lr choice recorded: `lr_selected_by` is `metric` on every row
    of a selected trial (the tuned runs scored on the test splits), null elsewhere, so the
    report takes that choice instead of making its own."""
    tested = ~pl.col("split").is_in(SELECTION_SPLITS) & pl.col("lr").is_not_null()
    selected = table.filter(tested)["run"].unique().to_list() if metric else []
    marked = pl.when(pl.col("run").is_in(selected)).then(pl.lit(metric)).otherwise(None)
    return table.with_columns(marked.cast(pl.String).alias(SELECTED_BY_COLUMN))


def recorded_selection(table: pl.DataFrame) -> tuple[pl.DataFrame, str] | None:
    """The lr choice a sweep wrote into its table (`SELECTED_BY_COLUMN` names the metric on the
    selected trials' rows) and that metric; None for a table without one."""
    if SELECTED_BY_COLUMN not in table.columns:
        return None
    rows = table.filter(pl.col(SELECTED_BY_COLUMN).is_not_null(), ~is_base())
    if not rows.height:
        return None
    metrics = sorted(rows[SELECTED_BY_COLUMN].unique())
    if len(metrics) > 1:
        raise ReportError(f"{SELECTED_BY_COLUMN} names several metrics ({', '.join(metrics)})")
    chosen = rows.unique([*SELECTION_KEYS, "lr"]).select(*SELECTION_KEYS, "lr")
    if (twice := chosen.group_by(SELECTION_KEYS).len().filter(pl.col("len") > 1)).height:
        names = ", ".join("/".join(map(str, r)) for r in twice.select(SELECTION_KEYS).rows())
        raise ReportError(f"{SELECTED_BY_COLUMN} marks several lrs of one configuration: {names}")
    return chosen, metrics[0]


def apply_selection(rows: pl.DataFrame, selected: pl.DataFrame) -> tuple[list[Config], Values]:
    """Keep base rows, rows with an empty lr (one lr per configuration) and the selected lr's
    rows; index values by (config, benchmark, metric). `rows` is a validated table."""
    keys = ["model", "sft_dataset", "smoothing", "lr"]
    tuned = rows.filter(~is_base(), pl.col("lr").is_not_null()).join(selected.select(keys), on=keys)
    kept = pl.concat([rows.filter(is_base() | pl.col("lr").is_null()), tuned.select(rows.columns)])
    grouped = kept.group_by(*keys, "benchmark", "metric").agg("language", "value")
    values: Values = {}
    for g in grouped.iter_rows(named=True):
        base = g["sft_dataset"] == BASE_DATASET
        config = Config(g["model"], g["sft_dataset"], None if base else g["smoothing"], g["lr"])
        values[(config, g["benchmark"], g["metric"])] = dict(
            zip(g["language"], g["value"], strict=True)
        )
    return sorted({c for c, _, _ in values}, key=Config.sort_key), values


@dataclass(frozen=True)
class Comparison:
    """One planned test: descriptive columns (model, benchmark, ...) and each side's values."""

    columns: dict[str, object]
    a: dict[str, float]  # language -> value
    b: dict[str, float]

    @property
    def name(self) -> str:
        c = self.columns
        return f"{c['model']} {c['config_a']} vs {c['config_b']}, {c['benchmark']} {c['metric']}"


def comparison_pairs(
    configs: list[Config], family: Family = "all"
) -> list[tuple[str, Config, Config]]:
    """(contrast, A, B) of the family: each smoothing beta != 0 vs 0 of the same model and
    dataset, each tuned config vs its base model."""
    if family not in FAMILIES:
        raise ReportError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    by_key = {(c.model, c.sft_dataset, c.smoothing): c for c in configs}
    pairs = []
    for config in (c for c in configs if not c.is_base):
        zero = by_key.get((config.model, config.sft_dataset, 0.0))
        if zero is not None and config.smoothing != 0.0:
            pairs.append((SMOOTHING_VS_ZERO, config, zero))
        base = by_key.get((config.model, BASE_DATASET, None))
        if base is not None:
            pairs.append((TUNED_VS_BASE, config, base))
    pairs = [pair for pair in pairs if pair[0] in FAMILIES[family]]
    return sorted(pairs, key=lambda pair: pair[0] != SMOOTHING_VS_ZERO)  # stable: contrast, config


def plan_comparisons(
    configs: list[Config],
    benchmarks: list[str],
    values: Values,
    metrics: tuple[str, ...],
    family: Family = "all",
) -> tuple[list[Comparison], list[str]]:
    """Every pair of the family on every benchmark and metric; where only one side has values
    it is skipped."""
    planned, skipped = [], []
    for contrast, a, b in comparison_pairs(configs, family):
        for benchmark in benchmarks:
            for metric in metrics:
                columns = {"contrast": contrast, "model": a.model, "sft_dataset": a.sft_dataset,
                           "benchmark": benchmark, "metric": metric, "smoothing_a": a.smoothing,
                           "smoothing_b": b.smoothing, "config_a": a.label, "config_b": b.label,
                           "lr_a": a.lr, "lr_b": b.lr}  # fmt: skip
                va, vb = values.get((a, benchmark, metric)), values.get((b, benchmark, metric))
                if va and vb:
                    planned.append(Comparison(columns, va, vb))
                elif va or vb:
                    skipped.append(f"{Comparison(columns, {}, {}).name}: no values for one side")
    return planned, skipped


def run_family(
    comparisons: list[Comparison], test: StatTest = "paired", alpha: float = 0.05
) -> tuple[pl.DataFrame, list[str]]:
    """Run every comparison, Holm-correct across all that ran; returns (results, skipped).

    Paired tests use the languages both sides have, aligned by name (`only_a`, `only_b` name the
    others); Welch every value of each side. Fewer than 2 languages on a side: skipped and named,
    so the family is exactly the tests run. `t` holds the t statistic, `W` Wilcoxon's;
    `significant` = p_holm < alpha.
    """
    rows, skipped = [], []
    for comparison in comparisons:
        a, b = comparison.a, comparison.b
        only = {"only_a": "", "only_b": ""}
        if test == "welch":
            xa, xb = list(a.values()), list(b.values())
        else:
            common = sorted(a.keys() & b.keys())
            xa, xb = [a[k] for k in common], [b[k] for k in common]
            only = {"only_a": ", ".join(sorted(a.keys() - b.keys())),
                    "only_b": ", ".join(sorted(b.keys() - a.keys()))}  # fmt: skip
        try:
            with np.errstate(all="ignore"):
                result = compare(np.array(xa), np.array(xb), test)
        except ValueError as error:
            skipped.append(f"{comparison.name}: {error}")
            continue
        fields = vars(result).copy()
        statistic = fields.pop("statistic")
        fields["t"], fields["W"] = (None, statistic) if test == "wilcoxon" else (statistic, None)
        rows.append({**comparison.columns, **fields, **only})
    schema = {**COMPARISON_COLUMNS, **RESULT_SCHEMA, **dict.fromkeys(LANGUAGE_COLUMNS, pl.String)}
    table = pl.DataFrame(rows, schema=schema)
    adjusted = holm(table["p"].to_numpy())
    order = [*COMPARISON_COLUMNS, "n", "n_a", "n_b", "mean_a", "mean_b", "mean_diff", "t", "W",
             "df", "p", "p_holm", "significant", "effect_size", "effect_kind", "test",
             *LANGUAGE_COLUMNS]  # fmt: skip
    return table.with_columns(
        test=pl.lit(test),
        effect_kind=pl.lit(EFFECT_KIND[test]),
        p_holm=pl.Series(adjusted, dtype=pl.Float64),
        significant=pl.Series(np.nan_to_num(adjusted, nan=1.0) < alpha, dtype=pl.Boolean),
    ).select(order), skipped


def table1(
    configs: list[Config],
    benchmarks: list[str],
    values: Values,
    comparisons: pl.DataFrame,
    metrics: tuple[str, ...],
    alpha: float,
) -> pl.DataFrame:
    """Long Table 1: mean over languages per (config, benchmark, metric), `best`, Holm p, marks.

    `best` is within one (model, dataset, benchmark, metric) over its smoothing values, so a
    group of one (a base model, a single smoothing) has no bold value.
    """
    rows = [{"model": c.model, "sft_dataset": c.sft_dataset, "smoothing": c.smoothing, "lr": c.lr,
             "config": c.label, "benchmark": b, "metric": m,
             "mean": float(np.mean(list(v.values()))), "n_languages": len(v)}
            for c in configs for b in benchmarks for m in metrics
            if (v := values.get((c, b, m)))]  # fmt: skip
    schema = {"model": pl.String, "sft_dataset": pl.String, "smoothing": pl.Float64,
              "lr": pl.Float64, "config": pl.String, "benchmark": pl.String,
              "metric": pl.String, "mean": pl.Float64, "n_languages": pl.Int64}  # fmt: skip
    group = ["model", "sft_dataset", "benchmark", "metric"]
    # a metric without a direction (not in HIGHER_IS_BETTER) has no best value
    higher = pl.col("metric").replace_strict(
        HIGHER_IS_BETTER, default=None, return_dtype=pl.Boolean
    )
    best = pl.when(higher).then(pl.col("mean").max()).otherwise(pl.col("mean").min()).over(group)
    table = pl.DataFrame(rows, schema=schema).with_columns(
        best=(pl.col("sft_dataset") != BASE_DATASET)
        & (pl.len().over(group) > 1)
        & higher.is_not_null()
        & (pl.col("mean") == best)
    )
    keys = ["model", "sft_dataset", "config", "benchmark", "metric"]
    marks = []
    for kind, name in ((SMOOTHING_VS_ZERO, "vs_smoothing0"), (TUNED_VS_BASE, "vs_base")):
        p = comparisons.filter(pl.col("contrast") == kind).rename({"config_a": "config"})
        p = p.select(*keys, pl.col("p_holm").alias(f"p_holm_{name}"))
        table = table.join(p, on=keys, how="left", maintain_order="left")
        marks.append(pl.when(pl.col(f"p_holm_{name}") < alpha).then(pl.lit(MARKS[kind])))
    return table.with_columns(marks=pl.concat_str(marks, ignore_nulls=True))
