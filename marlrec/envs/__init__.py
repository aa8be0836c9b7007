"""Environment plugins (entry-point group `marlrec.envs`): one user session per episode."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pettingzoo import AECEnv
from tianshou.env import BaseVectorEnv, DummyVectorEnv, PettingZooEnv

from marlrec.data import RecData
from marlrec.plugin import Plugin
from marlrec.registry import PluginError
from marlrec.retrieval import Retriever
from marlrec.rewards import Reward
from marlrec.simulators import Simulator
from marlrec.states import StateModel

if TYPE_CHECKING:
    from marlrec.encoders.tower import TextTower


@dataclass(frozen=True)
class EnvContext:
    """Everything an environment needs, built once per run and shared by its env copies."""

    data: RecData
    item_emb: torch.Tensor  # (n_items, d) on `device`
    state: StateModel
    simulator: Simulator
    rewards: dict[str, Reward]
    device: torch.device
    retriever: Retriever  # scores the catalog for each slate's candidates
    item_tower: TextTower | None = None  # a trainable encoder behind `item_emb`, if any


@dataclass(frozen=True)
class ObsLayout:
    """Where each part sits in an agent's flat float32 observation.

    [state | recent history ids | candidate ids | retrieval scores | popularity | chosen flags |
     role one-hot | progress | candidate features]

    The recent history holds the user's last `history_len` item ids in time order, padded with -1
    at the end, so that a trainable state model can be recomputed inside an agent's network and
    learn with it. Popularity is the candidate's log training count scaled to [0, 1]; progress is
    the slot's and the slate's position in the slate and the session, each in [0, 1). The
    candidate features are the retriever's `n_features` per candidate, candidate by candidate
    (e.g. each union member's score and rank).
    """

    state_dim: int
    n_candidates: int
    n_roles: int
    history_len: int = 0
    n_features: int = 0

    @property
    def size(self) -> int:
        fixed = self.state_dim + self.history_len + 4 * self.n_candidates + self.n_roles + 2
        return fixed + self.n_candidates * self.n_features

    def split(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of a (B, size) observation batch by part."""
        sizes = [self.state_dim, self.history_len, *[self.n_candidates] * 4, self.n_roles, 2]
        sizes.append(self.n_candidates * self.n_features)
        names = [
            "state",
            "history",
            "candidates",
            "scores",
            "popularity",
            "chosen",
            "role",
            "progress",
            "features",
        ]
        parts = dict(zip(names, torch.split(obs, sizes, dim=-1), strict=True))
        parts["features"] = parts["features"].unflatten(-1, (self.n_candidates, self.n_features))
        parts["history"] = parts["history"].long()
        parts["candidates"] = parts["candidates"].long()
        return parts


@dataclass(frozen=True)
class EnvSpec:
    """What agents need to know about an environment to build their networks."""

    roles: tuple[str, ...]
    layout: ObsLayout
    item_emb: torch.Tensor
    state: StateModel  # the run's state model; trainable ones learn inside the agents' networks
    item_tower: TextTower | None = None  # a trainable encoder, learning inside them too


@dataclass(frozen=True)
class LoggedChoices:
    """Observations in which a logged next item was among the candidates, and its position.

    Row n is what role `roles[n]` saw when the user's logged next item was candidate
    `actions[n]`: the supervision that imitation of logged choices learns from.
    """

    rows: torch.Tensor  # (N,) which of the given histories each row comes from
    obs: torch.Tensor  # (N, layout.size)
    roles: torch.Tensor  # (N,) role numbers
    actions: torch.Tensor  # (N,) candidate positions of the logged items


# Scores candidates for one role: (obs (B, size) float tensor, role index) -> (B, n_candidates).
CandidateScorer = Callable[[torch.Tensor, int], torch.Tensor]


class Environment(Plugin):
    """Constructed as `Environment(config, ctx=...)`; a factory of env copies for one run."""

    def __init__(self, config: object, *, ctx: EnvContext) -> None:
        super().__init__(config)
        self.ctx = ctx

    @property
    @abstractmethod
    def spec(self) -> EnvSpec:
        """Roles, observation layout and item embeddings for the agents' networks."""

    @abstractmethod
    def make(self) -> Any:
        """A new env copy as Tianshou steps it (seed it through `reset(seed=...)`).

        A PettingZoo AEC env for multi-agent environments, a gymnasium Env for single-agent ones.
        """

    @property
    def session_steps(self) -> int | None:
        """The most env steps one session can take, when known: room enough to hold a session
        in a collector's buffer."""
        return None

    def make_aec(self) -> AECEnv:
        """A new PettingZoo AEC env of one session, turn by turn, for simulated evaluation.

        The same as `make()` for multi-agent environments; single-agent ones give their one
        agent's view as a one-agent AEC env.
        """
        return self.make()

    def make_vector(self, num_envs: int) -> BaseVectorEnv:
        """`num_envs` env copies stepped together, as Tianshou's collectors take them.

        This default steps `make()` copies one by one (AEC envs wrapped in Tianshou's
        `PettingZooEnv`); environments with a batched form override it.
        """
        return DummyVectorEnv([self.tianshou_env] * num_envs)

    def tianshou_env(self) -> Any:
        """One env copy as Tianshou steps it: AEC envs through `PettingZooEnv`, others as is."""
        made = self.make()
        return PettingZooEnv(made) if isinstance(made, AECEnv) else made

    def logged_choices(
        self, histories: list[np.ndarray], targets: np.ndarray, rng: np.random.Generator
    ) -> LoggedChoices:
        """The observations in which each history's logged next item (`targets`) is a candidate.

        Environments whose observations cannot be built from a history alone do not support
        imitation of logged choices.
        """
        raise PluginError(
            f"env '{type(self).__name__}' cannot build observations of logged choices: "
            "set trainer.imitation_steps=0"
        )
