"""`novelty`: the mean self-information -log2 p(item) of the slate's items."""

from __future__ import annotations

import numpy as np
import torch

from marlrec.data import RecData
from marlrec.rewards import Reward, RewardConfig, SlateOutcome


class NoveltyReward(Reward):
    """Mean over the slate of -log2 p(i), p(i) = (count_i + 1) / (n_train + n_items).

    `count_i` is the item's number of training interactions and `n_train` their total: the
    Laplace-smoothed share of training interactions, so an item never seen in training has a
    finite, maximal novelty and the p(i) sum to 1 over the catalog.
    """

    Config = RewardConfig

    def __init__(self, config: RewardConfig, *, data: RecData, item_emb: torch.Tensor) -> None:
        super().__init__(config, data=data, item_emb=item_emb)
        counts = np.bincount(data.split.train.item, minlength=data.n_items).astype(np.float64)
        share = (counts + 1.0) / (counts.sum() + data.n_items)
        self.self_information = -np.log2(share)

    def score(self, outcome: SlateOutcome) -> float:
        if len(outcome.items) == 0:
            return 0.0
        return float(self.self_information[outcome.items].mean())
