"""`diversity`: intra-list distance, the mean pairwise cosine distance within the slate."""

from __future__ import annotations

import numpy as np
import torch

from marlrec.data import RecData
from marlrec.rewards import Reward, RewardConfig, SlateOutcome


class DiversityReward(Reward):
    """ILD = mean over unordered pairs of slate items of 1 - cos(e_i, e_j), in [0, 2].

    Clicks do not matter: it scores the slate shown. A slate of fewer than two items scores 0;
    a zero embedding counts as orthogonal to every other item.
    """

    Config = RewardConfig

    def __init__(self, config: RewardConfig, *, data: RecData, item_emb: torch.Tensor) -> None:
        super().__init__(config, data=data, item_emb=item_emb)
        emb = item_emb.detach().to("cpu", torch.float64).numpy()
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        self.unit = emb / np.where(norms > 0, norms, 1.0)

    def score(self, outcome: SlateOutcome) -> float:
        n = len(outcome.items)
        if n < 2:
            return 0.0
        unit = self.unit[outcome.items]
        cosine = unit @ unit.T
        upper = np.triu_indices(n, k=1)
        return float((1.0 - cosine[upper]).mean())
