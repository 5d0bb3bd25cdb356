"""Benchmark registry, loaders and the bundled CLDR sample (all 71 splits)."""

from __future__ import annotations

import collections
import pickle
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evaluators import make_sample
from evaluators.benchmarks import (
    BENCHMARKS,
    BUNDLED,
    GLOBAL_MMLU,
    MMLU_PROX,
    Question,
    check_split,
    get_benchmark,
    load_questions,
    resolve_source,
)

ALL_SPLITS = [
    (spec.name, language, split)
    for spec in BENCHMARKS.values()
    for language in spec.languages
    for split in spec.splits
]


@pytest.fixture(scope="module", autouse=True)
def private_datasets_cache(tmp_path_factory):
    # load_dataset writes an Arrow copy of every split it reads: keep it out of ~/.cache.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf_cache"))
        datasets.disable_progress_bars()
        yield
        datasets.enable_progress_bars()


@pytest.fixture(scope="module")
def bundled() -> dict[tuple[str, str, str], list[Question]]:
    return {key: load_questions(*key) for key in ALL_SPLITS}


def test_registry_has_the_71_splits():
    assert len(GLOBAL_MMLU.languages) == 42 and len(MMLU_PROX.languages) == 29
    assert GLOBAL_MMLU.splits == ("test", "dev") and MMLU_PROX.splits == ("test", "validation")
    assert get_benchmark("mmlu_prox").hub_id == "li-lab/MMLU-ProX"
    with pytest.raises(ValueError, match="global_mmlu, mmlu_prox"):
        get_benchmark("mmlu")


def test_every_bundled_split_loads_with_the_right_options(bundled):
    assert len(bundled) == 142  # 71 language splits x (test, dev/validation)
    for (name, language, split), questions in bundled.items():
        spec = BENCHMARKS[name]
        assert len(questions) == (40 if split == spec.test_split else 10), (name, language, split)
        for q in questions:
            assert (q.benchmark, q.language, q.split) == (name, language, split)
            k = len(q.options)
            assert (k == 4) if name == "global_mmlu" else (3 <= k <= 10), q
            assert len(set(q.options)) == k and 0 <= q.answer_index < k, q
        assert len({q.question_id for q in questions}) == len(questions)
    prox_ks = {len(q.options) for (n, *_), qs in bundled.items() if n == "mmlu_prox" for q in qs}
    assert min(prox_ks) == 3 and max(prox_ks) == 10


def test_bundled_gold_positions_are_roughly_uniform(bundled):
    positions = collections.Counter(
        q.answer_index for (name, *_), qs in bundled.items() if name == "global_mmlu" for q in qs
    )
    total = sum(positions.values())
    assert all(0.2 < positions[i] / total < 0.3 for i in range(4)), positions


def test_bundled_sample_is_in_the_languages_own_script(bundled):
    first = {lang: qs[0].options for (n, lang, split), qs in bundled.items() if split == "test"}
    assert any("\u0600" <= ch <= "\u06ff" for ch in "".join(first["ar"]))  # Arabic
    assert any("\u0400" <= ch <= "\u04ff" for ch in "".join(first["ru"]))  # Cyrillic
    assert any("\u0e00" <= ch <= "\u0e7f" for ch in "".join(first["th"]))  # Thai


def test_bundled_sample_is_labelled_and_keeps_dev_as_dev():
    for spec in BENCHMARKS.values():
        readme = (Path(resolve_source(spec, BUNDLED)) / "README.md").read_text(encoding="utf-8")
        assert "SAMPLE" in readme and "NOT the benchmark" in readme and "CLDR" in readme
    # Without the README's configs block, a dev-* file would be inferred as "validation".
    path = resolve_source(GLOBAL_MMLU, BUNDLED)
    assert sorted(datasets.load_dataset(path, "de")) == ["dev", "test"]
    assert len(datasets.load_dataset(path, "de", split="dev")) == 10


def test_generator_reproduces_the_bundled_data(tmp_path):
    installed = make_sample.generator_versions()
    for spec in BENCHMARKS.values():
        recorded = make_sample.recorded_versions(Path(resolve_source(spec, BUNDLED)))
        assert recorded == {"command": "python -m evaluators.make_sample", **installed}, (
            f"the bundled {spec.name} sample was generated with babel {recorded['babel']} (CLDR "
            f"{recorded['cldr']}), but babel {installed['babel']} (CLDR {installed['cldr']}) is "
            "installed: install the locked set (pip install -r requirements.lock), or refresh "
            "the lock and regenerate the sample together (README: 'Refreshing the lock')"
        )
    make_sample.main(["--out", str(tmp_path)])
    for spec in BENCHMARKS.values():
        ours = Path(resolve_source(spec, BUNDLED))
        theirs = tmp_path / f"{spec.name}_sample"
        files = sorted(p.relative_to(ours) for p in ours.rglob("*.parquet"))
        assert files == sorted(p.relative_to(theirs) for p in theirs.rglob("*.parquet"))
        assert len(files) == 2 * len(spec.languages)
        for file in files:
            assert pq.read_table(ours / file).equals(pq.read_table(theirs / file)), file
        assert (ours / "README.md").read_text() == (theirs / "README.md").read_text()


def test_questions_are_plain_and_picklable(bundled):
    q = bundled[("mmlu_prox", "de", "validation")][0]
    assert pickle.loads(pickle.dumps(q)) == q
    assert isinstance(q.question_id, str) and isinstance(q.options, tuple)


def test_resolve_source(tmp_path):
    bundled_dir = Path(resolve_source(MMLU_PROX, BUNDLED))
    assert bundled_dir.is_absolute() and bundled_dir.name == "mmlu_prox_sample"
    assert resolve_source(MMLU_PROX, str(tmp_path)) == str(tmp_path.resolve())
    assert resolve_source(MMLU_PROX, "li-lab/MMLU-ProX") == "li-lab/MMLU-ProX"
    with pytest.raises(ValueError, match="does not exist"):
        resolve_source(MMLU_PROX, str(tmp_path / "missing"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"language": "xx", "split": "test"}, r"no language 'xx'; allowed: am, ar, .*zh"),
        ({"language": "de", "split": "validation"}, r"no split 'validation'; allowed: test, dev"),
    ],
)
def test_unknown_language_or_split_fails_before_loading(kwargs, message):
    # The source does not exist anywhere: reaching the loader would be a different error.
    with pytest.raises(ValueError, match=message):
        load_questions("global_mmlu", source="nobody/nothing", **kwargs)


def test_limit_and_seed_give_a_deterministic_ordered_subset():
    full = load_questions("mmlu_prox", "sw", "test")
    first = load_questions("mmlu_prox", "sw", "test", limit=15, seed=3)
    assert first == load_questions("mmlu_prox", "sw", "test", limit=15, seed=3)
    assert len(first) == 15 and set(first) <= set(full)
    assert first == [q for q in full if q in set(first)]  # original order kept
    assert first != load_questions("mmlu_prox", "sw", "test", limit=15, seed=4)
    assert load_questions("mmlu_prox", "sw", "test", limit=1000) == full


def test_subject_filter_then_limit():
    months = load_questions("global_mmlu", "uk", "test", subjects=["cldr_months"])
    assert len(months) == 10 and {q.subject for q in months} == {"cldr_months"}
    some = load_questions("global_mmlu", "uk", "test", subjects=["cldr_months"], limit=4)
    assert set(some) <= set(months) and len(some) == 4
    with pytest.raises(ValueError, match=r"no subject\(s\) \['physics'\]; available: cldr_"):
        load_questions("global_mmlu", "uk", "test", subjects=["physics"])


# --- a local mirror in the hub layout, with broken rows --------------------------------------


def gmmlu_row(sample_id: str, options: list[str | None], answer: str) -> dict:
    row = {"sample_id": sample_id, "subject": "astronomy", "question": "Q?", "answer": answer}
    return row | {f"option_{c}": option for c, option in zip("abcd", options, strict=True)}


def prox_row(question_id: int, options: list[str | None], answer: str, index: int) -> dict:
    padded = options + [None] * (10 - len(options))
    row = {"question_id": question_id, "category": "physics", "question": "Q?"}
    return (
        row
        | {f"option_{i}": o for i, o in enumerate(padded)}
        | {
            "answer": answer,
            "answer_index": index,
        }
    )


def write_mirror(root: Path, splits: dict[str, list[dict]], config: str = "de") -> str:
    """A one-config mirror in the hub layout; splits maps split name -> rows."""
    lines = ["---", "configs:", f"- config_name: {config}", "  data_files:"]
    for split, rows in splits.items():
        (root / config).mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist(rows)
        pq.write_table(table, root / config / f"{split}-00000-of-00001.parquet")
        lines += [f"  - split: {split}", f"    path: {config}/{split}-00000-of-00001.parquet"]
    (root / "README.md").write_text("\n".join([*lines, "---", "# test mirror", ""]))
    return str(root)


def test_local_mirror_loads_like_the_hub(tmp_path):
    good = [gmmlu_row("astronomy/dev/0", ["a", "b", "c", "d"], "C")]
    source = write_mirror(tmp_path, {"test": good * 2, "dev": good})
    [q] = load_questions("global_mmlu", "de", "dev", source=source)
    assert q == Question("global_mmlu", "de", "dev", "astronomy/dev/0", "astronomy", "Q?",
                         ("a", "b", "c", "d"), 2)  # fmt: skip
    prox = write_mirror(tmp_path / "prox", {"validation": [prox_row(7, ["x", "y", "z"], "B", 1)]})
    [p] = load_questions("mmlu_prox", "de", "validation", source=prox)
    assert (p.question_id, p.subject, p.options, p.answer_index) == (
        "7",
        "physics",
        ("x", "y", "z"),
        1,
    )


@pytest.mark.parametrize(
    ("benchmark", "split", "bad_row", "message"),
    [
        (
            "global_mmlu",
            "dev",
            gmmlu_row("law/dev/3", ["a", "b", "c", None], "D"),
            r"sample 'law/dev/3': gold answer 'D' is not one of A='a', B='b', C='c'",
        ),
        (
            "mmlu_prox",
            "test",
            prox_row(42, ["a", "b", None, "d"], "A", 0),
            r"sample '42': options after the first missing one .* must be null",
        ),
        (
            "mmlu_prox",
            "test",
            prox_row(43, ["only"], "A", 0),
            r"sample '43': needs at least two options, has 1 \(A='only'\)",
        ),
        (
            "mmlu_prox",
            "validation",
            prox_row(44, ["a", "b", "c"], "C", 1),
            r"sample '44': answer 'C' disagrees with answer_index=1 \(A='a', B='b', C='c'\)",
        ),
    ],
)
def test_bad_rows_fail_loudly_naming_the_sample(tmp_path, benchmark, split, bad_row, message):
    good = gmmlu_row("ok/0", ["a", "b", "c", "d"], "A") if benchmark == "global_mmlu" else None
    good = good or prox_row(1, ["a", "b", "c"], "A", 0)
    source = write_mirror(tmp_path, {split: [good, bad_row]})
    with pytest.raises(ValueError, match=message):
        load_questions(benchmark, "de", split, source=source)


def test_check_split_fails_fast_on_missing_data(tmp_path):
    source = write_mirror(tmp_path, {"test": [gmmlu_row("astronomy/test/0", list("abcd"), "A")]})
    check_split("global_mmlu", "de", "test", source, subjects=["astronomy"])
    # a local mirror's message names the files it lacks (datasets reads all splits of a config)
    missing_fr = "the mirror has no fr/test-00000-of-00001.parquet, fr/dev-00000-of-00001.parquet"
    with pytest.raises(ValueError, match=rf"Global-MMLU fr/test cannot be loaded .*: {missing_fr}"):
        check_split("global_mmlu", "fr", "test", source)
    with pytest.raises(ValueError, match=r"de/dev .*: the mirror has no de/dev-00000-of-00001"):
        check_split("global_mmlu", "de", "dev", source)
    with pytest.raises(ValueError, match=r"no subject\(s\) \['law'\]; available: astronomy"):
        check_split("global_mmlu", "de", "test", source, subjects=["law", "astronomy"])
    with pytest.raises(ValueError, match="has no split 'validation'"):
        check_split("global_mmlu", "de", "validation", source)
