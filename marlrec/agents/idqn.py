"""`idqn`: an independent double DQN per role, trained through Tianshou 2.x's multi-agent path."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from tianshou.algorithm import DQN
from tianshou.algorithm.modelfree.dqn import DiscreteQLearningPolicy
from tianshou.algorithm.optim import AdamOptimizerFactory
from tianshou.data import Batch, ReplayBuffer
from tianshou.env import PettingZooEnv

from marlrec.agents import Agent, TrainRun
from marlrec.agents.marl import CandidateQNet, CooperativeOffPolicyAlgorithm, own_turn_transitions
from marlrec.agents.training import tianshou_env, train_with_tianshou
from marlrec.envs import Environment, EnvSpec


@dataclass(kw_only=True)
class IDQNConfig:
    hidden: int = 128
    """Width of each role's candidate-scoring network."""
    lr: float = 1e-3
    """Adam learning rate."""
    gamma: float = 0.8
    """Discount per own turn of a role."""
    target_update_freq: int = 200
    """Gradient steps between target-network syncs (0 disables the target network)."""
    double_q: bool = True
    """Double Q-learning: the online network picks, the target network evaluates."""
    eps_start: float = 1.0
    """Exploration rate at the start of training."""
    eps_end: float = 0.05
    """Exploration rate after the decay."""
    eps_decay_fraction: float = 0.5
    """Share of all training env steps over which exploration decays linearly."""


class RoleDQN(DQN):
    """DQN whose targets follow the role from its turn to its own next turn."""

    def __init__(self, *, agent_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.agent_id = agent_id

    def _preprocess_batch(self, batch: Batch, buffer: ReplayBuffer, indices: np.ndarray) -> Batch:
        accrued, next_turn, bootstrap, complete = own_turn_transitions(
            buffer, indices, self.agent_id
        )
        target = np.zeros(len(indices), dtype=np.float64)
        if bootstrap.any():
            target[bootstrap] = self._target_q(buffer, next_turn[bootstrap]).cpu().numpy()
        batch.returns = torch.as_tensor(accrued + self.gamma * target, dtype=torch.float32)
        # Transitions whose next own turn is not collected yet carry no target: weight 0.
        weight = torch.as_tensor(complete, dtype=torch.float32)
        batch.weight = weight * torch.as_tensor(batch.get("weight", 1.0), dtype=torch.float32)
        return batch

    def _target_q(self, buffer: ReplayBuffer, indices: np.ndarray) -> torch.Tensor:
        obs = Batch(obs=buffer.obs[indices], info=[None] * len(indices))
        with torch.no_grad():
            online = self.policy(obs)
            if self.use_target_network:
                q = self.policy(obs, model=self.model_old).logits
            else:
                q = online.logits
            if self.is_double:
                return q[np.arange(len(indices)), online.act]
            return self.policy.compute_q_value(q, obs.obs.mask).max(dim=1)[0]


class IndependentDQN(Agent):
    Config = IDQNConfig

    def __init__(self, config: IDQNConfig, *, spec: EnvSpec, device: torch.device) -> None:
        super().__init__(config, spec=spec, device=device)
        self.nets = torch.nn.ModuleList(
            CandidateQNet(spec, config.hidden, device) for _ in spec.roles
        )

    def candidate_scores(self, obs: torch.Tensor, role: int) -> torch.Tensor:
        with torch.no_grad():
            return self.nets[role](obs)[0]

    def state_dict(self) -> dict[str, Any]:
        return {"nets": self.nets.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.nets.load_state_dict(state["nets"])

    def _algorithm(self, env: PettingZooEnv) -> CooperativeOffPolicyAlgorithm:
        c = self.config
        action_space = spaces.Discrete(self.spec.layout.n_candidates)
        algorithms = [
            RoleDQN(
                agent_id=role,
                policy=DiscreteQLearningPolicy(
                    model=net, action_space=action_space, eps_training=c.eps_start
                ),
                optim=AdamOptimizerFactory(lr=c.lr),
                gamma=c.gamma,
                target_update_freq=c.target_update_freq,
                is_double=c.double_q,
            )
            for role, net in zip(self.spec.roles, self.nets, strict=True)
        ]
        return CooperativeOffPolicyAlgorithm(algorithms=algorithms, env=env)

    def fit(self, env: Environment, run: TrainRun) -> dict[str, float]:
        algorithm = self._algorithm(tianshou_env(env))
        total_steps = run.trainer.max_epochs * run.trainer.epoch_num_env_steps
        policies = [algorithm.get_algorithm(role).policy for role in self.spec.roles]

        def decay_exploration(epoch: int, env_step: int) -> None:
            c = self.config
            progress = min(1.0, env_step / max(1.0, c.eps_decay_fraction * total_steps))
            for policy in policies:
                policy.set_eps_training(c.eps_start + progress * (c.eps_end - c.eps_start))

        return train_with_tianshou(
            algorithm, env, run, off_policy=True, training_hook=decay_exploration
        )
