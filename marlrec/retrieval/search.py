"""Top-M search over item vectors by inner product, each user's consumed items left out.

Two ways, chosen by a retriever's `index` option:
- `exact`: every item scored, `chunk_items` at a time, a running top M merged chunk by chunk.
  Memory stays at users x chunk_items whatever the catalog; the same tensor operations run on
  the CPU and on CUDA, with no transfer to the host.
- `faiss`: an approximate inverted-file index (FAISS `IndexIVFFlat`, inner product) built once
  over the item vectors: a query scans only the `nprobe` lists nearest to it, so its cost grows
  with about sqrt(n_items) rather than n_items. FAISS searches on the CPU; results come back to
  the queries' device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from marlrec.data import Histories
from marlrec.registry import PluginError

IndexKind = Literal["exact", "faiss"]


@dataclass(kw_only=True)
class IndexConfig:
    """How a retriever finds each user's top items among the item vectors."""

    index: IndexKind = "exact"
    """`exact`: score every item (in chunks of `chunk_items`); `faiss`: an approximate FAISS
    inverted-file index, for catalogs of hundreds of thousands of items and more (needs the
    `faiss-cpu` package)."""
    chunk_items: int = 65536
    """Exact search: items scored at once (memory: users x chunk_items scores)."""
    nlist: int = 0
    """FAISS: inverted lists (k-means cells) the items are split into; 0 picks 4 sqrt(n_items)
    (FAISS's guideline), at most n_items / 39 (its fewest training points per cell)."""
    nprobe: int = 32
    """FAISS: lists scanned per query (32 of 4,000 at a million items); more is slower and
    nearer to exact. How near depends on how clustered the item vectors are: check recall
    against `index=exact` on a sample of users before relying on it."""

    def __post_init__(self) -> None:
        if self.index not in ("exact", "faiss"):
            raise PluginError(f"retrieval.index must be 'exact' or 'faiss', got {self.index!r}")
        for key in ("chunk_items", "nprobe"):
            if getattr(self, key) < 1:
                raise PluginError(f"retrieval.{key} must be at least 1, got {getattr(self, key)}")
        if self.nlist < 0:
            raise PluginError(f"retrieval.nlist must be 0 (automatic) or more, got {self.nlist}")


def mask_consumed(scores: torch.Tensor, histories: Histories, first_item: int = 0) -> None:
    """Set each row's consumed items to -inf in place; `scores` covers items `first_item` on.

    Items outside the block add 0 at a clamped column instead, so that no index is filtered
    on the host (-inf + x and 0 + x are exact in any order of accumulation).
    """
    column = histories.items - first_item
    width = scores.shape[1]
    inside = (column >= 0) & (column < width)
    penalty = torch.zeros(column.shape, dtype=scores.dtype, device=scores.device)
    penalty.masked_fill_(inside, -torch.inf)
    scores.index_put_((histories.rows(), column.clamp(0, width - 1)), penalty, accumulate=True)


def exact_top(
    queries: torch.Tensor, items: torch.Tensor, m: int, histories: Histories, chunk_items: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The m items (B, m) of highest `queries @ items.T`, best first, and their scores;
    consumed items score -inf. A catalog of one chunk is one `topk`, as unchunked."""
    n_items = items.shape[0]
    if n_items <= chunk_items:
        scores = queries @ items.T
        scores[histories.rows(), histories.items] = -torch.inf
        top = scores.topk(m, dim=1)
        return top.indices, top.values
    best_ids = best_scores = None
    for start in range(0, n_items, chunk_items):
        scores = queries @ items[start : start + chunk_items].T
        mask_consumed(scores, histories, start)
        top = scores.topk(min(m, scores.shape[1]), dim=1)
        ids, values = top.indices + start, top.values
        if best_ids is not None and best_scores is not None:
            ids, values = torch.cat([best_ids, ids], dim=1), torch.cat([best_scores, values], 1)
            keep = values.topk(m, dim=1)
            ids, values = ids.gather(1, keep.indices), keep.values
        best_ids, best_scores = ids, values
    assert best_ids is not None and best_scores is not None
    return best_ids, best_scores


def load_faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise PluginError(
            "retrieval.index=faiss needs the faiss-cpu package: pip install faiss-cpu"
        ) from None
    return faiss


class FaissIndex:
    """An IVF-Flat inner-product index over fixed item vectors (n_items, d)."""

    def __init__(self, items: torch.Tensor, config: IndexConfig) -> None:
        faiss = load_faiss()
        vectors = np.ascontiguousarray(items.detach().float().cpu().numpy())
        n_items, dim = vectors.shape
        nlist = config.nlist or round(4 * math.sqrt(n_items))
        nlist = max(1, min(nlist, n_items // 39))
        self.quantizer = faiss.IndexFlatIP(dim)  # kept: the index does not own it
        self.index = faiss.IndexIVFFlat(self.quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        # k-means on up to 64 points per cell: enough for cells of items, and quick.
        self.index.cp.max_points_per_centroid = 64
        self.index.train(vectors)
        self.index.add(vectors)
        self.index.nprobe = min(config.nprobe, nlist)
        self.n_items, self.nlist, self.nprobe = n_items, nlist, self.index.nprobe

    def search(
        self, queries: torch.Tensor, m: int, histories: Histories
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The m best unconsumed items found for each query, best first, their scores, and
        (B,) whether m were found (rows that were not get -inf scores past what was)."""
        longest = int(histories.lengths.max()) if len(histories) else 0
        wanted = min(m + longest, self.n_items)  # m left after the consumed ones drop out
        found = queries.detach().float().cpu().numpy()
        scores_np, ids_np = self.index.search(np.ascontiguousarray(found), wanted)
        ids = torch.from_numpy(ids_np).to(queries.device)
        scores = torch.from_numpy(scores_np).to(queries.device)
        scores.masked_fill_((ids < 0) | consumed(ids, histories, self.n_items), -torch.inf)
        top = scores.topk(m, dim=1)
        complete = torch.isfinite(top.values[:, -1])
        return ids.clamp(min=0).gather(1, top.indices), top.values, complete


def consumed(ids: torch.Tensor, histories: Histories, n_items: int) -> torch.Tensor:
    """(B, K) bool: whether each listed item is in its row's history."""
    keys = torch.sort(histories.rows() * n_items + histories.items).values
    if len(keys) == 0:
        return torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
    rows = torch.arange(len(ids), device=ids.device)[:, None]
    query = rows * n_items + ids
    at = torch.searchsorted(keys, query).clamp(max=len(keys) - 1)
    return keys[at] == query


class ItemSearch:
    """Top-M search over fixed item vectors, exact or through a FAISS index built lazily."""

    def __init__(self, items: torch.Tensor, config: IndexConfig) -> None:
        self.items = items
        self.config = config
        self._faiss: FaissIndex | None = None
        if config.index == "faiss":
            load_faiss()  # a missing package fails when the retriever is built, not mid-run

    def __getstate__(self) -> dict[str, Any]:
        # A FAISS index does not pickle: env copies in spawned workers build their own.
        return {**self.__dict__, "_faiss": None}

    @property
    def faiss_index(self) -> FaissIndex | None:
        """The FAISS index, once a search has built it."""
        return self._faiss

    def top(
        self, queries: torch.Tensor, m: int, histories: Histories
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The m best unconsumed items (B, m) by inner product, best first, and their scores;
        -inf where fewer remain. Rows the index could not fill are searched exactly."""
        if self.config.index == "exact":
            return exact_top(queries, self.items, m, histories, self.config.chunk_items)
        if self._faiss is None:
            self._faiss = FaissIndex(self.items, self.config)
        ids, scores, complete = self._faiss.search(queries, m, histories)
        short = torch.nonzero(~complete).flatten()
        if len(short):
            part = histories.select(short)
            redo = exact_top(queries[short], self.items, m, part, self.config.chunk_items)
            ids[short], scores[short] = redo
        return ids, scores
