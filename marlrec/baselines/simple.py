"""`random` and `pop`: the two reference points every recommender must beat."""

from __future__ import annotations

import numpy as np
import torch

from marlrec.baselines import Baseline


class RandomBaseline(Baseline):
    """Uniformly random ranking, reproducible for the run's seed."""

    scores_unseen_items = True  # by chance, as every other item

    def scores(self, users: np.ndarray) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        return torch.rand(len(users), self.data.n_items, generator=generator)


class PopularityBaseline(Baseline):
    """Items ranked by their number of training interactions (ties: lower item id first).

    RecBole's `Pop` counts differently (once per training batch); `benchmarks/recbole_pop.py`
    reproduces it to compare with RecBole's published figures.
    """

    def scores(self, users: np.ndarray) -> torch.Tensor:
        # A new tensor (rankers mask the history in it, in place), never a view of the counts.
        return torch.from_numpy(self.data.item_popularity).repeat(len(users), 1)
