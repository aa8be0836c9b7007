"""`idqn`: an independent double DQN per role, trained through Tianshou 2.x's multi-agent path."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from tianshou.algorithm import DQN
from tianshou.algorithm.modelfree.dqn import DiscreteQLearningPolicy
from tianshou.algorithm.optim import AdamOptimizerFactory
from tianshou.data import Batch, Collector, ReplayBuffer, VectorReplayBuffer
from tianshou.env import DummyVectorEnv, PettingZooEnv, SubprocVectorEnv
from tianshou.trainer import OffPolicyTrainerParams
from tianshou.utils import TensorboardLogger

from marlrec.agents import Agent, TrainRun
from marlrec.agents.marl import CandidateQNet, CooperativeOffPolicyAlgorithm, own_turn_transitions
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
        t = run.trainer
        vector_env = SubprocVectorEnv if t.vector_env == "subproc" else DummyVectorEnv
        train_envs = vector_env([lambda: PettingZooEnv(env.make())] * t.num_train_envs)
        test_envs = DummyVectorEnv([lambda: PettingZooEnv(env.make())])
        train_envs.seed(run.seed)
        test_envs.seed(run.seed + 10_000)
        algorithm = self._algorithm(PettingZooEnv(env.make()))
        buffer = VectorReplayBuffer(t.buffer_size, t.num_train_envs)
        train_collector = Collector(algorithm.policy, train_envs, buffer, exploration_noise=True)
        test_collector = Collector(algorithm.policy, test_envs)
        total_steps = t.max_epochs * t.epoch_num_env_steps
        policies = [algorithm.get_algorithm(role).policy for role in self.spec.roles]

        def decay_exploration(epoch: int, env_step: int) -> None:
            c = self.config
            progress = min(1.0, env_step / max(1.0, c.eps_decay_fraction * total_steps))
            for policy in policies:
                policy.set_eps_training(c.eps_start + progress * (c.eps_end - c.eps_start))

        logger = TensorboardLogger(
            run.writer,
            training_interval=run.logger.interval_env_steps,
            update_interval=run.logger.interval_env_steps,
            save_interval=1,
        )
        params = OffPolicyTrainerParams(
            training_collector=train_collector,
            test_collector=test_collector,
            max_epochs=t.max_epochs,
            epoch_num_steps=t.epoch_num_env_steps,
            collection_step_num_env_steps=t.collect_num_env_steps,
            test_step_num_episodes=t.test_episodes,
            batch_size=t.batch_size,
            update_step_num_gradient_steps_per_sample=t.updates_per_env_step,
            training_fn=decay_exploration,
            multi_agent_return_reduction=lambda returns: returns.mean(axis=1),
            save_checkpoint_fn=lambda epoch, env_step, grad_step: run.save_checkpoint(epoch),
            save_best_fn=lambda algorithm: run.save_best(),
            logger=logger,
            verbose=False,
            show_progress=t.show_progress,
        )
        # Tianshou warns on every 2-D (episode x role) return array; the reduction above handles it.
        logging.getLogger("tianshou.data.stats").setLevel(logging.ERROR)
        start = time.perf_counter()
        stats = algorithm.run_training(params)
        seconds = time.perf_counter() - start
        train_envs.close()
        test_envs.close()
        return {
            "train_seconds": seconds,
            "train_env_steps": float(stats.train_step),
            "train_env_steps_per_second": stats.train_step / seconds,
            "best_test_return": float(stats.best_reward),
        }
