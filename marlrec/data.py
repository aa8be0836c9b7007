"""The data model every dataset plugin produces: interactions, a text catalog, and a split."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch


@dataclass(frozen=True, kw_only=True)
class Interactions:
    """Logged interactions as parallel arrays, sorted by (user, time)."""

    user: np.ndarray  # int64, 0..n_users-1
    item: np.ndarray  # int64, 0..n_items-1
    time: np.ndarray  # float64, any monotone clock
    value: np.ndarray  # float32, rating or 1.0 for implicit feedback

    def __len__(self) -> int:
        return len(self.user)

    def histories(self, n_users: int) -> list[np.ndarray]:
        """Each user's items in time order."""
        bounds = np.searchsorted(self.user, np.arange(n_users + 1))
        return [self.item[bounds[u] : bounds[u + 1]] for u in range(n_users)]


@dataclass(frozen=True, kw_only=True)
class Split:
    """Chronological leave-one-out: per user, the last item is test, the one before it valid.

    `valid_item` and `test_item` hold -1 for a user who has none.
    """

    train: Interactions
    valid_item: np.ndarray
    test_item: np.ndarray


@dataclass(frozen=True, kw_only=True)
class GroundTruth:
    """Latent tastes behind a synthetic dataset, so that simulators know the true preferences."""

    user_taste: np.ndarray  # (n_users, k) float32
    item_profile: np.ndarray  # (n_items, k) float32
    item_quality: np.ndarray  # (n_items,) float32

    def affinity(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """True preference of each user for each item, pairwise over broadcast shapes."""
        return (self.user_taste[users] * self.item_profile[items]).sum(-1) + self.item_quality[
            items
        ]


@dataclass(frozen=True, kw_only=True)
class RecData:
    """What a dataset plugin returns: ids are dense 0-based integers."""

    name: str
    n_users: int
    n_items: int
    interactions: Interactions
    item_text: list[str]
    split: Split
    item_attributes: dict[str, np.ndarray] = field(default_factory=dict)
    truth: GroundTruth | None = None

    @cached_property
    def train_histories(self) -> list[np.ndarray]:
        return self.split.train.histories(self.n_users)

    @cached_property
    def item_popularity(self) -> np.ndarray:
        """Training-split interaction counts per item."""
        return np.bincount(self.split.train.item, minlength=self.n_items).astype(np.float32)

    def history_before(self, user: int, target: str) -> np.ndarray:
        """The items a user had consumed before the `valid` or `test` item."""
        history = self.train_histories[user]
        if target == "test" and self.split.valid_item[user] >= 0:
            history = np.append(history, self.split.valid_item[user])
        return history


def fill_histories(matrix: torch.Tensor, histories: list[np.ndarray], value: float) -> torch.Tensor:
    """Set `matrix[b, item] = value` for every item in row b's history, in place; return it."""
    rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    if len(rows):
        cols = torch.as_tensor(np.concatenate(histories), dtype=torch.long, device=matrix.device)
        matrix[torch.as_tensor(rows, device=matrix.device), cols] = value
    return matrix


def leave_one_out(interactions: Interactions, n_users: int) -> Split:
    """Split sorted interactions: the last item of each user is test, the one before it valid.

    Users with fewer than three interactions keep everything in training.
    """
    bounds = np.searchsorted(interactions.user, np.arange(n_users + 1))
    counts = np.diff(bounds)
    held = counts >= 3
    test_pos = bounds[1:] - 1
    valid_pos = bounds[1:] - 2
    keep = np.ones(len(interactions), dtype=bool)
    keep[test_pos[held]] = False
    keep[valid_pos[held]] = False
    test_item = np.full(n_users, -1, dtype=np.int64)
    valid_item = np.full(n_users, -1, dtype=np.int64)
    test_item[held] = interactions.item[test_pos[held]]
    valid_item[held] = interactions.item[valid_pos[held]]
    train = Interactions(
        user=interactions.user[keep],
        item=interactions.item[keep],
        time=interactions.time[keep],
        value=interactions.value[keep],
    )
    return Split(train=train, valid_item=valid_item, test_item=test_item)
