"""Reward plugins (entry-point group `marlrec.rewards`): each scores one answered slate.

The environment's global reward is the weighted sum of the configured rewards; every term is
also reported on its own, unweighted.
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
    """One slate and the user's answer to it: what `Reward.score` receives.

    It holds this slate only. The user's training history is `Reward.train_history(user)`;
    earlier slates of the session are not passed, so a reward that needs them keeps its own
    per-user record (a session starts again at `step == 0`).
    """

    user: int
    """The user's id, 0..n_users-1."""
    items: np.ndarray
    """(slate_size,) int item ids in slot order."""
    roles: np.ndarray
    """(slate_size,) int: the number of the role that filled each slot (its index in
    `env.roles`)."""
    clicks: np.ndarray
    """(slate_size,) bool: which slots the user clicked."""
    step: int
    """0-based number of this slate within the session."""
    leave: bool = False
    """The user ends the session after this slate."""
    ratings: np.ndarray | None = None
    """(slate_size,) float rating per slot where the simulator knows one, else None."""


@dataclass(kw_only=True)
class RewardConfig:
    """Options every reward has; a reward's own `Config` extends this."""

    weight: float = 1.0
    """Weight of this term in the global reward."""


class Reward(Plugin):
    """Constructed as `Reward(config, data=..., item_emb=...)`; `config.weight` scales it.

    `data` is the run's `RecData` and `item_emb` its (n_items, d) item embeddings. The
    environment calls `score` once per answered slate and adds `weight * score` to the global
    reward; logs and metrics report each term unweighted.
    """

    Config = RewardConfig

    def __init__(self, config: RewardConfig, *, data: RecData, item_emb: torch.Tensor) -> None:
        super().__init__(config)
        self.data = data
        self.item_emb = item_emb

    @property
    def weight(self) -> float:
        return float(self.config.weight)

    def train_history(self, user: int) -> np.ndarray:
        """The user's training-split item ids in time order.

        This is where every session of the user starts unless the simulator opens it from
        another history (the `replay` simulator's `cut` starts from a prefix of it); items
        clicked during the session are not included.
        """
        return self.data.train_histories[user]

    @abstractmethod
    def score(self, outcome: SlateOutcome) -> float:
        """The unweighted value of this term for one answered slate."""
