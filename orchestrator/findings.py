"""The report's findings: sentences written from the comparisons, so they follow the numbers;
and the notes on what was compared (`describe`, `language_notes`).

Per contrast and metric, over the contrast's model x dataset x benchmark configurations: in how
many the metric is higher or lower, how many of those differences are significant (Holm-adjusted
p < alpha), and the mean difference A - B. Contrasts: smoothing beta vs 0, one per beta; tuned vs
base, one per smoothing value of the tuned side. Direction words come from
evaluators.metrics.HIGHER_IS_BETTER ("lower (better)"); entropy and metrics calsweep does not
know get "higher"/"lower" alone: lower entropy is a convention in Table 1, not a quality.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from evaluators.metrics import HIGHER_IS_BETTER
from orchestrator.stats import FAMILIES, SMOOTHING_VS_ZERO, Config, Values

METRIC_NAMES = {
    "accuracy": "accuracy", "entropy": "entropy", "ece": "ECE", "rms": "RMS calibration error",
    "nll": "NLL", "brier": "Brier score", "mad": "MAD", "sce": "SCE", "ace": "ACE",
}  # fmt: skip
UNITS = {"entropy": " bits"}
NO_VERDICT = ("entropy",)  # direction words without better/worse
TEST_NAMES = {
    "paired": "paired t-test over languages",
    "welch": "Welch's t-test over languages",
    "wilcoxon": "Wilcoxon signed-rank test over languages",
}
UNIT = "model × dataset × benchmark configurations"
LEAD = ("ece", "rms", "accuracy", "entropy")  # calibration first: it is the study's question
NAMED_EXCEPTIONS = 3  # configurations going against the majority are named up to this many


@dataclass(frozen=True)
class Finding:
    """One contrast and metric, counted over its configurations (one test each)."""

    contrast: str  # e.g. "Smoothing 0.1 vs 0", "Tuned (smoothing 0) vs base"
    metric: str
    configurations: int
    higher: int
    lower: int
    significant_higher: int
    significant_lower: int
    mean_diff: float  # mean over configurations of (mean A - mean B) over languages
    higher_in: tuple[str, ...] = ()  # the configurations ("model dataset benchmark")
    lower_in: tuple[str, ...] = ()

    def _word(self, higher: bool) -> str:
        word = "higher" if higher else "lower"
        better = HIGHER_IS_BETTER.get(self.metric)
        if better is None or self.metric in NO_VERDICT:
            return word
        return f"{word} ({'better' if better == higher else 'worse'})"

    def sentence(self) -> str:
        """E.g. "Smoothing 0.1 vs 0: ECE lower (better) in 18 of 18 model × dataset × benchmark
        configurations, significantly in 17; mean difference -0.077." The direction most
        configurations take comes first, the other (and unchanged ones) after it."""
        name = METRIC_NAMES.get(self.metric, self.metric)
        sides = [
            (self.higher, self.significant_higher, self._word(True), self.higher_in),
            (self.lower, self.significant_lower, self._word(False), self.lower_in),
        ]
        (most, most_significant, most_word, _), (other, other_significant, other_word, names) = (
            sorted(sides, key=lambda side: -side[0])
        )
        text = (
            f"{self.contrast}: {name} {most_word} in {most} of {self.configurations} {UNIT}, "
            f"significantly in {most_significant}"
        )
        if other:
            which = f" ({', '.join(names)})" if names and other <= NAMED_EXCEPTIONS else ""
            text += f"; {other_word} in {other}{which}, significantly in {other_significant}"
        if unchanged := self.configurations - self.higher - self.lower:
            text += f"; unchanged in {unchanged}"
        unit = UNITS.get(self.metric, "")
        return f"{text}; mean difference {self.mean_diff:+.3f}{unit}."


def _contrast_label(contrast: str, smoothing: float) -> str:
    if contrast == SMOOTHING_VS_ZERO:
        return f"Smoothing {smoothing:g} vs 0"
    return f"Tuned (smoothing {smoothing:g}) vs base"


def findings(comparisons: pl.DataFrame, metrics: tuple[str, ...]) -> list[list[Finding]]:
    """One list of findings per contrast group (in the order smoothing vs 0 by beta, then tuned
    vs base by smoothing), each with one finding per metric: calibration first (LEAD), then the
    others in `metrics` order."""
    metrics = (*(m for m in LEAD if m in metrics), *(m for m in metrics if m not in LEAD))
    if comparisons.height == 0:
        return []
    up, down = pl.col("mean_diff") > 0, pl.col("mean_diff") < 0
    name = pl.concat_str("model", "sft_dataset", "benchmark", separator=" ")
    counted = (
        comparisons.group_by("contrast", "smoothing_a", "metric")
        .agg(
            configurations=pl.len(),
            higher=up.sum(),
            lower=down.sum(),
            significant_higher=(up & pl.col("significant")).sum(),
            significant_lower=(down & pl.col("significant")).sum(),
            mean_diff=pl.col("mean_diff").mean(),
            higher_in=name.filter(up),
            lower_in=name.filter(down),
        )
        .with_columns(
            order=pl.col("contrast") != SMOOTHING_VS_ZERO,
            metric_order=pl.col("metric").replace_strict(
                {m: i for i, m in enumerate(metrics)}, default=len(metrics)
            ),
        )
        .sort("order", "smoothing_a", "metric_order", "metric")
    )
    groups: list[list[Finding]] = []
    for (contrast, smoothing), rows in counted.group_by(
        "contrast", "smoothing_a", maintain_order=True
    ):
        label = _contrast_label(str(contrast), float(smoothing))  # type: ignore[arg-type]
        counts = rows.select(
            "metric", "configurations", "higher", "lower", "significant_higher",
            "significant_lower", "mean_diff", "higher_in", "lower_in",
        )  # fmt: skip
        groups.append(
            [Finding(label, *r[:-2], tuple(r[-2]), tuple(r[-1])) for r in counts.iter_rows()]
        )
    return groups


def method_sentence(test: str, alpha: float, family: str, n_tests: int) -> str:
    """How the counts above were made: the test, the Holm family and its size, alpha."""
    contrasts = " and ".join(FAMILIES[family])  # type: ignore[index]
    return (
        f"Each configuration is tested against its reference with a {TEST_NAMES[test]} "
        "(differences are A - B, e.g. smoothing 0.1 minus smoothing 0, averaged over languages "
        f'and then configurations); "significantly" means Holm-adjusted p < {alpha} over the '
        f"{n_tests} tests of the family ({contrasts})."
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def describe(configs: list[Config], values: Values) -> str:
    """One sentence on what the table holds: models, datasets, smoothing values, benchmarks."""
    tuned = [c for c in configs if not c.is_base]
    models = sorted({c.model for c in configs})
    datasets = sorted({c.sft_dataset for c in tuned})
    smoothing = sorted({c.smoothing for c in tuned if c.smoothing is not None})
    languages: dict[str, set[str]] = {}
    for (_, benchmark, _), by_language in values.items():
        languages.setdefault(benchmark, set()).update(by_language)
    bases = sum(c.is_base for c in configs)
    return (
        f"Compared: {len(configs)} configurations of {_count(len(models), 'model')} "
        f"({', '.join(models)}): {_count(bases, 'base model')}, tuned on "
        f"{', '.join(datasets) or 'nothing'} with smoothing "
        f"{', '.join(f'{x:g}' for x in smoothing) or '-'}; benchmarks "
        + ", ".join(f"{b} ({len(langs)} languages)" for b, langs in sorted(languages.items()))
        + "."
    )


def language_notes(comparisons: pl.DataFrame) -> list[str]:
    """Where the two sides of a paired test have different languages: which were left out."""
    gaps = comparisons.filter((pl.col("only_a") != "") | (pl.col("only_b") != ""))
    gaps = gaps.unique(["model", "config_a", "config_b", "benchmark"], maintain_order=True)
    notes = []
    for r in gaps.iter_rows(named=True):
        sides = [f"{r['config_b']} has {r['only_b']} that {r['config_a']} lacks"] * bool(
            r["only_b"]
        ) + [f"{r['config_a']} has {r['only_a']} that {r['config_b']} lacks"] * bool(r["only_a"])
        notes.append(
            f"{r['model']} {r['benchmark']}: {'; '.join(sides)}; paired on the {r['n']} "
            "languages both have."
        )
    return notes
