"""Label-smoothed cross-entropy over response tokens, returned as a sum plus a token count.

Returning the sum (not the mean) lets the training loop divide by the *global* number of response
tokens across micro-batches and workers, so every response token weighs the same whatever the
padding or the split into micro-batches (DESIGN.md, "Training").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def masked_label_smoothed_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, smoothing: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss over the labelled tokens and their count (a long tensor).

    logits (B, T, V) at position t predict labels (B, T) at t + 1 (the causal shift is done here);
    labels equal to -100 are ignored. Per token, with beta = ``smoothing`` and p = softmax(logits):
    ``(1 - beta) * -log p[label] + beta * mean_v(-log p[v])``, which is exactly PyTorch's
    ``cross_entropy(label_smoothing=beta)``; beta = 0 is plain cross-entropy (nats).

    The labelled positions are gathered *before* the float32 upcast, so a bf16 (B, T, V) tensor is
    never copied to float32 in full (prompt tokens are most of a batch). The log-softmax runs in
    float32 whatever the logits' dtype.
    """
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"label smoothing must be in [0, 1], got {smoothing}")
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    selected = logits[:, :-1][mask].float()  # (N, V)
    loss_sum = F.cross_entropy(selected, targets[mask], reduction="sum", label_smoothing=smoothing)
    return loss_sum, mask.sum()


def mean_loss(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Per-token mean of ``masked_label_smoothed_cross_entropy`` for one batch (0 when empty)."""
    loss_sum, n_tokens = masked_label_smoothed_cross_entropy(logits, labels, smoothing)
    return loss_sum / n_tokens.clamp(min=1)
