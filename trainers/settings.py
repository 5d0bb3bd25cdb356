"""The settings of one training run, in a module of plain values: the CLI's `--help` and the sweep's
planning read them without importing torch or Ray.

`TrainingRecipe` is the SFT recipe (a sweep file's `training:` section, `python -m trainers.sft`'s
flags), `WorkerGroup` the Ray Train worker group that runs it, `SFTRows` which rows of a dataset
are used, `TrainSettings` what each worker trains with: the recipe plus one run's model, data and
grid point.
"""

from __future__ import annotations

import typing
from typing import Annotated, Literal

from pydantic import Field

from calsweep.schema import NonNegativeInt, PositiveInt, Strict

SFTFormat = Literal["alpaca", "tulu", "openhermes"]  # one adapter each in `trainers.sft_data`
SFT_FORMATS: tuple[str, ...] = typing.get_args(SFTFormat)
LearningRate = Annotated[float, Field(gt=0)]
LabelSmoothing = Annotated[float, Field(ge=0, lt=1)]


class TrainingRecipe(Strict):
    """The SFT recipe (DESIGN.md, "Training")."""

    max_steps: PositiveInt | None = Field(
        None, description="optimizer steps; unset: `epochs` passes over the data"
    )
    epochs: Annotated[float, Field(gt=0)] = Field(1.0, description="passes over the data")
    micro_batch_size: PositiveInt = Field(4, description="sequences per worker per forward pass")
    grad_accum_steps: PositiveInt = Field(
        1,
        description="micro-batches per optimizer step (effective batch = micro x accum x workers)",
    )
    max_seq_len: PositiveInt = Field(
        512, description="tokens per sequence (longer ones are right-truncated)"
    )
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.02, description="fraction of steps of linear warm-up before the linear decay"
    )
    weight_decay: Annotated[float, Field(ge=0)] = Field(0.0, description="AdamW decay")
    dropout: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.1, description="dropout where the architecture has it"
    )
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(  # auto: calsweep.hardware
        "auto",
        description="training precision; auto: bf16 on GPUs and on CPUs with AMX or AVX512-BF16 "
        "(there ~3.5x faster than fp32; ~60x slower on AVX2-only CPUs), else fp32",
    )
    log_every_steps: PositiveInt = Field(1, description="optimizer steps between reported metrics")
    checkpoint_every_steps: NonNegativeInt = Field(
        0, description="steps between resumable DeepSpeed checkpoints (0: only the final one)"
    )
    # A run of unknown speed still loses at most this much to a failure, and a fast one does not
    # write terabytes.
    checkpoint_every_minutes: Annotated[float, Field(ge=0)] = Field(
        0.0,
        description="also a resumable checkpoint when this many minutes passed since the last "
        "(0: off)",
    )
    length_grouped: bool = Field(
        True,
        description="micro-batches of similar-length sequences in a seeded order: less padding, "
        "the same exact loss (off: plain shuffled batches)",
    )


class WorkerGroup(Strict):
    """The Ray Train worker group that runs a recipe."""

    num_workers: PositiveInt = Field(2, description="Ray Train workers (DeepSpeed ranks)")
    max_failures: NonNegativeInt = Field(
        1, description="worker-group restarts from the latest checkpoint before giving up"
    )


class SFTRows(Strict):
    """Which rows of an SFT dataset are trained on (also a sweep file's `sft_datasets` entry)."""

    max_samples: PositiveInt | None = Field(
        None, description="seeded subsample of valid conversations"
    )
    on_malformed: Literal["skip", "error"] = Field(
        "skip", description="skip (and count) or fail on malformed rows"
    )


class TrainSettings(TrainingRecipe, SFTRows):
    """Everything one training run needs: the recipe, the model, the data and the grid point."""

    model_path: str
    sft_format: SFTFormat
    sft_source: str
    learning_rate: LearningRate = Field(description="peak learning rate (AdamW)")
    label_smoothing: LabelSmoothing = Field(
        description="label smoothing beta in [0, 1); 0 is plain cross-entropy"
    )
    seed: int = Field(0, description="data order, subsample, dropout")
    # location of the examples `trainers.prepared.prepare` made for these settings
    prepared_data: str = ""
