"""User-state plugins (entry-point group `marlrec.states`): a user's history to one vector."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

import torch

from marlrec.data import Histories
from marlrec.encoders import Encoder
from marlrec.plugin import Plugin

# Rows per `forward` call of the padded default of `from_histories`: rows are grouped by
# history length so that padding stays small.
PADDED_CHUNK_ROWS = 64


class StateModel(Plugin, torch.nn.Module):
    """Constructed as `StateModel(config, item_dim=..., item_text=..., encoder=..., n_items=...)`.

    A torch module, so that a state with parameters trains inside the agents' networks.
    `item_dim` is the width of the item embeddings. `item_text` (the catalog's texts by item id)
    and `encoder` (the run's encoder, which embedded them) serve states that read the history as
    text; states over embeddings ignore them and can be built without them. `n_items` is the
    size of the catalog the run trains on (items added later have larger ids), for states that
    learn a parameter per item id.
    """

    def __init__(
        self,
        config: object,
        *,
        item_dim: int,
        item_text: Sequence[str] | None = None,
        encoder: Encoder | None = None,
        n_items: int | None = None,
    ) -> None:
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

    def forward_with_ids(
        self, history: torch.Tensor, lengths: torch.Tensor, ids: torch.Tensor
    ) -> torch.Tensor:
        """`forward` given the histories' item ids (B, L) too, -1 at padding.

        The agents' networks call this: they hold both. The default reads the embeddings only;
        states that learn from item ids override it.
        """
        return self(history, lengths)

    def from_histories(self, histories: Histories, item_emb: torch.Tensor) -> torch.Tensor:
        """States (B, dim) of packed histories of item ids, `item_emb` (n_items, item_dim).

        The same values as `forward` over the padded embeddings. This default pads rows of
        similar length together; states that pool or read a recent window override it so that
        no padding is built at all.
        """
        if len(histories) <= PADDED_CHUNK_ROWS:
            ids, lengths = histories.padded()
            return self(item_emb[ids.clamp(min=0)], lengths)
        order = torch.argsort(histories.lengths)
        states = item_emb.new_empty(len(histories), self.dim)
        for chunk in order.split(PADDED_CHUNK_ROWS):
            part = histories.select(chunk)
            states[chunk] = self.from_histories(part, item_emb)
        return states


def real_positions(history: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Boolean (B, L): which positions of a right-padded (B, L, ...) batch hold real items."""
    positions = torch.arange(history.shape[1], device=history.device)
    return positions < lengths.to(history.device).unsqueeze(1)


def masked_mean(history: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean over each history's first `lengths[b]` items (B, d); zeros for an empty one."""
    real = real_positions(history, lengths)
    # masked_fill, not a product: padding may hold anything, even NaN, and must not leak.
    total = history.masked_fill(~real.unsqueeze(-1), 0.0).sum(1)
    # clamp: an empty history sums to zero and stays zero instead of 0/0.
    return total / real.sum(1, keepdim=True).clamp(min=1).to(history.dtype)


def last_items(
    history: torch.Tensor, lengths: torch.Tensor, window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each history's last `window` items, still right-padded: (B, min(L, window), ...), lengths.

    Works for embeddings (B, L, d) and ids (B, L) alike.
    """
    lengths = lengths.to(history.device)
    if history.shape[1] <= window:
        return history, lengths
    start = (lengths - window).clamp(min=0)
    # start + window - 1 <= max(lengths, window) - 1 <= L - 1: the index never runs past L.
    index = start.unsqueeze(1) + torch.arange(window, device=history.device)
    rows = torch.arange(history.shape[0], device=history.device).unsqueeze(1)
    return history[rows, index], lengths.clamp(max=window)
