"""`rating`: the ratings of the clicked items, summed over the slate."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from marlrec.data import RecData
from marlrec.rewards import Reward, RewardConfig, SlateOutcome


class RatingReward(Reward):
    """Sums, over clicked slots, the rating the simulator reports for the slot.

    Where the simulator reports none (no `ratings`, or NaN in a clicked slot), the item's mean
    training rating stands in; an item never rated in training gets the global mean. With
    `normalize`, the sum is divided by the highest training rating (5 on MovieLens), so each
    click is worth at most 1.
    """

    @dataclass(kw_only=True)
    class Config(RewardConfig):
        normalize: bool = False
        """Divide by the highest rating in training, so a click is worth at most 1."""

    config: Config

    def __init__(self, config: Config, *, data: RecData, item_emb: torch.Tensor) -> None:
        super().__init__(config, data=data, item_emb=item_emb)
        train = data.split.train
        counts = np.bincount(train.item, minlength=data.n_items)
        sums = np.bincount(train.item, weights=train.value, minlength=data.n_items)
        global_mean = float(train.value.mean()) if len(train) else 0.0
        self.item_mean = np.where(counts > 0, sums / np.maximum(counts, 1), global_mean)
        self.scale = float(train.value.max()) if config.normalize and len(train) else 1.0

    def score(self, outcome: SlateOutcome) -> float:
        clicked = np.asarray(outcome.clicks, dtype=bool)
        fallback = self.item_mean[outcome.items]
        if outcome.ratings is None:
            ratings = fallback
        else:
            reported = np.asarray(outcome.ratings, dtype=np.float64)
            ratings = np.where(np.isnan(reported), fallback, reported)
        return float(ratings[clicked].sum() / self.scale)
