"""SFT training throughput: calsweep's DeepSpeed loop vs Hugging Face `Trainer`. Prints JSON.

Same model, same tokenised examples (Alpaca sample, same `max_seq_len`), same effective batch
(8 sequences in micro-batches of 4), label smoothing 0.1, attention dropout 0.1, bf16, AdamW:

- ``calsweep/1proc``: `train_func` in Ray Train local mode (one process, ``--threads`` torch
  threads, 4 x 2 grad-accum; ZeRO-2 asked, stage 0 run as on any single worker), length-grouped
  and plain shuffled;
- ``calsweep/2workers``: the sweep's layout, a TorchTrainer of 2 gloo workers x 1 thread
  (4 x 1 accum each, ZeRO-2), length-grouped;
- ``hf/1proc``: `transformers.Trainer` with ``label_smoothing_factor`` (bench-only, autocast
  bf16), ``train_sampling_strategy`` group_by_length and random.

Each variant runs in its own subprocess, so ``peak_rss_mb`` is that process's peak (for
``2workers``: one worker's). Per variant: ``tokens_per_s`` (non-padding tokens / time, first step
excluded as warm-up), median ``step_s``, ``padding_fraction`` (padded positions / all positions)
and the mean loss. A calsweep variant runs next to its HF counterpart, and ``--rounds`` repeats
everything, because other processes on a small machine skew timings (multi-threaded ones most);
``load_average_before`` records it. Not a test: nothing here asserts a timing.

    python -m benchmarks.training [--model SOURCE] [--steps 6] [--threads 1 2] [--rounds 2]

``--model`` takes any model source (default: the offline SmolLM2-135M-Instruct); a tiny test
model directory gives a quick smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from calsweep.models import SMOLLM2_SOURCE, resolve_model

VARIANTS = (  # each calsweep variant next to its HF counterpart: similar machine load
    "calsweep/1proc/grouped",
    "hf/1proc/grouped",
    "calsweep/1proc/plain",
    "hf/1proc/plain",
    "calsweep/2workers/grouped",
)
MICRO_BATCH = 4
EFFECTIVE_BATCH = 8


def settings(args: argparse.Namespace, world: int, grouped: bool):
    """The variant's settings, pointing at prepared data that every variant shares (prepared by
    the first one, in a Ray instance that Ray Data starts when none runs)."""
    import tempfile

    from trainers.prepared import with_prepared_data
    from trainers.settings import TrainSettings

    storage = os.path.join(tempfile.gettempdir(), "calsweep-bench-prepared")
    return with_prepared_data(
        TrainSettings(
            model_path=resolve_model(args.model),
            sft_format="alpaca",
            sft_source="bundled",
            learning_rate=1e-4,
            label_smoothing=0.1,
            max_samples=args.max_samples,
            max_steps=args.steps,
            micro_batch_size=MICRO_BATCH,
            grad_accum_steps=EFFECTIVE_BATCH // (MICRO_BATCH * world),
            max_seq_len=args.max_seq_len,
            dropout=0.1,
            zero_stage=2,
            precision="bf16",
            length_grouped=grouped,
        ),
        storage,
        say=lambda line: None,
    )


def calsweep_steps(reports: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Per-step records from the loop's own reports."""
    steps = []
    for r in reports:
        tokens = r["train/tokens_per_s"] * r["train/step_s"]
        steps.append(
            {
                "step_s": r["train/step_s"],
                "tokens": tokens,
                "positions": tokens / (1 - r["train/padding_fraction"]),
                "loss": r["train/loss"],
                "peak_rss_mb": r["train/peak_rss_mb"],
            }
        )
    return steps


def run_calsweep_local(args: argparse.Namespace, grouped: bool) -> list[dict[str, float]]:
    """`train_func` in this process (Ray Train local mode: no cluster, no worker startup)."""
    import ray.train
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    from trainers.train_loop import train_func

    reports: list[dict[str, Any]] = []
    report = ray.train.report

    def record(metrics: dict[str, Any], **kwargs: Any) -> None:  # local mode keeps only the last
        reports.append(metrics)
        report(metrics, **kwargs)

    ray.train.report = record
    config = settings(args, world=1, grouped=grouped).model_dump()
    TorchTrainer(
        train_func, train_loop_config=config, scaling_config=ScalingConfig(num_workers=0)
    ).fit()
    return calsweep_steps(reports)


def run_calsweep_ray(args: argparse.Namespace, grouped: bool) -> list[dict[str, float]]:
    """The sweep's layout: a TorchTrainer of 2 gloo workers on a private local Ray instance."""
    import tempfile

    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

    from trainers.fit import ForwardReports
    from trainers.train_loop import train_func

    os.environ["RAY_AUTH_MODE"] = "disabled"
    # "local": a private instance even when another `ray start` cluster runs on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        queue = Queue(actor_options={"num_cpus": 0})
        with tempfile.TemporaryDirectory() as storage:
            TorchTrainer(
                train_func,
                train_loop_config=settings(args, world=2, grouped=grouped).model_dump(),
                scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.9}),
                torch_config=TorchConfig(backend="gloo"),
                run_config=RunConfig(storage_path=storage, callbacks=[ForwardReports(queue)]),
            ).fit()
        return calsweep_steps(queue.get_nowait_batch(queue.qsize()))
    finally:
        ray.shutdown()


def run_hf_trainer(args: argparse.Namespace, grouped: bool) -> list[dict[str, float]]:
    """`transformers.Trainer` on the same tokenised examples, timed per optimizer step."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback
    from transformers import TrainingArguments as Args

    from trainers.batching import collate
    from trainers.prepared import PreparedExamples

    s = settings(args, world=1, grouped=grouped)
    tokenizer = AutoTokenizer.from_pretrained(s.model_path)
    prepared = PreparedExamples(s.prepared_data)
    examples = prepared.rows(range(len(prepared)))
    rows = {
        "input_ids": [e["input_ids"] for e in examples],
        "labels": [e["labels"] for e in examples],
    }
    rows["length"] = [len(ids) for ids in rows["input_ids"]]
    model = AutoModelForCausalLM.from_pretrained(
        s.model_path, attention_dropout=s.dropout, dtype=torch.float32
    )  # fp32 master weights; bf16=True below autocasts the compute
    steps: list[dict[str, float]] = [{"tokens": 0.0, "positions": 0.0}]

    class CountingTrainer(Trainer):
        """Counts the tokens each micro-batch really trains on (the data loader runs ahead)."""

        def compute_loss(self, model, inputs, *rest, **kwargs):
            steps[-1]["tokens"] += float(inputs["attention_mask"].sum())
            steps[-1]["positions"] += float(inputs["input_ids"].numel())
            return super().compute_loss(model, inputs, *rest, **kwargs)

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.last = time.perf_counter()

        def on_step_end(self, args_, state, control, logs=None, **kwargs):
            now = time.perf_counter()
            steps[-1].update(step_s=now - self.last, peak_rss_mb=peak_rss_mb())
            steps.append({"tokens": 0.0, "positions": 0.0})
            self.last = now

        def on_log(self, args_, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and len(steps) > 1:
                steps[-2]["loss"] = logs["loss"]

    training_args = Args(
        output_dir=os.path.join(os.environ.get("TMPDIR", "/tmp"), "calsweep-hf-bench"),
        per_device_train_batch_size=MICRO_BATCH,
        gradient_accumulation_steps=EFFECTIVE_BATCH // MICRO_BATCH,
        max_steps=s.max_steps,
        learning_rate=s.learning_rate,
        warmup_steps=s.warmup_ratio,
        max_grad_norm=1.0,
        label_smoothing_factor=s.label_smoothing,
        train_sampling_strategy="group_by_length" if grouped else "random",
        bf16=True,
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        disable_tqdm=True,
        seed=s.seed,
    )
    CountingTrainer(
        model=model,
        args=training_args,
        train_dataset=datasets.Dataset.from_dict(rows),
        data_collator=lambda batch: collate(batch, tokenizer.pad_token_id),
        callbacks=[StepTimer()],
    ).train()
    return steps[:-1]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def summarise(steps: list[dict[str, float]]) -> dict[str, float]:
    """Throughput over steps 2..N (the first one pays for lazy initialisation)."""
    timed = steps[1:] or steps
    seconds = sum(step["step_s"] for step in timed)
    return {
        "steps_timed": len(timed),
        "tokens_per_s": round(sum(step["tokens"] for step in timed) / seconds, 1),
        "step_s": round(statistics.median(step["step_s"] for step in timed), 3),
        "padding_fraction": round(
            1 - sum(s["tokens"] for s in steps) / sum(s["positions"] for s in steps), 4
        ),
        "mean_loss": round(statistics.fmean(s["loss"] for s in steps if "loss" in s), 4),
        "peak_rss_mb": round(max(s["peak_rss_mb"] for s in steps), 1),
    }


def run_variant(args: argparse.Namespace) -> dict[str, Any]:
    trainer, layout, order = args.variant.split("/")
    grouped = order == "grouped"
    if trainer == "hf":
        steps = run_hf_trainer(args, grouped)
    elif layout == "2workers":
        steps = run_calsweep_ray(args, grouped)
    else:
        steps = run_calsweep_local(args, grouped)
    return summarise(steps)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=SMOLLM2_SOURCE, help="any model source")
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per variant")
    p.add_argument("--max-samples", type=int, default=128, help="Alpaca sample rows")
    p.add_argument("--max-seq-len", type=int, default=128, help="tokens per sequence")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument(
        "--threads",
        nargs="+",
        type=int,
        default=[2],
        help="torch threads of the 1-process variants (2workers: 1 thread per worker)",
    )
    p.add_argument(
        "--rounds", type=int, default=1, help="repeat all variants (medians in `summary`)"
    )
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # one, in-process
    return p.parse_args(argv)


def run_child(args: argparse.Namespace, variant: str, threads: int) -> dict[str, Any]:
    """One variant in a fresh process (its own peak RSS, no state left by another variant)."""
    command = [sys.executable, "-m", "benchmarks.training", "--variant", variant]
    command += ["--model", args.model, "--steps", str(args.steps)]
    command += ["--max-samples", str(args.max_samples), "--max-seq-len", str(args.max_seq_len)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if "2workers" in variant:
        env.pop("OMP_NUM_THREADS")  # Ray sets 1 per 0.9-CPU worker
    load = os.getloadavg()[0]  # other processes on a 2-core machine skew multi-thread timings
    done = subprocess.run(
        command, cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    head = {"variant": variant, "threads": threads, "load_average_before": round(load, 2)}
    if done.returncode or not lines:
        return {**head, "error": done.stderr[-2000:]}
    return {**head, **json.loads(lines[-1].removeprefix("RESULT "))}


def medians(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median tokens/s and step time per variant and thread count, over the rounds."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        if "error" not in r:
            runs.setdefault(f"{r['variant']} x{r['threads']} threads", []).append(r)
    return {
        key: {
            f"median_{f}": statistics.median(r[f] for r in rs) for f in ("tokens_per_s", "step_s")
        }
        for key, rs in runs.items()
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.variant:  # the child process: one variant, one JSON line on stdout
        print("RESULT " + json.dumps(run_variant(args)), flush=True)
        return
    results = []
    for round_ in range(args.rounds):
        for variant in args.variants:
            for threads in [1] if "2workers" in variant else args.threads:
                results.append({"round": round_, **run_child(args, variant, threads)})
    setup = {"model": args.model, "steps": args.steps, "max_seq_len": args.max_seq_len}
    setup |= {"max_samples": args.max_samples, "micro_batch": MICRO_BATCH}
    setup |= {"effective_batch": EFFECTIVE_BATCH, "precision": "bf16", "smoothing": 0.1}
    machine = {"cpus": os.cpu_count(), "platform": platform.platform()}
    report = {"setup": setup, "machine": machine, "summary": medians(results), "results": results}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
