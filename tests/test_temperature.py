"""Temperature scaling against a brute-force search and the direct NLL formula."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluators.temperature import fit_temperature, scaled_nll, scaled_probabilities


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


def test_over_confident_scores_get_a_temperature_above_one() -> None:
    scores, gold = random_scores(4, n=500)
    assert fit_temperature(scores, gold) > 1.0


def test_empty_dev_split_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one"):
        fit_temperature([], [])
