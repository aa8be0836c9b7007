"""The data model every dataset plugin produces: interactions, a text catalog, and a split."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal, get_args

import numpy as np
import torch

SplitMethod = Literal["loo", "temporal", "random"]
SPLIT_METHODS: tuple[str, ...] = get_args(SplitMethod)
# Per-interaction labels of a split, as cached on disk.
TRAIN, VALID, TEST = 0, 1, 2


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

    def subset(self, keep: np.ndarray) -> Interactions:
        """The interactions where the boolean mask `keep` is set (order kept)."""
        return Interactions(
            user=self.user[keep], item=self.item[keep], time=self.time[keep], value=self.value[keep]
        )


@dataclass(frozen=True, kw_only=True)
class Split:
    """Training interactions and, per user, the held-out validation and test items.

    `valid_item` and `test_item` hold each user's first held-out item in time order (-1 for a
    user who has none): under leave-one-out it is the only one. `valid` and `test` hold every
    held-out interaction, sorted by (user, time), when a split holds out several per user
    (temporal, random); None means exactly `valid_item` / `test_item`.
    """

    train: Interactions
    valid_item: np.ndarray
    test_item: np.ndarray
    valid: Interactions | None = None
    test: Interactions | None = None

    @property
    def n_users(self) -> int:
        return len(self.test_item)

    def held_out(self, target: str) -> list[np.ndarray]:
        """Per user, the ground-truth items of `target` ("valid" or "test") in time order."""
        return self._valid_items if _target(target) == "valid" else self._test_items

    def held_out_interactions(self, target: str) -> Interactions:
        """The held-out interactions of `target`; from `*_item` alone, they come after training."""
        part = self.valid if _target(target) == "valid" else self.test
        if part is not None:
            return part
        items = self.valid_item if target == "valid" else self.test_item
        users = np.flatnonzero(items >= 0)
        return Interactions(
            user=users.astype(np.int64),
            item=items[users].astype(np.int64),
            time=np.full(len(users), np.inf),  # unknown: later than anything in training
            value=np.ones(len(users), dtype=np.float32),
        )

    @cached_property
    def _valid_items(self) -> list[np.ndarray]:
        return self.held_out_interactions("valid").histories(self.n_users)

    @cached_property
    def _test_items(self) -> list[np.ndarray]:
        return self.held_out_interactions("test").histories(self.n_users)


def _target(target: str) -> str:
    if target not in ("valid", "test"):
        raise ValueError(f"target must be 'valid' or 'test', got {target!r}")
    return target


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
    # Each user's id in the source (its raw id), or its pseudonym once pseudonymised
    # (`marlrec.privacy`); None when the dataset has none but its indices.
    user_ids: np.ndarray | None = None

    @cached_property
    def user_index_of_id(self) -> dict[str, int]:
        """Each user id's index, built once: serving looks users up by id per request."""
        ids = [] if self.user_ids is None else self.user_ids.tolist()
        return {str(user_id): index for index, user_id in enumerate(ids)}

    @cached_property
    def train_histories(self) -> list[np.ndarray]:
        return self.split.train.histories(self.n_users)

    @cached_property
    def item_popularity(self) -> np.ndarray:
        """Training-split interaction counts per item."""
        return np.bincount(self.split.train.item, minlength=self.n_items).astype(np.float32)

    def with_items(self, texts: list[str]) -> RecData:
        """This data with new items (ids `n_items`, `n_items + 1`, ...) that nobody has consumed
        yet: their attributes are missing (NaN, "" or 0), and so are their latent profiles."""
        n = len(texts)
        attributes = {
            name: np.concatenate([values, _missing(values, n)])
            for name, values in self.item_attributes.items()
        }
        truth = self.truth
        if truth is not None:
            truth = GroundTruth(
                user_taste=truth.user_taste,
                item_profile=np.concatenate([truth.item_profile, _missing(truth.item_profile, n)]),
                item_quality=np.concatenate([truth.item_quality, _missing(truth.item_quality, n)]),
            )
        return dataclasses.replace(
            self,
            n_items=self.n_items + n,
            item_text=[*self.item_text, *texts],
            item_attributes=attributes,
            truth=truth,
        )

    def with_interactions(
        self, added: Interactions, new_user_ids: np.ndarray | None, n_new_users: int
    ) -> RecData:
        """This data with `added` interactions (users from `n_users` on are the `n_new_users`
        new ones, with ids `new_user_ids` when users have ids), not yet split again: the
        caller splits the merged interactions. A new user's latent taste is unknown: zero."""
        n_users = self.n_users + n_new_users
        user = np.concatenate([self.interactions.user, added.user])
        time = np.concatenate([self.interactions.time, added.time])
        order = np.lexsort((time, user))  # stable: earlier rows first among equal times
        merged = Interactions(
            user=user[order],
            item=np.concatenate([self.interactions.item, added.item])[order],
            time=time[order],
            value=np.concatenate([self.interactions.value, added.value])[order],
        )
        ids = self.user_ids
        if ids is not None:
            assert new_user_ids is not None and len(new_user_ids) == n_new_users
            ids = np.concatenate([ids.astype(str), new_user_ids.astype(str)])
        truth = self.truth
        if truth is not None:
            taste = np.zeros((n_new_users, truth.user_taste.shape[1]), truth.user_taste.dtype)
            truth = dataclasses.replace(truth, user_taste=np.concatenate([truth.user_taste, taste]))
        return dataclasses.replace(
            self, n_users=n_users, interactions=merged, user_ids=ids, truth=truth
        )

    def history_before(self, user: int, target: str) -> np.ndarray:
        """What a user had consumed before the `valid` or `test` items, in time order.

        Before `valid`: the training items. Before `test`: the training and validation items,
        merged by time (training first among equal times).
        """
        if _target(target) == "valid":
            return self.train_histories[user]
        return self._histories_before_test[user]

    @cached_property
    def _histories_before_test(self) -> list[np.ndarray]:
        train, valid = self.split.train, self.split.held_out_interactions("valid")
        user = np.concatenate([train.user, valid.user])
        time = np.concatenate([train.time, valid.time])
        is_valid = np.repeat([False, True], [len(train), len(valid)])
        order = np.lexsort((is_valid, time, user))
        merged = Interactions(
            user=user[order],
            item=np.concatenate([train.item, valid.item])[order],
            time=time[order],
            value=np.concatenate([train.value, valid.value])[order],
        )
        return merged.histories(self.n_users)


def _missing(values: np.ndarray, n: int) -> np.ndarray:
    """n rows like `values`' marking a missing value: NaN, an empty text, else 0."""
    if values.dtype.kind == "f":
        fill: object = np.nan
    elif values.dtype.kind in "OUS":
        fill = ""
    else:
        fill = 0
    return np.full((n, *values.shape[1:]), fill, dtype=values.dtype)


@dataclass(frozen=True)
class Histories:
    """Many users' histories packed end to end, without padding.

    `items` holds every history's item ids in time order, one history after another; row b's
    history is `items[offsets[b] : offsets[b] + lengths[b]]`. Pooled states read it in one
    `embedding_bag`, and recent windows are gathered without a loop over users.
    """

    items: torch.Tensor  # (N,) int64
    offsets: torch.Tensor  # (B,) int64
    lengths: torch.Tensor  # (B,) int64

    @classmethod
    def pack(cls, histories: Sequence[np.ndarray], device: torch.device | str = "cpu") -> Histories:
        lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
        items = np.concatenate(histories) if len(histories) else np.empty(0)
        return cls(
            torch.as_tensor(items.astype(np.int64, copy=False), device=device),
            torch.as_tensor(np.cumsum(lengths) - lengths, device=device),
            torch.as_tensor(lengths, device=device),
        )

    @classmethod
    def from_padded(cls, ids: torch.Tensor, lengths: torch.Tensor) -> Histories:
        """From (B, L) ids right-padded with anything past each row's `lengths[b]`."""
        lengths = lengths.to(ids.device)
        real = torch.arange(ids.shape[1], device=ids.device) < lengths[:, None]
        return cls(ids[real], torch.cumsum(lengths, 0) - lengths, lengths)

    def __len__(self) -> int:
        return len(self.lengths)

    def rows(self) -> torch.Tensor:
        """(N,) the row each packed item belongs to (computed once: retrieval asks twice)."""
        return self._rows

    @cached_property
    def _rows(self) -> torch.Tensor:
        rows = torch.arange(len(self), device=self.items.device)
        # The output size given: no wait on the device to count it.
        return torch.repeat_interleave(rows, self.lengths, output_size=len(self.items))

    def select(self, rows: torch.Tensor) -> Histories:
        """The histories of the given rows, in that order."""
        return self.prefixes(rows, self.lengths[rows])

    def prefixes(self, rows: torch.Tensor, lengths: torch.Tensor) -> Histories:
        """The first `lengths[k]` items of row `rows[k]`'s history, for each k, packed."""
        offsets = torch.cumsum(lengths, 0) - lengths
        within = torch.arange(int(lengths.sum()), device=lengths.device)
        within -= torch.repeat_interleave(offsets, lengths)
        index = torch.repeat_interleave(self.offsets[rows], lengths) + within
        return Histories(self.items[index], offsets, lengths)

    def last(self, window: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each history's last `window` items as (B, window) ids right-padded with -1, and how
        many are real (B,)."""
        kept = self.lengths.clamp(max=window)
        columns = torch.arange(window, device=self.items.device)
        index = (self.offsets + self.lengths - kept)[:, None] + columns
        real = columns < kept[:, None]
        if len(self.items) == 0:
            return torch.full(real.shape, -1, dtype=torch.long, device=real.device), kept
        ids = self.items[index.clamp(max=len(self.items) - 1)]
        return ids.masked_fill(~real, -1), kept

    def padded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole histories as (B, L) ids right-padded with -1, L the longest (at least 1)."""
        longest = int(self.lengths.max()) if len(self) else 0
        return self.last(max(1, longest))


def fill_histories(matrix: torch.Tensor, histories: list[np.ndarray], value: float) -> torch.Tensor:
    """Set `matrix[b, item] = value` for every item in row b's history, in place; return it."""
    rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    if len(rows):
        cols = torch.as_tensor(np.concatenate(histories), dtype=torch.long, device=matrix.device)
        matrix[torch.as_tensor(rows, device=matrix.device), cols] = value
    return matrix


def train_pairs(data: RecData) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (user, item) train pairs sorted by item: repeats count once (implicit feedback)."""
    keys = np.unique(data.split.train.item * data.n_users + data.split.train.user)
    return keys % data.n_users, keys // data.n_users


def item_user_matrix(data: RecData) -> torch.Tensor:
    """Sparse COO (n_items, n_users) 0/1 train matrix, i.e. X transposed."""
    users, items = train_pairs(data)
    indices = torch.from_numpy(np.stack([items, users]))
    ones = torch.ones(len(items))
    shape = (data.n_items, data.n_users)
    return torch.sparse_coo_tensor(indices, ones, shape, check_invariants=False).coalesce()


# --- splits ----------------------------------------------------------------------------------


def leave_one_out(interactions: Interactions, n_users: int) -> Split:
    """Split sorted interactions: the last item of each user is test, the one before it valid.

    Users with fewer than three interactions keep everything in training.
    """
    return split_from_labels(interactions, n_users, leave_one_out_labels(interactions, n_users))


def split_interactions(
    interactions: Interactions,
    n_users: int,
    *,
    method: SplitMethod = "loo",
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int | Sequence[int] = 0,
) -> Split:
    """Split interactions sorted by (user, time) by `method`; see `split_labels`."""
    labels = split_labels(interactions, n_users, method=method, ratios=ratios, seed=seed)
    return split_from_labels(interactions, n_users, labels)


def split_labels(
    interactions: Interactions,
    n_users: int,
    *,
    method: SplitMethod = "loo",
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int | Sequence[int] = 0,
) -> np.ndarray:
    """TRAIN, VALID or TEST for each interaction (int8).

    - `loo`: chronological leave-one-out (RecBole's `LS: valid_and_test` in time order): each
      user's last interaction is test, the one before it valid; users with fewer than three
      keep all in training.
    - `temporal`: one global clock: interactions at or after the time below which a fraction
      `ratios[0]` of all interactions lie are valid, at or after the `ratios[0] + ratios[1]`
      point test. Equal times fall on the same side. A user first seen after the cutoff is a
      cold-start user: held-out items, an empty history.
    - `random`: per user, a seeded shuffle split by `ratios` with RecBole's rounding (`RS`,
      grouped by user): each part with a non-zero ratio gets at least one interaction while
      more than one remains for training, so every user keeps a training interaction.
    """
    if method == "loo":
        return leave_one_out_labels(interactions, n_users)
    if method == "temporal":
        return _temporal_labels(interactions.time, ratios)
    if method == "random":
        return _random_labels(interactions.user, n_users, ratios, seed)
    raise ValueError(f"split must be one of {', '.join(SPLIT_METHODS)}, got {method!r}")


def check_split_ratios(ratios: Sequence[float]) -> str | None:
    """What is wrong with (train, valid, test) ratios, or None."""
    if len(ratios) != 3 or any(not r > 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        return (
            "split_ratios must be three positive fractions (train, valid, test) summing to 1, "
            f"got {list(ratios)}"
        )
    return None


def leave_one_out_labels(interactions: Interactions, n_users: int) -> np.ndarray:
    bounds = np.searchsorted(interactions.user, np.arange(n_users + 1))
    held = np.diff(bounds) >= 3
    labels = np.full(len(interactions), TRAIN, dtype=np.int8)
    labels[bounds[1:][held] - 1] = TEST
    labels[bounds[1:][held] - 2] = VALID
    return labels


def _temporal_labels(time: np.ndarray, ratios: Sequence[float]) -> np.ndarray:
    ordered = np.sort(time)
    n = len(ordered)
    labels = np.full(n, TRAIN, dtype=np.int8)
    if n == 0:
        return labels
    valid_from = ordered[min(n - 1, round(n * ratios[0]))]
    test_from = ordered[min(n - 1, round(n * (ratios[0] + ratios[1])))]
    labels[time >= valid_from] = VALID
    labels[time >= test_from] = TEST
    return labels


def _random_labels(
    user: np.ndarray, n_users: int, ratios: Sequence[float], seed: int | Sequence[int]
) -> np.ndarray:
    counts = np.bincount(user, minlength=n_users)
    n_valid, n_test = _random_part_sizes(counts, ratios)
    # A random rank within each user: shuffle, then stable-sort by user.
    order = np.lexsort((np.random.default_rng(seed).random(len(user)), user))
    starts = np.searchsorted(user, np.arange(n_users))
    rank = np.empty(len(user), dtype=np.int64)
    rank[order] = np.arange(len(user)) - starts[user[order]]
    n_train = counts - n_valid - n_test
    labels = np.full(len(user), TRAIN, dtype=np.int8)
    labels[rank >= n_train[user]] = VALID
    labels[rank >= (n_train + n_valid)[user]] = TEST
    return labels


def _random_part_sizes(counts: np.ndarray, ratios: Sequence[float]) -> tuple[np.ndarray, ...]:
    """Valid and test sizes per user, rounded as RecBole's `_calcu_split_ids` rounds them."""
    # The epsilon keeps 0.7 * 10 = 6.999... from rounding down to 6.
    n_valid = np.floor(ratios[1] * counts + 1e-9).astype(np.int64)
    n_test = np.floor(ratios[2] * counts + 1e-9).astype(np.int64)
    # Then, test first: a part whose share is below one interaction gets one, taken from
    # training, as long as training keeps more than one.
    for part, ratio in ((n_test, ratios[2]), (n_valid, ratios[1])):
        share = ratio * counts
        grow = (counts - n_valid - n_test > 1) & (share > 0) & (share < 1)
        part += grow
    return n_valid, n_test


def split_from_labels(interactions: Interactions, n_users: int, labels: np.ndarray) -> Split:
    """The split that per-interaction TRAIN / VALID / TEST labels describe."""
    return split_from_parts(
        interactions.subset(labels == TRAIN),
        interactions.subset(labels == VALID),
        interactions.subset(labels == TEST),
        n_users,
    )


def split_from_parts(
    train: Interactions, valid: Interactions, test: Interactions, n_users: int
) -> Split:
    """The split of given training, validation and test interactions, each sorted by user."""
    return Split(
        train=train,
        valid_item=_first_item(valid, n_users),
        test_item=_first_item(test, n_users),
        valid=valid,
        test=test,
    )


def _first_item(part: Interactions, n_users: int) -> np.ndarray:
    first = np.full(n_users, -1, dtype=np.int64)
    users, at = np.unique(part.user, return_index=True)
    first[users] = part.item[at]
    return first
