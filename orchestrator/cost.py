"""The priced plan: data, optimizer steps, checkpoint bytes and device-hours per model x dataset.

Offline and fast like the rest of planning: local data is counted (rows, and characters for the
token estimate), hub data and hub models come from small tables of published sizes, and time
comes from the `estimate:` throughput assumption, never from a measurement. Figures marked `~`
are estimates, `<=` upper bounds; anything else is counted or follows from the config.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.parquet as pq

import trainers
from calsweep.hardware import auto_precision
from calsweep.models import SMOLLM2_SOURCE
from orchestrator.config import SFTDatasetSpec, SweepConfig, TrainingConfig

if TYPE_CHECKING:  # plan.py imports this module
    from orchestrator.plan import TrialSpec

# Published sizes (conversations in the train split) of the hub datasets sweeps/full.yaml uses.
PUBLISHED_SFT_SIZES = {
    "tatsu-lab/alpaca": 52_002,
    "allenai/tulu-3-sft-mixture": 939_343,
    "teknium/OpenHermes-2.5": 1_001_551,
}
# Published parameter counts of the models the sweeps use.
PUBLISHED_PARAMS = {
    "google/gemma-2-2b": 2.61e9,
    "mistralai/Mistral-7B-v0.1": 7.24e9,
    "meta-llama/Llama-3.1-8B": 8.03e9,
    SMOLLM2_SOURCE: 1.35e8,
}
BUNDLED_SFT_DIR = Path(trainers.__file__).parent / "data"  # trainers/sft_data.py: BUNDLED_DIR
CHARS_PER_TOKEN = 4  # English-ish text; the token estimate is marked `~`
TOKENS_PER_MESSAGE = 4  # role markers a chat template adds around each message
ROWS_FOR_LENGTH = 10_000  # mean length from at most this many rows: a 1M-row file stays fast
KEPT_CHECKPOINTS = 2  # Ray Train's CheckpointConfig(num_to_keep=2) in orchestrator/trial.py


@dataclass(frozen=True)
class DataSize:
    """An SFT source as planned: conversations (capped by max_samples) and mean tokens each."""

    conversations: int | None  # None: unknown offline
    tokens_per_conversation: float  # ~ from the text (local) or <= max_seq_len (bound)
    counted: bool  # True: lengths come from the local text; False: only the max_seq_len bound


@dataclass(frozen=True)
class TrainingCost:
    """The training of one (model, SFT dataset) pair, per trial, under the throughput estimate."""

    model: str
    dataset: str
    trials: int
    params: float | None
    data: DataSize
    steps: int | None
    tokens: float | None  # per trial, sequence tokens (prompt + response, unpadded)
    hours: float | None  # wall-clock per trial (estimate)
    checkpoints: int | None  # resumable checkpoints per trial (the final export not counted)
    checkpoint_bytes: float | None  # one resumable checkpoint, all workers together
    export_bytes: float | None

    @property
    def mark(self) -> str:
        """How exact the time-derived figures are: `~` estimate, `<=` upper bound."""
        return "~" if self.data.counted else "<="

    @property
    def written_bytes(self) -> float | None:
        """Bytes one trial writes: its resumable checkpoints and the export."""
        if self.checkpoints is None or self.checkpoint_bytes is None:
            return None
        return self.checkpoints * self.checkpoint_bytes + self.export_bytes

    @property
    def kept_bytes(self) -> float | None:
        """Bytes one finished trial keeps: the export and the latest resumable checkpoint."""
        if self.checkpoints is None or self.checkpoint_bytes is None:
            return None
        return min(self.checkpoints, KEPT_CHECKPOINTS - 1) * self.checkpoint_bytes + (
            self.export_bytes
        )


def sft_data_size(spec: SFTDatasetSpec, max_seq_len: int) -> DataSize:
    """Conversations and mean tokens per conversation of an SFT source, without tokenising.

    Local files (and the bundled sample) are counted: rows, and (text characters / 4 + 4 per
    message) per row, each capped at max_seq_len. Hub ids: the published size if known, and the
    max_seq_len bound. Rows are counted before malformed ones are skipped.
    """
    path = _local_file(spec)
    if path is None:
        size = PUBLISHED_SFT_SIZES.get(spec.source)
        return DataSize(_capped(size, spec.max_samples), float(max_seq_len), counted=False)
    rows, sample = _rows(path)
    lengths = [min(max_seq_len, _tokens(spec.format, row)) for row in sample]
    mean = sum(lengths) / len(lengths) if lengths else float(max_seq_len)
    return DataSize(_capped(rows, spec.max_samples), mean, counted=bool(lengths))


def model_params(source: str) -> float | None:
    """Parameters of a model source: published count, a local directory's safetensors headers
    (or its config.json), else None (unknown)."""
    if source in PUBLISHED_PARAMS:
        return PUBLISHED_PARAMS[source]
    directory = Path(source)
    if not directory.is_dir():
        return None
    shards = sorted(directory.glob("*.safetensors"))
    if shards:
        return float(sum(_safetensors_params(f) for f in shards))
    if (directory / "config.json").is_file():
        return _config_params(json.loads((directory / "config.json").read_text()))
    return None


def optimizer_steps(conversations: int | None, training: TrainingConfig) -> int | None:
    """Steps of one trial, by trainers/train_loop.py `batch_schedule`'s rule."""
    if training.max_steps:
        return training.max_steps
    if conversations is None:
        return None
    return max(1, int(training.epochs * max(1, conversations // _effective_batch(training))))


def training_precision(config: SweepConfig) -> str:
    """The precision the workers will train in: "auto" priced as the GPU's bf16 on GPU
    clusters, else as what this machine's CPU would pick."""
    if config.training.precision != "auto":
        return config.training.precision
    return auto_precision(config.resources.use_gpu)


def checkpoint_bytes(params: float, precision: str) -> float:
    """One resumable DeepSpeed checkpoint with AdamW, all ranks together (ZeRO partitions it,
    the total stays): 16-bit weights 2 B + fp32 master weights 4 B + two Adam moments 8 B per
    parameter under bf16/fp16; fp32 weights 4 B + moments 8 B under fp32."""
    return params * (12 if precision == "fp32" else 14)


def export_bytes(params: float, precision: str) -> float:
    """The exported Hugging Face model: the weights in the training precision."""
    return params * (4 if precision == "fp32" else 2)


def tokens_per_second(params: float, config: SweepConfig, *, scoring: bool = False) -> float:
    """One device's throughput under the `estimate:` assumption: 6 FLOPs per parameter and token
    to train (forward + backward), 2 to score (forward)."""
    e = config.estimate
    mfu = (e.scoring_mfu or e.mfu) if scoring else e.mfu
    return mfu * e.peak_tflops * 1e12 / ((2 if scoring else 6) * params)


def checkpoints_written(
    steps: int, training: TrainingConfig, step_seconds: float | None
) -> int | None:
    """Resumable checkpoints of one trial, replaying trainers/train_loop.py's rule with a constant
    step time: after a step that is a multiple of `checkpoint_every_steps`, or after a step that
    started `checkpoint_every_minutes` after the last checkpoint; not after the last step (it
    writes the export instead). Writing time is not counted. None: by the clock, time unknown."""
    every, minutes = training.checkpoint_every_steps, training.checkpoint_every_minutes
    if minutes <= 0:
        return (steps - 1) // every if every else 0
    if step_seconds is None:
        return None
    count, last = 0, 0.0
    for step in range(steps - 1):  # 0-based; step `steps - 1` ends the run
        done = step + 1
        if step * step_seconds - last >= 60 * minutes or (every and done % every == 0):
            count, last = count + 1, done * step_seconds
    return count


def training_costs(config: SweepConfig, trials: list[TrialSpec]) -> list[TrainingCost]:
    """One TrainingCost per (model, SFT dataset) of the plan's trials, in grid order."""
    t = config.training
    precision = training_precision(config)
    batch = _effective_batch(t)
    pairs: dict[tuple[str, str], int] = {}
    for trial in trials:
        pairs[(trial.model, trial.sft_dataset)] = pairs.get((trial.model, trial.sft_dataset), 0) + 1
    costs = []
    for (model, dataset), count in pairs.items():
        params = model_params(config.models[model].source)
        data = sft_data_size(config.sft_datasets[dataset], t.max_seq_len)
        steps = optimizer_steps(data.conversations, t)
        tokens = steps * batch * data.tokens_per_conversation if steps else None
        seconds = None
        if tokens is not None and params is not None:
            seconds = tokens / (tokens_per_second(params, config) * t.num_workers)
        costs.append(
            TrainingCost(
                model=model,
                dataset=dataset,
                trials=count,
                params=params,
                data=data,
                steps=steps,
                tokens=tokens,
                hours=None if seconds is None else seconds / 3600,
                checkpoints=None
                if steps is None
                else checkpoints_written(steps, t, None if seconds is None else seconds / steps),
                checkpoint_bytes=None if params is None else checkpoint_bytes(params, precision),
                export_bytes=None if params is None else export_bytes(params, precision),
            )
        )
    return costs


def scoring_hours(config: SweepConfig, scored_tokens: dict[str, float]) -> float | None:
    """Device-hours to score, given the forward-pass tokens per model name (None: a model's
    parameter count is unknown)."""
    hours = 0.0
    for model, tokens in scored_tokens.items():
        params = model_params(config.models[model].source)
        if params is None:
            return None
        hours += tokens / tokens_per_second(params, config, scoring=True) / 3600
    return hours


def _effective_batch(t: TrainingConfig) -> int:
    """Sequences per optimizer step (the same product as plan.effective_batch)."""
    return t.micro_batch_size * t.grad_accum_steps * t.num_workers


def _local_file(spec: SFTDatasetSpec) -> Path | None:
    if spec.source == "bundled":
        return BUNDLED_SFT_DIR / f"{spec.format}_sample.jsonl"
    path = Path(spec.source)
    return path if path.is_file() and path.suffix in (".json", ".jsonl", ".parquet") else None


def _capped(size: int | None, max_samples: int | None) -> int | None:
    if size is None or max_samples is None:
        return size
    return min(size, max_samples)


def _rows(path: Path) -> tuple[int, list[dict]]:
    """Rows in a local SFT file, and up to ROWS_FOR_LENGTH of them to measure lengths on."""
    if path.suffix == ".parquet":
        file = pq.ParquetFile(path)
        batch = next(file.iter_batches(batch_size=ROWS_FOR_LENGTH), None)
        return file.metadata.num_rows, [] if batch is None else batch.to_pylist()
    text = path.read_text()
    if path.suffix == ".json" and text.lstrip().startswith("["):  # a JSON array of rows
        rows = json.loads(text)
        return len(rows), rows[:ROWS_FOR_LENGTH]
    lines = [line for line in text.splitlines() if line.strip()]  # JSON lines
    return len(lines), [json.loads(line) for line in lines[:ROWS_FOR_LENGTH]]


def _tokens(fmt: str, row: dict) -> int:
    """~tokens of one row: its message text (the fields trainers/sft_data.py's adapters read)
    at 4 characters per token, plus the chat template's markers per message. The template's
    own system prompt, if it adds one, is not counted."""
    if fmt == "alpaca":
        chars = sum(len(str(row.get(key) or "")) for key in ("instruction", "input", "output"))
        messages = 2
    else:
        key, field = ("messages", "content") if fmt == "tulu" else ("conversations", "value")
        turns = [turn for turn in row.get(key) or [] if isinstance(turn, dict)]
        chars = sum(len(str(turn.get(field) or "")) for turn in turns)
        messages = len(turns)
    return math.ceil(chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * messages


def _safetensors_params(path: Path) -> int:
    """Elements in a safetensors file, from its JSON header (the first 8 bytes give its size)."""
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")


def _config_params(cfg: dict) -> float | None:
    """A decoder-only transformer's parameters from its config.json (Llama/Mistral/Gemma-like:
    attention with grouped KV heads, a gated MLP, embeddings tied or not); None if fields lack."""
    try:
        d, layers, vocab = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
        heads, ff = cfg["num_attention_heads"], cfg["intermediate_size"]
    except KeyError:
        return None
    head_dim = cfg.get("head_dim") or d // heads
    kv = cfg.get("num_key_value_heads") or heads
    attention = 2 * d * heads * head_dim + 2 * d * kv * head_dim
    per_layer = attention + 3 * d * ff + 2 * d  # q/o, k/v, gate/up/down, two norms
    embeddings = vocab * d * (1 if cfg.get("tie_word_embeddings", True) else 2)
    return float(layers * per_layer + embeddings + d)


def price_lines(
    config: SweepConfig, trials: list[TrialSpec], scored_tokens: dict[str, float]
) -> list[str]:
    """The dry run's priced part: a table per model x SFT dataset, then the sweep's totals."""
    t, costs = config.training, training_costs(config, trials)
    device = "GPU" if config.resources.use_gpu else "worker"
    header = (
        "model", "params", "dataset", "convs", "tok/conv", "steps", "tokens", "time",
        "ckpt", "ckpts", "written", f"{device} time",
    )  # fmt: skip
    rows = []
    for c in costs:
        mark, timed = c.mark, _timed_bytes(c, t)
        rows.append((
            c.model, _count(c.params), c.dataset, _count(c.data.conversations, exact=True),
            f"{mark}{c.data.tokens_per_conversation:,.0f}", _count(c.steps, exact=True),
            _count(c.tokens, mark), _duration(c.hours, mark), _bytes(c.checkpoint_bytes),
            _count(c.checkpoints, mark if timed else "", exact=True),
            _bytes(c.written_bytes, mark if timed else ""),
            _duration(None if c.hours is None else c.hours * t.num_workers, mark),
        ))  # fmt: skip
    precision = training_precision(config)
    per_param = (
        "fp32 weights 4 B + Adam moments 8 B = 12 B"
        if precision == "fp32"
        else f"{precision} weights 2 B + fp32 master weights 4 B + Adam moments 8 B = 14 B"
    )
    counts = sorted({c.trials for c in costs})
    return [
        f"training, per trial ({'/'.join(map(str, counts))} trials per row; ~ estimate, "
        "<= upper bound):",
        *_table(header, rows),
        f"  ckpt: one resumable DeepSpeed checkpoint, all {t.num_workers} workers together "
        f"(ZeRO-{t.zero_stage} partitions it, the total stays):",
        f"    {per_param} per parameter; written adds the exported HF model, "
        f"{4 if precision == 'fp32' else 2} B per parameter",
        f"  ckpts: {_checkpoint_rule(t)}",
        f"  tok/conv: {_length_note(costs, t.max_seq_len)}",
        *_sweep_lines(config, costs, scored_tokens, device),
    ]


def _sweep_lines(
    config: SweepConfig, costs: list[TrainingCost], scored_tokens: dict[str, float], device: str
) -> list[str]:
    e, workers = config.estimate, config.training.num_workers
    mark = "~" if all(c.data.counted for c in costs) else "<="
    timed = [c for c in costs if _timed_bytes(c, config.training)]
    bytes_mark = "" if not timed else "~" if all(c.data.counted for c in timed) else "<="

    def total(per_trial: Callable[[TrainingCost], float | None]) -> float | None:
        """Sum over the sweep's trials; None if any row's figure is unknown."""
        values = [(per_trial(c), c.trials) for c in costs]
        return None if any(v is None for v, _ in values) else sum(v * n for v, n in values)

    train_tokens = total(lambda c: c.tokens)
    written, kept = total(lambda c: c.written_bytes), total(lambda c: c.kept_bytes)
    train_h = total(lambda c: None if c.hours is None else c.hours * workers)
    score_h = scoring_hours(config, scored_tokens)
    both = None if train_h is None or score_h is None else train_h + score_h
    return [
        f"sweep: training tokens {_count(train_tokens, mark)}, scoring tokens "
        f"~{_count(sum(scored_tokens.values()))}; written {_bytes(written, bytes_mark)}, kept "
        f"at the end {_bytes(kept, bytes_mark)} (Ray Train keeps {KEPT_CHECKPOINTS} per trial: "
        "the export and the latest ckpt)",
        f"sweep {device}-hours (ESTIMATE): training {_hours(train_h, mark)}, scoring "
        f"{_hours(score_h, '~')}, total {_hours(both, mark)}",
        f"  at {e.peak_tflops:g} TFLOPS peak per {device}, {e.mfu:.0%} MFU training, "
        f"{(e.scoring_mfu or e.mfu):.0%} scoring (`estimate:` in the sweep file): tokens/s = "
        "MFU x peak / (6 x params) to train, / (2 x params) to score",
    ]


def _length_note(costs: list[TrainingCost], max_seq_len: int) -> str:
    notes = []
    if any(c.data.counted for c in costs):
        notes.append(
            f"~ from the local text (chars/{CHARS_PER_TOKEN} + {TOKENS_PER_MESSAGE} per message; "
            "a template's own system prompt not counted)"
        )
    if not all(c.data.counted for c in costs):
        notes.append(f"<= max_seq_len {max_seq_len} (lengths unknown offline)")
    return "; ".join(notes)


def _timed_bytes(c: TrainingCost, t: TrainingConfig) -> bool:
    """Whether a row's checkpoint count (and bytes) rest on the estimated time: by the clock."""
    return t.checkpoint_every_minutes > 0 and bool(c.checkpoints)


def _checkpoint_rule(t: TrainingConfig) -> str:
    rules = []
    if t.checkpoint_every_steps:
        rules.append(f"every {t.checkpoint_every_steps} steps")
    if t.checkpoint_every_minutes > 0:
        rules.append(f"every {t.checkpoint_every_minutes:g} min of estimated time/trial")
    if not rules:
        return "none (no training.checkpoint_every_*), only the export"
    return f"resumable checkpoints {' or '.join(rules)}, not counting the final export"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """Columns padded to their widest cell: names left-aligned (first three), numbers right."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "  " + "  ".join(
            cell.ljust(w) if i < 3 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        )

    return [line(header), *(line(row) for row in rows)]


def _count(value: float | None, mark: str = "", *, exact: bool = False) -> str:
    """52,002 (exact) or 2.61B / 106M / 12k; "unknown" for None."""
    if value is None:
        return "unknown"
    if exact:
        return f"{mark}{value:,.0f}"
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{mark}{value / scale:.3g}{unit}"
    return f"{mark}{value:.3g}"


def _bytes(value: float | None, mark: str = "") -> str:
    """Decimal units, as disks are sold: 112 GB, 4.03 TB."""
    if value is None:
        return "unknown"
    for unit, scale in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{mark}{value / scale:.3g} {unit}"
    return f"{mark}{value:.0f} B"


def _duration(hours: float | None, mark: str) -> str:
    if hours is None:
        return "unknown"
    if hours >= 1:
        return f"{mark}{hours:,.1f} h"
    if hours * 60 >= 1:
        return f"{mark}{hours * 60:.0f} min"
    return f"{mark}{hours * 3600:.0f} s"


def _hours(hours: float | None, mark: str) -> str:
    if hours is None:
        return "unknown"
    return f"{mark}{hours:,.0f}" if hours >= 100 else f"{mark}{hours:.2g}"
