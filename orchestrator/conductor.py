"""The sweep driver's event loop: checkpoints are scored as their trials finish.

Three threads, one writer. The main thread runs Ray Tune over the plan's unfinished trial jobs;
`progress.TuneEvents` turns its callbacks into events. A scorer thread runs Ray Data pipelines
over the score jobs that are ready and posts each split's result. The conductor thread handles
the events in order, and is the only one that writes the ledger and MLflow: it marks trials
running, trained or failed, logs training curves, submits a model's score jobs as soon as the
model exists (base models first), selects each configuration's lr once all its trials are
dev-scored, records each model in MLflow when its last split is scored, and prints progress.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import polars as pl

from calsweep.console import say
from calsweep.models import resolve_model
from evaluators.evaluate import SplitResult
from evaluators.pipeline import WorkItem, load_cached, score_items, source_digest, store_cached
from orchestrator.config import SweepConfig
from orchestrator.execution import (
    ResultKey,
    ScoredModel,
    reserve_scoring,
    scoring_settings,
)
from orchestrator.ledger import Entry, Ledger, score_job_key
from orchestrator.plan import Phase, Plan, base_key
from orchestrator.progress import SweepProgress, TrainingStep, TrialEnded, TrialStarted
from orchestrator.results import long_table, mlflow_metrics, record_model
from orchestrator.stats import select_lr
from orchestrator.tracking import SweepTracker

SCORE_LINE_EVERY = 10  # splits
RETRY_SECONDS = 10.0  # how often records waiting for a tracking server are sent again


@dataclass(frozen=True)
class Scored:
    item: WorkItem
    result: SplitResult
    seconds: float  # the scorer's time on this split


@dataclass(frozen=True)
class ScoringFailed:
    error: BaseException


class TrainingDone:
    """Tune returned: no more trial events will come."""


class Scorer:
    """A thread that scores batches of work items on Ray Data, one pipeline at a time; every
    batch submitted while a pipeline runs joins the next one."""

    def __init__(self, config: SweepConfig, post: Any) -> None:
        self.config = config
        self.post = post
        self.inbox: queue.Queue[list[WorkItem] | None] = queue.Queue()
        self.placement_group = reserve_scoring(config)
        self.thread = threading.Thread(target=self._run, name="calsweep-scorer", daemon=True)
        self.thread.start()

    def submit(self, items: list[WorkItem]) -> None:
        self.inbox.put(items)

    def stop(self) -> None:
        self.inbox.put(None)
        self.thread.join()

    def _run(self) -> None:
        settings, r = scoring_settings(self.config), self.config.resources
        while (batch := self.inbox.get()) is not None:
            while not self.inbox.empty():  # everything that is ready goes in one pipeline
                more = self.inbox.get()
                if more is None:
                    self.inbox.put(None)
                    break
                batch += more
            try:
                last = time.monotonic()
                for item, result in score_items(
                    batch,
                    settings,
                    num_actors=self.config.evaluation.num_actors,
                    cpus_per_actor=r.cpus_per_scoring_actor,
                    gpus_per_actor=r.gpus_per_scoring_actor if r.use_gpu else 0.0,
                    placement_group=self.placement_group,
                ):
                    now = time.monotonic()
                    self.post(Scored(item, result, now - last))
                    last = now
            except BaseException as err:  # noqa: BLE001 - handed to the conductor, which raises
                self.post(ScoringFailed(err))


class Conductor:
    """Handles the sweep's events in one thread; see the module docstring."""

    def __init__(
        self,
        config: SweepConfig,
        plan: Plan,
        ledger: Ledger,
        tracker: SweepTracker,
        *,
        concurrent_trials: int,
    ) -> None:
        self.config, self.plan, self.ledger, self.tracker = config, plan, ledger, tracker
        self.settings = scoring_settings(config)
        self.cache_dir = config.sweep_dir / "score_cache"
        self.jobs = {job.id: job for job in plan.jobs}
        self.events: queue.Queue[object] = queue.Queue()
        self.models: dict[str, ScoredModel] = {}
        self.results: dict[ResultKey, SplitResult] = {}
        self.waiting: dict[str, set[str]] = {}  # model key -> cache keys not scored yet
        self.phase: dict[str, Phase] = {}  # model key -> the phase being scored
        self.dev_done: set[str] = set()  # trial ids scored on the dev splits
        self.ended: set[str] = set()  # trial ids trained or failed
        self.selected: set[tuple[str, str, float]] = set()  # configurations with an lr chosen
        self.failed: dict[str, str] = {}  # run name -> error
        self.seconds: dict[str, float] = {}  # model key -> scorer seconds
        self.logged_steps: dict[str, set[int]] = {}  # run id -> train/loss steps in MLflow
        self.split_count = 0
        self.training_done = False
        self.error: BaseException | None = None
        self.progress = SweepProgress(
            trials=len(plan.jobs),
            checkpoints=plan.selected_trials + len(plan.base_models),
            concurrent_trials=concurrent_trials,
            scoring_reserved=config.resources.scoring == "reserved",
        )
        self.started_at: dict[str, float] = {}
        self.scorer = Scorer(config, self.post)
        self.thread = threading.Thread(target=self._run, name="calsweep-conductor", daemon=True)

    # --- called from other threads -------------------------------------------------------
    def post(self, event: object) -> None:
        self.events.put(event)

    def start(self) -> None:
        self.thread.start()

    def stopped(self) -> bool:
        """The conductor thread ended on an error (Tune's loop asks, see WhenConductorStops)."""
        return self.error is not None

    def finish(self) -> None:
        """After Tune returned: wait until every ready model is scored and recorded."""
        self.post(TrainingDone())
        self.thread.join()
        self.scorer.stop()
        if self.error is not None:
            raise self.error

    # --- the conductor thread ------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._start_known_models()
            last_retry = time.monotonic()
            while not (self.training_done and not self.waiting):
                with contextlib.suppress(queue.Empty):
                    self._handle(self.events.get(timeout=RETRY_SECONDS))
                if self.tracker.backlog and time.monotonic() - last_retry > RETRY_SECONDS:
                    self.tracker.retry()  # a tracking server that went away may be back
                    last_retry = time.monotonic()
        except BaseException as err:  # noqa: BLE001 - re-raised by finish() in the main thread
            say(f"error: the sweep driver stopped recording: {err!r}")
            self.error = err

    def _start_known_models(self) -> None:
        """Base models first, then the trials an earlier session trained."""
        for model in self.plan.base_models:
            key = base_key(model)
            path = resolve_model(self.config.models[model].source)
            self._score(self._model(key, path, source_digest(path)), "test")
        for job in self.plan.jobs:
            entry = self.ledger.entries[job.id]
            if entry.status in ("trained", "finished"):
                self.ended.add(job.id)
                self._trained(job.id, entry)
            elif entry.status == "failed":
                self.failed[job.run_name] = entry.error or "failed"

    def _handle(self, event: object) -> None:
        if isinstance(event, TrialStarted):
            job = self.jobs[event.job_id]
            self.started_at[job.id] = time.monotonic()
            self.failed.pop(job.run_name, None)
            self.tracker.set_status(self.ledger.update(job.id, "running", error=None))
            say(f"{self.progress.line()} | start {job.run_name}")
        elif isinstance(event, TrainingStep):
            self._training_step(event)
        elif isinstance(event, TrialEnded):
            self._trial_ended(event)
        elif isinstance(event, Scored):
            self._scored(event)
        elif isinstance(event, ScoringFailed):
            raise event.error
        elif isinstance(event, TrainingDone):
            self.training_done = True

    def _training_step(self, event: TrainingStep) -> None:
        job = self.jobs[event.job_id]
        run_id = self.ledger.entries[job.id].run_id
        assert run_id is not None
        # Each step reaches MLflow once: a worker group restarted from scratch reports its
        # first steps again, and one resumed from a checkpoint replays the curve up to it (so
        # steps whose results died with an interrupted driver still arrive).
        if run_id not in self.logged_steps:
            self.logged_steps[run_id] = self.tracker.logged_steps(run_id, "train/loss")
        logged = self.logged_steps[run_id]
        if event.history is not None:
            self.tracker.log_missing_steps(run_id, "train/loss", event.history)
            logged.update(step for step, _ in event.history)
        if event.step not in logged:
            self.tracker.log_metrics(run_id, event.metrics, step=event.step)
            logged.add(event.step)
        say(
            f"{self.progress.line()} | {job.run_name} step {event.step}/{event.total_steps} "
            f"loss {event.metrics['train/loss']:.4f} "
            f"({event.metrics.get('train/tokens_per_s', 0):.0f} tok/s)"
        )

    def _trial_ended(self, event: TrialEnded) -> None:
        job = self.jobs[event.job_id]
        self.ended.add(job.id)
        if job.id in self.started_at:
            self.progress.train_seconds.append(time.monotonic() - self.started_at[job.id])
        if event.outcome is None:
            error = event.error or "unknown error"
            entry = self.ledger.update(job.id, "failed", error=error)
            self.failed[job.run_name] = error
            self.tracker.set_tags(entry.run_id, {"calsweep.error": error[:5000]})  # type: ignore[arg-type]
            self.tracker.finish(entry.run_id, failed=True)  # type: ignore[arg-type]
            self.progress.trained += 1
            say(f"{self.progress.line()} | FAILED {job.run_name}: {error.splitlines()[-1]}")
            self._select_if_complete(job.spec.configuration)
            return
        entry = self.ledger.update(
            job.id,
            "trained",
            export=event.outcome.export,
            export_digest=event.outcome.export_digest,
            error=None,
        )
        self._trained(job.id, entry)
        say(f"{self.progress.line()} | trained {job.run_name}")

    def _trained(self, job_id: str, entry: Entry) -> None:
        """A trial with an export: score it on its first splits."""
        self.progress.trained += 1
        assert entry.export is not None and entry.export_digest is not None
        model = self._model(job_id, entry.export, entry.export_digest)
        self._score(model, self.plan.first_phase(job_id))

    def _model(self, key: str, path: str, digest: str) -> ScoredModel:
        entry = self.ledger.entries[key]
        job = self.jobs.get(key)
        model = ScoredModel(
            key, entry.name, path, digest, job.spec if job else None, entry.run_id or ""
        )
        self.models[key] = model
        return model

    def _score(self, model: ScoredModel, phase: Phase) -> None:
        """Submit the model's score jobs of one phase; those already in the score cache count
        at once."""
        self.phase[model.key] = phase
        todo, waiting = [], set()
        for s in self.plan.phase_splits(phase):
            item = WorkItem(model.key, model.path, model.digest, s)
            cache_key = item.cache_key(self.settings)
            cached = load_cached(self.cache_dir, cache_key)
            if cached is None:
                todo.append(item)
                waiting.add(cache_key)
            else:
                self._keep(item, cached)
        self.waiting[model.key] = waiting
        if todo:
            self.scorer.submit(todo)
        else:
            self._phase_done(model)

    def _keep(self, item: WorkItem, result: SplitResult) -> None:
        r = item.request
        self.results[(item.model_key, r.benchmark, r.language, r.split)] = result
        job_key = score_job_key(item.model_key, r.benchmark, r.language, r.split)
        cache_key = item.cache_key(self.settings)
        if not self.ledger.is_scored(job_key, cache_key):
            self.ledger.record_score(job_key, cache_key)

    def _scored(self, event: Scored) -> None:
        item, cache_key = event.item, event.item.cache_key(self.settings)
        store_cached(self.cache_dir, cache_key, event.result)
        self._keep(item, event.result)
        self.seconds[item.model_key] = self.seconds.get(item.model_key, 0.0) + event.seconds
        self.split_count += 1
        waiting = self.waiting[item.model_key]
        waiting.discard(cache_key)
        model = self.models[item.model_key]
        if self.split_count % SCORE_LINE_EVERY == 0 or not waiting:
            r = item.request
            say(
                f"{self.progress.line()} | score {model.run_name} {r.benchmark}/{r.language}/"
                f"{r.split} acc {event.result.metrics['accuracy']:.3f} "
                f"({self.split_count} splits scored)"
            )
        if not waiting:
            self._phase_done(model)

    def _phase_done(self, model: ScoredModel) -> None:
        """A model's dev or test splits are all scored: log them; select or record."""
        del self.waiting[model.key]
        phase = self.phase.pop(model.key)
        results = {k: v for k, v in self.results.items() if k[0] == model.key}
        entry = self.ledger.entries[model.key]
        if entry.status != "finished":  # a resumed model recorded in MLflow before is not re-logged
            phase_rows = long_table([model], results).filter(
                (pl.col("split") == "test") == (phase == "test")
            )
            self.tracker.log_metrics(model.run_id, mlflow_metrics(phase_rows))
        if phase == "dev":
            assert model.trial is not None
            self.dev_done.add(model.key)
            self._select_if_complete(model.trial.configuration)
            return
        self._record(model)

    def _select_if_complete(self, configuration: tuple[str, str, float]) -> None:
        """Once every lr of a configuration has ended (dev-scored, or failed), score the best
        one's test splits and record the others."""
        if not self.plan.dev_splits or configuration in self.selected:
            return
        members = [j for j in self.plan.jobs if j.spec.configuration == configuration]
        if any(j.id not in self.ended or j.id in self.waiting for j in members):
            return
        self.selected.add(configuration)
        scored = [self.models[j.id] for j in members if j.id in self.dev_done]
        if not scored:
            return
        dev = {k: v for k, v in self.results.items() if k[0] in {m.key for m in scored}}
        best = select_lr(long_table(scored, dev), self.config.evaluation.select_lr_by)
        chosen_lr = best["lr"][0]
        for model in scored:
            if model.trial and model.trial.learning_rate == chosen_lr:
                say(f"lr selection: {model.run_name} for {'|'.join(map(str, configuration))}")
                self._score(model, "test")
            else:
                self._record(model, counted=False)

    def _record(self, model: ScoredModel, counted: bool = True) -> None:
        """Artifacts, status FINISHED: the model's run is complete."""
        entry = self.ledger.entries[model.key]
        if entry.status != "finished":
            results = {k: v for k, v in self.results.items() if k[0] == model.key}
            record_model(self.tracker, model, long_table([model], results), results)
            self.ledger.update(model.key, "finished")
        if counted:
            self.progress.scored += 1
            if model.key in self.seconds:
                self.progress.score_seconds.append(self.seconds[model.key])
            say(f"{self.progress.line()} | scored {model.run_name}")
