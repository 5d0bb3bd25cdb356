"""Temperature scaling against a brute-force search and the direct NLL formula."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from evaluators.temperature import (
    LOG_T_BOUNDS,
    MIN_DEV_QUESTIONS,
    TemperatureWarning,
    fit_temperature,
    scaled_log_probabilities,
    scaled_nll,
    scaled_probabilities,
)


def random_scores(seed: int, n: int = 200) -> tuple[list[np.ndarray], list[int]]:
    rng = np.random.default_rng(seed)
    scores, gold = [], []
    for _ in range(n):
        k = int(rng.integers(2, 11))
        row = rng.normal(size=k) * 3.0  # over-confident logits
        answer = int(rng.integers(k)) if rng.random() < 0.5 else int(np.argmax(row))
        scores.append(row)
        gold.append(answer)
    return scores, gold


def brute_nll(scores: list[np.ndarray], gold: list[int], t: float) -> float:
    total = 0.0
    for row, answer in zip(scores, gold, strict=True):
        exp = [math.exp(v / t) for v in row]
        total -= math.log(exp[answer] / sum(exp))
    return total / len(gold)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_matches_a_brute_force_grid(seed: int) -> None:
    scores, gold = random_scores(seed)
    grid = np.exp(np.linspace(-3, 3, 6001))
    best = grid[np.argmin([brute_nll(scores, gold, t) for t in grid])]
    with warnings.catch_warnings():
        warnings.simplefilter("error", TemperatureWarning)  # 200 questions, interior optimum
        fitted = fit_temperature(scores, gold)
    assert fitted == pytest.approx(best, rel=2e-3)
    assert scaled_nll(scores, gold, fitted) <= brute_nll(scores, gold, 1.0) + 1e-12


def test_scaled_nll_and_probabilities_match_direct_formulas() -> None:
    scores, gold = random_scores(3, n=20)
    for t in (0.5, 1.0, 2.5):
        assert scaled_nll(scores, gold, t) == pytest.approx(brute_nll(scores, gold, t), abs=1e-12)
    probs = scaled_probabilities(scores, 1.0)
    for row, p in zip(scores, probs, strict=True):
        assert p.sum() == pytest.approx(1.0)
        assert p == pytest.approx(np.exp(row) / np.exp(row).sum())
    for t in (0.5, 2.5):
        logs = scaled_log_probabilities(scores, t)
        nll = -sum(lp[g] for lp, g in zip(logs, gold, strict=True)) / len(gold)
        assert nll == pytest.approx(brute_nll(scores, gold, t), abs=1e-12)


def test_scaled_log_probabilities_stay_finite_where_probabilities_underflow() -> None:
    (logs,) = scaled_log_probabilities([np.array([0.0, -2000.0])], 2.0)
    (probs,) = scaled_probabilities([np.array([0.0, -2000.0])], 2.0)
    assert probs[1] == 0.0
    assert logs[1] == pytest.approx(-1000.0)


def test_over_confident_scores_get_a_temperature_above_one() -> None:
    scores, gold = random_scores(4, n=500)
    assert fit_temperature(scores, gold) > 1.0


def test_tiny_dev_split_warns() -> None:
    scores, gold = random_scores(5, n=MIN_DEV_QUESTIONS - 1)
    with pytest.warns(TemperatureWarning, match=f"only {MIN_DEV_QUESTIONS - 1} dev/validation"):
        fit_temperature(scores, gold)
    scores, gold = random_scores(5, n=MIN_DEV_QUESTIONS)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TemperatureWarning)
        fit_temperature(scores, gold)


@pytest.mark.parametrize(
    "answer, bound", [(np.argmax, 0), (np.argmin, 1)], ids=["all-right", "all-wrong"]
)
def test_temperature_on_its_search_bound_warns(answer, bound: int) -> None:
    # All right: NLL falls as T -> 0; all wrong: as T -> infinity. Both stop at a bound.
    scores, _ = random_scores(6, n=100)
    gold = [int(answer(row)) for row in scores]
    with pytest.warns(TemperatureWarning, match="sits on its search bound"):
        fitted = fit_temperature(scores, gold)
    assert math.log(fitted) == pytest.approx(LOG_T_BOUNDS[bound], abs=1e-3)


def test_empty_dev_split_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one"):
        fit_temperature([], [])
