"""User-simulator plugins (entry-point group `marlrec.simulators`): they answer a slate."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from marlrec.data import RecData
from marlrec.plugin import Plugin


@dataclass(frozen=True)
class Response:
    """A user's answer to one slate."""

    clicks: np.ndarray  # (slate_size,) bool, in slot order
    leave: bool  # the user ends the session after this slate
    ratings: np.ndarray | None = None  # (slate_size,) rating per slot where the simulator knows one


class Simulator(Plugin):
    """Constructed as `Simulator(config, data=..., item_emb=...)`."""

    def __init__(self, config: object, *, data: RecData, item_emb: torch.Tensor) -> None:
        super().__init__(config)
        self.data = data
        self.item_emb = item_emb

    @abstractmethod
    def respond(self, user: int, slate: np.ndarray, rng: np.random.Generator) -> Response:
        """Sample the user's clicks on `slate` (item ids in slot order) and whether they leave."""
