"""The sweep's MLflow experiment, on real MLflow (sqlite in a temp dir): tagged as model training,
artifacts inside the sweep's output directory, found again instead of duplicated."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from conftest import write_mini_sweep
from mlflow.tracking import MlflowClient

from orchestrator.config import load_config
from orchestrator.tracking import (
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING_KIND,
    SweepTracker,
    artifact_location,
)


def local_path(uri: str) -> Path:
    return Path(url2pathname(urlparse(uri).path))


def test_experiment_is_model_training_with_artifacts_in_the_sweep_dir(
    tmp_path: Path, monkeypatch
) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # MLflow's default would be ./mlruns here
    config = load_config(write_mini_sweep(tmp_path, tmp_path / "model"))
    tracker = SweepTracker(config)
    assert tracker.uri == f"sqlite:///{config.sweep_dir / 'mlflow.db'}"

    experiment = MlflowClient(tracker.uri).get_experiment(tracker.experiment_id)
    assert experiment.name == "mini"
    assert experiment.tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert local_path(experiment.artifact_location) == config.sweep_dir / "mlartifacts"
    page = f"#/experiments/{tracker.experiment_id}/runs?workflowType=machine_learning"
    assert tracker.ui_hint().endswith(f"(then open http://127.0.0.1:5000/{page})")

    table = tmp_path / "split_metrics.csv"
    table.write_text("benchmark,ece\nglobal_mmlu,0.1\n")
    run_id = tracker.child_run("abc", "tiny|tulu-sample|lr=0.001|ls=0", "trial")
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

    first = SweepTracker(config)
    again = SweepTracker(config)
    assert first.experiment_id == again.experiment_id == old_id
    assert client.get_experiment(old_id).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    assert first.parent_id == again.parent_id


def test_a_tracking_server_keeps_its_own_artifact_root(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    sweep = write_mini_sweep(tmp_path, tmp_path / "model")
    config = load_config(sweep, {"tracking": {"tracking_uri": "http://127.0.0.1:5000"}})
    assert artifact_location(config) is None
