"""A Ray Tune callback that shows sweep progress and streams training curves to MLflow.

Runs in the sweep driver process, the only MLflow writer: workers' `ray.train.report` results
reach it through Tune, and it logs them into the trial's child run as they arrive.
"""

from __future__ import annotations

import json
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from calsweep.console import say
from orchestrator.config import SweepConfig
from orchestrator.plan import TrialSpec
from orchestrator.tracking import SweepTracker
from orchestrator.trial import trial_from_tune_config
from trainers.train_loop import HISTORY_KEY


def trial_params(config: SweepConfig, trial: TrialSpec) -> dict[str, Any]:
    """The child run's params: the grid point plus the recipe, flat for MLflow's compare view."""
    return {
        "model": trial.model,
        "model_source": config.models[trial.model].source,
        "sft_dataset": trial.sft_dataset,
        "lr": trial.learning_rate,
        "smoothing": trial.label_smoothing,
        "seed": trial.seed,
        "trial_id": trial.trial_id(config),
        **{f"train.{k}": v for k, v in config.training.model_dump().items()},
    }


class TrialProgress(Callback):
    """Prints `trials done / total` and each trial's step and loss; logs them to MLflow."""

    def __init__(self, config: SweepConfig, tracker: SweepTracker, total: int) -> None:
        self.config = config
        self.tracker = tracker
        self.total = total
        self.done = 0
        self.failed: dict[str, str] = {}
        self.run_ids: dict[str, str] = {}  # Tune trial id -> MLflow run id

    def _run_id(self, trial: Trial) -> str:
        if trial.trial_id not in self.run_ids:
            spec = trial_from_tune_config(trial.config, self.config.seed)
            run_id = self.tracker.child_run(spec.trial_id(self.config), spec.run_name, "trial")
            self.tracker.log_params(run_id, trial_params(self.config, spec))
            self.run_ids[trial.trial_id] = run_id
        return self.run_ids[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any):
        self._run_id(trial)
        name = trial_from_tune_config(trial.config, self.config.seed).run_name
        say(f"train {self.done}/{self.total} done | start {name}")

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any
    ):
        if "train/loss" not in result or "model_dir" in result:
            return  # the driver's closing report repeats the last step
        step = int(result["step"])
        metrics = {
            k: v for k, v in result.items() if k.startswith("train/") and isinstance(v, int | float)
        }
        run_id = self._run_id(trial)
        self.tracker.log_metrics(run_id, metrics, step=step, wait=False)
        # A worker resumed from a checkpoint replays the curve up to it (HISTORY_KEY), so steps
        # whose results died with an interrupted driver still reach MLflow, once each.
        if HISTORY_KEY in result:  # only then is MLflow asked what it already holds
            logged = self.tracker.logged_steps(run_id, "train/loss")
            for past_step, past in json.loads(result[HISTORY_KEY]):
                if past_step not in logged:
                    self.tracker.log_metrics(run_id, past, step=past_step)
        name = trial_from_tune_config(trial.config, self.config.seed).run_name
        say(
            f"train {self.done}/{self.total} done | {name} step {step}/{result['total_steps']} "
            f"loss {result['train/loss']:.4f} ({result['train/tokens_per_s']:.0f} tok/s)"
        )

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any):
        self.done += 1
        name = trial_from_tune_config(trial.config, self.config.seed).run_name
        reused = " (exported model reused)" if trial.last_result.get("reused") else ""
        say(f"train {self.done}/{self.total} done | finished {name}{reused}")

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any):
        self.done += 1
        name = trial_from_tune_config(trial.config, self.config.seed).run_name
        error = _error_text(trial)
        self.failed[name] = error
        run_id = self._run_id(trial)
        self.tracker.set_tags(run_id, {"calsweep.error": error[:5000]})
        self.tracker.finish(run_id, failed=True)
        say(f"train {self.done}/{self.total} done | FAILED {name}: {error.splitlines()[-1]}")


def _error_text(trial: Trial) -> str:
    path = getattr(trial, "error_file", None)
    try:
        with open(path) as handle:  # type: ignore[arg-type]
            return handle.read().strip() or "unknown error"
    except (OSError, TypeError):
        return "unknown error (see the Ray logs)"
