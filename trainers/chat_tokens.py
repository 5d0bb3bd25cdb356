"""A conversation -> token ids with labels on exactly the assistant turns.

With the model's chat template when it has one: rendered and tokenised once, each assistant
span found from the template's framing (`_template_spans`); else a plain
``System:/User:/Assistant:`` format (`_fallback_spans`).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Literal

import jinja2

from trainers.sft_data import IGNORE_INDEX, MalformedRow, Message, TokenizedExample


def _common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _render(tokenizer: Any, messages: list[Message], generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
    except jinja2.TemplateError as err:  # e.g. "roles must alternate user/assistant"
        raise MalformedRow("rejected by chat template", str(err)) from err


def _template_spans(messages: list[Message], tokenizer: Any) -> tuple[list[int], list[range]]:
    """Token ids of the chat-template rendering and the token span of each assistant turn.

    A turn spans from the end of ``render(messages[:i], generation prompt)`` to the end of
    ``render(messages[:i+1])``: the template's own end-of-turn text is included, so the model
    learns to stop, whatever the template's tokens are. The renderings must be string prefixes of
    the full one; token boundaries are the common prefix with the full tokenisation, which stays
    right even when BPE merges a token across a boundary.

    That definition costs two renderings and tokenisations per turn, quadratic in the number of
    turns (``_per_turn_bounds``). Instead the conversation is rendered and tokenised once and the
    bounds come from the template's framing, learned once per role sequence
    (``_one_pass_bounds``); where that cannot vouch for a conversation the definition is applied
    as written. Both give the same ids and spans.
    """
    full = _render(tokenizer, messages, generation_prompt=False)
    fast = bool(getattr(tokenizer, "is_fast", False))  # only fast tokenizers give offsets
    encoding = tokenizer(full, add_special_tokens=False, return_offsets_mapping=fast)
    ids = encoding["input_ids"]  # templates carry their own bos
    bounds = None
    if fast:
        bounds = _one_pass_bounds(messages, tokenizer, full, ids, encoding["offset_mapping"])
    if bounds is None:
        bounds = _per_turn_bounds(messages, tokenizer, full, ids)
    spans = []
    for start, end in bounds:
        # drop the separator whitespace after the end-of-turn token ("<|im_end|>\n")
        while end - 1 > start and not tokenizer.decode(ids[end - 1 : end]).strip():
            end -= 1
        spans.append(range(start, end))
    return ids, spans


def _per_turn_bounds(
    messages: list[Message], tokenizer: Any, full: str, ids: list[int]
) -> list[tuple[int, int]]:
    """(start, end) token bounds of each assistant turn by the definition: a rendering each."""

    def boundary(text: str) -> int:
        if not full.startswith(text):
            raise ValueError(
                "the tokenizer's chat template is not prefix-stable (rendering a conversation's "
                "first turns is not a prefix of rendering all of it), so assistant spans cannot "
                "be located; use a template without history rewriting or chat_template=None"
            )
        return _common_prefix_len(tokenizer(text, add_special_tokens=False)["input_ids"], ids)

    bounds = []
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            start = boundary(_render(tokenizer, messages[:i], generation_prompt=True))
            end = boundary(_render(tokenizer, messages[: i + 1], generation_prompt=False))
            bounds.append((start, end))
    return bounds


@dataclass(frozen=True)
class _Framing:
    """What a chat template writes around the contents of one role sequence.

    A conversation with these roles renders as ``glue[0] + content[0] + glue[1] + ... +
    content[-1] + glue[-1]``, content ``j`` stripped where ``strip[j]`` (Llama 3's and Gemma's
    ``| trim``). Per assistant message ``i``, ``turns`` holds ``(i, prompt_end, turn_end)``:
    ``render(messages[:i], generation prompt)`` ends ``prompt_end`` characters into ``glue[i]``,
    ``render(messages[:i+1])`` ends ``turn_end`` characters into ``glue[i + 1]``.
    """

    glue: tuple[str, ...]
    strip: tuple[bool, ...]
    turns: tuple[tuple[int, int, int], ...]


_FRAMINGS: dict[tuple[Any, ...], _Framing | None] = {}
# whitespace around each probe content: what survives of it shows whether the template strips
_PROBE_LEAD, _PROBE_TRAIL = " \n\t", "\t\n "


def _probe_text(j: int) -> str:
    return f"calsweep-probe-{j}-"


def _framing(tokenizer: Any, messages: list[Message]) -> _Framing | None:
    """The template's framing of this conversation's role sequence, learned once (cached)."""
    template = tokenizer.chat_template  # what the rendering depends on, besides the roles:
    key = (
        type(tokenizer),
        template if isinstance(template, str) else repr(template),
        repr(getattr(tokenizer, "special_tokens_map", None)),  # bos_token, eos_token, ...
        tuple(m["role"] for m in messages),
    )
    if key not in _FRAMINGS:
        if len(_FRAMINGS) >= 4096:  # a bound, not an LRU: datasets repeat a few role sequences
            _FRAMINGS.clear()
        _FRAMINGS[key] = _learn_framing(tokenizer, key[-1])
    return _FRAMINGS[key]


def _learn_framing(tokenizer: Any, roles: tuple[str, ...]) -> _Framing | None:
    """Render a conversation of ``roles`` with placeholder contents, as the definition does (the
    full rendering and two per assistant turn), and read the framing off it. None where it is
    not regular: a content rendered twice, changed or not at all, a turn rendering that is not a
    prefix of the full one or ends inside a content, a template error."""
    probe: list[Any] = [
        {"role": role, "content": _PROBE_LEAD + _probe_text(j) + _PROBE_TRAIL}
        for j, role in enumerate(roles)
    ]
    try:
        full = _render(tokenizer, probe, generation_prompt=False)
        prefixes = [
            (i, _render(tokenizer, probe[:i], True), _render(tokenizer, probe[: i + 1], False))
            for i, role in enumerate(roles)
            if role == "assistant"
        ]
    except Exception:  # whatever fails on placeholder contents, the per-turn method decides
        return None
    contents: list[tuple[int, int]] = []  # where each content lies in `full`
    strip = []
    for j, message in enumerate(probe):
        text, cursor = _probe_text(j), contents[-1][1] if contents else 0
        at = full.find(text, cursor)
        if at < 0 or full.count(text) != 1:
            return None
        padded = at - len(_PROBE_LEAD)
        before, after = full[max(at - 1, 0) : at], full[at + len(text) : at + len(text) + 1]
        if padded >= cursor and full.startswith(message["content"], padded):
            contents.append((padded, padded + len(message["content"])))
            strip.append(False)
        elif before != _PROBE_LEAD[-1] and after != _PROBE_TRAIL[0]:
            contents.append((at, at + len(text)))
            strip.append(True)
        else:
            return None  # stripped on one side only, or otherwise changed
    starts = [0] + [end for _, end in contents]  # where each glue piece starts
    stops = [start for start, _ in contents] + [len(full)]
    glue = tuple(full[start:stop] for start, stop in zip(starts, stops, strict=True))
    turns = []
    for i, prompt, turn in prefixes:
        if not (full.startswith(prompt) and full.startswith(turn)):
            return None  # not prefix-stable: the per-turn method raises its error
        prompt_end, turn_end = len(prompt) - starts[i], len(turn) - starts[i + 1]
        if not (0 <= prompt_end <= len(glue[i]) and 0 <= turn_end <= len(glue[i + 1])):
            return None  # ends inside a content
        turns.append((i, prompt_end, turn_end))
    return _Framing(glue, tuple(strip), tuple(turns))


def _one_pass_bounds(
    messages: list[Message],
    tokenizer: Any,
    full: str,
    ids: list[int],
    offsets: list[tuple[int, int]],
) -> list[tuple[int, int]] | None:
    """(start, end) token bounds of each assistant turn from the one rendering ``full``, or None
    where ``full`` is not the learned framing around these contents (a content-dependent
    template): then the per-turn method decides."""
    framing = _framing(tokenizer, messages)
    if framing is None:
        return None
    starts, at = [], 0  # where each glue piece starts in `full`
    for glue, message, strip in zip(framing.glue, messages, framing.strip, strict=False):
        content = message["content"].strip() if strip else message["content"]
        if not full.startswith(glue, at) or not full.startswith(content, at + len(glue)):
            return None
        starts.append(at)
        at += len(glue) + len(content)
    starts.append(at)
    if len(full) - at != len(framing.glue[-1]) or not full.startswith(framing.glue[-1], at):
        return None
    chars = []
    for i, prompt_end, turn_end in framing.turns:
        chars += [starts[i] + prompt_end, starts[i + 1] + turn_end]
    bounds = _token_bounds(tokenizer, full, ids, offsets, chars)
    return list(zip(bounds[::2], bounds[1::2], strict=True))


def _token_bounds(
    tokenizer: Any, full: str, ids: list[int], offsets: list[tuple[int, int]], chars: list[int]
) -> list[int]:
    """Per character bound ``c``: the common prefix of ``tokenize(full[:c])`` with ``ids``, as the
    definition has it, without tokenising each ``full[:c]``. A fast tokenizer splits its input at
    added tokens first and encodes the text between them on its own, so for an added token that
    ends by ``c``, ``tokenize(full[:c])`` is ``ids`` before it, then the encoding of ``full[:c]``
    from it on. Only that tail is encoded (from the last such token: ``<|im_start|>assistant\\n``),
    all bounds in one batch. Exact, BPE merges across ``c`` included; offsets only locate tokens."""
    split_special = getattr(tokenizer, "split_special_tokens", False)  # then specials are text
    cuts = {
        token_id
        for token_id, token in getattr(tokenizer, "added_tokens_decoder", {}).items()
        # one that takes its neighbours' whitespace or matches after normalisation is no clean cut
        if not (token.normalized or token.lstrip or token.rstrip or token.single_word)
        and not (token.special and split_special)
    }
    bases, tails = [], []
    for c in chars:
        k = bisect.bisect_right(offsets, c, key=itemgetter(1)) - 1  # the last token ending by c
        while k >= 0 and not (ids[k] in cuts and offsets[k][1] <= c):
            k -= 1
        base, begin = (k, offsets[k][0]) if k >= 0 else (0, 0)
        bases.append(base)
        tails.append(full[begin:c])
    encoded = tokenizer(tails, add_special_tokens=False)["input_ids"]
    return [
        base + _common_prefix_len(tail, ids[base : base + len(tail)])
        for base, tail in zip(bases, encoded, strict=True)
    ]


def _fallback_spans(messages: list[Message], tokenizer: Any) -> tuple[list[int], list[range]]:
    """Plain format for tokenizers without a chat template (base models)::

        System: {content}\\n
        User: {content}\\n
        Assistant: {content}<eos>\\n

    The labelled span is `` {content}<eos>``; the eos is what teaches the model to stop. Segments
    are tokenised separately, so the boundaries are exact; the tokenizer's own prefix (e.g. Llama's
    bos) starts the sequence.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the plain chat format needs a tokenizer with an eos token")

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    ids: list[int] = list(tokenizer("", add_special_tokens=True)["input_ids"])
    spans = []
    for message in messages:
        if message["role"] == "assistant":
            ids += encode("Assistant:")
            start = len(ids)
            ids += encode(" " + message["content"]) + [tokenizer.eos_token_id]
            spans.append(range(start, len(ids)))
            ids += encode("\n")
        else:
            ids += encode(f"{message['role'].capitalize()}: {message['content']}\n")
    return ids, spans


def tokenize_conversation(
    messages: list[Message], tokenizer: Any, max_seq_len: int
) -> TokenizedExample:
    """Token ids and labels (IGNORE_INDEX except on every assistant turn), right-truncated.

    Uses the tokenizer's chat template when it has one, else the plain format of
    ``_fallback_spans``. Turns after the last assistant turn carry no loss and are dropped.
    Raises ``MalformedRow("no assistant tokens after truncation")`` when nothing is left to learn.
    """
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    if last < 0:
        raise MalformedRow("no assistant turn")
    messages = messages[: last + 1]
    has_template = getattr(tokenizer, "chat_template", None) is not None
    ids, spans = (_template_spans if has_template else _fallback_spans)(messages, tokenizer)
    labels = [IGNORE_INDEX] * len(ids)
    for span in spans:
        labels[span.start : span.stop] = ids[span.start : span.stop]
    ids, labels = ids[:max_seq_len], labels[:max_seq_len]
    if all(label == IGNORE_INDEX for label in labels):
        raise MalformedRow("no assistant tokens after truncation", f"max_seq_len={max_seq_len}")
    return {"input_ids": ids, "labels": labels}


def tokenize_conversations(
    conversations: Sequence[list[Message]],
    tokenizer: Any,
    max_seq_len: int,
    on_malformed: Literal["skip", "error"] = "skip",
) -> tuple[list[TokenizedExample], dict[str, int]]:
    """``tokenize_conversation`` over a dataset, with the same skip/error policy as loading."""
    examples: list[TokenizedExample] = []
    skipped: Counter[str] = Counter()
    for index, messages in enumerate(conversations):
        try:
            examples.append(tokenize_conversation(messages, tokenizer, max_seq_len))
        except MalformedRow as err:
            if on_malformed == "error":
                raise MalformedRow(
                    err.reason,
                    f"conversation {index} ({err.detail}); set on_malformed to 'skip' to skip it",
                ) from err
            skipped[err.reason] += 1
    return examples, dict(skipped)
