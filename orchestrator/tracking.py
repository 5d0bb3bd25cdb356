"""MLflow layout of a sweep (DESIGN.md): one parent run, one nested child run per trial/base model.

Only the sweep driver writes to MLflow (sqlite takes no concurrent writers well); Tune results
and scoring outputs reach it through Ray. Runs are found again by tags, so a re-run or resumed
sweep logs into the runs it already has instead of creating duplicates.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.async_logging.run_operations import RunOperations

from orchestrator.config import SweepConfig

PARENT_TAG = "mlflow.parentRunId"
KIND_TAG = "calsweep.kind"  # "sweep" | "trial" | "base"
KEY_TAG = "calsweep.key"  # trial id hash, or "base:<model>"
SWEEP_DIR_TAG = "calsweep.sweep_dir"
# MLflow 3's experiment kind, as its UI's kind selector writes it for "Machine learning": model
# training (runs, metrics, charts), not GenAI (traces, sessions). MLflow 3.17's UI follows its own
# GenAI / Model training switch instead, so `ui_hint` links with that switch set.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"


def tracking_uri(config: SweepConfig) -> str:
    """The configured URI, else an absolute sqlite path inside the sweep's output directory."""
    if config.tracking.tracking_uri:
        return config.tracking.tracking_uri
    config.sweep_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{config.sweep_dir / 'mlflow.db'}"


def artifact_location(config: SweepConfig) -> str | None:
    """With the sqlite default, `<sweep_dir>/mlartifacts` (a file URI), so the sweep directory
    holds its runs and their artifacts and can be moved as one; MLflow's own default would be
    `./mlruns` of whichever directory the sweep was started from. A configured store (a
    tracking server) keeps its default artifact root."""
    if config.tracking.tracking_uri:
        return None
    return (config.sweep_dir / "mlartifacts").as_uri()


class SweepTracker:
    """Creates or finds the sweep's runs and logs params, metrics and artifacts in batches."""

    def __init__(self, config: SweepConfig) -> None:
        self.uri = tracking_uri(config)
        # The summary says where the runs are; MLflow would print a link per finished run.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.client = MlflowClient(self.uri)
        name = config.tracking.experiment or config.name
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            self.experiment_id = self.client.create_experiment(
                name,
                artifact_location=artifact_location(config),
                tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND},
            )
        else:  # made by an older calsweep or by hand: tag it too
            self.experiment_id = experiment.experiment_id
            if EXPERIMENT_KIND_TAG not in experiment.tags:
                self.client.set_experiment_tag(
                    self.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND
                )
        self.experiment_name = name
        self.pending: list[RunOperations] = []  # asynchronous logs not yet known to be stored
        sweep_dir = str(config.sweep_dir)
        self.parent_id = self._find_or_create(
            f"sweep:{config.name}", config.name, {KIND_TAG: "sweep", SWEEP_DIR_TAG: sweep_dir}
        )

    def _find_or_create(self, key: str, run_name: str, tags: dict[str, str]) -> str:
        query = f"tags.`{KEY_TAG}` = '{key}'"
        if tags.get(KIND_TAG) != "sweep":
            query += f" and tags.`{PARENT_TAG}` = '{self.parent_id}'"
        found = self.client.search_runs([self.experiment_id], query, max_results=1)
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(
            self.experiment_id, run_name=run_name, tags={**tags, KEY_TAG: key}
        )
        return run.info.run_id

    def child_run(self, key: str, run_name: str, kind: str) -> str:
        """The nested run for a trial (key = trial id) or base model (key = base:<model>)."""
        return self._find_or_create(key, run_name, {KIND_TAG: kind, PARENT_TAG: self.parent_id})

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        existing = self.client.get_run(run_id).data.params
        new = [Param(k, str(v)) for k, v in params.items() if k not in existing]
        for start in range(0, len(new), 100):
            self.client.log_batch(run_id, params=new[start : start + 100])

    def log_metrics(
        self, run_id: str, metrics: dict[str, float], step: int = 0, *, wait: bool = True
    ) -> None:
        """Log finite values (NaN metrics, e.g. of an empty bin, are skipped, not stored).
        `wait=False` queues them in MLflow's background logger, so a Tune callback does not hold
        up the trial loop for a round trip to a tracking server; `flush` waits for them."""
        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, step) for k, v in metrics.items() if math.isfinite(float(v))
        ]
        for start in range(0, len(batch), 1000):
            operations = self.client.log_batch(
                run_id, metrics=batch[start : start + 1000], synchronous=wait
            )
            if operations is not None:
                self.pending.append(operations)

    def flush(self) -> None:
        """Wait until every queued log is stored (raises if one failed)."""
        while self.pending:
            self.pending.pop().wait()

    def logged_steps(self, run_id: str, key: str) -> set[int]:
        self.flush()
        return {m.step for m in self.client.get_metric_history(run_id, key)}

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def finish(self, run_id: str, failed: bool = False) -> None:
        self.flush()
        self.client.set_terminated(run_id, "FAILED" if failed else "FINISHED")

    def ui_hint(self) -> str:
        """A tracking server is its own UI; a sqlite store needs `mlflow ui`. The link opens the
        runs table: MLflow 3.17's UI takes the view from its GenAI / Model training switch (the
        browser's last choice, GenAI at first), not from the experiment's kind tag."""
        page = f"#/experiments/{self.experiment_id}/runs?workflowType=machine_learning"
        if self.uri.startswith(("http://", "https://")):
            return f"open {self.uri.rstrip('/')}/{page}"
        return (
            f"mlflow ui --backend-store-uri {self.uri}   (then open http://127.0.0.1:5000/{page})"
        )
