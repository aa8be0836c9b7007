"""`mappo`: decentralised PPO actors, one per role, trained with one centralised critic.

Centralised training, decentralised execution. Each role's actor scores candidates from its own
observation only, in training and in use. The critic is one network for the whole team: it
values the slate state, not a role's view of it, and reads what no actor sees, the slate being
filled as an ordered list of who placed which candidate at which slot. That list is recovered
from the stored trajectory (the steps of the current slate before this one), so it exists only
in training, where the critic is needed. Every role learns from the team reward, the mean of
the roles' rewards (the cooperative reward itself unless roles mix in their own terms).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tianshou.algorithm import PPO
from tianshou.data import Batch, ReplayBuffer
from torch import nn

from marlrec.agents.marl import (
    CandidateEncoder,
    CooperativeOnPolicyAlgorithm,
    open_candidates,
)
from marlrec.agents.ppo import IndependentPPO, PPOConfig, RolePPO
from marlrec.envs import EnvSpec, ObsLayout


@dataclass(kw_only=True)
class MAPPOConfig(PPOConfig):
    share: bool = False
    """One actor for all roles, conditioned on a learned role embedding (the critic is one
    network in any case)."""


def slate_so_far(
    buffer: ReplayBuffer, indices: np.ndarray, roles: tuple[str, ...], layout: ObsLayout
) -> np.ndarray:
    """Who placed each candidate of the slate being filled, and where: (N, M, n_roles + 1).

    For the step at each index, the steps before it in the same slate are walked back (their
    number is the count of chosen candidates in its observation): a chosen candidate gets its
    placer's role one-hot and, in the last column, its slot's position weight 1 / log2(slot + 2).
    Steps of a slate collected before the buffer's start are unknown and stay zero.
    """
    obs = torch.as_tensor(buffer.obs.obs[indices], dtype=torch.float32)
    remaining = layout.split(obs)["chosen"].sum(dim=1).long().numpy()
    slate = np.zeros((len(indices), layout.n_candidates, len(roles) + 1), dtype=np.float32)
    role_index = {role: r for r, role in enumerate(roles)}
    current = np.asarray(indices).copy()
    while (remaining > 0).any():
        previous = buffer.prev(current)
        walking = (remaining > 0) & (previous != current)
        rows = np.flatnonzero(walking)
        placed = buffer.act[previous[rows]].astype(np.int64)
        placers = [role_index[a] for a in buffer.obs.agent_id[previous[rows]]]
        slate[rows, placed, placers] = 1.0
        slate[rows, placed, -1] = 1.0 / np.log2(remaining[rows] + 1.0)  # slot = remaining - 1
        remaining = np.where(walking, remaining - 1, 0)
        current = np.where(walking, previous, current)
    return slate


class SlateCritic(CandidateEncoder):
    """The team's state value from the user, the ordered slate by placer, and the open candidates.

    No role one-hot and no role embedding: it values the state every role shares. Whose turn it
    is follows from the slate's progress.
    """

    def __init__(self, spec: EnvSpec, hidden: int, device: torch.device) -> None:
        super().__init__(spec, hidden, device)
        n_roles = spec.layout.n_roles
        team_context = (n_roles + 3) * hidden + 2
        self.value = nn.Sequential(nn.Linear(team_context, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.to(device)

    def forward(self, obs: Batch, state: Any = None, info: Any = None) -> torch.Tensor:
        f = self.features(self.read(obs))
        slate = torch.as_tensor(obs.slate, dtype=torch.float32, device=self.device)
        by_role = slate[..., :-1]  # (B, M, n_roles)
        placed = torch.einsum("bmr,bmh->brh", by_role, f.candidates)
        placed = placed / by_role.sum(dim=1).clamp(min=1)[..., None]
        by_position = (slate[..., -1:] * f.candidates).sum(dim=1)
        context = [f.user, placed.flatten(1), by_position, open_candidates(f), f.parts["progress"]]
        return self.value(torch.cat(context, dim=-1))


class CentralisedRolePPO(RolePPO):
    """A role's PPO whose critic, shared by the team, also reads the slate so far."""

    def __init__(self, *, roles: tuple[str, ...], layout: ObsLayout, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.roles = roles
        self.layout = layout

    def critic_observations(self, buffer: ReplayBuffer, indices: np.ndarray) -> Batch:
        obs = super().critic_observations(buffer, indices)
        obs.slate = slate_so_far(buffer, indices, self.roles, self.layout)
        return obs


class TeamRewardOnPolicyAlgorithm(CooperativeOnPolicyAlgorithm):
    """Every role learns from the team reward: the mean of the roles' reward columns.

    Each role's returns accrue the team reward handed to it for the update; the buffer keeps
    the roles' own rewards.
    """

    def prepare_batch(self, batch: Batch, buffer: ReplayBuffer, indices: np.ndarray) -> Batch:
        rewards = buffer.rew
        if not (isinstance(rewards, np.ndarray) and rewards.ndim == 2):
            return super().prepare_batch(batch, buffer, indices)
        with team_rewards(self.roles(), rewards.mean(axis=1)):
            return super().prepare_batch(batch, buffer, indices)

    def roles(self) -> list[RolePPO]:
        algorithms = (self.get_algorithm(agent) for agent in self.policy.policies)
        return [a for a in algorithms if isinstance(a, RolePPO)]


@contextlib.contextmanager
def team_rewards(roles: list[RolePPO], team: np.ndarray) -> Iterator[None]:
    """Let every role accrue `team` (one reward per buffer slot) in place of its own column."""
    for role in roles:
        role.accrued_rewards = team
    try:
        yield
    finally:
        for role in roles:
            role.accrued_rewards = None


class MAPPO(IndependentPPO):
    """Decentralised actors (separate, or one shared with `share`) and one centralised critic."""

    Config = MAPPOConfig
    multi_agent_algorithm = TeamRewardOnPolicyAlgorithm

    def _build_critics(self) -> nn.ModuleList:
        return nn.ModuleList([SlateCritic(self.spec, self.config.hidden, self.device)])

    def _role_algorithm(self, role: str, **kwargs: Any) -> PPO:
        return CentralisedRolePPO(
            agent_id=role, roles=self.spec.roles, layout=self.spec.layout, **kwargs
        )
