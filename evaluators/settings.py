"""How a model is scored, in a module of plain values: a sweep file's `evaluation:` section and
`python -m evaluators.score`'s flags read them without importing torch or Ray."""

from __future__ import annotations

import typing
from typing import Literal

from pydantic import Field

from calsweep.schema import NonNegativeInt, PositiveInt, Strict
from evaluators.metrics import MetricConfig

Mode = Literal["perplexity", "loglik", "letter"]
MODES: tuple[str, ...] = typing.get_args(Mode)


class ScoringSettings(Strict):
    """Everything scoring needs besides the model and the split; part of the score cache key."""

    mode: Mode = Field("perplexity", description="how options are scored (DESIGN.md)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bf16 on GPUs and on CPUs with AMX/AVX512-BF16, else float32"
    )
    max_batch_tokens: PositiveInt = Field(
        4096, description="packed tokens per forward pass (halved on out-of-memory)"
    )
    metrics: MetricConfig = MetricConfig()


class FewShot(Strict):
    """k-shot prompts: a sweep file's `evaluation.num_fewshot`, the scorer's `--num-fewshot`.
    Not a scoring setting: it is part of each split's request (and so of its cache key)."""

    num_fewshot: NonNegativeInt = Field(
        0, description="k-shot examples from the dev/validation split"
    )
