"""Calibration metrics for multiple-choice scoring: small pure numpy functions.

Inputs everywhere: ``probs`` (N, K_max) float, one row of option probabilities per question,
absent options NaN (questions may have 2..10 options, see ``pad_probabilities``); ``gold`` (N,)
int gold option indices; optionally ``log_probs``, the same shape, the log-softmax of the option
scores (``log_softmax``), so NLL stays exact where a probability underflows to 0. Confidence =
max valid option probability; prediction = argmax, ties broken towards the lowest option index
(``np.argmax`` semantics). Definitions: DESIGN.md, "Calibration metrics".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import Field

from calsweep.schema import NonNegativeInt, PositiveInt, Strict

SUM_TOLERANCE = 1e-4

# Entropy is descriptive, not a quality score; it is listed as False for "lower = sharper".
HIGHER_IS_BETTER: dict[str, bool] = {
    "accuracy": True,
    **dict.fromkeys(
        ["entropy", "nll", "brier", "ece", "rms", "mad", "sce", "ace", "ece_debiased"], False
    ),
}


class MetricConfig(Strict):
    """Every binning and bootstrap parameter, explicit so it can be recorded with the results (a
    sweep file's `evaluation.metrics`)."""

    ece_bins: PositiveInt = Field(15, description="equal-width confidence bins of the ECE")
    rms_bin_size: PositiveInt = Field(
        100, description="questions per equal-mass bin of the RMS calibration error and MAD"
    )
    sce_bins: PositiveInt = Field(15, description="equal-width bins per class of the SCE")
    ace_ranges: PositiveInt = Field(15, description="equal-mass ranges per class of the ACE")
    ece_debiased_bins: PositiveInt = Field(15, description="equal-mass bins of the debiased ECE")
    bootstrap_resamples: NonNegativeInt = Field(
        1000, description="bootstrap resamples of the 95% intervals (0: no intervals)"
    )
    bootstrap_seed: int = Field(0, description="seed of the bootstrap resamples")


DEFAULTS = MetricConfig()


def pad_probabilities(rows: list[np.ndarray]) -> np.ndarray:
    """Stack ragged per-question probability (or log-probability) vectors into a NaN-padded
    (N, K_max) array."""
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


def log_softmax(scores: np.ndarray) -> np.ndarray:
    """One question's option log-probabilities, s_k - logsumexp(s), float64; finite wherever the
    scores are, even when exp() of it underflows to 0."""
    s = np.asarray(scores, dtype=np.float64)
    shifted = s - s.max()
    return shifted - np.log(np.exp(shifted).sum())


def _top_label(probs: np.ndarray, gold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validated (confidence, correct) per question; argmax ties go to the lowest index."""
    probs, gold, valid = _validated(probs, gold)
    filled = np.where(valid, probs, -np.inf)
    prediction = np.argmax(filled, axis=1)  # first maximum = lowest index on ties
    return filled.max(axis=1), (prediction == gold).astype(float)


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def _equal_width_index(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of each value; bin b = (b/n, (b+1)/n], 0 goes to bin 0."""
    _check_positive("n_bins", n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # side="left" gives right-closed bins, so 1.0 lands in the last bin, not an extra one.
    return np.clip(np.searchsorted(edges, values, side="left") - 1, 0, n_bins - 1)


def _equal_width_bins(
    values: np.ndarray, hits: np.ndarray, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin (count, sum of values, sum of hits) over ``_equal_width_index`` bins."""
    index = _equal_width_index(values, n_bins)
    count = np.bincount(index, minlength=n_bins).astype(float)
    value_sum = np.bincount(index, weights=values, minlength=n_bins)
    hit_sum = np.bincount(index, weights=hits, minlength=n_bins)
    return count, value_sum, hit_sum


def _binned_l1(values: np.ndarray, hits: np.ndarray, n_bins: int) -> float:
    """sum_b (n_b/N) |acc_b - conf_b| over equal-width bins (empty bins weigh 0)."""
    _, value_sum, hit_sum = _equal_width_bins(values, hits, n_bins)
    # (n_b/N) |hits_b/n_b - values_b/n_b| = |hits_b - values_b| / N
    return float(np.abs(hit_sum - value_sum).sum() / values.size)


def _equal_mass_starts(n: int, bin_size: int) -> np.ndarray:
    """First sorted position of each equal-mass bin: max(1, n // bin_size) bins of ``bin_size``,
    the remainder joining the last bin (1,050 at 100 -> nine of 100, one of 150)."""
    _check_positive("bin_size", bin_size)
    return np.arange(max(1, n // bin_size)) * bin_size


def _equal_mass_gaps(
    conf: np.ndarray, hits: np.ndarray, bin_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per bin (count, acc_b - conf_b) over equal-mass bins of confidence-sorted predictions."""
    order = np.argsort(conf, kind="stable")  # equal confidences keep question order
    starts = _equal_mass_starts(conf.size, bin_size)
    count = np.diff(np.append(starts, conf.size))
    gap = (np.add.reduceat(hits[order], starts) - np.add.reduceat(conf[order], starts)) / count
    return count, gap


def accuracy(probs: np.ndarray, gold: np.ndarray) -> float:
    """Fraction of questions whose argmax option is gold; unit: fraction; higher is better."""
    return float(_top_label(probs, gold)[1].mean())


def entropy_bits(probs: np.ndarray) -> float:
    """Mean Shannon entropy of the option distribution, in bits (0 log 0 = 0).

    Base 2 because Global-MMLU values exceed ln 4. Descriptive: lower means sharper, not better.
    """
    probs, _, valid = _validated(probs)
    return float(_row_entropy_bits(probs, valid).mean())


def _row_entropy_bits(probs: np.ndarray, valid: np.ndarray) -> np.ndarray:
    positive = valid & (probs > 0)
    terms = np.zeros_like(probs)
    terms[positive] = -probs[positive] * np.log2(probs[positive])
    return terms.sum(axis=1)


def negative_log_likelihood(
    probs: np.ndarray, gold: np.ndarray, log_probs: np.ndarray | None = None
) -> float:
    """Mean -log p(gold) over questions, in nats; lower is better.

    Taken from ``log_probs`` (log-softmax of the option scores, same NaN layout as ``probs``)
    when given: exact even where p(gold) underflows to 0. Without them, -ln p(gold) of the
    probabilities, unfloored: a gold probability of exactly 0 gives +inf.
    """
    probs, gold, valid = _validated(probs, gold)
    rows = np.arange(probs.shape[0])
    if log_probs is None:
        with np.errstate(divide="ignore"):
            return float(-np.log(probs[rows, gold]).mean())
    log_probs = np.asarray(log_probs, dtype=float)
    if log_probs.shape != probs.shape or (np.isnan(log_probs) != ~valid).any():
        raise ValueError("log_probs must have the shape and NaN layout of probs")
    with np.errstate(over="ignore"):
        mismatch = np.abs(np.where(valid, np.exp(log_probs) - probs, 0.0)).max()
    if not mismatch <= SUM_TOLERANCE:
        raise ValueError(f"exp(log_probs) differs from probs by {mismatch:.3g}")
    return float(-log_probs[rows, gold].mean())


def brier_score(probs: np.ndarray, gold: np.ndarray) -> float:
    """Mean over questions of sum_k (p_k - y_k)^2 over valid options; in [0, 2]; lower is better."""
    probs, gold, valid = _validated(probs, gold)
    onehot = np.zeros_like(probs)
    onehot[np.arange(probs.shape[0]), gold] = 1.0
    return float(np.where(valid, (probs - onehot) ** 2, 0.0).sum(axis=1).mean())


def expected_calibration_error(
    probs: np.ndarray, gold: np.ndarray, n_bins: int = DEFAULTS.ece_bins
) -> float:
    """Top-label ECE: sum_b (n_b/N) |acc_b - conf_b|; fraction in [0, 1]; lower is better.

    Equal-width, right-closed bins: bin b covers (b/n, (b+1)/n], confidence 0 joins bin 0 and
    1.0 the last bin (torchmetrics uses [b/n, (b+1)/n) and puts 1.0 in an extra bin).
    """
    conf, correct = _top_label(probs, gold)
    return _binned_l1(conf, correct, n_bins)


def rms_calibration_error(
    probs: np.ndarray, gold: np.ndarray, bin_size: int = DEFAULTS.rms_bin_size
) -> float:
    """Top-label RMS calibration error: sqrt(sum_b (n_b/N) (acc_b - conf_b)^2); lower is better.

    Fraction in [0, 1]. Equal-mass bins of ``bin_size`` predictions sorted by confidence
    (stable); the remainder joins the last bin, so there are max(1, N // bin_size) bins (the
    popular reference implementation silently drops the remainder).
    """
    count, gap = _equal_mass_gaps(*_top_label(probs, gold), bin_size)
    return float(np.sqrt((count * gap**2).sum() / count.sum()))


def mean_absolute_deviation(
    probs: np.ndarray, gold: np.ndarray, bin_size: int = DEFAULTS.rms_bin_size
) -> float:
    """As ``rms_calibration_error`` but L1: sum_b (n_b/N) |acc_b - conf_b|; lower is better."""
    count, gap = _equal_mass_gaps(*_top_label(probs, gold), bin_size)
    return float((count * np.abs(gap)).sum() / count.sum())


def debiased_calibration_error(
    probs: np.ndarray, gold: np.ndarray, n_bins: int = DEFAULTS.ece_debiased_bins
) -> float:
    """Kumar et al. (2019) debiased top-label L2 calibration error; fraction in [0, 1]; lower is
    better. Key ``ece_debiased``.

    sqrt(max(0, sum_b (n_b/N) [(acc_b - conf_b)^2 - acc_b (1 - acc_b) / (n_b - 1)])): the plug-in
    squared error minus each bin's sampling variance of its accuracy, so its expectation does not
    grow as the split shrinks the way ECE's does. Bins with fewer than 2 predictions add 0.
    Equal-mass bins as in the ``uncertainty-calibration`` package (``get_equal_bins``): the
    sorted confidences are cut into min(n_bins, N) ``np.array_split`` parts, edges at midpoints
    between neighbouring parts (duplicates merged), each confidence goes to the first edge
    >= it. An L2 estimate: compare it with ``rms``, not with the L1 ``ece``.
    """
    _check_positive("n_bins", n_bins)
    conf, correct = _top_label(probs, gold)
    ordered = np.sort(conf)
    base, extra = divmod(conf.size, min(n_bins, conf.size))
    cuts = np.cumsum([base + 1] * extra + [base] * (min(n_bins, conf.size) - extra))[:-1]
    edges = np.unique(np.append((ordered[cuts - 1] + ordered[cuts]) / 2.0, 1.0))
    index = np.searchsorted(edges, conf)
    count = np.bincount(index, minlength=edges.size).astype(float)
    conf_sum = np.bincount(index, weights=conf, minlength=edges.size)
    hit_sum = np.bincount(index, weights=correct, minlength=edges.size)
    full = count >= 2
    n, acc = count[full], hit_sum[full] / count[full]
    squared = (acc - conf_sum[full] / n) ** 2 - acc * (1.0 - acc) / (n - 1.0)
    return float(np.sqrt(max((n * squared).sum() / conf.size, 0.0)))


def _classwise(probs: np.ndarray, gold: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per option position that exists in some row: (p_k, gold == k) over rows having option k."""
    probs, gold, valid = _validated(probs, gold)
    return [
        (probs[valid[:, k], k], (gold[valid[:, k]] == k).astype(float))
        for k in range(probs.shape[1])
        if valid[:, k].any()
    ]


def static_calibration_error(
    probs: np.ndarray, gold: np.ndarray, n_bins: int = DEFAULTS.sce_bins
) -> float:
    """Classwise SCE: (1/K) sum_k sum_b (n_bk/N_k) |acc_bk - conf_bk|; lower is better.

    Variable K: class k is option position k, taken over the N_k questions that have it; K is
    the number of positions that exist in any row. Bins as in ``expected_calibration_error``.
    """
    return float(np.mean([_binned_l1(p, hit, n_bins) for p, hit in _classwise(probs, gold)]))


def adaptive_calibration_error(
    probs: np.ndarray, gold: np.ndarray, n_ranges: int = DEFAULTS.ace_ranges
) -> float:
    """Classwise ACE: (1/(K R)) sum_k sum_r |acc(r,k) - conf(r,k)|; lower is better.

    Each class's sorted probabilities are split into R = ``n_ranges`` nearly equal ranges
    (``np.array_split``, stable order). The sum is divided by K x R even when a class has fewer
    than R predictions: its empty ranges contribute 0. Classes as in ``static_calibration_error``.
    """
    _check_positive("n_ranges", n_ranges)
    per_class = []
    for p, hit in _classwise(probs, gold):
        chunks = [c for c in np.array_split(np.argsort(p, kind="stable"), n_ranges) if c.size]
        per_class.append(sum(abs(hit[c].mean() - p[c].mean()) for c in chunks) / n_ranges)
    return float(np.mean(per_class))


@dataclass(frozen=True)
class ReliabilityBin:
    """One reliability-diagram bin (lower, upper]; mean_confidence and accuracy NaN if empty."""

    lower: float
    upper: float
    count: int
    mean_confidence: float
    accuracy: float


def reliability_bins(
    probs: np.ndarray, gold: np.ndarray, n_bins: int = DEFAULTS.ece_bins
) -> list[ReliabilityBin]:
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


def compute_all(
    probs: np.ndarray,
    gold: np.ndarray,
    config: MetricConfig = DEFAULTS,
    log_probs: np.ndarray | None = None,
) -> dict[str, float]:
    """All metrics of one split, keyed as in ``HIGHER_IS_BETTER`` plus ``n_questions``.

    NLL comes from ``log_probs`` when given (see ``negative_log_likelihood``). Intervals are
    separate: ``bootstrap_intervals``.
    """
    return {
        "accuracy": accuracy(probs, gold),
        "entropy": entropy_bits(probs),
        "nll": negative_log_likelihood(probs, gold, log_probs),
        "brier": brier_score(probs, gold),
        "ece": expected_calibration_error(probs, gold, config.ece_bins),
        "rms": rms_calibration_error(probs, gold, config.rms_bin_size),
        "mad": mean_absolute_deviation(probs, gold, config.rms_bin_size),
        "sce": static_calibration_error(probs, gold, config.sce_bins),
        "ace": adaptive_calibration_error(probs, gold, config.ace_ranges),
        "ece_debiased": debiased_calibration_error(probs, gold, config.ece_debiased_bins),
        "n_questions": float(np.asarray(probs).shape[0]),
    }


# ---- bootstrap intervals ---------------------------------------------------------------------

BOOTSTRAP_METRICS = ("accuracy", "entropy", "ece", "rms")
# Resamples are drawn in blocks of about this many (resample, question) cells, so memory stays
# near 100 MB whatever the split size; the draws are the same for any block size.
_BLOCK_CELLS = 1 << 21


def bootstrap_intervals(
    probs: np.ndarray, gold: np.ndarray, config: MetricConfig = DEFAULTS, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals (``level``, default 95%) for ``BOOTSTRAP_METRICS``.

    Questions are resampled with replacement, ``config.bootstrap_resamples`` times, seeded by
    ``config.bootstrap_seed`` (same seed, same intervals); {} when resamples is 0. Returns
    metric -> (low, high) in the metric's unit. The percentile interval of a biased statistic
    (ECE, RMS: both grow as a split shrinks) need not contain the point estimate.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if config.bootstrap_resamples == 0:
        return {}
    replicates = bootstrap_replicates(probs, gold, config)
    tail = (1.0 - level) / 2.0
    return {
        name: (float(low), float(high))
        for name, (low, high) in (
            (name, np.quantile(values, [tail, 1.0 - tail])) for name, values in replicates.items()
        )
    }


def bootstrap_replicates(
    probs: np.ndarray, gold: np.ndarray, config: MetricConfig = DEFAULTS
) -> dict[str, np.ndarray]:
    """Each ``BOOTSTRAP_METRICS`` metric on each of the config's seeded resamples, (B,) each."""
    _check_positive("bootstrap_resamples", config.bootstrap_resamples)
    _, terms, gap = _per_question(probs, gold, config.ece_bins)
    n = gap.size
    rng = np.random.default_rng(config.bootstrap_seed)
    block = max(1, _BLOCK_CELLS // n)
    parts = []
    for start in range(0, config.bootstrap_resamples, block):  # blocks of resamples, not one
        size = min(block, config.bootstrap_resamples - start)
        # Draws index the confidence-sorted questions, so the counts come sorted for RMS.
        draws = rng.integers(0, n, size=(size, n))
        # Multiplicity of each question in each resample: one bincount over offset indices.
        offsets = (np.arange(size) * n)[:, None]
        counts = np.bincount((draws + offsets).ravel(), minlength=size * n).reshape(size, n)
        parts.append(_replicates(terms, gap, counts, config.rms_bin_size))
    return {name: np.concatenate([p[name] for p in parts]) for name in BOOTSTRAP_METRICS}


def resampled_metrics(
    probs: np.ndarray, gold: np.ndarray, counts: np.ndarray, config: MetricConfig = DEFAULTS
) -> dict[str, np.ndarray]:
    """``BOOTSTRAP_METRICS`` of resamples given as multiplicities: ``counts`` (B, N), row b how
    often each question is in resample b (every row with the same sum). Equals the metric
    functions on ``probs[np.repeat(np.arange(N), counts[b])]``, vectorised over b."""
    order, terms, gap = _per_question(probs, gold, config.ece_bins)
    counts = np.asarray(counts)
    shape_ok = counts.ndim == 2 and counts.shape[0] >= 1 and counts.shape[1] == gap.size
    if not shape_ok or not np.issubdtype(counts.dtype, np.integer) or (counts < 0).any():
        raise ValueError(f"counts must be non-negative integers with shape (B >= 1, {gap.size})")
    sizes = counts.sum(axis=1)
    if (sizes != sizes[0]).any() or sizes[0] < 1:
        raise ValueError("every resample must hold the same number (>= 1) of questions")
    return _replicates(terms, gap, counts[:, order], config.rms_bin_size)


def _per_question(
    probs: np.ndarray, gold: np.ndarray, ece_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Questions sorted by confidence (stable): (order, additive terms (N, 2 + ece_bins), gap).

    Terms: correct, entropy in bits, and hit - conf in the column of the question's ECE bin;
    gap: hit - conf. Accuracy, entropy and ECE of a resample are sums of these terms.
    """
    probs, gold, valid = _validated(probs, gold)
    conf, correct = _top_label(probs, gold)
    order = np.argsort(conf, kind="stable")
    gap = (correct - conf)[order]
    terms = np.zeros((conf.size, 2 + ece_bins))
    terms[:, 0] = correct[order]
    terms[:, 1] = _row_entropy_bits(probs, valid)[order]
    terms[np.arange(conf.size), 2 + _equal_width_index(conf[order], ece_bins)] = gap
    return order, terms, gap


def _replicates(
    terms: np.ndarray, gap: np.ndarray, counts: np.ndarray, bin_size: int
) -> dict[str, np.ndarray]:
    """Metrics of resamples from multiplicities ``counts`` (B, N) of confidence-sorted questions."""
    sums = counts.astype(float) @ terms  # one matrix product for the additive metrics
    size = float(counts[0].sum())
    return {
        "accuracy": sums[:, 0] / size,
        "entropy": sums[:, 1] / size,
        "ece": np.abs(sums[:, 2:]).sum(axis=1) / size,
        "rms": _resampled_rms(gap, counts, bin_size),
    }


def _resampled_rms(gap: np.ndarray, counts: np.ndarray, bin_size: int) -> np.ndarray:
    """RMS calibration error of each resample, from counts of confidence-sorted questions.

    No row is sorted: with the questions in confidence order (stable), the copies of question j
    fill positions [end_{j-1}, end_j) of the sorted resample, end = cumsum of the row's counts.
    A bin edge at position p falls inside some question j's run, so the sum of (hit - conf)
    before p is the sum over questions before j plus (p - end_{j-1}) copies of question j's.
    """
    b, n = counts.shape
    ends = np.cumsum(counts, axis=1)
    size = int(ends[0, -1])
    starts = _equal_mass_starts(size, bin_size)
    cuts = starts[1:]
    # The question holding each cut, all rows in one searchsorted: rows laid end to end, each
    # shifted past the previous row's largest value.
    shift = (np.arange(b) * (size + 1))[:, None]
    flat = np.searchsorted((ends + shift).ravel(), (cuts + shift).ravel(), side="right")
    holder = flat.reshape(b, cuts.size) - (np.arange(b) * n)[:, None]
    rows, before, first = np.arange(b)[:, None], np.maximum(holder - 1, 0), holder == 0
    cumulative = np.cumsum(counts * gap, axis=1)  # running sum of (hit - conf)
    ends_before = np.where(first, 0, ends[rows, before])
    at_cut = np.where(first, 0.0, cumulative[rows, before]) + (cuts - ends_before) * gap[holder]
    edge_sums = np.concatenate([np.zeros((b, 1)), at_cut, cumulative[:, -1:]], axis=1)
    per_bin = np.diff(edge_sums, axis=1)  # sum of (hit - conf) over each bin
    bin_count = np.diff(np.append(starts, size))
    return np.sqrt((per_bin**2 / bin_count).sum(axis=1) / size)
