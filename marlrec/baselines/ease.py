"""`ease`: EASE (Steck, 2019), a closed-form item-item linear autoencoder, as RecBole's EASE."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from marlrec.baselines import Baseline, binary_rows
from marlrec.data import RecData
from marlrec.registry import PluginError
from marlrec.retrieval.ease import ease_weights


class EASEBaseline(Baseline):
    """B = I - P / diag(P) with P = (X^T X + l2 I)^-1, so diag(B) = 0; score = train row x B.

    Needs an n_items x n_items dense matrix and its inverse: fine up to a few 10k items.
    """

    @dataclass(kw_only=True)
    class Config:
        l2: float = 250.0
        """L2 weight lambda on B (RecBole's default reg_weight)."""

    config: Config

    def __init__(self, config: Config, *, data: RecData, item_emb: torch.Tensor, seed: int) -> None:
        super().__init__(config, data=data, item_emb=item_emb, seed=seed)
        if config.l2 <= 0:
            raise PluginError(f"{self.where}: l2 must be positive, got {config.l2}")
        self.weights = ease_weights(data, config.l2)

    def scores(self, users: np.ndarray) -> torch.Tensor:
        return binary_rows(self.data, users) @ self.weights
