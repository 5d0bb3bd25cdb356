"""Generate the bundled SAMPLE of Global-MMLU and MMLU-ProX from CLDR locale data (via babel).

    python -m evaluators.make_sample [--out evaluators/data]

Writes `<out>/global_mmlu_sample/` and `<out>/mmlu_prox_sample/` in exactly the hub layout
(`<config>/<split>-00000-of-00001.parquet` + README.md with the `configs:` block) for all 71
splits, with the real column schemas. The questions are NOT benchmark questions: they are
multiple-choice questions composed only of CLDR strings, in each language's own script (month
and weekday sequences, territory -> currency, a language's own name -> its name here). Where
CLDR lacks the data for a language, that subject uses English data and the README says so.
Output is deterministic for a given babel/CLDR version.
"""

from __future__ import annotations

import argparse
import collections
import copy
import datetime
import functools
import random
from dataclasses import dataclass
from pathlib import Path

import babel
import babel.core
import babel.localedata
import babel.numbers
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from evaluators.benchmarks import BENCHMARKS, BenchmarkSpec

SEED = "calsweep-cldr-sample-v1"
N_TEST, N_DEV = 40, 10
SUBJECTS = ("cldr_months", "cldr_weekdays", "cldr_currencies", "cldr_languages")
MIN_ITEMS = 20  # fewer territories/languages than this in a locale -> use English for the subject
# Currencies in tender on a fixed day, so that re-running the script later gives the same data.
CURRENCY_DATE = datetime.date(2024, 1, 1)
LETTERS = "ABCDEFGHIJ"


def locale_data(code: str) -> babel.localedata.LocaleDataDict:
    """A private copy of a locale's data. Why: babel resolves inherited aliases (e.g. stand-alone
    month names) by writing into dicts shared with `root`, so reading one sparse locale (`ny`)
    silently changes the month names every later locale returns in the same process."""
    return babel.localedata.LocaleDataDict(copy.deepcopy(babel.localedata.load(code)))


@dataclass(frozen=True)
class Pool:
    """All questions of one subject in one locale: (question, gold) items and the answer set."""

    locale: str
    items: list[tuple[str, str]]
    answers: list[str]


def _join(data, parts: list[str]) -> str:
    # CLDR's own list separator ("{0}, {1}", "{0}、{1}", "{0}، {1}", ...), ending in an ellipsis.
    middle = data["list_patterns"]["standard"]["middle"]
    text = parts[0]
    for part in [*parts[1:], "…"]:
        text = middle.format(text, part)
    return text


def _sequence_pool(code: str, data, names: list[str]) -> Pool:
    """Cyclic sequences of 3 or 4 consecutive names; the answer is the next name."""
    items = []
    for length in (3, 4):
        for start in range(len(names)):
            seq = [names[(start + i) % len(names)] for i in range(length)]
            items.append((_join(data, seq), names[(start + length) % len(names)]))
    return Pool(code, items, names)


def months_pool(code: str, data) -> Pool:
    return _sequence_pool(
        code, data, [data["months"]["stand-alone"]["wide"][m] for m in range(1, 13)]
    )


def weekdays_pool(code: str, data) -> Pool:
    return _sequence_pool(code, data, [data["days"]["stand-alone"]["wide"][d] for d in range(7)])


def currencies_pool(code: str, data) -> Pool:
    """Territory name -> the name of its only legal-tender currency."""
    territories, currencies = data["territories"], data["currency_names"]
    items = []
    for territory in sorted(territories):
        if not (len(territory) == 2 and territory.isalpha()):
            continue  # skip regions ("001") and macro-regions
        tender = babel.numbers.get_territory_currencies(territory, CURRENCY_DATE, tender=True)
        if len(tender) == 1 and tender[0] in currencies:
            items.append((f"{territories[territory]} → ?", currencies[tender[0]]))
    return Pool(code, items, sorted({gold for _, gold in items}))


@functools.cache
def autonyms() -> dict[str, str]:
    """Language code -> the language's name for itself, for every base-language CLDR locale."""
    codes = sorted(c for c in babel.localedata.locale_identifiers() if "_" not in c and c != "root")
    names = {code: locale_data(code)["languages"].get(code) for code in codes}
    counts = collections.Counter(names.values())  # "isiNdebele" is nd and nr: ambiguous, dropped
    return {code: name for code, name in names.items() if name and counts[name] == 1}


def languages_pool(code: str, data) -> Pool:
    """A language's name for itself (its autonym) -> its name in this language."""
    names = data["languages"]
    items = [
        (f"{autonym} → ?", names[other])
        for other, autonym in autonyms().items()
        if other != code and other in names and autonym != names[other]
    ]
    return Pool(code, items, sorted({gold for _, gold in items}))


def _months_ok(pool: Pool, root) -> bool:
    return pool.answers != [root["months"]["format"]["wide"][m] for m in range(1, 13)]


def _weekdays_ok(pool: Pool, root) -> bool:
    return pool.answers != [root["days"]["format"]["wide"][d] for d in range(7)]


def _lookups_ok(pool: Pool, root) -> bool:
    return len(pool.items) >= MIN_ITEMS and len(set(pool.answers)) >= 10


BUILDERS = {
    "cldr_months": (months_pool, _months_ok),
    "cldr_weekdays": (weekdays_pool, _weekdays_ok),
    "cldr_currencies": (currencies_pool, _lookups_ok),
    "cldr_languages": (languages_pool, _lookups_ok),
}


def build_pools(code: str) -> dict[str, Pool]:
    """One pool per subject; a subject CLDR lacks for `code` comes from English (pool.locale)."""
    root, data, english = locale_data("root"), locale_data(code), locale_data("en")
    pools = {}
    for subject, (build, usable) in BUILDERS.items():
        pool = build(code, data)
        pools[subject] = pool if usable(pool, root) else build("en", english)
    return pools


def _subject_counts(n: int) -> list[int]:
    return [n // len(SUBJECTS) + (i < n % len(SUBJECTS)) for i in range(len(SUBJECTS))]


def draw_questions(spec: BenchmarkSpec, code: str, pools: dict[str, Pool]) -> dict[str, list]:
    """Per split, a list of (subject, question, options, gold index, locale used) in subject
    order. Test and dev questions of a subject are disjoint draws from the same pool."""
    rng = random.Random(f"{SEED}/{spec.name}/{code}")
    splits = {spec.test_split: _subject_counts(N_TEST), spec.dev_split: _subject_counts(N_DEV)}
    drawn: dict[str, list] = {split: [] for split in splits}
    for s, subject in enumerate(SUBJECTS):
        pool = pools[subject]
        chosen = rng.sample(pool.items, sum(counts[s] for counts in splits.values()))
        for split, counts in splits.items():
            part, chosen = chosen[: counts[s]], chosen[counts[s] :]
            for question, gold in part:
                n_options = spec.max_options if spec.max_options == 4 else rng.randint(3, 10)
                distractors = [a for a in pool.answers if a != gold]
                options = rng.sample(distractors, min(n_options, len(pool.answers)) - 1)
                drawn[split].append([subject, question, options, gold, pool.locale])
    for rows in drawn.values():
        # Gold positions: balanced over A-D for Global-MMLU, uniform over the K options otherwise.
        balanced = [i % 4 for i in range(len(rows))]
        rng.shuffle(balanced)
        for i, (subject, question, options, gold, used) in enumerate(rows):
            index = balanced[i] if spec.max_options == 4 else rng.randrange(len(options) + 1)
            options.insert(index, gold)
            rows[i] = (subject, question, tuple(options), index, used)
    return drawn


def _source_note(used: str) -> str:
    return (
        f"Unicode CLDR {babel.core.get_cldr_version()} via babel {babel.__version__}, locale {used}"
    )


def global_mmlu_table(split: str, rows: list) -> pa.Table:
    records = []
    for i, (subject, question, options, index, used) in enumerate(rows):
        records.append(
            {
                "sample_id": f"{subject}/{split}/{i}",
                "subject": subject,
                "subject_category": "Other",
                "question": question,
                **{f"option_{c}": opt for c, opt in zip("abcd", options, strict=True)},
                "answer": LETTERS[index],
                "required_knowledge": None,
                "time_sensitive": None,
                "reference": _source_note(used),
                "culture": None,
                "region": None,
                "country": None,
                "cultural_sensitivity_label": "CA",
                "is_annotated": False,
            }
        )
    fields = [(name, pa.string()) for name in records[0] if name != "is_annotated"]
    return pa.Table.from_pylist(records, schema=pa.schema([*fields, ("is_annotated", pa.bool_())]))


def mmlu_prox_table(split: str, rows: list) -> pa.Table:
    id_offset = 0 if split == "validation" else N_DEV  # disjoint ids across splits, as on the hub
    records = []
    for i, (subject, question, options, index, used) in enumerate(rows):
        padded = list(options) + [None] * (10 - len(options))
        records.append(
            {
                "question_id": id_offset + i,
                "question": question,
                **{f"option_{j}": opt for j, opt in enumerate(padded)},
                "answer": LETTERS[index],
                "answer_index": index,
                "cot_content": "",
                "category": subject,
                "src": f"cldr-{used}",
                "question_id_src": id_offset + i,
            }
        )
    types = {"question_id": pa.int64(), "answer_index": pa.int64(), "question_id_src": pa.int64()}
    schema = pa.schema([(name, types.get(name, pa.string())) for name in records[0]])
    return pa.Table.from_pylist(records, schema=schema)


TABLES = {"global_mmlu": global_mmlu_table, "mmlu_prox": mmlu_prox_table}
PROVENANCE_COLUMN = {"global_mmlu": "reference", "mmlu_prox": "src"}


def generator_versions() -> dict[str, str]:
    """The versions the sample's content depends on: babel's release and the CLDR data inside it."""
    return {"babel": babel.__version__, "cldr": str(babel.core.get_cldr_version())}


def recorded_versions(sample_dir: Path) -> dict[str, str]:
    """The `generated_with` versions a sample's README front matter records."""
    front_matter = (sample_dir / "README.md").read_text(encoding="utf-8").split("---\n")[1]
    return yaml.safe_load(front_matter)["generated_with"]


def readme(spec: BenchmarkSpec, fallbacks: dict[str, list[str]]) -> str:
    versions = generator_versions()
    lines = [
        "---",
        f"pretty_name: {spec.display_name} SAMPLE (CLDR, not the benchmark)",
        "generated_with:",
        "  command: python -m evaluators.make_sample",
        *(f"  {name}: '{version}'" for name, version in versions.items()),
        "configs:",
    ]
    for code in spec.languages:
        lines += [f"- config_name: {code}", "  data_files:"]
        for split in (spec.test_split, spec.dev_split):
            lines += [f"  - split: {split}", f"    path: {code}/{split}-00000-of-00001.parquet"]
    lines += [
        "---",
        f"# {spec.display_name} SAMPLE — generated from CLDR locale data, NOT the benchmark",
        "",
        f"This directory mimics the hub layout and column schema of `{spec.hub_id}` so that the "
        "calsweep pipeline can run offline. Its questions are generated by "
        "`python -m evaluators.make_sample` from Unicode CLDR "
        f"{versions['cldr']} (babel {versions['babel']}, Unicode License v3): "
        "month and weekday sequences, territory -> currency, a language's autonym -> its name "
        "in the config's language. Scores on it say nothing about "
        f"{spec.display_name}.",
        "",
        f"Splits per config: `{spec.test_split}` ({N_TEST} questions), "
        f"`{spec.dev_split}` ({N_DEV}). Subjects: {', '.join(SUBJECTS)}. Each row names the CLDR "
        f"locale it was generated from in its `{PROVENANCE_COLUMN[spec.name]}` column.",
        "",
        "## Subjects generated from English CLDR data (the language's CLDR data lacks them)",
        "",
    ]
    lines += [f"- `{code}`: {', '.join(subjects)}" for code, subjects in fallbacks.items()]
    if not fallbacks:
        lines.append("- none")
    return "\n".join(lines) + "\n"


def write_sample(spec: BenchmarkSpec, out: Path, pools: dict[str, dict[str, Pool]]) -> None:
    root = out / f"{spec.name}_sample"
    fallbacks = {}
    for code in spec.languages:
        fallbacks_here = [s for s, p in pools[code].items() if p.locale != code]
        if fallbacks_here:
            fallbacks[code] = fallbacks_here
        for split, rows in draw_questions(spec, code, pools[code]).items():
            (root / code).mkdir(parents=True, exist_ok=True)
            table = TABLES[spec.name](split, rows)
            pq.write_table(
                table, root / code / f"{split}-00000-of-00001.parquet", compression="zstd"
            )
    (root / "README.md").write_text(readme(spec, fallbacks), encoding="utf-8")
    print(f"{root}: {len(spec.languages)} configs; English fallbacks: {fallbacks or 'none'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    args = parser.parse_args(argv)
    codes = sorted({code for spec in BENCHMARKS.values() for code in spec.languages})
    pools = {code: build_pools(code) for code in codes}
    for spec in BENCHMARKS.values():
        write_sample(spec, args.out, pools)


if __name__ == "__main__":
    main()
