"""Sweep YAML -> validated `SweepConfig` (pydantic), with one-line errors naming file, key and fix.

Precedence: CLI flags > YAML > the defaults below. Relative paths in the YAML (datasets, models,
benchmark mirrors) are resolved against the YAML file's directory, so a sweep file means the same
thing from any working directory; `output_dir` is resolved against the working directory, like
any output flag.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from calsweep.schema import PositiveInt, Strict
from calsweep.storage import is_uri, join
from evaluators.benchmarks import BENCHMARKS, BUNDLED
from evaluators.metrics import HIGHER_IS_BETTER
from evaluators.settings import FewShot, ScoringSettings
from trainers.settings import (
    LabelSmoothing,
    LearningRate,
    SFTFormat,
    SFTRows,
    TrainingRecipe,
    WorkerGroup,
)

SFT_FILE_SUFFIXES = (".json", ".jsonl", ".parquet")


class ConfigError(ValueError):
    """A sweep file that cannot run; the message has one line per problem."""


class ModelSpec(Strict):
    """A base model: hub id, local HF directory, or `package:<module>/<file.gguf>`."""

    source: str


class SFTDatasetSpec(SFTRows):
    """An SFT dataset: hub id, local .json/.jsonl/.parquet file, or `bundled` (shipped sample)."""

    format: SFTFormat
    source: str


class Grid(Strict):
    """The sweep's axes; every combination is one trial."""

    learning_rate: list[LearningRate] = Field(min_length=1)
    label_smoothing: list[LabelSmoothing] = Field(min_length=1)
    model: list[str] = Field(min_length=1)
    sft_dataset: list[str] = Field(min_length=1)


class TrainingConfig(WorkerGroup, TrainingRecipe):  # fields: the recipe's, then the group's
    """The SFT recipe shared by all trials and the worker group of each (trainers.settings)."""


class BenchmarkEval(Strict):
    """Which part of one benchmark to score."""

    source: str = BUNDLED  # hub id, local mirror in hub layout, or the bundled sample
    split: str | None = None  # default: the benchmark's test split
    languages: Literal["all"] | list[str] = "all"
    limit: PositiveInt | None = None  # questions per split, seeded subsample
    subjects: list[str] | None = Field(default=None, min_length=1)  # subjects / categories


class EvaluationConfig(FewShot, ScoringSettings):
    """The scoring settings and k-shot count (evaluators.settings), and what the sweep scores."""

    benchmarks: dict[str, BenchmarkEval] = Field(min_length=1)
    num_actors: PositiveInt = 1
    evaluate_base_models: bool = True
    # Select one lr per (model, dataset, smoothing) by this metric's mean on the dev/validation
    # splits, then score only the selected checkpoints on the test splits (None: score all).
    select_lr_by: str | None = None

    @field_validator("select_lr_by")
    @classmethod
    def _known_metric(cls, value: str | None) -> str | None:
        if value is not None and value not in HIGHER_IS_BETTER:
            raise ValueError(f"unknown metric {value!r}; allowed: {', '.join(HIGHER_IS_BETTER)}")
        return value

    @field_validator("benchmarks")
    @classmethod
    def _known_benchmarks(cls, value: dict[str, BenchmarkEval]) -> dict[str, BenchmarkEval]:
        for name, bench in value.items():
            if name not in BENCHMARKS:
                raise ValueError(f"unknown benchmark {name!r}; allowed: {', '.join(BENCHMARKS)}")
            spec = BENCHMARKS[name]
            if bench.languages != "all":
                unknown = [lang for lang in bench.languages if lang not in spec.languages]
                if unknown or not bench.languages:
                    raise ValueError(
                        f"{name}: unknown languages {unknown or '[]'}; "
                        f"allowed: 'all' or any of {' '.join(spec.languages)}"
                    )
            allowed_splits = (spec.test_split, spec.dev_split)
            if bench.split is not None and bench.split not in allowed_splits:
                raise ValueError(
                    f"{name}: unknown split {bench.split!r}; allowed: {allowed_splits}"
                )
        return value


class ResourcesConfig(Strict):
    """Ray resources per trial driver, training worker and scoring actor."""

    use_gpu: bool = False
    cpus_per_worker: Annotated[float, Field(gt=0)] = 1.0
    # The Tune trial driver only waits on its Train run. At 0 CPUs, trial drivers that Tune
    # restores all at once (it ignores max_concurrent_trials on restore, Ray issue 40652) cannot
    # hold the CPUs their Train workers need.
    cpus_per_trial_driver: Annotated[float, Field(ge=0)] = 0.0
    cpus_per_scoring_actor: Annotated[float, Field(gt=0)] = 1.0
    gpus_per_scoring_actor: Annotated[float, Field(ge=0)] = 0.0
    # Checkpoints are scored while other trials train. shared: scoring actors take free
    # resources as trials leave them (nothing idles, but scoring waits while trials fill the
    # cluster); reserved: evaluation.num_actors x the above are held for scoring all sweep long
    # (results stream at once; training gets that much less).
    scoring: Literal["shared", "reserved"] = "shared"


class EstimateConfig(Strict):
    """The throughput that `--dry-run` prices the sweep at: an assumption, not a measurement.

    Per device (a GPU, or a CPU worker): tokens/s = mfu * peak / (6 * params) for training
    (forward + backward) and scoring_mfu * peak / (2 * params) for scoring (forward only).
    Defaults: an H100 SXM's dense bf16 peak at 40% model-FLOPs utilisation.
    """

    peak_tflops: Annotated[float, Field(gt=0)] = 989.0
    mfu: Annotated[float, Field(gt=0, le=1)] = 0.4
    scoring_mfu: Annotated[float, Field(gt=0, le=1)] | None = None  # None: the same as mfu


class TrackingConfig(Strict):
    tracking_uri: str | None = None  # default: sqlite in the sweep's output directory
    experiment: str | None = None  # default: the sweep name


class SweepConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    output_dir: str = "runs"
    # Ray Tune/Train checkpoints, exported models and trial records: a local or shared path, or
    # a URI such as s3://bucket/prefix (default: <output_dir>/<name>/ray).
    storage: str | None = None
    seed: int = 0
    models: dict[str, ModelSpec] = Field(min_length=1)
    sft_datasets: dict[str, SFTDatasetSpec] = Field(min_length=1)
    grid: Grid
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig
    resources: ResourcesConfig = ResourcesConfig()
    tracking: TrackingConfig = TrackingConfig()
    estimate: EstimateConfig = EstimateConfig()

    @model_validator(mode="after")
    def _grid_names_defined(self) -> SweepConfig:
        for axis, defined in (("model", self.models), ("sft_dataset", self.sft_datasets)):
            for name in getattr(self.grid, axis):
                if name not in defined:
                    section = "models" if axis == "model" else "sft_datasets"
                    raise ValueError(
                        f"grid.{axis}: {name!r} is not defined under {section}; "
                        f"defined: {', '.join(defined)}"
                    )
        return self

    @property
    def sweep_dir(self) -> Path:
        return Path(self.output_dir).expanduser().resolve() / self.name

    @property
    def storage_dir(self) -> str:
        """This sweep's storage location (a local path or a URI)."""
        if self.storage is None:
            return str(self.sweep_dir / "ray")
        return join(self.storage, self.name)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepConfig:
    """Read, resolve paths in and validate a sweep YAML, with `overrides` (from the command line)
    merged over it; raise ConfigError naming each problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such sweep file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    overrides = overrides or {}
    try:
        config = SweepConfig.model_validate(merge(raw, overrides))
    except ValidationError as err:
        given = " (set on the command line)"
        lines = [
            _format_error(path, e) + given * _within(raw, overrides, e["loc"]) for e in err.errors()
        ]
        raise ConfigError("\n".join(lines)) from None
    return _resolve_paths(config, path.parent.resolve())


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with `override` laid over it: mappings merge key by key, anything else replaces
    (so `--tracking-uri` keeps the YAML's `tracking.experiment`, and a list is set whole)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_set(items: list[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` items -> one nested override; KEY is a dotted path, VALUE is YAML
    (`5`, `[1e-5, 5e-5]`, `null`), and a later item wins over an earlier one."""
    override: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(
                f"--set {item!r}: expected KEY=VALUE with a dotted KEY, e.g. training.max_steps=5"
            )
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(
                f"--set {item!r}: the value is not valid YAML (a list is written [a, b])"
            ) from None
        for part in reversed(parts):
            value = {part: value}
        override = merge(override, value)
    return override


def _within(base: Any, override: Any, loc: tuple[Any, ...]) -> bool:
    """Whether `merge(base, override)` took the value at `loc` (a pydantic error location) from
    `override`: the walk reaches a value that replaced the base's whole."""
    for part in loc:
        if not isinstance(override, dict) or not isinstance(base, dict):
            break
        if part not in override:
            return False
        base, override = base.get(part), override[part]
    return bool(loc) and not (isinstance(override, dict) and isinstance(base, dict))


def _resolve_paths(config: SweepConfig, base: Path) -> SweepConfig:
    """Make local sources absolute (relative to the YAML) and check that they exist."""
    problems: list[str] = []

    def resolve(key: str, source: str, is_path: bool) -> str:
        if not is_path:
            return source
        resolved = (base / Path(source).expanduser()).resolve()
        if not resolved.exists():
            problems.append(f"{key}: {source!r} does not exist (resolved to {resolved})")
        return str(resolved)

    models = {
        name: spec.model_copy(
            update={"source": resolve(f"models.{name}.source", spec.source, _is_path(spec.source))}
        )
        for name, spec in config.models.items()
    }
    datasets = {
        name: spec.model_copy(
            update={
                "source": resolve(
                    f"sft_datasets.{name}.source",
                    spec.source,
                    _is_path(spec.source) or spec.source.endswith(SFT_FILE_SUFFIXES),
                )
            }
        )
        for name, spec in config.sft_datasets.items()
    }
    benchmarks = {
        name: bench.model_copy(
            update={
                "source": resolve(
                    f"evaluation.benchmarks.{name}.source", bench.source, _is_path(bench.source)
                )
            }
        )
        for name, bench in config.evaluation.benchmarks.items()
    }
    if problems:
        raise ConfigError("\n".join(f"{base}: {p}" for p in problems))
    evaluation = config.evaluation.model_copy(update={"benchmarks": benchmarks})
    # Absolute now: trial drivers and workers run in other working directories.
    output_dir = str(Path(config.output_dir).expanduser().resolve())
    storage = config.storage
    if storage is not None and not is_uri(storage):
        storage = str(Path(storage).expanduser().resolve())
    return config.model_copy(
        update={
            "models": models,
            "sft_datasets": datasets,
            "evaluation": evaluation,
            "output_dir": output_dir,
            "storage": storage,
        }
    )


def _is_path(source: str) -> bool:
    """Paths are written as paths (`./x`, `../x`, `/x`, `~/x`); anything else is a hub id."""
    return source.startswith(("./", "../", "/", "~"))


def _format_error(path: Path, error: dict[str, Any]) -> str:
    loc = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(error["loc"][:-1])
        return f"{path}: {loc}: unknown key; allowed keys here: {', '.join(allowed)}"
    if error["type"] == "missing":
        return f"{path}: {loc}: required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    return f"{path}: {loc}: {message} (got {error.get('input')!r})"


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the pydantic model found at `loc` inside SweepConfig."""
    model: Any = SweepConfig
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        if issubclass(model, BaseModel) and part in model.model_fields:
            model = _model_in(model.model_fields[part].annotation)
        else:  # a free-form key (model or dataset name) inside a dict
            continue
    return list(model.model_fields) if model is not None else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as `dict[str, X]` or `X | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
