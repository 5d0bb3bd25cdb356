"""Metrics vs brute-force references written with plain loops over questions and bins.

The references work on ragged lists (one list of option probabilities per question) and share
no code with ``evaluators.metrics``; that independence is the point of the comparison.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
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
    """(n_b, acc_b - conf_b) per equal-mass bin, last partial bin included."""
    pairs = sorted(ref_top_label(rows, gold), key=lambda pair: pair[0])
    out = []
    for start in range(0, len(pairs), bin_size):
        chunk = pairs[start : start + bin_size]
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
        per_class.append(sum(gaps) / len(gaps))
    return sum(per_class) / len(per_class)


def reference_all(rows: Rows, gold: list[int], cfg: m.MetricConfig) -> dict[str, float]:
    n = len(rows)
    top = ref_top_label(rows, gold)
    mass = ref_equal_mass(rows, gold, cfg.rms_bin_size)
    classes = ref_classes(rows, gold)
    pairs_of = zip(rows, gold, strict=True)
    return {
        "accuracy": sum(h for _, h in top) / n,
        "entropy": sum(sum(-x * math.log2(x) for x in p if x > 0) for p in rows) / n,
        "nll": sum(-math.log(max(p[g], 1e-12)) for p, g in zip(rows, gold, strict=True)) / n,
        "brier": sum(sum((x - (k == g)) ** 2 for k, x in enumerate(p)) for p, g in pairs_of) / n,
        "ece": ref_binned_l1(top, cfg.ece_bins),
        "rms": math.sqrt(sum(nb / n * gap**2 for nb, gap in mass)),
        "mad": sum(nb / n * abs(gap) for nb, gap in mass),
        "sce": sum(ref_binned_l1(pairs, cfg.sce_bins) for pairs in classes) / len(classes),
        "ace": ref_ace(rows, gold, cfg.ace_ranges),
        "n_questions": float(n),
    }


# --- comparisons on random data --------------------------------------------------------------

CONFIGS = [m.MetricConfig(), m.MetricConfig(ece_bins=7, rms_bin_size=13, sce_bins=4, ace_ranges=6)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["default", "small-bins"])
@pytest.mark.parametrize("n, seed", [(1, 0), (7, 1), (250, 2), (1001, 3)])
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
    assert got["ace"] == pytest.approx(0.2)
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


def test_rms_and_mad_keep_last_partial_bin() -> None:
    # bin_size 2 over 3 predictions: [0.6 right, 0.6 wrong] gap 0.1, then [0.9 wrong] gap 0.9.
    probs = np.array([[0.6, 0.4], [0.6, 0.4], [0.9, 0.1]])
    gold = np.array([0, 1, 1])
    rms = m.rms_calibration_error(probs, gold, bin_size=2)
    assert rms == pytest.approx(math.sqrt(2 / 3 * 0.1**2 + 1 / 3 * 0.9**2))
    assert rms != pytest.approx(0.1)  # the value if the partial bin were dropped
    assert m.mean_absolute_deviation(probs, gold, bin_size=2) == pytest.approx(2 / 3 * 0.1 + 0.3)


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
    assert cfg.as_params() == {
        "ece_bins": 15,
        "rms_bin_size": 100,
        "sce_bins": 15,
        "ace_ranges": 15,
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.ece_bins = 10  # type: ignore[misc]


def test_direction_covers_every_metric() -> None:
    keys = m.compute_all(np.array([[0.5, 0.5]]), np.array([0])).keys()
    assert m.HIGHER_IS_BETTER.keys() == keys - {"n_questions"}
    assert m.HIGHER_IS_BETTER["accuracy"] and not m.HIGHER_IS_BETTER["ece"]
