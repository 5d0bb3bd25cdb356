"""The sweep driver is killed mid-sweep; `--resume` completes it without rerunning finished work
and without duplicate MLflow runs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from conftest import write_mini_sweep
from mlflow.tracking import MlflowClient

from orchestrator.sweep import main

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def run_until(args: list[str], log: Path, pattern: str, timeout: float = 400) -> None:
    """Run the sweep CLI in its own process group and SIGKILL the whole group (driver and the
    local Ray instance it started) once `pattern` appears in its output."""
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
        while not re.search(pattern, log.read_text()):
            assert proc.poll() is None, f"sweep exited before {pattern!r}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no {pattern!r} in time:\n{log.read_text()}"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_killed_driver_resumes_without_rerunning_or_duplicating(
    tmp_path: Path, tiny_model_dir: Path, capsys
) -> None:
    sweep = write_mini_sweep(tmp_path, tiny_model_dir, checkpoint_every_steps=2)
    # Kill while the second trial trains past its step-2 checkpoint.
    run_until([str(sweep)], tmp_path / "killed.log", r"train 1/2 done \| .*ls=0.1 step 3/4")
    sweep_dir = tmp_path / "runs" / "mini"
    assert len(list((sweep_dir / "trials").glob("*.json"))) == 1  # only the first finished

    assert main([str(sweep), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resuming the Tune experiment" in out
    assert not re.search(r"ls=0 step", out)  # the finished trial is not retrained
    # the interrupted trial continued from its step-2 checkpoint: it reports steps 3 and 4 only
    assert re.search(r"ls=0.1 step 3/4", out) and not re.search(r"ls=0.1 step 1/4", out)

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
    assert sorted(set(steps)) == [1, 2, 3, 4]  # one curve, continued in the same run

    table = pl.read_parquet(sweep_dir / "results.parquet")
    assert table.height == 3 * 3 * 10  # 3 models x 3 splits x 10 metrics, no duplicates
    assert table.select("run", "benchmark", "language", "metric").is_unique().all()
