"""Every contact marlrec has with Tianshou's private API, in one module.

Written against Tianshou 2.0.1 (the `tianshou==2.0.1` pin in pyproject.toml). Tianshou keeps
its trainer's counters, its algorithms' optimisers, its buffers' storage and running-episode
statistics in underscore attributes, and its algorithms' extension points are underscore
methods; marlrec needs all of these. They are reached here only, by short functions and by
base classes that turn each underscore extension point into a public method, so that a
Tianshou upgrade is checked and fixed in this one file (`tests/test_tianshou_compat.py`
exercises each piece against the pinned version, and fails if any other module of marlrec
reaches into a private attribute).

The module sits below `marlrec.agents` and `marlrec.training` (both use it) and imports
nothing from marlrec.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
from tianshou.algorithm import DQN, PPO
from tianshou.algorithm.algorithm_base import Algorithm
from tianshou.algorithm.multiagent.marl import (
    MultiAgentOffPolicyAlgorithm,
    MultiAgentOnPolicyAlgorithm,
)
from tianshou.data import Batch, ReplayBuffer, ReplayBufferManager

TIANSHOU_VERSION = "2.0.1"

# The trainer's statistics a resumed run must continue from (Tianshou's `Trainer.__init__`
# and `OnlineTrainer.__init__` name them; `_stat` holds the moving averages of the losses).
TRAINER_STATISTICS = (
    "_best_score",
    "_best_reward",
    "_best_reward_std",
    "_best_epoch",
    "_policy_update_time",
    "_env_episode",
    "_stat",
)


# ---------------------------------------------------------------------------------------------
# Trainer


@dataclass(frozen=True)
class TrainerCounters:
    epoch: int
    env_step: int
    gradient_step: int


def trainer_counters(trainer: Any) -> TrainerCounters:
    """The epoch, env step and update step a Tianshou trainer has reached."""
    return TrainerCounters(trainer._epoch, trainer._env_step, trainer._current_update_step)


def resume_trainer_counters(trainer: Any, counters: TrainerCounters) -> None:
    """Continue a trainer from saved counters, as Tianshou's `resume_from_log` reset does."""
    trainer._start_epoch = trainer._epoch = counters.epoch
    trainer._env_step = counters.env_step
    trainer._current_update_step = counters.gradient_step
    trainer._start_time = time.time()


def trainer_statistics(trainer: Any) -> dict[str, Any]:
    """The best test result so far, update time, episode count and moving averages."""
    return {key: getattr(trainer, key) for key in TRAINER_STATISTICS if hasattr(trainer, key)}


def restore_trainer_statistics(trainer: Any, statistics: dict[str, Any]) -> None:
    for key, value in statistics.items():
        setattr(trainer, key, value)


def stop_training(trainer: Any, stop: bool = True) -> None:
    """Make the trainer stop (or not) after the current epoch, as its `stop_fn` would."""
    trainer._stop_fn_flag = stop


class UpdateContextTrainer:
    """A trainer mixin (listed before the Tianshou trainer class) whose gradient updates run
    inside `update_context()`, e.g. under autocast, while collection and tests stay outside;
    `after_update()` runs after each update step, outside that context."""

    def update_context(self) -> AbstractContextManager[Any]:
        return nullcontext()

    def after_update(self) -> None:
        """Work between two update steps (e.g. auxiliary imitation); nothing by default."""

    def _update_step(self, collect_stats: Any) -> Any:
        with self.update_context():
            stats = super()._update_step(collect_stats)  # type: ignore[misc]
        self.after_update()
        return stats


# ---------------------------------------------------------------------------------------------
# Algorithms: optimiser state


def optimizer_states(algorithm: Algorithm) -> list[dict[str, Any]]:
    """The state of each optimiser the algorithm itself created (not its members')."""
    return [optim.state_dict() for optim in algorithm._optimizers]


def load_optimizer_states(algorithm: Algorithm, states: list[dict[str, Any]]) -> None:
    for optim, state in zip(algorithm._optimizers, states, strict=True):
        optim.load_state_dict(state)


def is_optimizer_state_key(key: str) -> bool:
    """Whether a key of `Algorithm.state_dict()` holds optimiser states rather than a tensor."""
    return key.rsplit(".", 1)[-1] == Algorithm._STATE_DICT_KEY_OPTIMIZERS


# ---------------------------------------------------------------------------------------------
# Algorithms: public names for Tianshou's underscore extension points


class BatchHooks:
    """An algorithm mixin (listed before the Tianshou algorithm class) that exposes the
    batch pre- and post-processing around each update as `prepare_batch` / `finish_batch`."""

    def prepare_batch(self, batch: Batch, buffer: ReplayBuffer, indices: np.ndarray) -> Batch:
        """Tianshou's own pre-processing (e.g. returns and advantages); override to extend."""
        return super()._preprocess_batch(batch, buffer, indices)  # type: ignore[misc]

    def finish_batch(self, batch: Batch, buffer: ReplayBuffer, indices: np.ndarray) -> None:
        """Tianshou's own post-processing (priority updates); override to replace."""
        super()._postprocess_batch(batch, buffer, indices)  # type: ignore[misc]

    def _preprocess_batch(self, batch: Batch, buffer: ReplayBuffer, indices: np.ndarray) -> Batch:
        return self.prepare_batch(batch, buffer, indices)

    def _postprocess_batch(self, batch: Batch, buffer: ReplayBuffer, indices: np.ndarray) -> None:
        self.finish_batch(batch, buffer, indices)


class HookedDQN(BatchHooks, DQN):
    """Tianshou's DQN with public batch hooks and its update counter readable."""

    @property
    def gradient_steps(self) -> int:
        """Updates taken so far; the target network syncs every `target_update_freq`."""
        return int(self._iter)


class HookedPPO(BatchHooks, PPO):
    """Tianshou's PPO with public batch hooks; `add_returns_and_advantages` replaces GAE."""

    def add_returns_and_advantages(
        self, batch: Batch, buffer: ReplayBuffer, indices: np.ndarray
    ) -> Batch:
        return super()._add_returns_and_advantages(batch, buffer, indices)

    def _add_returns_and_advantages(
        self, batch: Batch, buffer: ReplayBuffer, indices: np.ndarray
    ) -> Batch:
        return self.add_returns_and_advantages(batch, buffer, indices)


class HookedMultiAgentOffPolicyAlgorithm(BatchHooks, MultiAgentOffPolicyAlgorithm):
    """Tianshou's multi-agent off-policy algorithm with public batch hooks."""


class HookedMultiAgentOnPolicyAlgorithm(BatchHooks, MultiAgentOnPolicyAlgorithm):
    """Tianshou's multi-agent on-policy algorithm with public batch hooks."""


# ---------------------------------------------------------------------------------------------
# Replay buffers


def restart_episode_statistics(buffer: ReplayBuffer) -> None:
    """Start each sub-buffer's running episode afresh (return, length and start index), as
    after a finished episode, without touching the stored transitions."""
    for sub in getattr(buffer, "buffers", [buffer]):
        sub._ep_return, sub._ep_len, sub._ep_start_idx = 0.0, 0, sub._insertion_idx


def relink_buffer(buffer: ReplayBuffer) -> ReplayBuffer:
    """After unpickling, point a vector buffer's sub-buffers at its storage again (pickling
    copies each sub-buffer's view of the shared storage into a storage of its own)."""
    if isinstance(buffer, ReplayBufferManager) and buffer._meta.get_keys():
        buffer.set_batch(buffer._meta)
    return buffer
