"""`revenue`: the sum of a numeric item attribute (price, margin...) over clicked items."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from marlrec.data import RecData
from marlrec.registry import PluginError
from marlrec.rewards import Reward, RewardConfig, SlateOutcome


class RevenueReward(Reward):
    """Sums `item_attributes[attribute]` over the clicked items; a missing value (NaN) is 0.

    The dataset must carry the attribute as one number per item: otherwise construction fails
    with a one-line error naming the attribute and the dataset, before any training starts.
    """

    @dataclass(kw_only=True)
    class Config(RewardConfig):
        attribute: str = "price"
        """The numeric per-item attribute that a click earns (price, margin...)."""

    config: Config

    def __init__(self, config: Config, *, data: RecData, item_emb: torch.Tensor) -> None:
        super().__init__(config, data=data, item_emb=item_emb)
        self.value = _numeric_attribute(data, config.attribute, self.where, self.name)

    def score(self, outcome: SlateOutcome) -> float:
        return float(self.value[outcome.items[np.asarray(outcome.clicks, dtype=bool)]].sum())


def _numeric_attribute(data: RecData, attribute: str, reward: str, name: str) -> np.ndarray:
    where = f"{reward}: dataset '{data.name}'"
    if attribute not in data.item_attributes:
        present = ", ".join(sorted(data.item_attributes)) or "none"
        raise PluginError(
            f"{where} has no item attribute '{attribute}' (reward.{name}.attribute); "
            f"its attributes: {present}"
        )
    values = np.asarray(data.item_attributes[attribute])
    if values.shape != (data.n_items,) or not np.issubdtype(values.dtype, np.number):
        raise PluginError(
            f"{where}: item attribute '{attribute}' must be one number per item, "
            f"got {values.dtype} values of shape {values.shape}"
        )
    return np.nan_to_num(values.astype(np.float64), nan=0.0)
