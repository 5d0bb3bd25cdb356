"""The "auto" precision: bf16 only where it is fast (GPUs, CPUs with AMX or AVX512-BF16)."""

from __future__ import annotations

from pathlib import Path

import torch

from calsweep.hardware import auto_precision, cpu_has_fast_bf16
from evaluators.scoring import resolve_dtype


def torch_sees_fast_bf16() -> bool:
    """torch's own CPU feature detection (cpuinfo), independent of /proc/cpuinfo parsing."""
    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("amx_bf16") or capabilities.get("avx512_bf16"))


def test_cpu_detection_agrees_with_torch() -> None:
    assert cpu_has_fast_bf16() == torch_sees_fast_bf16()


def test_auto_is_bf16_on_gpus_fp16_on_old_ones_and_fp32_on_slow_bf16_cpus() -> None:
    assert auto_precision(gpu=True) == "bf16"
    assert auto_precision(gpu=True, gpu_has_bf16=False) == "fp16"
    assert auto_precision(gpu=False) == ("bf16" if torch_sees_fast_bf16() else "fp32")


def test_scoring_dtype_auto_follows_the_training_precision() -> None:
    expected = torch.bfloat16 if torch_sees_fast_bf16() else torch.float32
    assert resolve_dtype("auto", torch.device("cpu")) == expected
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16


def test_dry_run_prices_auto_as_bf16_on_a_gpu_cluster(tmp_path) -> None:
    import yaml

    from orchestrator.config import load_config
    from orchestrator.cost import training_precision

    study = yaml.safe_load((Path(__file__).parents[1] / "sweeps" / "full.yaml").read_text())
    study["training"]["precision"] = "auto"
    (tmp_path / "auto.yaml").write_text(yaml.safe_dump(study))
    assert training_precision(load_config(tmp_path / "auto.yaml")) == "bf16"
