"""`python -m orchestrator.sweep SWEEP.yaml`: train the grid with Ray Tune, score, record.

setup (config, plan, Ray, MLflow) -> train (Tune trials, each a Ray Train DeepSpeed run) ->
score (Ray Data actor pool over every model x split) -> record (MLflow, results table, summary).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from calsweep.console import quiet_libraries, say

if TYPE_CHECKING:  # pydantic, numpy and pyarrow load after --help: it answers at once
    from orchestrator.config import SweepConfig
    from orchestrator.plan import Plan

EPILOG = """examples:
  python -m orchestrator.sweep sweeps/local.yaml             # offline sweep on this machine
  python -m orchestrator.sweep sweeps/full.yaml --dry-run    # print the study's plan, start nothing
  python -m orchestrator.sweep sweeps/full.yaml --address auto --resume   # continue on a cluster
  python -m orchestrator.sweep sweeps/local.yaml --set training.max_steps=5  # override a value

exit status: 0 every trial trained and scored; 1 some trials failed (the rest are scored and
recorded), or an unreachable MLflow server still lacks some records (the next run sends them);
2 the sweep file or its data is wrong, another sweep is using its output directory, or the
MLflow server does not answer (nothing started)
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.sweep",
        description="Fine-tune every grid point (lr x label smoothing x model x SFT dataset) with "
        "DeepSpeed on Ray, score every checkpoint and base model on the benchmark splits, and "
        "record calibration metrics in MLflow.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sweep", type=Path, help="sweep YAML file (see sweeps/)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the YAML and print the plan (trials, splits, questions; per model x "
        "dataset: data, steps, checkpoint bytes; estimated tokens and GPU-hours) without "
        "starting Ray",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted sweep from its storage: finished trials and "
        "scored splits are reused, errored trials continue from their checkpoint",
    )
    parser.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="Ray cluster to join ('auto' or host:port; default $RAY_ADDRESS, "
        "else a local Ray instance is started)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one value of the YAML (repeatable): KEY a dotted path, VALUE read as YAML, "
        "e.g. training.max_steps=5, grid.learning_rate=[1e-5,5e-5], "
        "evaluation.benchmarks.global_mmlu.limit=4; mappings merge, other values replace",
    )
    parser.add_argument(
        "--output-dir", help="override the YAML's output_dir (as --set output_dir=DIR)"
    )
    parser.add_argument(
        "--storage",
        help="override the YAML's storage: where checkpoints and exported models go (a shared "
        "path, or a URI such as s3://bucket/prefix; default <output_dir>/<name>/ray)",
    )
    parser.add_argument(
        "--tracking-uri",
        help="override the MLflow tracking URI, keeping the YAML's tracking.experiment "
        "(default: sqlite in the sweep's output directory)",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show Ray, DeepSpeed and worker logs (hidden by default)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_libraries(args.verbose)
    from orchestrator.config import ConfigError, load_config, merge, parse_set
    from orchestrator.plan import describe, expand

    flags: dict = {}  # taken as given (not read as YAML), and over any --set of the same key
    if args.output_dir:
        flags["output_dir"] = args.output_dir
    if args.storage:
        flags["storage"] = args.storage
    if args.tracking_uri:
        flags["tracking"] = {"tracking_uri": args.tracking_uri}
    try:
        config = load_config(args.sweep, merge(parse_set(args.set), flags))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    plan = expand(config)
    print(describe(config, plan), flush=True)
    try:
        check_data(plan, hub=not args.dry_run)  # a dry run stays offline
    except ValueError as err:
        print(f"error: {args.sweep}: evaluation.benchmarks: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        return 0
    from orchestrator.lock import SweepLocked, sweep_lock
    from orchestrator.tracking import TrackingUnreachable

    try:
        with sweep_lock(config.sweep_dir):  # before Ray starts: a refused sweep costs nothing
            summary, failed, unsent = run_sweep(
                config, plan, address=args.address, resume=args.resume, verbose=args.verbose
            )
    except (SweepLocked, TrackingUnreachable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary)
    if unsent:
        print(
            f"error: {unsent} MLflow records could not reach {config.tracking.tracking_uri}; "
            f"they wait in {config.sweep_dir / 'mlflow_backlog'} and the next run of this "
            "command sends them first (results.parquet and the report are complete).",
            file=sys.stderr,
        )
    if failed:
        print(
            f"error: {len(failed)} of {len(plan.trials)} trials failed (errors above and in their "
            "MLflow runs); the others were scored. After a fix, rerun with --resume: finished "
            "work is reused and failed trials are retried.",
            file=sys.stderr,
        )
    return 1 if failed or unsent else 0


def check_data(plan: Plan, *, hub: bool) -> None:
    """Every split (and subject filter) to score exists in its source: a typo fails in seconds
    instead of after hours of training. Hub sources are checked only when `hub` is set."""
    from evaluators.benchmarks import check_split

    for s in dict.fromkeys(plan.splits + plan.dev_splits):
        if hub or Path(s.source).is_dir():
            check_split(s.benchmark, s.language, s.split, s.source, s.subjects)


def run_sweep(
    config: SweepConfig,
    plan: Plan,
    *,
    address: str | None = None,
    resume: bool = False,
    verbose: bool = False,
) -> tuple[str, list[str], int]:
    """Train, score and record one sweep; returns the summary, the failed trials' names and
    the MLflow records that an unreachable tracking server has not taken yet.
    The ledger says what an earlier session finished: it is reused, interrupted trials continue
    from their checkpoints, and failed ones are retried with `resume`."""
    import ray

    from orchestrator.conductor import Conductor
    from orchestrator.execution import check_shared_storage, concurrent_trials, init_ray, run_tune
    from orchestrator.ledger import Entry, Ledger
    from orchestrator.plan import base_key
    from orchestrator.progress import TuneEvents, WhenConductorStops
    from orchestrator.results import record_plan, record_results, run_params
    from orchestrator.tracking import SweepTracker

    ledger = Ledger.load(config.storage_dir)
    ledger.plan(
        {job.id: Entry("trial", job.run_name) for job in plan.jobs}
        | {base_key(m): Entry("base", f"{m}|base") for m in plan.base_models}
    )
    init_ray(address, verbose)
    try:
        check_shared_storage(config.storage_dir)
        tracker = SweepTracker(config, ledger)
        tracker.create_child_runs(ledger, run_params(config, plan))
        record_plan(config, plan, tracker)
        say(f"MLflow experiment {tracker.experiment_name!r} at {tracker.uri}")
        retry = {"scheduled", "running"} | ({"failed"} if resume else set())
        to_train = [job for job in plan.jobs if ledger.entries[job.id].status in retry]
        done = len(plan.jobs) - len(to_train)
        if done:
            say(f"ledger {ledger.location}: {done} of {len(plan.jobs)} trials already ended")
        conductor = Conductor(
            config, plan, ledger, tracker, concurrent_trials=concurrent_trials(config)
        )
        conductor.start()
        stopper = WhenConductorStops(conductor.stopped)
        run_tune(config, to_train, TuneEvents(conductor.post), stopper, verbose=verbose)
        conductor.finish()
        models = list(conductor.models.values())
        summary = record_results(config, tracker, models, conductor.failed, conductor.results)
        return summary, list(conductor.failed), tracker.drain()
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
