"""Cold-start protocols: the split reshaped so that ids cannot help, only text can.

- `cold_items`: a share of the catalog, drawn from the run's seed, loses every training
  interaction; the validation and test targets are the held-out interactions with those items
  only. They are reachable through their text (item embeddings), never through ids.
- `cold_users`: a share of the users, drawn from the seed, keep only their last few training
  interactions; the validation and test targets are those users' held-out items only.

Both are full-ranking protocols (every item outside the history is ranked), applied once to the
loaded data, before anything is fitted, so that every model, baseline and the agents alike, sees
the reduced training split.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from marlrec.data import Interactions, RecData, split_from_parts
from marlrec.registry import MarlrecError

COLD_PROTOCOLS = ("cold_items", "cold_users")


def cold_start_data(
    data: RecData,
    protocol: str,
    *,
    item_share: float,
    user_share: float,
    user_history: int,
    seed: int,
) -> RecData:
    """`data` as the protocol sees it; unchanged for the warm protocols (`full`, `sampled`)."""
    if protocol == "cold_items":
        return cold_items(data, item_share, seed)
    if protocol == "cold_users":
        return cold_users(data, user_share, user_history, seed)
    return data


def draw(n: int, share: float, seed: int) -> np.ndarray:
    """A boolean mask over n ids: `round(share * n)` of them (at least one), drawn from seed."""
    chosen = np.zeros(n, dtype=bool)
    chosen[np.random.default_rng(seed).choice(n, size=max(1, round(share * n)), replace=False)] = 1
    return chosen


def cold_items(data: RecData, share: float, seed: int) -> RecData:
    """No training interaction with the cold items; only they are valid and test targets."""
    cold = draw(data.n_items, share, seed)
    split = data.split
    valid, test = split.held_out_interactions("valid"), split.held_out_interactions("test")
    reshaped = split_from_parts(
        split.train.subset(~cold[split.train.item]),
        valid.subset(cold[valid.item]),
        test.subset(cold[test.item]),
        data.n_users,
    )
    _check_targets(reshaped.test, "cold_items", "eval.cold_item_share")
    return dataclasses.replace(data, split=reshaped)


def cold_users(data: RecData, share: float, history: int, seed: int) -> RecData:
    """The cold users keep their last `history` training interactions; only their held-out
    items are valid and test targets."""
    cold = draw(data.n_users, share, seed)
    split = data.split
    train = split.train
    ends = np.searchsorted(train.user, np.arange(data.n_users + 1))[1:]
    from_end = ends[train.user] - np.arange(len(train))  # 1 for each user's last interaction
    keep = ~cold[train.user] | (from_end <= history)
    valid, test = split.held_out_interactions("valid"), split.held_out_interactions("test")
    reshaped = split_from_parts(
        train.subset(keep),
        valid.subset(cold[valid.user]),
        test.subset(cold[test.user]),
        data.n_users,
    )
    _check_targets(reshaped.test, "cold_users", "eval.cold_user_share")
    return dataclasses.replace(data, split=reshaped)


def _check_targets(test: Interactions | None, protocol: str, key: str) -> None:
    if test is None or len(test) == 0:
        raise MarlrecError(
            f"eval.protocol={protocol} leaves no test target on this dataset: raise {key}"
        )
