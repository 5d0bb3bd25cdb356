"""masked_label_smoothed_cross_entropy against PyTorch's definition and a hand-written formula."""

import pytest
import torch
import torch.nn.functional as F

from trainers.loss import masked_label_smoothed_cross_entropy, mean_loss

B, T, V = 3, 9, 17


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(B, T, V, generator=gen) * 3
    labels = torch.randint(0, V, (B, T), generator=gen)
    labels[:, :3] = -100  # prompt
    labels[1, 6:] = -100  # padding
    return logits, labels


def _shifted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return logits[:, :-1].reshape(-1, V).float(), labels[:, 1:].reshape(-1)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.2])
def test_matches_torch_label_smoothing(batch, beta):
    logits, labels = batch
    flat_logits, flat_labels = _shifted(logits, labels)
    expected = F.cross_entropy(flat_logits, flat_labels, ignore_index=-100, label_smoothing=beta)
    loss_sum, n = masked_label_smoothed_cross_entropy(logits, labels, beta)
    assert n.item() == (labels[:, 1:] != -100).sum().item()
    assert abs(loss_sum.item() / n.item() - expected.item()) <= 1e-6
    assert abs(mean_loss(logits, labels, beta).item() - expected.item()) <= 1e-6


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.2])
def test_matches_hand_written_formula(batch, beta):
    logits, labels = batch
    total, count = 0.0, 0
    logp = torch.log_softmax(logits.double(), dim=-1)
    for b in range(B):
        for t in range(T - 1):
            y = labels[b, t + 1].item()
            if y == -100:
                continue
            total += (1 - beta) * -logp[b, t, y].item() + beta * -logp[b, t].mean().item()
            count += 1
    loss_sum, n = masked_label_smoothed_cross_entropy(logits, labels, beta)
    assert n.item() == count
    assert loss_sum.item() == pytest.approx(total, rel=1e-6)


def test_zero_smoothing_is_plain_cross_entropy_exactly(batch):
    logits, labels = batch
    flat_logits, flat_labels = _shifted(logits, labels)
    mask = flat_labels != -100
    loss_sum, n = masked_label_smoothed_cross_entropy(logits, labels, 0.0)
    plain = F.cross_entropy(flat_logits[mask], flat_labels[mask], reduction="sum")
    assert torch.equal(loss_sum, plain)
    plain_ignore = F.cross_entropy(flat_logits, flat_labels, ignore_index=-100, reduction="sum")
    assert torch.equal(loss_sum, plain_ignore)


def test_causal_shift(batch):
    """Logits at t that put all mass on label t+1 give ~0 loss; unshifted ones do not."""
    _, labels = batch
    logits = torch.full((B, T, V), -30.0)
    for b in range(B):
        for t in range(T - 1):
            logits[b, t, labels[b, t + 1].clamp(min=0)] = 30.0
    assert mean_loss(logits, labels, 0.0).item() < 1e-6
    unshifted = torch.roll(logits, shifts=1, dims=1)
    assert mean_loss(unshifted, labels, 0.0).item() > 1.0


def test_bf16_logits_compute_in_float32(batch):
    logits, labels = batch
    low = logits.to(torch.bfloat16).requires_grad_()
    loss_sum, n = masked_label_smoothed_cross_entropy(low, labels, 0.1)
    assert loss_sum.dtype == torch.float32
    reference, _ = masked_label_smoothed_cross_entropy(low.detach().float(), labels, 0.1)
    assert torch.equal(loss_sum, reference)  # bf16 -> fp32 is exact; all math after is fp32
    (loss_sum / n).backward()
    assert low.grad is not None and low.grad.dtype == torch.bfloat16
    assert torch.all(low.grad[:, -1] == 0)  # the last position predicts nothing


def test_sums_accumulate_to_the_global_token_mean(batch):
    """Sum/count over micro-batches equals the mean over the whole batch (token weighting)."""
    logits, labels = batch
    parts = [
        masked_label_smoothed_cross_entropy(logits[i : i + 1], labels[i : i + 1], 0.1)
        for i in range(B)
    ]
    total = sum(s for s, _ in parts) / sum(n for _, n in parts)
    assert total.item() == pytest.approx(mean_loss(logits, labels, 0.1).item(), rel=1e-6)


def test_no_labelled_tokens():
    logits = torch.randn(2, 4, V, requires_grad=True)
    labels = torch.full((2, 4), -100)
    loss_sum, n = masked_label_smoothed_cross_entropy(logits, labels, 0.1)
    assert loss_sum.item() == 0.0 and n.item() == 0
    assert mean_loss(logits, labels, 0.1).item() == 0.0


def test_rejects_bad_smoothing(batch):
    with pytest.raises(ValueError, match="label smoothing"):
        masked_label_smoothed_cross_entropy(*batch, 1.5)
