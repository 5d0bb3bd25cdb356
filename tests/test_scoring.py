"""OptionScorer equals the naive per-option computation (one full forward pass per option)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_model

from evaluators.prompts import LETTERS, format_prompt
from evaluators.scoring import OptionScorer, load_model, option_probabilities

OPTION_POOL = [
    "Paris",
    "Par",  # a prefix of the one before
    "Paris, the capital and most populous city of France, on the Seine",  # much longer
    "باريس",  # Arabic
    "巴黎",  # Chinese
    "पेरिस",  # Hindi
    "ፓሪስ",  # Amharic
    "Париж",  # Russian
    "7",
    "P",
]


def question_set() -> tuple[list[str], list[list[str]]]:
    """Questions with K = 2..10 options, few-shot, trailing whitespace and one long prompt."""
    prompts, options = [], []
    for k in range(2, 11):
        opts = OPTION_POOL[k - 2 :] + OPTION_POOL[: k - 2]
        prompts.append(format_prompt(f"Question {k}: what is the capital of France?", opts[:k]))
        options.append(opts[:k])
    shot = ("ما هي عاصمة فرنسا؟", ["باريس", "لندن"], 0)
    prompts.append(format_prompt("Какая столица Франции?", ["Париж", "巴黎"], fewshot=[shot]))
    options.append(["Париж", "巴黎"])
    prompts.append("The answer is: \n")  # lm-eval moves trailing whitespace to the continuation
    options.append(["Paris", "Paris, France", "巴黎"])
    # Longer than the tiny Gemma2's 256-token sliding window: packed options must still see
    # exactly the window that a separate forward pass would.
    long_text = " ".join(f"Fact {i}: France is in Europe." for i in range(40))
    prompts.append(format_prompt(long_text, OPTION_POOL[:4]))
    options.append(OPTION_POOL[:4])
    return prompts, options


def lm_eval_encode_pair(tokenizer, context: str, continuation: str) -> tuple[list, list]:
    """lm-evaluation-harness's HFLM._encode_pair, written out independently."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = list(tokenizer(context + continuation)["input_ids"])
    context_enc = list(tokenizer(context)["input_ids"])
    return context_enc, whole[len(context_enc) :]


def naive_scores(model, tokenizer, prompt: str, options: list[str], mode: str) -> np.ndarray:
    """One full forward pass of context + continuation per option, float32 log-softmax."""
    letters = [f" {letter}" for letter in LETTERS[: len(options)]]
    continuations = letters if mode == "letter" else [f" {option}" for option in options]
    values = []
    for continuation in continuations:
        context_enc, continuation_enc = lm_eval_encode_pair(tokenizer, prompt, continuation)
        with torch.no_grad():
            logits = model(torch.tensor([context_enc + continuation_enc])).logits[0]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        positions = torch.arange(len(context_enc) - 1, len(context_enc) + len(continuation_enc) - 1)
        token_logprobs = logprobs[positions, torch.tensor(continuation_enc)].double()
        reduced = token_logprobs.mean() if mode == "perplexity" else token_logprobs.sum()
        values.append(reduced.item())
    return np.array(values)


def naive_all(model, tokenizer, prompts, options, mode: str) -> list[np.ndarray]:
    pairs = zip(prompts, options, strict=True)
    return [naive_scores(model, tokenizer, prompt, opts, mode) for prompt, opts in pairs]


def max_difference(got: list[np.ndarray], expected: list[np.ndarray]) -> float:
    assert [len(g) for g in got] == [len(e) for e in expected]
    return max(float(np.abs(g - e).max()) for g, e in zip(got, expected, strict=True))


@pytest.fixture(scope="module", params=["llama", "mistral", "gemma2"])
def tiny(request, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    arch = request.param
    path = (
        tiny_model_dir if arch == "llama" else make_tiny_model(tmp_path_factory.mktemp(arch), arch)
    )
    return load_model(str(path), device="cpu", dtype="float32")


@pytest.mark.parametrize("mode", ["perplexity", "loglik", "letter"])
def test_packed_scores_equal_naive_per_option_scores(tiny, mode: str) -> None:
    model, tokenizer = tiny
    prompts, options = question_set()
    if mode == "letter":  # " \n A" is not one token: letter mode refuses trailing whitespace
        trailing = [i for i, p in enumerate(prompts) if p != p.rstrip()]
        with pytest.raises(ValueError, match="one token"):
            OptionScorer(model, tokenizer, mode=mode).score(
                [prompts[i] for i in trailing], [options[i] for i in trailing]
            )
        prompts = [p for i, p in enumerate(prompts) if i not in trailing]
        options = [o for i, o in enumerate(options) if i not in trailing]
    if getattr(model.config, "sliding_window", None) == 256:  # the window is really exercised
        assert len(tokenizer(prompts[-1])["input_ids"]) > 256
    # A tiny token budget: many batches, several of them padded rows of different lengths.
    scorer = OptionScorer(model, tokenizer, mode=mode, max_batch_tokens=200)
    got = scorer.score(prompts, options)
    expected = naive_all(model, tokenizer, prompts, options, mode)
    assert all(s.dtype == np.float64 for s in got)
    assert max_difference(got, expected) <= 1e-5


class BoundaryMergingTokenizer:
    """Encodes `context` alone with its last token split in two, as a BPE whose merges cross
    the context/continuation boundary would: tok(whole) no longer starts with tok(context)."""

    def __init__(self, tokenizer, context: str) -> None:
        self.tokenizer, self.context = tokenizer, context

    def __getattr__(self, name: str):
        return getattr(self.tokenizer, name)

    def _encode(self, text: str, **kwargs) -> list[int]:
        ids = list(self.tokenizer(text, **kwargs)["input_ids"])
        if text != self.context:
            return ids
        last = self.tokenizer.decode(ids[-1:])
        return (
            ids[:-1] + self.tokenizer(last[:1])["input_ids"] + self.tokenizer(last[1:])["input_ids"]
        )

    def __call__(self, texts, **kwargs):
        if isinstance(texts, str):
            return {"input_ids": self._encode(texts, **kwargs)}
        return {"input_ids": [self._encode(text, **kwargs) for text in texts]}


def test_boundary_merge_is_scored_like_lm_eval(tiny_model_dir: Path) -> None:
    model, tokenizer = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    context = "The capital of France is"
    merging = BoundaryMergingTokenizer(tokenizer, context)
    options = [["the city of Paris", "a small town called Lyon", "Marseille on the coast"]]
    context_enc, continuation_enc = lm_eval_encode_pair(merging, context, " the city of Paris")
    whole = merging(context + " the city of Paris")["input_ids"]
    assert whole[: len(context_enc)] != context_enc  # the case under test
    for mode in ("perplexity", "loglik"):
        got = OptionScorer(model, merging, mode=mode).score([context], options)
        expected = [naive_scores(model, merging, context, options[0], mode)]
        assert max_difference(got, expected) <= 1e-5


def test_out_of_memory_halves_the_batch_and_retries(tiny_model_dir: Path, monkeypatch) -> None:
    model, tokenizer = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    prompts, options = question_set()
    expected = OptionScorer(model, tokenizer, mode="loglik").score(prompts, options)
    scorer = OptionScorer(model, tokenizer, mode="loglik", max_batch_tokens=4096)
    forward, memory = model.forward, {"rows": 2}

    def forward_with_memory_limit(*args, **kwargs):
        if kwargs["input_ids"].shape[0] > memory["rows"]:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", forward_with_memory_limit)
    assert max_difference(scorer.score(prompts, options), expected) <= 1e-5
    assert scorer.max_batch_tokens < 4096  # the smaller budget is kept for later batches
    memory["rows"] = 0  # not even one question fits
    with pytest.raises(RuntimeError, match="does not fit in memory even alone"):
        scorer.score(prompts, options)


def test_smollm2_perplexity_scores_equal_naive(smollm2_dir: Path) -> None:
    model, tokenizer = load_model(str(smollm2_dir), device="cpu", dtype="float32")
    prompts, options = question_set()
    prompts, options = prompts[:2] + prompts[-3:-2], options[:2] + options[-3:-2]
    got = OptionScorer(model, tokenizer, mode="perplexity").score(prompts, options)
    expected = naive_all(model, tokenizer, prompts, options, "perplexity")
    assert max_difference(got, expected) <= 1e-4


def test_option_probabilities_is_a_stable_softmax() -> None:
    probabilities = option_probabilities(np.array([-1000.0, -1001.0, -2000.0]))
    assert probabilities.dtype == np.float64
    np.testing.assert_allclose(
        probabilities, [1 / (1 + np.exp(-1)), np.exp(-1) / (1 + np.exp(-1)), 0]
    )


def test_prompt_format_and_option_count_limits() -> None:
    assert format_prompt("2 + 2?", ["3", "4"]) == "2 + 2?\nA. 3\nB. 4\nAnswer:"
    shot = ("1 + 1?", ["2", "3"], 0)
    assert format_prompt("2 + 2?", ["3", "4"], fewshot=[shot]) == (
        "1 + 1?\nA. 2\nB. 3\nAnswer: A\n\n2 + 2?\nA. 3\nB. 4\nAnswer:"
    )
    assert format_prompt("q", list("abcdefghij")).endswith("J. j\nAnswer:")
    for count in (1, 11):
        with pytest.raises(ValueError, match="2 to 10 options"):
            format_prompt("q", ["x"] * count)
