"""Ranking primitives: deterministic top-k, held-out targets as masks, sampled negatives.

Ties: items with equal scores are ordered by item id, lower id first, on every device. torch's
own `topk` leaves the order of equal values unspecified (and it differs between CPU and CUDA),
which would make a popularity ranking, full of ties, depend on the hardware.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from marlrec.data import RecData
from marlrec.registry import MarlrecError


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Item ids (rows, k) of each row's k highest scores, best first, ties by lower id.

    One `topk` for k + 1 items. Without two equal scores among them, its order is the answer
    (the usual case with float scores). Otherwise equal scores among the k kept are ordered by
    id from the topk's own values (no second read of the scores), and a row needs its ties
    resolved by id beyond the cut only when its k-th and (k + 1)-th scores are equal: the few
    rows where that happens are redone exactly.
    """
    n_items = scores.shape[1]
    if k >= n_items:
        order = scores.sort(dim=1, descending=True, stable=True)
        _check_finite(order.values[:, :1])
        return order.indices
    values, indices = scores.topk(k + 1, dim=1)
    _check_finite(values[:, :1])  # topk ranks NaN above everything: it would be first
    tied = values[:, 1:] == values[:, :-1]  # (rows, k): neighbours in score order
    if not bool(tied.any()):
        return indices[:, :k]
    indices = indices[:, :k]
    # Equal scores form one group, numbered down the descending scores; ids ascend within one.
    first = torch.zeros_like(indices[:, :1])
    group = torch.cat([first, (~tied[:, : k - 1]).long().cumsum(dim=1)], dim=1)
    indices = indices.gather(1, (group * n_items + indices).argsort(dim=1))
    spill = torch.nonzero(tied[:, k - 1]).flatten()
    if len(spill):
        indices[spill] = _by_score_then_id(
            scores[spill], _top_k_by_id(scores[spill], values[spill, k - 1 : k], k)
        )
    return indices


def _check_finite(best: torch.Tensor) -> None:
    if bool(torch.isnan(best).any()):
        raise MarlrecError("a model produced NaN scores: cannot rank its items")


def _by_score_then_id(scores: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Each row's `ids` (ascending) ordered by score, descending; equal scores keep id order."""
    by_score = scores.gather(1, ids).sort(dim=1, descending=True, stable=True).indices
    return ids.gather(1, by_score)


def _top_k_by_id(scores: torch.Tensor, kth: torch.Tensor, k: int) -> torch.Tensor:
    """Rows whose k-th score is tied beyond the cut: every item above it, then ties by id."""
    above = scores > kth
    tied = scores == kth
    room = k - above.sum(dim=1, keepdim=True)
    keep = above | (tied & (tied.cumsum(dim=1) <= room))
    # nonzero is row-major, so each row's k kept ids come out in ascending order.
    return torch.nonzero(keep)[:, 1].view(len(scores), k)


@dataclass(frozen=True)
class HeldOut:
    """Each user's held-out items of one split, as CSR: `items[offsets[u]:offsets[u + 1]]`."""

    offsets: np.ndarray  # (n_users + 1,) int64
    items: np.ndarray  # int64

    @classmethod
    def of(cls, data: RecData, split: str) -> HeldOut:
        """Every held-out item (several per user under temporal or random splits)."""
        held_out = getattr(data.split, "held_out_interactions", None)
        if held_out is not None:
            part = held_out(split)
            offsets = np.searchsorted(part.user, np.arange(data.n_users + 1))
            return cls(offsets.astype(np.int64), np.asarray(part.item, dtype=np.int64))
        single = data.split.test_item if split == "test" else data.split.valid_item
        has = single >= 0
        offsets = np.concatenate([[0], np.cumsum(has)]).astype(np.int64)
        return cls(offsets, single[has].astype(np.int64))

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def rows_and_items(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row in `users`, item) for every held-out item of these users, row-major."""
        starts, stops = self.offsets[users], self.offsets[users + 1]
        lengths = stops - starts
        rows = np.repeat(np.arange(len(users)), lengths)
        # Positions of every selected item in `items`, without a loop over users.
        within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return rows, self.items[np.repeat(starts, lengths) + within]

    def targets(self, users: np.ndarray, n_items: int, device: torch.device) -> ChunkTargets:
        rows, items = self.rows_and_items(users)
        keys = np.sort(rows * n_items + items)
        counts = np.diff(self.offsets)[users]
        return ChunkTargets(
            keys=torch.as_tensor(keys, device=device),
            counts=torch.as_tensor(counts, dtype=torch.float32, device=device),
            n_items=n_items,
        )

    def mask(self, users: np.ndarray, n_items: int, device: torch.device) -> torch.Tensor:
        """(len(users), n_items) bool: True at each user's held-out items."""
        rows, items = self.rows_and_items(users)
        mask = torch.zeros(len(users), n_items, dtype=torch.bool, device=device)
        if len(rows):
            mask[torch.as_tensor(rows, device=device), torch.as_tensor(items, device=device)] = True
        return mask


@dataclass(frozen=True)
class ChunkTargets:
    """The held-out items of a chunk of users as sorted keys `row * n_items + item`.

    Hits are then a binary search per listed item: no (users x n_items) matrix is built.
    """

    keys: torch.Tensor  # (n_targets_in_chunk,) long, sorted
    counts: torch.Tensor  # (users,) float: held-out items per user
    n_items: int

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> ChunkTargets:
        rows, items = torch.nonzero(mask, as_tuple=True)
        keys = rows * mask.shape[1] + items  # nonzero is row-major: already sorted
        return cls(keys, mask.sum(dim=1).float(), mask.shape[1])

    def hits(self, top_items: torch.Tensor) -> torch.Tensor:
        """(users, K) float: 1 where a listed item is one of the user's held-out items."""
        if len(self.keys) == 0:
            return torch.zeros(top_items.shape, device=top_items.device)
        rows = torch.arange(len(top_items), device=top_items.device)[:, None]
        query = rows * self.n_items + top_items
        at = torch.searchsorted(self.keys, query).clamp(max=len(self.keys) - 1)
        return (self.keys[at] == query).float()


def sample_negatives(
    excluded: torch.Tensor, num_negatives: int, generator: torch.Generator
) -> torch.Tensor:
    """(rows, n_items) bool: `num_negatives` items per row drawn uniformly, without replacement,
    among the items not `excluded` (history and targets); fewer when fewer are left.

    Drawn as the smallest of i.i.d. uniform keys, which is a uniform sample without replacement.
    The keys come from a CPU generator, so the same seed gives the same negatives on any device.
    """
    keys = torch.rand(excluded.shape, generator=generator).to(excluded.device)
    keys.masked_fill_(excluded, 2.0)
    count = min(num_negatives, excluded.shape[1])
    chosen = keys.topk(count, dim=1, largest=False)
    negatives = torch.zeros_like(excluded)
    negatives.scatter_(1, chosen.indices, chosen.values <= 1.0)
    return negatives
