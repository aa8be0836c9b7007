"""`random` and `pop`: the two reference points every recommender must beat."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from marlrec.baselines import Baseline
from marlrec.baselines.bpr import sample_negatives
from marlrec.data import RecData
from marlrec.registry import PluginError


class RandomBaseline(Baseline):
    """Uniformly random ranking, reproducible for the run's seed."""

    def scores(self, users: np.ndarray) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        return torch.rand(len(users), self.data.n_items, generator=generator)


class PopularityBaseline(Baseline):
    """Items ranked by their number of training interactions (ties: lower item id first)."""

    @dataclass(kw_only=True)
    class Config:
        counting: Literal["interactions", "recbole_batches"] = "interactions"
        """`interactions`: true training counts. `recbole_batches`: RecBole 1.2.1's Pop, which
        counts an item once per training batch it appears in, as a positive or as a sampled
        negative (one epoch, seeded); for comparisons with RecBole's published figures."""
        batch_size: int = 2048
        """Rows per training batch, positives plus negatives (`recbole_batches` only)."""

    config: Config

    def __init__(self, config: Config, *, data: RecData, item_emb: torch.Tensor, seed: int) -> None:
        super().__init__(config, data=data, item_emb=item_emb, seed=seed)
        if config.counting == "recbole_batches":
            if config.batch_size < 2:
                raise PluginError(
                    "baseline 'pop': batch_size must be at least 2 (a positive and a negative)"
                )
            counts = recbole_batch_counts(data, seed, config.batch_size)
        else:
            counts = data.item_popularity
        self.popularity = torch.as_tensor(counts, dtype=torch.float32)

    def scores(self, users: np.ndarray) -> torch.Tensor:
        return self.popularity.expand(len(users), -1)


def recbole_batch_counts(data: RecData, seed: int, batch_size: int = 2048) -> np.ndarray:
    """Per item, the number of training batches it appears in, as RecBole 1.2.1's Pop counts.

    RecBole trains Pop (a pointwise model) for one epoch over the shuffled training
    interactions, `batch_size // 2` positives per batch, each with one negative drawn uniformly
    among the items its user has not interacted with in training; `calculate_loss` then does
    `item_cnt[item] += 1` with an index tensor full of repeats, which adds one per distinct item
    of the batch. Counts saturate at the number of batches, so the popular head ties and its
    order is decided by the tie-break rather than by popularity.
    """
    train = data.split.train
    positives = torch.from_numpy(np.unique(train.user * data.n_items + train.item))
    if (np.bincount(positives.numpy() // data.n_items) >= data.n_items).any():
        raise PluginError(
            "baseline 'pop': a user consumed every item, so no negative can be sampled"
        )
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train), generator=generator).numpy()
    users, items = train.user[order], train.item[order]
    negatives = sample_negatives(torch.from_numpy(users), positives, data.n_items, generator)
    batch = np.arange(len(order)) // (batch_size // 2)
    # Distinct (batch, item) pairs over positives and negatives, counted per item.
    pairs = np.concatenate([batch, batch]) * data.n_items + np.concatenate(
        [items, negatives.numpy()]
    )
    distinct_items = np.unique(pairs) % data.n_items
    return np.bincount(distinct_items, minlength=data.n_items).astype(np.float32)
