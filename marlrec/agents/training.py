"""The Tianshou training loop every agent shares: env copies, collectors, trainer, logging."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from tianshou.algorithm.algorithm_base import Algorithm
from tianshou.data import Collector, VectorReplayBuffer
from tianshou.env import BaseVectorEnv, DummyVectorEnv, PettingZooEnv, SubprocVectorEnv
from tianshou.trainer import OffPolicyTrainerParams, OnPolicyTrainerParams
from tianshou.utils import TensorboardLogger

from marlrec.envs import Environment
from marlrec.settings import TrainRun

# Called by the trainer before each collect step with (epoch, env_step), e.g. to decay exploration.
TrainingHook = Callable[[int, int], None]


def tianshou_env(env: Environment) -> Any:
    """One env copy as Tianshou steps it: AEC envs through `PettingZooEnv`, gymnasium ones as is."""
    made = env.make()
    return PettingZooEnv(made) if hasattr(made, "agent_iter") else made


def vector_envs(env: Environment, run: TrainRun) -> tuple[BaseVectorEnv, BaseVectorEnv]:
    """Seeded training and test env copies."""
    t = run.trainer
    vector_env = SubprocVectorEnv if t.vector_env == "subproc" else DummyVectorEnv
    train_envs = vector_env([lambda: tianshou_env(env)] * t.num_train_envs)
    test_envs = DummyVectorEnv([lambda: tianshou_env(env)])
    train_envs.seed(run.seed)
    test_envs.seed(run.seed + 10_000)
    return train_envs, test_envs


def train_with_tianshou(
    algorithm: Algorithm,
    env: Environment,
    run: TrainRun,
    *,
    off_policy: bool,
    training_hook: TrainingHook | None = None,
) -> dict[str, float]:
    """Collect from env copies and update `algorithm` for the run's epochs; summary figures."""
    t = run.trainer
    train_envs, test_envs = vector_envs(env, run)
    buffer = VectorReplayBuffer(t.buffer_size, t.num_train_envs)
    train_collector = Collector(algorithm.policy, train_envs, buffer, exploration_noise=True)
    test_collector = Collector(algorithm.policy, test_envs)
    logger = TensorboardLogger(
        run.writer,
        training_interval=run.logger.interval_env_steps,
        update_interval=run.logger.interval_env_steps,
        save_interval=1,
    )
    common: dict[str, Any] = dict(
        training_collector=train_collector,
        test_collector=test_collector,
        max_epochs=t.max_epochs,
        epoch_num_steps=t.epoch_num_env_steps,
        collection_step_num_env_steps=t.collect_num_env_steps,
        test_step_num_episodes=t.test_episodes,
        batch_size=t.batch_size,
        training_fn=training_hook,
        multi_agent_return_reduction=lambda returns: returns.mean(axis=1),
        save_checkpoint_fn=lambda epoch, env_step, grad_step: run.save_checkpoint(epoch),
        save_best_fn=lambda algorithm: run.save_best(),
        logger=logger,
        verbose=False,
        show_progress=t.show_progress,
    )
    if off_policy:
        params: Any = OffPolicyTrainerParams(
            update_step_num_gradient_steps_per_sample=t.updates_per_env_step, **common
        )
    else:
        params = OnPolicyTrainerParams(update_step_num_repetitions=t.update_repetitions, **common)
    # Tianshou warns on every 2-D (episode x role) return array; the reduction above handles it.
    logging.getLogger("tianshou.data.stats").setLevel(logging.ERROR)
    start = time.perf_counter()
    try:
        stats = algorithm.run_training(params)
    finally:
        train_envs.close()
        test_envs.close()
    seconds = time.perf_counter() - start
    return {
        "train_seconds": seconds,
        "train_env_steps": float(stats.train_step),
        "train_env_steps_per_second": stats.train_step / seconds,
        "best_test_return": float(stats.best_reward),
    }
