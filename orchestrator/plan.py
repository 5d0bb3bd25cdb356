"""Pure planning: a validated config -> the jobs a sweep runs, fully resolved.

The plan is the program: Ray Tune runs exactly `Plan.jobs` (each with the settings its workers
train with), and the score jobs of every model come from `Plan.score_jobs`. Nothing here touches
Ray, models or the network, so the plan (and `--dry-run`) is instant and testable. A trial's id
is a hash of everything that determines its result.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import pyarrow.parquet as pq

from calsweep.schema import fields_of
from evaluators.benchmarks import BENCHMARKS, resolve_source
from evaluators.evaluate import SplitRequest
from orchestrator.config import SweepConfig
from orchestrator.cost import price_lines, training_precision
from trainers.settings import SFTRows, TrainingRecipe, TrainSettings

# Published split sizes (questions per language) and mean prompt+options tokens per question
# (SmolLM2 tokenizer, zero-shot, measured on English), for planning real-benchmark sweeps offline.
PUBLISHED_SPLIT_SIZES = {
    ("global_mmlu", "test"): 14042,
    ("global_mmlu", "dev"): 285,
    ("mmlu_prox", "test"): 11829,
    ("mmlu_prox", "validation"): 70,
}
Phase = Literal["dev", "test"]  # a trial scored for lr selection, or for the results

TOKENS_PER_QUESTION = {"global_mmlu": 120, "mmlu_prox": 330}


@dataclass(frozen=True)
class TrialSpec:
    """One grid point: a base model fine-tuned on one SFT dataset with one lr and smoothing."""

    model: str
    sft_dataset: str
    learning_rate: float
    label_smoothing: float
    seed: int

    @property
    def run_name(self) -> str:
        return (
            f"{self.model}|{self.sft_dataset}|lr={self.learning_rate:g}|ls={self.label_smoothing:g}"
        )

    @property
    def data_key(self) -> str:
        """Trials that differ only in lr and smoothing train on the same prepared data."""
        return f"{self.model}|{self.sft_dataset}"

    @property
    def configuration(self) -> tuple[str, str, float]:
        """What lr selection chooses one lr for: (model, dataset, smoothing)."""
        return (self.model, self.sft_dataset, self.label_smoothing)


def trial_id(config: SweepConfig, spec: TrialSpec) -> str:
    """Hash of the resolved model, data and recipe: equal ids mean equal training runs."""
    payload = {
        "trial": asdict(spec),
        "model": config.models[spec.model].model_dump(),
        "data": config.sft_datasets[spec.sft_dataset].model_dump(),
        "training": config.training.model_dump(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def train_settings(config: SweepConfig, spec: TrialSpec) -> TrainSettings:
    """The workers' settings of one trial. `model_path` is the configured source: the trial
    driver resolves it (`calsweep.models.resolve_model`) on its node, so planning stays pure."""
    dataset = config.sft_datasets[spec.sft_dataset]
    return TrainSettings(
        model_path=config.models[spec.model].source,
        sft_format=dataset.format,
        sft_source=dataset.source,
        **fields_of(SFTRows, dataset),
        learning_rate=spec.learning_rate,
        label_smoothing=spec.label_smoothing,
        seed=spec.seed,
        **fields_of(TrainingRecipe, config.training),
    )


@dataclass(frozen=True)
class TrialJob:
    """What one Tune trial runs: the grid point, its id and its workers' settings."""

    id: str
    spec: TrialSpec
    settings: TrainSettings

    @property
    def run_name(self) -> str:
        return self.spec.run_name

    @property
    def train_run_name(self) -> str:
        """The Ray Train run's name: a re-run of the job finds its checkpoints by it."""
        return f"train-{self.id}"


def base_key(model: str) -> str:
    """The ledger and score-cache key of an untuned base model."""
    return f"base:{model}"


@dataclass(frozen=True)
class Plan:
    jobs: list[TrialJob]
    base_models: list[str]
    splits: list[SplitRequest]
    dev_splits: list[SplitRequest]  # scored as each trial finishes, only when selecting the lr

    @property
    def trials(self) -> list[TrialSpec]:
        return [job.spec for job in self.jobs]

    @property
    def selected_trials(self) -> int:
        """Trials scored on the test splits: all, or one lr per (model, dataset, smoothing)."""
        if not self.dev_splits:
            return len(self.trials)
        return len({t.configuration for t in self.trials})

    def first_phase(self, model_key: str) -> Phase:
        """What a model is scored on as soon as it exists: a base model or (without lr
        selection) a trial on the test splits; with lr selection a trial on the dev splits,
        and on the test splits only once its lr is selected."""
        if self.dev_splits and not model_key.startswith("base:"):
            return "dev"
        return "test"

    def phase_splits(self, phase: Phase) -> list[SplitRequest]:
        return self.dev_splits if phase == "dev" else self.splits


def expand(config: SweepConfig) -> Plan:
    """The cartesian product of the grid axes, the base models to score, and the splits."""
    grid = config.grid
    specs = [
        TrialSpec(model, dataset, lr, beta, config.seed)
        for model, dataset, lr, beta in itertools.product(
            grid.model, grid.sft_dataset, grid.learning_rate, grid.label_smoothing
        )
    ]
    jobs = [TrialJob(trial_id(config, s), s, train_settings(config, s)) for s in specs]
    base_models = list(grid.model) if config.evaluation.evaluate_base_models else []
    splits, dev_splits = [], []
    e = config.evaluation
    for name, bench in e.benchmarks.items():
        spec = BENCHMARKS[name]
        languages = spec.languages if bench.languages == "all" else bench.languages
        common = {
            "source": resolve_source(spec, bench.source),
            "limit": bench.limit,
            "seed": config.seed,
            "num_fewshot": e.num_fewshot,
            "subjects": tuple(bench.subjects) if bench.subjects else None,
        }
        split = bench.split or spec.test_split
        splits += [SplitRequest(name, lang, split, **common) for lang in languages]
        if e.select_lr_by:
            dev_splits += [SplitRequest(name, lang, spec.dev_split, **common) for lang in languages]
    return Plan(jobs, base_models, splits, dev_splits)


def split_size(item: SplitRequest) -> int:
    """Questions in a split: counted in local parquet files, else the published sizes."""
    local = Path(item.source) / item.language
    files = sorted(local.glob(f"{item.split}-*.parquet")) if local.is_dir() else []
    if files and item.subjects:
        column = BENCHMARKS[item.benchmark].subject_column
        wanted = set(item.subjects)
        size = sum(
            sum(value in wanted for value in pq.read_table(f, columns=[column])[column].to_pylist())
            for f in files
        )
    elif files:
        size = sum(pq.read_metadata(f).num_rows for f in files)
    else:  # hub data: the whole split's size is an upper bound under a subject filter
        size = PUBLISHED_SPLIT_SIZES[(item.benchmark, item.split)]
    return min(size, item.limit) if item.limit else size


def describe(config: SweepConfig, plan: Plan) -> str:
    """The dry-run text: what would be trained and scored, and how much."""
    questions = _questions(config, plan.splits)
    dev_questions = _questions(config, plan.dev_splits)
    n_models = plan.selected_trials + len(plan.base_models)
    per_model_tokens = _tokens(questions)
    lines = [
        f"sweep {config.name!r} -> {config.sweep_dir}"
        + (f" (checkpoints and exports in {config.storage_dir})" if config.storage else ""),
        f"trials: {len(plan.trials)} "
        f"({' x '.join(str(len(v)) for v in config.grid.model_dump().values())} grid: "
        f"{' x '.join(config.grid.model_dump())})",
        f"base-model evaluations: {len(plan.base_models)}",
        f"splits per model: {len(plan.splits)} "
        f"({', '.join(f'{b}: {sum(s.benchmark == b for s in plan.splits)}' for b in questions)})",
        f"questions per model: {sum(questions.values()):,} "
        f"({', '.join(f'{b}: {n:,}' for b, n in questions.items())})",
        f"models to score: {n_models}; questions in all: {sum(questions.values()) * n_models:,}",
        f"estimated tokens to score: {per_model_tokens * n_models:,} "
        f"(~{per_model_tokens:,} per model, zero-shot)",
        *_selection_lines(config, plan, questions, dev_questions),
        f"training: {config.training.num_workers} workers x micro-batch "
        f"{config.training.micro_batch_size} x grad-accum {config.training.grad_accum_steps} = "
        f"effective batch {effective_batch(config)}, ZeRO-{config.training.zero_stage}, "
        f"{training_precision(config)}"
        + (" (auto)" if config.training.precision == "auto" else ""),
        f"SFT data: tokenised once per model x dataset with Ray Data "
        f"({len({t.data_key for t in plan.trials})} data sets for "
        f"{len(plan.trials)} trials), kept in {config.storage_dir}/prepared",
        *price_lines(config, plan.trials, _scored_tokens(plan, per_model_tokens, dev_questions)),
    ]
    return "\n".join(lines)


def _scored_tokens(plan: Plan, test_tokens: int, dev: dict[str, int]) -> dict[str, float]:
    """Forward-pass tokens to score per base model name: its untuned model, its checkpoints on
    the test splits (all, or the selected ones) and, with lr selection, every trial on dev."""
    tokens = {name: 0.0 for name in dict.fromkeys(t.model for t in plan.trials)}
    for name in plan.base_models:
        tokens[name] = tokens.get(name, 0.0) + test_tokens
    if plan.dev_splits:
        for trial in plan.trials:
            tokens[trial.model] += _tokens(dev)
        tested = {t.configuration for t in plan.trials}
    else:
        tested = {(t.model, t.sft_dataset, t.learning_rate, t.label_smoothing) for t in plan.trials}
    for key in tested:
        tokens[key[0]] += test_tokens
    return tokens


def _questions(config: SweepConfig, splits: list[SplitRequest]) -> dict[str, int]:
    questions = {b: 0 for b in config.evaluation.benchmarks}
    for item in splits:
        questions[item.benchmark] += split_size(item)
    return questions


def _tokens(questions: dict[str, int]) -> int:
    return sum(TOKENS_PER_QUESTION[b] * n for b, n in questions.items())


def _selection_lines(
    config: SweepConfig, plan: Plan, questions: dict[str, int], dev: dict[str, int]
) -> list[str]:
    """With lr selection: the dev cost and what skipping unselected checkpoints saves."""
    if not plan.dev_splits:
        return []
    skipped = len(plan.trials) - plan.selected_trials
    saved_q = sum(questions.values()) * skipped - sum(dev.values()) * len(plan.trials)
    saved_t = _tokens(questions) * skipped - _tokens(dev) * len(plan.trials)
    return [
        f"lr selection by dev {config.evaluation.select_lr_by}: {len(plan.trials)} trials x "
        f"{sum(dev.values()):,} dev questions, then {plan.selected_trials} selected checkpoints "
        f"on the test splits",
        f"saving vs scoring every checkpoint: {saved_q:,} questions, ~{saved_t:,} tokens",
    ]


def effective_batch(config: SweepConfig) -> int:
    t = config.training
    return t.micro_batch_size * t.grad_accum_steps * t.num_workers
