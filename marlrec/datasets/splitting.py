"""Splitting parsed data (`loo`, `temporal` or `random`, see `marlrec.data.split_labels`), and
the check that every part holds something."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from marlrec.data import (
    TEST,
    TRAIN,
    VALID,
    Interactions,
    RecData,
    SplitMethod,
    split_from_labels,
    split_labels,
)
from marlrec.datasets.files import Source


@dataclass(frozen=True, kw_only=True)
class SplitOptions:
    """How a dataset is split; the seed only counts for the random split."""

    method: SplitMethod = "loo"
    ratios: tuple[float, ...] = (0.8, 0.1, 0.1)
    seed: int = 0

    @classmethod
    def of(cls, config: Any, seed: int) -> SplitOptions:
        """From a dataset config's `split` and `split_ratios` fields."""
        method = config.split
        ratios = tuple(float(r) for r in config.split_ratios)
        return cls(method=method, ratios=ratios, seed=seed if method == "random" else 0)

    def labels(self, interactions: Interactions, n_users: int) -> np.ndarray:
        return split_labels(
            interactions, n_users, method=self.method, ratios=self.ratios, seed=self.seed
        )


@dataclass(frozen=True, kw_only=True)
class Parsed:
    """A dataset read, filtered and remapped to dense ids, but not yet split."""

    name: str
    interactions: Interactions
    n_users: int
    item_text: list[str]
    item_attributes: dict[str, np.ndarray]
    source: Source  # the interactions file, which messages about the result name
    user_ids: np.ndarray | None = None  # each dense user's raw id

    def with_split(self, labels: np.ndarray) -> RecData:
        return RecData(
            name=self.name,
            n_users=self.n_users,
            n_items=len(self.item_text),
            interactions=self.interactions,
            item_text=self.item_text,
            split=split_from_labels(self.interactions, self.n_users, labels),
            item_attributes=self.item_attributes,
            user_ids=self.user_ids,
        )


def check_parts(parsed: Parsed, split: SplitOptions, labels: np.ndarray) -> None:
    """An empty train, valid or test part is an error naming the source and the reason."""
    counts = np.bincount(labels, minlength=3)
    parts = (("train", TRAIN), ("valid", VALID), ("test", TEST))
    empty = [name for name, part in parts if not counts[part]]
    if not empty:
        return
    most = int(np.bincount(parsed.interactions.user, minlength=parsed.n_users).max())
    if split.method == "loo":
        raise parsed.source.error(
            "no user has the 3 interactions that leave-one-out needs for a valid and a test "
            f"item (most per user: {most})"
        )
    if split.method == "random":
        raise parsed.source.error(
            f"split=random with split_ratios={list(split.ratios)} leaves no {empty[0]} "
            "interactions: a user needs 3 interactions for a train, a valid and a test one "
            f"(most per user: {most})"
        )
    distinct = len(np.unique(parsed.interactions.time))
    raise parsed.source.error(
        f"split=temporal with split_ratios={list(split.ratios)} leaves no {empty[0]} "
        f"interactions: equal times fall on one side of a cutoff, and the "
        f"{len(parsed.interactions)} interactions have {distinct} distinct times"
    )
