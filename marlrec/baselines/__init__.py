"""Baseline plugins (entry-point group `marlrec.baselines`): classical rankers, same harness."""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import numpy as np
import torch

from marlrec.data import RecData, fill_histories, item_user_matrix, train_pairs

__all__ = ["Baseline", "binary_rows", "item_user_matrix", "train_pairs"]
from marlrec.plugin import Plugin


class Baseline(Plugin):
    """Constructed as `Baseline(config, data=..., item_emb=..., seed=...)`; fits on train data."""

    scores_unseen_items: ClassVar[bool] = False
    """Whether items without any training interaction get scores that rank them among the
    others (from their text, or by chance); models fitted on interactions alone give them
    nothing to go on, which the cold-item protocol reports beside their figures."""

    def __init__(self, config: object, *, data: RecData, item_emb: torch.Tensor, seed: int) -> None:
        super().__init__(config)
        self.data = data
        self.item_emb = item_emb
        self.seed = seed

    @abstractmethod
    def scores(self, users: np.ndarray) -> torch.Tensor:
        """Scores (len(users), n_items) for ranking; higher is better. A new tensor on every
        call, or a view (such as one row expanded to every user): evaluation masks each user's
        history in place in a new tensor, and copies a view first."""

    def rank_scores(self, users: np.ndarray, histories: list[np.ndarray]) -> torch.Tensor:
        """Scores given what each user had consumed before the held-out items being ranked.

        Models fitted on the train split score from what they learned (`scores`), as RecBole's
        general models do; sequence and content models override this to read `histories`.
        A new tensor on every call, or a view, as `scores`.
        """
        return self.scores(users)


def binary_rows(data: RecData, users: np.ndarray) -> torch.Tensor:
    """Dense 0/1 train rows (len(users), n_items) float32.

    Scoring uses the train history only, as RecBole's memory-based models do (their user
    vectors are rows of the train `inter_matrix`), even when ranking for the test split.
    """
    histories = [data.train_histories[int(u)] for u in users]
    return fill_histories(torch.zeros(len(users), data.n_items), histories, 1.0)
