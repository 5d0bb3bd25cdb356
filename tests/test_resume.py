"""The sweep driver is killed mid-sweep; `--resume` completes it without rerunning finished work
and without duplicate MLflow runs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from conftest import write_mini_sweep
from mlflow.tracking import MlflowClient

from orchestrator.sweep import main

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def run_until(args: list[str], log: Path, ready: Callable[[], bool], timeout: float = 400) -> None:
    """Run the sweep CLI in its own process group and SIGKILL the whole group (driver and the
    local Ray instance it started) as soon as `ready()` holds."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.sweep", *args],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, f"sweep exited too early:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"timed out:\n{log.read_text()}"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def second_trial_checkpointed(sweep_dir: Path) -> bool:
    """One trial exported, the other has a mid-run checkpoint and no final export yet."""
    runs = list((sweep_dir / "ray").glob("train-*"))
    unfinished = [r for r in runs if not (r / "checkpoint_final").exists()]
    return (
        len(list((sweep_dir / "ray" / "trials").glob("*.json"))) == 1
        and len(unfinished) == 1
        and (unfinished[0] / "checkpoint_manager_snapshot.json").is_file()
    )


def test_killed_driver_resumes_without_rerunning_or_duplicating(
    tmp_path: Path, tiny_model_dir: Path, capsys
) -> None:
    sweep = write_mini_sweep(tmp_path, tiny_model_dir, max_steps=8, checkpoint_every_steps=2)
    sweep_dir = tmp_path / "runs" / "mini"
    # Kill once the second trial has registered a mid-run checkpoint.
    run_until([str(sweep)], tmp_path / "killed.log", lambda: second_trial_checkpointed(sweep_dir))
    assert len(list((sweep_dir / "ray" / "trials").glob("*.json"))) == 1  # only the first finished

    assert main([str(sweep), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resuming the Tune experiment" in out, out
    assert not re.search(r"ls=0 step", out), out  # the finished trial is not retrained
    # the interrupted trial continued from its checkpoint, not from step 1
    resumed_steps = [int(m) for m in re.findall(r"ls=0.1 step (\d+)/8", out)]
    assert resumed_steps and resumed_steps[0] > 2 and resumed_steps[-1] == 8, out

    client = MlflowClient(f"sqlite:///{sweep_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mini")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == [
        "mini",
        "tiny|base",
        "tiny|tulu-sample|lr=0.001|ls=0",
        "tiny|tulu-sample|lr=0.001|ls=0.1",
    ]
    assert all(r.info.status == "FINISHED" for r in runs)
    resumed = next(r for r in runs if r.info.run_name.endswith("ls=0.1"))
    steps = [m.step for m in client.get_metric_history(resumed.info.run_id, "train/loss")]
    assert sorted(set(steps)) == list(range(1, 9))  # one curve, continued in the same run

    table = pl.read_parquet(sweep_dir / "results.parquet")
    assert table.height == 3 * 3 * 10  # 3 models x 3 splits x 10 metrics, no duplicates
    assert table.select("run", "benchmark", "language", "metric").is_unique().all()
