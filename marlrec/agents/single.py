"""`dqn` and `ppo`: one agent fills the whole slate on the `single` env (the single-agent ablation).

Plain Tianshou DQN and PPO with the same candidate-scoring networks as the multi-agent agents.
With one agent, each step's next observation is its own next turn, so Tianshou's own targets
and advantages apply as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import torch
from gymnasium import spaces
from tianshou.algorithm import DQN, PPO
from tianshou.algorithm.modelfree.dqn import DiscreteQLearningPolicy
from tianshou.algorithm.modelfree.reinforce import DiscreteActorPolicy
from tianshou.algorithm.optim import AdamOptimizerFactory
from torch import nn

from marlrec.agents import Agent, TrainingPlan, TrainRun
from marlrec.agents.idqn import QLearningConfig
from marlrec.agents.marl import CandidateActor, CandidateCritic, CandidateQNet
from marlrec.agents.ppo import ActorCriticConfig
from marlrec.envs import Environment, EnvSpec
from marlrec.registry import PluginError


@dataclass(kw_only=True)
class DQNConfig(QLearningConfig):
    gamma: float = 0.9
    """Discount per slot filled (0.9 over four slots discounts a slate as 0.8 over a role's two
    turns does in the two-role `slate` env)."""
    direct_scores: bool = True
    """Add a direct linear term over the retrieval score and popularity to the Q-values."""


@dataclass(kw_only=True)
class SinglePPOConfig(ActorCriticConfig):
    gamma: float = 0.9
    """Discount per slot filled (0.9 over four slots discounts a slate as 0.8 over a role's two
    turns does in the two-role `slate` env)."""


def single_agent_env(env: Environment, agent: str) -> gym.Env:
    """One copy of `env` as Tianshou steps it; multi-agent envs are refused."""
    made = env.make()
    if hasattr(made, "agent_iter"):
        raise PluginError(
            f"agent '{agent}' is single-agent and needs env=single, but this env's roles "
            f"{list(env.spec.roles)} take turns: use agent=idqn, ippo or mappo"
        )
    return made


class SingleAgent(Agent):
    """What `dqn` and `ppo` share: one role, one network that scores candidates."""

    def __init__(self, config: Any, *, spec: EnvSpec, device: torch.device) -> None:
        super().__init__(config, spec=spec, device=device)
        if len(spec.roles) != 1:
            raise PluginError(
                f"agent '{self.name}' is single-agent and needs env=single, but the env has "
                f"{len(spec.roles)} roles {list(spec.roles)}: use agent=idqn, ippo or mappo"
            )
        self.action_space = spaces.Discrete(spec.layout.n_candidates)


class SingleDQN(SingleAgent):
    """Double DQN with a target network over the dueling candidate-scoring network."""

    Config = DQNConfig

    def __init__(self, config: DQNConfig, *, spec: EnvSpec, device: torch.device) -> None:
        super().__init__(config, spec=spec, device=device)
        self.net = CandidateQNet(spec, config.hidden, device, direct_scores=config.direct_scores)

    def scoring_network(self, role: int) -> nn.Module:
        return self.net

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])

    def _algorithm(self) -> DQN:
        c = self.config
        return DQN(
            policy=DiscreteQLearningPolicy(
                model=self.net, action_space=self.action_space, eps_training=c.eps_start
            ),
            optim=AdamOptimizerFactory(lr=c.lr),
            gamma=c.gamma,
            n_step_return_horizon=c.n_step,
            target_update_freq=c.target_update_freq,
            is_double=c.double_q,
        )

    def training_plan(self, env: Environment, run: TrainRun) -> TrainingPlan:
        single_agent_env(env, self.name)
        algorithm = self._algorithm()
        total_steps = run.trainer.max_epochs * run.trainer.epoch_num_env_steps
        c = self.config

        def decay_exploration(epoch: int, env_step: int) -> None:
            progress = min(1.0, env_step / max(1.0, c.eps_decay_fraction * total_steps))
            algorithm.policy.set_eps_training(c.eps_start + progress * (c.eps_end - c.eps_start))

        return TrainingPlan(algorithm, off_policy=True, training_hook=decay_exploration)


class SinglePPO(SingleAgent):
    """PPO with the masked candidate actor and a critic; samples in training, argmax otherwise."""

    Config = SinglePPOConfig

    def __init__(self, config: SinglePPOConfig, *, spec: EnvSpec, device: torch.device) -> None:
        super().__init__(config, spec=spec, device=device)
        self.actor = CandidateActor(spec, config.hidden, device)
        self.critic = CandidateCritic(spec, config.hidden, device)

    def scoring_network(self, role: int) -> nn.Module:
        return self.actor

    def state_dict(self) -> dict[str, Any]:
        return {"actor": self.actor.state_dict(), "critic": self.critic.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])

    def _algorithm(self) -> PPO:
        c = self.config
        return PPO(
            policy=DiscreteActorPolicy(
                actor=self.actor, action_space=self.action_space, deterministic_eval=True
            ),
            critic=self.critic,
            optim=AdamOptimizerFactory(lr=c.lr),
            eps_clip=c.eps_clip,
            vf_coef=c.vf_coef,
            ent_coef=c.ent_coef,
            max_grad_norm=c.max_grad_norm or None,
            gae_lambda=c.gae_lambda,
            gamma=c.gamma,
        )

    def training_plan(self, env: Environment, run: TrainRun) -> TrainingPlan:
        single_agent_env(env, self.name)
        return TrainingPlan(self._algorithm(), off_policy=False)
