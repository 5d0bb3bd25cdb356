"""SFT data prepared once per key: converted and tokenised in parallel, stored, memory-mapped.

Conversion (`trainers.sft_data.ADAPTERS`) and tokenisation (`tokenize_conversation`) run once per
`preparation_key` (source and its content, format, tokenizer, max_seq_len, max_samples, seed,
malformed-row policy) as a Ray Data `map_batches` over the cluster's CPUs, and the result is
stored in the sweep storage (local path or URI) as one Arrow IPC file:
``<storage>/prepared/<key digest>/examples.arrow`` plus ``manifest.json``, written last, which
marks it complete. Trials that share the key share the file (9 data sets for the study's 108
trials), and a second `prepare` of the same key only reads the manifest.

Ray Train workers open it with `PreparedExamples`: a memory map (after one copy per node when the
storage is remote), from which they read the per-example lengths and loss-token counts (two
integer arrays: the seeded schedule and the exact global token counts need every example's)
and, per micro-batch, only the rows their rank trains on. No worker converts, tokenises or holds
the whole set as Python objects. A Ray Train dataset shard would split rows by arrival instead,
which breaks the seeded, length-grouped schedule that every rank derives alone and that a
mid-epoch resume continues.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from calsweep.storage import atomic_output, join, local_copy, read_text, write_text
from trainers.chat_tokens import tokenize_conversation
from trainers.settings import TrainSettings
from trainers.sft_data import ADAPTERS, IGNORE_INDEX, MalformedRow, TokenizedExample, load_rows

PREPARED_DIR = "prepared"
EXAMPLES_FILE = "examples.arrow"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1  # part of the key: a change of layout or of tokenisation prepares again
ROWS_PER_BLOCK = 256  # source rows per Ray Data block (one tokenisation batch)
ROW_COLUMN = "_calsweep_row"  # the source row index, added to each block
SCHEMA = pa.schema(
    [
        ("row", pa.int64()),  # index of the row in the source
        ("input_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),
        ("length", pa.int32()),
        ("loss_tokens", pa.int32()),  # labels after the causal shift that carry loss
    ]
)


@dataclass(frozen=True)
class PreparedData:
    """Where a key's prepared data lives and what it holds (its manifest)."""

    location: str
    examples: int
    tokens: int
    skipped: dict[str, int]
    seconds: float  # spent preparing it (0 when reused)
    reused: bool


def tokenizer_digest(tokenizer: Any) -> str:
    """An identity of what the tokenizer does, wherever it was loaded from: its fast-tokenizer
    definition (vocabulary, merges, normalizer, added tokens, bos/eos post-processing) or slow
    vocabulary, its class, its special tokens and its chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab())
    payload = [
        type(tokenizer).__name__,
        definition,
        json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str),
        tokenizer.chat_template,
    ]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:20]


def source_identity(source: str, rows: Any) -> str:
    """A local file by its path, size and modification time (an edit prepares again); a hub or
    dataset directory by the `datasets` fingerprint of what was loaded."""
    path = Path(source)
    if path.is_file():
        stat = path.stat()
        return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return str(rows._fingerprint)


def preparation_key(s: TrainSettings, tokenizer: Any, rows: Any) -> dict[str, Any]:
    return {
        "version": FORMAT_VERSION,
        "format": s.sft_format,
        "source": s.sft_source,
        "source_identity": source_identity(s.sft_source, rows),
        "tokenizer": tokenizer_digest(tokenizer),
        "max_seq_len": s.max_seq_len,
        "max_samples": s.max_samples,
        "seed": s.seed,
        "on_malformed": s.on_malformed,
    }


def prepared_location(storage: str, key: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return join(storage, PREPARED_DIR, digest)


def prepare(s: TrainSettings, storage: str, *, say: Callable[[str], None] = print) -> PreparedData:
    """The prepared data of `s` under `storage`: reused when its key was prepared before, else
    made now with Ray Data on the connected cluster (Ray must be initialised).

    Rows are visited in the order `load_sft_conversations` uses (file order; with
    ``max_samples`` a seeded permutation until that many rows convert), so the examples equal a
    worker's own tokenisation of the same settings, id for id and label for label.
    """
    from transformers import AutoTokenizer

    rows = load_rows(s.sft_format, s.sft_source)
    tokenizer = AutoTokenizer.from_pretrained(s.model_path)
    key = preparation_key(s, tokenizer, rows)
    location = prepared_location(storage, key)
    manifest = read_text(join(location, MANIFEST_FILE))
    if manifest is not None:
        return _from_manifest(location, json.loads(manifest), reused=True)

    started = time.monotonic()
    n = len(rows)
    order = np.arange(n) if s.max_samples is None else np.random.default_rng(s.seed).permutation(n)
    limit = n if s.max_samples is None else min(s.max_samples, n)
    say(f"preparing {s.sft_format} data from {s.sft_source}: {limit:,} of {n:,} rows -> {location}")
    skipped: Counter[str] = Counter()
    examples = tokens = converted = cursor = 0
    with atomic_output(join(location, EXAMPLES_FILE)) as stream:
        with pa.ipc.new_file(stream, SCHEMA) as writer:
            while converted < limit and cursor < n:
                # The first round takes exactly as many rows as needed; rows that fail to convert
                # are made up by later, smaller rounds (with a margin), so nothing is wasted.
                wanted = limit - converted
                take = order[cursor : cursor + (wanted if cursor == 0 else 2 * wanted + 16)]
                cursor += len(take)
                for batch in _tokenised(rows.data.table, take, s):
                    batch = _up_to_limit(batch, limit - converted)
                    converted += int(np.sum(batch["converted"].to_numpy(zero_copy_only=False)))
                    good = _check_malformed(batch, s, skipped)
                    writer.write_table(good.select(SCHEMA.names).cast(SCHEMA))
                    examples += good.num_rows
                    tokens += int(np.sum(good["length"].to_numpy()))
                    if converted >= limit:
                        break
        if examples == 0:
            raise ValueError(f"no usable SFT examples in {s.sft_source} (skipped: {dict(skipped)})")
    manifest = {
        "key": key,
        "examples": examples,
        "tokens": tokens,
        "skipped": dict(skipped),
        "seconds": round(time.monotonic() - started, 3),
    }
    write_text(join(location, MANIFEST_FILE), json.dumps(manifest, indent=1))
    say(
        f"prepared {examples:,} examples, {tokens:,} tokens in {manifest['seconds']:.1f} s "
        f"(skipped: {dict(skipped) or 'none'})"
    )
    return _from_manifest(location, manifest, reused=False)


def _from_manifest(location: str, manifest: dict[str, Any], reused: bool) -> PreparedData:
    return PreparedData(
        location,
        manifest["examples"],
        manifest["tokens"],
        manifest["skipped"],
        0.0 if reused else manifest["seconds"],
        reused,
    )


def _tokenised(table: pa.Table, take: np.ndarray, s: TrainSettings) -> Iterator[pa.Table]:
    """Convert and tokenise the source rows `take` (in that order) with Ray Data tasks, as many
    at once as the cluster has free CPUs; batches come back in order."""
    import ray

    refs = []
    for start in range(0, len(take), ROWS_PER_BLOCK):
        indices = take[start : start + ROWS_PER_BLOCK]
        block = table.take(pa.array(indices)).append_column(ROW_COLUMN, pa.array(indices))
        refs.append(ray.put(block))
    tasks = max(1, min(len(refs), int(ray.available_resources().get("CPU", 1))))
    context = ray.data.DataContext.get_current()
    preserve_order = context.execution_options.preserve_order
    context.execution_options.preserve_order = True  # example i is row i of the prepared file
    try:
        dataset = ray.data.from_arrow_refs(refs).map_batches(
            tokenise_rows,
            fn_kwargs={
                "model_path": s.model_path,
                "fmt": s.sft_format,
                "max_seq_len": s.max_seq_len,
            },
            batch_size=None,  # one block per call
            batch_format="pyarrow",
            compute=ray.data.TaskPoolStrategy(size=tasks),
            num_cpus=1,
        )
        yield from dataset.iter_batches(batch_size=None, batch_format="pyarrow")
    finally:
        context.execution_options.preserve_order = preserve_order


@functools.lru_cache(maxsize=4)
def _tokenizer(model_path: str) -> Any:
    """One tokenizer per Ray worker process: tasks reuse worker processes, so a preparation of
    thousands of blocks loads it once per core (tasks, not actors, also reuse the processes'
    imports across data sets, where a new actor pool would import transformers again)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


def tokenise_rows(block: pa.Table, model_path: str, fmt: str, max_seq_len: int) -> pa.Table:
    """Ray Data task: source rows -> one output row each, converted and tokenised, or the reason
    it was not (``converted`` tells conversion failures, which do not count towards
    ``max_samples``, from tokenisation ones, which do, as in `load_sft_conversations`)."""
    tokenizer, adapter = _tokenizer(model_path), ADAPTERS[fmt]
    out: dict[str, list[Any]] = {name: [] for name in OUTPUT_SCHEMA.names}
    rows = block.column(ROW_COLUMN).to_pylist()
    for row, record in zip(rows, block.drop_columns([ROW_COLUMN]).to_pylist(), strict=True):
        example, converted, failure = None, False, None
        try:
            messages = adapter(record)
            converted = True
            example = tokenize_conversation(messages, tokenizer, max_seq_len)
        except MalformedRow as err:
            failure = err
        _append(out, row, converted, example, failure)
    return pa.table(out, schema=OUTPUT_SCHEMA)


OUTPUT_SCHEMA = pa.schema(
    [
        *SCHEMA,
        ("converted", pa.bool_()),
        ("reason", pa.string()),  # null for a usable example
        ("detail", pa.string()),
    ]
)


def _append(
    out: dict[str, list[Any]],
    row: int,
    converted: bool,
    example: TokenizedExample | None,
    failure: MalformedRow | None,
) -> None:
    ids = example["input_ids"] if example else []
    labels = example["labels"] if example else []
    out["row"].append(row)
    out["input_ids"].append(ids)
    out["labels"].append(labels)
    out["length"].append(len(ids))
    out["loss_tokens"].append(sum(1 for label in labels[1:] if label != IGNORE_INDEX))
    out["converted"].append(converted)
    out["reason"].append(failure.reason if failure else None)
    out["detail"].append(failure.detail if failure else None)


def _up_to_limit(batch: pa.Table, remaining: int) -> pa.Table:
    """The rows of `batch` up to and including its `remaining`-th converted one."""
    counts = np.cumsum(batch["converted"].to_numpy(zero_copy_only=False))
    if counts.size == 0 or counts[-1] < remaining:
        return batch
    return batch.slice(0, int(np.searchsorted(counts, remaining)) + 1)


def _check_malformed(batch: pa.Table, s: TrainSettings, skipped: Counter[str]) -> pa.Table:
    """The usable rows of `batch`; the others are counted by reason, or with ``on_malformed:
    error`` the first one is raised with its source row."""
    reasons = batch["reason"].to_pylist()
    bad = [i for i, reason in enumerate(reasons) if reason is not None]
    if bad and s.on_malformed == "error":
        first = batch.slice(bad[0], 1).to_pylist()[0]
        raise MalformedRow(
            first["reason"],
            f"{s.sft_format} row {first['row']} of {s.sft_source} ({first['detail']}); set "
            "on_malformed to 'skip' to skip such rows (each reason is counted)",
        )
    skipped.update(reasons[i] for i in bad)
    return batch.filter(batch["reason"].is_null())


class PreparedExamples:
    """A worker's view of prepared data: memory-mapped, read by row index per micro-batch."""

    def __init__(self, location: str) -> None:
        local = Path(local_copy(location))  # remote storage: copied once per node
        self.manifest = json.loads((local / MANIFEST_FILE).read_text())
        source = pa.memory_map(str(local / EXAMPLES_FILE))
        self._table = pa.ipc.open_file(source).read_all()  # zero-copy: pages load on use
        self.lengths: np.ndarray = self._table["length"].to_numpy()
        self.loss_tokens: np.ndarray = self._table["loss_tokens"].to_numpy()

    def __len__(self) -> int:
        return self._table.num_rows

    @property
    def skipped(self) -> dict[str, int]:
        return dict(self.manifest["skipped"])

    def rows(self, indices: Sequence[int]) -> list[TokenizedExample]:
        taken = self._table.select(["input_ids", "labels"]).take(pa.array(indices, pa.int64()))
        return [
            {"input_ids": ids, "labels": labels}
            for ids, labels in zip(
                taken["input_ids"].to_pylist(), taken["labels"].to_pylist(), strict=True
            )
        ]


def with_prepared_data(
    s: TrainSettings, storage: str, *, say: Callable[[str], None] = print
) -> TrainSettings:
    """`s` pointing at its prepared data (prepared now if needed)."""
    return s.model_copy(update={"prepared_data": prepare(s, storage, say=say).location})
