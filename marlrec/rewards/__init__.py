"""Reward plugins (entry-point group `marlrec.rewards`): each scores one answered slate.

The environment's global reward is the weighted sum of the configured rewards; every term is
also reported on its own.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from marlrec.data import RecData
from marlrec.plugin import Plugin


@dataclass(frozen=True)
class SlateOutcome:
    """One slate and the user's answer to it."""

    user: int
    items: np.ndarray  # (slate_size,) item ids in slot order
    roles: np.ndarray  # (slate_size,) index of the role that filled each slot
    clicks: np.ndarray  # (slate_size,) bool
    step: int  # 0-based slate number within the session
    leave: bool = False  # the user ends the session after this slate
    ratings: np.ndarray | None = None  # (slate_size,) the rating per slot, if the simulator knows


@dataclass(kw_only=True)
class RewardConfig:
    """Options every reward has; a reward's own `Config` extends this."""

    weight: float = 1.0
    """Weight of this term in the global reward."""


class Reward(Plugin):
    """Constructed as `Reward(config, data=..., item_emb=...)`; `config.weight` scales it."""

    Config = RewardConfig

    def __init__(self, config: RewardConfig, *, data: RecData, item_emb: torch.Tensor) -> None:
        super().__init__(config)
        self.data = data
        self.item_emb = item_emb

    @property
    def weight(self) -> float:
        return float(self.config.weight)

    @abstractmethod
    def score(self, outcome: SlateOutcome) -> float:
        """The unweighted value of this term for one answered slate."""
