"""`python -m evaluators.score --model PATH_OR_ID --out DIR`: score one model, no Ray Tune.

Writes per-question probabilities (predictions.parquet), per-split metrics (split_metrics.csv,
with 95% bootstrap intervals as `<metric>_ci_low` / `<metric>_ci_high`),
reliability diagrams (one PNG per split and one overview grid per benchmark), and optionally
temperature-scaled metrics beside the raw ones. Results are cached by (model content digest,
split, scoring settings) in `--cache` (default `<out>/cache`): a rerun rescoring nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from calsweep.console import quiet_libraries
from calsweep.schema import add_flags, from_args
from evaluators.benchmarks import BENCHMARKS, BUNDLED, check_split, get_benchmark, resolve_source
from evaluators.evaluate import SplitRequest
from evaluators.metrics import MetricConfig
from evaluators.settings import FewShot, ScoringSettings

if TYPE_CHECKING:  # torch, Ray and matplotlib load only once the input is known to be good
    from evaluators.evaluate import SplitResult


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m evaluators.score",
        description="Score one model's multiple-choice answers on Global-MMLU / MMLU-ProX splits "
        "and compute calibration metrics per split.",
    )
    parser.add_argument(
        "--model", required=True, help="hub id, local HF directory, or package:<module>/<file.gguf>"
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument(
        "--benchmarks",
        nargs="+",
        default=list(BENCHMARKS),
        choices=list(BENCHMARKS),
        help="benchmarks to score (default: both)",
    )
    parser.add_argument(
        "--languages", nargs="+", default=["all"], help="language configs, or 'all' (default)"
    )
    parser.add_argument(
        "--split",
        choices=["test", "dev"],
        default="test",
        help="'test' or 'dev' (= dev for Global-MMLU, validation for MMLU-ProX)",
    )
    parser.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="BENCHMARK=SOURCE",
        help="hub id or local mirror per benchmark (default: the bundled sample)",
    )
    parser.add_argument(
        "--subjects",
        nargs="+",
        help="only these subjects (Global-MMLU) / categories (MMLU-ProX); default: all",
    )
    parser.add_argument("--limit", type=int, help="questions per split (seeded subsample)")
    parser.add_argument("--seed", type=int, default=0, help="subsampling / few-shot seed")
    add_flags(parser, FewShot)
    add_flags(parser, ScoringSettings, [n for n in ScoringSettings.model_fields if n != "metrics"])
    add_flags(parser, MetricConfig)  # as a sweep file's evaluation.metrics
    parser.add_argument(
        "--temperature-scaling",
        action="store_true",
        help="also fit one temperature on the dev split and report ts_* metrics",
    )
    parser.add_argument("--cache", type=Path, help="score cache directory (default <out>/cache)")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show library progress bars, notices and warnings (hidden by default)",
    )
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> ScoringSettings:
    """The scoring settings the flags ask for; a value out of range is a ValueError naming it."""
    return from_args(ScoringSettings, args, metrics=from_args(MetricConfig, args))


def dev_split_of(request: SplitRequest) -> SplitRequest:
    """The same language's dev/validation split, whole (temperature fit, k-shot examples)."""
    return replace(request, split=get_benchmark(request.benchmark).dev_split, limit=None)


def requests_for(args: argparse.Namespace) -> list[SplitRequest]:
    """The splits the flags ask for; an unknown benchmark source or language is a ValueError."""
    sources = dict(item.split("=", 1) for item in args.source)
    unknown = set(sources) - set(args.benchmarks)
    if unknown:
        raise ValueError(f"--source for {sorted(unknown)}, which is not in --benchmarks")
    specs = [get_benchmark(name) for name in args.benchmarks]
    if args.languages != ["all"]:
        known = {code for spec in specs for code in spec.languages}
        if missing := [code for code in args.languages if code not in known]:
            valid = "; ".join(f"{spec.name}: {' '.join(spec.languages)}" for spec in specs)
            raise ValueError(f"unknown language(s) {' '.join(missing)} (valid: {valid})")
    requests = []
    for spec in specs:
        languages = spec.languages if args.languages == ["all"] else args.languages
        split = spec.test_split if args.split == "test" else spec.dev_split
        source = resolve_source(spec, sources.get(spec.name, BUNDLED))
        subjects = tuple(args.subjects) if args.subjects else None
        requests += [
            SplitRequest(
                spec.name, code, split, source, args.limit, args.seed, args.num_fewshot, subjects
            )
            for code in languages
            if code in spec.languages  # a language of only one of the benchmarks asked for
        ]
    return requests


def check_requests(requests: list[SplitRequest], needs_dev: bool) -> None:
    """Every split to read exists in its source, before a model loads: the same check as the
    sweep's, so a missing split or subject fails in seconds, not after the test splits."""
    dev_splits = [dev_split_of(request) for request in requests] if needs_dev else []
    for r in requests + dev_splits:
        check_split(r.benchmark, r.language, r.split, r.source, r.subjects)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_libraries(args.verbose)
    try:
        settings = settings_from_args(args)
        from_args(FewShot, args)  # a negative --num-fewshot is a one-line error
        requests = requests_for(args)
        check_requests(requests, needs_dev=args.temperature_scaling or args.num_fewshot > 0)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from calsweep.models import resolve_model
    from evaluators.evaluate import evaluate_split
    from evaluators.pipeline import WorkItem, load_cached, source_digest, store_cached
    from evaluators.scoring import OptionScorer, load_model

    model_path = resolve_model(args.model)
    digest = source_digest(model_path)
    cache = args.cache or args.out / "cache"
    scorer = None

    def score(request: SplitRequest) -> SplitResult:
        nonlocal scorer
        key = WorkItem("cli", model_path, digest, request).cache_key(settings)
        result = load_cached(cache, key)
        if result is None:
            if scorer is None:
                model, tokenizer = load_model(model_path, dtype=settings.dtype)
                scorer = OptionScorer(model, tokenizer, settings.mode, settings.max_batch_tokens)
            result = evaluate_split(scorer, request, settings.metrics)
            store_cached(cache, key, result)
        return result

    started, results = time.perf_counter(), []
    for done, request in enumerate(requests, start=1):
        result = score(request)
        if args.temperature_scaling:
            dev = score(dev_split_of(request))
            result.metrics.update(temperature_scaled_metrics(dev, result, settings))
        results.append(result)
        print(
            f"[{done}/{len(requests)}] {request.benchmark}/{request.language}: "
            f"acc {result.metrics['accuracy']:.3f} ece {result.metrics['ece']:.3f} "
            f"({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    write_outputs(args.out, results)
    print(f"wrote {args.out}/predictions.parquet, split_metrics.csv, reliability/")
    return 0


def temperature_scaled_metrics(
    dev: SplitResult, test: SplitResult, settings: ScoringSettings
) -> dict[str, float]:
    """Metrics of the test split after scaling by the temperature fitted on the dev split; a
    temperature that may mean little (tiny dev split, T on its bound) is said on stderr."""
    import numpy as np

    from evaluators.metrics import compute_all, pad_probabilities
    from evaluators.temperature import (
        TemperatureWarning,
        fit_temperature,
        scaled_log_probabilities,
        scaled_probabilities,
    )

    scores = [np.array(s) for s in dev.predictions["scores"]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TemperatureWarning)
        temperature = fit_temperature(scores, dev.predictions["gold"])
    for warning in caught:
        if issubclass(warning.category, TemperatureWarning):
            where = f"{dev.request.benchmark}/{dev.request.language}/{dev.request.split}"
            print(f"warning: {where}: {warning.message}", file=sys.stderr)
    test_scores = [np.array(s) for s in test.predictions["scores"]]
    probs = pad_probabilities(scaled_probabilities(test_scores, temperature))
    log_probs = pad_probabilities(scaled_log_probabilities(test_scores, temperature))
    gold = np.array(test.predictions["gold"])
    scaled = compute_all(probs, gold, settings.metrics, log_probs=log_probs)
    return {"temperature": temperature, **{f"ts_{k}": v for k, v in scaled.items()}}


def write_outputs(out: Path, results: list[SplitResult]) -> None:
    import polars as pl

    from evaluators.reliability import plot_reliability_overview

    out.mkdir(parents=True, exist_ok=True)
    frames = [
        pl.DataFrame(r.predictions).with_columns(
            benchmark=pl.lit(r.request.benchmark),
            language=pl.lit(r.request.language),
            split=pl.lit(r.request.split),
        )
        for r in results
    ]
    pl.concat(frames, how="diagonal_relaxed").write_parquet(out / "predictions.parquet")
    pl.DataFrame(
        [
            {
                "benchmark": r.request.benchmark,
                "language": r.request.language,
                "split": r.request.split,
                **r.metrics,
                **{
                    f"{metric}_ci_{end}": bound
                    for metric, bounds in r.intervals.items()
                    for end, bound in zip(("low", "high"), bounds, strict=True)
                },
            }
            for r in results
        ]
    ).write_csv(out / "split_metrics.csv")
    for benchmark in sorted({r.request.benchmark for r in results}):
        mine = [r for r in results if r.request.benchmark == benchmark]
        for r in mine:
            plot_reliability_overview(
                {r.request.language: r.reliability},
                title=f"{benchmark} {r.request.language}",
                path=out / "reliability" / f"{benchmark}_{r.request.language}.png",
            )
        plot_reliability_overview(
            {r.request.language: r.reliability for r in mine},
            title=benchmark,
            path=out / f"reliability_{benchmark}.png",
        )


if __name__ == "__main__":
    sys.exit(main())
