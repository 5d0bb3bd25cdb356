"""Train one SFT configuration on a local Ray instance: ``python -m trainers.sft --help``.

The same DeepSpeed loop the sweep runs (`trainers.train_loop.train_func` in Ray Train workers),
with one progress line per reported step (step, loss, tokens/s, ETA) and the exported Hugging
Face model copied to ``--out``. Re-running the same command resumes from the run's latest
checkpoint under ``--storage``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from calsweep.console import quiet_libraries
from calsweep.schema import add_flags, from_args
from trainers.settings import SFT_FORMATS, TrainingRecipe, TrainSettings, WorkerGroup

# Flags that predate the ones derived from the settings' fields, kept beside them
EARLIER_FLAGS = {
    "learning_rate": "--lr",
    "label_smoothing": "--smoothing",
    "grad_accum_steps": "--grad-accum",
    "checkpoint_every_steps": "--checkpoint-every",
    "length_grouped": "--no-length-grouping",
    "num_workers": "--workers",
}
# TrainSettings fields that come from --model and --dataset, or from the driver
NOT_FLAGS = ("model_path", "sft_format", "sft_source", "prepared_data")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainers.sft",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Fine-tune one model on one SFT dataset (DeepSpeed in Ray Train workers, "
        "label-smoothed cross-entropy over response tokens) and export a Hugging Face directory.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="hub id, local HF directory, or "
        "package:<module>/<file.gguf> (e.g. the offline SmolLM2 default)",
    )
    p.add_argument(
        "--dataset",
        required=True,
        metavar="FORMAT:SOURCE",
        help=f"FORMAT in {list(SFT_FORMATS)}; SOURCE is 'bundled' (the shipped "
        "sample), a .json/.jsonl/.parquet file or a hub id, e.g. alpaca:bundled",
    )
    per_run = [n for n in TrainSettings.model_fields if n not in TrainingRecipe.model_fields]
    add_flags(p, TrainSettings, [n for n in per_run if n not in NOT_FLAGS], EARLIER_FLAGS)
    p.add_argument("--out", type=Path, required=True, help="directory for the exported model")
    add_flags(p, TrainingRecipe, also=EARLIER_FLAGS)  # the recipe, as in a sweep's `training:`
    add_flags(p, WorkerGroup, also=EARLIER_FLAGS)
    p.add_argument(
        "--cpus-per-worker",
        type=float,
        default=0.9,
        help="CPUs reserved per worker (below 1 leaves room for Ray's controller)",
    )
    p.add_argument("--gpu", action="store_true", help="one GPU per worker, NCCL")
    p.add_argument(
        "--storage",
        help="Ray Train storage (checkpoints): a path or a URI such as s3://bucket/prefix; "
        "default: <out>.ray-train next to --out",
    )
    p.add_argument("--address", help="Ray cluster to join (default: start a local instance)")
    p.add_argument("--verbose", action="store_true", help="show Ray, DeepSpeed and worker logs")
    return p


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    """The run's settings; a malformed --dataset or a value out of its field's range is a
    ValueError naming the flag and what it allows."""
    from calsweep.models import resolve_model

    fmt, sep, source = args.dataset.partition(":")
    if not sep or fmt not in SFT_FORMATS or not source:
        raise ValueError(
            f"--dataset {args.dataset!r}: expected FORMAT:SOURCE with FORMAT in {list(SFT_FORMATS)}"
            ", e.g. alpaca:bundled"
        )
    return from_args(
        TrainSettings, args, model_path=resolve_model(args.model), sft_format=fmt, sft_source=source
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries(args.verbose)
    from trainers.sft_data import check_sft_source

    try:  # bad input fails here, in seconds, before Ray or a model starts
        settings = settings_from_args(args)
        check_sft_source(settings.sft_format, settings.sft_source)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    import ray
    from ray.train import TrainingFailedError

    from calsweep.cluster import init_ray
    from calsweep.storage import copy_to_local
    from trainers.export import NonFiniteLossError
    from trainers.fit import train
    from trainers.train_loop import zero_stage

    init_ray(args.address, args.verbose)
    per_step = settings.micro_batch_size * settings.grad_accum_steps * args.num_workers
    print(
        f"training {args.model} on {args.dataset}: lr {settings.learning_rate:g}, "
        f"smoothing {settings.label_smoothing:g}, "
        f"{args.num_workers} workers x {settings.micro_batch_size} x {settings.grad_accum_steps} "
        f"accum = {per_step} sequences of <= {settings.max_seq_len} tokens per step, "
        f"ZeRO-{zero_stage(settings, args.num_workers)} {settings.precision}",
        flush=True,
    )
    try:
        model_dir = train(args, settings)
    except (NonFiniteLossError, TrainingFailedError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        ray.shutdown()
    copy_to_local(model_dir, args.out)
    print(f"exported model: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
