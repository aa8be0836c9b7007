"""`replay`: users click what they really consumed next, as the log recorded it.

Definition. A session of `start: cut` (the default, for training) opens at a random point of the
user's training sequence: the history is what came before the cut, and the user's "next-N"
interactions are the `horizon` training items that follow it. The environment starts the
session from that history (`start_session` returns it), so the future items are retrievable
and nothing outside the training split is ever used. With `start: end` the session starts from
the whole training history and the future is the first `horizon` held-out items (validation,
then test) — comparable to offline metrics, but then not for training.

A slot is clicked if and only if its item is one of the future items not yet clicked in this
session; the answer is deterministic (no position bias), so a session's clicks are the hit-rate
of its slates against the real log. Clicked items report their logged rating in
`Response.ratings` (NaN elsewhere). The user leaves after `patience` consecutive slates without
a click (L in the issue), which also ends a session whose future items were all found.

Session state is kept per user and reset by `start_session`; two concurrent sessions of the same
user in one process share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from marlrec.data import RecData
from marlrec.registry import PluginError
from marlrec.simulators import Response, Simulator


@dataclass(kw_only=True)
class ReplayConfig:
    start: Literal["cut", "end"] = "cut"
    """`cut`: sessions open inside the training sequence; `end`: after it (held-out future)."""
    horizon: int = 10
    """N: how many logged items after the session's start the user may click."""
    patience: int = 2
    """L: the user leaves after this many consecutive slates without a click."""
    min_history: int = 5
    """`cut`: the fewest training items a session's history keeps (when the user has them)."""


@dataclass
class _Session:
    remaining: dict[int, float]  # future item -> its logged rating, until clicked
    misses: int = 0  # consecutive slates without a click


class ReplaySimulator(Simulator):
    Config = ReplayConfig
    config: ReplayConfig

    def __init__(self, config: ReplayConfig, *, data: RecData, item_emb: torch.Tensor) -> None:
        super().__init__(config, data=data, item_emb=item_emb)
        for key in ("horizon", "patience"):
            if getattr(config, key) < 1:
                raise PluginError(f"{self.where}: {key} must be >= 1, got {getattr(config, key)}")
        if config.min_history < 0:
            raise PluginError(f"{self.where}: min_history must be >= 0, got {config.min_history}")
        train = data.split.train
        self._bounds = np.searchsorted(train.user, np.arange(data.n_users + 1))
        self._sessions: dict[int, _Session] = {}

    def start_session(self, user: int, rng: np.random.Generator | None = None) -> np.ndarray | None:
        history, future = self._session_start(user, rng or np.random.default_rng())
        self._sessions[user] = _Session(remaining=future)
        return history

    def _session_start(
        self, user: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, dict[int, float]]:
        train = self.data.split.train
        lo, hi = self._bounds[user], self._bounds[user + 1]
        items, ratings = train.item[lo:hi], train.value[lo:hi]
        n = self.config.horizon
        if self.config.start == "end" or len(items) < 2:
            return items, self._held_out(user)
        first = max(1, min(self.config.min_history, len(items) - 1))
        cut = int(rng.integers(first, len(items)))
        future = zip(items[cut : cut + n].tolist(), ratings[cut : cut + n].tolist(), strict=True)
        return items[:cut], {int(i): float(r) for i, r in future}

    def _held_out(self, user: int) -> dict[int, float]:
        split = self.data.split
        future: dict[int, float] = {}
        for target in ("valid", "test"):
            part = split.held_out_interactions(target)
            rows = part.user == user
            for item, rating in zip(
                part.item[rows].tolist(), part.value[rows].tolist(), strict=True
            ):
                if len(future) < self.config.horizon:
                    future.setdefault(int(item), float(rating))
        return future

    def future(self, user: int) -> dict[int, float]:
        """The items `user` may still click in the current session, with their logged ratings."""
        return dict(self._sessions[user].remaining) if user in self._sessions else {}

    def respond(self, user: int, slate: np.ndarray, rng: np.random.Generator) -> Response:
        """Click the slate's items among the user's unclicked future; `rng` is not needed."""
        if user not in self._sessions:
            self.start_session(user, rng)
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
