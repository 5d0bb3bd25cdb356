"""Bootstrap intervals of one split: the vectorised `bootstrap_intervals` vs a naive loop.

Prints one JSON object. On a synthetic split shaped like a Global-MMLU test split (14,042
questions, 4 options; probabilities from sharpened Dirichlet draws, gold drawn so the model is
over-confident) it times (a) `evaluators.metrics.bootstrap_intervals`: accuracy, entropy, ECE and
RMS on every resample, the default 1,000; (b) the naive baseline: the metric functions in a
Python loop over resamples (`--naive-resamples` of them, extrapolated to `--resamples`); (c) the
point metrics (`compute_all`) for scale. Wall and CPU seconds, best of `--repeats`. BLAS and
OpenMP are held to one thread (one core) unless `--threads` says otherwise. `max_abs_diff`
compares (a)'s vectorised metrics with (b)'s values on (b)'s resamples. Not a test: nothing here
asserts a timing.

    python -m benchmarks.metrics --questions 14042 --resamples 1000
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=14042)
    parser.add_argument("--options", type=int, default=4)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--naive-resamples", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Before numpy loads: BLAS reads these once (the matrix product in the bootstrap).
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(args.threads)
    import json
    import platform
    import time

    import numpy as np

    from evaluators import metrics as m

    rng = np.random.default_rng(args.seed)
    n, k = args.questions, args.options
    calibrated = rng.dirichlet(np.full(k, 0.7), size=n)
    gold = np.array([rng.choice(k, p=p) for p in calibrated])
    sharp = calibrated**1.5
    probs = sharp / sharp.sum(axis=1, keepdims=True)  # over-confident: ECE well above 0
    config = m.MetricConfig(bootstrap_resamples=args.resamples, bootstrap_seed=args.seed)

    def best_of(fn) -> tuple[float, float, object]:
        wall, cpu, out = [], [], None
        for _ in range(args.repeats):
            w, c = time.perf_counter(), time.process_time()
            out = fn()
            wall.append(time.perf_counter() - w)
            cpu.append(time.process_time() - c)
        return min(wall), min(cpu), out

    def naive() -> tuple[list[np.ndarray], dict[str, list[float]]]:
        draw = np.random.default_rng(args.seed)
        index_sets, values = [], {name: [] for name in m.BOOTSTRAP_METRICS}
        for _ in range(args.naive_resamples):
            index = draw.integers(0, n, size=n)
            q, g = probs[index], gold[index]
            values["accuracy"].append(m.accuracy(q, g))
            values["entropy"].append(m.entropy_bits(q))
            values["ece"].append(m.expected_calibration_error(q, g, config.ece_bins))
            values["rms"].append(m.rms_calibration_error(q, g, config.rms_bin_size))
            index_sets.append(index)
        return index_sets, values

    wall, cpu, intervals = best_of(lambda: m.bootstrap_intervals(probs, gold, config))
    point_wall, point_cpu, point = best_of(lambda: m.compute_all(probs, gold, config))
    naive_wall, naive_cpu, (index_sets, naive_values) = best_of(naive)
    # The vectorised metrics on the naive loop's own resamples (as multiplicities, sorted order).
    counts = np.stack([np.bincount(index, minlength=n) for index in index_sets])
    vectorised = m.resampled_metrics(probs, gold, counts, config)
    max_abs_diff = max(
        float(np.max(np.abs(vectorised[name] - np.array(naive_values[name]))))
        for name in m.BOOTSTRAP_METRICS
    )
    scale = args.resamples / args.naive_resamples
    result = {
        "questions": n,
        "options": k,
        "resamples": args.resamples,
        "metrics": list(m.BOOTSTRAP_METRICS),
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "python": platform.python_version(),
        "numpy": np.__version__,
        "bootstrap_wall_s": round(wall, 3),
        "bootstrap_cpu_s": round(cpu, 3),
        "naive_resamples_timed": args.naive_resamples,
        "naive_wall_s_extrapolated": round(naive_wall * scale, 3),
        "naive_cpu_s_extrapolated": round(naive_cpu * scale, 3),
        "speedup_cpu": round(naive_cpu * scale / cpu, 1),
        "compute_all_wall_s": round(point_wall, 3),
        "compute_all_cpu_s": round(point_cpu, 3),
        "max_abs_diff_vectorised_vs_naive": max_abs_diff,
        "point": {name: round(point[name], 5) for name in m.BOOTSTRAP_METRICS},
        "intervals_95": {name: [round(v, 5) for v in iv] for name, iv in intervals.items()},
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
