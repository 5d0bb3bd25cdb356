"""Grid expansion, trial identity, split sizes and the data check, without Ray."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import ray
import yaml

from evaluators.benchmarks import load_questions
from orchestrator.config import load_config
from orchestrator.plan import describe, expand, split_size
from orchestrator.sweep import main

ROOT = Path(__file__).resolve().parents[1]


def test_grid_is_the_cartesian_product_with_stable_unique_ids() -> None:
    config = load_config(ROOT / "sweeps" / "full.yaml")
    plan = expand(config)
    points = {(t.model, t.sft_dataset, t.learning_rate, t.label_smoothing) for t in plan.trials}
    assert len(points) == 108
    ids = [job.id for job in plan.jobs]
    assert len(set(ids)) == 108
    assert ids == [job.id for job in expand(config).jobs]  # deterministic
    assert plan.trials[0].run_name == "gemma2-2b|alpaca|lr=5e-06|ls=0"
    assert {job.train_run_name for job in plan.jobs} == {f"train-{i}" for i in ids}


def test_trial_id_changes_with_the_recipe() -> None:
    config = load_config(ROOT / "sweeps" / "local.yaml")
    longer = config.model_copy(
        update={"training": config.training.model_copy(update={"max_steps": 11})}
    )
    job, longer_job = expand(config).jobs[0], expand(longer).jobs[0]
    assert job.spec == longer_job.spec and job.id != longer_job.id
    assert (job.settings.max_steps, longer_job.settings.max_steps) == (10, 11)


def test_split_sizes_come_from_local_parquet_metadata() -> None:
    config = load_config(ROOT / "sweeps" / "local.yaml")
    splits = expand(config).splits
    assert {s.benchmark for s in splits} == {"global_mmlu", "mmlu_prox"}
    assert all(split_size(s) == 8 for s in splits)  # bundled sample has 40 > limit 8
    full = expand(load_config(ROOT / "sweeps" / "full.yaml")).splits
    assert split_size(full[0]) == 14042  # published size of a hub split


def test_lr_selection_plans_dev_splits_and_reports_the_saving() -> None:
    config = load_config(ROOT / "sweeps" / "full.yaml")
    evaluation = config.evaluation.model_copy(update={"select_lr_by": "ece"})
    selecting = config.model_copy(update={"evaluation": evaluation})
    plan = expand(selecting)
    assert plan.selected_trials == 27  # one lr per (model, dataset, smoothing)
    assert {s.split for s in plan.dev_splits} == {"dev", "validation"}
    text = describe(selecting, plan)
    assert "then 27 selected checkpoints on the test splits" in text
    assert "saving vs scoring every checkpoint" in text
    assert expand(config).dev_splits == []


def test_subject_filter_is_counted_in_the_plan() -> None:
    config = load_config(ROOT / "sweeps" / "local.yaml")
    bench = config.evaluation.benchmarks["global_mmlu"].model_copy(
        update={"subjects": ["cldr_months"], "limit": None}
    )
    evaluation = config.evaluation.model_copy(update={"benchmarks": {"global_mmlu": bench}})
    splits = expand(config.model_copy(update={"evaluation": evaluation})).splits
    for s in splits[:3]:
        expected = load_questions(s.benchmark, s.language, s.split, subjects=["cldr_months"])
        assert s.subjects == ("cldr_months",) and split_size(s) == len(expected) > 0


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_missing_subject_fails_before_ray_starts(tmp_path: Path, dry_run: bool, capsys) -> None:
    data = yaml.safe_load((ROOT / "sweeps" / "local.yaml").read_text())
    data["evaluation"]["benchmarks"]["mmlu_prox"]["subjects"] = ["physics"]
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(data))
    started = time.monotonic()
    assert main([str(sweep), "--output-dir", str(tmp_path), *(["--dry-run"] * dry_run)]) == 2
    assert time.monotonic() - started < 60 and not ray.is_initialized()
    error = capsys.readouterr().err
    assert "evaluation.benchmarks: MMLU-ProX" in error and "no subject(s) ['physics']" in error
