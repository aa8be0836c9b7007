"""`response_model`: users answer with click and leave models fitted on the training split.

Clicks. A slot is examined with probability 1 / log2(position + 2) (the DCG position model), and
an examined item is clicked with the probability of the click model of
`marlrec.simulators.click_model`: a calibrated logistic factorisation of the user's state (the
mean embedding of their history, session clicks included) against the item's embedding, log
popularity and mean rating. It is fitted once per training split, embeddings and options and
cached under `<cache_dir>/simulators/` (a second run loads it); `heldout_auc()` measures how well
it ranks each user's held-out item above unseen ones.

Leaving. After a slate at 0-based session step t with k clicks the user leaves with probability

    sigmoid(leave_bias + leave_per_step * t + leave_per_click * k)

so clicks keep users and fatigue grows with the session. ML-100K logs ratings, not visits, so
these parameters are set, not fitted: with the defaults a user shown nothing they like leaves
after about five slates, and slates that earn clicks keep them longer. Measured on ML-100K
(MiniLM embeddings, 4-item slates, no cap on the session, 500 sessions): mean 7.7 slates
(0.59 clicks per slate) for the most popular unseen items, 5.4 (0.13) for the items nearest
the user's state, 5.4 (0.12) for random items; `benchmarks/response_model.py` measures it.
The `retention` reward, 1 for every slate after which the user stays, turns this into a return.

Session state (history and step) is kept per user: `start_session(user)` resets it; without the
hook, a session opens at the user's first slate and again after a slate the user left.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from marlrec.data import RecData
from marlrec.plugin import composed_default
from marlrec.registry import PluginError
from marlrec.simulators import Response, Simulator, examination
from marlrec.simulators.click_model import ClickAUC, ClickModel, FitOptions, click_auc, load_or_fit

DEFAULT_CACHE = "~/.cache/marlrec"


@dataclass(kw_only=True)
class ResponseModelConfig:
    rank: int = 16
    """Rank of the factorised user-state x item-embedding interaction."""
    negatives: int = 4
    """Unseen items drawn per training interaction to fit the click model against."""
    calibration_negatives: int = 20
    """Unseen items per held-out interaction in calibration: sets the overall click level."""
    steps: int = 600
    """Gradient steps, over as many shuffled passes of the training interactions as it takes."""
    batch_size: int = 512
    """Positives (each with its negatives) per gradient step."""
    learning_rate: float = 0.005
    """Adam step size."""
    weight_decay: float = 1e-5
    """L2 penalty on the click model's weights."""
    max_positives: int = 100_000
    """Training interactions used at most (a seeded sample), so fitting stays fast."""
    seed: int = 0
    """Seed of the negative sampling and initialisation; the fitted model depends on it."""
    leave_bias: float = -1.5
    """Leave logit after the first slate, without clicks."""
    leave_per_step: float = 0.05
    """Leave logit added per slate already seen in the session (fatigue)."""
    leave_per_click: float = -2.0
    """Leave logit added per click in the slate just answered (negative: clicks keep users)."""
    cache_dir: str = composed_default("", "${cache_dir}")
    """Where fitted models are cached: the run's `cache_dir` when composed; empty:
    $MARLREC_CACHE, else ~/.cache/marlrec."""


@dataclass
class _Session:
    history_sum: np.ndarray  # (d,) sum of the embeddings of the history and the session's clicks
    length: int  # items in that history
    step: int = 0  # slates answered so far

    @property
    def state(self) -> np.ndarray:
        return (self.history_sum / max(self.length, 1)).astype(np.float32)


class ResponseModelSimulator(Simulator):
    Config = ResponseModelConfig
    config: ResponseModelConfig

    def __init__(
        self, config: ResponseModelConfig, *, data: RecData, item_emb: torch.Tensor
    ) -> None:
        super().__init__(config, data=data, item_emb=item_emb)
        _validate(config, self.where)
        self.emb = item_emb.detach().to("cpu", torch.float32).numpy()
        self.model: ClickModel
        self.model, self.cache_file, self.from_cache = load_or_fit(
            data, self.emb, _fit_options(config), _cache_dir(config)
        )
        self._sessions: dict[int, _Session] = {}

    def start_session(self, user: int, rng: np.random.Generator | None = None) -> np.ndarray | None:
        history = self.data.train_histories[user]
        self._sessions[user] = _Session(
            self.emb[history].sum(axis=0, dtype=np.float64), len(history)
        )
        return None

    def state(self, user: int) -> np.ndarray:
        """The user's state: the mean embedding of their history and this session's clicks."""
        if user not in self._sessions:
            self.start_session(user)
        return self._sessions[user].state

    def click_probability(self, user: int, slate: np.ndarray) -> np.ndarray:
        """Probability of a click in each slot for the user's current session, position included."""
        attractive = self.model.probability(self.state(user), np.asarray(slate))
        return attractive * examination(len(slate))

    def leave_probability(self, step: int, n_clicks: int) -> float:
        """Probability of leaving after the slate at 0-based `step` that got `n_clicks` clicks."""
        c = self.config
        logit = c.leave_bias + c.leave_per_step * step + c.leave_per_click * n_clicks
        return float(1.0 / (1.0 + np.exp(-logit)))

    def respond(self, user: int, slate: np.ndarray, rng: np.random.Generator) -> Response:
        slate = np.asarray(slate, dtype=np.int64)
        clicks = rng.random(len(slate)) < self.click_probability(user, slate)
        session = self._sessions[user]
        leave = bool(rng.random() < self.leave_probability(session.step, int(clicks.sum())))
        session.history_sum += self.emb[slate[clicks]].sum(axis=0)
        session.length += int(clicks.sum())
        session.step += 1
        if leave:
            del self._sessions[user]
        return Response(clicks=clicks, leave=leave)

    def heldout_auc(self, target: str = "test", negatives: int = 100, seed: int = 0) -> ClickAUC:
        """Click AUC of each user's held-out `target` item against `negatives` unseen items."""
        return click_auc(
            self.model, self.data, self.emb, target=target, negatives=negatives, seed=seed
        )


def _fit_options(config: ResponseModelConfig) -> FitOptions:
    return FitOptions(
        rank=config.rank,
        negatives=config.negatives,
        calibration_negatives=config.calibration_negatives,
        steps=config.steps,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        max_positives=config.max_positives,
        seed=config.seed,
    )


def _cache_dir(config: ResponseModelConfig) -> Path:
    return Path(config.cache_dir or os.environ.get("MARLREC_CACHE", DEFAULT_CACHE)).expanduser()


def _validate(config: ResponseModelConfig, where: str) -> None:
    positive: tuple[str, ...] = (
        "rank",
        "negatives",
        "calibration_negatives",
        "steps",
        "batch_size",
    )
    positive += ("max_positives",)
    for key in positive:
        if getattr(config, key) < 1:
            raise PluginError(f"{where}: {key} must be >= 1, got {getattr(config, key)}")
    if not config.learning_rate > 0 or config.weight_decay < 0:
        raise PluginError(f"{where}: learning_rate must be > 0 and weight_decay >= 0")
