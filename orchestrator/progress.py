"""What the sweep driver hears from Ray Tune, and the progress line it prints.

`TuneEvents` runs in Tune's loop and only posts events (trial started, a training step, trial
ended); the conductor thread, the sweep's one writer, handles them. `WhenConductorStops` ends
the Tune run once that writer has stopped. `SweepProgress` counts trained and scored models and
estimates the time left from this session's own pace.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ray.tune import Callback, Stopper
from ray.tune.experiment import Trial

from orchestrator.trial import TrialOutcome
from trainers.train_loop import HISTORY_KEY


@dataclass(frozen=True)
class TrialStarted:
    job_id: str


@dataclass(frozen=True)
class TrainingStep:
    job_id: str
    step: int
    total_steps: int
    metrics: dict[str, float]
    history: list[tuple[int, dict[str, float]]] | None  # replayed by a resumed worker


@dataclass(frozen=True)
class TrialEnded:
    job_id: str
    outcome: TrialOutcome | None
    error: str | None


class TuneEvents(Callback):
    """Turns Tune's trial callbacks into events for the conductor (nothing slow runs here)."""

    def __init__(self, post: Callable[[object], None]) -> None:
        self.post = post

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks with the experiment state; the sweep never restores a
        Tune experiment (the ledger says what is done), so the live link is not kept."""
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.post = _discard

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any):
        self.post(TrialStarted(job_id(trial)))

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any
    ):
        if "train/loss" not in result:
            return
        metrics = {
            k: v for k, v in result.items() if k.startswith("train/") and isinstance(v, int | float)
        }
        history = json.loads(result[HISTORY_KEY]) if HISTORY_KEY in result else None
        self.post(
            TrainingStep(
                job_id(trial), int(result["step"]), int(result["total_steps"]), metrics, history
            )
        )

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any):
        outcome = TrialOutcome.from_result(trial.last_result)
        error = None if outcome else "the trial ended without exporting a model"
        self.post(TrialEnded(job_id(trial), outcome, error))

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any):
        self.post(TrialEnded(job_id(trial), None, _error_text(trial)))


class WhenConductorStops(Stopper):
    """Stops every trial once the conductor has stopped on an error: a trial that trained on
    would be recorded nowhere (not in the ledger, not in MLflow), and at the study's scale that
    is days of GPUs. The stopped trials stay `running` in the ledger; the next run of the sweep
    continues them from their checkpoints."""

    def __init__(self, stopped: Callable[[], bool]) -> None:
        self.stopped = stopped

    def __getstate__(self) -> dict[str, Any]:
        return {}  # pickled with the experiment state, like TuneEvents

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.stopped = _never

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.stopped()


def _never() -> bool:
    return False


def _discard(event: object) -> None:
    """Where a callback unpickled outside the sweep driver sends its events."""


def job_id(trial: Trial) -> str:
    return trial.config["job"]["id"]


def _error_text(trial: Trial) -> str:
    path = getattr(trial, "error_file", None)
    try:
        with open(path) as handle:  # type: ignore[arg-type]
            return handle.read().strip() or "unknown error"
    except (OSError, TypeError):
        return "unknown error (see the Ray logs)"


@dataclass
class SweepProgress:
    """`trained k/N | scored m/M checkpoints | ETA`, from the pace of this session's work.

    Training and scoring share the cluster unless scoring has reserved resources: then the
    two run side by side and the estimate is the longer of the two, else their sum."""

    trials: int
    checkpoints: int
    concurrent_trials: int
    scoring_reserved: bool
    trained: int = 0
    scored: int = 0
    started: float = field(default_factory=time.monotonic)
    train_seconds: list[float] = field(default_factory=list)  # trials trained in this session
    score_seconds: list[float] = field(default_factory=list)  # checkpoints scored in this session

    def line(self) -> str:
        text = f"trained {self.trained}/{self.trials} | scored {self.scored}/{self.checkpoints}"
        eta = self.eta_seconds()
        return text + (f" | ETA ~{_duration(eta)}" if eta else "")

    def eta_seconds(self) -> float | None:
        left_trials = self.trials - self.trained
        left_scores = self.checkpoints - self.scored
        if (left_trials and not self.train_seconds) or (left_scores and not self.score_seconds):
            return None
        train = left_trials * _mean(self.train_seconds) / max(1, self.concurrent_trials)
        score = left_scores * _mean(self.score_seconds)
        return max(train, score) if self.scoring_reserved else train + score


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
