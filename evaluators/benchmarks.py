"""Benchmark registry (Global-MMLU, MMLU-ProX: 71 language splits) and question loading.

A benchmark is data: one `BenchmarkSpec` with its hub id, languages, splits and column names.
A source is the bundled SAMPLE (`BUNDLED`), a local directory in the hub layout
(`<config>/<split>-00000-of-00001.parquet` + README with the `configs:` block) or a hub id.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUNDLED = "bundled"  # the CLDR-generated SAMPLE shipped in evaluators/data/<name>_sample/
LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    display_name: str
    hub_id: str
    languages: tuple[str, ...]
    test_split: str
    dev_split: str  # few-shot / lr-selection split
    max_options: int
    id_column: str
    subject_column: str
    option_columns: tuple[str, ...]
    answer_index_column: str | None  # when set, must agree with the `answer` letter

    @property
    def splits(self) -> tuple[str, str]:
        return (self.test_split, self.dev_split)


def _codes(text: str) -> tuple[str, ...]:
    return tuple(text.split())


GLOBAL_MMLU = BenchmarkSpec(
    name="global_mmlu",
    display_name="Global-MMLU",
    hub_id="CohereLabs/Global-MMLU",
    languages=_codes(
        "am ar bn cs de el en es fa fil fr ha he hi id ig it ja ko ky lt mg ms ne nl ny pl pt ro "
        "ru si sn so sr sv sw te tr uk vi yo zh"
    ),
    test_split="test",
    dev_split="dev",
    max_options=4,
    id_column="sample_id",
    subject_column="subject",
    option_columns=("option_a", "option_b", "option_c", "option_d"),
    answer_index_column=None,
)
MMLU_PROX = BenchmarkSpec(
    name="mmlu_prox",
    display_name="MMLU-ProX",
    hub_id="li-lab/MMLU-ProX",
    languages=_codes(
        "af ar bn cs de en es fr hi hu id it ja ko mr ne pt ru sr sw te th uk ur vi wo yo zh zu"
    ),
    test_split="test",
    dev_split="validation",
    max_options=10,
    id_column="question_id",
    subject_column="category",
    option_columns=tuple(f"option_{i}" for i in range(10)),
    answer_index_column="answer_index",
)
BENCHMARKS: dict[str, BenchmarkSpec] = {spec.name: spec for spec in (GLOBAL_MMLU, MMLU_PROX)}


def get_benchmark(name: str) -> BenchmarkSpec:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def resolve_source(spec: BenchmarkSpec, source: str) -> str:
    """`BUNDLED` -> the sample directory; an existing directory -> its absolute path; anything
    else is a hub id, returned unchanged."""
    if source == BUNDLED:
        return str(Path(__file__).resolve().parent / "data" / f"{spec.name}_sample")
    path = Path(source).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if source.startswith(("/", "./", "../", "~")):  # clearly meant as a path: don't ask the hub
        raise ValueError(f"{spec.display_name} source directory {source!r} does not exist")
    return source


@dataclass(frozen=True)
class Question:
    benchmark: str
    language: str
    split: str
    question_id: str
    subject: str
    question: str
    options: tuple[str, ...]  # only the real options; K = len(options) varies
    answer_index: int


def load_questions(
    benchmark: str,
    language: str,
    split: str,
    source: str = BUNDLED,
    limit: int | None = None,
    seed: int = 0,
    subjects: Sequence[str] | None = None,
) -> list[Question]:
    """Questions of one split, in the source's order. `subjects` filters first; then `limit`
    keeps a seeded random subset (same seed -> same rows, original order kept)."""
    spec = get_benchmark(benchmark)
    _check_language_and_split(spec, language, split)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of questions, got {limit}")
    rows = _read_rows(spec, resolve_source(spec, source), language, split)
    questions = [_to_question(spec, language, split, row) for row in rows]
    if subjects is not None:
        _check_subjects(spec, language, split, {q.subject for q in questions}, subjects)
        questions = [q for q in questions if q.subject in set(subjects)]
    if limit is not None and limit < len(questions):
        keep = sorted(random.Random(seed).sample(range(len(questions)), limit))
        questions = [questions[i] for i in keep]
    return questions


def check_split(
    benchmark: str,
    language: str,
    split: str,
    source: str = BUNDLED,
    subjects: Sequence[str] | None = None,
) -> None:
    """Fail fast, before any training, when the source lacks the split or a subject: only the
    subject column is read, nothing is parsed into questions."""
    spec = get_benchmark(benchmark)
    _check_language_and_split(spec, language, split)
    import datasets

    path = resolve_source(spec, source)
    try:
        dataset = datasets.load_dataset(path, language, split=split)
    except (ValueError, OSError) as err:  # missing config/split, unreachable hub, bad mirror
        raise ValueError(
            f"{spec.display_name} {language}/{split} cannot be loaded from {source!r}: "
            f"{_load_problem(spec, path, language, err)}"
        ) from err
    if subjects is not None:
        _check_subjects(spec, language, split, set(dataset.unique(spec.subject_column)), subjects)


def _load_problem(spec: BenchmarkSpec, path: str, language: str, err: Exception) -> str:
    """What `datasets` could not load, in one line. A local mirror names the missing files:
    `datasets` reads every split of a config, so a missing dev file also fails the test split."""
    config_dir = Path(path) / language
    if Path(path).is_dir():
        missing = [s for s in spec.splits if not any(config_dir.glob(f"{s}-*"))]
        if missing:
            files = ", ".join(f"{language}/{s}-00000-of-00001.parquet" for s in missing)
            return f"the mirror has no {files} (hub layout: <config>/<split>-*.parquet)"
    return str(err).splitlines()[0][:300]


def _check_language_and_split(spec: BenchmarkSpec, language: str, split: str) -> None:
    if language not in spec.languages:
        allowed = ", ".join(spec.languages)
        raise ValueError(f"{spec.display_name} has no language {language!r}; allowed: {allowed}")
    if split not in spec.splits:
        raise ValueError(
            f"{spec.display_name} has no split {split!r}; allowed: {', '.join(spec.splits)}"
        )


def _check_subjects(
    spec: BenchmarkSpec, language: str, split: str, available: set[str], wanted: Sequence[str]
) -> None:
    unknown = sorted(set(wanted) - available)
    if unknown:
        raise ValueError(
            f"{spec.display_name} {language}/{split} has no subject(s) {unknown}; "
            f"available: {', '.join(sorted(available))}"
        )


def _read_rows(spec: BenchmarkSpec, source: str, language: str, split: str) -> list[dict]:
    columns = [
        spec.id_column,
        spec.subject_column,
        "question",
        *spec.option_columns,
        "answer",
        *([spec.answer_index_column] if spec.answer_index_column else []),
    ]
    # One path for hub ids and local directories. Measured on the bundled sample (2 CPU cores):
    # ~0.035 s per split, all 71 test splits in 1.8-2.7 s; a cold 14k-row split ~0.05-0.3 s. That
    # is below the cost that would justify reading local parquet files behind its back (which
    # would also bypass the README's split mapping). Note that it resolves the data files of every
    # config listed in the README, so a partial local mirror needs a README listing only its own.
    import datasets  # heavy import (~0.7 s); only needed here

    dataset = datasets.load_dataset(source, language, split=split)
    return dataset.select_columns(columns).to_list()


def _to_question(spec: BenchmarkSpec, language: str, split: str, row: dict[str, Any]) -> Question:
    sample_id = str(row[spec.id_column])
    where = f"{spec.display_name} {language}/{split} sample {sample_id!r}"
    values = [row[column] for column in spec.option_columns]
    k = next((i for i, value in enumerate(values) if value is None), len(values))
    if any(value is not None for value in values[k:]):
        raise ValueError(f"{where}: options after the first missing one ({values}) must be null")
    options = tuple(str(value) for value in values[:k])
    choices = ", ".join(f"{LETTERS[i]}={option!r}" for i, option in enumerate(options))
    if k < 2:
        raise ValueError(f"{where}: needs at least two options, has {k} ({choices or 'none'})")
    letter = str(row["answer"]).strip().upper()
    if len(letter) != 1 or letter not in LETTERS[:k]:
        raise ValueError(f"{where}: gold answer {row['answer']!r} is not one of {choices}")
    index = LETTERS.index(letter)
    if spec.answer_index_column and row[spec.answer_index_column] != index:
        raise ValueError(
            f"{where}: answer {letter!r} disagrees with "
            f"{spec.answer_index_column}={row[spec.answer_index_column]!r} ({choices})"
        )
    return Question(
        benchmark=spec.name,
        language=language,
        split=split,
        question_id=sample_id,
        subject=str(row[spec.subject_column]),
        question=str(row["question"]),
        options=options,
        answer_index=index,
    )
