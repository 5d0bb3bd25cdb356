"""Option-scoring throughput on SmolLM2-135M: OptionScorer vs naive per-option vs lm-eval's HFLM.

Prints one JSON object. Per dtype it times, on the same synthetic 10-option questions with
~200-token prompts: (a) `OptionScorer` (shared-prefix packing), (b) the naive computation (one
forward pass per option), (c) lm-evaluation-harness's HF `loglikelihood` (`pip install lm_eval`,
a bench/test-only dependency). `tokens_per_s` counts the same work for all three (every option's
context + continuation tokens, as K separate sequences would need); `forward_tokens_per_s`
counts the tokens each method actually runs. `max_abs_diff_vs_*` compare summed log-likelihoods
per option; in bfloat16 they mostly measure bf16 rounding (lm-eval also takes its log-softmax in
the model dtype, we and the naive path in float32). Not a test: nothing here asserts a timing.

    python -m benchmarks.scoring --dtypes float32 bfloat16 --questions 30 --threads 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from transformers import AutoTokenizer

from calsweep.models import SMOLLM2_SOURCE, resolve_model
from evaluators.prompts import format_prompt
from evaluators.scoring import OptionScorer, encode_question, load_model
from evaluators.settings import ScoringSettings

# (method, reference): max abs difference of the summed log-likelihoods per option
COMPARISONS = (("option_scorer", "lm_eval"), ("naive", "lm_eval"), ("option_scorer", "naive"))
WORDS = [
    "the",
    "of",
    "river",
    "mountain",
    "energy",
    "cell",
    "market",
    "language",
    "theory",
    "city",
    "law",
    "history",
    "music",
    "field",
    "light",
    "water",
    "protein",
    "number",
    "election",
    "planet",
    "contract",
    "reaction",
    "winter",
    "trade",
    "bridge",
    "signal",
    "culture",
    "memory",
    "engine",
    "forest",
    "island",
    "measure",
    "value",
    "system",
    "growth",
    "border",
    "coast",
    "method",
    "ancient",
    "modern",
    "quickly",
    "because",
    "although",
    "between",
    "during",
    "against",
    "without",
    "within",
]


def synthetic_questions(
    n: int, prompt_words: int = 130, seed: int = 0
) -> list[tuple[str, list[str]]]:
    """Deterministic 10-option questions whose prompts are ~200 SmolLM2 tokens."""
    rng = random.Random(seed)
    questions = []
    for _ in range(n):
        question = " ".join(rng.choice(WORDS) for _ in range(prompt_words)) + "?"
        options = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))) for _ in range(10)]
        questions.append((question, options))
    return questions


def naive_loglik(model, tokenizer, prompts: Sequence[str], options) -> list[np.ndarray]:
    """One forward pass per option, lm-eval's encoding, summed log-probs (float32 softmax)."""
    results = []
    with torch.inference_mode():
        for prompt, opts in zip(prompts, options, strict=True):
            values = []
            for option in opts:
                context, (continuation,) = encode_question(tokenizer, prompt, [f" {option}"])
                ids = torch.tensor([context + continuation[:-1]], device=model.device)
                logits = model(input_ids=ids, logits_to_keep=len(continuation)).logits[0]
                logprobs = torch.log_softmax(logits.float(), dim=-1)
                targets = torch.tensor(continuation, device=model.device)[:, None]
                values.append(logprobs.gather(1, targets).double().sum().item())
            results.append(np.array(values))
    return results


def lm_eval_scorer(model, tokenizer, batch_size: int) -> Callable[..., list[np.ndarray]]:
    """lm-evaluation-harness's HFLM.loglikelihood on (prompt, " " + option) requests."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)

    def score(prompts: Sequence[str], options: Sequence[Sequence[str]]) -> list[np.ndarray]:
        requests = [
            Instance("loglikelihood", doc={}, arguments=(prompt, f" {option}"), idx=k)
            for prompt, opts in zip(prompts, options, strict=True)
            for k, option in enumerate(opts)
        ]
        logprobs = [logprob for logprob, _ in lm.loglikelihood(requests, disable_tqdm=True)]
        return np.split(np.array(logprobs), np.cumsum([len(opts) for opts in options])[:-1])

    return score


def workload(tokenizer, prompts, options) -> tuple[int, int]:
    """(tokens K separate sequences need, tokens of the packed sequences), without padding."""
    separate = packed = 0
    for prompt, opts in zip(prompts, options, strict=True):
        context, continuations = encode_question(tokenizer, prompt, [f" {o}" for o in opts])
        separate += sum(len(context) + len(c) - 1 for c in continuations)
        packed += len(context) + sum(len(c) - 1 for c in continuations)
    return separate, packed


def interleaved_timings(methods: dict[str, Callable], prompts, options, chunk: int, repeats: int):
    """Scores and seconds per method: the methods take turns on each chunk of questions, and
    each chunk counts its fastest of `repeats` runs.

    The machines are shared: taking turns exposes every method to the same background load,
    and the best of a few runs drops the bursts (as `timeit` does).
    """
    scores: dict[str, list[np.ndarray]] = {name: [] for name in methods}
    seconds = dict.fromkeys(methods, 0.0)
    for method in methods.values():
        method(prompts[:2], options[:2])  # warm-up: first-call allocations
    for start in range(0, len(prompts), chunk):
        part = slice(start, start + chunk)
        print(f"questions {start}..{start + chunk - 1} of {len(prompts)}", file=sys.stderr)
        for name, method in methods.items():
            runs = []
            for _ in range(repeats):
                began = time.perf_counter()
                result = method(prompts[part], options[part])
                runs.append(time.perf_counter() - began)
            scores[name] += result
            seconds[name] += min(runs)
    return scores, seconds


def bench_dtype(path: str, dtype: str, questions, args: argparse.Namespace) -> dict:
    print(f"{dtype}:", file=sys.stderr)
    model, tokenizer = load_model(path, device="cpu", dtype=dtype)
    prompts = [format_prompt(q, opts) for q, opts in questions]
    options = [opts for _, opts in questions]
    scorer = OptionScorer(model, tokenizer, mode="loglik", max_batch_tokens=args.max_batch_tokens)
    methods = {
        "option_scorer": scorer.score,
        "naive": lambda p, o: naive_loglik(model, tokenizer, p, o),
        "lm_eval": lm_eval_scorer(model, tokenizer, args.lm_eval_batch_size),
    }
    separate, packed = workload(tokenizer, prompts, options)
    forward_tokens = {"option_scorer": packed, "naive": separate, "lm_eval": separate}
    scores, seconds = interleaved_timings(methods, prompts, options, args.chunk, args.repeats)
    report: dict = {}
    for name in methods:
        report[name] = {
            "seconds": round(seconds[name], 2),
            "questions_per_s": round(len(prompts) / seconds[name], 3),
            "tokens_per_s": round(separate / seconds[name], 1),
            "forward_tokens_per_s": round(forward_tokens[name] / seconds[name], 1),
        }
    flat = {name: np.concatenate(values) for name, values in scores.items()}
    for name, reference in COMPARISONS:
        diff = np.abs(flat[name] - flat[reference]).max()
        report[name][f"max_abs_diff_vs_{reference}"] = float(f"{diff:.3g}")
    for name in ("lm_eval", "naive"):
        report[f"speedup_vs_{name}"] = round(seconds[name] / seconds["option_scorer"], 2)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--questions", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lm-eval-batch-size", type=int, default=16)
    parser.add_argument("--max-batch-tokens", type=int, default=ScoringSettings().max_batch_tokens)
    parser.add_argument("--chunk", type=int, default=5, help="questions per interleaved turn")
    parser.add_argument("--repeats", type=int, default=1, help="best of this many runs a chunk")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("lm-eval").setLevel(logging.ERROR)
    path = resolve_model(SMOLLM2_SOURCE)
    questions = synthetic_questions(args.questions)
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompt_tokens = [len(tokenizer(format_prompt(q, o))["input_ids"]) for q, o in questions]
    result = {
        "model": "SmolLM2-135M-Instruct",
        "device": f"cpu ({platform.processor() or platform.machine()}), {args.threads} threads",
        "torch": torch.__version__,
        "questions": args.questions,
        "options_per_question": 10,
        "mean_prompt_tokens": round(float(np.mean(prompt_tokens)), 1),
        "lm_eval_batch_size": args.lm_eval_batch_size,
        "max_batch_tokens": args.max_batch_tokens,
        "timing": f"interleaved chunks of {args.chunk} questions, best of {args.repeats} each",
        "load_average_before": round(os.getloadavg()[0], 2),
        "dtypes": {dtype: bench_dtype(path, dtype, questions, args) for dtype in args.dtypes},
    }
    result["load_average_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
