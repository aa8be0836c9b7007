"""`idqn`: an independent double DQN per role, trained through Tianshou 2.x's multi-agent path.

Each role learns from its own turn to its own next turn (see `marlrec.agents.marl`), with
n-step returns over its own turns, a target network, optional prioritised replay and optional
parameter sharing (one network for every role, told apart by a learned role embedding).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from tianshou.algorithm.algorithm_base import TrainingStats
from tianshou.algorithm.modelfree.dqn import DiscreteQLearningPolicy
from tianshou.data import (
    Batch,
    PrioritizedReplayBuffer,
    PrioritizedVectorReplayBuffer,
    ReplayBuffer,
    VectorReplayBuffer,
)
from tianshou.env import PettingZooEnv
from torch import nn

from marlrec.agents import Agent, BufferFactory, TrainingPlan, TrainRun
from marlrec.agents.marl import (
    CandidateEncoder,
    CandidateQNet,
    CooperativeOffPolicyAlgorithm,
    SharedOptimizerFactory,
    multi_agent_env,
    own_turn_transitions,
)
from marlrec.envs import Environment, EnvSpec
from marlrec.registry import PluginError
from marlrec.tianshou_compat import HookedDQN


@dataclass(kw_only=True)
class QLearningConfig:
    """Options every DQN-style agent shares; `idqn` and the single-agent `dqn` extend them."""

    hidden: int = 128
    """Width of each candidate-scoring Q-network."""
    lr: float = 1e-4
    """Adam learning rate."""
    gamma: float = 0.8
    """Discount per own turn of a role."""
    n_step: int = 1
    """Own turns whose rewards a target sums before it bootstraps (n-step returns)."""
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

    def __post_init__(self) -> None:
        if self.n_step < 1 or self.hidden < 1:
            raise PluginError("agent.n_step and agent.hidden must be at least 1")
        for name in ("gamma", "eps_start", "eps_end", "eps_decay_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise PluginError(f"agent.{name} must lie in [0, 1], got {getattr(self, name)}")


@dataclass(kw_only=True)
class IDQNConfig(QLearningConfig):
    prioritized: bool = False
    """Prioritised replay: transitions are sampled by the size of their TD error."""
    alpha: float = 0.6
    """Prioritised replay: how strongly TD errors shape sampling (0 would be uniform)."""
    beta: float = 0.4
    """Prioritised replay: importance-sampling correction at the start, annealed to 1."""
    share: bool = False
    """One network for every role, with a learned role embedding (parameter sharing)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha <= 0.0 or not 0.0 <= self.beta <= 1.0:
            raise PluginError(
                f"agent.alpha must be positive and agent.beta in [0, 1], "
                f"got alpha={self.alpha}, beta={self.beta}"
            )


# Q-values of the role's own turns at buffer indices, on the network's device.
TargetQ = Callable[[np.ndarray], torch.Tensor]


def own_turn_returns(
    buffer: ReplayBuffer,
    indices: np.ndarray,
    agent_id: str,
    gamma: float,
    n_step: int,
    target_q: TargetQ,
    device: torch.device,
) -> tuple[torch.Tensor, np.ndarray]:
    """n-step targets along one role's own turns, and which transitions have one.

    G = r_1 + gamma r_2 + ... + gamma^(k-1) r_k + gamma^k Q(s_k): r_i is what the role accrued
    between its (i-1)-th and i-th own turn after the sampled one, and k <= n_step. A target
    follows fewer turns when the session ended (no bootstrap) or when its next turn is not
    collected yet or was cut off by an epoch boundary (it bootstraps from the last turn
    reached). A transition whose very first hop is in that state has no target yet.
    """
    n = len(indices)
    returns, discount = np.zeros(n), np.ones(n)
    current = np.asarray(indices).copy()
    following = np.ones(n, dtype=bool)  # still walking own turns
    bootstrap = np.zeros(n, dtype=bool)
    has_target = np.ones(n, dtype=bool)
    for hop in range(n_step):
        walking = np.flatnonzero(following)
        if not len(walking):
            break
        accrued, next_turn, goes_on, complete = own_turn_transitions(
            buffer, current[walking], agent_id
        )
        ended = ~goes_on & complete
        cut = ended & buffer.truncated[next_turn] & ~buffer.terminated[next_turn]
        usable = complete & ~cut
        stopped = walking[~usable]
        if hop == 0:
            has_target[stopped] = False
        bootstrap[stopped] = hop > 0
        following[stopped] = False
        took = walking[usable]
        returns[took] += discount[took] * accrued[usable]
        discount[took] *= gamma
        following[walking[usable & ended]] = False
        current[walking[usable & goes_on]] = next_turn[usable & goes_on]
    bootstrap |= following
    result = torch.as_tensor(returns, dtype=torch.float32, device=device)
    if bootstrap.any():
        scale = torch.as_tensor(discount[bootstrap], dtype=torch.float32, device=device)
        rows = torch.as_tensor(np.flatnonzero(bootstrap), device=device)
        result[rows] += scale * target_q(current[bootstrap])
    return result, has_target


class RoleDQN(HookedDQN):
    """DQN whose targets follow the role from its turn along its own next turns."""

    def __init__(self, *, agent_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.agent_id = agent_id

    def prepare_batch(self, batch: Batch, buffer: ReplayBuffer, indices: np.ndarray) -> Batch:
        device = next(self.policy.model.parameters()).device
        returns, has_target = own_turn_returns(
            buffer,
            indices,
            self.agent_id,
            self.gamma,
            self.n_step,
            lambda turns: self.own_turn_q(buffer, turns),
            device,
        )
        batch.returns = returns
        batch.has_target = has_target  # prioritised replay leaves the others' priorities be
        # Transitions without a target weigh 0; prioritised replay's weights multiply in.
        weight = torch.as_tensor(has_target, dtype=torch.float32, device=device)
        sampled = torch.as_tensor(batch.get("weight", 1.0), dtype=torch.float32, device=device)
        batch.weight = weight * sampled
        return batch

    def own_turn_q(self, buffer: ReplayBuffer, indices: np.ndarray) -> torch.Tensor:
        """Q of the role's own turns at `indices`, kept on the network's device."""
        obs = buffer.obs[indices]
        model = self.policy.model
        with torch.no_grad():
            # The online and the target network read the same weight-free inputs.
            inputs = model.inputs(obs.obs) if isinstance(model, CandidateEncoder) else obs.obs
            online, _ = model(inputs)
            online = self.policy.compute_q_value(online, obs.mask)
            q = self.model_old(inputs)[0] if self.use_target_network else online
            if self.is_double:
                return q.gather(1, online.argmax(dim=1, keepdim=True)).squeeze(1).float()
            return self.policy.compute_q_value(q, obs.mask).max(dim=1)[0].float()


class CooperativeDQN(CooperativeOffPolicyAlgorithm):
    """The roles' DQNs with prioritised replay made to work across the roles.

    Tianshou's multi-agent algorithm hands priorities back to the buffer from the whole batch,
    which is split by role by then; here each role's TD errors go back to the transitions it
    sampled. `beta` is the importance-sampling exponent, set by the exploration schedule.
    """

    beta: float = 1.0

    def update(self, buffer: ReplayBuffer, sample_size: int | None) -> TrainingStats:
        if isinstance(buffer, PrioritizedReplayBuffer):
            set_beta(buffer, self.beta)
        return super().update(buffer, sample_size)

    def finish_batch(self, batch: Batch, buffer: ReplayBuffer, indices: np.ndarray) -> None:
        if not isinstance(buffer, PrioritizedReplayBuffer):
            return
        agent_ids = buffer.obs.agent_id[indices]
        for agent_id in self.policy.policies:
            part = batch[agent_id]
            if "weight" not in part.get_keys():
                continue
            rows = np.flatnonzero(agent_ids == agent_id)
            # Without a target yet, a transition keeps its priority and is sampled again.
            keep = np.asarray(part.has_target)
            td_error = part.weight.detach().float().abs().cpu().numpy()
            buffer.update_weight(indices[rows[keep]], td_error[keep])


def set_beta(buffer: PrioritizedReplayBuffer, beta: float) -> None:
    """Set the importance-sampling exponent everywhere a prioritised buffer reads it.

    A vector buffer computes the weights itself but `set_beta` only reaches its sub-buffers.
    """
    PrioritizedReplayBuffer.set_beta(buffer, beta)
    for sub in getattr(buffer, "buffers", []):
        sub.set_beta(beta)


class IndependentDQN(Agent):
    Config = IDQNConfig

    def __init__(self, config: IDQNConfig, *, spec: EnvSpec, device: torch.device) -> None:
        super().__init__(config, spec=spec, device=device)
        n_nets = 1 if config.share else len(spec.roles)
        self.nets = torch.nn.ModuleList(
            CandidateQNet(spec, config.hidden, device, role_embedding=config.share)
            for _ in range(n_nets)
        )

    def net(self, role: int) -> CandidateQNet:
        return self.nets[0 if self.config.share else role]

    def scoring_network(self, role: int) -> nn.Module:
        return self.net(role)

    def state_dict(self) -> dict[str, Any]:
        return {"nets": self.nets.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.nets.load_state_dict(state["nets"])

    def _algorithm(self, env: PettingZooEnv) -> CooperativeDQN:
        c = self.config
        action_space = spaces.Discrete(self.spec.layout.n_candidates)
        # One Adam over every network: a shared network (or a trainable state model inside the
        # roles' networks) keeps one set of moment estimates however many roles step it.
        optim = SharedOptimizerFactory(self.nets, c.lr)
        algorithms = [
            RoleDQN(
                agent_id=role,
                policy=DiscreteQLearningPolicy(
                    model=self.net(index), action_space=action_space, eps_training=c.eps_start
                ),
                optim=optim,
                gamma=c.gamma,
                n_step_return_horizon=c.n_step,
                target_update_freq=c.target_update_freq,
                is_double=c.double_q,
            )
            for index, role in enumerate(self.spec.roles)
        ]
        algorithm = CooperativeDQN(algorithms=algorithms, env=env)
        algorithm.beta = c.beta
        return algorithm

    def _buffer(self, seed: int) -> BufferFactory:
        """Targets read each role's own next turns, never `obs_next`: the buffer keeps none,
        which halves its memory and its share of every checkpoint."""

        c = self.config
        if not c.prioritized:
            return lambda size, n: VectorReplayBuffer(
                size, n, ignore_obs_next=True, random_seed=seed
            )
        return lambda size, n: PrioritizedVectorReplayBuffer(
            size, n, alpha=c.alpha, beta=c.beta, ignore_obs_next=True, random_seed=seed
        )

    def training_plan(self, env: Environment, run: TrainRun) -> TrainingPlan:
        algorithm = self._algorithm(multi_agent_env(env, self.name))
        total_steps = run.trainer.max_epochs * run.trainer.epoch_num_env_steps
        policies = [algorithm.get_algorithm(role).policy for role in self.spec.roles]
        c = self.config

        def schedule(epoch: int, env_step: int) -> None:
            """Exploration decays over its share of training; beta anneals to 1 over all of it."""
            progress = min(1.0, env_step / max(1.0, c.eps_decay_fraction * total_steps))
            for policy in policies:
                policy.set_eps_training(c.eps_start + progress * (c.eps_end - c.eps_start))
            algorithm.beta = c.beta + min(1.0, env_step / total_steps) * (1.0 - c.beta)

        return TrainingPlan(
            algorithm,
            off_policy=True,
            training_hook=schedule,
            make_buffer=self._buffer(run.seed),
        )
