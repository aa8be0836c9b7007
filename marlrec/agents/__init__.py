"""Agent plugins (entry-point group `marlrec.agents`): learners that fill slates for every role."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from marlrec.envs import Environment, EnvSpec
from marlrec.plugin import Plugin
from marlrec.settings import TrainRun

if TYPE_CHECKING:
    from tianshou.algorithm.algorithm_base import Algorithm
    from tianshou.data import ReplayBuffer

# Called by the trainer before each collect step with (epoch, env_step), e.g. to decay
# exploration. It must depend on its arguments only: a resumed run calls it afresh.
TrainingHook = Callable[[int, int], None]
# Builds the replay buffer: (total capacity, number of env copies) -> buffer.
BufferFactory = Callable[[int, int], "ReplayBuffer"]


@dataclass(frozen=True)
class TrainingPlan:
    """What the shared training loop (`marlrec.training`) needs to train an agent."""

    algorithm: Algorithm
    """The Tianshou algorithm over the agent's networks."""
    off_policy: bool
    """Whether the loop runs Tianshou's off-policy trainer (else the on-policy one)."""
    training_hook: TrainingHook | None = None
    make_buffer: BufferFactory | None = None
    """Replaces the default `VectorReplayBuffer` (e.g. with a prioritised one)."""


class Agent(Plugin):
    """Constructed as `Agent(config, spec=..., device=...)`.

    `candidate_scores` is the policy's view used by evaluation and serving: for a batch of
    observations of one role, a score per candidate (higher is better, greedy, no exploration).
    It is the first output of `scoring_network(role)`, which imitation of logged choices trains.
    """

    def __init__(self, config: object, *, spec: EnvSpec, device: torch.device) -> None:
        super().__init__(config)
        self.spec = spec
        self.device = device

    @abstractmethod
    def training_plan(self, env: Environment, run: TrainRun) -> TrainingPlan | None:
        """The algorithm that trains this agent on copies of `env`, and how to run it; None
        for a fixed policy with nothing to learn."""

    @abstractmethod
    def scoring_network(self, role: int) -> torch.nn.Module:
        """The network mapping observations (B, obs_size) of role number `role` to
        `(scores (B, n_candidates), state)`: Q-values or logits, with gradients."""

    def candidate_scores(self, obs: torch.Tensor, role: int) -> torch.Tensor:
        """Scores (B, n_candidates) for observations (B, obs_size) of role number `role`."""
        with torch.no_grad():
            return self.scoring_network(role)(obs)[0]

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to restore the trained policy."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""


def checkpoint_path(run_dir: Path, which: str = "last") -> Path:
    """`last` is written after every epoch; `best` when a test step sets a new best return."""
    return run_dir / "checkpoints" / f"{which}.pt"
