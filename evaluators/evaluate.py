"""Score one benchmark split with one model: questions -> option probabilities -> metrics.

Used by the Ray Data pipeline (one call per work item) and by the standalone scoring CLI.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from evaluators.benchmarks import Question, get_benchmark, load_questions
from evaluators.metrics import (
    MetricConfig,
    bootstrap_intervals,
    compute_all,
    log_softmax,
    pad_probabilities,
    reliability_bins,
)
from evaluators.prompts import format_prompt

if TYPE_CHECKING:  # torch: a request and its result are plain values, usable without it
    from evaluators.scoring import OptionScorer


@dataclass(frozen=True)
class SplitRequest:
    """One unit of scoring work; plain values so Ray Data can carry it as a row."""

    benchmark: str
    language: str
    split: str
    source: str
    limit: int | None  # questions, seeded subsample; None = all
    seed: int
    num_fewshot: int
    subjects: tuple[str, ...] | None  # subject/category filter, None = all

    def __post_init__(self) -> None:
        if self.subjects is not None:  # JSON round trips turn the tuple into a list
            object.__setattr__(self, "subjects", tuple(self.subjects))


@dataclass
class SplitResult:
    request: SplitRequest
    metrics: dict[str, float]
    reliability: list[dict[str, float]]
    predictions: dict[str, list[Any]]  # one entry per question, column-wise
    # metric -> (low, high): 95% bootstrap interval (evaluators.metrics.bootstrap_intervals) of
    # accuracy, entropy, ece, rms; empty with bootstrap_resamples 0 or from an older cache entry
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:  # JSON round trips turn the pairs into lists
        self.intervals = {k: (float(lo), float(hi)) for k, (lo, hi) in self.intervals.items()}


def fewshot_examples(request: SplitRequest) -> list[tuple[str, tuple[str, ...], int]]:
    """The first k questions of the dev/validation split (same subject filter), in a seeded
    order."""
    if request.num_fewshot == 0:
        return []
    spec = get_benchmark(request.benchmark)
    dev = load_questions(
        request.benchmark,
        request.language,
        spec.dev_split,
        request.source,
        limit=request.num_fewshot,
        seed=request.seed,
        subjects=request.subjects,
    )
    return [(q.question, q.options, q.answer_index) for q in dev]


def evaluate_split(
    scorer: OptionScorer, request: SplitRequest, metric_config: MetricConfig
) -> SplitResult:
    """Load the split, score every question's options, compute the calibration metrics."""
    from evaluators.scoring import option_probabilities

    questions = load_questions(
        request.benchmark,
        request.language,
        request.split,
        request.source,
        limit=request.limit,
        seed=request.seed,
        subjects=request.subjects,
    )
    shots = fewshot_examples(request)
    prompts = [format_prompt(q.question, q.options, shots) for q in questions]
    scores = scorer.score(prompts, [q.options for q in questions])
    rows = [option_probabilities(s) for s in scores]
    probs = pad_probabilities(rows)
    # NLL from log-softmax of the scores: exact where a gold probability underflows to 0.
    log_probs = pad_probabilities([log_softmax(s) for s in scores])
    gold = np.array([q.answer_index for q in questions])
    metrics = compute_all(probs, gold, metric_config, log_probs=log_probs)
    bins = reliability_bins(probs, gold, metric_config.ece_bins)
    return SplitResult(
        request=request,
        metrics=metrics,
        reliability=[asdict(b) for b in bins],
        predictions=_prediction_columns(questions, scores, rows),
        intervals=bootstrap_intervals(probs, gold, metric_config),
    )


def _prediction_columns(
    questions: list[Question], scores: list[np.ndarray], probs: list[np.ndarray]
) -> dict[str, list[Any]]:
    return {
        "question_id": [q.question_id for q in questions],
        "subject": [q.subject for q in questions],
        "num_options": [len(q.options) for q in questions],
        "gold": [q.answer_index for q in questions],
        "predicted": [int(np.argmax(p)) for p in probs],
        "confidence": [float(np.max(p)) for p in probs],
        "probs": [p.tolist() for p in probs],
        "scores": [s.tolist() for s in scores],
    }
