"""A real two-node Ray cluster on this machine and a real MLflow tracking server over http: a
training worker is killed mid-trial, Ray Train restarts the worker group from the latest
checkpoint, and the sweep completes with every run and metric in the server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from conftest import write_mini_sweep
from mlflow.tracking import MlflowClient

from orchestrator.sweep import main

# Off by default (`pytest -m slow`): on this 2-core machine the run trained and recovered from
# the killed worker but then stalled after training (under investigation, see issue 5).
pytestmark = [pytest.mark.integration, pytest.mark.slow]
PORT = 6391
BIN = Path(sys.executable).parent  # the venv's `ray` and `mlflow`, even when it is not on PATH
MLFLOW_PORT = 5391


def ray_cli(*args: str) -> None:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    subprocess.run([str(BIN / "ray"), *args], check=True, env=env, capture_output=True, timeout=120)


@pytest.fixture
def two_node_cluster(tmp_path: Path):
    """Head node and a worker node (2 logical CPUs each), torn down after the test."""
    ray_cli(
        "start",
        "--head",
        f"--port={PORT}",
        "--num-cpus=2",
        "--include-dashboard=true",
        "--disable-usage-stats",
    )
    try:
        ray_cli("start", f"--address=127.0.0.1:{PORT}", "--num-cpus=2")
        yield f"127.0.0.1:{PORT}"
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], capture_output=True, timeout=120)


@pytest.fixture
def mlflow_server(tmp_path: Path):
    """`mlflow server` on loopback with a sqlite backend and proxied artifacts."""
    server = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(MLFLOW_PORT),
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{MLFLOW_PORT}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "mlflow server down"
            time.sleep(0.5)
    try:
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def kill_a_worker_after_first_checkpoint(sweep_dir: Path, killed: list[int]) -> None:
    """Wait for a registered mid-run checkpoint, then SIGKILL one training worker process."""
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        if list((sweep_dir / "ray").glob("train-*/checkpoint_step*")):
            workers = [
                p
                for p in psutil.process_iter(["cmdline"])
                if "RayTrainWorker" in " ".join(p.info["cmdline"] or [])
            ]
            if workers:
                os.kill(workers[0].pid, signal.SIGKILL)
                killed.append(workers[0].pid)
                return
        time.sleep(0.2)


def test_killed_training_worker_recovers_on_a_two_node_cluster(
    tmp_path: Path, tiny_model_dir: Path, two_node_cluster: str, mlflow_server: str, monkeypatch
) -> None:
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    sweep = write_mini_sweep(
        tmp_path, tiny_model_dir, max_steps=8, checkpoint_every_steps=2, max_failures=2
    )
    sweep_dir = tmp_path / "runs" / "mini"
    killed: list[int] = []
    killer = threading.Thread(
        target=kill_a_worker_after_first_checkpoint, args=(sweep_dir, killed), daemon=True
    )
    killer.start()
    assert main([str(sweep), "--address", two_node_cluster, "--tracking-uri", mlflow_server]) == 0
    killer.join(timeout=5)
    assert killed, "no training worker was killed: the test did not exercise recovery"

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("mini")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    trials = [r for r in runs if "lr=" in r.info.run_name]
    for run in trials:
        steps = {m.step for m in client.get_metric_history(run.info.run_id, "train/loss")}
        assert steps == set(range(1, 9))
        assert "eval/global_mmlu/mean/ece" in run.data.metrics
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"predictions.parquet", "split_metrics.csv", "reliability"} <= artifacts
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert "results.parquet" in {a.path for a in client.list_artifacts(parent.info.run_id)}
