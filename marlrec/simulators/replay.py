"""`replay`: users click what they really consumed next, as the log recorded it.

Definition. A session starts from the user's whole training history (that is what the
environment shows, and its retrieval never offers an item already consumed, so the user's
training items can never be on a slate). The user's "next-N" interactions are therefore the
first `horizon` held-out ones in time order: the validation item, then the test item. A slot is
clicked if and only if its item is one of those not yet clicked in this session; the answer is
deterministic (no position bias), so a session's clicks are the offline hit-rate of its slates.
Clicked items report their real logged rating in `Response.ratings` (NaN elsewhere).

The user leaves after `patience` consecutive slates without a click (L in the issue), which
also ends a session whose future items were all found.

Leakage trade-off: `horizon: 1` uses only the validation item, so a policy trained against
replay never sees a test item; `horizon: 2` adds the test item, which makes rollouts longer and
comparable to test metrics but must then not be used for training. Starting sessions from a
truncated training history, with the cut-off training items as the future, would give a richer
training signal without leakage, but needs the environment to start sessions from that cut.

Session state is kept per user: `start_session(user)` resets it; without that hook, a session
opens at the user's first slate and again after a slate the user left. Two concurrent sessions
of the same user in one process share that state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from marlrec.data import RecData
from marlrec.registry import PluginError
from marlrec.simulators import Response, Simulator

MAX_HORIZON = 2  # the split holds out one validation and one test item per user


@dataclass(kw_only=True)
class ReplayConfig:
    horizon: int = 1
    """N: how many held-out items, in time order (validation, then test), the user may click."""
    patience: int = 2
    """L: the user leaves after this many consecutive slates without a click."""


@dataclass
class _Session:
    remaining: dict[int, float]  # future item -> its logged rating, until clicked
    misses: int = 0  # consecutive slates without a click


class ReplaySimulator(Simulator):
    Config = ReplayConfig
    config: ReplayConfig

    def __init__(self, config: ReplayConfig, *, data: RecData, item_emb: torch.Tensor) -> None:
        super().__init__(config, data=data, item_emb=item_emb)
        if not 1 <= config.horizon <= MAX_HORIZON:
            raise PluginError(
                f"simulator 'replay': horizon must be 1 (validation item) or 2 (and the test "
                f"item), got {config.horizon}"
            )
        if config.patience < 1:
            raise PluginError(f"simulator 'replay': patience must be >= 1, got {config.patience}")
        held = (data.split.valid_item, data.split.test_item)[: config.horizon]
        self.future_items = np.stack(held, axis=1)  # (n_users, horizon), -1 where none
        self.future_ratings = _logged_ratings(data, self.future_items)
        self._sessions: dict[int, _Session] = {}

    def future(self, user: int) -> dict[int, float]:
        """The items `user` may click in a fresh session, with their logged ratings."""
        items, ratings = self.future_items[user], self.future_ratings[user]
        return {int(i): float(r) for i, r in zip(items, ratings, strict=True) if i >= 0}

    def start_session(self, user: int) -> None:
        self._sessions[user] = _Session(remaining=self.future(user))

    def respond(self, user: int, slate: np.ndarray, rng: np.random.Generator) -> Response:
        """Click the slate's items among the user's unclicked future; `rng` is not needed."""
        if user not in self._sessions:
            self.start_session(user)
        session = self._sessions[user]
        slate = np.asarray(slate, dtype=np.int64)
        clicks = np.zeros(len(slate), dtype=bool)
        ratings = np.full(len(slate), np.nan, dtype=np.float32)
        for slot, item in enumerate(slate.tolist()):
            if item in session.remaining:
                clicks[slot] = True
                ratings[slot] = session.remaining.pop(item)
        session.misses = 0 if clicks.any() else session.misses + 1
        leave = session.misses >= self.config.patience
        if leave:
            del self._sessions[user]
        return Response(clicks=clicks, leave=leave, ratings=ratings)


def _logged_ratings(data: RecData, items: np.ndarray) -> np.ndarray:
    """The value of each user's last logged interaction with each of `items` (NaN if none)."""
    log = data.interactions
    bounds = np.searchsorted(log.user, np.arange(data.n_users + 1))
    ratings = np.full(items.shape, np.nan, dtype=np.float32)
    for user, col in zip(*np.nonzero(items >= 0), strict=True):
        rows = np.arange(bounds[user], bounds[user + 1])
        match = rows[log.item[rows] == items[user, col]]
        if len(match):
            ratings[user, col] = log.value[match[-1]]
    return ratings
