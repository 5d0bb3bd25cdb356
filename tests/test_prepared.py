"""Prepared SFT data (Ray Data on a local Ray instance): equal to a worker's own tokenisation,
made once per key and reused, read back by row index from the memory map."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from trainers.chat_tokens import tokenize_conversations
from trainers.prepared import (
    EXAMPLES_FILE,
    MANIFEST_FILE,
    PreparedExamples,
    prepare,
)
from trainers.settings import TrainSettings
from trainers.sft_data import IGNORE_INDEX, MalformedRow, load_sft_conversations


@pytest.fixture(scope="module")
def plain_tokenizer_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tokenizer without a chat template: the plain `System:/User:/Assistant:` format."""
    out = tmp_path_factory.mktemp("plain-tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, out / name)
    return out


def settings(model_path: Path | str, fmt: str, **overrides) -> TrainSettings:
    base = dict(
        model_path=str(model_path),
        sft_format=fmt,
        sft_source="bundled",
        learning_rate=1e-4,
        label_smoothing=0.0,
        max_samples=None,
        max_seq_len=96,
        seed=3,
    )
    return TrainSettings(**{**base, **overrides})


def per_worker_tokenisation(s: TrainSettings) -> tuple[list[dict], dict[str, int]]:
    """What every Ray Train worker computed for itself before prepared data (5cd84cc)."""
    tokenizer = AutoTokenizer.from_pretrained(s.model_path)
    conversations, skipped = load_sft_conversations(
        s.sft_format, s.sft_source, s.max_samples, s.seed, s.on_malformed
    )
    examples, dropped = tokenize_conversations(
        conversations, tokenizer, s.max_seq_len, s.on_malformed
    )
    for reason, count in dropped.items():
        skipped[reason] = skipped.get(reason, 0) + count
    return examples, skipped


@pytest.mark.integration
@pytest.mark.parametrize("template", ["chat template", "plain format"])
@pytest.mark.parametrize("fmt", ["alpaca", "tulu", "openhermes"])
def test_prepared_data_equals_each_workers_own_tokenisation(
    ray_cluster, tiny_model_dir, plain_tokenizer_dir, tmp_path, fmt, template
) -> None:
    model = tiny_model_dir if template == "chat template" else plain_tokenizer_dir
    # A seeded subsample (the order a worker visits rows in) and a length that truncates some.
    s = settings(model, fmt, max_samples=120, max_seq_len=48)
    prepared = prepare(s, str(tmp_path), say=lambda line: None)
    expected, skipped = per_worker_tokenisation(s)

    examples = PreparedExamples(prepared.location)
    assert prepared.examples == len(examples) == len(expected)
    assert examples.rows(range(len(examples))) == expected
    assert examples.skipped == prepared.skipped == skipped
    assert examples.lengths.tolist() == [len(e["input_ids"]) for e in expected]
    assert examples.loss_tokens.tolist() == [
        sum(label != IGNORE_INDEX for label in e["labels"][1:]) for e in expected
    ]
    assert prepared.tokens == sum(len(e["input_ids"]) for e in expected)
    # rows by index, in any order, as a rank reads its micro-batches
    assert examples.rows([7, 0, 7]) == [expected[7], expected[0], expected[7]]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


ROWS = [
    {"instruction": f"Say the number {i}.", "input": "", "output": f"The number is {i}."}
    for i in range(40)
]


@pytest.mark.integration
def test_malformed_rows_are_skipped_and_made_up_from_later_rows(
    ray_cluster, tiny_model_dir, tmp_path
) -> None:
    rows = [dict(row) for row in ROWS]
    for i in (2, 5, 11, 17, 23, 31):  # some of them inside the first round's seeded rows
        rows[i]["output"] = ""
    source = write_rows(tmp_path / "alpaca.jsonl", rows)
    s = settings(tiny_model_dir, "alpaca", sft_source=str(source), max_samples=30)
    prepared = prepare(s, str(tmp_path / "storage"), say=lambda line: None)
    expected, skipped = per_worker_tokenisation(s)

    assert PreparedExamples(prepared.location).rows(range(30)) == expected
    assert prepared.skipped == skipped and sum(skipped.values()) > 0
    assert prepared.examples == 30  # the skipped rows were made up by further rows

    strict = s.model_copy(update={"on_malformed": "error"})
    with pytest.raises(MalformedRow, match=r"alpaca row \d+ of .*alpaca.jsonl .*output is ''"):
        prepare(strict, str(tmp_path / "strict"), say=lambda line: None)
    assert not list((tmp_path / "strict").rglob(MANIFEST_FILE))  # nothing half-made is kept
    assert not list((tmp_path / "strict").rglob(EXAMPLES_FILE))


@pytest.mark.integration
def test_a_key_is_prepared_once_and_a_change_of_key_prepares_again(
    ray_cluster, tiny_model_dir, plain_tokenizer_dir, tmp_path
) -> None:
    source = write_rows(tmp_path / "alpaca.jsonl", ROWS)
    storage = str(tmp_path / "storage")
    s = settings(tiny_model_dir, "alpaca", sft_source=str(source), max_samples=20)
    first = prepare(s, storage, say=lambda line: None)
    data_file = Path(first.location) / EXAMPLES_FILE
    made = data_file.stat()

    # Another trial of the grid (other lr and smoothing): same key, nothing is tokenised again.
    again = prepare(s.model_copy(update={"learning_rate": 1e-5, "label_smoothing": 0.1}), storage)
    assert (again.location, again.reused, first.reused) == (first.location, True, False)
    assert (data_file.stat().st_ino, data_file.stat().st_mtime_ns) == (
        made.st_ino,
        made.st_mtime_ns,
    )
    assert again.examples == first.examples == 20

    changes = {
        "tokenizer": s.model_copy(update={"model_path": str(plain_tokenizer_dir)}),
        "max_seq_len": s.model_copy(update={"max_seq_len": 64}),
        "max_samples": s.model_copy(update={"max_samples": 10}),
    }
    locations = {first.location}
    for what, changed in changes.items():
        prepared = prepare(changed, storage, say=lambda line: None)
        assert not prepared.reused, what
        locations.add(prepared.location)
    assert len(locations) == 4

    write_rows(source, ROWS[:25])  # the source file changed: prepared again
    assert not prepare(s, storage, say=lambda line: None).reused


@pytest.mark.integration
def test_prepared_data_on_object_storage_is_read_through_a_node_copy(
    ray_cluster, tiny_model_dir, tmp_path, s3_bucket, monkeypatch
) -> None:
    monkeypatch.setenv("CALSWEEP_CACHE", str(tmp_path / "cache"))
    s = settings(tiny_model_dir, "tulu", max_samples=40)
    prepared = prepare(s, f"{s3_bucket}/prepared-test", say=lambda line: None)
    assert prepared.location.startswith("s3://calsweep/prepared-test/prepared/")
    examples = PreparedExamples(prepared.location)
    assert examples.rows(range(len(examples))) == per_worker_tokenisation(s)[0]
    assert list((tmp_path / "cache" / "remote").glob(f"*/{EXAMPLES_FILE}"))  # the node's copy
    assert prepare(s, f"{s3_bucket}/prepared-test", say=lambda line: None).reused
