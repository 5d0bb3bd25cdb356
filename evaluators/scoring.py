"""Exact, fast multiple-choice option scoring (DESIGN.md, "Scoring").

Every option of a question shares its prompt, so the prompt is run through the model once:
each question becomes ONE packed sequence ``[prompt][option 1][option 2]...[option K]`` with a
4D attention mask under which every option token sees the whole prompt and, causally, only its
own option's tokens, and position ids that restart at ``len(prompt)`` for each option. That is
the same computation as K separate forward passes (equal to float tolerance), at the cost of
``P + sum(len(option))`` tokens instead of ``K * P + sum(len(option))``. Questions are batched
row-wise, sorted by packed length, up to ``max_batch_tokens`` padded tokens per batch.

Tokenisation is lm-evaluation-harness's ``HFLM._encode_pair``: trailing whitespace of the
context moves to the continuation, ``context_enc = tok(context)``, ``continuation_enc =
tok(context + continuation)[len(context_enc):]`` and the model reads ``context_enc +
continuation_enc``. When BPE merges across the boundary (``tok(whole)`` does not start with
``context_enc``) lm-eval still scores ``context_enc + continuation_enc``, not ``tok(whole)``; we
do the same, so every option shares the prefix ``context_enc`` exactly and scores equal
lm-eval's (and the naive per-option computation over that encoding) in that case too.

Only the logits that predict continuation tokens are computed (``logits_to_keep`` with a boolean
mask: the vocabulary projection is skipped for prompt tokens), and the log-softmax runs in
float32 over those rows only. No autocast: the model runs in its own dtype (``load_model``).
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from calsweep.hardware import auto_precision
from evaluators.settings import MODES, Mode, ScoringSettings

DEFAULTS = ScoringSettings()
LETTERS = "ABCDEFGHIJ"
PROMPT, PADDING = -1, -2  # segment ids of prompt and padding tokens; option k has segment k
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """ "auto" is the training precision's auto (`calsweep.hardware.auto_precision`): bfloat16
    on GPUs that support it (else float16) and on CPUs with fast bf16, float32 on other CPUs;
    "float32" is for exact comparisons."""
    if dtype == "auto":
        cuda = device.type == "cuda"
        precision = auto_precision(cuda, cuda and torch.cuda.is_bf16_supported())
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected 'auto' or one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def load_model(
    path_or_id: str, device: str | None = None, dtype: str = DEFAULTS.dtype
) -> tuple[Any, Any]:
    """(model, tokenizer) for scoring: eval mode (no dropout), gradients off, on `device`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tokenizer = AutoTokenizer.from_pretrained(path_or_id)
    model = AutoModelForCausalLM.from_pretrained(path_or_id, dtype=resolve_dtype(dtype, target))
    model.to(target).eval().requires_grad_(False)
    return model, tokenizer


def option_probabilities(scores: np.ndarray) -> np.ndarray:
    """Softmax of one question's option scores, float64, stable for any magnitude."""
    shifted = np.asarray(scores, dtype=np.float64) - np.max(scores)
    weights = np.exp(shifted)
    return weights / weights.sum()


def encode_question(
    tokenizer: Any, context: str, continuations: Sequence[str]
) -> tuple[list[int], list[list[int]]]:
    """lm-eval's `_encode_pair` for one context and all its continuations (one tokenizer call)."""
    stripped = context.rstrip()
    if not stripped:
        raise ValueError("a prompt must contain non-whitespace text")
    moved = context[len(stripped) :]
    # lm-eval drops the tokenizer's special tokens when the text already starts with the BOS
    # (or EOS, without a BOS) string; otherwise it uses the tokenizer's default.
    prefix_id = tokenizer.bos_token_id
    if prefix_id is None:
        prefix_id = tokenizer.eos_token_id
    kwargs = {}
    if prefix_id is not None and stripped.startswith(tokenizer.decode(prefix_id)):
        kwargs["add_special_tokens"] = False
    texts = [stripped] + [stripped + moved + continuation for continuation in continuations]
    context_enc, *wholes = tokenizer(texts, **kwargs)["input_ids"]
    return list(context_enc), [list(whole[len(context_enc) :]) for whole in wholes]


@dataclass
class _Packed:
    """One question as one sequence: the prompt, then each option's tokens except its last."""

    index: int  # position in the caller's input
    input_ids: list[int]
    positions: list[int]  # option tokens restart at len(prompt)
    segments: list[int]  # PROMPT, or k for option k
    read_at: list[int] = field(default_factory=list)  # per target: the index predicting it
    targets: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)  # target tokens per option


def _pack(index: int, context_enc: list[int], continuations: list[list[int]]) -> _Packed:
    prompt_len = len(context_enc)
    packed = _Packed(index, list(context_enc), list(range(prompt_len)), [PROMPT] * prompt_len)
    for k, continuation in enumerate(continuations):
        if not continuation:
            raise ValueError(f"question {index}, option {k}: the continuation has no tokens")
        start = len(packed.input_ids)
        # The last token is only predicted, never read: lm-eval drops it too (inp[:-1]).
        body = continuation[:-1]
        packed.input_ids += body
        packed.positions += range(prompt_len, prompt_len + len(body))
        packed.segments += [k] * len(body)
        packed.read_at += [prompt_len - 1, *range(start, start + len(body))]
        packed.targets += continuation
        packed.lengths.append(len(continuation))
    return packed


def _batches(packs: Sequence[_Packed], max_batch_tokens: int) -> list[list[_Packed]]:
    """Longest first, each batch at most max_batch_tokens padded tokens (a long question alone)."""
    batches: list[list[_Packed]] = []
    for pack in sorted(packs, key=lambda p: -len(p.input_ids)):
        batch = batches[-1] if batches else None
        if batch and (len(batch) + 1) * len(batch[0].input_ids) <= max_batch_tokens:
            batch.append(pack)
        else:
            batches.append([pack])
    return batches


def _is_out_of_memory(error: BaseException) -> bool:
    message = str(error).lower()
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError)
        and ("out of memory" in message or "can't allocate memory" in message)
    )


class OptionScorer:
    """Per-option scores of multiple-choice questions; softmax of a question's scores is its
    option distribution.

    Modes: "perplexity" = mean per-token log-likelihood of ``" " + option`` given the prompt (the
    study's default), "loglik" = summed log-likelihood, "letter" = next-token log-prob of
    ``" A"``, ``" B"``, ... after the prompt (one forward pass over the prompt only; each letter
    must be one token after the prompt, else ValueError).

    `max_batch_tokens` bounds the padded tokens (rows x longest packed question) of one forward
    pass; a longer question runs alone. On an out-of-memory error the budget is halved (and kept
    halved) and the failed batch re-split; a question that fails alone raises RuntimeError.
    Needs attn_implementation "sdpa" or "eager" (the default of transformers' Llama, Mistral,
    Gemma2 — Gemma2 uses eager for its attention softcapping); sliding-window layers get their
    window applied on logical positions. Sequences are never truncated: a question longer than
    the model's positions raises ValueError.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        mode: Mode = DEFAULTS.mode,
        max_batch_tokens: int = DEFAULTS.max_batch_tokens,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: expected one of {MODES}")
        config = model.config
        self.attn_implementation = config._attn_implementation
        if self.attn_implementation not in ("sdpa", "eager"):
            # Flash attention ignores arbitrary 4D masks; packing needs one.
            raise ValueError(
                f"attention implementation {self.attn_implementation!r} cannot take the packed "
                "4D mask: load the model with attn_implementation='sdpa' or 'eager'"
            )
        self.model = model.eval()  # dropout would break equality with the naive computation
        self.tokenizer = tokenizer
        self.mode = mode
        self.max_batch_tokens = max_batch_tokens
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.max_positions = getattr(config, "max_position_embeddings", None)
        self.sliding_window = getattr(config, "sliding_window", None)
        self.layer_types = getattr(config, "layer_types", None)
        self.keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters

    def score(self, prompts: Sequence[str], options: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """One float64 vector of K option scores per question, in the input order."""
        if len(prompts) != len(options):
            raise ValueError(f"{len(prompts)} prompts but {len(options)} option lists")
        pairs = enumerate(zip(prompts, options, strict=True))
        packs = [self._encode(i, prompt, opts) for i, (prompt, opts) in pairs]
        scores: list[np.ndarray | None] = [None] * len(packs)
        queue = deque(_batches(packs, self.max_batch_tokens))
        while queue:
            batch = queue.popleft()
            try:
                token_logprobs = self._forward(batch)
            except RuntimeError as error:  # torch.OutOfMemoryError is one
                if not _is_out_of_memory(error):
                    raise
                queue.extendleft(reversed(self._shrink(batch, error)))
                continue
            for pack, logprobs in zip(batch, token_logprobs, strict=True):
                scores[pack.index] = self._reduce(pack, logprobs)
        assert all(s is not None for s in scores)
        return scores  # type: ignore[return-value]

    def _encode(self, index: int, prompt: str, options: Sequence[str]) -> _Packed:
        if not options:
            raise ValueError(f"question {index} has no options")
        if self.mode == "letter":
            if len(options) > len(LETTERS):
                raise ValueError(f"question {index}: letter mode takes at most 10 options")
            continuations = [f" {letter}" for letter in LETTERS[: len(options)]]
        else:
            continuations = [f" {option}" for option in options]
        context_enc, continuation_encs = encode_question(self.tokenizer, prompt, continuations)
        if self.mode == "letter" and any(len(enc) != 1 for enc in continuation_encs):
            raise ValueError(
                f"question {index}: letter mode needs each of {continuations} to be one token "
                f"after the prompt, got {continuation_encs}"
            )
        longest = len(context_enc) + max(len(enc) for enc in continuation_encs) - 1
        if self.max_positions is not None and longest > self.max_positions:
            raise ValueError(
                f"question {index}: {longest} tokens exceed the model's {self.max_positions} "
                "positions (no truncation is done)"
            )
        return _pack(index, context_enc, continuation_encs)

    def _shrink(self, batch: list[_Packed], error: BaseException) -> list[list[_Packed]]:
        """Halve the token budget after an out-of-memory error and re-split the failed batch."""
        padded = len(batch) * len(batch[0].input_ids)
        if len(batch) == 1:
            raise RuntimeError(
                f"question {batch[0].index} ({padded} packed tokens) does not fit in memory "
                "even alone: use a smaller model or dtype, or shorten the prompt"
            ) from error
        self.max_batch_tokens = max(1, min(self.max_batch_tokens, padded) // 2)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return _batches(batch, self.max_batch_tokens)

    def _reduce(self, pack: _Packed, logprobs: np.ndarray) -> np.ndarray:
        per_option = np.split(logprobs, np.cumsum(pack.lengths)[:-1])
        if self.mode == "perplexity":
            return np.array([lp.mean() for lp in per_option], dtype=np.float64)
        return np.array([lp.sum() for lp in per_option], dtype=np.float64)

    @torch.inference_mode()
    def _forward(self, batch: list[_Packed]) -> list[np.ndarray]:
        """Log-probs (float64) of every target token of every question in `batch`."""
        device = self.model.device
        width = len(batch[0].input_ids)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        positions = torch.zeros((len(batch), width), dtype=torch.long)
        segments = torch.full((len(batch), width), PADDING, dtype=torch.long)
        keep = torch.zeros((len(batch), width), dtype=torch.bool)
        for row, pack in enumerate(batch):
            n = len(pack.input_ids)
            ids[row, :n] = torch.tensor(pack.input_ids)
            positions[row, :n] = torch.tensor(pack.positions)
            segments[row, :n] = torch.tensor(pack.segments)
            keep[row, pack.read_at] = True
        kwargs: dict[str, Any] = {"logits_to_keep": keep.to(device)} if self.keeps_logits else {}
        output = self.model(
            input_ids=ids.to(device),
            position_ids=positions.to(device),
            attention_mask=self._attention_masks(positions.to(device), segments.to(device)),
            use_cache=False,
            **kwargs,
        )
        # Kept logits come back flattened in row-major (row, index) order of `keep`.
        logits = output.logits if self.keeps_logits else output.logits[keep.to(device)]
        flat_row = torch.cumsum(keep.flatten(), 0).view_as(keep) - 1
        rows = torch.cat([flat_row[r, p.read_at] for r, p in enumerate(batch)]).to(device)
        targets = torch.tensor([t for p in batch for t in p.targets], device=device)
        logits = logits.float()
        logprobs = logits[rows, targets] - torch.logsumexp(logits, dim=-1)[rows]
        flat = logprobs.double().cpu().numpy()
        return np.split(flat, np.cumsum([len(p.targets) for p in batch])[:-1])

    def _attention_masks(self, positions: torch.Tensor, segments: torch.Tensor) -> Any:
        """The packed 4D mask, per layer type where a sliding window cuts into the sequences.

        Query i sees key j iff j is a prompt token or in i's own option, and j is not after i;
        sliding-window layers also need pos_i - pos_j < window (transformers' rule), on the
        logical positions, which packing does not change.
        """
        query_seg, key_seg = segments[:, None, :, None], segments[:, None, None, :]
        query_pos, key_pos = positions[:, None, :, None], positions[:, None, None, :]
        full = ((key_seg == PROMPT) | (key_seg == query_seg)) & (key_pos <= query_pos)
        window = self.sliding_window
        if window is None or int(positions.max()) < window:
            return self._as_model_mask(full)
        sliding = full & (query_pos - key_pos < window)
        if self.layer_types is None:  # e.g. Mistral: one window for every layer
            return self._as_model_mask(sliding)
        masks = {"full": self._as_model_mask(full), "sliding": self._as_model_mask(sliding)}
        return {
            kind: masks["sliding" if "sliding" in kind else "full"] for kind in self.layer_types
        }

    def _as_model_mask(self, allowed: torch.Tensor) -> torch.Tensor:
        """sdpa takes the boolean mask; eager adds its mask to the attention scores."""
        if self.attn_implementation == "sdpa":
            return allowed
        dtype = self.model.dtype
        additive = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        return additive.masked_fill_(~allowed, torch.finfo(dtype).min)
