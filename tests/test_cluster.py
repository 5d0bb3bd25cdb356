"""A real two-node Ray cluster on this machine and a real MLflow tracking server over http:
mid-trial a training worker is killed and the tracking server too. Ray Train restarts the worker
group from the latest checkpoint, the driver keeps MLflow's records until the restarted server
answers, and the sweep completes with every run and metric in the server, once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import BIN, free_port, start_server, write_mini_sweep
from mlflow.tracking import MlflowClient

from orchestrator.backlog import OPS_FILE
from orchestrator.execution import TUNE_EXPERIMENT
from orchestrator.sweep import main
from trainers.train_loop import HISTORY_KEY

pytestmark = pytest.mark.integration
PORT = 6391


def ray_cli(*args: str) -> None:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    subprocess.run([str(BIN / "ray"), *args], check=True, env=env, capture_output=True, timeout=120)


@pytest.fixture
def two_node_cluster(tmp_path: Path):
    """Head node and a worker node (2 logical CPUs each), torn down after the test (also when
    a start fails half-way, which would leave a head on the port for the next run)."""
    try:
        ray_cli(
            "start",
            "--head",
            f"--port={PORT}",
            "--num-cpus=2",
            "--include-dashboard=true",
            "--disable-usage-stats",
        )
        ray_cli("start", f"--address=127.0.0.1:{PORT}", "--num-cpus=2")
        yield f"127.0.0.1:{PORT}"
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], capture_output=True, timeout=120)


class MlflowServer:
    """`mlflow server` on loopback with a sqlite backend and proxied artifacts, which the test
    can kill and start again on the same port and store."""

    def __init__(self, root: Path) -> None:
        self.uri = f"http://127.0.0.1:{free_port()}"
        self.command = [
            str(BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            self.uri.rsplit(":", 1)[1],
            "--backend-store-uri",
            f"sqlite:///{root / 'server.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--workers",
            "1",
        ]
        self.start()

    def start(self) -> None:
        self.process = start_server(self.command, f"{self.uri}/health")

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path)
    yield server
    server.kill()


def kill_workers_and_tracking_after_a_checkpoint(
    sweep_dir: Path, server: MlflowServer, killed: list[int]
) -> None:
    """Once a training run has registered a mid-run checkpoint and none has finished, SIGKILL
    every Ray Train worker process (the worker groups of both trials fail mid-run) and the
    MLflow server; start the server again once the driver has kept a write in its backlog (a
    fixed outage can end before the restarted workers report anything, and then the test
    would not exercise the outage)."""
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        runs = list((sweep_dir / "ray").glob("train-*"))
        if any((r / "checkpoint_manager_snapshot.json").is_file() for r in runs) and not any(
            (r / "checkpoint_final").exists() for r in runs
        ):
            for process in psutil.process_iter(["cmdline"]):
                if "RayTrainWorker" in " ".join(process.info["cmdline"] or []):
                    os.kill(process.pid, signal.SIGKILL)
                    killed.append(process.pid)
            server.kill()
            backlog = sweep_dir / "mlflow_backlog" / OPS_FILE
            while not backlog.is_file() and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(5)
            server.start()
            return
        time.sleep(0.2)


def resumed_reports(sweep_dir: Path) -> list[dict]:
    """Tune results that a restarted worker group sent first: they carry the replayed history."""
    rows = [
        json.loads(line)
        for path in (sweep_dir / "ray" / TUNE_EXPERIMENT).glob("*/result.json")
        for line in path.read_text().splitlines()
    ]
    return [row for row in rows if HISTORY_KEY in row]


def test_killed_training_worker_recovers_on_a_two_node_cluster(
    tmp_path: Path,
    tiny_model_dir: Path,
    two_node_cluster: str,
    mlflow_server: MlflowServer,
    monkeypatch,
    capsys,
) -> None:
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    sweep = write_mini_sweep(
        tmp_path, tiny_model_dir, max_steps=8, checkpoint_every_steps=2, max_failures=2
    )
    sweep_dir = tmp_path / "runs" / "mini"
    killed: list[int] = []
    killer = threading.Thread(
        target=kill_workers_and_tracking_after_a_checkpoint,
        args=(sweep_dir, mlflow_server, killed),
        daemon=True,
    )
    killer.start()
    uri = mlflow_server.uri
    assert main([str(sweep), "--address", two_node_cluster, "--tracking-uri", uri]) == 0
    killer.join(timeout=30)
    assert killed, "no training worker was killed: the test did not exercise recovery"
    out = capsys.readouterr().out
    assert f"MLflow at {uri} is unreachable" in out and "answers again" in out, out
    assert not (sweep_dir / "mlflow_backlog").exists()  # every kept record was sent
    # Ray Train restarted the worker group from the checkpoint, not from step 1.
    resumed = resumed_reports(sweep_dir)
    assert resumed, "no worker group resumed from a checkpoint"
    for row in resumed:
        replayed = [step for step, _ in json.loads(row[HISTORY_KEY])]
        assert replayed == list(range(1, row["step"])) and row["step"] > 2

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("mini")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    trials = [r for r in runs if "lr=" in r.info.run_name]
    for run in trials:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert sorted(steps) == list(range(1, 9))  # every step once, across both outages
        assert "eval/global_mmlu/mean/ece" in run.data.metrics
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"predictions.parquet", "split_metrics.csv", "reliability"} <= artifacts
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert f"compare runs: open {uri}/#/experiments/" in out
    assert "results.parquet" in {a.path for a in client.list_artifacts(parent.info.run_id)}
