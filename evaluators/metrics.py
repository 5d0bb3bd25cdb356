"""Calibration metrics for multiple-choice scoring: small pure numpy functions.

Inputs everywhere: ``probs`` (N, K_max) float, one row of option probabilities per question,
absent options NaN (questions may have 2..10 options, see ``pad_probabilities``); ``gold`` (N,)
int gold option indices. Confidence = max valid option probability; prediction = argmax, ties
broken towards the lowest option index (``np.argmax`` semantics). Definitions: DESIGN.md,
"Calibration metrics".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

SUM_TOLERANCE = 1e-4
NLL_FLOOR = 1e-12  # keeps -ln p(gold) finite when a model puts exactly 0 on the gold option

# Entropy is descriptive, not a quality score; it is listed as False for "lower = sharper".
HIGHER_IS_BETTER: dict[str, bool] = {
    "accuracy": True,
    **dict.fromkeys(["entropy", "nll", "brier", "ece", "rms", "mad", "sce", "ace"], False),
}


def pad_probabilities(rows: list[np.ndarray]) -> np.ndarray:
    """Stack ragged per-question probability vectors into a NaN-padded (N, K_max) array."""
    if not rows:
        raise ValueError("need at least one question")
    vectors = [np.asarray(row, dtype=float) for row in rows]
    if any(v.ndim != 1 for v in vectors):
        raise ValueError("every row must be a 1-D probability vector")
    padded = np.full((len(vectors), max(v.size for v in vectors)), np.nan)
    for i, v in enumerate(vectors):
        padded[i, : v.size] = v
    return padded


def _validated(
    probs: np.ndarray, gold: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check the input contract once; return (probs as float, gold as int, valid-option mask)."""
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2 or probs.shape[0] < 1:
        raise ValueError(f"probs must have shape (N >= 1, K_max), got {probs.shape}")
    valid = ~np.isnan(probs)
    n_valid = valid.sum(axis=1)
    if (n_valid < 2).any():
        i = int(np.argmax(n_valid < 2))
        raise ValueError(f"row {i} has {n_valid[i]} valid options; need at least 2")
    zeroed = np.where(valid, probs, 0.0)
    out_of_range = ((zeroed < 0) | (zeroed > 1)).any(axis=1)
    if out_of_range.any():
        raise ValueError(f"row {int(np.argmax(out_of_range))} has a probability outside [0, 1]")
    sums = zeroed.sum(axis=1)
    bad_sum = np.abs(sums - 1.0) > SUM_TOLERANCE
    if bad_sum.any():
        i = int(np.argmax(bad_sum))
        raise ValueError(f"row {i} sums to {sums[i]:.6g}, not 1 (tolerance {SUM_TOLERANCE})")
    if gold is None:
        return probs, np.empty(0, dtype=int), valid
    gold = np.asarray(gold)
    if gold.shape != probs.shape[:1] or not np.issubdtype(gold.dtype, np.integer):
        raise ValueError(f"gold must be an int array of shape ({probs.shape[0]},)")
    in_range = (gold >= 0) & (gold < probs.shape[1])
    gold_valid = in_range & valid[np.arange(gold.size), np.where(in_range, gold, 0)]
    if not gold_valid.all():
        i = int(np.argmin(gold_valid))
        raise ValueError(f"row {i}: gold index {gold[i]} is not a valid option")
    return probs, gold, valid


def _top_label(probs: np.ndarray, gold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validated (confidence, correct) per question; argmax ties go to the lowest index."""
    probs, gold, valid = _validated(probs, gold)
    filled = np.where(valid, probs, -np.inf)
    prediction = np.argmax(filled, axis=1)  # first maximum = lowest index on ties
    return filled.max(axis=1), (prediction == gold).astype(float)


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def _equal_width_bins(
    values: np.ndarray, hits: np.ndarray, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin (count, sum of values, sum of hits); bin b = (b/n, (b+1)/n], 0 goes to bin 0."""
    _check_positive("n_bins", n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # side="left" gives right-closed bins, so 1.0 lands in the last bin, not an extra one.
    index = np.clip(np.searchsorted(edges, values, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins).astype(float)
    value_sum = np.bincount(index, weights=values, minlength=n_bins)
    hit_sum = np.bincount(index, weights=hits, minlength=n_bins)
    return count, value_sum, hit_sum


def _binned_l1(values: np.ndarray, hits: np.ndarray, n_bins: int) -> float:
    """sum_b (n_b/N) |acc_b - conf_b| over equal-width bins (empty bins weigh 0)."""
    _, value_sum, hit_sum = _equal_width_bins(values, hits, n_bins)
    # (n_b/N) |hits_b/n_b - values_b/n_b| = |hits_b - values_b| / N
    return float(np.abs(hit_sum - value_sum).sum() / values.size)


def _equal_mass_gaps(conf: np.ndarray, hits: np.ndarray, bin_size: int) -> np.ndarray:
    """Per-question |acc_b - conf_b| of its equal-mass bin; the last, smaller bin is kept."""
    _check_positive("bin_size", bin_size)
    order = np.argsort(conf, kind="stable")  # equal confidences keep question order
    gaps = np.empty(conf.size)
    for start in range(0, conf.size, bin_size):
        chunk = order[start : start + bin_size]
        gaps[chunk] = abs(hits[chunk].mean() - conf[chunk].mean())
    return gaps


def accuracy(probs: np.ndarray, gold: np.ndarray) -> float:
    """Fraction of questions whose argmax option is gold; unit: fraction; higher is better."""
    return float(_top_label(probs, gold)[1].mean())


def entropy_bits(probs: np.ndarray) -> float:
    """Mean Shannon entropy of the option distribution, in bits (0 log 0 = 0).

    Base 2 because Global-MMLU values exceed ln 4. Descriptive: lower means sharper, not better.
    """
    probs, _, valid = _validated(probs)
    positive = valid & (probs > 0)
    terms = np.zeros_like(probs)
    terms[positive] = -probs[positive] * np.log2(probs[positive])
    return float(terms.sum(axis=1).mean())


def negative_log_likelihood(probs: np.ndarray, gold: np.ndarray) -> float:
    """Mean -ln p(gold), in nats; p(gold) is clipped at 1e-12 to stay finite; lower is better."""
    probs, gold, _ = _validated(probs, gold)
    p_gold = probs[np.arange(probs.shape[0]), gold]
    return float(-np.log(np.maximum(p_gold, NLL_FLOOR)).mean())


def brier_score(probs: np.ndarray, gold: np.ndarray) -> float:
    """Mean over questions of sum_k (p_k - y_k)^2 over valid options; in [0, 2]; lower is better."""
    probs, gold, valid = _validated(probs, gold)
    onehot = np.zeros_like(probs)
    onehot[np.arange(probs.shape[0]), gold] = 1.0
    return float(np.where(valid, (probs - onehot) ** 2, 0.0).sum(axis=1).mean())


def expected_calibration_error(probs: np.ndarray, gold: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE: sum_b (n_b/N) |acc_b - conf_b|; fraction in [0, 1]; lower is better.

    Equal-width, right-closed bins: bin b covers (b/n, (b+1)/n], confidence 0 joins bin 0 and
    1.0 the last bin (torchmetrics uses [b/n, (b+1)/n) and puts 1.0 in an extra bin).
    """
    conf, correct = _top_label(probs, gold)
    return _binned_l1(conf, correct, n_bins)


def rms_calibration_error(probs: np.ndarray, gold: np.ndarray, bin_size: int = 100) -> float:
    """Top-label RMS calibration error: sqrt(sum_b (n_b/N) (acc_b - conf_b)^2); lower is better.

    Equal-mass bins of ``bin_size`` predictions sorted by confidence; the last, smaller bin is
    included (the popular reference implementation silently drops it).
    """
    conf, correct = _top_label(probs, gold)
    return float(np.sqrt(np.mean(_equal_mass_gaps(conf, correct, bin_size) ** 2)))


def mean_absolute_deviation(probs: np.ndarray, gold: np.ndarray, bin_size: int = 100) -> float:
    """As ``rms_calibration_error`` but L1: sum_b (n_b/N) |acc_b - conf_b|; lower is better."""
    conf, correct = _top_label(probs, gold)
    return float(np.mean(_equal_mass_gaps(conf, correct, bin_size)))


def _classwise(probs: np.ndarray, gold: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per option position that exists in some row: (p_k, gold == k) over rows having option k."""
    probs, gold, valid = _validated(probs, gold)
    return [
        (probs[valid[:, k], k], (gold[valid[:, k]] == k).astype(float))
        for k in range(probs.shape[1])
        if valid[:, k].any()
    ]


def static_calibration_error(probs: np.ndarray, gold: np.ndarray, n_bins: int = 15) -> float:
    """Classwise SCE: (1/K) sum_k sum_b (n_bk/N_k) |acc_bk - conf_bk|; lower is better.

    Variable K: class k is option position k, taken over the N_k questions that have it; K is
    the number of positions that exist in any row. Bins as in ``expected_calibration_error``.
    """
    return float(np.mean([_binned_l1(p, hit, n_bins) for p, hit in _classwise(probs, gold)]))


def adaptive_calibration_error(probs: np.ndarray, gold: np.ndarray, n_ranges: int = 15) -> float:
    """Classwise ACE: (1/K) sum_k (1/R_k) sum_r |acc(r,k) - conf(r,k)|; lower is better.

    Each class's sorted probabilities are split into ``n_ranges`` nearly equal chunks
    (``np.array_split``); empty chunks (N_k < n_ranges) are skipped and R_k counts the rest.
    Classes as in ``static_calibration_error``.
    """
    _check_positive("n_ranges", n_ranges)
    per_class = []
    for p, hit in _classwise(probs, gold):
        chunks = [c for c in np.array_split(np.argsort(p, kind="stable"), n_ranges) if c.size]
        per_class.append(np.mean([abs(hit[c].mean() - p[c].mean()) for c in chunks]))
    return float(np.mean(per_class))


@dataclass(frozen=True)
class ReliabilityBin:
    """One reliability-diagram bin (lower, upper]; mean_confidence and accuracy NaN if empty."""

    lower: float
    upper: float
    count: int
    mean_confidence: float
    accuracy: float


def reliability_bins(probs: np.ndarray, gold: np.ndarray, n_bins: int = 15) -> list[ReliabilityBin]:
    """Top-label reliability-diagram data, binned exactly as ``expected_calibration_error``."""
    conf, correct = _top_label(probs, gold)
    count, conf_sum, hit_sum = _equal_width_bins(conf, correct, n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf, acc = conf_sum / count, hit_sum / count
    return [
        ReliabilityBin(
            float(edges[b]), float(edges[b + 1]), int(count[b]), float(mean_conf[b]), float(acc[b])
        )
        for b in range(n_bins)
    ]


@dataclass(frozen=True)
class MetricConfig:
    """Every binning parameter, explicit so it can be recorded with the results."""

    ece_bins: int = 15
    rms_bin_size: int = 100
    sce_bins: int = 15
    ace_ranges: int = 15

    def as_params(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def compute_all(
    probs: np.ndarray, gold: np.ndarray, config: MetricConfig = MetricConfig()
) -> dict[str, float]:
    """All metrics of one split, keyed as in ``HIGHER_IS_BETTER`` plus ``n_questions``."""
    return {
        "accuracy": accuracy(probs, gold),
        "entropy": entropy_bits(probs),
        "nll": negative_log_likelihood(probs, gold),
        "brier": brier_score(probs, gold),
        "ece": expected_calibration_error(probs, gold, config.ece_bins),
        "rms": rms_calibration_error(probs, gold, config.rms_bin_size),
        "mad": mean_absolute_deviation(probs, gold, config.rms_bin_size),
        "sce": static_calibration_error(probs, gold, config.sce_bins),
        "ace": adaptive_calibration_error(probs, gold, config.ace_ranges),
        "n_questions": float(np.asarray(probs).shape[0]),
    }
