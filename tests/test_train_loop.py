"""The DeepSpeed train loop: schedule and batching units, then real Ray Train runs on a tiny model
(2 gloo workers, fp32 so that runs are comparable number for number)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import ray
import ray.cloudpickle
import torch
import torch.nn.functional as F
from ray.train import CheckpointConfig, FailureConfig, Result, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.util.queue import Queue
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainers.batching import collate
from trainers.chat_tokens import tokenize_conversations
from trainers.export import MANIFEST_FILE, NonFiniteLossError, exported_model
from trainers.fit import ForwardReports
from trainers.prepared import with_prepared_data
from trainers.settings import TrainSettings
from trainers.sft_data import IGNORE_INDEX, load_sft_conversations
from trainers.train_loop import (
    HISTORY_KEY,
    _build_engine,
    _ensure_process_group,
    batch_schedule,
    lr_multiplier,
    rank_micro_batches,
    train_func,
    warmup_steps,
)

# Workers must unpickle this module's crash-injecting train function without importing tests/.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def settings(model_dir: Path, **overrides: Any) -> TrainSettings:
    """A tiny fp32 run: 2 sequences per micro-batch of <= 64 tokens from the Alpaca sample."""
    base = dict(
        model_path=str(model_dir),
        sft_format="alpaca",
        sft_source="bundled",
        learning_rate=1e-3,
        label_smoothing=0.1,
        max_samples=32,
        micro_batch_size=2,
        max_seq_len=64,
        precision="fp32",
        zero_stage=2,
    )
    return TrainSettings(**{**base, **overrides})


# --- units ------------------------------------------------------------------------------------


def test_lr_warms_up_linearly_then_decays_and_no_step_trains_at_zero() -> None:
    total = 100
    warmup = warmup_steps(settings(Path("m")), total)  # 2% of 100 steps
    lrs = [lr_multiplier(step, warmup, total) for step in range(total)]
    assert warmup == 2
    assert lrs[:3] == pytest.approx([0.25, 0.75, 1 - 0.5 / 98])
    assert lrs[-1] == pytest.approx(0.5 / 98)
    assert all(0 < lr <= 1 for lr in lrs)
    assert lrs[:2] == sorted(lrs[:2]) and lrs[2:] == sorted(lrs[2:], reverse=True)
    # A 10-step run (the local sweep): 1 warm-up step at half the peak, not a wasted lr-0 step.
    assert lr_multiplier(0, 1, 10) == 0.5
    assert lr_multiplier(0, 1, 1) == 0.5


def padding_fraction(lengths: list[int], schedule: list[list[int]], s: TrainSettings) -> float:
    """Padding share of the micro-batches rank 0 and rank 1 would build from ``schedule``."""
    padded = real = 0
    for step in schedule:
        for rank in (0, 1):
            for micro in rank_micro_batches(step, s, rank):
                padded += len(micro) * max(lengths[i] for i in micro)
                real += sum(lengths[i] for i in micro)
    return 1 - real / padded


def test_batch_schedule_is_seeded_whole_and_length_grouped() -> None:
    lengths = [random.Random(i).randint(20, 512) for i in range(1000)]
    grouped = settings(Path("m"), micro_batch_size=4, grad_accum_steps=2, epochs=2.0)
    plain = settings(Path("m"), micro_batch_size=4, grad_accum_steps=2, epochs=2.0,
                     length_grouped=False)  # fmt: skip
    schedule = batch_schedule(lengths, grouped, world_size=2)

    assert schedule == batch_schedule(lengths, grouped, world_size=2)  # same on every rank
    reseeded = TrainSettings(**{**grouped.model_dump(), "seed": 1})
    assert schedule != batch_schedule(lengths, reseeded, world_size=2)
    assert len(schedule) == 2 * (1000 // 16) and {len(step) for step in schedule} == {16}
    first_epoch = [i for step in schedule[: 1000 // 16] for i in step]
    assert len(set(first_epoch)) == len(first_epoch)  # no example twice within an epoch
    assert schedule[0] != schedule[1000 // 16]  # the second epoch is reshuffled

    waste_grouped = padding_fraction(lengths, schedule, grouped)
    waste_plain = padding_fraction(lengths, batch_schedule(lengths, plain, 2), plain)
    assert waste_plain > 0.3 and waste_grouped < 0.05


def test_across_two_workers_every_example_is_used_once_per_epoch() -> None:
    lengths = [random.Random(i).randint(20, 512) for i in range(960)]  # 60 steps of 16
    s = settings(Path("m"), micro_batch_size=4, grad_accum_steps=2, epochs=2.0)
    schedule = batch_schedule(lengths, s, world_size=2)
    for epoch in (0, 1):
        steps = schedule[epoch * 60 : (epoch + 1) * 60]
        used = [
            i
            for step in steps
            for rank in (0, 1)
            for micro in rank_micro_batches(step, s, rank)
            for i in micro
        ]
        assert sorted(used) == list(range(960))


def test_rank_micro_batches_partition_each_step() -> None:
    s = settings(Path("m"), micro_batch_size=2, grad_accum_steps=3)
    step = list(range(12))  # 2 sequences x 3 accum x 2 ranks
    parts = [rank_micro_batches(step, s, rank) for rank in (0, 1)]
    assert all(len(part) == 3 for part in parts)
    assert sorted(i for part in parts for micro in part for i in micro) == step


def test_small_dataset_is_repeated_to_fill_a_step() -> None:
    schedule = batch_schedule([5, 6, 7], settings(Path("m"), max_steps=2), world_size=2)
    assert [len(step) for step in schedule] == [4, 4]


def test_nonfinite_error_survives_pickling_with_step_and_value() -> None:
    err = pickle.loads(pickle.dumps(NonFiniteLossError(7, float("inf"))))
    assert (err.step, err.value) == (7, float("inf"))
    assert "non-finite training loss inf at optimizer step 7" in str(err)


@pytest.fixture(scope="module")
def process_group():
    """A 1-process group for in-process DeepSpeed engines, shared: DeepSpeed keeps a reference
    to the first group it sees, so a test must not destroy it under the next one."""
    owns = _ensure_process_group()
    yield
    if owns:
        torch.distributed.destroy_process_group()


def test_dropout_is_set_where_the_architecture_has_it(tiny_model_dir: Path, process_group) -> None:
    engine, attributes = _build_engine(settings(tiny_model_dir, dropout=0.1), 1, 10)
    assert attributes == ["attention_dropout"]  # Llama: attention only, no hidden dropout
    assert engine.module.model.layers[0].self_attn.attention_dropout == 0.1
    assert engine.module.config.attention_dropout == 0.0  # exported as the base model had it


def test_zero3_loads_each_weight_partitioned_with_the_checkpoint_values(
    tiny_model_dir: Path, process_group
) -> None:
    from transformers.integrations import is_deepspeed_zero3_enabled

    engine, _ = _build_engine(settings(tiny_model_dir, zero_stage=3), 1, 10)
    assert all(p.numel() == 0 for p in engine.module.parameters())  # partitioned (ds_shape)
    loaded = engine._zero3_consolidated_16bit_state_dict()  # fp32 here: gathers exactly
    assert not is_deepspeed_zero3_enabled()  # later from_pretrained calls load whole models
    initial = parameters(tiny_model_dir)
    for name, value in initial.items():
        torch.testing.assert_close(loaded[name], value, rtol=0, atol=0, msg=name)


# --- real Ray Train runs ----------------------------------------------------------------------


def fit(
    s: TrainSettings,
    storage: Path,
    name: str,
    *,
    train_fn: Callable[[dict], None] = train_func,
    extra: dict[str, Any] | None = None,
    max_failures: int = 0,
) -> tuple[Result, list[dict[str, Any]]]:
    """One TorchTrainer run like the sweep's trial driver; returns the result and every report
    of rank 0, in order (across worker-group restarts)."""
    queue = Queue(actor_options={"num_cpus": 0})
    s = with_prepared_data(s, str(storage), say=lambda line: None)
    result = TorchTrainer(
        train_fn,
        train_loop_config={**s.model_dump(), **(extra or {})},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.9}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[ForwardReports(queue)],
        ),
    ).fit()
    reports = queue.get_nowait_batch(queue.qsize())
    queue.shutdown()
    return result, reports


def parameters(model_dir: Path) -> dict[str, torch.Tensor]:
    model, info = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    return {name: p.detach() for name, p in model.named_parameters()}


def reference_first_step(s: TrainSettings, world: int) -> tuple[float, float, dict]:
    """Plain PyTorch on one process: the first step's whole effective batch as one batch, the
    mean over all its response tokens, clipping at 1.0 and torch's AdamW."""
    tokenizer = AutoTokenizer.from_pretrained(s.model_path)
    conversations, _ = load_sft_conversations(s.sft_format, s.sft_source, s.max_samples, s.seed)
    examples, _ = tokenize_conversations(conversations, tokenizer, s.max_seq_len)
    schedule = batch_schedule([len(e["input_ids"]) for e in examples], s, world)
    batch = collate([examples[i] for i in schedule[0]], tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_pretrained(s.model_path, dtype=torch.float32)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    mask = targets != IGNORE_INDEX
    loss = F.cross_entropy(logits[:, :-1][mask], targets[mask], label_smoothing=s.label_smoothing)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    lr = s.learning_rate * lr_multiplier(0, warmup_steps(s, len(schedule)), len(schedule))
    torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=s.weight_decay).step()
    return loss.item(), norm.item(), {n: p.detach() for n, p in model.named_parameters()}


@pytest.mark.integration
def test_two_workers_with_grad_accum_equal_one_process_on_the_whole_batch(
    ray_cluster, tiny_model_dir: Path, tmp_path: Path
) -> None:
    s = settings(tiny_model_dir, grad_accum_steps=2, max_steps=1, dropout=0.0)
    result, reports = fit(s, tmp_path, "exact-mean")
    loss, norm, expected = reference_first_step(s, world=2)

    assert reports[-1]["train/loss"] == pytest.approx(loss, rel=1e-5)
    # The gradient norm is what a wrong token normalisation (per micro-batch or per worker
    # means, or a missing grad-accum / world factor) would change; Adam's update hides scale.
    assert reports[-1]["train/grad_norm"] == pytest.approx(norm, rel=1e-4)
    export = exported_model(result)
    trained = parameters(export.location)
    for name, value in expected.items():
        torch.testing.assert_close(trained[name], value, rtol=0, atol=1e-6, msg=name)
    # Rank 0's manifest digest is that of the files as they reached the run's storage.
    names = sorted(p.name for p in Path(export.location).iterdir() if p.name != MANIFEST_FILE)
    sums = subprocess.run(
        ["sha256sum", *names], cwd=export.location, capture_output=True, check=True
    )
    assert export.digest == hashlib.sha256(sums.stdout).hexdigest()


@pytest.mark.integration
def test_checkpoints_by_the_clock_are_taken_by_every_rank_together(
    ray_cluster, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # A minute of 60 microseconds: rank 0's clock asks after every step; no step-based ones.
    s = settings(tiny_model_dir, max_steps=3, checkpoint_every_minutes=1e-6)
    result, reports = fit(s, tmp_path, "by-clock")

    assert [r["step"] for r in reports] == [1, 2, 3]
    kept = {Path(c.path).name: Path(c.path) for c, _ in result.best_checkpoints}
    assert sorted(kept) == ["checkpoint_final", "checkpoint_step000002"]  # keeps 2: step 1 went
    shards = [p.name for p in kept["checkpoint_step000002"].rglob("*optim_states.pt")]
    assert sorted(shards) == [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)]


def crash_once_after_step(config: dict[str, Any]) -> None:
    """`train_func`, but worker 1 dies (os._exit, no cleanup) right after reporting step
    ``crash_after_step``, the first time only (a marker file remembers). It first waits until
    Ray Train has processed that report, so the crash point is deterministic. Reports carry the
    worker's pid, which tells the worker-group attempts apart."""
    marker, crash_step = Path(config.pop("crash_marker")), config.pop("crash_after_step")
    report = ray.train.report

    def report_then_crash(metrics: dict[str, Any], **kwargs: Any) -> None:
        report({**metrics, "pid": os.getpid()}, **kwargs)
        rank = ray.train.get_context().get_world_rank()
        if metrics["step"] == crash_step and rank == 1 and not marker.exists():
            marker.touch()
            ray.train.get_all_reported_checkpoints()  # blocks until the controller caught up
            os._exit(1)

    ray.train.report = report_then_crash
    train_func(config)


@pytest.fixture(scope="module")
def uninterrupted(ray_cluster, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """6 steps with dropout, checkpoints every 2 steps, ZeRO-2: the reference trajectory."""
    s = settings(tiny_model_dir, max_steps=6, checkpoint_every_steps=2, dropout=0.1)
    result, reports = fit(s, tmp_path_factory.mktemp("ray"), "uninterrupted")
    return s, result, reports


@pytest.mark.integration
def test_killed_run_resumes_from_its_checkpoint_on_the_same_trajectory(
    uninterrupted, tmp_path: Path
) -> None:
    s, reference, expected = uninterrupted
    extra = {"crash_marker": str(tmp_path / "crashed"), "crash_after_step": 5}
    result, reports = fit(
        s, tmp_path, "killed", train_fn=crash_once_after_step, extra=extra, max_failures=1
    )

    assert (tmp_path / "crashed").exists()  # the worker really died once
    pids = [r["pid"] for r in reports]
    attempts = [[r for r in reports if r["pid"] == pid] for pid in dict.fromkeys(pids)]
    # Steps 1-5, crash, then the restarted worker group resumes from the step-4 checkpoint.
    assert [[r["step"] for r in attempt] for attempt in attempts] == [[1, 2, 3, 4, 5], [5, 6]]
    resumed = attempts[0][:4] + attempts[1]
    assert attempts[0][4]["train/loss"] == pytest.approx(attempts[1][0]["train/loss"], rel=1e-5)
    assert [r["train/loss_tokens"] for r in resumed] == [
        r["train/loss_tokens"] for r in expected
    ]  # same data order
    # The resumed worker group replays the curve up to its checkpoint (for lost results).
    replayed = json.loads(attempts[1][0][HISTORY_KEY])
    assert [step for step, _ in replayed] == [1, 2, 3, 4]
    assert [m["train/loss"] for _, m in replayed] == [r["train/loss"] for r in attempts[0][:4]]
    for got, want in zip(resumed, expected, strict=True):
        assert got["train/loss"] == pytest.approx(want["train/loss"], rel=1e-5)
        assert got["train/lr"] == pytest.approx(want["train/lr"])
    final = parameters(exported_model(result).location)
    for name, value in parameters(exported_model(reference).location).items():
        torch.testing.assert_close(final[name], value, rtol=0, atol=1e-5, msg=name)


@pytest.mark.integration
def test_zero3_export_is_consolidated_trained_and_agrees_with_zero2(
    uninterrupted, tiny_model_dir: Path, tmp_path: Path
) -> None:
    s, zero2_result, zero2_reports = uninterrupted
    zero3 = TrainSettings(**{**s.model_dump(), "zero_stage": 3, "checkpoint_every_steps": 0})
    result, reports = fit(zero3, tmp_path, "zero3")

    exported = parameters(exported_model(result).location)
    initial = parameters(tiny_model_dir)
    zero2 = parameters(exported_model(zero2_result).location)
    assert exported.keys() == initial.keys()
    assert all(exported[n].shape == initial[n].shape for n in initial)  # whole, not shards
    assert max((exported[n] - initial[n]).abs().max().item() for n in initial) > 1e-3
    for name, value in zero2.items():
        torch.testing.assert_close(exported[name], value, rtol=0, atol=1e-5, msg=name)
    assert reports[-1]["train/loss"] == pytest.approx(zero2_reports[-1]["train/loss"], rel=1e-5)


@pytest.mark.integration
def test_nonfinite_loss_stops_the_run_without_retry(
    ray_cluster, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # lr 1e10: the first update blows the weights up, the second forward pass yields NaN.
    s = settings(tiny_model_dir, learning_rate=1e10, max_steps=4, dropout=0.0)
    result, reports = fit(s, tmp_path, "diverges", max_failures=1)

    assert [r["step"] for r in reports] == [1, 2]  # step 1 once: the worker group never restarted
    assert "non-finite training loss nan at optimizer step 2" in reports[-1]["error"]
    assert Path(result.checkpoint.path).name == "failed_nonfinite_training_loss_nan_at_step000002"
    with pytest.raises(NonFiniteLossError, match="nan at optimizer step 2") as caught:
        exported_model(result)
    assert caught.value.step == 2
