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


def examination(slate_size: int) -> np.ndarray:
    """Probability that each slot is looked at, 1 / log2(position + 2): the DCG position model."""
    return 1.0 / np.log2(np.arange(slate_size) + 2.0)


class Simulator(Plugin):
    """Constructed as `Simulator(config, data=..., item_emb=...)`."""

    def __init__(self, config: object, *, data: RecData, item_emb: torch.Tensor) -> None:
        super().__init__(config)
        self.data = data
        self.item_emb = item_emb

    def start_session(self, user: int, rng: np.random.Generator | None = None) -> np.ndarray | None:
        """Hook the environment calls when a session of `user` begins, before its first slate.

        Returns the history the session starts from, or None for the user's whole training
        history (the default). Simulators with per-session state (slates without a click, clicks
        so far) reset it here. They must also behave when it is never called: such a simulator
        opens a session at a user's first slate and again after a slate they left.
        """
        return None

    @abstractmethod
    def respond(self, user: int, slate: np.ndarray, rng: np.random.Generator) -> Response:
        """Sample the user's clicks on `slate` (item ids in slot order) and whether they leave."""
