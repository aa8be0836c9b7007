"""`mean`: the user state is the average of the history's item embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from marlrec.states import StateModel


class MeanState(StateModel):
    """Masked mean over each history's first `lengths[b]` items; zeros for an empty one."""

    @dataclass(kw_only=True)
    class Config:
        pass

    @property
    def dim(self) -> int:
        return self.item_dim

    def forward(self, history: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(history.shape[1], device=history.device)
        mask = (positions < lengths.to(history.device).unsqueeze(1)).to(history.dtype)
        total = (history * mask.unsqueeze(-1)).sum(1)
        # clamp: an empty history sums to zero and stays zero instead of 0/0.
        return total / mask.sum(1, keepdim=True).clamp(min=1.0)
