"""The DeepSpeed SFT loop that each Ray Train worker runs (`train_func`), top to bottom.

Every worker memory-maps the same prepared data (`trainers.prepared`, tokenised once per key on
the driver's cluster) and derives the same seeded batch schedule from its per-example lengths,
so the global token count of each optimizer step is known on every rank without communication:
the loss is scaled so that DeepSpeed's gradient averaging yields the exact token-mean over the
whole effective batch (micro-batch x grad-accum x workers). A rank reads only the rows of its
own micro-batches.

Reports to Ray Train (rank 0's metrics are the run's): ``step``, ``total_steps``,
``train/loss`` (token-mean over the effective batch, nats), ``train/lr`` (the rate this step
used), ``train/tokens_per_s`` (non-padding tokens, all workers), ``train/step_s``,
``train/padding_fraction``, ``train/loss_tokens`` (response tokens in the step),
``train/grad_norm`` (before clipping, when DeepSpeed computes it), ``train/peak_rss_mb`` (this
worker), ``train/skipped_rows`` and ``train/setup_s`` (worker start to first step); the first
report after a resume adds `HISTORY_KEY`. The lr schedule is `lr_multiplier`; a NaN/inf loss
ends the run without a retry (`_report_nonfinite`). The checkpoints and the export are laid out
by `trainers.export`.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import torch

from calsweep.hardware import PRECISIONS, auto_precision
from trainers.batching import collate, length_grouped_batches
from trainers.export import (
    DS_STATE_DIR,
    FINAL_CHECKPOINT,
    HF_EXPORT_DIR,
    NonFiniteLossError,
    ends_run,
    failure_checkpoint_name,
    step_checkpoint_name,
    write_export,
    write_failure,
)
from trainers.loss import masked_label_smoothed_cross_entropy
from trainers.prepared import PreparedExamples
from trainers.settings import TrainSettings

# Result key of the first report after a resume: the JSON list of [step, {train/... metrics}]
# reported up to the checkpoint, so a consumer can fill in steps whose results were lost.
HISTORY_KEY = "resumed_history"
# Config attributes that hold a dropout probability, across HF architectures (Llama, Mistral and
# Gemma2: attention_dropout; GPT-2: attn_pdrop/resid_pdrop/embd_pdrop; BERT-style: *_dropout_prob).
DROPOUT_SUFFIXES = ("dropout", "pdrop", "dropout_rate", "dropout_prob")


def warmup_steps(s: TrainSettings, total_steps: int) -> int:
    """Warm-up length: the first ``warmup_ratio`` of the steps, at least one when the ratio > 0."""
    return min(total_steps, math.ceil(s.warmup_ratio * total_steps))


def lr_multiplier(step: int, warmup: int, total: int) -> float:
    """Fraction of the peak learning rate used by 0-based optimizer ``step``.

    The schedule is linear from 0 at the start to the peak after ``warmup`` steps, then linear
    down to 0 at the end of step ``total``; each step uses its mean over the step, i.e. its value
    at ``step + 0.5``. So no step trains at lr 0: DeepSpeed's WarmupDecayLR and HF's linear
    schedule evaluate at ``step``, which gives the first step lr 0 (on a 10-step run with 2%
    warm-up, a tenth of the training is wasted) and, decaying to 0, a last step barely moving.
    """
    t = step + 0.5
    if t < warmup:
        return t / warmup
    if step >= total:  # the scheduler also steps after the last update
        return 0.0
    return (total - t) / (total - warmup)


def zero_stage(s: TrainSettings, world_size: int) -> int:
    """The ZeRO stage to run: as configured, except that stages 1-2 on a single worker become 0.

    Stages 1-2 partition optimizer state and gradients across workers; with one worker there is
    nothing to partition, only bookkeeping (it doubled the optimizer step on CPU), while stage 0
    keeps the same fp32 master weights.
    """
    return 0 if world_size == 1 and s.zero_stage in (1, 2) else s.zero_stage


def deepspeed_config(s: TrainSettings, world_size: int) -> dict[str, Any]:
    """DeepSpeed's JSON config: AdamW, clipping, ZeRO stage, precision (lr: `lr_multiplier`)."""
    stage = zero_stage(s, world_size)
    return {
        "train_batch_size": s.micro_batch_size * s.grad_accum_steps * world_size,
        "train_micro_batch_size_per_gpu": s.micro_batch_size,
        "gradient_accumulation_steps": s.grad_accum_steps,
        "gradient_clipping": 1.0,
        "optimizer": {
            "type": "AdamW",
            # torch_adam: torch's AdamW, no FusedAdam/CPUAdam JIT build on CPU; fused: its
            # one-pass kernel (CPU and CUDA), ~30% faster than the per-op one on CPU.
            "params": {
                "lr": s.learning_rate,
                "weight_decay": s.weight_decay,
                "torch_adam": True,
                "fused": True,
            },
        },
        "bf16": {"enabled": s.precision == "bf16"},
        "fp16": {"enabled": s.precision == "fp16"},
        "zero_optimization": {
            "stage": stage,
            "stage3_gather_16bit_weights_on_model_save": stage == 3,
        },
        "steps_per_print": 10**9,  # progress goes through Ray, not DeepSpeed's stdout
    }


def batch_schedule(lengths: list[int], s: TrainSettings, world_size: int) -> list[list[int]]:
    """Example indices of every optimizer step; the same on every rank (seeded, no messages).

    Each epoch reshuffles with its own seed. With ``length_grouped`` the sequences of one step
    have similar lengths (`length_grouped_batches` over whole effective batches), so its
    micro-batches carry little padding, and the steps still come in a seeded random order.
    Incomplete effective batches are dropped (every step has the same number of sequences); a
    dataset smaller than one effective batch is repeated.
    """
    per_step = s.micro_batch_size * s.grad_accum_steps * world_size
    n = len(lengths)
    total = s.max_steps or max(1, int(s.epochs * max(1, n // per_step)))
    schedule: list[list[int]] = []
    epoch = 0
    while len(schedule) < total:
        pool = list(range(n)) * math.ceil(per_step / n)
        seed = s.seed * 100_003 + epoch
        if s.length_grouped:
            grouped = length_grouped_batches([lengths[i] for i in pool], per_step, seed)
            batches = [[pool[j] for j in batch] for batch in grouped]
        else:
            random.Random(seed).shuffle(pool)
            batches = [pool[i : i + per_step] for i in range(0, len(pool), per_step)]
        schedule += [batch for batch in batches if len(batch) == per_step]
        epoch += 1
    return schedule[:total]


def rank_micro_batches(step_indices: list[int], s: TrainSettings, rank: int) -> list[list[int]]:
    """This rank's grad-accum micro-batches of one step: micro-batch k goes to rank k % world.

    Consecutive slices of a length-sorted step, so each micro-batch pads to a similar width.
    """
    micro = [
        step_indices[i : i + s.micro_batch_size]
        for i in range(0, len(step_indices), s.micro_batch_size)
    ]
    world = len(micro) // s.grad_accum_steps
    return [micro[accum * world + rank] for accum in range(s.grad_accum_steps)]


def train_func(config: dict[str, Any]) -> None:
    """Ray Train worker entry point: set up, resume, train, checkpoint, export.

    Also runs in Ray Train local mode (``ScalingConfig(num_workers=0)``: one process, no cluster).
    """
    from transformers import AutoTokenizer

    started = time.monotonic()
    s = TrainSettings(**config)
    if not s.prepared_data:
        raise ValueError(
            "TrainSettings.prepared_data is empty: prepare the SFT data on the driver first "
            "(trainers.prepared.with_prepared_data)"
        )
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    owns_process_group = _ensure_process_group()
    try:
        s = s.model_copy(update={"precision": _agreed_precision(s.precision)})
        tokenizer = AutoTokenizer.from_pretrained(s.model_path)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        examples = PreparedExamples(s.prepared_data)
        skipped = examples.skipped
        schedule = batch_schedule(examples.lengths.tolist(), s, world)
        total = len(schedule)
        engine, dropout_attributes = _build_engine(s, world, total)
        restored = _restore(engine)
        if restored is None:  # the run already ended (export or non-finite loss): keep it
            return
        start_step, history = restored
        replay = list(history) if start_step else None
        if rank == 0:
            print(
                f"[calsweep] {len(examples)} examples (skipped {skipped}); {total} steps x "
                f"{len(schedule[0])} sequences ({s.micro_batch_size} micro x "
                f"{s.grad_accum_steps} accum x {world} workers); warm-up "
                f"{warmup_steps(s, total)} steps; dropout {s.dropout} on "
                f"{dropout_attributes or 'nothing (the architecture has none)'}; ZeRO-"
                f"{zero_stage(s, world)} {s.precision}; starting at step {start_step}"
            )
        last_checkpoint = time.monotonic()
        setup_s = last_checkpoint - started  # worker start to first step: data, model, restore
        for step in range(start_step, total):
            clock_due = _clock_wants_checkpoint(s, rank, last_checkpoint)
            metrics = _train_step(
                engine, s, examples, schedule[step], step, total, pad_id, clock_due
            )
            checkpoint_by_clock = metrics.pop("checkpoint_by_clock")
            metrics["train/skipped_rows"] = float(sum(skipped.values()))
            metrics["train/setup_s"] = setup_s
            failure = _nonfinite(metrics, s.precision)
            if failure is not None:
                _report_nonfinite(failure, metrics, rank)
                return
            done = step + 1
            checkpoint_due = checkpoint_by_clock or (
                s.checkpoint_every_steps and done % s.checkpoint_every_steps == 0
            )
            if done < total and not checkpoint_due and done % s.log_every_steps:
                continue
            if replay is not None:
                metrics[HISTORY_KEY], replay = json.dumps(replay), None
            history.append([done, {k: v for k, v in metrics.items() if k.startswith("train/")}])
            if done == total:
                _report_final(engine, tokenizer, metrics, rank)
            elif checkpoint_due:
                _report_resumable(engine, metrics, done, history)
                last_checkpoint = time.monotonic()
            else:
                ray.train.report(metrics)
    finally:
        if owns_process_group:
            torch.distributed.destroy_process_group()


def _agreed_precision(requested: str) -> str:
    """`requested`, or what "auto" means on this hardware (`calsweep.hardware.auto_precision`),
    the same on every rank: ranks on different hardware settle, in one all-reduce at start-up,
    on the first of fp32, fp16, bf16 that all of them run well."""
    if requested != "auto":
        return requested
    cuda = torch.cuda.is_available()
    local = auto_precision(cuda, cuda and torch.cuda.is_bf16_supported())
    device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
    choice = torch.tensor([PRECISIONS.index(local)], dtype=torch.int64, device=device)
    torch.distributed.all_reduce(choice, op=torch.distributed.ReduceOp.MIN)
    return PRECISIONS[int(choice.item())]


def _clock_wants_checkpoint(s: TrainSettings, rank: int, last_checkpoint: float) -> bool:
    """`checkpoint_every_minutes` passed since `last_checkpoint` (monotonic seconds), on rank 0's
    clock only: ranks' clocks differ, and the step's all-reduce tells every rank to save."""
    minutes = s.checkpoint_every_minutes
    return rank == 0 and minutes > 0 and time.monotonic() - last_checkpoint >= 60 * minutes


def _nonfinite(metrics: dict[str, Any], precision: str) -> NonFiniteLossError | None:
    """The error to stop with, if the step's loss or (outside fp16) gradient norm is NaN/inf.

    An infinite gradient norm makes DeepSpeed skip the update silently; with fp16 that is how
    dynamic loss scaling works, with bf16/fp32 the run would keep exporting stale weights.
    """
    loss, norm = metrics["train/loss"], metrics.get("train/grad_norm")
    if not math.isfinite(loss):
        return NonFiniteLossError(metrics["step"], loss)
    if norm is not None and precision != "fp16" and not math.isfinite(norm):
        return NonFiniteLossError(metrics["step"], norm, "gradient norm")
    return None


def _train_step(
    engine, s, examples, step_indices, step, total, pad_id, wants_checkpoint
) -> dict[str, Any]:
    """One optimizer step (0-based ``step``) and its metrics, global: the same on every rank.
    ``checkpoint_by_clock``: whether any rank asked for a checkpoint (``wants_checkpoint``)."""
    rank = torch.distributed.get_rank()
    # Dropout masks depend on (seed, step, rank) only: a resumed run draws the same ones.
    torch.manual_seed((s.seed * 1_000_003 + step) * 1_009 + rank)
    started = time.perf_counter()
    lr = engine.get_lr()[0]  # the rate this step's update uses
    stats = _optimizer_step(engine, s, examples, step_indices, rank, pad_id, wants_checkpoint)
    seconds = time.perf_counter() - started
    metrics = {
        "step": step + 1,
        "total_steps": total,
        "train/loss": stats["loss_sum"] / max(stats["loss_tokens"], 1),
        "train/lr": lr,
        "train/tokens_per_s": stats["tokens"] / seconds,
        "train/step_s": seconds,
        "train/padding_fraction": 1.0 - stats["tokens"] / stats["padded_tokens"],
        "train/loss_tokens": stats["loss_tokens"],
        "train/peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "checkpoint_by_clock": stats["checkpoint_votes"] > 0,
    }
    if engine.get_global_grad_norm() is not None:  # None where DeepSpeed does not compute it
        metrics["train/grad_norm"] = float(engine.get_global_grad_norm())
    return metrics


def _optimizer_step(
    engine, s, examples, step_indices, rank, pad_id, wants_checkpoint
) -> dict[str, float]:
    """Forward/backward this rank's micro-batches, then update unless the loss is non-finite.

    Returns global sums over the effective batch (all ranks agree, so they stop together).
    """
    world = torch.distributed.get_world_size()
    global_tokens = int(examples.loss_tokens[step_indices].sum())  # known on every rank
    # DeepSpeed divides by grad-accum steps and averages over ranks; undo both so the gradient
    # is that of (sum of token losses over the whole effective batch) / global_tokens.
    scale = s.grad_accum_steps * world / global_tokens
    # loss sum, real tokens, padded tokens, ranks asking for a checkpoint (checkpoints by the
    # clock ride on this all-reduce instead of adding a collective per step)
    local = torch.tensor([0.0, 0.0, 0.0, float(wants_checkpoint)], dtype=torch.float64)
    micro = rank_micro_batches(step_indices, s, rank)
    for accum, indices in enumerate(micro):
        batch = collate(examples.rows(indices), pad_id)  # only this rank's rows are read
        logits = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss_sum, _ = masked_label_smoothed_cross_entropy(
            logits, batch["labels"], s.label_smoothing
        )
        engine.backward(loss_sum * scale)
        if accum < len(micro) - 1:
            engine.step()  # only counts the micro-step: DeepSpeed updates at the boundary
        real = float(batch["attention_mask"].sum())
        local[:3] += torch.tensor([loss_sum.item(), real, float(batch["input_ids"].numel())])
    # One small all-reduce per step (a sync point): the reported loss and the non-finite check
    # are global, so every rank takes the same branch below.
    torch.distributed.all_reduce(local)
    if math.isfinite(local[0].item()):
        engine.step()
    return {
        "loss_sum": local[0].item(),
        "tokens": local[1].item(),
        "padded_tokens": local[2].item(),
        "loss_tokens": float(global_tokens),
        "checkpoint_votes": local[3].item(),
    }


def _ensure_process_group() -> bool:
    """Start a 1-process gloo group in Ray Train local mode (num_workers=0); True if started.

    TorchTrainer workers already have one; DeepSpeed would otherwise look for MPI.
    """
    if torch.distributed.is_initialized():
        return False
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.setdefault("LOCAL_RANK", "0")  # DeepSpeed's engine asserts it is set
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1
    )
    return True


def _build_engine(s: TrainSettings, world: int, total_steps: int) -> tuple[Any, list[str]]:
    """Model with dropout set where the architecture has it, wrapped by DeepSpeed."""
    import deepspeed
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    model_config = AutoConfig.from_pretrained(s.model_path)
    dropout_attributes = [
        key
        for key, value in model_config.to_dict().items()
        if key.endswith(DROPOUT_SUFFIXES) and type(value) in (int, float)
    ]
    original = {key: getattr(model_config, key) for key in dropout_attributes}
    for key in dropout_attributes:
        setattr(model_config, key, s.dropout)
    ds_config = deepspeed_config(s, world)
    deepspeed.init_distributed()  # zero.Init sizes the batch by DeepSpeed's world: join it first
    # Under ZeRO-3, while this object lives, from_pretrained loads inside deepspeed.zero.Init:
    # each weight is partitioned as it is read, so no worker ever holds the whole model (an 8B
    # model in fp32 is 32 GB per worker otherwise).
    zero3_loading = HfDeepSpeedConfig(ds_config) if zero_stage(s, world) == 3 else None
    model = AutoModelForCausalLM.from_pretrained(
        s.model_path, config=model_config, dtype=torch.float32
    )
    del zero3_loading  # later from_pretrained calls in this process load whole models again
    warmup = warmup_steps(s, total_steps)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=ds_config,
        lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_multiplier(step, warmup, total_steps)
        ),
    )
    engine.train()
    engine.module.config.update(original)  # the export keeps the base model's dropout values
    return engine, dropout_attributes


def _restore(engine) -> tuple[int, list] | None:
    """The step to start from and the reported history up to it: (0, []) for a fresh run, the
    state of Ray Train's latest checkpoint, or None if that checkpoint ends the run (the final
    export, or a non-finite-loss record)."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, []
    with checkpoint.as_directory() as ckpt_dir:
        if ends_run(Path(ckpt_dir)):
            return None
        loaded, client_state = engine.load_checkpoint(str(Path(ckpt_dir) / DS_STATE_DIR))
    if loaded is None:  # DeepSpeed only logs a warning when it finds nothing to load
        raise RuntimeError(f"no DeepSpeed state in checkpoint {checkpoint.path}")
    return int(client_state["step"]), client_state["history"]


def _report_resumable(engine, metrics: dict[str, Any], step: int, history: list) -> None:
    """Save DeepSpeed state (every rank its shard) and report it as one Ray Train checkpoint."""
    with tempfile.TemporaryDirectory() as tmp:
        engine.save_checkpoint(
            str(Path(tmp) / DS_STATE_DIR),
            tag=f"step{step}",
            client_state={"step": step, "history": history},
        )
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
            checkpoint_dir_name=step_checkpoint_name(step),
        )


def _report_final(engine, tokenizer, metrics: dict[str, Any], rank: int) -> None:
    """Export the trained model (`write_export`, on rank 0) in the final checkpoint."""
    if engine.zero_optimization_stage() == 3:  # gathers the shards: every rank must take part
        state_dict = engine._zero3_consolidated_16bit_state_dict()
    else:
        state_dict = engine.module.state_dict() if rank == 0 else None
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            write_export(engine.module, tokenizer, state_dict, Path(tmp) / HF_EXPORT_DIR)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(
            {**metrics, "exported": 1},
            checkpoint=checkpoint,
            checkpoint_dir_name=FINAL_CHECKPOINT,
        )


def _report_nonfinite(error: NonFiniteLossError, metrics: dict[str, Any], rank: int) -> None:
    """End the run with a terminal record instead of raising.

    Ray Train V2 retries every worker exception up to ``FailureConfig.max_failures`` (its
    DefaultFailurePolicy has no non-retryable user errors), and a retry would resume from the
    last checkpoint and diverge again. So every rank returns normally after reporting a
    checkpoint that holds only the error; `trainers.export.exported_model` turns it into a
    `NonFiniteLossError` on the driver.
    """
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            write_failure(error, Path(tmp))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(
            {**metrics, "error": str(error)},
            checkpoint=checkpoint,
            checkpoint_dir_name=failure_checkpoint_name(error),
        )
