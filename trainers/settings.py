"""The settings of one training run, in a module of plain values: the CLI's `--help` and the sweep's
planning read them without importing torch or Ray."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

SFT_FORMATS = ("alpaca", "tulu", "openhermes")  # one adapter each in `trainers.sft_data`


@dataclass(frozen=True)
class TrainSettings:
    """Everything one training run needs; plain values so Ray can ship it to workers."""

    model_path: str
    sft_format: str
    sft_source: str
    learning_rate: float
    label_smoothing: float
    seed: int = 0
    max_samples: int | None = None
    on_malformed: str = "skip"
    max_steps: int | None = None
    epochs: float = 1.0
    micro_batch_size: int = 4
    grad_accum_steps: int = 1
    max_seq_len: int = 512
    warmup_ratio: float = 0.02
    weight_decay: float = 0.0
    dropout: float = 0.1
    zero_stage: int = 2
    precision: str = "auto"  # or bf16, fp16, fp32; see `calsweep.hardware.auto_precision`
    log_every_steps: int = 1
    checkpoint_every_steps: int = 0
    checkpoint_every_minutes: float = 0.0  # also by the clock; 0 = off
    length_grouped: bool = True
    # location of the examples `trainers.prepared.prepare` made for these settings
    prepared_data: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
