"""Length-grouped, rank-sharded batches and dynamic padding.

Why a sampler and not Ray Data's ``iter_torch_batches``: batches are planned from token lengths
alone, deterministically from ``(seed, epoch)``, so every rank computes the same global plan and
takes a disjoint slice of it. That gives length grouping across the whole dataset (IMDB capped at
512 tokens averages 265: padding every batch to 512 wastes half the compute), an identical number
of steps on every rank (DeepSpeed's collectives need it), and a data order that a resumed or
restarted run reproduces exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from transformers import DataCollatorWithPadding

# Batches are sorted by length inside windows of this many batches; the window keeps randomness.
MEGABATCH_FACTOR = 50


def train_batches(
    lengths: Sequence[int],
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    group_by_length: bool = True,
    multiple_of: int = 1,
) -> list[list[int]]:
    """Plan one epoch of training micro-batches for one rank.

    The plan is made at the level of *global* batches (``batch_size x world_size`` examples, one
    optimizer micro-step across all ranks): indices are shuffled by ``(seed, epoch)``; with
    ``group_by_length`` they are sorted by length inside windows of ``MEGABATCH_FACTOR`` global
    batches; full global batches are cut and their order shuffled again, except that the longest
    comes first (memory errors show at once). Rank ``r`` takes every ``world_size``-th example of
    each global batch, so ranks get equally long reviews (no rank waits on another) and a run on
    W workers sees the same global batches as one worker with a W times larger micro-batch. The
    step count is a multiple of ``multiple_of`` (gradient accumulation); examples left over
    change from epoch to epoch.

    Returns:
        This rank's micro-batches, each a list of example indices.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    global_size = batch_size * world_size
    if group_by_length and len(order):
        lens = np.asarray(lengths)
        windows = np.array_split(order, max(1, -(-len(order) // (global_size * MEGABATCH_FACTOR))))
        order = np.concatenate([w[np.argsort(-lens[w], kind="stable")] for w in windows])
    n_global = len(order) // global_size // multiple_of * multiple_of
    batches = [order[i * global_size : (i + 1) * global_size] for i in range(len(order) // global_size)]
    batch_order = rng.permutation(len(batches))
    if group_by_length and batches:
        longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
        batch_order = np.concatenate([[longest], batch_order[batch_order != longest]])
    return [batches[b][rank::world_size].tolist() for b in batch_order[:n_global]]


def eval_batches(lengths: Sequence[int], batch_size: int, *, rank: int = 0, world_size: int = 1) -> list[list[int]]:
    """Split every example exactly once across ranks (``rank::world_size``), sorted by length.

    Ranks may get a different number of batches; evaluation needs no lock-step.
    """
    mine = np.arange(rank, len(lengths), world_size)
    mine = mine[np.argsort([lengths[int(i)] for i in mine], kind="stable")]
    return [mine[i : i + batch_size].tolist() for i in range(0, len(mine), batch_size)]


def make_collator(tokenizer: Any, pad_to_multiple_of: int) -> DataCollatorWithPadding:
    """Dynamic padding to the longest in the batch, rounded up to bound the number of shapes."""
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt")


def iterate(
    inputs: Sequence[Sequence[int]],
    labels: np.ndarray | None,
    batches: list[list[int]],
    collate: DataCollatorWithPadding,
) -> Iterator[tuple[list[int], dict[str, Any]]]:
    """Yield ``(indices, padded batch)`` for each planned batch; ``labels`` become ``labels`` (class ids,
    or with ``(n, num_labels)`` multi-hot labels a float tensor of them)."""
    for idx in batches:
        features: list[dict[str, Any]] = [{"input_ids": inputs[i]} for i in idx]
        if labels is not None:
            for f, i in zip(features, idx):
                f["labels"] = int(labels[i]) if labels.ndim == 1 else [float(v) for v in labels[i]]
        yield idx, collate(features)
