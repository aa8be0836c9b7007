"""`ippo`: an independent PPO actor and critic per role, through Tianshou 2.x's multi-agent path.

Each role's returns and advantages follow it from its turn to its own next turn (the buffer
stores AEC steps, where the next step belongs to another role), credited with every reward that
landed in between. With `share`, one actor and one critic serve every role, told apart by a
learned role embedding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from tianshou.algorithm import PPO
from tianshou.algorithm.modelfree.reinforce import DiscreteActorPolicy
from tianshou.data import Batch, ReplayBuffer, to_torch_as
from tianshou.env import PettingZooEnv
from torch import nn

from marlrec.agents import Agent, TrainingPlan, TrainRun
from marlrec.agents.marl import (
    CandidateActor,
    CandidateCritic,
    CandidateEncoder,
    CooperativeOnPolicyAlgorithm,
    SharedOptimizerFactory,
    attach_inputs,
    multi_agent_env,
    own_turn_advantages,
    own_turn_transitions,
)
from marlrec.envs import Environment, EnvSpec
from marlrec.registry import PluginError
from marlrec.tianshou_compat import HookedPPO


@dataclass(kw_only=True)
class ActorCriticConfig:
    """Options of every PPO agent, multi-agent or single."""

    hidden: int = 128
    """Width of the candidate-scoring actor and of the critic."""
    lr: float = 1e-4
    """Adam learning rate."""
    gamma: float = 0.8
    """Discount per own turn (a role's turns; every slot for a single agent)."""
    gae_lambda: float = 0.95
    """GAE lambda along own turns (1: Monte Carlo, 0: one-step TD)."""
    eps_clip: float = 0.2
    """PPO's clipping range of the probability ratio."""
    vf_coef: float = 0.5
    """Weight of the critic's loss."""
    ent_coef: float = 0.01
    """Weight of the entropy bonus."""
    max_grad_norm: float = 1.0
    """Gradient-norm clipping per update (0 disables it)."""

    def __post_init__(self) -> None:
        if self.hidden < 1 or self.lr <= 0.0 or self.eps_clip <= 0.0:
            raise PluginError("agent.hidden, agent.lr and agent.eps_clip must be positive")
        for name in ("gamma", "gae_lambda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise PluginError(f"agent.{name} must lie in [0, 1], got {getattr(self, name)}")
        if min(self.vf_coef, self.ent_coef, self.max_grad_norm) < 0.0:
            raise PluginError("agent.vf_coef, agent.ent_coef and agent.max_grad_norm must be >= 0")


@dataclass(kw_only=True)
class PPOConfig(ActorCriticConfig):
    share: bool = False
    """One actor and one critic for all roles, conditioned on a learned role embedding."""
    rl_roles: list[str] = field(default_factory=list)
    """The roles whose transitions RL updates from; empty: every role. A role left out still
    acts and still learns by imitation (before RL and, with `trainer.imitation_steps_per_update`,
    during it), e.g. to keep the first slots on relevance while another role learns for the
    session. With `share` the one actor still changes for every role."""


def with_own_target(buffer: ReplayBuffer, indices: np.ndarray, agent_id: str) -> np.ndarray:
    """Which of a role's steps have a return: their next own turn was collected, or the session
    ended for good before it. A session cut short (truncated when the env copies restarted)
    has neither a next turn nor a true end."""
    _, next_turn, bootstrap, complete = own_turn_transitions(buffer, indices, agent_id)
    ended = complete & ~bootstrap
    cut = ended & buffer.truncated[next_turn] & ~buffer.terminated[next_turn]
    return complete & ~cut


class RolePPO(HookedPPO):
    """PPO whose returns and advantages follow the role from its turn to its own next turn.

    Transitions without a return (`with_own_target`) are left out of the update.
    """

    def __init__(self, *, agent_id: str, learns: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.agent_id = agent_id
        self.learns = learns  # False: no RL update from this role's transitions (`rl_roles`)
        # What the role accrues between its turns, one per buffer slot; None: `buffer.rew`.
        self.accrued_rewards: np.ndarray | None = None

    def prepare_batch(self, batch: Batch, buffer: ReplayBuffer, indices: np.ndarray) -> Batch:
        if not self.learns:
            return Batch()  # left out of RL (`rl_roles`): the dispatcher skips it
        complete = with_own_target(buffer, indices, self.agent_id)
        if not complete.any():
            return Batch()  # Tianshou's dispatcher skips a role with no data
        indices = indices[complete]
        batch = batch[complete]
        batch.obs = self.critic_observations(buffer, indices)
        return super().prepare_batch(batch, buffer, indices)

    def add_returns_and_advantages(
        self, batch: Batch, buffer: ReplayBuffer, indices: np.ndarray
    ) -> Batch:
        accrued, next_turn, bootstrap, _ = own_turn_transitions(
            buffer, indices, self.agent_id, self.accrued_rewards
        )
        values = self._values(batch.obs)
        next_values = np.zeros(len(indices))
        if bootstrap.any():
            following = self.critic_observations(buffer, next_turn[bootstrap])
            next_values[bootstrap] = self._values(following)
        deltas = accrued + self.gamma * next_values - values
        advantages = own_turn_advantages(
            deltas, indices, next_turn, bootstrap, self.gamma * self.gae_lambda
        )
        device = next(self.critic.parameters()).device
        batch.v_s = torch.as_tensor(values, dtype=torch.float32, device=device)
        batch.returns = to_torch_as(advantages + values, batch.v_s)
        batch.adv = to_torch_as(advantages, batch.v_s)
        return batch

    def critic_observations(self, buffer: ReplayBuffer, indices: np.ndarray) -> Batch:
        """What the critic reads at the buffer's `indices`: here, the role's own observation,
        with the weight-free inputs that the actor and the critic share."""
        obs = buffer.obs[indices]
        if isinstance(self.critic, CandidateEncoder):
            attach_inputs(obs, self.critic)
        return obs

    def _values(self, obs: Batch) -> np.ndarray:
        with torch.no_grad():
            chunks = [
                self.critic(obs[start : start + self.max_batchsize]).flatten()
                for start in range(0, len(obs), self.max_batchsize)
            ]
        return torch.cat(chunks).cpu().numpy().astype(np.float64)


class IndependentPPO(Agent):
    """An actor (candidate logits, masked) and a critic per role, or one of each with `share`."""

    Config = PPOConfig
    multi_agent_algorithm: type[CooperativeOnPolicyAlgorithm] = CooperativeOnPolicyAlgorithm

    def __init__(self, config: PPOConfig, *, spec: EnvSpec, device: torch.device) -> None:
        super().__init__(config, spec=spec, device=device)
        unknown = sorted(set(config.rl_roles) - set(spec.roles))
        if unknown:
            raise PluginError(
                f"agent.rl_roles names {unknown[0]!r}, not a role of this env: "
                f"{', '.join(spec.roles)}"
            )
        self.actors = self._per_role(
            lambda shared: CandidateActor(spec, config.hidden, device, role_embedding=shared)
        )
        self.critics = self._build_critics()

    def _per_role(self, build: Callable[[bool], nn.Module]) -> nn.ModuleList:
        """One network per role, or with `share` one for all (conditioned on a role embedding);
        shared networks are kept once, so checkpoints hold each weight once."""
        if self.config.share:
            return nn.ModuleList([build(True)])
        return nn.ModuleList(build(False) for _ in self.spec.roles)

    def _build_critics(self) -> nn.ModuleList:
        c = self.config
        return self._per_role(
            lambda shared: CandidateCritic(self.spec, c.hidden, self.device, role_embedding=shared)
        )

    def actor(self, role: int) -> nn.Module:
        return self.actors[role if len(self.actors) > 1 else 0]

    def critic(self, role: int) -> nn.Module:
        return self.critics[role if len(self.critics) > 1 else 0]

    def scoring_network(self, role: int) -> nn.Module:
        return self.actor(role)

    def state_dict(self) -> dict[str, Any]:
        return {"actors": self.actors.state_dict(), "critics": self.critics.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.actors.load_state_dict(state["actors"])
        self.critics.load_state_dict(state["critics"])

    def _role_algorithm(self, role: str, **kwargs: Any) -> PPO:
        return RolePPO(agent_id=role, **kwargs)

    def _algorithm(self, env: PettingZooEnv) -> CooperativeOnPolicyAlgorithm:
        c = self.config
        action_space = spaces.Discrete(self.spec.layout.n_candidates)
        optim = SharedOptimizerFactory(nn.ModuleList([self.actors, self.critics]), c.lr)
        algorithms = [
            self._role_algorithm(
                role,
                learns=not c.rl_roles or role in c.rl_roles,
                policy=DiscreteActorPolicy(
                    actor=self.actor(r), action_space=action_space, deterministic_eval=True
                ),
                critic=self.critic(r),
                optim=optim,
                eps_clip=c.eps_clip,
                vf_coef=c.vf_coef,
                ent_coef=c.ent_coef,
                max_grad_norm=c.max_grad_norm or None,
                gae_lambda=c.gae_lambda,
                gamma=c.gamma,
            )
            for r, role in enumerate(self.spec.roles)
        ]
        return self.multi_agent_algorithm(algorithms=algorithms, env=env)

    def training_plan(self, env: Environment, run: TrainRun) -> TrainingPlan:
        return TrainingPlan(self._algorithm(multi_agent_env(env, self.name)), off_policy=False)
