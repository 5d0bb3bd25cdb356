"""The sweep's MLflow experiment, on real MLflow (sqlite in a temp dir, and a real `mlflow server`
that goes away): tagged as model training, artifacts inside the sweep's output directory, runs
kept in the ledger instead of duplicated, records kept while the server is gone."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from conftest import BIN, free_port, start_server, write_mini_sweep
from mlflow.tracking import MlflowClient

from orchestrator.config import load_config
from orchestrator.ledger import Entry, Ledger
from orchestrator.tracking import (
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING_KIND,
    SweepTracker,
    artifact_location,
)


def tracker_with_a_trial(config) -> tuple[SweepTracker, str]:
    """A tracker on the sweep's ledger, with one planned trial's run (created once)."""
    ledger = Ledger.load(config.storage_dir)
    ledger.plan({"abc": Entry("trial", "tiny|tulu-sample|lr=0.001|ls=0")})
    tracker = SweepTracker(config, ledger)
    tracker.create_child_runs(ledger, {"abc": {"lr": 0.001}})
    return tracker, ledger.entries["abc"].run_id  # type: ignore[return-value]


def local_path(uri: str) -> Path:
    return Path(url2pathname(urlparse(uri).path))


def test_experiment_is_model_training_with_artifacts_in_the_sweep_dir(
    tmp_path: Path, monkeypatch
) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # MLflow's default would be ./mlruns here
    config = load_config(write_mini_sweep(tmp_path, tmp_path / "model"))
    tracker, run_id = tracker_with_a_trial(config)
    assert tracker.uri == f"sqlite:///{config.sweep_dir / 'mlflow.db'}"

    experiment = MlflowClient(tracker.uri).get_experiment(tracker.experiment_id)
    assert experiment.name == "mini"
    assert experiment.tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert local_path(experiment.artifact_location) == config.sweep_dir / "mlartifacts"
    page = f"#/experiments/{tracker.experiment_id}/runs?workflowType=machine_learning"
    assert tracker.ui_hint().endswith(f"(then open http://127.0.0.1:5000/{page})")

    table = tmp_path / "split_metrics.csv"
    table.write_text("benchmark,ece\nglobal_mmlu,0.1\n")
    run = MlflowClient(tracker.uri).get_run(run_id)
    assert (run.info.status, run.data.params) == ("SCHEDULED", {"lr": "0.001"})
    assert run.data.tags["mlflow.parentRunId"] == tracker.parent_id
    tracker.log_artifact(run_id, table)
    stored = local_path(MlflowClient(tracker.uri).get_run(run_id).info.artifact_uri)
    assert stored.is_relative_to(config.sweep_dir / "mlartifacts")
    assert (stored / "split_metrics.csv").read_text() == table.read_text()
    assert not (tmp_path / "elsewhere" / "mlruns").exists()


def test_an_existing_experiment_gets_the_kind_tag_and_keeps_its_runs(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    config = load_config(write_mini_sweep(tmp_path, tmp_path / "model"))
    config.sweep_dir.mkdir(parents=True)
    client = MlflowClient(f"sqlite:///{config.sweep_dir / 'mlflow.db'}")
    old_id = client.create_experiment("mini")  # as an older calsweep made it: no kind tag

    first, run_id = tracker_with_a_trial(config)
    again, same_run = tracker_with_a_trial(config)
    assert first.experiment_id == again.experiment_id == old_id
    assert client.get_experiment(old_id).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    assert (first.parent_id, run_id) == (again.parent_id, same_run)
    assert len(client.search_runs([old_id])) == 2  # the sweep's run and the trial's, once


def test_a_tracking_server_keeps_its_own_artifact_root(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    sweep = write_mini_sweep(tmp_path, tmp_path / "model")
    config = load_config(sweep, {"tracking": {"tracking_uri": "http://127.0.0.1:5000"}})
    assert artifact_location(config) is None


def test_records_wait_while_the_tracking_server_is_gone_and_reach_it_once(
    tmp_path: Path, capsys
) -> None:
    (tmp_path / "model").mkdir()
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server_command = [
        str(BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination",
        str(tmp_path / "artifacts"),
        "--workers",
        "1",
    ]
    sweep = write_mini_sweep(tmp_path, tmp_path / "model")
    config = load_config(sweep, {"tracking": {"tracking_uri": uri}})
    server = start_server(server_command, f"{uri}/health")
    tracker, run_id = tracker_with_a_trial(config)
    tracker.log_metrics(run_id, {"train/loss": 2.0}, step=1)
    os.killpg(server.pid, signal.SIGKILL)
    server.wait()

    table = tmp_path / "split_metrics.csv"
    table.write_text("benchmark,ece\nglobal_mmlu,0.1\n")
    tracker.log_metrics(run_id, {"train/loss": 1.5}, step=2)
    tracker.log_missing_steps(run_id, "train/loss", [[1, {"train/loss": 2.0}]])
    tracker.log_artifact(run_id, table)
    table.unlink()  # as a temporary directory would be gone
    tracker.finish(run_id)
    assert "is unreachable" in capsys.readouterr().out
    assert len(tracker.backlog) == 4 and not tracker.retry()

    server = start_server(server_command, f"{uri}/health")
    try:
        # the next run of the sweep sends what the last one kept, first
        SweepTracker(config, Ledger.load(config.storage_dir))
        assert "answers again" in capsys.readouterr().out
        client = MlflowClient(uri)
        history = client.get_metric_history(run_id, "train/loss")
        assert sorted((m.step, m.value) for m in history) == [(1, 2.0), (2, 1.5)]  # once each
        assert client.get_run(run_id).info.status == "FINISHED"
        assert [a.path for a in client.list_artifacts(run_id)] == ["split_metrics.csv"]
        assert not (config.sweep_dir / "mlflow_backlog").exists()
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
