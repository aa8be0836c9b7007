"""Baseline plugins (entry-point group `marlrec.baselines`): classical rankers, same harness."""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
import torch

from marlrec.data import RecData
from marlrec.plugin import Plugin


class Baseline(Plugin):
    """Constructed as `Baseline(config, data=..., item_emb=..., seed=...)`; fits on train data."""

    def __init__(self, config: object, *, data: RecData, item_emb: torch.Tensor, seed: int) -> None:
        super().__init__(config)
        self.data = data
        self.item_emb = item_emb
        self.seed = seed

    @abstractmethod
    def scores(self, users: np.ndarray) -> torch.Tensor:
        """Scores (len(users), n_items) for ranking; higher is better. History is masked later."""
