"""A complete miniature sweep through the CLI's code path: real Ray Tune + Train + DeepSpeed with
checkpoints in S3 storage (a real S3 API, moto's server), Ray Data scoring, MLflow (sqlite); then
the same command again reuses everything."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import ray
from conftest import write_mini_sweep
from mlflow.tracking import MlflowClient

from calsweep.storage import filesystem, join, read_text
from orchestrator.sweep import main

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return write_mini_sweep(
        tmp_path_factory.mktemp("mini-sweep"),
        tiny_model_dir,
        select_lr_by="accuracy",
        scoring="reserved",
    )


@pytest.fixture(scope="module")
def storage(s3_bucket: str) -> str:
    return join(s3_bucket, "sweeps")


@pytest.fixture(scope="module")
def finished_sweep(sweep_file: Path, storage: str):
    assert main([str(sweep_file), "--storage", storage]) == 0
    assert not ray.is_initialized()  # the sweep shuts down what it started
    return sweep_file.parent / "runs" / "mini"


def test_checkpoints_exports_and_records_live_in_object_storage(
    finished_sweep: Path, storage: str
) -> None:
    fs, root = filesystem(join(storage, "mini"))
    files = [i.path for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))]
    exports = [f for f in files if f.endswith("checkpoint_final/hf_model/model.safetensors")]
    assert len(exports) == 2  # one per trial
    ledger = json.loads(read_text(join(storage, "mini", "ledger.json")))
    trials = [e for e in ledger["entries"].values() if e["kind"] == "trial"]
    assert [e["status"] for e in trials] == ["finished", "finished"]
    assert {e["export"].removeprefix("s3://") for e in trials} == {
        f.removesuffix("/model.safetensors") for f in exports
    }
    assert len(ledger["scores"]) == 2 * 3 + 2 * 3 + 3  # dev and test of 2 trials, base test
    trial_dirs = {
        f.removeprefix(f"{root}/tune/").split("/")[0]
        for f in files
        if f.startswith(f"{root}/tune/") and "/" in f.removeprefix(f"{root}/tune/")
    }
    # named after the trials' run names (then Tune's trial id), not Tune's rounded params
    assert {re.sub(r"_[0-9a-f]+_\d{5}$", "", d) for d in trial_dirs} == {
        "tiny_tulu-sample_lr=0.001_ls=0",
        "tiny_tulu-sample_lr=0.001_ls=0.1",
    }, trial_dirs
    assert not (finished_sweep / "ray").exists()  # nothing trained went to the local directory


def test_mlflow_holds_one_parent_and_nested_runs(finished_sweep: Path, capsys) -> None:
    client = MlflowClient(f"sqlite:///{finished_sweep / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mini")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.artifact_location == (finished_sweep / "mlartifacts").as_uri()
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 3  # 2 trials + 1 base model
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert all(r.info.status == "FINISHED" for r in runs)

    trials = [r for r in children if r.data.params.get("sft_dataset") == "tulu-sample"]
    assert {r.data.params["smoothing"] for r in trials} == {"0.0", "0.1"}
    assert {r.info.run_name for r in trials} == {
        "tiny|tulu-sample|lr=0.001|ls=0",
        "tiny|tulu-sample|lr=0.001|ls=0.1",
    }
    for run in trials:
        assert run.data.params["lr"] == "0.001" and run.data.params["train.zero_stage"] == "2"
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert [m.step for m in history] == [1, 2, 3, 4]
        assert all(math.isfinite(m.value) and m.value > 0 for m in history)
    for run in children:
        metrics = run.data.metrics
        for bench, langs in (("global_mmlu", ["de", "sw"]), ("mmlu_prox", ["ja"])):
            for name in ("accuracy", "entropy", "ece", "rms", "nll", "brier"):
                for lang in [*langs, "mean"]:
                    assert math.isfinite(metrics[f"eval/{bench}/{lang}/{name}"])
        assert metrics["eval/global_mmlu/de/n_questions"] == 4
        if run in trials:  # lr selection scored the trials on the dev splits first
            assert math.isfinite(metrics["eval_dev/mmlu_prox/ja/accuracy"])
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"predictions.parquet", "split_metrics.csv", "reliability"} <= artifacts
    # training changed the weights, and smoothing changed them differently
    nll = {r.info.run_name: r.data.metrics["eval/global_mmlu/mean/nll"] for r in children}
    assert len(set(nll.values())) == 3, nll


def test_a_finished_trial_is_scored_while_the_next_one_trains(finished_sweep: Path) -> None:
    client = MlflowClient(f"sqlite:///{finished_sweep / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mini")
    trials = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if r.data.params.get("sft_dataset") == "tulu-sample"
    ]

    def times(run, key: str) -> list[int]:
        return [m.timestamp for m in client.get_metric_history(run.info.run_id, key)]

    first, last = sorted(trials, key=lambda r: max(times(r, "train/loss")))
    first_scored = min(times(first, "eval/global_mmlu/de/accuracy"))
    assert first_scored < max(times(last, "train/loss")), "scoring waited for all training"


def test_rerunning_reuses_trials_and_scores_without_duplicate_runs(
    finished_sweep: Path, sweep_file: Path, storage: str, capsys
) -> None:
    capsys.readouterr()
    assert main([str(sweep_file), "--storage", storage]) == 0
    out = capsys.readouterr().out
    assert "Summary" in out and "mlflow ui --backend-store-uri sqlite:///" in out
    assert f"(checkpoints and exports in {storage}/mini)" in out
    assert "2 of 2 trials already ended" in out, out
    assert " start " not in out and "splits scored" not in out, out  # nothing ran again
    assert out.count("lr selection: ") == 2  # one lr per smoothing, from the cached dev scores
    client = MlflowClient(f"sqlite:///{finished_sweep / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mini")
    assert len(client.search_runs([experiment.experiment_id])) == 4
