"""Temperature scaling: one temperature fitted on dev/validation scores, applied to test scores.

A post-hoc calibration baseline (Guo et al., 2017) reported beside the raw metrics: the option
distribution becomes softmax(scores / T), with T > 0 minimising the dev split's NLL.
`fit_temperature` warns (`TemperatureWarning`) when T is not trustworthy: fitted on fewer than
`MIN_DEV_QUESTIONS` questions, or stopped on its search bound.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize_scalar

from evaluators.metrics import log_softmax

LOG_T_BOUNDS = (-5.0, 5.0)  # T in [e^-5, e^5] ~ [0.007, 148]
# The bounded search never evaluates a bound itself; it ends within ~1e-5 of one when the NLL
# still falls there, far closer than any interior optimum it reports.
BOUND_TOLERANCE = 1e-3  # in log T
MIN_DEV_QUESTIONS = 50  # below this one temperature is fitted to noise (a local sweep has 8)


class TemperatureWarning(UserWarning):
    """The fitted temperature may not be meaningful (tiny dev split, or T on its bound)."""


def scaled_probabilities(scores: Sequence[np.ndarray], temperature: float) -> list[np.ndarray]:
    """softmax(scores / T) per question (stable, float64)."""
    out = []
    for row in scores:
        z = np.asarray(row, dtype=np.float64) / temperature
        z = np.exp(z - z.max())
        out.append(z / z.sum())
    return out


def scaled_log_probabilities(scores: Sequence[np.ndarray], temperature: float) -> list[np.ndarray]:
    """log_softmax(scores / T) per question: for an NLL that stays exact where p underflows."""
    return [log_softmax(np.asarray(row, dtype=np.float64) / temperature) for row in scores]


def scaled_nll(scores: Sequence[np.ndarray], gold: Sequence[int], temperature: float) -> float:
    """Mean negative log-likelihood (nats) of the gold options at temperature T."""
    total = 0.0
    for row, answer in zip(scores, gold, strict=True):
        z = np.asarray(row, dtype=np.float64) / temperature
        top = z.max()
        total += top + np.log(np.exp(z - top).sum()) - z[answer]
    return total / len(gold)


def fit_temperature(scores: Sequence[np.ndarray], gold: Sequence[int]) -> float:
    """The T minimising dev NLL, searched over log T (NLL is smooth and unimodal in practice).

    Warns with `TemperatureWarning` when the dev split has fewer than `MIN_DEV_QUESTIONS`
    questions or T ends on a bound of `LOG_T_BOUNDS` (e.g. a dev split answered all right or
    all wrong: its NLL keeps falling as T -> 0 or infinity).
    """
    if not len(gold):
        raise ValueError("temperature scaling needs at least one dev/validation question")
    if len(gold) < MIN_DEV_QUESTIONS:
        warnings.warn(
            f"temperature fitted on only {len(gold)} dev/validation questions "
            f"(fewer than {MIN_DEV_QUESTIONS}): the temperature-scaled metrics are unreliable",
            TemperatureWarning,
            stacklevel=2,
        )
    result = minimize_scalar(
        lambda log_t: scaled_nll(scores, gold, float(np.exp(log_t))),
        bounds=LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-6},
    )
    if min(abs(result.x - bound) for bound in LOG_T_BOUNDS) < BOUND_TOLERANCE:
        low, high = np.exp(LOG_T_BOUNDS)
        warnings.warn(
            f"fitted temperature {np.exp(result.x):.4g} sits on its search bound "
            f"[{low:.3g}, {high:.3g}]: the dev NLL still falls past it (a dev split answered "
            "all right or all wrong?); the temperature-scaled metrics are not a real optimum",
            TemperatureWarning,
            stacklevel=2,
        )
    return float(np.exp(result.x))
