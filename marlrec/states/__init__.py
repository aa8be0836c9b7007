"""User-state plugins (entry-point group `marlrec.states`): item-embedding history to a vector."""

from __future__ import annotations

from abc import abstractmethod

import torch

from marlrec.plugin import Plugin


class StateModel(Plugin, torch.nn.Module):
    """Constructed as `StateModel(config, item_dim=...)`; a torch module so it can train."""

    def __init__(self, config: object, *, item_dim: int) -> None:
        Plugin.__init__(self, config)
        torch.nn.Module.__init__(self)
        self.item_dim = item_dim

    @property
    @abstractmethod
    def dim(self) -> int:
        """Size of the state vector."""

    @abstractmethod
    def forward(self, history: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Map padded histories (B, L, item_dim) with true lengths (B,) to states (B, dim).

        Position i < lengths[b] holds the b-th user's i-th item in time order; an empty
        history (length 0) must give a finite state.
        """
