"""`coverage`: how many of the slate's items were never shown before in this run."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from marlrec.data import RecData
from marlrec.rewards import Reward, RewardConfig, SlateOutcome


class CoverageReward(Reward):
    """Counts the slate's items that no earlier slate of this run showed (stateful).

    Every scored slate marks its items as shown; an item twice in one slate counts once.
    With `share`, the count is divided by the slate size. `reset()` forgets what was shown.
    In a run with several worker processes each process keeps its own record.
    """

    @dataclass(kw_only=True)
    class Config(RewardConfig):
        share: bool = False
        """Report the share of new items in the slate instead of their number."""

    config: Config

    def __init__(self, config: Config, *, data: RecData, item_emb: torch.Tensor) -> None:
        super().__init__(config, data=data, item_emb=item_emb)
        self.shown = np.zeros(data.n_items, dtype=bool)

    def reset(self) -> None:
        """Forget every item shown so far."""
        self.shown[:] = False

    def score(self, outcome: SlateOutcome) -> float:
        if len(outcome.items) == 0:
            return 0.0
        items = np.unique(outcome.items)
        new = int((~self.shown[items]).sum())
        self.shown[items] = True
        return new / len(outcome.items) if self.config.share else float(new)
