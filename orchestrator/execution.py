"""The sweep's Ray parts: the cluster checks, the SFT data, the Tune run of the plan's trial
jobs, and the scoring settings and resources; `orchestrator.conductor` runs them together."""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from calsweep.cluster import init_ray as start_ray
from calsweep.console import say
from calsweep.schema import fields_of
from calsweep.storage import is_uri
from evaluators.settings import ScoringSettings
from orchestrator.config import SweepConfig
from orchestrator.plan import TrialJob, TrialSpec
from orchestrator.trial import TrainLaunch, run_trial
from trainers.prepared import prepare

TUNE_EXPERIMENT = "tune"
TRIAL_DRIVER_MEMORY = 512 * 1024**2  # bytes reserved per CPU-less Tune trial driver


@dataclass(frozen=True)
class ScoredModel:
    """A model to score: a trained trial's export or an untuned base model."""

    key: str  # trial id, or base:<model>
    run_name: str
    path: str
    digest: str  # keys the score cache: the export manifest's, or `source_digest`
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


def scoring_reservation(config: SweepConfig) -> dict[str, float]:
    """What scoring holds for itself when `resources.scoring` is `reserved` (else nothing)."""
    r, actors = config.resources, config.evaluation.num_actors
    if r.scoring != "reserved":
        return {}
    gpus = r.gpus_per_scoring_actor * actors if r.use_gpu else 0.0
    return {"CPU": r.cpus_per_scoring_actor * actors, **({"GPU": gpus} if gpus else {})}


def reserve_scoring(config: SweepConfig) -> Any:
    """A placement group holding scoring's reserved resources for the whole sweep (the actors
    run inside it, trials cannot take it), or None when scoring shares the cluster."""
    if config.resources.scoring != "reserved":
        return None
    r = config.resources
    bundle = {"CPU": r.cpus_per_scoring_actor}
    if r.use_gpu and r.gpus_per_scoring_actor:
        bundle["GPU"] = r.gpus_per_scoring_actor
    group = ray.util.placement_group([bundle] * config.evaluation.num_actors)
    ray.get(group.ready(), timeout=300)
    return group


def concurrent_trials(config: SweepConfig) -> int:
    """Trials that fit the cluster at once (less scoring's reservation): a waiting trial driver
    holds CPU that its Train workers' placement group may need, so unbounded concurrency can
    deadlock small clusters."""
    r, t = config.resources, config.training
    total = dict(ray.cluster_resources())
    for resource, amount in scoring_reservation(config).items():
        total[resource] = total.get(resource, 0) - amount
    per_trial_cpu = r.cpus_per_trial_driver + t.num_workers * r.cpus_per_worker
    fit = int(total.get("CPU", 0) // per_trial_cpu)
    if r.use_gpu:
        fit = min(fit, int(total.get("GPU", 0) // t.num_workers))
    if fit < 1:
        raise RuntimeError(
            f"one trial needs {per_trial_cpu:g} CPUs{' and GPUs' if r.use_gpu else ''} "
            f"({t.num_workers} workers x {r.cpus_per_worker:g} + driver "
            f"{r.cpus_per_trial_driver:g}) but the cluster has {total.get('CPU', 0):g}"
            + (" beside scoring's reservation" if scoring_reservation(config) else "")
            + "; lower training.num_workers or resources.cpus_per_worker"
        )
    return fit


def tune_job(job: TrialJob) -> dict[str, str]:
    """What a Tune trial's config holds of its job: the id to look the job up by, and the
    run name for Tune's messages and directories."""
    return {"id": job.id, "name": job.run_name}


def tune_trial_name(trial: tune.experiment.Trial) -> str:
    """The trial's MLflow run name (`model|dataset|lr=..|ls=..`), for Tune's own messages."""
    return trial.config["job"]["name"]


def tune_trial_dirname(trial: tune.experiment.Trial) -> str:
    """The trial's directory under `<storage>/tune/`: its run name with the lr as written
    (Tune's default name rounds 5e-05 to 0.0001), made filesystem-safe, plus Tune's trial id
    for uniqueness."""
    safe = re.sub(r"[^A-Za-z0-9._=+-]+", "_", tune_trial_name(trial))
    return f"{safe}_{trial.trial_id}"


def prepare_sft_data(storage: str, jobs: list[TrialJob]) -> dict[str, str]:
    """Prepare (or find) the SFT data of each model x SFT dataset of `jobs` on the whole
    cluster before any trial starts; returns each data key's location."""
    from calsweep.models import resolve_model

    locations: dict[str, str] = {}
    for job in jobs:
        key = job.spec.data_key
        if key not in locations:
            path = resolve_model(job.settings.model_path)
            settings = job.settings.model_copy(update={"model_path": path})
            locations[key] = prepare(settings, storage, say=say).location
    return locations


def run_tune(
    config: SweepConfig,
    jobs: list[TrialJob],
    callback: tune.Callback,
    stopper: tune.Stopper,
    *,
    verbose: bool,
) -> None:
    """Run exactly `jobs` as Tune trials (the plan's jobs that are not finished yet); each
    Train run continues from its latest checkpoint if an earlier session left one. `stopper`
    ends all trials early (the sweep's: once its conductor has stopped)."""
    if not jobs:
        return
    prepared = prepare_sft_data(config.storage_dir, jobs)
    r, t = config.resources, config.training
    launch = TrainLaunch(
        config.storage_dir, t.num_workers, r.use_gpu, r.cpus_per_worker, t.max_failures
    )
    # Tune needs a non-empty resource request: a CPU-less driver reserves only memory.
    driver_cpus = r.cpus_per_trial_driver
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial, jobs={job.id: job for job in jobs}, prepared=prepared, launch=launch
        ),
        {"CPU": driver_cpus} if driver_cpus else {"CPU": 0, "memory": TRIAL_DRIVER_MEMORY},
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"job": tune.grid_search([tune_job(job) for job in jobs])},
        run_config=tune.RunConfig(
            name=TUNE_EXPERIMENT,
            storage_path=config.storage_dir,
            callbacks=[callback],
            stop=stopper,
            verbose=1 if verbose else 0,
        ),
        tune_config=tune.TuneConfig(
            reuse_actors=False,
            max_concurrent_trials=concurrent_trials(config),
            trial_name_creator=tune_trial_name,
            trial_dirname_creator=tune_trial_dirname,
        ),
    )
    tuner.fit()


def scoring_settings(config: SweepConfig) -> ScoringSettings:
    return ScoringSettings(**fields_of(ScoringSettings, config.evaluation))


ResultKey = tuple[str, str, str, str]  # (model key, benchmark, language, split)
