"""The sweep driver is killed mid-sweep (during training, with the storage on local disk and in S3
(moto); during scoring); `--resume` completes it from the ledger without rerunning finished
work, without duplicate MLflow runs, and without the driver reading an exported weight."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pyarrow.fs as pafs
import pytest
import yaml
from conftest import write_mini_sweep
from mlflow.tracking import MlflowClient

from calsweep.storage import filesystem, join, read_text
from evaluators.metrics import HIGHER_IS_BETTER
from orchestrator.sweep import main

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def run_until(args: list[str], log: Path, ready: Callable[[], bool], timeout: float = 900) -> None:
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


def storage_files(storage: str) -> list[str]:
    """Paths under the sweep's storage (local or S3), relative to it."""
    fs, root = filesystem(storage)
    selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
    return [info.path.removeprefix(root + "/") for info in fs.get_file_info(selector)]


def ledger(storage: str) -> dict:
    """The ledger as the test polls it while the driver rewrites it. On S3 a read can mix two
    versions (pyarrow sizes the object, then reads it): such a read counts as not ready."""
    text = read_text(join(storage, "ledger.json"))
    try:
        return json.loads(text) if text else {"entries": {}, "scores": {}}
    except ValueError:
        return {"entries": {}, "scores": {}}


def ended_trials(storage: str) -> list[str]:
    entries = ledger(storage)["entries"].values()
    return [e["name"] for e in entries if e["status"] in ("trained", "finished", "failed")]


def second_trial_checkpointed(storage: str) -> bool:
    """One trial exported, the other has a mid-run checkpoint and no final export yet."""
    files = storage_files(storage)
    runs = {f.split("/")[0] for f in files if f.startswith("train-")}
    unfinished = [r for r in runs if f"{r}/checkpoint_final" not in files]
    return (
        len([n for n in ended_trials(storage) if "|tulu-sample|" in n]) == 1
        and len(unfinished) == 1
        and f"{unfinished[0]}/checkpoint_manager_snapshot.json" in files
    )


class WeightReads:
    """Records every weight file this process opens (an audit hook cannot be removed, so it
    records only while `active`)."""

    def __init__(self) -> None:
        self.active, self.paths = False, []
        sys.addaudithook(self)

    def __call__(self, event: str, args: tuple) -> None:
        if self.active and event == "open" and str(args[0]).endswith(".safetensors"):
            self.paths.append(str(args[0]))


@pytest.fixture(scope="module")
def weight_reads() -> WeightReads:
    return WeightReads()


@pytest.mark.parametrize("remote", [False, True], ids=["local-storage", "s3-storage"])
def test_killed_driver_resumes_without_rerunning_or_duplicating(
    tmp_path: Path, tiny_model_dir: Path, remote: bool, request, capsys, weight_reads
) -> None:
    sweep = write_mini_sweep(tmp_path, tiny_model_dir, max_steps=8, checkpoint_every_steps=2)
    sweep_dir = tmp_path / "runs" / "mini"
    storage_args, storage = [], str(sweep_dir / "ray")
    if remote:
        root = join(request.getfixturevalue("s3_bucket"), f"resume-{tmp_path.name}")
        storage_args, storage = ["--storage", root], join(root, "mini")
    # Kill once the second trial has registered a mid-run checkpoint.
    run_until(
        [str(sweep), *storage_args],
        tmp_path / "killed.log",
        lambda: second_trial_checkpointed(storage),
    )
    assert len(ended_trials(storage)) == 2  # the base model and the first trial

    weight_reads.active = True
    try:
        assert main([str(sweep), "--resume", *storage_args]) == 0
    finally:
        weight_reads.active = False
    # the ledger holds the exports' digests: the driver hashes none (it reads the base
    # model's safetensors header only, to count its parameters for the plan's price)
    assert [p for p in weight_reads.paths if "/train-" in p] == []
    out = capsys.readouterr().out
    assert "1 of 2 trials already ended" in out, out
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
    metrics = len(HIGHER_IS_BETTER) + 1  # every metric and n_questions
    assert table.height == 3 * 3 * metrics  # 3 models x 3 splits, no duplicates
    assert table.select("run", "benchmark", "language", "metric").is_unique().all()


def test_killed_while_scoring_resumes_without_rescoring(
    tmp_path: Path, tiny_model_dir: Path, capsys
) -> None:
    sweep = write_mini_sweep(tmp_path, tiny_model_dir, max_steps=2)
    spec = yaml.safe_load(sweep.read_text())  # 42 + 1 splits: scoring a model takes seconds
    spec["evaluation"]["benchmarks"]["global_mmlu"]["languages"] = "all"
    sweep.write_text(yaml.safe_dump(spec))
    sweep_dir = tmp_path / "runs" / "mini"
    storage = str(sweep_dir / "ray")

    def trial_partly_scored() -> bool:
        scores = [k for k in ledger(storage)["scores"] if not k.startswith("base:")]
        return 0 < len(scores) < 43

    run_until([str(sweep)], tmp_path / "killed.log", trial_partly_scored)
    before = ledger(storage)
    cache = sweep_dir / "score_cache"
    kept = {f.name: f.stat().st_mtime_ns for f in cache.glob("*.json")}

    assert main([str(sweep), "--resume"]) == 0
    out = capsys.readouterr().out
    after = ledger(storage)
    assert {e["status"] for e in after["entries"].values()} == {"finished"}
    for entry in before["entries"].values():
        if entry["kind"] == "trial" and entry["status"] in ("trained", "finished"):
            assert not re.search(rf"{re.escape(entry['name'])} step", out), out  # not retrained
    # the splits scored before the kill are neither rescored nor rewritten
    assert before["scores"].items() <= after["scores"].items()
    assert all((cache / name).stat().st_mtime_ns == mtime for name, mtime in kept.items())
    assert len(after["scores"]) == 3 * 43

    client = MlflowClient(f"sqlite:///{sweep_dir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("mini").experiment_id])
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
