"""MLflow layout of a sweep (DESIGN.md): one parent run, one nested child run per trial/base model.

Only the sweep driver writes to MLflow (sqlite takes no concurrent writers well); Tune results
and scoring outputs reach it through Ray. Every run is created once, when the sweep is planned,
and its id kept in the ledger (`orchestrator.ledger`): a re-run or resumed sweep logs into the
runs it already has instead of creating duplicates.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from calsweep.console import say
from orchestrator.backlog import Backlog, is_unreachable
from orchestrator.config import SweepConfig
from orchestrator.ledger import Entry, Ledger

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


# The ledger's statuses as MLflow run statuses: a planned run is SCHEDULED until it trains.
RUN_STATUS = {
    "scheduled": "SCHEDULED",
    "running": "RUNNING",
    "trained": "RUNNING",
    "finished": "FINISHED",
    "failed": "FAILED",
}


class TrackingUnreachable(RuntimeError):
    """The tracking server does not answer when the sweep starts (nothing has run yet)."""


class SweepTracker:
    """Creates the sweep's runs (ids kept in the ledger) and logs params, metrics and artifacts
    in batches."""

    def __init__(self, config: SweepConfig, ledger: Ledger) -> None:
        self.uri = tracking_uri(config)
        # The summary says where the runs are; MLflow would print a link per finished run.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        # A server that does not answer: a few quick retries, then the backlog (MLflow's own
        # default waits about 4 minutes per request, holding up every record behind it).
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        self.client = MlflowClient(self.uri)
        self.backlog = Backlog(config.sweep_dir / "mlflow_backlog")
        try:
            self._connect(config, ledger)
        except MlflowException as err:
            if not is_unreachable(err):
                raise
            raise TrackingUnreachable(
                f"MLflow tracking server {self.uri} does not answer: start it, or drop "
                "tracking.tracking_uri to use the sqlite file in the output directory"
            ) from None
        self.retry()  # first the records that an earlier session could not send

    def _connect(self, config: SweepConfig, ledger: Ledger) -> None:
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
        if ledger.parent_run_id is None:
            tags = {KIND_TAG: "sweep", KEY_TAG: f"sweep:{config.name}"}
            run = self.client.create_run(
                self.experiment_id,
                run_name=config.name,
                tags={**tags, SWEEP_DIR_TAG: str(config.sweep_dir)},
            )
            ledger.set_parent(run.info.run_id)
        else:
            self.client.update_run(ledger.parent_run_id, status="RUNNING")
        self.parent_id: str = ledger.parent_run_id  # type: ignore[assignment]

    def create_child_runs(self, ledger: Ledger, params: dict[str, dict[str, Any]]) -> None:
        """One nested run per planned model that has none yet, SCHEDULED until it trains;
        `params` by ledger key. Their ids go to the ledger in one write."""
        created = {}
        for key, entry in ledger.entries.items():
            if entry.run_id is not None or key not in params:
                continue
            run = self.client.create_run(
                self.experiment_id,
                run_name=entry.name,
                tags={KIND_TAG: entry.kind, KEY_TAG: key, PARENT_TAG: self.parent_id},
            )
            created[key] = run.info.run_id
            self.client.update_run(run.info.run_id, status="SCHEDULED")
            self.log_params(run.info.run_id, params[key])
        if created:
            ledger.set_run_ids(created)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Params not logged yet (MLflow refuses to change one); read first, so only at the
        start of a sweep, when the server must answer."""
        existing = self.client.get_run(run_id).data.params
        new = [[k, str(v)] for k, v in params.items() if k not in existing]
        for start in range(0, len(new), 100):
            self._write("log_batch", run_id=run_id, params=new[start : start + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        """Log finite values (NaN metrics, e.g. of an empty bin, are skipped, not stored)."""
        now = int(time.time() * 1000)
        batch = [[k, float(v), now, step] for k, v in metrics.items() if math.isfinite(float(v))]
        for start in range(0, len(batch), 1000):
            self._write("log_batch", run_id=run_id, metrics=batch[start : start + 1000])

    def log_missing_steps(self, run_id: str, key: str, history: list) -> None:
        """A resumed worker's replayed curve `[[step, metrics], ...]`: the steps whose `key`
        MLflow does not have yet (a result that died with an interrupted driver), once each."""
        self._write("log_missing_steps", run_id=run_id, key=key, history=history)

    def logged_steps(self, run_id: str, key: str) -> set[int]:
        """The steps of `key` the server holds (none known while it is unreachable)."""
        if self.backlog:
            return set()
        try:
            return {m.step for m in self.client.get_metric_history(run_id, key)}
        except MlflowException as err:
            if not is_unreachable(err):
                raise
            return set()

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self._write("log_batch", run_id=run_id, tags=[[k, v] for k, v in tags.items()])

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self._write(
            "log_artifact", run_id=run_id, local_path=str(path), artifact_path=artifact_path
        )

    def set_status(self, entry: Entry) -> None:
        """The run's MLflow status follows its ledger status (finished runs: `finish`)."""
        if entry.run_id and entry.status not in ("finished", "failed"):
            self._write("update_run", run_id=entry.run_id, status=RUN_STATUS[entry.status])

    def finish(self, run_id: str, failed: bool = False) -> None:
        self._write("set_terminated", run_id=run_id, status="FAILED" if failed else "FINISHED")

    def _write(self, op: str, **kwargs: Any) -> None:
        """Every write, in order: to the server, or to the backlog while it is unreachable."""
        if not self.backlog:
            try:
                self._apply({"op": op, **kwargs})
                return
            except MlflowException as err:
                if not is_unreachable(err):
                    raise
                say(
                    f"warning: MLflow at {self.uri} is unreachable; training and scoring go on "
                    f"and its records wait in {self.backlog.directory}"
                )
        self.backlog.add(op, **kwargs)

    def retry(self) -> bool:
        """Send the backlog if the server answers again; True when nothing is pending."""
        if not self.backlog:
            return True
        try:
            self.backlog.send(self._apply)
        except MlflowException as err:
            if not is_unreachable(err):
                raise
            return False
        say(f"MLflow at {self.uri} answers again: its pending records are sent")
        return True

    def _apply(self, entry: dict[str, Any]) -> None:
        op, run_id = entry["op"], entry["run_id"]
        if op == "log_batch":
            self.client.log_batch(
                run_id,
                metrics=[Metric(*m) for m in entry.get("metrics", [])],
                params=[Param(*p) for p in entry.get("params", [])],
                tags=[RunTag(*t) for t in entry.get("tags", [])],
            )
        elif op == "log_missing_steps":
            logged = {m.step for m in self.client.get_metric_history(run_id, entry["key"])}
            for step, metrics in entry["history"]:
                if step not in logged:
                    self._apply(
                        {
                            "op": "log_batch",
                            "run_id": run_id,
                            "metrics": [
                                [k, float(v), int(time.time() * 1000), step]
                                for k, v in metrics.items()
                            ],
                        }
                    )
        elif op == "log_artifact":
            self.client.log_artifact(run_id, entry["local_path"], entry["artifact_path"])
        elif op == "update_run":
            self.client.update_run(run_id, status=entry["status"])
        elif op == "set_terminated":
            self.client.set_terminated(run_id, entry["status"])
        else:
            raise ValueError(f"unknown MLflow write {op!r} in {self.backlog.directory}")

    def drain(self, patience_s: float = 120.0) -> int:
        """At the end of a sweep: keep sending the backlog for up to `patience_s`; returns
        how many records are still waiting (they are sent first by the next run)."""
        deadline = time.monotonic() + patience_s
        while not self.retry() and time.monotonic() < deadline:
            time.sleep(5)
        return len(self.backlog)

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
