"""Batches for the train loop: a seeded, length-grouped order, and right-padded tensors."""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence

import torch

from trainers.sft_data import IGNORE_INDEX


def collate(batch: Sequence[Mapping[str, Sequence[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: input_ids with ``pad_id``, labels with IGNORE_INDEX, attention 0."""
    width = max(len(example["input_ids"]) for example in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, example in enumerate(batch):
        n = len(example["input_ids"])
        input_ids[row, :n] = torch.tensor(example["input_ids"], dtype=torch.long)
        labels[row, :n] = torch.tensor(example["labels"], dtype=torch.long)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, seed: int, group_factor: int = 50
) -> Iterator[list[int]]:
    """Batches of indices with similar lengths (less padding), still in a seeded random order.

    Shuffle, cut into groups of ``batch_size * group_factor``, sort each group by length, slice
    into batches, then shuffle the batches so long ones are not all at the end.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    group = batch_size * group_factor
    batches = []
    for start in range(0, len(order), group):
        members = sorted(order[start : start + group], key=lambda i: lengths[i])
        batches += [members[i : i + batch_size] for i in range(0, len(members), batch_size)]
    rng.shuffle(batches)
    yield from batches
