"""The Ray Tune trial driver: one planned job -> a Ray Train DeepSpeed run -> an exported HF model.

The driver receives its resolved job from the plan (nothing is re-derived or re-validated here)
and names the Train run after the job's id in the sweep's storage (a local path or a URI), so a
re-run of the job finds its Train snapshot and continues from the latest checkpoint, or, if the
run had already exported its model, returns that export without training a step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray import tune
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from calsweep.models import resolve_model
from orchestrator.plan import TrialJob
from trainers.export import exported_model
from trainers.train_loop import train_func

EXPORT_KEY = "calsweep/export"  # keys of the trial driver's closing report (`TrialOutcome`)
DIGEST_KEY = "calsweep/export_digest"


@dataclass(frozen=True)
class TrainLaunch:
    """How every trial's Train run is launched: sweep-wide, so stated once per sweep."""

    storage: str
    num_workers: int
    use_gpu: bool
    cpus_per_worker: float
    max_failures: int


@dataclass(frozen=True)
class TrialOutcome:
    """What a finished trial hands the sweep driver: where its model is and what it is."""

    export: str
    export_digest: str

    def as_result(self) -> dict[str, str]:
        return {EXPORT_KEY: self.export, DIGEST_KEY: self.export_digest}

    @classmethod
    def from_result(cls, result: dict[str, Any] | None) -> TrialOutcome | None:
        """The outcome in a trial's last Tune result; None if it ended without one."""
        if not result or EXPORT_KEY not in result:
            return None
        return cls(result[EXPORT_KEY], result[DIGEST_KEY])


def run_trial(
    tune_config: dict[str, Any],
    jobs: dict[str, TrialJob],
    prepared: dict[str, str],
    launch: TrainLaunch,
) -> None:
    """Tune function trainable: train one planned job and report its export.
    `prepared`: the location of each data key's prepared SFT data."""
    job = jobs[tune_config["job"]["id"]]
    settings = job.settings.model_copy(
        update={
            "model_path": resolve_model(job.settings.model_path),
            "prepared_data": prepared[job.spec.data_key],
        }
    )
    trainer = TorchTrainer(
        train_func,
        train_loop_config=settings.model_dump(),
        scaling_config=ScalingConfig(
            num_workers=launch.num_workers,
            use_gpu=launch.use_gpu,
            resources_per_worker={"CPU": launch.cpus_per_worker},
        ),
        torch_config=TorchConfig(backend="nccl" if launch.use_gpu else "gloo"),
        run_config=RunConfig(
            name=job.train_run_name,
            storage_path=launch.storage,
            failure_config=FailureConfig(max_failures=launch.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()],
        ),
    )
    # NonFiniteLossError names the step and the value; RuntimeError: no complete export
    export = exported_model(trainer.fit())
    tune.report(TrialOutcome(export.location, export.digest).as_result())
