"""SFT data: dataset adapters -> one chat-message form.

Alpaca, Tulu 3 and OpenHermes 2.5 rows become ``list[Message]``; `trainers.chat_tokens` turns
that into token ids with assistant-only labels, so the loss (``trainers.loss``) trains responses
only (DESIGN.md, "Training").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict

import numpy as np

if TYPE_CHECKING:
    import datasets

IGNORE_INDEX = -100
BUNDLED_DIR = Path(__file__).parent / "data"
ROLES = ("system", "user", "assistant")
_OPENHERMES_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}


class Message(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


class TokenizedExample(TypedDict):
    input_ids: list[int]
    labels: list[int]


class MalformedRow(ValueError):
    """A row that cannot become a trainable conversation; ``reason`` is the key it is counted by."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise MalformedRow("empty text", f"{where} is {value!r}")
    return value


def _checked(messages: list[Message]) -> list[Message]:
    if not any(m["role"] == "assistant" for m in messages):
        raise MalformedRow("no assistant turn", f"roles {[m['role'] for m in messages]}")
    return messages


def _field(row: Mapping[str, Any], key: str) -> Any:
    if key not in row or row[key] is None:
        raise MalformedRow("missing field", f"no {key!r} in a row with keys {sorted(row)}")
    return row[key]


def from_alpaca(row: Mapping[str, Any]) -> list[Message]:
    """instruction/input/output -> [user, assistant]; a non-empty input follows a blank line."""
    instruction = _text(_field(row, "instruction"), "instruction")
    extra = row.get("input") or ""  # optional in Alpaca: "" or absent when there is no input
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    output = _text(_field(row, "output"), "output")
    return _checked([{"role": "user", "content": user}, {"role": "assistant", "content": output}])


def from_tulu(row: Mapping[str, Any]) -> list[Message]:
    """Tulu 3 SFT mixture: ``messages`` is already a list of {role, content}."""
    messages: list[Message] = []
    for i, turn in enumerate(_field(row, "messages")):
        role = turn.get("role")
        if role not in ROLES:
            raise MalformedRow("unknown role", f"role {role!r} in turn {i}")
        messages.append({"role": role, "content": _text(turn.get("content"), f"turn {i}")})
    return _checked(messages)


def from_openhermes(row: Mapping[str, Any]) -> list[Message]:
    """OpenHermes 2.5: ``conversations`` of {from, value}, from in system/human/gpt."""
    messages: list[Message] = []
    for i, turn in enumerate(_field(row, "conversations")):
        role = _OPENHERMES_ROLES.get(turn.get("from"))
        if role is None:
            raise MalformedRow("unknown role", f"from {turn.get('from')!r} in turn {i}")
        messages.append({"role": role, "content": _text(turn.get("value"), f"turn {i}")})
    return _checked(messages)


ADAPTERS: dict[str, Callable[[Mapping[str, Any]], list[Message]]] = {
    "alpaca": from_alpaca,
    "tulu": from_tulu,
    "openhermes": from_openhermes,
}


def load_rows(fmt: str, source: str) -> datasets.Dataset:
    """A hub id (or local dataset dir), a local .json/.jsonl/.parquet file, or "bundled"."""
    import datasets  # imported here: Ray Data tasks that only convert rows never pay for it

    if source == "bundled":
        source = str(BUNDLED_DIR / f"{fmt}_sample.jsonl")
    builder = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}.get(Path(source).suffix)
    if builder is None:
        return datasets.load_dataset(source, split="train")
    if not Path(source).is_file():
        raise FileNotFoundError(f"SFT source file {source} does not exist")
    if Path(source).stat().st_size == 0:  # datasets would end in a bare StopIteration
        raise ValueError(f"SFT source file {source} holds no rows (it is empty)")
    return datasets.load_dataset(builder, data_files=source, split="train")


def load_sft_conversations(
    fmt: str,
    source: str,
    max_samples: int | None = None,
    seed: int = 0,
    on_malformed: Literal["skip", "error"] = "skip",
) -> tuple[list[list[Message]], dict[str, int]]:
    """Load ``source`` in format ``fmt`` as conversations, plus skipped-row counts per reason.

    With ``max_samples`` the rows are visited in a seeded random order until that many *valid*
    conversations are found, so skipping never leaves the run short and a 1M-row source is not
    converted in full; without it every row is returned in file order.
    """
    if fmt not in ADAPTERS:
        raise ValueError(f"unknown SFT format {fmt!r}; allowed: {sorted(ADAPTERS)}")
    if on_malformed not in ("skip", "error"):
        raise ValueError(f"on_malformed must be 'skip' or 'error', got {on_malformed!r}")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be >= 1 or None, got {max_samples}")
    rows = load_rows(fmt, source)
    n = len(rows)
    order = np.arange(n) if max_samples is None else np.random.default_rng(seed).permutation(n)
    limit = n if max_samples is None else max_samples
    conversations: list[list[Message]] = []
    skipped: Counter[str] = Counter()
    chunk = 1024  # select() in chunks: random single-row access on Arrow is slow
    for start in range(0, n, chunk):
        idx = order[start : start + chunk]
        for index, row in zip(idx, rows.select(idx), strict=True):
            try:
                conversations.append(ADAPTERS[fmt](row))
            except MalformedRow as err:
                if on_malformed == "error":
                    raise MalformedRow(
                        err.reason,
                        f"{fmt} row {index} of {source} ({err.detail}); set on_malformed to "
                        "'skip' to skip such rows (each reason is counted)",
                    ) from err
                skipped[err.reason] += 1
            if len(conversations) >= limit:
                return conversations, dict(skipped)
    return conversations, dict(skipped)


def check_sft_source(fmt: str, source: str) -> None:
    """Fail in seconds, before any worker starts, when `source` cannot give one `fmt`
    conversation: an unknown format, a missing file or hub id, no rows, or only malformed rows.
    Visits rows in seeded order until the first valid one (a valid 1M-row set costs one row)."""
    try:
        conversations, skipped = load_sft_conversations(fmt, source, max_samples=1)
    except FileNotFoundError as err:
        raise ValueError(str(err)) from err
    except OSError as err:  # unreachable hub id, unreadable file
        raise ValueError(f"SFT source {source}: {str(err).splitlines()[0][:300]}") from err
    if conversations:
        return
    if not skipped:
        raise ValueError(f"SFT source {source} holds no rows")
    reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(skipped.items()))
    raise ValueError(
        f"no usable {fmt} conversation in {source}: every row was skipped ({reasons}); "
        f"is {fmt!r} the right format?"
    )
