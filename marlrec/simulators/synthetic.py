"""`synthetic`: users answer with the ground-truth tastes behind the synthetic dataset.

A slot is examined with probability 1 / log2(position + 2) (the DCG position model) and, once
examined, clicked with probability sigmoid(sharpness * z + bias), where z is the true affinity
standardised over the catalog. Because the truth is known, regret is measurable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from marlrec.data import RecData
from marlrec.registry import PluginError
from marlrec.simulators import Response, Simulator, examination


@dataclass(kw_only=True)
class SyntheticSimulatorConfig:
    sharpness: float = 1.5
    """How strongly the standardised affinity drives clicks."""
    bias: float = -3.0
    """Click logit of an item of average affinity."""
    leave_no_click: float = 0.3
    """Probability of leaving after a slate without clicks."""
    leave_base: float = 0.05
    """Probability of leaving after a slate with at least one click."""


class SyntheticSimulator(Simulator):
    Config = SyntheticSimulatorConfig

    def __init__(
        self, config: SyntheticSimulatorConfig, *, data: RecData, item_emb: torch.Tensor
    ) -> None:
        super().__init__(config, data=data, item_emb=item_emb)
        if data.truth is None:
            raise PluginError(
                f"{self.where} needs a dataset with ground-truth tastes "
                f"(data=synthetic), but dataset '{data.name}' has none"
            )
        self.truth = data.truth
        rng = np.random.default_rng(0)
        users = rng.integers(0, data.n_users, 100_000)
        items = rng.integers(0, data.n_items, 100_000)
        sample = self.truth.affinity(users, items)
        sample = sample[np.isfinite(sample)]  # items added after training have no true profile
        self._mean, self._std = float(sample.mean()), float(sample.std()) or 1.0

    def click_probability(self, user: int, slate: np.ndarray) -> np.ndarray:
        """Probability of a click in each slot of the slate, position bias included."""
        z = (self.truth.affinity(np.full(len(slate), user), slate) - self._mean) / self._std
        attractive = 1.0 / (1.0 + np.exp(-(self.config.sharpness * z + self.config.bias)))
        return attractive * examination(len(slate))

    def respond(self, user: int, slate: np.ndarray, rng: np.random.Generator) -> Response:
        clicks = rng.random(len(slate)) < self.click_probability(user, slate)
        p_leave = self.config.leave_base if clicks.any() else self.config.leave_no_click
        return Response(clicks=clicks, leave=bool(rng.random() < p_leave))
