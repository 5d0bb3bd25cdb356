"""The sweep's two Ray phases: train the grid with Tune, then score every model with Ray Data."""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import tune
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from calsweep.cluster import init_ray as start_ray
from calsweep.console import say
from calsweep.models import resolve_model
from calsweep.storage import is_uri, join
from evaluators.evaluate import SplitRequest, SplitResult
from evaluators.metrics import MetricConfig
from evaluators.pipeline import ScoringSettings, WorkItem, model_digest, score_work_items
from orchestrator.config import SweepConfig
from orchestrator.plan import EvalSplit, Plan, TrialSpec
from orchestrator.progress import TrialProgress
from orchestrator.tracking import SweepTracker
from orchestrator.trial import (
    GRID_AXES,
    data_key,
    run_trial,
    train_settings,
    trial_from_tune_config,
)
from trainers.prepared import prepare

TUNE_EXPERIMENT = "tune"
TRIAL_DRIVER_MEMORY = 512 * 1024**2  # bytes reserved per CPU-less Tune trial driver


@dataclass(frozen=True)
class ScoredModel:
    """A model to score: a trained trial's export or an untuned base model."""

    key: str  # trial id, or base:<model>
    run_name: str
    path: str
    trial: TrialSpec | None  # None for base models
    run_id: str


def init_ray(address: str | None, verbose: bool) -> None:
    """Join `address` or start a local instance, with Tune's noise turned down too."""
    # Tune's reporters would repeat what TrialProgress prints; the legacy one is silent at
    # verbose=0, the new one still prints an experiment banner.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1" if verbose else "0")
    start_ray(address, verbose)


def check_shared_storage(storage: str) -> None:
    """Fail fast when some node of a multi-node cluster cannot see the sweep's local storage
    (checkpoints, exports and trial records must be readable from every node); object storage
    (a URI) is reachable from every node by design."""
    nodes = [node for node in ray.nodes() if node["Alive"]]
    if len(nodes) < 2 or is_uri(storage):
        return
    sweep_dir = Path(storage)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    marker = sweep_dir / ".calsweep_shared_check"
    token = uuid.uuid4().hex
    marker.write_text(token)

    @ray.remote(num_cpus=0)
    def sees_marker() -> bool:
        return marker.is_file() and marker.read_text() == token

    checks = {
        node["NodeManagerAddress"]: sees_marker.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ).remote()
        for node in nodes
    }
    blind = [address for address, ref in checks.items() if not ray.get(ref)]
    if blind:
        raise RuntimeError(
            f"sweep storage {sweep_dir} is not visible from node(s) {', '.join(blind)}: on a "
            "multi-node cluster use a shared filesystem path that every node mounts "
            "(--output-dir /shared/calsweep) or object storage (--storage s3://bucket/prefix)"
        )


def concurrent_trials(config: SweepConfig) -> int:
    """Trials that fit the cluster at once: a waiting trial driver holds CPU that its Train
    workers' placement group may need, so unbounded concurrency can deadlock small clusters."""
    r, t = config.resources, config.training
    total = ray.cluster_resources()
    per_trial_cpu = r.cpus_per_trial_driver + t.num_workers * r.cpus_per_worker
    fit = int(total.get("CPU", 0) // per_trial_cpu)
    if r.use_gpu:
        fit = min(fit, int(total.get("GPU", 0) // t.num_workers))
    if fit < 1:
        raise RuntimeError(
            f"one trial needs {per_trial_cpu:g} CPUs{' and GPUs' if r.use_gpu else ''} "
            f"({t.num_workers} workers x {r.cpus_per_worker:g} + driver "
            f"{r.cpus_per_trial_driver:g}) but the cluster has {total.get('CPU', 0):g}; lower "
            "training.num_workers or resources.cpus_per_worker"
        )
    return fit


def tune_trial_name(trial: tune.experiment.Trial) -> str:
    """The trial's MLflow run name (`model|dataset|lr=..|ls=..`), for Tune's own messages."""
    return trial_from_tune_config(trial.config, seed=0).run_name  # the seed is not in the name


def tune_trial_dirname(trial: tune.experiment.Trial) -> str:
    """The trial's directory under `<storage>/tune/`: its run name with the lr as written
    (Tune's default name rounds 5e-05 to 0.0001), made filesystem-safe, plus Tune's trial id
    for uniqueness."""
    safe = re.sub(r"[^A-Za-z0-9._=+-]+", "_", tune_trial_name(trial))
    return f"{safe}_{trial.trial_id}"


def prepare_sft_data(config: SweepConfig, plan: Plan) -> dict[str, str]:
    """Prepare (or find) the SFT data of each model x SFT dataset of the grid, on the whole
    cluster before any trial starts; returns each `data_key`'s location."""
    locations: dict[str, str] = {}
    for trial in plan.trials:
        key = data_key(trial)
        if key not in locations:
            settings = train_settings(config, trial)
            locations[key] = prepare(settings, config.storage_dir, say=say).location
    return locations


def train_all(
    config: SweepConfig, plan: Plan, tracker: SweepTracker, *, resume: bool, verbose: bool
) -> tuple[list[ScoredModel], dict[str, str]]:
    """Run (or resume) the Tune grid; returns the trained models and failed trials' errors."""
    prepared = prepare_sft_data(config, plan)
    # Tune needs a non-empty resource request: a CPU-less driver reserves only memory.
    driver_cpus = config.resources.cpus_per_trial_driver
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, sweep=config.model_dump(), prepared=prepared),
        {"CPU": driver_cpus} if driver_cpus else {"CPU": 0, "memory": TRIAL_DRIVER_MEMORY},
    )
    progress = TrialProgress(config, tracker, len(plan.trials))
    run_config = tune.RunConfig(
        name=TUNE_EXPERIMENT,
        storage_path=config.storage_dir,
        callbacks=[progress],
        verbose=1 if verbose else 0,
    )
    experiment = join(config.storage_dir, TUNE_EXPERIMENT)
    if resume and tune.Tuner.can_restore(experiment):
        say(f"resuming the Tune experiment in {experiment}")
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_errored=True)
    else:
        grid = config.grid.model_dump()
        param_space = {axis: tune.grid_search(grid[axis]) for axis in GRID_AXES}
        tune_config = tune.TuneConfig(
            reuse_actors=False,
            max_concurrent_trials=concurrent_trials(config),
            trial_name_creator=tune_trial_name,
            trial_dirname_creator=tune_trial_dirname,
        )
        tuner = tune.Tuner(
            trainable, param_space=param_space, run_config=run_config, tune_config=tune_config
        )
    grid_results = tuner.fit()
    tracker.flush()

    trained, failed = [], dict(progress.failed)
    for result in grid_results:
        trial = trial_from_tune_config(result.config, config.seed)
        if result.error or "model_dir" not in (result.metrics or {}):
            failed.setdefault(trial.run_name, str(result.error or "no model exported"))
            continue
        run_id = tracker.child_run(trial.trial_id(config), trial.run_name, "trial")
        trained.append(
            ScoredModel(
                trial.trial_id(config), trial.run_name, result.metrics["model_dir"], trial, run_id
            )
        )
    for model in plan.base_models:
        run_id = tracker.child_run(f"base:{model}", f"{model}|base", "base")
        tracker.log_params(
            run_id,
            {
                "model": model,
                "sft_dataset": "none",
                "model_source": config.models[model].source,
                "seed": config.seed,  # few-shot sampling when scoring, as on the trial runs
            },
        )
        trained.append(
            ScoredModel(
                f"base:{model}",
                f"{model}|base",
                resolve_model(config.models[model].source),
                None,
                run_id,
            )
        )
    return trained, failed


def scoring_settings(config: SweepConfig) -> ScoringSettings:
    e = config.evaluation
    return ScoringSettings(
        mode=e.mode,
        dtype=e.dtype,
        max_batch_tokens=e.max_batch_tokens,
        metrics=MetricConfig(**e.metrics.model_dump()),
    )


ResultKey = tuple[str, str, str, str]  # (model key, benchmark, language, split)


def score_all(
    config: SweepConfig, splits: list[EvalSplit], models: list[ScoredModel]
) -> dict[ResultKey, SplitResult]:
    """Score every model on every split (cached work is reused), keyed by ResultKey."""
    settings = scoring_settings(config)
    items = []
    for model in models:
        digest = model_digest(model.path)
        for s in splits:
            request = SplitRequest(
                s.benchmark,
                s.language,
                s.split,
                s.source,
                s.limit,
                config.seed,
                config.evaluation.num_fewshot,
                s.subjects,
            )
            items.append(WorkItem(model.key, model.path, digest, request))
    total = len(items)
    counter = {"done": 0, "cached": 0}
    names = {m.key: m.run_name for m in models}

    def on_result(item: WorkItem, result: SplitResult, cached: bool) -> None:
        counter["done"] += 1
        counter["cached"] += cached
        if not cached and (counter["done"] % 10 == 0 or counter["done"] == total):
            say(
                f"score {counter['done']}/{total} splits ({counter['cached']} cached) | "
                f"{names[item.model_key]} {item.request.benchmark}/{item.request.language} "
                f"acc {result.metrics['accuracy']:.3f}"
            )

    say(f"scoring {len(models)} models x {len(splits)} {splits[0].split if splits else ''} splits")
    resources = config.resources
    by_cache_key = score_work_items(
        items,
        settings,
        config.sweep_dir / "score_cache",
        num_actors=config.evaluation.num_actors,
        cpus_per_actor=resources.cpus_per_scoring_actor,
        gpus_per_actor=resources.gpus_per_scoring_actor if resources.use_gpu else 0.0,
        on_result=on_result,
    )
    say(f"scored {total} splits ({counter['cached']} from cache)")
    return {
        (item.model_key, item.request.benchmark, item.request.language, item.request.split): (
            by_cache_key[item.cache_key(settings)]
        )
        for item in items
    }
