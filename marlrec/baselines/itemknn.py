"""`itemknn`: item-based nearest neighbours on the binary train matrix, as RecBole's ItemKNN."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from marlrec.baselines import Baseline, binary_rows, item_user_matrix, train_pairs
from marlrec.data import RecData
from marlrec.registry import PluginError


class ItemKNNBaseline(Baseline):
    """Cosine item-item similarity, top-k neighbours per item; score = train history x similarity.

    The similarity is computed in chunks of target items, so memory stays at
    n_items x chunk_items dense plus the n_items x k sparse neighbour matrix.
    """

    @dataclass(kw_only=True)
    class Config:
        k: int = 100
        """Neighbours kept per item (RecBole's default)."""
        shrink: float = 0.0
        """Added to the cosine denominator; damps similarities resting on few co-occurrences."""
        chunk_items: int = 1024
        """Target items per similarity block (bounds memory: n_items x chunk_items floats)."""

    config: Config

    def __init__(self, config: Config, *, data: RecData, item_emb: torch.Tensor, seed: int) -> None:
        super().__init__(config, data=data, item_emb=item_emb, seed=seed)
        if config.k < 1 or config.chunk_items < 1:
            raise PluginError(f"{self.where}: k and chunk_items must be positive")
        # Stored transposed, (target, neighbour), so that scoring is one sparse @ dense product.
        self.weights_t = neighbour_weights(data, config.k, config.shrink, config.chunk_items)

    def scores(self, users: np.ndarray) -> torch.Tensor:
        history = binary_rows(self.data, users)
        return torch.sparse.mm(self.weights_t, history.T).T


def neighbour_weights(data: RecData, k: int, shrink: float, chunk_items: int) -> torch.Tensor:
    """Sparse (n_items, n_items) W^T: row j holds the k items most similar to target item j.

    Mirrors RecBole's ComputeSimilarity: cosine = co-counts / (|i| |j| + shrink + 1e-6) with
    the self-similarity zeroed before the top-k, and zero similarities left out.
    """
    x_t = item_user_matrix(data)
    norms = torch.sqrt(torch.sparse.sum(x_t, dim=1).to_dense())
    users, items = train_pairs(data)  # sorted by item, so a chunk of items is a slice
    bounds = np.searchsorted(items, np.arange(0, data.n_items + chunk_items, chunk_items))
    k = min(k, data.n_items)
    targets, neighbours, values = [], [], []
    for start in range(0, data.n_items, chunk_items):
        stop = min(start + chunk_items, data.n_items)
        lo, hi = bounds[start // chunk_items], bounds[start // chunk_items + 1]
        block = torch.zeros(data.n_users, stop - start)
        block[users[lo:hi], items[lo:hi] - start] = 1.0
        co_counts = torch.sparse.mm(x_t, block)  # (n_items, chunk): neighbour x target
        own = torch.arange(start, stop)
        co_counts[own, own - start] = 0.0
        similarity = co_counts / (norms[:, None] * norms[None, start:stop] + shrink + 1e-6)
        top = similarity.topk(k, dim=0)
        keep = top.values != 0.0
        targets.append(torch.nonzero(keep)[:, 1] + start)
        neighbours.append(top.indices[keep])
        values.append(top.values[keep])
    indices = torch.stack([torch.cat(targets), torch.cat(neighbours)])
    shape = (data.n_items, data.n_items)
    weights = torch.sparse_coo_tensor(indices, torch.cat(values), shape, check_invariants=False)
    return weights.coalesce()
