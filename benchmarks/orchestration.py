"""The sweep driver's orchestration, baseline commit vs the newest commit: one real sweep each
(`python -m orchestrator.sweep`), then the same command with ``--resume``. Prints JSON.

The sweep: a tiny random-weight Llama (`tests.conftest.make_tiny_model`, SmolLM2's tokenizer),
learning rates x label smoothing 0 / 0.1 x the two bundled SFT samples (tulu, alpaca; 16 rows
each): 12 trials of 2 steps on 1 Ray Train worker (1 CPU), then 2 bundled splits of 4 questions
(Global-MMLU de, MMLU-ProX ja) per trained and base model. The training is negligible, so what
is measured is the driver: Tune, Train start-up, exports, scoring and MLflow.

Each variant runs from a `git archive` of its commit in a temp dir (PYTHONPATH and working
directory there, nothing installed), in a fresh output dir, on a private local Ray instance.
Per variant:

- ``sweep_s``: wall time of the whole sweep command (Python start to exit).
- ``trials``: per-trial ``wall_s`` (``time_total_s`` of the last line of Tune's
  ``<storage>/tune/<trial>/result.json``), ``steps_s`` (the sum of ``train/step_s`` over the
  distinct steps in that file: each optimizer step's own time, as every worker report carries
  it in both commits) and ``overhead_s`` = wall_s - steps_s (trial and Train start-up, worker
  setup, checkpoint and export, reporting). Parts of it: ``to_first_step_s`` (trial start to the
  first step's start: the first step's time_total_s - its step_s), of which ``setup_s``
  (``train/setup_s``: worker start to first step), and ``after_last_step_s`` (the last step's
  report to the trial's end: final checkpoint, export, the trial's closing report). Each as
  mean / min / max over the trials.
- ``mlflow`` (seconds from the sweep's start, from metric timestamps in ``<sweep>/mlflow.db``
  on trial runs, i.e. those tagged ``calsweep.kind=trial``, base models excluded):
  ``first_eval_s`` (the earliest ``eval/...`` metric: the first scored trained model),
  ``last_train_loss_s`` (the latest ``train/loss``: when the last trial's training ended) and
  ``last_eval_s``; ``scoring_overlapped_training`` says if first_eval_s < last_train_loss_s.
- ``resume``: the same command with ``--resume`` after the sweep finished: ``wall_s`` and what
  its driver read. Both runs go through a wrapper (``python -c``) that installs a
  `sys.addaudithook` hook in the driver process, then runs `orchestrator.sweep` with `runpy`;
  the hook records each path opened for reading (``open`` events: `open`, `io.open_code`,
  `os.open`; and ``mmap.__new__``). At exit: the distinct files under the output dir, their
  sizes, weight files (``*.safetensors``, ``*.bin``, ``*.pt``) apart, ``opens`` of them, and the
  largest others; ``sweep_driver_reads`` is the same for the first run. Reads by Ray workers,
  and by native code that opens files itself (sqlite, polars, safetensors' Rust, pyarrow: so
  `calsweep.storage.read_text` and Tune's experiment-state restore), are not seen; as a bound
  on all of them, ``process_rchar_mb`` is the driver's ``rchar`` in /proc/self/io (bytes of
  every read call: any file, Python's modules, pipes, Ray's sockets).

Not a test: nothing here asserts a timing. ``python -m benchmarks.orchestration [--keep]``
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from calsweep.console import quiet_libraries

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = (".safetensors", ".bin", ".pt")
TRIAL_KEYS = ("wall_s", "steps_s", "overhead_s", "setup_s", "to_first_step_s", "after_last_step_s")
DATASETS = {
    "tulu-sample": {"format": "tulu", "source": "bundled", "max_samples": 16},
    "alpaca-sample": {"format": "alpaca", "source": "bundled", "max_samples": 16},
}
BENCHMARKS = {
    "global_mmlu": {"source": "bundled", "languages": ["de"], "limit": 4},
    "mmlu_prox": {"source": "bundled", "languages": ["ja"], "limit": 4},
}
# Run in the driver's process: records what it opens for reading, sums it at exit.
AUDIT = """
import atexit, json, os, runpy, sys
root, out = os.path.realpath(os.environ["BENCH_ROOT"]), os.environ["BENCH_OUT"]
opened = {}
def hook(event, args):
    try:
        if event == "open" and not isinstance(args[0], int):
            mode, flags = args[1], args[2]
            if ("r" in mode or "+" in mode) if mode else flags & 3 != os.O_WRONLY:
                path = os.path.abspath(os.fsdecode(args[0]))
                opened[path] = opened.get(path, 0) + 1
        elif event == "mmap.__new__" and args[0] >= 0:
            path = os.readlink(f"/proc/self/fd/{args[0]}")
            opened[path] = opened.get(path, 0) + 1
    except Exception:
        pass
def report():
    files, opens = {}, 0
    for path, count in opened.items():
        real = os.path.realpath(path)
        if real.startswith(root + os.sep) and os.path.isfile(real):
            files[os.path.relpath(real, root)] = os.path.getsize(real)
            opens += count
    with open("/proc/self/io") as f:
        io = dict(line.split(": ") for line in f.read().splitlines())
    with open(out, "w") as f:
        json.dump({"files": files, "opens": opens, "rchar": int(io["rchar"])}, f)
atexit.register(report)
sys.addaudithook(hook)
sys.argv = ["orchestrator.sweep", *sys.argv[1:]]
runpy.run_module("orchestrator.sweep", run_name="__main__", alter_sys=True)
"""


def write_sweep(path: Path, model_dir: Path, output_dir: Path, args: argparse.Namespace) -> None:
    """A sweep YAML both commits accept (as `tests.conftest.write_mini_sweep`, smaller)."""
    sweep = {
        "name": "bench",
        "output_dir": str(output_dir),
        "models": {"tiny": {"source": str(model_dir)}},
        "sft_datasets": {name: DATASETS[name] for name in args.datasets},
        "grid": {"learning_rate": args.learning_rates, "label_smoothing": args.smoothings}
        | {"model": ["tiny"], "sft_dataset": args.datasets},
        "training": dict(max_steps=2, micro_batch_size=2, num_workers=1, max_seq_len=64)
        | {"precision": "auto", "zero_stage": 2},
        "evaluation": {"benchmarks": BENCHMARKS, "max_batch_tokens": 1024},
        "resources": dict(cpus_per_worker=1.0, cpus_per_trial_driver=0.0)
        | {"cpus_per_scoring_actor": 1.0},
    }
    path.write_text(yaml.safe_dump(sweep))


def source_tree(commit: str, into: Path) -> str:
    """The commit's whole tree, extracted from git (nothing installed); returns its full id."""
    git = ["git", "-C", str(ROOT)]
    sha = subprocess.run([*git, "rev-parse", commit], check=True, capture_output=True, text=True)
    archive = subprocess.run([*git, "archive", sha.stdout.strip()], check=True, capture_output=True)
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return sha.stdout.strip()


def spread(values: list[float]) -> dict[str, float]:
    return {
        k: round(f(values), 2) for k, f in (("mean", statistics.mean), ("min", min), ("max", max))
    }


def trial_times(storage: Path) -> dict[str, Any]:
    """Per-trial seconds from Tune's result.json files (see the module docstring)."""
    rows: dict[str, list[float]] = {key: [] for key in TRIAL_KEYS}
    for path in sorted(glob.glob(str(storage / "tune" / "*" / "result.json"))):
        results = [json.loads(line) for line in Path(path).read_text().splitlines() if line]
        steps: dict[int, dict] = {}  # the first report of each step (the closing one repeats it)
        for r in results:
            if "train/step_s" in r:
                steps.setdefault(r["step"], r)
        if not steps:
            continue
        first, last = steps[min(steps)], steps[max(steps)]
        wall, step_s = results[-1]["time_total_s"], sum(r["train/step_s"] for r in steps.values())
        values = (wall, step_s, wall - step_s, first["train/setup_s"])
        values += (first["time_total_s"] - first["train/step_s"], wall - last["time_total_s"])
        for key, value in zip(TRIAL_KEYS, values, strict=True):
            rows[key].append(value)
    summary: dict[str, Any] = {"count": len(rows["wall_s"])}
    return summary | {key: spread(values) for key, values in rows.items() if values}


def mlflow_times(db: Path, started: float) -> dict[str, Any]:
    """Seconds from the sweep's start to trial runs' first eval/, last train/loss, last eval/."""
    query = """SELECT m.key, MIN(m.timestamp), MAX(m.timestamp) FROM metrics m
        JOIN tags t ON t.run_uuid = m.run_uuid AND t.key = 'calsweep.kind' AND t.value = 'trial'
        WHERE m.key LIKE 'eval/%' OR m.key = 'train/loss' GROUP BY m.key LIKE 'eval/%'"""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        rows = {key.startswith("eval/"): (lo, hi) for key, lo, hi in connection.execute(query)}
    since = lambda ms: round(ms / 1000 - started, 1)  # noqa: E731
    times = {
        "first_eval_s": since(rows[True][0]) if True in rows else None,
        "last_eval_s": since(rows[True][1]) if True in rows else None,
        "last_train_loss_s": since(rows[False][1]) if False in rows else None,
    }
    if None not in times.values():
        times["scoring_overlapped_training"] = times["first_eval_s"] < times["last_train_loss_s"]
    return times


def driver_reads(audit: Path) -> dict[str, Any]:
    """The audited reads, split into weight files and the rest (MB, distinct files)."""
    seen = json.loads(audit.read_text())
    weights = {p: n for p, n in seen["files"].items() if p.endswith(WEIGHTS)}
    other = {p: n for p, n in seen["files"].items() if p not in weights}
    largest = sorted(other.items(), key=lambda item: -item[1])[:5]
    return {
        "opens": seen["opens"],
        "weight_files": len(weights),
        "weight_mb": round(sum(weights.values()) / 1e6, 3),
        "other_files": len(other),
        "other_mb": round(sum(other.values()) / 1e6, 3),
        "largest_other": {path: size for path, size in largest},
        "process_rchar_mb": round(seen["rchar"] / 1e6, 1),
    }


def sweep_command(work: Path, code: Path, options: list[str], log: str) -> tuple[float, float]:
    """`python -m orchestrator.sweep <work>/sweep.yaml OPTIONS` in `code` (its packages first on
    the path), audited: its reads go to <work>/<log>_reads.json. Returns (start, seconds)."""
    command = [sys.executable, "-c", AUDIT, str(work / "sweep.yaml"), *options]
    env = {**os.environ, "PYTHONPATH": str(code), "BENCH_ROOT": str(work / "runs")}
    env["BENCH_OUT"] = str(work / f"{log}_reads.json")
    env.pop("RAY_ADDRESS", None)
    started = time.time()
    with open(work / f"{log}.log", "w") as out:
        done = subprocess.run(command, env=env, cwd=code, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.time() - started
    if done.returncode:
        tail = (work / f"{log}.log").read_text()[-3000:]
        sys.exit(f"{log} in {work} exited with {done.returncode}:\n{tail}")
    return started, seconds


def run_variant(commit: str, work: Path, model_dir: Path, args: argparse.Namespace) -> dict:
    code, load = work / "code", round(os.getloadavg()[0], 2)
    sha = source_tree(commit, code)
    sweep_yaml = work / "sweep.yaml"
    write_sweep(sweep_yaml, model_dir, work / "runs", args)
    started, seconds = sweep_command(work, code, [], "sweep")
    sweep_dir = work / "runs" / "bench"
    result: dict[str, Any] = {"commit": sha[:12], "load_average_before": load}
    result["sweep_s"] = round(seconds, 1)
    result["sweep_driver_reads"] = driver_reads(work / "sweep_reads.json")
    result["trials"] = trial_times(sweep_dir / "ray")
    result["mlflow"] = mlflow_times(sweep_dir / "mlflow.db", started)
    _, seconds = sweep_command(work, code, ["--resume"], "resume")
    result["resume"] = {"wall_s": round(seconds, 1), **driver_reads(work / "resume_reads.json")}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="What is measured and how: the module docstring (benchmarks/orchestration.py). "
        "Each variant's sweep runs ~5-15 min on 2 cores; --keep leaves its logs "
        "(sweep.log, resume.log), code, sweep.yaml and output dir in the printed temp dir.",
    )
    parser.add_argument("--baseline", default="3c94e65", help="the baseline's commit (3c94e65)")
    parser.add_argument("--after", default="HEAD", help="the 'after' commit (default HEAD)")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=("baseline", "after"),
        default=["baseline", "after"],
        help="which to run, in this order (default both)",
    )
    grid = parser.add_argument_group("grid (trials = learning rates x smoothings x datasets)")
    grid.add_argument("--learning-rates", nargs="+", type=float, default=[1e-4, 5e-4, 1e-3])
    grid.add_argument("--smoothings", nargs="+", type=float, default=[0.0, 0.1])
    grid.add_argument("--datasets", nargs="+", choices=tuple(DATASETS), default=list(DATASETS))
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (path in setup)")
    args = parser.parse_args()
    quiet_libraries(verbose=False)  # stdout is the JSON: no DeepSpeed notice on it
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import make_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="bench-orchestration-"))
    trials = len(args.learning_rates) * len(args.smoothings) * len(args.datasets)
    results: dict[str, Any] = {
        "setup": {
            "trials": trials,
            "grid": {"learning_rate": args.learning_rates, "label_smoothing": args.smoothings}
            | {"sft_dataset": args.datasets},
            "model": "tiny random-weight Llama (2 layers, hidden 64), SmolLM2 tokenizer",
            "training": "2 steps x 1 worker (1 CPU), micro batch 2, max_seq_len 64",
            "scoring": "global_mmlu de + mmlu_prox ja (bundled, 4 questions each)",
            "overhead_definition": "trial wall (Tune time_total_s) - sum of train/step_s",
            "cores": os.cpu_count(),
        }
    }
    if args.keep:
        results["setup"]["kept"] = str(tmp)
    try:
        model_dir = make_tiny_model(tmp / "tiny-llama")
        for variant in args.variants:
            commit = args.baseline if variant == "baseline" else args.after
            results[variant] = run_variant(commit, tmp / variant, model_dir, args)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
