"""Fit one configuration on the connected Ray cluster: a Ray Train `TorchTrainer` running the
DeepSpeed loop (`trainers.train_loop.train_func`), with one progress line per reported step."""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, UserCallback
from ray.train.torch import TorchConfig, TorchTrainer
from ray.util.queue import Empty, Queue

from calsweep.storage import is_uri
from trainers.export import exported_model
from trainers.prepared import with_prepared_data
from trainers.settings import TrainSettings
from trainers.train_loop import train_func


class ForwardReports(UserCallback):
    """Runs in the Ray Train controller: forwards rank 0's reported metrics to a Ray queue,
    so the driver can show progress (and tests can read the whole trajectory)."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint) -> None:
        self.queue.put(dict(metrics[0]))


def progress_line(metrics: dict[str, Any], eta_s: float) -> str:
    """``step 3/10  loss 2.3456  lr 1.0e-04  412 tok/s  pad 4%  ETA 0:00:12``."""
    eta = timedelta(seconds=round(eta_s))
    return (
        f"step {metrics['step']}/{metrics['total_steps']}  loss {metrics['train/loss']:.4f}  "
        f"lr {metrics['train/lr']:.1e}  {metrics['train/tokens_per_s']:.0f} tok/s  "
        f"pad {metrics['train/padding_fraction']:.0%}  ETA {eta}"
    )


def show_progress(queue: Queue, done: threading.Event) -> None:
    """Print each report as it arrives; ETA from the wall time between reports (checkpoints
    included), from the step's own time for the first one."""
    first: tuple[float, int] | None = None
    while not (done.is_set() and queue.empty()):
        try:
            metrics = queue.get(timeout=0.5)
        except Empty:
            continue
        now, step, remaining = time.monotonic(), metrics["step"], metrics["total_steps"]
        remaining -= step
        if first is None or step <= first[1]:  # a (re)started worker group restarts the clock
            first = (now, step)
            eta = metrics["train/step_s"] * remaining
        else:
            eta = (now - first[0]) / (step - first[1]) * remaining
        if "error" in metrics:
            print(f"step {step}: {metrics['error']}", flush=True)
        else:
            print(progress_line(metrics, eta), flush=True)


def run_name(settings: TrainSettings, workers: int) -> str:
    """Stable per configuration and worker count (ZeRO checkpoints are per rank), so the same
    command finds and resumes its own run."""
    key = {**settings.model_dump(), "workers": workers}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode())
    return f"sft-{digest.hexdigest()[:12]}"


def train(args: argparse.Namespace, settings: TrainSettings) -> str:
    """Fit on the connected Ray cluster with live progress; returns the exported model's
    location (a path, or a URI under remote storage)."""
    storage = args.storage or str(args.out.with_name(args.out.name + ".ray-train"))
    if not is_uri(storage):
        storage = str(Path(storage).expanduser().resolve())
    settings = with_prepared_data(settings, storage)  # <storage>/prepared/<key>, made once
    queue = Queue(actor_options={"num_cpus": 0})
    trainer = TorchTrainer(
        train_func,
        train_loop_config=settings.model_dump(),
        scaling_config=ScalingConfig(
            num_workers=args.num_workers,
            use_gpu=args.gpu,
            resources_per_worker={"CPU": args.cpus_per_worker},
        ),
        torch_config=TorchConfig(backend="nccl" if args.gpu else "gloo"),
        run_config=RunConfig(
            name=run_name(settings, args.num_workers),
            storage_path=storage,
            failure_config=FailureConfig(max_failures=args.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[ForwardReports(queue)],
        ),
    )
    done = threading.Event()
    printer = threading.Thread(target=show_progress, args=(queue, done), daemon=True)
    printer.start()
    try:
        result = trainer.fit()
    finally:
        done.set()
        printer.join()
    return exported_model(result).location
