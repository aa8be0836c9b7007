"""Pieces that make Tianshou 2.x's multi-agent path correct for cooperating slate roles.

Tianshou stores one transition per AEC step, so a role's `obs_next` is the *next role's*
observation and rewards that land on other roles' turns never reach its targets. Roles act in a
fixed order, so we build each role's transition explicitly: from its turn to its own next turn,
summing every reward credited to it in between. The trainer also flags only the outer policy as
"within a training step"; `CooperativePolicy` hands that flag down to every role's policy so that
exploration is on while collecting and off in evaluation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tianshou.algorithm.algorithm_base import OffPolicyAlgorithm, Policy
from tianshou.algorithm.multiagent.marl import (
    MARLDispatcher,
    MultiAgentOffPolicyAlgorithm,
    MultiAgentPolicy,
)
from tianshou.data import ReplayBuffer
from tianshou.env import PettingZooEnv
from torch import nn

from marlrec.envs import EnvSpec


class CooperativePolicy(MultiAgentPolicy):
    """The roles' policies, dispatched by agent id, sharing the trainer's training-step flag."""

    @property
    def is_within_training_step(self) -> bool:
        return self._within_training_step

    @is_within_training_step.setter
    def is_within_training_step(self, value: bool) -> None:
        self._within_training_step = value
        for policy in getattr(self, "policies", {}).values():
            policy.is_within_training_step = value

    def __init__(self, policies: dict[str | int, Policy]) -> None:
        super().__init__(policies)
        self.is_within_training_step = False


class CooperativeOffPolicyAlgorithm(MultiAgentOffPolicyAlgorithm):
    """Tianshou's multi-agent off-policy algorithm with a `CooperativePolicy`."""

    def __init__(self, *, algorithms: list[OffPolicyAlgorithm], env: PettingZooEnv) -> None:
        dispatcher: MARLDispatcher[OffPolicyAlgorithm] = MARLDispatcher(algorithms, env)
        policy = CooperativePolicy({a: alg.policy for a, alg in dispatcher.algorithms.items()})
        OffPolicyAlgorithm.__init__(self, policy=policy)
        self._dispatcher = dispatcher
        self._submodules = nn.ModuleList(algorithms)


def own_turn_transitions(
    buffer: ReplayBuffer, indices: np.ndarray, agent_id: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each of one role's steps, follow the episode to that role's own next turn.

    `buffer.rew` must hold this role's reward column (Tianshou's dispatcher arranges that).
    Returns the reward accrued until the next own turn, the index of that turn, whether to
    bootstrap from it (the episode went on), and whether the transition is complete (its next
    turn has been collected; the newest steps of a running episode are not yet).
    """
    accrued = np.zeros(len(indices), dtype=np.float64)
    current = np.asarray(indices).copy()
    active = np.ones(len(indices), dtype=bool)
    ended = np.zeros(len(indices), dtype=bool)
    complete = np.ones(len(indices), dtype=bool)
    while active.any():
        accrued[active] += buffer.rew[current[active]]
        done_here = active & buffer.done[current]
        ended |= done_here
        active &= ~done_here
        following = buffer.next(current)
        stalled = active & (following == current)
        complete &= ~stalled
        active &= ~stalled
        current = np.where(active, following, current)
        active &= buffer.obs.agent_id[current] != agent_id
    return accrued, current, ~ended & complete, complete


class CandidateQNet(nn.Module):
    """Scores every candidate from (state, candidate, slate so far, role): a dueling Q-network.

    Scoring candidates instead of catalog ids keeps the action space fixed as the catalog grows
    and lets a new item be recommended as soon as its text is encoded. The dueling split, a
    state value plus each candidate's advantage, matters here: a session's return dwarfs the
    difference one slot makes, and the advantage head learns that difference on its own.
    """

    def __init__(self, spec: EnvSpec, hidden: int, device: torch.device) -> None:
        super().__init__()
        self.layout = spec.layout
        self.device = device
        # The catalog's embeddings are data, not parameters: kept out of checkpoints.
        self.register_buffer("item_emb", spec.item_emb.to(device), persistent=False)
        # A trainable state model (shared by every role's network) is recomputed from the
        # observation's recent history so that it learns with the agents; a fixed one is read
        # from the observation as the environment computed it.
        trainable = any(p.requires_grad for p in spec.state.parameters())
        self.state_model = spec.state if trainable and spec.layout.history_len else None
        d, ds, n_roles = spec.item_emb.shape[1], spec.layout.state_dim, spec.layout.n_roles
        # Candidates are embedded with their scalar features, so the slate summary that the
        # value head reads also knows how popular and how well retrieved the chosen items are.
        self.item_proj = nn.Linear(d + 2, hidden)
        self.state_proj = nn.Linear(ds, hidden)
        context = 2 * hidden + n_roles + 2
        self.value = nn.Sequential(nn.Linear(context, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        # The advantage MLP's first layer over [context, candidate] is split in two so that the
        # context part is computed once per observation rather than once per candidate.
        self.advantage_context = nn.Linear(context, hidden)
        self.advantage_candidate = nn.Linear(3 * hidden + 1, hidden, bias=False)
        self.advantage_out = nn.Sequential(nn.ReLU(), nn.Linear(hidden, 1))
        self.to(device)

    def forward(self, obs: Any, state: Any = None, info: Any = None) -> tuple[torch.Tensor, Any]:
        obs = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        parts = self.layout.split(obs)
        raw = self.item_emb[parts["candidates"]]  # (B, M, d)
        chosen = parts["chosen"]
        scalars = torch.stack([parts["scores"], parts["popularity"]], dim=-1)
        cand = self.item_proj(torch.cat([raw, scalars], dim=-1))
        user = self.state_proj(self._user_state(parts))
        slate = (chosen[..., None] * cand).sum(1) / chosen.sum(1, keepdim=True).clamp(min=1)
        context = torch.cat([user, slate, parts["role"], parts["progress"]], dim=-1)
        unit = F.normalize(raw, dim=-1)
        to_slate = (unit @ unit.transpose(1, 2)).masked_fill(chosen[:, None, :] == 0, -1.0)
        per_candidate = torch.cat(
            [cand, cand * user[:, None], cand * slate[:, None], to_slate.amax(-1)[..., None]],
            dim=-1,
        )
        hidden = self.advantage_candidate(per_candidate) + self.advantage_context(context)[:, None]
        advantage = self.advantage_out(hidden).squeeze(-1)
        available = 1.0 - chosen
        mean = (advantage * available).sum(1, keepdim=True) / available.sum(1, keepdim=True)
        return self.value(context) + advantage - mean, state

    def _user_state(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.state_model is None:
            return parts["state"]
        history = parts["history"]
        lengths = (history >= 0).sum(dim=1)
        return self.state_model(self.item_emb[history.clamp(min=0)], lengths)
