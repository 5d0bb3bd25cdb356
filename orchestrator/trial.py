"""The Ray Tune trial driver: one grid point -> a Ray Train DeepSpeed run -> an exported HF model.

The Train run is named after the trial's config hash and stored under the sweep's storage (a
local path or a URI), so a restored or re-run trial finds its Train snapshot and continues from the
latest checkpoint. A trial whose model was already exported (recorded in
`<storage>/trials/<id>.json`) is not retrained.
"""

from __future__ import annotations

import json
from typing import Any

from ray import tune
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from calsweep.models import resolve_model
from calsweep.storage import join, read_text, write_text
from orchestrator.config import SweepConfig
from orchestrator.plan import TrialSpec
from trainers.export import (
    FINAL_CHECKPOINT,
    HF_EXPORT_DIR,
    ExportedModel,
    exported_model,
    read_export,
)
from trainers.settings import TrainSettings
from trainers.train_loop import train_func

GRID_AXES = ("model", "sft_dataset", "learning_rate", "label_smoothing")


def trial_from_tune_config(tune_config: dict[str, Any], seed: int) -> TrialSpec:
    return TrialSpec(**{axis: tune_config[axis] for axis in GRID_AXES}, seed=seed)


def train_settings(config: SweepConfig, trial: TrialSpec) -> TrainSettings:
    """The worker-side settings of one trial (model path resolved on the driver's node)."""
    dataset = config.sft_datasets[trial.sft_dataset]
    t = config.training
    return TrainSettings(
        model_path=resolve_model(config.models[trial.model].source),
        sft_format=dataset.format,
        sft_source=dataset.source,
        max_samples=dataset.max_samples,
        on_malformed=dataset.on_malformed,
        learning_rate=trial.learning_rate,
        label_smoothing=trial.label_smoothing,
        seed=trial.seed,
        **t.model_dump(exclude={"num_workers", "max_failures"}),
    )


def data_key(trial: TrialSpec) -> str:
    """Trials that differ only in lr and smoothing train on the same prepared data."""
    return f"{trial.model}|{trial.sft_dataset}"


def trial_record_path(config: SweepConfig, trial_id: str) -> str:
    return join(config.storage_dir, "trials", f"{trial_id}.json")


def run_trial(tune_config: dict[str, Any], sweep: dict[str, Any], prepared: dict[str, str]) -> None:
    """Tune function trainable: train one grid point and report where its model is.
    `prepared`: the location of each `data_key`'s prepared SFT data."""
    config = SweepConfig.model_validate(sweep)
    trial = trial_from_tune_config(tune_config, config.seed)
    trial_id = trial.trial_id(config)
    record_path = trial_record_path(config, trial_id)
    record_text = read_text(record_path)
    if record_text is not None:
        record = json.loads(record_text)
        export = read_export(record["model_dir"])
        if export is not None:
            reported = {"model_dir": export.location, "export_digest": export.digest, "reused": 1}
            tune.report({**record["final_metrics"], **reported})
            return

    # The Train run may have exported its model before the sweep driver died: reuse it.
    final_export = join(config.storage_dir, f"train-{trial_id}", FINAL_CHECKPOINT, HF_EXPORT_DIR)
    export = read_export(final_export)
    if export is not None:
        _finish(record_path, export, {}, reused=1)
        return

    resources = config.resources
    trainer = TorchTrainer(
        train_func,
        train_loop_config={
            **train_settings(config, trial).to_dict(),
            "prepared_data": prepared[data_key(trial)],
        },
        scaling_config=ScalingConfig(
            num_workers=config.training.num_workers,
            use_gpu=resources.use_gpu,
            resources_per_worker={"CPU": resources.cpus_per_worker},
        ),
        torch_config=TorchConfig(backend="nccl" if resources.use_gpu else "gloo"),
        run_config=RunConfig(
            name=f"train-{trial_id}",
            storage_path=config.storage_dir,
            failure_config=FailureConfig(max_failures=config.training.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()],
        ),
    )
    result = trainer.fit()
    # NonFiniteLossError names the step and the value; RuntimeError: no complete export
    export = exported_model(result)
    final_metrics = {k: v for k, v in result.metrics.items() if isinstance(v, int | float)}
    _finish(record_path, export, final_metrics, reused=0)


def _finish(record_path: str, export: ExportedModel, final_metrics: dict[str, float], reused: int):
    """Record the export (atomically: a record exists only for a complete export) and report."""
    located = {"model_dir": export.location, "export_digest": export.digest}
    write_text(record_path, json.dumps({**located, "final_metrics": final_metrics}))
    tune.report({**final_metrics, **located, "reused": reused})
