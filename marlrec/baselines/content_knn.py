"""`content_knn`: nearest neighbours in the language model's item embedding space.

score(u, i) = mean cosine similarity between item i's text embedding and the `k` most similar
of the user's `recent` history items (`top_k_mean`), or the cosine between item i and the mean
of the history's unit embeddings (`centroid`). Nothing is fitted on interactions, so an item is
scored as soon as its text is encoded (cold-start items), and any history works, even one
with items the training split never saw. A user without history scores every item 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from marlrec.baselines import Baseline
from marlrec.data import RecData
from marlrec.registry import PluginError


class ContentKNNBaseline(Baseline):
    """Ranks items by text-embedding similarity to what the user consumed."""

    scores_unseen_items = True

    @dataclass(kw_only=True)
    class Config:
        aggregate: Literal["top_k_mean", "centroid"] = "top_k_mean"
        """`top_k_mean`: mean of the k best similarities to history items; `centroid`:
        similarity to the mean history embedding."""
        k: int = 1
        """History items averaged per candidate under `top_k_mean` (1: the nearest one)."""
        recent: int = 10
        """Most recent history items read per user."""
        chunk_users: int = 64
        """Users scored together (memory: chunk_users x recent x n_items similarities)."""

    config: Config

    def __init__(self, config: Config, *, data: RecData, item_emb: torch.Tensor, seed: int) -> None:
        super().__init__(config, data=data, item_emb=item_emb, seed=seed)
        if min(config.k, config.recent, config.chunk_users) < 1:
            raise PluginError(f"{self.where}: k, recent and chunk_users must be at least 1")
        if len(item_emb) != data.n_items:
            raise PluginError(
                f"{self.where}: {len(item_emb)} item embeddings for {data.n_items} items"
            )
        self.unit = torch.nn.functional.normalize(item_emb.detach().float(), dim=-1)

    def scores(self, users: np.ndarray) -> torch.Tensor:
        histories = [self.data.history_before(int(u), "test") for u in users]
        return self.rank_scores(users, histories)

    @torch.no_grad()
    def rank_scores(self, users: np.ndarray, histories: list[np.ndarray]) -> torch.Tensor:
        step = self.config.chunk_users
        parts = [self._chunk(histories[i : i + step]) for i in range(0, len(histories), step)]
        return torch.cat(parts) if parts else torch.zeros(0, self.data.n_items)

    def _chunk(self, histories: list[np.ndarray]) -> torch.Tensor:
        recent, valid = padded_recent(histories, self.config.recent, self.unit.device)
        vectors = self.unit[recent] * valid[..., None]  # (B, L, d), padding as zero vectors
        if self.config.aggregate == "centroid":
            centroid = torch.nn.functional.normalize(vectors.sum(dim=1), dim=-1)
            return centroid @ self.unit.T
        similarity = vectors @ self.unit.T  # (B, L, n_items)
        similarity.masked_fill_(~valid[..., None], -torch.inf)
        k = min(self.config.k, similarity.shape[1])
        best = similarity.topk(k, dim=1).values  # (B, k, n_items)
        finite = torch.isfinite(best)
        total = best.masked_fill(~finite, 0.0).sum(dim=1)
        return total / finite.sum(dim=1).clamp(min=1)


def padded_recent(
    histories: list[np.ndarray], recent: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) the last `recent` items of each history, padded with item 0, and a validity mask."""
    lengths = np.array([min(len(h), recent) for h in histories], dtype=np.int64)
    width = max(1, int(lengths.max(initial=0)))
    items = np.zeros((len(histories), width), dtype=np.int64)
    rows = np.repeat(np.arange(len(histories)), lengths)
    cols = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    if len(rows):
        items[rows, cols] = np.concatenate(
            [h[len(h) - n :] for h, n in zip(histories, lengths, strict=True)]
        )
    valid = torch.from_numpy(np.arange(width)[None, :] < lengths[:, None])
    return torch.from_numpy(items).to(device), valid.to(device)
