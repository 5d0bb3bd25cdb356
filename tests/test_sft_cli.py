"""`python -m trainers.sft`: its flags, and a real 2-step run on a tiny model (own Ray instance)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from orchestrator.config import load_config
from orchestrator.plan import expand
from trainers.fit import progress_line, run_name
from trainers.settings import TrainingRecipe, TrainSettings, WorkerGroup
from trainers.sft import NOT_FLAGS, build_parser, settings_from_args

REPO = Path(__file__).resolve().parents[1]


def test_help_explains_every_flag() -> None:
    parser = build_parser()
    undocumented = [a.dest for a in parser._actions if not (a.help and a.help.strip())]
    assert undocumented == []
    shown = subprocess.run(
        [sys.executable, "-m", "trainers.sft", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for action in parser._actions:
        assert action.option_strings[-1] in shown


def test_every_settings_field_is_a_flag_with_its_default() -> None:
    """The recipe's, the worker group's and the run's fields are the CLI's flags: a new field is
    a flag by itself."""
    actions = {a.dest: a for a in build_parser()._actions}
    fields = {**TrainSettings.model_fields, **WorkerGroup.model_fields}
    assert set(TrainingRecipe.model_fields) < set(fields)
    for name, field in fields.items():
        if name in NOT_FLAGS:
            continue
        kebab = name.replace("_", "-")
        switch = f"--no-{kebab}" if field.default is True else f"--{kebab}"
        assert switch in actions[name].option_strings
        assert actions[name].default == (None if field.is_required() else field.default)
        assert actions[name].help == field.description


def test_the_sweeps_training_section_and_the_cli_make_equal_settings(tmp_path: Path) -> None:
    training = {"max_steps": 7, "epochs": 2.0, "micro_batch_size": 3, "grad_accum_steps": 2}
    training |= {"max_seq_len": 96, "warmup_ratio": 0.1, "weight_decay": 0.01, "dropout": 0.0}
    training |= {"zero_stage": 3, "precision": "fp32", "log_every_steps": 2}
    training |= {"checkpoint_every_steps": 5, "checkpoint_every_minutes": 1.5}
    training |= {"length_grouped": False}
    assert set(training) == set(TrainingRecipe.model_fields)
    (tmp_path / "model").mkdir()
    sweep = {
        "name": "t",
        "seed": 4,
        "models": {"m": {"source": "./model"}},
        "sft_datasets": {"d": {"format": "tulu", "source": "bundled", "max_samples": 9}},
        "grid": {"learning_rate": [2e-4], "label_smoothing": [0.1], "model": ["m"]}
        | {"sft_dataset": ["d"]},
        "training": {**training, "num_workers": 3},
        "evaluation": {"benchmarks": {"global_mmlu": {"limit": 1}}},
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    planned = expand(load_config(tmp_path / "sweep.yaml")).jobs[0].settings

    argv = ["--model", str(tmp_path / "model"), "--dataset", "tulu:bundled", "--lr", "2e-4"]
    argv += ["--smoothing", "0.1", "--seed", "4", "--max-samples", "9", "--out", str(tmp_path)]
    argv += ["--no-length-grouped"]
    argv += [f"--{k.replace('_', '-')}={v}" for k, v in training.items() if k != "length_grouped"]
    assert settings_from_args(build_parser().parse_args(argv)) == planned


def test_a_value_out_of_range_is_one_line_naming_the_flag(tmp_path: Path) -> None:
    argv = ["--model", str(tmp_path), "--dataset", "alpaca:bundled", "--lr", "0", "--out", "x"]
    args = build_parser().parse_args([*argv, "--smoothing", "1", "--epochs", "0"])
    with pytest.raises(ValueError) as info:
        settings_from_args(args)
    assert str(info.value) == (
        "--epochs 0.0: Input should be greater than 0; "
        "--learning-rate 0.0: Input should be greater than 0; "
        "--label-smoothing 1.0: Input should be less than 1"
    )


def test_arguments_become_train_settings(tiny_model_dir: Path, tmp_path: Path) -> None:
    argv = ["--model", str(tiny_model_dir), "--dataset", "tulu:bundled", "--lr", "2e-4"]
    argv += ["--smoothing", "0.1", "--out", str(tmp_path), "--zero-stage", "3"]
    settings = settings_from_args(build_parser().parse_args(argv + ["--no-length-grouping"]))
    assert (settings.sft_format, settings.sft_source) == ("tulu", "bundled")
    assert (settings.learning_rate, settings.label_smoothing) == (2e-4, 0.1)
    assert settings.zero_stage == 3 and not settings.length_grouped
    again = settings_from_args(build_parser().parse_args(argv + ["--no-length-grouping"]))
    assert run_name(settings, 2) == run_name(again, 2) != run_name(again, 1)
    with pytest.raises(ValueError, match="FORMAT:SOURCE"):
        settings_from_args(build_parser().parse_args([*argv[:3], "bundled", *argv[4:]]))


@pytest.mark.parametrize(
    ("dataset", "message"),
    [
        ("sharegpt:bundled", "--dataset 'sharegpt:bundled': expected FORMAT:SOURCE with FORMAT "),
        ("alpaca:{tmp}/missing.jsonl", "SFT source file {tmp}/missing.jsonl does not exist"),
        ("alpaca:{tmp}/empty.jsonl", "SFT source file {tmp}/empty.jsonl holds no rows"),
        ("tulu:{tmp}/alpaca.jsonl", "no usable tulu conversation in {tmp}/alpaca.jsonl: every "),
    ],
)
def test_bad_dataset_is_one_line_and_exit_2_before_ray_starts(
    tiny_model_dir: Path, tmp_path: Path, dataset: str, message: str
) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    rows = [{"instruction": "Say hi.", "input": "", "output": "hi"}] * 3
    (tmp_path / "alpaca.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    command = [sys.executable, "-m", "trainers.sft", "--model", str(tiny_model_dir)]
    command += ["--dataset", dataset.format(tmp=tmp_path), "--lr", "1e-3", "--smoothing", "0"]
    command += ["--out", str(tmp_path / "model")]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: " + message.format(tmp=tmp_path)), done.stderr


def test_progress_line_shows_step_loss_throughput_and_eta() -> None:
    metrics = {"step": 3, "total_steps": 10, "train/loss": 2.34567, "train/lr": 1e-4,
               "train/tokens_per_s": 411.6, "train/padding_fraction": 0.042}  # fmt: skip
    assert progress_line(metrics, 72.4) == (
        "step 3/10  loss 2.3457  lr 1.0e-04  412 tok/s  pad 4%  ETA 0:01:12"
    )


@pytest.mark.integration
def test_cli_trains_two_steps_and_exports_a_loadable_model(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "model"
    command = [sys.executable, "-m", "trainers.sft", "--model", str(tiny_model_dir)]
    command += ["--dataset", "alpaca:bundled", "--lr", "1e-3", "--smoothing", "0.1"]
    command += ["--out", str(out), "--max-steps", "2", "--workers", "2", "--zero-stage", "2"]
    command += ["--precision", "bf16", "--max-seq-len", "64", "--max-samples", "32"]
    command += ["--micro-batch-size", "2"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert any(line.startswith("step 1/2  loss ") and "ETA" in line for line in lines)
    assert any(line.startswith("step 2/2  loss ") and "tok/s" in line for line in lines)
    assert lines[-1] == f"exported model: {out}"
    model = AutoModelForCausalLM.from_pretrained(out)
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    changed = model.model.embed_tokens.weight.float() - initial.model.embed_tokens.weight
    assert torch.count_nonzero(changed) > 0
    assert (tmp_path / "model.ray-train").is_dir()  # checkpoints kept for a re-run to resume
