"""`mean`: the user state is the average of the history's item embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from marlrec.data import Histories
from marlrec.states import StateModel, masked_mean


class MeanState(StateModel):
    """Masked mean over each history's first `lengths[b]` items; zeros for an empty one."""

    @dataclass(kw_only=True)
    class Config:
        pass

    @property
    def dim(self) -> int:
        return self.item_dim

    def forward(self, history: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return masked_mean(history, lengths)

    def from_histories(self, histories: Histories, item_emb: torch.Tensor) -> torch.Tensor:
        # One pooled gather over the packed ids; an empty bag's mean is zeros, as `forward`'s.
        return F.embedding_bag(histories.items, item_emb, histories.offsets, mode="mean")
