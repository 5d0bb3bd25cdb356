"""Sweep YAML validation: every mistake is one line naming the file, the key path and the fix."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from orchestrator.config import ConfigError, SweepConfig, load_config, merge, parse_set
from orchestrator.plan import describe, expand, train_settings

ROOT = Path(__file__).resolve().parents[1]
VALID = {
    "name": "t",
    "models": {"tiny": {"source": "./model"}},
    "sft_datasets": {"alp": {"format": "alpaca", "source": "bundled"}},
    "grid": {
        "learning_rate": [1e-4],
        "label_smoothing": [0.0, 0.1],
        "model": ["tiny"],
        "sft_dataset": ["alp"],
    },
    "evaluation": {"benchmarks": {"global_mmlu": {"languages": ["de", "sw"], "limit": 5}}},
}


def write(tmp_path: Path, data: dict) -> Path:
    (tmp_path / "model").mkdir(exist_ok=True)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def error_for(tmp_path: Path, mutate) -> str:
    data = copy.deepcopy(VALID)
    mutate(data)
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data))
    message = str(info.value)
    assert str(tmp_path / "sweep.yaml") in message or str(tmp_path) in message
    return message


def test_valid_config_resolves_paths_relative_to_the_yaml(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, VALID))
    assert config.models["tiny"].source == str(tmp_path / "model")
    assert Path(config.output_dir).is_absolute()
    assert config.training.zero_stage == 2  # defaults fill what the YAML leaves out


def test_unknown_key_lists_the_allowed_keys(tmp_path: Path) -> None:
    message = error_for(tmp_path, lambda d: d["grid"].update(learning_rates=[1e-3]))
    assert "grid.learning_rates: unknown key" in message
    assert "learning_rate, label_smoothing, model, sft_dataset" in message


def test_unknown_nested_key(tmp_path: Path) -> None:
    message = error_for(tmp_path, lambda d: d["models"]["tiny"].update(revison="main"))
    assert "models.tiny.revison: unknown key; allowed keys here: source" in message


def test_wrong_type(tmp_path: Path) -> None:
    message = error_for(tmp_path, lambda d: d.update(training={"max_steps": "ten"}))
    assert "training.max_steps" in message and "'ten'" in message


def test_empty_grid_axis(tmp_path: Path) -> None:
    message = error_for(tmp_path, lambda d: d["grid"].update(label_smoothing=[]))
    assert "grid.label_smoothing" in message and "at least 1" in message


def test_learning_rate_must_be_positive(tmp_path: Path) -> None:
    message = error_for(tmp_path, lambda d: d["grid"].update(learning_rate=[1e-4, 0.0]))
    assert "grid.learning_rate.1: Input should be greater than 0" in message


@pytest.mark.parametrize("beta", [-0.1, 1.0])
def test_smoothing_outside_unit_interval(tmp_path: Path, beta: float) -> None:
    message = error_for(tmp_path, lambda d: d["grid"].update(label_smoothing=[beta]))
    assert "grid.label_smoothing.0" in message


def test_unknown_language_lists_allowed(tmp_path: Path) -> None:
    message = error_for(
        tmp_path,
        lambda d: d["evaluation"]["benchmarks"]["global_mmlu"].update(languages=["de", "xx"]),
    )
    assert "unknown languages ['xx']" in message and "am ar bn" in message


def test_unknown_benchmark(tmp_path: Path) -> None:
    message = error_for(tmp_path, lambda d: d["evaluation"]["benchmarks"].update(mmlu={}))
    assert "unknown benchmark 'mmlu'" in message and "global_mmlu, mmlu_prox" in message


def test_missing_file(tmp_path: Path) -> None:
    message = error_for(
        tmp_path, lambda d: d["sft_datasets"]["alp"].update(source="data/missing.jsonl")
    )
    assert "sft_datasets.alp.source: 'data/missing.jsonl' does not exist" in message


def test_grid_names_must_be_defined(tmp_path: Path) -> None:
    message = error_for(tmp_path, lambda d: d["grid"].update(model=["tiny", "llama"]))
    assert "grid.model: 'llama' is not defined under models" in message


def test_missing_required_section(tmp_path: Path) -> None:
    message = error_for(tmp_path, lambda d: d.pop("grid"))
    assert "grid: required key is missing" in message


def test_missing_sweep_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such sweep file"):
        load_config(tmp_path / "nope.yaml")


def test_shipped_sweeps_validate_and_plan() -> None:
    local = load_config(ROOT / "sweeps" / "local.yaml")
    plan = expand(local)
    assert len(plan.trials) >= 4 and len(plan.splits) == 71
    full = load_config(ROOT / "sweeps" / "full.yaml")
    plan = expand(full)
    assert (len(plan.trials), len(plan.base_models), len(plan.splits)) == (108, 3, 71)
    text = describe(full, plan)
    assert "trials: 108" in text and "base-model evaluations: 3" in text
    assert "effective batch 128" in text
    assert "(9 data sets for 108 trials)" in text  # model x dataset, not per trial


def test_lr_selection_metric_must_be_known(tmp_path: Path) -> None:
    message = error_for(tmp_path, lambda d: d["evaluation"].update(select_lr_by="f1"))
    assert "evaluation.select_lr_by: unknown metric 'f1'" in message and "accuracy" in message


def test_training_section_reaches_the_worker_settings(tmp_path: Path) -> None:
    data = copy.deepcopy(VALID)
    data["training"] = {"length_grouped": False, "zero_stage": 3, "max_steps": 7}
    config = load_config(write(tmp_path, data))
    trial = expand(config).trials[0]
    settings = train_settings(config, trial)
    assert not settings.length_grouped and settings.zero_stage == 3 and settings.max_steps == 7
    assert settings.label_smoothing == trial.label_smoothing
    assert settings.model_path == str(tmp_path / "model")


def cli_config(tmp_path: Path, monkeypatch, data: dict, *flags: str) -> SweepConfig:
    """The config that `python -m orchestrator.sweep` hands to the sweep (stopped right there),
    after checking that the output directory's lock is held around it."""
    from orchestrator import sweep

    seen: dict = {}

    def run_sweep(config: SweepConfig, plan, **_) -> tuple[str, list[str], int]:
        seen["config"] = config
        assert (config.sweep_dir / ".calsweep.lock").exists()
        return "summary", [], 0

    monkeypatch.setattr(sweep, "run_sweep", run_sweep)
    assert sweep.main([str(write(tmp_path, data)), *flags]) == 0
    assert not (seen["config"].sweep_dir / ".calsweep.lock").exists()
    return seen["config"]


def test_tracking_uri_flag_keeps_the_yamls_experiment(tmp_path: Path, monkeypatch) -> None:
    data = {**copy.deepcopy(VALID), "tracking": {"experiment": "calibration"}}
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    flags = ("--tracking-uri", uri, "--set", "output_dir=elsewhere", "--output-dir", str(tmp_path))
    config = cli_config(tmp_path, monkeypatch, data, *flags)
    assert (config.tracking.tracking_uri, config.tracking.experiment) == (uri, "calibration")
    assert config.output_dir == str(tmp_path)  # the flag over a --set of the same key


def test_set_overrides_nested_values_and_keeps_their_siblings(tmp_path: Path) -> None:
    items = ["training.max_steps=5", "evaluation.benchmarks.global_mmlu.limit=4", "seed=7"]
    config = load_config(write(tmp_path, VALID), parse_set(items))
    assert (config.training.max_steps, config.seed) == (5, 7)
    bench = config.evaluation.benchmarks["global_mmlu"]
    assert (bench.limit, bench.languages) == (4, ["de", "sw"])
    assert config.grid.label_smoothing == [0.0, 0.1]


def test_set_values_are_yaml_lists_numbers_and_null(tmp_path: Path) -> None:
    data = copy.deepcopy(VALID)
    data["training"] = {"max_steps": 9}
    items = [
        "grid.learning_rate=[1e-5, 5e-5]",
        "grid.label_smoothing=[0.05]",
        "training.max_steps=null",
        "evaluation.benchmarks.global_mmlu.languages=[sw]",
        "evaluation.benchmarks.global_mmlu.languages=[de]",  # the later one wins
    ]
    config = load_config(write(tmp_path, data), parse_set(items))
    assert config.grid.learning_rate == [1e-5, 5e-5]  # a list replaces the YAML's, whole
    assert config.grid.label_smoothing == [0.05] and config.training.max_steps is None
    assert config.evaluation.benchmarks["global_mmlu"].languages == ["de"]


def test_set_of_an_unknown_key_fails_naming_its_path(tmp_path: Path) -> None:
    data = copy.deepcopy(VALID)
    data["grid"]["learning_rates"] = [1e-3]  # a typo in the YAML itself, too
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data), parse_set(["training.max_stepz=5"]))
    lines = sorted(str(info.value).splitlines())
    assert len(lines) == 2
    assert lines[0].endswith(
        ": grid.learning_rates: unknown key; allowed keys here: "
        "learning_rate, label_smoothing, model, sft_dataset"
    )
    assert ": training.max_stepz: unknown key; allowed keys here: max_steps, epochs" in lines[1]
    assert lines[1].endswith("(set on the command line)")


@pytest.mark.parametrize(
    "item", ["training", "=5", "training..max_steps=5", " =1", "grid.model=[a"]
)
def test_a_malformed_set_is_one_line_and_exit_2(tmp_path: Path, item: str, capsys) -> None:
    from orchestrator.sweep import main

    with pytest.raises(ConfigError, match=r"^--set '.*'") as info:
        parse_set([item])
    assert "\n" not in str(info.value)
    assert main([str(write(tmp_path, VALID)), "--dry-run", "--set", item]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == f"error: {info.value}"


def test_merge_merges_mappings_and_replaces_everything_else() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1, "e": {"f": 1}}
    override = {"a": {"c": [3]}, "d": {"x": 1}, "e": None, "g": 2}
    assert merge(base, override) == {"a": {"b": 1, "c": [3]}, "d": {"x": 1}, "e": None, "g": 2}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1, "e": {"f": 1}}  # not changed in place
