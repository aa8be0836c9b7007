"""`long_tail`: the number of clicked items from outside the catalog's popular head."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from marlrec.api import PluginError, RecData, Reward, RewardConfig, SlateOutcome


class LongTailReward(Reward):
    """Counts clicks on tail items, to reward agents that do not just push the bestsellers.

    The head is the `ceil(head_share * n_items)` items with the most training interactions;
    among equally popular items the lower id is in the head. Every other item is tail.
    """

    @dataclass(kw_only=True)
    class Config(RewardConfig):
        head_share: float = 0.2
        """Fraction of items, by training popularity, that counts as the head (0 < x < 1)."""

        def __post_init__(self) -> None:
            # Checked with the rest of the config, before anything is built.
            if not 0 < self.head_share < 1:
                raise PluginError(
                    f"reward.long_tail.head_share must be in (0, 1), got {self.head_share}"
                )

    config: Config

    def __init__(self, config: Config, *, data: RecData, item_emb: torch.Tensor) -> None:
        super().__init__(config, data=data, item_emb=item_emb)
        n_head = math.ceil(config.head_share * data.n_items)
        # A stable sort of negated counts keeps ties in id order, so the head is reproducible.
        by_popularity = np.argsort(-data.item_popularity, kind="stable")
        self.is_tail = np.ones(data.n_items, dtype=bool)
        self.is_tail[by_popularity[:n_head]] = False

    def score(self, outcome: SlateOutcome) -> float:
        return float((outcome.clicks & self.is_tail[outcome.items]).sum())
