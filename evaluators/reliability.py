"""Reliability diagrams: accuracy vs mean confidence per confidence bin, one panel per split."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402


def plot_reliability_overview(
    bins_by_split: Mapping[str, Sequence[Mapping[str, float]]], title: str, path: Path
) -> Path:
    """A grid of reliability diagrams (one panel per split, e.g. per language) saved as PNG.

    Bars: accuracy of each equal-width confidence bin; the diagonal is perfect calibration;
    the grey line is the bin's mean confidence, so the gap between them is the bin's error.
    """
    names = list(bins_by_split)
    columns = max(1, math.ceil(math.sqrt(len(names))))
    rows = max(1, math.ceil(len(names) / columns))
    fig, axes = plt.subplots(
        rows, columns, figsize=(2.0 * columns, 2.0 * rows), squeeze=False, sharex=True, sharey=True
    )
    for ax in axes.flat:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names, strict=False):
        ax.set_visible(True)
        bins = [b for b in bins_by_split[name] if b["count"] > 0]
        centers = [(b["lower"] + b["upper"]) / 2 for b in bins]
        width = bins[0]["upper"] - bins[0]["lower"] if bins else 0.1
        ax.bar(
            centers,
            [b["accuracy"] for b in bins],
            width=width,
            color="tab:blue",
            edgecolor="white",
            linewidth=0.3,
        )
        ax.plot(centers, [b["mean_confidence"] for b in bins], color="grey", linewidth=0.8)
        ax.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=0.6)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=10)
    fig.supxlabel("confidence", fontsize=8)
    fig.supylabel("accuracy", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
