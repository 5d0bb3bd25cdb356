"""The DeepSpeed SFT loop that each Ray Train worker runs (`train_func`), top to bottom.

Every worker loads and tokenises the same seeded data and derives the same batch schedule, so
the global token count of each optimizer step is known on every rank without communication:
the loss is scaled so that DeepSpeed's gradient averaging yields the exact token-mean over the
whole effective batch (micro-batch x grad-accum x workers).
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import ray.train
import torch

from trainers.loss import masked_label_smoothed_cross_entropy
from trainers.sft_data import MalformedRow, collate, load_sft_conversations, tokenize_conversation

HF_EXPORT_DIR = "hf_model"
DS_STATE_DIR = "deepspeed"
DROPOUT_ATTRIBUTES = ("attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "dropout")


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
    precision: str = "bf16"
    log_every_steps: int = 1
    checkpoint_every_steps: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class NonFiniteLossError(RuntimeError):
    """Training produced NaN/inf: retrying would train on garbage again, so the trial stops."""


def deepspeed_config(s: TrainSettings, world_size: int, total_steps: int) -> dict[str, Any]:
    """DeepSpeed's JSON config: AdamW, linear warm-up then linear decay, ZeRO stage, precision."""
    return {
        "train_batch_size": s.micro_batch_size * s.grad_accum_steps * world_size,
        "train_micro_batch_size_per_gpu": s.micro_batch_size,
        "gradient_accumulation_steps": s.grad_accum_steps,
        "gradient_clipping": 1.0,
        "optimizer": {
            # torch_adam: the torch implementation, no FusedAdam/CPUAdam JIT build on CPU.
            "type": "AdamW",
            "params": {"lr": s.learning_rate, "weight_decay": s.weight_decay, "torch_adam": True},
        },
        "scheduler": {
            "type": "WarmupDecayLR",
            "params": {
                "warmup_min_lr": 0.0,
                "warmup_max_lr": s.learning_rate,
                "warmup_num_steps": max(1, math.ceil(s.warmup_ratio * total_steps)),
                "total_num_steps": total_steps,
                "warmup_type": "linear",
            },
        },
        "bf16": {"enabled": s.precision == "bf16"},
        "fp16": {"enabled": s.precision == "fp16"},
        "zero_optimization": {
            "stage": s.zero_stage,
            "stage3_gather_16bit_weights_on_model_save": s.zero_stage == 3,
        },
        "steps_per_print": 10**9,  # progress goes through Ray, not DeepSpeed's stdout
        "seed": s.seed,
    }


def tokenize_examples(s: TrainSettings, tokenizer: Any) -> tuple[list[dict], dict[str, int]]:
    """Load, convert and tokenise the SFT data; returns examples and skipped-row counts."""
    conversations, skipped = load_sft_conversations(
        s.sft_format, s.sft_source, s.max_samples, s.seed, s.on_malformed
    )
    examples = []
    for index, messages in enumerate(conversations):
        try:
            examples.append(tokenize_conversation(messages, tokenizer, s.max_seq_len))
        except MalformedRow as err:
            if s.on_malformed == "error":
                raise ValueError(
                    f"conversation {index}: {err}; set on_malformed: skip to drop such rows"
                ) from err
            skipped[err.reason] = skipped.get(err.reason, 0) + 1
    if not examples:
        raise ValueError(f"no usable SFT examples in {s.sft_source} (skipped: {skipped})")
    return examples, skipped


def batch_schedule(n_examples: int, s: TrainSettings, world_size: int) -> list[list[int]]:
    """Example indices per optimizer step (whole effective batches), seeded shuffle per epoch."""
    per_step = s.micro_batch_size * s.grad_accum_steps * world_size
    steps_per_epoch = max(1, n_examples // per_step)
    total = s.max_steps or max(1, int(s.epochs * steps_per_epoch))
    schedule: list[list[int]] = []
    epoch = 0
    while len(schedule) < total:
        order = list(range(n_examples))
        random.Random(s.seed * 100_003 + epoch).shuffle(order)
        order = (order * math.ceil(per_step / n_examples)) if n_examples < per_step else order
        for start in range(0, len(order) - per_step + 1, per_step):
            schedule.append(order[start : start + per_step])
        epoch += 1
    return schedule[:total]


def train_func(config: dict[str, Any]) -> None:
    """Ray Train worker entry point: set up, resume, train, checkpoint, export."""
    import deepspeed
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    s = TrainSettings(**config)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(s.seed)

    tokenizer = AutoTokenizer.from_pretrained(s.model_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    examples, skipped = tokenize_examples(s, tokenizer)
    schedule = batch_schedule(len(examples), s, world)

    model_config = AutoConfig.from_pretrained(s.model_path)
    for attribute in DROPOUT_ATTRIBUTES:
        if hasattr(model_config, attribute):
            setattr(model_config, attribute, s.dropout)
    model = AutoModelForCausalLM.from_pretrained(
        s.model_path, config=model_config, dtype=torch.float32
    )
    engine, _, _, scheduler = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=deepspeed_config(s, world, len(schedule)),
    )
    engine.train()

    start_step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as ckpt_dir:
            _, client_state = engine.load_checkpoint(str(Path(ckpt_dir) / DS_STATE_DIR))
            start_step = int(client_state["step"])
    if rank == 0:
        print(
            f"[calsweep] {len(examples)} examples (skipped {skipped}), {len(schedule)} steps of "
            f"{len(schedule[0])} sequences on {world} workers, resuming at step {start_step}"
        )

    for step in range(start_step, len(schedule)):
        started = time.perf_counter()
        loss_sum, tokens, padded = _optimizer_step(
            engine, s, examples, schedule[step], step, rank, world, pad_id
        )
        seconds = time.perf_counter() - started
        done = step + 1
        metrics = {
            "step": done,
            "train/loss": loss_sum / max(tokens, 1),
            "train/lr": scheduler.get_last_lr()[0] if scheduler else s.learning_rate,
            "train/tokens_per_s": padded / seconds,
            "train/skipped_rows": float(sum(skipped.values())),
            "total_steps": len(schedule),
        }
        is_last = done == len(schedule)
        periodic = s.checkpoint_every_steps and done % s.checkpoint_every_steps == 0
        if is_last:
            _report_final(engine, tokenizer, s, metrics, rank)
        elif periodic:
            _report_resumable(engine, metrics, done)
        elif done % s.log_every_steps == 0:
            ray.train.report(metrics)


def _optimizer_step(engine, s, examples, step_indices, step, rank, world, pad_id):
    """Run grad-accum micro-batches of this rank; returns global (loss sum, tokens, padded)."""
    micro = [
        step_indices[i : i + s.micro_batch_size]
        for i in range(0, len(step_indices), s.micro_batch_size)
    ]
    global_tokens = sum(_label_tokens(examples[i]) for i in step_indices)
    # DeepSpeed divides by grad-accum steps and averages over ranks; undo both so the gradient
    # is that of (sum of token losses over the whole effective batch) / global_tokens.
    scale = s.grad_accum_steps * world / global_tokens
    local = torch.zeros(3, dtype=torch.float64)
    for accum in range(s.grad_accum_steps):
        batch = collate([examples[i] for i in micro[accum * world + rank]], pad_id)
        logits = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss_sum, n_tokens = masked_label_smoothed_cross_entropy(
            logits, batch["labels"], s.label_smoothing
        )
        value = loss_sum.item()
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"non-finite training loss {value} at optimizer step {step + 1} (rank {rank}, "
                f"micro-batch {accum}); lower the learning rate or check the data"
            )
        engine.backward(loss_sum * scale)
        engine.step()
        local += torch.tensor([value, float(n_tokens), float(batch["input_ids"].numel())])
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(local)
    return local[0].item(), local[1].item(), local[2].item()


def _label_tokens(example: dict) -> int:
    """Tokens that carry loss (after the causal shift the first position never does)."""
    return sum(1 for label in example["labels"][1:] if label != -100)


def _report_resumable(engine, metrics: dict[str, Any], step: int) -> None:
    """Save DeepSpeed state (every rank its shard) and report it as one Ray Train checkpoint."""
    with tempfile.TemporaryDirectory() as tmp:
        engine.save_checkpoint(
            str(Path(tmp) / DS_STATE_DIR), tag=f"step{step}", client_state={"step": step}
        )
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
            checkpoint_dir_name=f"checkpoint_step{step:06d}",
        )


def _report_final(engine, tokenizer, s: TrainSettings, metrics: dict[str, Any], rank: int) -> None:
    """Export the trained model as a Hugging Face directory in the final checkpoint."""
    if s.zero_stage == 3:  # a collective: every rank must take part
        state_dict = engine._zero3_consolidated_16bit_state_dict()
    else:
        state_dict = engine.module.state_dict() if rank == 0 else None
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            export = Path(tmp) / HF_EXPORT_DIR
            engine.module.save_pretrained(export, state_dict=state_dict)
            tokenizer.save_pretrained(export)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(
            {**metrics, "exported": 1},
            checkpoint=checkpoint,
            checkpoint_dir_name="checkpoint_final",
        )
