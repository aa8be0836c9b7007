"""Env copies as Tianshou steps them, and the vector envs that hold them."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from pettingzoo import AECEnv
from tianshou.data import ReplayBuffer, VectorReplayBuffer
from tianshou.data.collector import DEFAULT_BUFFER_MAXSIZE
from tianshou.env import (
    BaseVectorEnv,
    DummyVectorEnv,
    PettingZooEnv,
    RayVectorEnv,
    SubprocVectorEnv,
)

from marlrec.agents import BufferFactory
from marlrec.envs import Environment
from marlrec.registry import MarlrecError
from marlrec.settings import TrainerConfig, TrainRun
from marlrec.tianshou_compat import restart_episode_statistics

TRAIN_STREAM, TEST_STREAM = 0, 1


class MarlrecPettingZooEnv(PettingZooEnv, gym.Env):
    """Tianshou's PettingZoo wrapper, also a gymnasium Env, that tallies the reward terms.

    Being a `gym.Env` lets `RayVectorEnv` wrap it under gymnasium 1.x. An env publishes a
    scored slate's terms as one `info["reward_terms"]` dict, shared by the agents' infos; each
    such dict is counted once into `reward_term_totals` and `scored_slates`, which the loop
    reads through the vector env at logging points, away from the stepping hot loop.
    """

    def __init__(self, env: AECEnv) -> None:
        self.reward_term_totals: dict[str, float] = {}
        self.scored_slates = 0
        self._counted: Any = None
        super().__init__(env)

    def step(self, action: Any) -> tuple[dict, list[int], bool, bool, dict]:
        obs, rewards, terminated, truncated, info = super().step(action)
        terms = info.get("reward_terms") if isinstance(info, dict) else None
        if terms is not None and terms is not self._counted:
            self._counted = terms  # kept alive, so a later dict cannot reuse its identity
            self.scored_slates += 1
            for name, value in terms.items():
                total = self.reward_term_totals.get(name, 0.0)
                self.reward_term_totals[name] = total + float(value)
        return obs, rewards, terminated, truncated, info


def tianshou_env(env: Environment) -> Any:
    """One env copy as Tianshou steps it: AEC envs wrapped for Tianshou, gymnasium ones as is."""
    made = env.make()
    return MarlrecPettingZooEnv(made) if hasattr(made, "agent_iter") else made


@dataclass(frozen=True)
class EnvCopies:
    """A picklable factory of env copies, for subprocess and Ray workers."""

    env: Environment

    def __call__(self) -> Any:
        return tianshou_env(self.env)


def vector_envs(env: Environment, run: TrainRun) -> tuple[BaseVectorEnv, BaseVectorEnv]:
    """Training env copies of the configured kind, and the test copies (`session_vector_env`)."""
    copies = EnvCopies(env)
    t = run.trainer
    return train_vector_env(env, copies, t), session_vector_env(env, copies, t.test_episodes)


def session_vector_env(env: Environment, copies: EnvCopies, n: int) -> BaseVectorEnv:
    """One in-process env copy per test session, stepped together (batched where the env can).

    With as many copies as episodes, Tianshou's collector plays exactly one session on each
    copy: no copy is favoured for ending its sessions sooner, and the test step's sessions are
    those of the copies' seeds (`epoch_seeds`), whatever the copies' session lengths.
    """
    make_vector = getattr(env, "make_vector", None)
    return DummyVectorEnv([copies] * n) if make_vector is None else make_vector(n)


def session_buffer(env: Environment, n: int) -> VectorReplayBuffer:
    """Room for one session per test copy: a collector's default buffer holds 10,000 steps
    per copy, which would fill memory with observations that are never read."""
    steps = env.session_steps
    per_copy = steps if steps is not None else max(1, DEFAULT_BUFFER_MAXSIZE // n)
    return VectorReplayBuffer(per_copy * n, n)


def train_vector_env(env: Environment, copies: EnvCopies, t: TrainerConfig) -> BaseVectorEnv:
    n = t.num_train_envs
    if t.vector_env == "subproc":
        # Spawned workers rebuild the env from its pickle. Forking a process whose torch thread
        # pools are running can deadlock the child, and forked workers cannot use CUDA.
        return SubprocVectorEnv([copies] * n, context="spawn")
    if t.vector_env == "ray":
        if importlib.util.find_spec("ray") is None:
            raise MarlrecError(
                "trainer.vector_env=ray needs Ray, which is not installed: "
                "pip install 'marlrec[ray]' (or use trainer.vector_env=subproc)"
            )
        return RayVectorEnv([copies] * n)
    if t.vector_env == "batched":
        make_vector = getattr(env, "make_vector", None)
        if make_vector is None:
            raise MarlrecError(
                f"trainer.vector_env=batched needs an env with make_vector(num_envs), but "
                f"{type(env).__name__} has none: use trainer.vector_env=dummy or subproc"
            )
        return make_vector(n)
    return DummyVectorEnv([copies] * n)


def epoch_seeds(seed: int, epoch: int, stream: int, n: int) -> list[int]:
    """Seeds for n env copies at an epoch, independent across epochs and streams."""
    return [int(s) for s in np.random.SeedSequence([seed, stream, epoch]).generate_state(n)]


def close_open_episodes(buffer: ReplayBuffer) -> None:
    """Mark every env copy's unfinished session in the buffer as truncated.

    Called before the env copies start new sessions in mid-session, so that no transition links
    the old session to the new one and the next episode's return starts from zero.
    """
    subbuffers = list(getattr(buffer, "buffers", [buffer]))
    for sub, last in zip(subbuffers, buffer.last_index, strict=True):
        if len(sub) and not buffer.done[last]:
            for key in ("truncated", "done"):
                buffer.set_array_at_key(np.array([True]), key, index=np.array([last]))
    restart_episode_statistics(buffer)


def default_buffer(seed: int) -> BufferFactory:
    return lambda size, n: VectorReplayBuffer(size, n, random_seed=seed)
