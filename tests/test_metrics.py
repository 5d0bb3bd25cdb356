"""Metrics vs brute-force references written with plain loops over questions and bins.

The references work on ragged lists (one list of option probabilities per question) and share
no code with ``evaluators.metrics``; that independence is the point of the comparison.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torchmetrics.functional.classification import multiclass_calibration_error

from evaluators import metrics as m

Rows = list[list[float]]


# --- data ------------------------------------------------------------------------------------


def random_split(n: int, seed: int, k_min: int = 2, k_max: int = 10) -> tuple[Rows, list[int]]:
    """Seeded questions with K in [k_min, k_max]; gold mostly drawn from the probabilities."""
    rng = np.random.default_rng(seed)
    rows, gold = [], []
    for _ in range(n):
        k = int(rng.integers(k_min, k_max + 1))
        p = rng.dirichlet(np.full(k, rng.choice([0.3, 1.0, 3.0])))
        rows.append([float(x) for x in p])
        gold.append(int(rng.choice(k, p=p)) if rng.random() < 0.7 else int(rng.integers(k)))
    return rows, gold


def padded(rows: Rows) -> np.ndarray:
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        for k, x in enumerate(r):
            out[i, k] = x
    return out


# --- brute-force references --------------------------------------------------------------------


def ref_top_label(rows: Rows, gold: list[int]) -> list[tuple[float, float]]:
    """(confidence, correct) per question; strict '>' keeps the lowest index on ties."""
    out = []
    for p, g in zip(rows, gold, strict=True):
        best = 0
        for k in range(1, len(p)):
            if p[k] > p[best]:
                best = k
        out.append((p[best], 1.0 if best == g else 0.0))
    return out


def ref_bin(value: float, n_bins: int) -> int:
    """Right-closed bins (b/n, (b+1)/n]; 0 goes to bin 0."""
    for b in range(n_bins):
        if value <= (b + 1) / n_bins:
            return b
    return n_bins - 1


def ref_binned_l1(pairs: list[tuple[float, float]], n_bins: int) -> float:
    bins: list[list[tuple[float, float]]] = [[] for _ in range(n_bins)]
    for value, hit in pairs:
        bins[ref_bin(value, n_bins)].append((value, hit))
    total = 0.0
    for members in bins:
        if members:
            conf = sum(v for v, _ in members) / len(members)
            acc = sum(h for _, h in members) / len(members)
            total += len(members) / len(pairs) * abs(acc - conf)
    return total


def ref_equal_mass(rows: Rows, gold: list[int], bin_size: int) -> list[tuple[int, float]]:
    """(n_b, acc_b - conf_b) per equal-mass bin; the remainder joins the last bin."""
    pairs = sorted(ref_top_label(rows, gold), key=lambda pair: pair[0])  # sorted() is stable
    bins: list[list[tuple[float, float]]] = [[]]
    for pair in pairs:
        if len(bins[-1]) == bin_size and len(pairs) - sum(map(len, bins)) >= bin_size:
            bins.append([])  # a new bin only while a full one is still to come
        bins[-1].append(pair)
    out = []
    for chunk in bins:
        acc = sum(h for _, h in chunk) / len(chunk)
        conf = sum(c for c, _ in chunk) / len(chunk)
        out.append((len(chunk), acc - conf))
    return out


def ref_classes(rows: Rows, gold: list[int]) -> list[list[tuple[float, float]]]:
    """Per option position: (p_k, gold == k) over the questions that have option k."""
    classes = []
    for k in range(max(len(r) for r in rows)):
        pairs = [
            (p[k], 1.0 if g == k else 0.0) for p, g in zip(rows, gold, strict=True) if k < len(p)
        ]
        if pairs:
            classes.append(pairs)
    return classes


def ref_ace(rows: Rows, gold: list[int], n_ranges: int) -> float:
    per_class = []
    for pairs in ref_classes(rows, gold):
        pairs = sorted(pairs, key=lambda pair: pair[0])
        base, extra = divmod(len(pairs), n_ranges)
        sizes = [base + 1] * extra + [base] * (n_ranges - extra)
        gaps, start = [], 0
        for size in sizes:
            if size:
                chunk = pairs[start : start + size]
                conf = sum(v for v, _ in chunk) / size
                acc = sum(h for _, h in chunk) / size
                gaps.append(abs(acc - conf))
            start += size
        per_class.append(sum(gaps) / n_ranges)  # empty ranges count, contributing 0
    return sum(per_class) / len(per_class)


def ref_debiased(rows: Rows, gold: list[int], n_bins: int) -> float:
    """Kumar et al.'s debiased L2 calibration error from the uncertainty-calibration package."""
    calibration = pytest.importorskip("calibration")  # test-only dependency
    zero_filled = np.nan_to_num(padded(rows))  # absent options at 0 never win the argmax
    return float(
        calibration.lower_bound_scaling_top_ce(
            zero_filled, np.array(gold), p=2, debias=True, num_bins=n_bins
        )
    )


def reference_all(rows: Rows, gold: list[int], cfg: m.MetricConfig) -> dict[str, float]:
    n = len(rows)
    top = ref_top_label(rows, gold)
    mass = ref_equal_mass(rows, gold, cfg.rms_bin_size)
    classes = ref_classes(rows, gold)
    pairs_of = zip(rows, gold, strict=True)
    return {
        "accuracy": sum(h for _, h in top) / n,
        "entropy": sum(sum(-x * math.log2(x) for x in p if x > 0) for p in rows) / n,
        "nll": sum(-math.log(p[g]) for p, g in zip(rows, gold, strict=True)) / n,
        "brier": sum(sum((x - (k == g)) ** 2 for k, x in enumerate(p)) for p, g in pairs_of) / n,
        "ece": ref_binned_l1(top, cfg.ece_bins),
        "rms": math.sqrt(sum(nb / n * gap**2 for nb, gap in mass)),
        "mad": sum(nb / n * abs(gap) for nb, gap in mass),
        "sce": sum(ref_binned_l1(pairs, cfg.sce_bins) for pairs in classes) / len(classes),
        "ace": ref_ace(rows, gold, cfg.ace_ranges),
        "ece_debiased": ref_debiased(rows, gold, cfg.ece_debiased_bins),
        "n_questions": float(n),
    }


# --- comparisons on random data --------------------------------------------------------------

CONFIGS = [
    m.MetricConfig(),
    m.MetricConfig(ece_bins=7, rms_bin_size=13, sce_bins=4, ace_ranges=6, ece_debiased_bins=5),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["default", "small-bins"])
@pytest.mark.parametrize("n, seed", [(1, 0), (7, 1), (250, 2), (1001, 3), (1050, 6)])
def test_all_metrics_match_brute_force(n: int, seed: int, cfg: m.MetricConfig) -> None:
    rows, gold = random_split(n, seed)
    got = m.compute_all(padded(rows), np.array(gold), cfg)
    want = reference_all(rows, gold, cfg)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_public_functions_agree_with_compute_all() -> None:
    rows, gold = random_split(250, 4)
    probs, g = padded(rows), np.array(gold)
    cfg = CONFIGS[1]
    got = m.compute_all(probs, g, cfg)
    assert got["accuracy"] == m.accuracy(probs, g)
    assert got["entropy"] == m.entropy_bits(probs)
    assert got["nll"] == m.negative_log_likelihood(probs, g)
    assert got["brier"] == m.brier_score(probs, g)
    assert got["ece"] == m.expected_calibration_error(probs, g, n_bins=7)
    assert got["rms"] == m.rms_calibration_error(probs, g, bin_size=13)
    assert got["mad"] == m.mean_absolute_deviation(probs, g, bin_size=13)
    assert got["sce"] == m.static_calibration_error(probs, g, n_bins=4)
    assert got["ace"] == m.adaptive_calibration_error(probs, g, n_ranges=6)
    assert got["ece_debiased"] == m.debiased_calibration_error(probs, g, n_bins=5)


@pytest.mark.parametrize("k, n_bins", [(2, 15), (4, 15), (10, 10)])
def test_ece_matches_torchmetrics_on_fixed_k(k: int, n_bins: int) -> None:
    # torchmetrics bins [b/n, (b+1)/n) and puts confidence 1.0 in an extra bin, and casts to
    # float32; ours are right-closed. Keep every confidence well away from every edge and 1.0.
    rows, gold = random_split(600, seed=10 + k, k_min=k, k_max=k)
    edges = [b / n_bins for b in range(n_bins + 1)]
    keep = [i for i, p in enumerate(rows) if min(abs(max(p) - e) for e in edges) > 1e-6]
    rows, gold = [rows[i] for i in keep], [gold[i] for i in keep]
    probs = padded(rows)
    want = multiclass_calibration_error(
        torch.tensor(probs), torch.tensor(gold), num_classes=k, n_bins=n_bins, norm="l1"
    ).item()
    got = m.expected_calibration_error(probs, np.array(gold), n_bins=n_bins)
    assert got == pytest.approx(want, abs=1e-6)


def test_reliability_bins_reproduce_ece() -> None:
    rows, gold = random_split(250, 5)
    probs, g = padded(rows), np.array(gold)
    bins = m.reliability_bins(probs, g, n_bins=15)
    assert [b.lower for b in bins] == pytest.approx([b / 15 for b in range(15)])
    assert sum(b.count for b in bins) == 250
    ece = sum(b.count / 250 * abs(b.accuracy - b.mean_confidence) for b in bins if b.count)
    assert ece == pytest.approx(m.expected_calibration_error(probs, g, n_bins=15))
    assert all(
        math.isnan(b.accuracy) and math.isnan(b.mean_confidence) for b in bins if not b.count
    )


# --- hand cases --------------------------------------------------------------------------------


def test_all_correct_and_certain_is_perfect() -> None:
    # Confidence exactly 1.0 and exactly 0.0 (the SCE classes) at the ends of the bin range.
    probs = padded([[1.0, 0.0], [0.0, 1.0, 0.0]])
    got = m.compute_all(probs, np.array([0, 1]))
    assert got.pop("accuracy") == 1.0
    assert got.pop("n_questions") == 2.0
    assert got == pytest.approx(dict.fromkeys(got, 0.0))


def test_all_wrong() -> None:
    probs = np.tile([0.6, 0.4], (5, 1))
    gold = np.ones(5, dtype=int)
    assert m.accuracy(probs, gold) == 0.0
    assert m.expected_calibration_error(probs, gold) == pytest.approx(0.6)
    assert m.rms_calibration_error(probs, gold) == pytest.approx(0.6)
    assert m.mean_absolute_deviation(probs, gold) == pytest.approx(0.6)
    assert m.negative_log_likelihood(probs, gold) == pytest.approx(-math.log(0.4))


def test_two_options_by_hand() -> None:
    probs = np.array([[0.75, 0.25], [0.15, 0.85]])
    gold = np.array([0, 0])
    assert m.accuracy(probs, gold) == 0.5
    assert m.expected_calibration_error(probs, gold, n_bins=10) == pytest.approx(0.55)
    # class 0: values .75 (hit) and .15 (hit); class 1: .25 and .85 (misses) -> gaps .25, .85.
    assert m.static_calibration_error(probs, gold, n_bins=10) == pytest.approx(0.55)
    assert m.brier_score(probs, gold) == pytest.approx((2 * 0.25**2 + 2 * 0.85**2) / 2)
    assert m.entropy_bits(np.array([[0.5, 0.5]])) == pytest.approx(1.0)


def test_ties_predict_lowest_index() -> None:
    probs = padded([[0.4, 0.4, 0.2], [0.5, 0.5]])
    assert m.accuracy(probs, np.array([0, 0])) == 1.0
    assert m.accuracy(probs, np.array([1, 1])) == 0.0


def test_single_question_split() -> None:
    got = m.compute_all(np.array([[0.7, 0.2, 0.1]]), np.array([0]))
    assert got["n_questions"] == 1.0
    assert got["accuracy"] == 1.0
    for key in ("ece", "rms", "mad"):
        assert got[key] == pytest.approx(0.3), key
    # Classwise gaps: class 0 |1 - .7|, class 1 |0 - .2|, class 2 |0 - .1|.
    assert got["sce"] == pytest.approx(0.2)
    # ACE divides by K x R = 3 x 15 although 14 of each class's 15 ranges are empty.
    assert got["ace"] == pytest.approx(0.2 / 15)
    assert got["ece_debiased"] == 0.0  # a bin needs 2 predictions to estimate its variance
    assert got["brier"] == pytest.approx(0.09 + 0.04 + 0.01)
    assert got["nll"] == pytest.approx(-math.log(0.7))


def test_confidence_one_joins_last_bin() -> None:
    probs = np.array([[1.0, 0.0], [0.95, 0.05]])
    gold = np.array([1, 0])  # the certain answer is wrong, the 0.95 one right
    last = m.reliability_bins(probs, gold, n_bins=10)[-1]
    assert (last.lower, last.upper, last.count) == (pytest.approx(0.9), 1.0, 2)
    assert (last.accuracy, last.mean_confidence) == (0.5, pytest.approx(0.975))
    # One shared bin: |0.5 - 0.975| = 0.475; an extra bin for 1.0 would give 0.525.
    assert m.expected_calibration_error(probs, gold, n_bins=10) == pytest.approx(0.475)


def test_bins_are_right_closed() -> None:
    bins = m.reliability_bins(np.array([[0.5, 0.5]]), np.array([0]), n_bins=2)
    assert [b.count for b in bins] == [1, 0]


def test_rms_and_mad_remainder_joins_last_bin() -> None:
    # bin_size 2 over 5 predictions: [0.6 right, 0.6 wrong] gap 0.1, then the remainder joins
    # the last bin: [0.7 right, 0.9 wrong, 0.9 wrong] acc 1/3, conf 5/6, gap 0.5.
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.7, 0.3], [0.6, 0.4], [0.9, 0.1]])
    gold = np.array([1, 0, 0, 1, 1])
    rms = m.rms_calibration_error(probs, gold, bin_size=2)
    assert rms == pytest.approx(math.sqrt(2 / 5 * 0.1**2 + 3 / 5 * 0.5**2))
    assert m.mean_absolute_deviation(probs, gold, bin_size=2) == pytest.approx(2 / 5 * 0.1 + 0.3)


@pytest.mark.parametrize("n, sizes", [(1050, [100] * 9 + [150]), (99, [99]), (100, [100])])
def test_equal_mass_bin_sizes(n: int, sizes: list[int]) -> None:
    # One wrong prediction per bin at a distinct confidence: MAD = sum_b (n_b/N) |0 - conf_b|
    # depends on where the bins are cut.
    conf = 0.5 + np.arange(n) / (4 * n)
    probs, gold = np.column_stack([conf, 1 - conf]), np.ones(n, dtype=int)
    bounds = np.cumsum([0, *sizes])
    want = sum(conf[a:b].sum() for a, b in zip(bounds[:-1], bounds[1:], strict=True)) / n
    assert m.mean_absolute_deviation(probs, gold) == pytest.approx(want)
    want_rms = math.sqrt(
        sum(
            (b - a) / n * conf[a:b].mean() ** 2
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        )
    )
    assert m.rms_calibration_error(probs, gold) == pytest.approx(want_rms)
    rows, g = [list(r) for r in probs], [1] * n
    assert [nb for nb, _ in ref_equal_mass(rows, g, 100)] == sizes


def test_ace_divides_by_k_times_r_with_empty_ranges() -> None:
    # Two questions, R = 4: each class has 2 predictions, so 2 of its 4 ranges are empty.
    # class 0: .7 (hit) and .2 (hit) -> gaps .3, .8; class 1: .3, .8 (misses) -> gaps .3, .8.
    probs = np.array([[0.7, 0.3], [0.2, 0.8]])
    assert m.adaptive_calibration_error(probs, np.array([0, 0]), n_ranges=4) == pytest.approx(
        (0.3 + 0.8 + 0.3 + 0.8) / (2 * 4)
    )


def test_nll_from_log_probabilities_survives_underflow() -> None:
    # The gold option's probability underflows to exactly 0; its log-probability is -1000.
    scores = [np.array([0.0, -1000.0]), np.array([2.0, 0.0, 1.0])]
    log_probs = m.pad_probabilities([m.log_softmax(s) for s in scores])
    probs = np.exp(log_probs)
    gold = np.array([1, 0])
    assert probs[0, 1] == 0.0
    want = (1000.0 + math.log(math.exp(2) + 1 + math.e) - 2.0) / 2
    assert m.negative_log_likelihood(probs, gold, log_probs) == pytest.approx(want, rel=1e-12)
    got = m.compute_all(probs, gold, log_probs=log_probs)
    assert got["nll"] == pytest.approx(want, rel=1e-12)
    assert m.negative_log_likelihood(probs, gold) == math.inf  # no floor without log-probs


def test_log_probs_must_match_probs() -> None:
    probs = np.array([[0.5, 0.5]])
    with pytest.raises(ValueError, match="differs from probs"):
        m.negative_log_likelihood(probs, np.array([0]), np.log([[0.9, 0.1]]))
    with pytest.raises(ValueError, match="NaN layout"):
        m.negative_log_likelihood(probs, np.array([0]), np.log([[0.5, 0.5, 0.5]]))


@pytest.mark.parametrize("k", [2, 4, 10])
@pytest.mark.parametrize("n, n_bins, seed", [(30, 15, 0), (500, 15, 1), (3000, 10, 2)])
def test_debiased_ece_matches_uncertainty_calibration(
    n: int, n_bins: int, seed: int, k: int
) -> None:
    rows, gold = random_split(n, seed=100 * k + seed, k_min=k, k_max=k)
    got = m.debiased_calibration_error(padded(rows), np.array(gold), n_bins=n_bins)
    assert got == pytest.approx(ref_debiased(rows, gold, n_bins), rel=1e-9, abs=1e-12)


def test_debiased_ece_with_tied_confidences_matches_uncertainty_calibration() -> None:
    # Confidences on a 0.05 grid: equal-mass cuts fall between equal values, edges merge.
    rng = np.random.default_rng(7)
    conf = rng.choice(np.linspace(0.5, 1.0, 11), size=400)
    rows = [[c, 1.0 - c] for c in conf]
    gold = [int(rng.random() > c) for c in conf]
    got = m.debiased_calibration_error(padded(rows), np.array(gold), n_bins=15)
    assert got == pytest.approx(ref_debiased(rows, gold, 15), rel=1e-9, abs=1e-12)


def test_debiased_ece_is_smaller_than_the_plugin_estimate_on_a_calibrated_model() -> None:
    # Calibrated by construction (gold drawn from the probabilities): the plug-in L2 error is
    # all sampling noise, and the debiased estimate removes most of it.
    rows, gold = random_split(300, seed=8)
    rows, gold = (
        rows,
        [int(np.random.default_rng(i).choice(len(r), p=r)) for i, r in enumerate(rows)],
    )
    probs, g = padded(rows), np.array(gold)
    plugin = m.rms_calibration_error(probs, g, bin_size=20)  # 15 equal-mass bins of 20
    assert m.debiased_calibration_error(probs, g, n_bins=15) < plugin


# --- validation and plumbing ------------------------------------------------------------------


@pytest.mark.parametrize(
    "probs, gold, message",
    [
        (padded([[0.5, 0.5], [0.5, 0.4]]), [0, 0], r"row 1 sums to 0\.9"),
        (padded([[0.5, 0.5], [0.5, 0.5, 0.0], [1.0, 0.0]]), [0, 0, 2], "row 2"),
        (padded([[1.0], [0.5, 0.5]]), [0, 0], "row 0 has 1 valid"),
        (np.array([[1.2, -0.2]]), [0], "row 0 has a probability outside"),
        (np.array([[0.5, 0.5]]), [0.0], "gold must be an int array"),
        (np.array([[0.5, 0.5]]), [0, 1], "gold must be an int array"),
        (np.empty((0, 2)), [], "N >= 1"),
    ],
)
def test_invalid_inputs_raise(probs: np.ndarray, gold: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        m.compute_all(probs, np.array(gold))


def test_bad_binning_parameter_raises() -> None:
    with pytest.raises(ValueError, match="n_bins"):
        m.expected_calibration_error(np.array([[0.5, 0.5]]), np.array([0]), n_bins=0)


def test_pad_probabilities() -> None:
    out = m.pad_probabilities([np.array([0.2, 0.8]), np.array([0.1, 0.2, 0.7])])
    assert out.shape == (2, 3)
    assert np.isnan(out[0, 2]) and out[1, 2] == 0.7
    np.testing.assert_array_equal(out[0, :2], [0.2, 0.8])


def test_config_is_recorded_and_frozen() -> None:
    cfg = m.MetricConfig()
    assert cfg.model_dump() == {
        "ece_bins": 15,
        "rms_bin_size": 100,
        "sce_bins": 15,
        "ace_ranges": 15,
        "ece_debiased_bins": 15,
        "bootstrap_resamples": 1000,
        "bootstrap_seed": 0,
    }
    with pytest.raises(ValidationError, match="frozen"):
        cfg.ece_bins = 10  # type: ignore[misc]


def test_direction_covers_every_metric() -> None:
    keys = m.compute_all(np.array([[0.5, 0.5]]), np.array([0])).keys()
    assert m.HIGHER_IS_BETTER.keys() == keys - {"n_questions"}
    assert m.HIGHER_IS_BETTER["accuracy"] and not m.HIGHER_IS_BETTER["ece"]


# --- bootstrap intervals ------------------------------------------------------------------------


def tied_split(n: int, seed: int) -> tuple[Rows, list[int]]:
    """Two options, confidences on a 0.1 grid: many ties, so the stable order matters."""
    rng = np.random.default_rng(seed)
    rows, gold = [], []
    for _ in range(n):
        c = float(rng.choice([0.5, 0.6, 0.7, 0.8, 0.9]))
        rows.append([c, 1.0 - c] if rng.random() < 0.5 else [1.0 - c, c])
        gold.append(int(rng.integers(2)))
    return rows, gold


@pytest.mark.parametrize(
    "data, cfg",
    [
        (random_split(300, 20), m.MetricConfig()),
        (random_split(1050, 21), m.MetricConfig(ece_bins=7, rms_bin_size=13)),
        (tied_split(257, 22), m.MetricConfig(rms_bin_size=10)),
        (random_split(1, 23), m.MetricConfig()),
    ],
    ids=["random", "remainder", "ties", "one-question"],
)
def test_resampled_metrics_equal_the_metric_functions_on_each_resample(
    data: tuple[Rows, list[int]], cfg: m.MetricConfig
) -> None:
    rows, gold = data
    probs, g, n = padded(rows), np.array(gold), len(rows)
    rng = np.random.default_rng(0)
    counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(12)])
    got = m.resampled_metrics(probs, g, counts, cfg)
    for b in range(len(counts)):
        # The resample as a list of questions in their original order: ties keep that order.
        index = np.repeat(np.arange(n), counts[b])
        q, qg = probs[index], g[index]
        want = {
            "accuracy": m.accuracy(q, qg),
            "entropy": m.entropy_bits(q),
            "ece": m.expected_calibration_error(q, qg, cfg.ece_bins),
            "rms": m.rms_calibration_error(q, qg, cfg.rms_bin_size),
        }
        for key, value in want.items():
            assert got[key][b] == pytest.approx(value, rel=1e-9, abs=1e-12), (key, b)


def test_bootstrap_interval_covers_known_accuracy_about_95_percent() -> None:
    # 200 seeded splits of 200 questions, each answered correctly with probability 0.7; 500
    # resamples per interval keep the test fast and the 2.5% tails well resolved.
    covered = 0
    probs = np.tile([0.6, 0.4], (200, 1))
    for seed in range(200):
        rng = np.random.default_rng(seed)
        gold = (rng.random(200) > 0.7).astype(int)  # option 0 predicted; right if gold is 0
        cfg = m.MetricConfig(bootstrap_resamples=500, bootstrap_seed=seed)
        low, high = m.bootstrap_intervals(probs, gold, cfg)["accuracy"]
        covered += low <= 0.7 <= high
    assert 0.90 <= covered / 200 <= 0.99, covered


def test_intervals_contain_the_point_estimate_and_are_seeded() -> None:
    # Over-confident (probabilities sharpened after drawing gold): calibration error well
    # above its sampling bias, so the percentile intervals hold the point estimates.
    rows, gold = random_split(2000, 30, k_min=4, k_max=4)
    sharp = [list(np.array(r) ** 3 / (np.array(r) ** 3).sum()) for r in rows]
    probs, g = padded(sharp), np.array(gold)
    cfg = m.MetricConfig(bootstrap_resamples=500, bootstrap_seed=3)
    intervals = m.bootstrap_intervals(probs, g, cfg)
    point = m.compute_all(probs, g, cfg)
    assert intervals.keys() == set(m.BOOTSTRAP_METRICS)
    for name, (low, high) in intervals.items():
        assert low < point[name] < high, name
    assert m.bootstrap_intervals(probs, g, cfg) == intervals
    reseeded = cfg.model_copy(update={"bootstrap_seed": 4})
    assert m.bootstrap_intervals(probs, g, reseeded) != intervals
    wider = m.bootstrap_intervals(probs[:200], g[:200], cfg)
    assert all(wider[k][1] - wider[k][0] > high - low for k, (low, high) in intervals.items())


def test_bootstrap_options() -> None:
    probs, gold = np.array([[0.7, 0.3]]), np.array([0])
    assert m.bootstrap_intervals(probs, gold, m.MetricConfig(bootstrap_resamples=0)) == {}
    one = m.bootstrap_intervals(probs, gold, m.MetricConfig(bootstrap_resamples=50))
    assert one["accuracy"] == (1.0, 1.0) and one["ece"] == pytest.approx((0.3, 0.3))
    reps = m.bootstrap_replicates(*padded_split(500), m.MetricConfig(bootstrap_resamples=77))
    assert {k: v.shape for k, v in reps.items()} == dict.fromkeys(m.BOOTSTRAP_METRICS, (77,))
    with pytest.raises(ValueError, match="level"):
        m.bootstrap_intervals(probs, gold, level=1.0)
    with pytest.raises(ValueError, match="same number"):
        m.resampled_metrics(*padded_split(3), np.array([[1, 1, 1], [3, 0, 1]]))


def padded_split(n: int) -> tuple[np.ndarray, np.ndarray]:
    rows, gold = random_split(n, 40)
    return padded(rows), np.array(gold)
