"""SFT data preparation at a realistic size: per-worker tokenisation (the baseline) vs data
prepared once and memory-mapped. Prints JSON.

The data: a synthetic Tulu-format set (default 50,000 conversations) built from the bundled Tulu
sample's turns, concatenated into conversations of 1-6 user/assistant pairs, some with a system
message, with long-tailed lengths: each turn joins a log-normal number of sample turns
(``--turn-pieces`` mu, default 2.2: median ~790, mean ~930 SmolLM2 tokens per conversation, up to
~4,000, as in SFT mixtures; 1.0 gives median ~220, mean ~270).

- ``before``: the baseline commit (default 5cd84cc, main when issue 12 was filed), run from a
  `git archive` of its packages: a 2-worker Ray Train `TorchTrainer` of its own `train_func`,
  in which every worker loads, converts and tokenises the whole set for itself.
- ``after``: this tree. `trainers.prepared.prepare` converts and tokenises the set once with Ray
  Data on the 2 cores (``prepare``: conversations/s), then the same 2-worker run on it.

Per variant and worker: ``data_s`` (the worker's data phase: tokenisation before, opening the
memory map after), ``rss_after_data_mb``, ``setup_s`` (worker start to the first optimizer
step: data, model, DeepSpeed) and ``peak_rss_mb`` after that step. ``conversations_per_s`` is
the conversations one trial's workers get ready per second (before: each worker does all of
them; after: the one-off preparation, shared by every trial with the same key). Not a test:
nothing here asserts a timing.

    python -m benchmarks.data_prep [--conversations 50000] [--turn-pieces 2.2] [--baseline 5cd84cc]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from calsweep.models import SMOLLM2_SOURCE, resolve_model

ROOT = Path(__file__).resolve().parents[1]
PAIRS = (1, 1, 1, 1, 2, 2, 2, 3, 3, 4, 6)  # user/assistant pairs per conversation
WORKERS = 2


def build_dataset(path: Path, conversations: int, pieces_mu: float, seed: int = 0) -> None:
    """Conversations of bundled-sample turns, each turn 1-40 sample turns long (long tail)."""
    sample = [json.loads(line) for line in (ROOT / "trainers/data/tulu_sample.jsonl").open()]
    turns: dict[str, list[str]] = {"system": [], "user": [], "assistant": []}
    for row in sample:
        for message in row["messages"]:
            turns[message["role"]].append(message["content"])
    rng = random.Random(seed)

    def text(role: str) -> str:
        pieces = max(1, min(40, int(rng.lognormvariate(pieces_mu, 0.8))))
        return "\n\n".join(rng.choice(turns[role]) for _ in range(pieces))

    with path.open("w") as out:
        for i in range(conversations):
            messages = [{"role": "system", "content": rng.choice(turns["system"])}] * (
                rng.random() < 0.3
            )
            for _ in range(rng.choice(PAIRS)):
                messages += [
                    {"role": "user", "content": text("user")},
                    {"role": "assistant", "content": text("assistant")},
                ]
            out.write(json.dumps({"id": f"bench-{i}", "messages": messages}) + "\n")


def config(args: argparse.Namespace) -> dict[str, Any]:
    """Train settings both versions accept (the baseline's TrainSettings has fewer fields)."""
    return {
        "model_path": resolve_model(args.model),
        "sft_format": "tulu",
        "sft_source": str(args.data),
        "learning_rate": 1e-5,
        "label_smoothing": 0.1,
        "max_steps": args.steps,
        "micro_batch_size": 1,
        "grad_accum_steps": 1,
        "max_seq_len": args.max_seq_len,
        "precision": "fp32",
        "zero_stage": 2,
    }


def record(path: str, values: dict[str, Any]) -> None:
    with open(path, "a") as out:
        out.write(json.dumps(values) + "\n")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed_train_func(config: dict[str, Any]) -> None:
    """The version's own `train_func`, with its data call timed and its first report recorded
    (``bench_data_call``: the function or class in `trainers.train_loop` that gets the data)."""
    import ray.train

    import trainers.train_loop as loop

    started = time.monotonic()
    out, name = config.pop("bench_out"), config.pop("bench_data_call")
    rank = ray.train.get_context().get_world_rank()
    data_call, report = getattr(loop, name), ray.train.report

    def timed_data_call(*args: Any, **kwargs: Any) -> Any:
        begun = time.monotonic()
        result = data_call(*args, **kwargs)
        seconds = time.monotonic() - begun
        record(out, {"rank": rank, "data_s": seconds, "rss_after_data_mb": peak_rss_mb()})
        return result

    def first_report(metrics: dict[str, Any], **kwargs: Any) -> None:
        if metrics["step"] == 1:
            setup = time.monotonic() - started - metrics["train/step_s"]
            record(out, {"rank": rank, "setup_s": setup, "peak_rss_mb": peak_rss_mb()})
        report(metrics, **kwargs)

    setattr(loop, name, timed_data_call)
    ray.train.report = first_report
    loop.train_func(config)


def fit(train_config: dict[str, Any], storage: str) -> list[dict[str, Any]]:
    """A 2-worker TorchTrainer run of `timed_train_func`; returns the workers' records."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    out = str(Path(storage) / "records.jsonl")
    TorchTrainer(
        timed_train_func,
        train_loop_config={**train_config, "bench_out": out},
        scaling_config=ScalingConfig(num_workers=WORKERS, resources_per_worker={"CPU": 0.9}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(storage_path=storage),
    ).fit()
    records: dict[int, dict[str, Any]] = {}
    for line in Path(out).read_text().splitlines():
        values = json.loads(line)
        records.setdefault(values["rank"], {}).update(values)
    return [
        {k: round(v, 2) if isinstance(v, float) else v for k, v in records[rank].items()}
        for rank in sorted(records)
    ]


def run_variant(args: argparse.Namespace) -> dict[str, Any]:
    """One variant in this process (the driver of a private local Ray instance)."""
    import ray

    import trainers

    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(address="local", num_cpus=WORKERS, include_dashboard=False, log_to_driver=False)
    result: dict[str, Any] = {"code": str(Path(trainers.__file__).parent)}
    train_config = config(args)
    with tempfile.TemporaryDirectory() as storage:
        if args.variant == "after":
            from trainers.prepared import prepare
            from trainers.settings import TrainSettings

            begun = time.monotonic()
            prepared = prepare(TrainSettings(**train_config), storage, say=lambda line: None)
            seconds = time.monotonic() - begun
            result["prepare"] = {
                "seconds": round(seconds, 1),
                "conversations_per_s": round(args.conversations / seconds, 1),
                "examples": prepared.examples,
                "mean_tokens": round(prepared.tokens / prepared.examples, 1),
                "skipped": prepared.skipped,
            }
            train_config = {**train_config, "prepared_data": prepared.location}
            name = "PreparedExamples"
        else:
            name = "tokenize_examples"
        result["workers"] = fit({**train_config, "bench_data_call": name}, storage)
    ray.shutdown()
    if args.variant == "before":
        data_s = max(worker["data_s"] for worker in result["workers"])
        result["conversations_per_s"] = round(args.conversations / data_s, 1)
    else:
        result["conversations_per_s"] = result["prepare"]["conversations_per_s"]
    return result


def baseline_tree(commit: str, into: Path) -> Path:
    """The baseline's Python packages, extracted from git (nothing installed)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "calsweep", "trainers"],
        check=True,
        capture_output=True,
    ).stdout
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=50_000)
    parser.add_argument("--baseline", default="5cd84cc", help="commit of the 'before' variant")
    parser.add_argument("--model", default=SMOLLM2_SOURCE)
    parser.add_argument("--max-seq-len", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=1, help="optimizer steps per run")
    parser.add_argument("--turn-pieces", type=float, default=2.2, help="turn length: log-normal mu")
    parser.add_argument("--variant", choices=("before", "after"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:  # a child process: one variant, JSON on the last line
        print(json.dumps(run_variant(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "tulu_synthetic.jsonl"
        build_dataset(data, args.conversations, args.turn_pieces)
        results: dict[str, Any] = {
            "conversations": args.conversations,
            "turn_pieces_mu": args.turn_pieces,
            "data_mb": round(data.stat().st_size / 1e6, 1),
            "cores": os.cpu_count(),
            "load_average_before": os.getloadavg()[0],
            "baseline": args.baseline,
        }
        baseline = baseline_tree(args.baseline, Path(tmp) / "baseline")
        for variant in ("before", "after"):
            # The baseline's packages first on the path: the editable install's finder comes
            # after PYTHONPATH, workers inherit the driver's environment, and Ray puts the
            # driver's working directory first on theirs.
            code = baseline if variant == "before" else ROOT
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), str(ROOT)])}
            command = [sys.executable, "-m", "benchmarks.data_prep", "--variant", variant]
            command += ["--data", str(data), "--conversations", str(args.conversations)]
            command += ["--model", args.model, "--max-seq-len", str(args.max_seq_len)]
            command += ["--steps", str(args.steps)]
            done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=code)
            if done.returncode:
                sys.exit(f"{variant} failed:\n{done.stderr[-3000:]}")
            results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
