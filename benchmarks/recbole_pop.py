"""RecBole 1.2.1's `Pop` on a MovieLens-100K folder, reproduced exactly, to check our harness.

RecBole's published Pop figures on ML-100K (test HR@10 0.0721, NDCG@10 0.0403, seed 2020) do
not come from ranking by interaction counts, so our `pop` baseline cannot be compared with them.
This module rebuilds RecBole's ranking bit for bit; evaluated through `ranking_eval` (our split,
our held-out items, our metrics) it must give the published figures, which pins our protocol.

What RecBole 1.2.1 does (`Pop`, `LS: valid_and_test`, `order: TO`, `mode: full`, default
`train_batch_size: 2048` with one uniform negative per positive), and this module with it:

- ids: users and items are numbered from 1 in order of first appearance in `u.data`; 0 pads.
- split: rows are sorted stably by the min-max normalised timestamp cast to float32, where
  timestamps a few seconds apart collapse and file order decides; users are grouped in order of
  first appearance in that order; per user the last row is test, the one before valid.
- training: one epoch over the training rows (users' blocks in that order), shuffled by
  `torch.randperm` on a generator seeded with the seed, after the DataLoader's iterator drew its
  base seed from it. Batches of 1024 positives each draw one negative per positive from one
  `numpy.random.RandomState(seed)` shared by all batches, redrawn while the user has the item
  in training.
- counting: `item_cnt[items] += 1` with repeated indices adds one per distinct item of a batch,
  positive or negative, so counts saturate at the number of batches and the popular head ties.
- ranking: scores are counts / max count in float64; padding and history (train before valid;
  train and valid before test) are -inf; `torch.topk` on the CPU picks the top k. Its order among
  ties (libstdc++ `partial_sort`) decides most of the head and depends on k: RecBole's k is its
  largest cut-off, 10 for the published figures.

Our split sorts exact timestamps, so for a few users our held-out item differs from RecBole's
(4 test users on ML-100K, none of them a hit either way); the ranker masks RecBole's history
regardless, as RecBole does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from marlrec.data import TEST, TRAIN, VALID, RecData
from marlrec.evaluation.harness import Ranker
from marlrec.registry import MarlrecError

WHERE = "RecBole Pop"
PADDING = 0
# RecBole's default train_batch_size (2048 rows) holds 1024 positives and their negatives.
POSITIVES_PER_BATCH = 1024
PUBLISHED_SEED = 2020


class RecBolePop:
    """RecBole 1.2.1's Pop trained on the `u.data` of `folder`, ranking the users of `data`.

    `data` must be that folder's MovieLens data as the `movielens` dataset loads it (no filter):
    the ranker takes and returns our user and item ids.
    """

    def __init__(self, data: RecData, folder: str | Path, seed: int = PUBLISHED_SEED) -> None:
        path = Path(folder).expanduser() / "u.data"
        raw_user, raw_item, time = read_ratings(path)
        users, our_user, self.user_slot = first_appearance_ids(raw_user)
        items, our_item, self.item_slot = first_appearance_ids(raw_item)
        _check_same_data(data, path, (users, our_user), (items, our_item), time)
        self.seed = seed
        self.n_user_slots, self.n_item_slots = len(users) + 1, len(items) + 1
        user, item = self.user_slot[our_user], self.item_slot[our_item]
        split = recbole_split(user, time)
        # Rows in RecBole's order (user blocks, time order within), in RecBole's ids.
        self.user, self.item, self.labels = user[split.order], item[split.order], split.labels
        train = self.labels == TRAIN
        self.counts = batch_counts(self.user[train], self.item[train], self.n_item_slots, seed)
        self.our_item = torch.full((self.n_item_slots,), -1, dtype=torch.long)
        self.our_item[torch.from_numpy(self.item_slot)] = torch.arange(len(items))

    def ranker(self, split: Literal["valid", "test"] = "test") -> Ranker:
        """Ranks our users as RecBole ranks them on `split`; the histories passed in are ignored
        in favour of RecBole's own (its split can differ from ours for a few users)."""
        masked = self.history_mask(split)
        scores = torch.from_numpy(self.counts / self.counts.max())

        def rank(users: np.ndarray, histories: list[np.ndarray], k: int) -> torch.Tensor:
            rows = torch.from_numpy(self.user_slot[np.asarray(users, dtype=np.int64)])
            chunk = scores.expand(len(rows), -1).masked_fill(masked[rows], -torch.inf)
            values, top = torch.topk(chunk, k, dim=1)
            if len(values) and bool(torch.isinf(values[:, -1]).any()):
                raise MarlrecError(
                    f"{WHERE}: k={k} reaches past the items a user can be recommended; it "
                    "reproduces RecBole's full-ranking top-k only"
                )
            return self.our_item[top]

        return rank

    def history_mask(self, split: Literal["valid", "test"]) -> torch.Tensor:
        """(user slots, item slots): True where RecBole sets the score to -inf on `split`."""
        if split not in ("valid", "test"):
            raise MarlrecError(f"{WHERE}: split must be 'valid' or 'test', got {split!r}")
        seen = (self.labels == TRAIN) | ((self.labels == VALID) & (split == "test"))
        masked = torch.zeros(self.n_user_slots, self.n_item_slots, dtype=torch.bool)
        masked[torch.from_numpy(self.user[seen]), torch.from_numpy(self.item[seen])] = True
        masked[:, PADDING] = True
        return masked


def read_ratings(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw user ids, raw item ids and timestamps of `u.data`, in file order."""
    if not path.is_file():
        raise MarlrecError(f"{WHERE}: {path} is missing (the ML-100K ratings file)")
    try:
        frame = pd.read_csv(path, sep="\t", header=None, usecols=[0, 1, 3], dtype=np.int64)
    except (ValueError, pd.errors.ParserError) as error:
        raise MarlrecError(f"{WHERE}: cannot read {path}: {str(error).splitlines()[0]}") from None
    user, item, time = (frame[c].to_numpy() for c in (0, 1, 3))
    return user, item, time


def first_appearance_ids(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted distinct raw ids, each row's index among them (our dense id), and per distinct
    id its RecBole id: 1 + its rank in order of first appearance."""
    distinct, first_row, index = np.unique(raw, return_index=True, return_inverse=True)
    slot = np.empty(len(distinct), dtype=np.int64)
    slot[np.argsort(first_row)] = np.arange(1, len(distinct) + 1)
    return distinct, index.astype(np.int64), slot


@dataclass(frozen=True)
class SplitRows:
    """RecBole's row order (user blocks, time order within) and each row's split label."""

    order: np.ndarray  # row indices into the file
    labels: np.ndarray  # TRAIN, VALID or TEST per row of `order`


def recbole_split(user: np.ndarray, time: np.ndarray) -> SplitRows:
    """RecBole's chronological leave-one-out over rows in file order (`user` in any ids)."""
    time = time.astype(np.float64)
    span = time.max() - time.min()
    key = ((time - time.min()) / span if span else np.zeros_like(time)).astype(np.float32)
    by_time = np.argsort(key, kind="stable")
    _, first, index = np.unique(user[by_time], return_index=True, return_inverse=True)
    block = np.argsort(np.argsort(first))[index]  # users ranked by first appearance in time
    regroup = np.argsort(block, kind="stable")
    order, block = by_time[regroup], block[regroup]
    size = np.bincount(block)[block]
    # Rows from each user's end: 0 is test, 1 valid; RecBole keeps at least one training row
    # (two rows give train and test, one row train only).
    from_end = np.searchsorted(block, block) + size - 1 - np.arange(len(order))
    labels = np.full(len(order), TRAIN, dtype=np.int8)
    labels[(from_end == 0) & (size >= 2)] = TEST
    labels[(from_end == 1) & (size >= 3)] = VALID
    return SplitRows(order, labels)


def batch_counts(user: np.ndarray, item: np.ndarray, n_item_slots: int, seed: int) -> np.ndarray:
    """Per item slot, the number of training batches it appears in (positive or negative)."""
    seen = np.zeros((int(user.max(initial=0)) + 1, n_item_slots), dtype=bool)
    seen[user, item] = True
    if seen[:, 1:].all(axis=1).any():
        raise MarlrecError(f"{WHERE}: a user has every item in training: no negative to sample")
    generator = torch.Generator().manual_seed(seed)
    # The DataLoader's iterator draws its base seed (two 32-bit words) before the shuffle.
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    shuffled = torch.randperm(len(user), generator=generator).numpy()
    sampler = np.random.RandomState(seed)
    counts = np.zeros(n_item_slots, dtype=np.int64)
    for start in range(0, len(shuffled), POSITIVES_PER_BATCH):
        rows = shuffled[start : start + POSITIVES_PER_BATCH]
        negatives = sample_negatives(user[rows], seen, sampler)
        counts[np.unique(np.concatenate([item[rows], negatives]))] += 1
    return counts


def sample_negatives(
    users: np.ndarray, seen: np.ndarray, sampler: np.random.RandomState
) -> np.ndarray:
    """One item per user, uniform over 1..n_item_slots-1, redrawn (in row order, all rejected
    rows at once) while the user has it in training (`seen[user, item]`): RecBole's
    `sample_by_key_ids`."""
    negatives = np.zeros(len(users), dtype=np.int64)
    redraw = np.arange(len(users))
    while len(redraw):
        negatives[redraw] = sampler.randint(1, seen.shape[1], len(redraw))
        redraw = redraw[seen[users[redraw], negatives[redraw]]]
    return negatives


def _check_same_data(
    data: RecData,
    path: Path,
    users: tuple[np.ndarray, np.ndarray],
    items: tuple[np.ndarray, np.ndarray],
    time: np.ndarray,
) -> None:
    """`data` must hold exactly the ratings of `path`, with ids in raw-id order."""
    raw_ids = data.item_attributes.get("raw_id")
    (distinct_users, user), (distinct_items, item) = users, items
    same = (
        raw_ids is not None
        and data.n_users == len(distinct_users)
        and np.array_equal(np.asarray(raw_ids), distinct_items)
        and len(data.interactions) == len(user)
        and _same_rows(
            (user, item, time.astype(np.float64)),
            (data.interactions.user, data.interactions.item, data.interactions.time),
        )
    )
    if not same:
        raise MarlrecError(
            f"{WHERE}: data {data.name!r} is not the MovieLens data of {path} "
            "(load that folder with the movielens dataset, unfiltered)"
        )


def _same_rows(
    ours: tuple[np.ndarray, np.ndarray, np.ndarray],
    theirs: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> bool:
    a = np.lexsort(ours[::-1])
    b = np.lexsort(theirs[::-1])
    return all(np.array_equal(x[a], y[b]) for x, y in zip(ours, theirs, strict=True))
