"""Temperature scaling: one temperature fitted on dev/validation scores, applied to test scores.

A post-hoc calibration baseline (Guo et al., 2017) reported beside the raw metrics: the option
distribution becomes softmax(scores / T), with T > 0 minimising the dev split's NLL.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize_scalar

LOG_T_BOUNDS = (-5.0, 5.0)  # T in [e^-5, e^5] ~ [0.007, 148]


def scaled_probabilities(scores: Sequence[np.ndarray], temperature: float) -> list[np.ndarray]:
    """softmax(scores / T) per question (stable, float64)."""
    out = []
    for row in scores:
        z = np.asarray(row, dtype=np.float64) / temperature
        z = np.exp(z - z.max())
        out.append(z / z.sum())
    return out


def scaled_nll(scores: Sequence[np.ndarray], gold: Sequence[int], temperature: float) -> float:
    """Mean negative log-likelihood (nats) of the gold options at temperature T."""
    total = 0.0
    for row, answer in zip(scores, gold, strict=True):
        z = np.asarray(row, dtype=np.float64) / temperature
        top = z.max()
        total += top + np.log(np.exp(z - top).sum()) - z[answer]
    return total / len(gold)


def fit_temperature(scores: Sequence[np.ndarray], gold: Sequence[int]) -> float:
    """The T minimising dev NLL, searched over log T (NLL is smooth and unimodal in practice)."""
    if not len(gold):
        raise ValueError("temperature scaling needs at least one dev/validation question")
    result = minimize_scalar(
        lambda log_t: scaled_nll(scores, gold, float(np.exp(log_t))),
        bounds=LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(result.x))
