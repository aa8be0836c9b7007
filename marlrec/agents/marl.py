"""Pieces that make Tianshou 2.x's multi-agent path correct for cooperating slate roles.

Tianshou stores one transition per AEC step, so a role's `obs_next` is the *next role's*
observation and rewards that land on other roles' turns never reach its targets. Roles act in a
fixed order, so we build each role's transition explicitly: from its turn to its own next turn,
summing every reward credited to it in between. The trainer also flags only the outer policy as
"within a training step"; `CooperativePolicy` hands that flag down to every role's policy so that
exploration is on while collecting and off in evaluation.

The candidate-scoring networks share one encoder (`CandidateEncoder`); with parameter sharing one
network serves every role and a learned role embedding tells the roles apart.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tianshou.algorithm.algorithm_base import OffPolicyAlgorithm, OnPolicyAlgorithm, Policy
from tianshou.algorithm.multiagent.marl import MultiAgentPolicy
from tianshou.algorithm.optim import OptimizerFactory, ParamsType
from tianshou.data import Batch, ReplayBuffer
from tianshou.env import PettingZooEnv
from torch import nn

from marlrec.encoders.tower import unit_rows_listener
from marlrec.envs import Environment, EnvSpec
from marlrec.registry import PluginError
from marlrec.tianshou_compat import (
    HookedMultiAgentOffPolicyAlgorithm,
    HookedMultiAgentOnPolicyAlgorithm,
)

# Scale of the standardised retrieval score and popularity in an actor's direct logit term.
DIRECT_GAIN = 10.0
# Logit given to unavailable candidates: finite, so entropies and log-probabilities stay finite.
MASKED_LOGIT = -1e9


class CooperativePolicy(MultiAgentPolicy):
    """The roles' policies, dispatched by agent id, sharing the trainer's training-step flag."""

    @property
    def is_within_training_step(self) -> bool:
        return self._training_step_flag

    @is_within_training_step.setter
    def is_within_training_step(self, value: bool) -> None:
        self._training_step_flag = value
        for policy in getattr(self, "policies", {}).values():
            policy.is_within_training_step = value

    def __init__(self, policies: dict[str | int, Policy]) -> None:
        super().__init__(policies)
        self.is_within_training_step = False


class CooperativeOffPolicyAlgorithm(HookedMultiAgentOffPolicyAlgorithm):
    """Tianshou's multi-agent off-policy algorithm with a `CooperativePolicy`."""

    def __init__(self, *, algorithms: list[OffPolicyAlgorithm], env: PettingZooEnv) -> None:
        super().__init__(algorithms=algorithms, env=env)
        self.policy = CooperativePolicy(self.policy.policies)


class CooperativeOnPolicyAlgorithm(HookedMultiAgentOnPolicyAlgorithm):
    """Tianshou's multi-agent on-policy algorithm with a `CooperativePolicy`."""

    def __init__(self, *, algorithms: list[OnPolicyAlgorithm], env: PettingZooEnv) -> None:
        super().__init__(algorithms=algorithms, env=env)
        self.policy = CooperativePolicy(self.policy.policies)


def multi_agent_env(env: Environment, agent: str) -> PettingZooEnv:
    """One copy of `env` as Tianshou's multi-agent path steps it; single-agent envs are refused."""
    made = env.make()
    if not hasattr(made, "agent_iter"):
        raise PluginError(
            f"agent '{agent}' is multi-agent and needs an env whose roles take turns "
            f"(env=slate), but this env has a single agent: use agent=dqn or agent=ppo"
        )
    return PettingZooEnv(made)


class SharedOptimizerFactory(OptimizerFactory):
    """Hands one Adam over all roles' networks to every role's algorithm.

    Roles that share parameters (a shared network, the trainable state model, MAPPO's critic)
    then keep one set of moment estimates instead of one per role, each of which would step the
    same weights. A role's update leaves the others' gradients unset, and Adam skips those.
    """

    def __init__(self, module: nn.Module, lr: float) -> None:
        super().__init__()
        self.optimizer = torch.optim.Adam(module.parameters(), lr=lr)

    def _create_optimizer_for_params(self, params: ParamsType) -> torch.optim.Optimizer:
        return self.optimizer


def own_turn_transitions(
    buffer: ReplayBuffer,
    indices: np.ndarray,
    agent_id: str,
    rewards: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each of one role's steps, follow the episode to that role's own next turn.

    `rewards` (one per buffer slot) are what the role accrues; by default `buffer.rew`, which
    must then hold this role's reward column (Tianshou's dispatcher arranges that).
    Returns the reward accrued until the next own turn, the index of that turn, whether to
    bootstrap from it (the episode went on), and whether the transition is complete (its next
    turn has been collected; the newest steps of a running episode are not yet).
    """
    accrued = np.zeros(len(indices), dtype=np.float64)
    current = np.asarray(indices).copy()
    active = np.ones(len(indices), dtype=bool)
    ended = np.zeros(len(indices), dtype=bool)
    complete = np.ones(len(indices), dtype=bool)
    rewards = buffer.rew if rewards is None else rewards
    while active.any():
        accrued[active] += rewards[current[active]]
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


def own_turn_advantages(
    deltas: np.ndarray,
    indices: np.ndarray,
    next_turn: np.ndarray,
    bootstrap: np.ndarray,
    discount: float,
) -> np.ndarray:
    """Generalised advantages along one role's own turns: A_t = delta_t + discount * A_next.

    `deltas` are the role's TD errors, one per step at `indices`; `next_turn` and `bootstrap`
    come from `own_turn_transitions`; `discount` is gamma * lambda. The chain runs through
    every next own turn that is itself among `indices` and stops at the episode's end.
    """
    order = np.argsort(indices)
    slot = np.searchsorted(indices[order], next_turn).clip(max=len(indices) - 1)
    successor = order[slot]
    chained = bootstrap & (indices[successor] == next_turn)
    advantages = deltas.astype(np.float64).copy()
    # Every pass makes one more own turn of each chain exact; chains are as long as a session.
    for _ in range(len(indices)):
        updated = deltas + discount * np.where(chained, advantages[successor], 0.0)
        if np.array_equal(updated, advantages):
            break
        advantages = updated
    return advantages


@dataclass
class CandidateInputs:
    """What the encoders read from an observation batch before any weight applies.

    Networks over the same catalog and layout (a Q-network and its target copy, say) compute
    it once for a batch they both score and each take it in place of the observation.
    """

    parts: dict[str, torch.Tensor]  # the observation's parts (ObsLayout.split)
    candidates: torch.Tensor  # (B, M, d + S) item embeddings and the S scalar features
    to_slate: torch.Tensor  # (B, M, 1) cosine similarity to the closest chosen candidate
    history: torch.Tensor | None  # (B, L, d) recent items, for a trainable state model
    n_scalars: int = 2  # S: retrieval score, popularity, then the retriever's features

    @property
    def scalars(self) -> torch.Tensor:
        """(B, M, S) retrieval score, popularity and the retriever's candidate features."""
        return self.candidates[..., -self.n_scalars :]


@dataclass
class CandidateFeatures:
    """What every candidate-scoring head reads, computed once per observation batch."""

    parts: dict[str, torch.Tensor]  # the observation's parts (ObsLayout.split)
    user: torch.Tensor  # (B, hidden) projected user state (plus the role embedding, if any)
    candidates: torch.Tensor  # (B, M, hidden) projected candidates with their scalar features
    context: torch.Tensor  # (B, 2 * hidden + n_roles + 2) user, slate so far, role, progress
    per_candidate: torch.Tensor  # (B, M, 3 * hidden + 1) each candidate against user and slate
    scalars: torch.Tensor  # (B, M, S) retrieval score, popularity, retriever's features


# Unit-length catalog rows by id of the catalog tensor, dropped with it; the roles' networks
# share one copy.
_unit_rows: dict[int, torch.Tensor] = {}


def unit_rows(emb: torch.Tensor) -> torch.Tensor:
    """`emb`'s rows scaled to unit length, computed once per catalog tensor.

    Normalising rows and then gathering gives the same values as gathering and then
    normalising, without normalising every candidate again in every forward pass.
    """
    key = id(emb)
    if key not in _unit_rows:
        _unit_rows[key] = F.normalize(emb, dim=-1)
        weakref.finalize(emb, _unit_rows.pop, key, None)
    return _unit_rows[key]


class CandidateEncoder(nn.Module):
    """Encodes (state, candidate, slate so far, role) for candidate-scoring heads.

    Scoring candidates instead of catalog ids keeps the action space fixed as the catalog grows
    and lets a new item be recommended as soon as its text is encoded. With `role_embedding`,
    one network can serve every role: a learned embedding of the role is added to the user's
    projection, so each role weighs the candidates through its own view of the user.
    """

    def __init__(
        self, spec: EnvSpec, hidden: int, device: torch.device, role_embedding: bool = False
    ) -> None:
        super().__init__()
        self.layout = spec.layout
        self.device = device
        # The catalog's embeddings are data, not parameters: kept out of checkpoints.
        item_emb = spec.item_emb.to(device)
        self.register_buffer("item_emb", item_emb, persistent=False)
        item_unit = unit_rows(item_emb)
        self.register_buffer("item_unit", item_unit, persistent=False)
        # A trainable text encoder learns inside every network that reads the catalog.
        self.item_tower = spec.item_tower
        if self.item_tower is not None:
            self.item_tower.on_refresh(unit_rows_listener(item_emb, item_unit))
        # A trainable state model (shared by every role's network) is recomputed from the
        # observation's recent history so that it learns with the agents; a fixed one is read
        # from the observation as the environment computed it.
        trainable = any(p.requires_grad for p in spec.state.parameters())
        self.state_model = spec.state if trainable and spec.layout.history_len else None
        d, ds, n_roles = spec.item_emb.shape[1], spec.layout.state_dim, spec.layout.n_roles
        # Candidates are embedded with their scalar features, so the slate summary that the
        # value head reads also knows how popular and how well retrieved the chosen items are.
        self.n_scalars = 2 + spec.layout.n_features
        self.item_proj = nn.Linear(d + self.n_scalars, hidden)
        self.state_proj = nn.Linear(ds, hidden)
        self.role_embedding = nn.Embedding(n_roles, hidden) if role_embedding else None
        self.context_size = 2 * hidden + n_roles + 2
        self.per_candidate_size = 3 * hidden + 1

    def inputs(self, obs: Any) -> CandidateInputs:
        """The weight-free part of `features`, for networks that score the same batch."""
        obs = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        parts = self.layout.split(obs)
        ids, chosen = parts["candidates"], parts["chosen"]
        scalars = torch.stack([parts["scores"], parts["popularity"]], dim=-1)
        rows = self.item_emb[ids] if self.item_tower is None else self.item_tower.lookup(ids)
        candidates = torch.cat([rows, scalars, parts["features"]], dim=-1)
        unit = self.item_unit[ids]
        to_slate = (unit @ unit.transpose(1, 2)).masked_fill(chosen[:, None, :] == 0, -1.0)
        history = None
        if self.state_model is not None:
            history = self.item_emb[parts["history"].clamp(min=0)]
        return CandidateInputs(
            parts, candidates, to_slate.amax(-1)[..., None], history, self.n_scalars
        )

    def read(self, obs: Any) -> Any:
        """What a network hands `features`: the flat observation, or its inputs as attached to
        an observation `Batch` by `attach_inputs`."""
        flat, _ = observation_and_mask(obs)
        saved = obs.get("candidate_inputs") if isinstance(obs, Batch) else None
        if saved is None:
            return flat
        parts = self.layout.split(torch.as_tensor(flat, dtype=torch.float32, device=self.device))
        return CandidateInputs(
            parts, saved.candidates, saved.to_slate, saved.get("history"), self.n_scalars
        )

    def features(self, obs: Any) -> CandidateFeatures:
        """From a flat observation batch, or its `CandidateInputs`."""
        x = obs if isinstance(obs, CandidateInputs) else self.inputs(obs)
        parts, chosen = x.parts, x.parts["chosen"]
        cand = self.item_proj(x.candidates)
        user = self.state_proj(self._user_state(x))
        if self.role_embedding is not None:
            user = user + self.role_embedding(parts["role"].argmax(dim=-1))
        slate = (chosen[..., None] * cand).sum(1) / chosen.sum(1, keepdim=True).clamp(min=1)
        context = torch.cat([user, slate, parts["role"], parts["progress"]], dim=-1)
        per_candidate = torch.cat(
            [cand, cand * user[:, None], cand * slate[:, None], x.to_slate], dim=-1
        )
        return CandidateFeatures(parts, user, cand, context, per_candidate, x.scalars)

    def _user_state(self, x: CandidateInputs) -> torch.Tensor:
        if self.state_model is None:
            return x.parts["state"]
        assert x.history is not None, "inputs computed without the history the state model reads"
        ids = x.parts["history"]
        return self.state_model.forward_with_ids(x.history, (ids >= 0).sum(dim=1), ids)


class CandidateQNet(CandidateEncoder):
    """Scores every candidate from (state, candidate, slate so far, role): a dueling Q-network.

    The dueling split, a state value plus each candidate's advantage, matters here: a session's
    return dwarfs the difference one slot makes, and the advantage head learns that difference
    on its own. With `direct_scores`, the advantage also gets `CandidateActor`'s direct linear
    term over the standardised retrieval score and popularity, starting at zero.
    """

    def __init__(
        self,
        spec: EnvSpec,
        hidden: int,
        device: torch.device,
        role_embedding: bool = False,
        direct_scores: bool = False,
    ) -> None:
        super().__init__(spec, hidden, device, role_embedding)
        self.direct = nn.Linear(self.n_scalars, 1, bias=False) if direct_scores else None
        if self.direct is not None:
            nn.init.zeros_(self.direct.weight)
        self.value = nn.Sequential(
            nn.Linear(self.context_size, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )
        # The advantage MLP's first layer over [context, candidate] is split in two so that the
        # context part is computed once per observation rather than once per candidate.
        self.advantage_context = nn.Linear(self.context_size, hidden)
        self.advantage_candidate = nn.Linear(self.per_candidate_size, hidden, bias=False)
        self.advantage_out = nn.Sequential(nn.ReLU(), nn.Linear(hidden, 1))
        self.to(device)

    CANDIDATE_LAYER = "advantage_candidate"  # the head's layer over `per_candidate`

    def forward(self, obs: Any, state: Any = None, info: Any = None) -> tuple[torch.Tensor, Any]:
        f = self.features(obs)
        scores = self.head(
            f.context, f.parts["chosen"], f.scalars, self.advantage_candidate(f.per_candidate)
        )
        return scores, state

    def head(
        self,
        context: torch.Tensor,
        chosen: torch.Tensor,
        scalars: torch.Tensor,
        candidate_hidden: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Q-values from the context and each candidate's `advantage_candidate` output."""
        hidden = candidate_hidden + self.advantage_context(context)[:, None]
        advantage = self.advantage_out(hidden).squeeze(-1)
        available = 1.0 - chosen
        if self.direct is not None:
            scaled = DIRECT_GAIN * standardised(scalars, available > 0)
            advantage = advantage + self.direct(scaled).squeeze(-1)
        mean = (advantage * available).sum(1, keepdim=True) / available.sum(1, keepdim=True)
        return self.value(context) + advantage - mean


def attach_inputs(obs: Batch, encoder: CandidateEncoder) -> Batch:
    """`obs` carrying its `CandidateInputs`, computed once for every network that reads it.

    An on-policy update reads the same observations many times, with the actor and the critic
    and over several passes; they split and shuffle along with the observations.
    """
    if encoder.item_tower is not None:
        return obs  # computed in each forward pass instead, where gradients reach the encoder
    with torch.no_grad():
        x = encoder.inputs(obs.obs)
    saved = Batch(candidates=x.candidates, to_slate=x.to_slate)
    if x.history is not None:
        saved.history = x.history
    obs.candidate_inputs = saved
    return obs


def observation_and_mask(obs: Any) -> tuple[Any, torch.Tensor | None]:
    """The flat observation and the action mask of what a Tianshou policy hands its network.

    Multi-agent and masked envs give `Batch(obs=..., mask=...)`; evaluation and serving give
    the flat observation alone (they mask by themselves).
    """
    if isinstance(obs, Batch) and hasattr(obs, "obs"):
        mask = getattr(obs, "mask", None)
        return obs.obs, None if mask is None else torch.as_tensor(mask, dtype=torch.bool)
    return obs, None


class CandidateActor(CandidateEncoder):
    """A policy's logits over the candidates, with unavailable candidates masked out.

    Besides the learned per-candidate score, the retrieval score and the popularity enter the
    logits through a direct linear term: both are strong signals of a click, and a direct path
    lets the policy use them from the first updates instead of rediscovering them through the
    item projection. The term reads them standardised over the open candidates, so that its
    weights are in logit units per standard deviation whatever the catalog's spread, times
    `DIRECT_GAIN`: Adam moves every weight by about the learning rate per step, and the gain
    lets these two weights reach useful logits within the first hundred updates. They start at
    zero and the policy head's output layer near zero, so the first policy is close to uniform
    (as "What matters in on-policy RL", Andrychowicz et al. 2021, recommends) and the updates,
    not the initial weights, decide what it prefers.
    """

    def __init__(
        self, spec: EnvSpec, hidden: int, device: torch.device, role_embedding: bool = False
    ) -> None:
        super().__init__(spec, hidden, device, role_embedding)
        self.score_context = nn.Linear(self.context_size, hidden)
        self.score_candidate = nn.Linear(self.per_candidate_size, hidden, bias=False)
        self.score_out = nn.Sequential(nn.ReLU(), nn.Linear(hidden, 1))
        self.direct = nn.Linear(self.n_scalars, 1, bias=False)
        with torch.no_grad():
            self.direct.weight.zero_()
            self.score_out[1].weight.mul_(0.01)
            self.score_out[1].bias.zero_()
        self.to(device)

    CANDIDATE_LAYER = "score_candidate"  # the head's layer over `per_candidate`

    def forward(self, obs: Any, state: Any = None, info: Any = None) -> tuple[torch.Tensor, Any]:
        _, mask = observation_and_mask(obs)
        f = self.features(self.read(obs))
        candidate_hidden = self.score_candidate(f.per_candidate)
        return self.head(f.context, f.parts["chosen"], f.scalars, candidate_hidden, mask), state

    def head(
        self,
        context: torch.Tensor,
        chosen: torch.Tensor,
        scalars: torch.Tensor,
        candidate_hidden: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits from the context and each candidate's `score_candidate` output."""
        hidden = candidate_hidden + self.score_context(context)[:, None]
        available = chosen == 0
        if mask is not None:
            available = available & mask.to(self.device)
        direct = self.direct(DIRECT_GAIN * standardised(scalars, available))
        logits = (self.score_out(hidden) + direct).squeeze(-1)
        return logits.masked_fill(~available, MASKED_LOGIT)


def standardised(values: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
    """(B, M, k) features centred and scaled over each row's available candidates."""
    weight = available[..., None].float()
    count = weight.sum(1, keepdim=True).clamp(min=1)
    mean = (values * weight).sum(1, keepdim=True) / count
    var = ((values - mean).square() * weight).sum(1, keepdim=True) / count
    return (values - mean) / (var.sqrt() + 1e-6)


class CandidateCritic(CandidateEncoder):
    """A role's state value from its observation: the context and the candidates still open.

    The open candidates are pooled because what the rest of the session can earn depends on
    how good the items left to choose from are.
    """

    def __init__(
        self, spec: EnvSpec, hidden: int, device: torch.device, role_embedding: bool = False
    ) -> None:
        super().__init__(spec, hidden, device, role_embedding)
        self.value = nn.Sequential(
            nn.Linear(self.context_size + hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )
        self.to(device)

    def forward(self, obs: Any, state: Any = None, info: Any = None) -> torch.Tensor:
        f = self.features(self.read(obs))
        return self.value(torch.cat([f.context, open_candidates(f)], dim=-1))


def open_candidates(f: CandidateFeatures) -> torch.Tensor:
    """Mean of the projected candidates not chosen yet, (B, hidden)."""
    available = 1.0 - f.parts["chosen"]
    total = (available[..., None] * f.candidates).sum(1)
    return total / available.sum(1, keepdim=True).clamp(min=1)
