"""A trial that diverges is marked failed (MLflow status, error tag, summary, exit status) while
the rest of the sweep trains, scores and records as usual."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from conftest import write_mini_sweep
from mlflow.tracking import MlflowClient

from orchestrator.sweep import main

pytestmark = pytest.mark.integration


def test_a_diverging_trial_fails_alone(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    # lr 1e10 turns the loss non-finite at step 2: not retried, the trial fails.
    sweep = write_mini_sweep(tmp_path, tiny_model_dir, learning_rates=(1e-3, 1e10))
    assert main([str(sweep)]) == 1
    out, err = capsys.readouterr()
    assert "2 of 4 trials failed" in err and "--resume" in err
    failed_lines = [line for line in out.splitlines() if line.startswith("FAILED ")]
    assert len(failed_lines) == 2 and all("lr=1e+10" in line for line in failed_lines)
    assert all("non-finite training loss nan at optimizer step 2" in line for line in failed_lines)

    sweep_dir = tmp_path / "runs" / "mini"
    client = MlflowClient(f"sqlite:///{sweep_dir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("mini").experiment_id])
    status = {r.info.run_name: r.info.status for r in runs}
    assert status == {
        "mini": "FAILED",  # the sweep as a whole did not fully succeed
        "tiny|base": "FINISHED",
        "tiny|tulu-sample|lr=0.001|ls=0": "FINISHED",
        "tiny|tulu-sample|lr=0.001|ls=0.1": "FINISHED",
        "tiny|tulu-sample|lr=1e+10|ls=0": "FAILED",
        "tiny|tulu-sample|lr=1e+10|ls=0.1": "FAILED",
    }
    for run in runs:
        if "lr=1e+10" in run.info.run_name:
            assert "NonFiniteLossError" in run.data.tags["calsweep.error"]
            assert not any(k.startswith("eval/") for k in run.data.metrics)
    table = pl.read_parquet(sweep_dir / "results.parquet")
    assert sorted(table["run"].unique()) == [
        "tiny|base",
        "tiny|tulu-sample|lr=0.001|ls=0",
        "tiny|tulu-sample|lr=0.001|ls=0.1",
    ]
