"""`marlrec.tianshou_compat` against the pinned Tianshou, and no private access outside it.

Each test checks what marlrec relies on a compat piece for, so that a Tianshou upgrade that
moves a private attribute fails here, by name, rather than somewhere in a training run.
"""

from __future__ import annotations

import ast
import contextlib
import pickle
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from tianshou.algorithm.modelfree.dqn import DiscreteQLearningPolicy
from tianshou.algorithm.optim import AdamOptimizerFactory
from tianshou.data import Batch, Collector, ReplayBuffer, VectorReplayBuffer
from tianshou.env import DummyVectorEnv
from tianshou.trainer import OffPolicyTrainer, OffPolicyTrainerParams
from tianshou.utils.net.common import Net
from tianshou.utils.torch_utils import policy_within_training_step

import marlrec
from marlrec import tianshou_compat as compat
from marlrec.agents.mappo import TeamRewardOnPolicyAlgorithm
from tests.test_ppo import aec_buffer, two_role_algorithm

COMPAT = Path(compat.__file__)


def test_written_against_the_installed_tianshou() -> None:
    assert version("tianshou") == compat.TIANSHOU_VERSION
    assert compat.TIANSHOU_VERSION in (compat.__doc__ or "")


# --- a tiny stock setup: DQN with public hooks on CartPole ---------------------------------------


class CountingDQN(compat.HookedDQN):
    """Counts the batches its public hooks see."""

    prepared = finished = 0

    def prepare_batch(self, batch: Batch, buffer: ReplayBuffer, indices: np.ndarray) -> Batch:
        self.prepared += 1
        return super().prepare_batch(batch, buffer, indices)

    def finish_batch(self, batch: Batch, buffer: ReplayBuffer, indices: np.ndarray) -> None:
        self.finished += 1
        super().finish_batch(batch, buffer, indices)


def cartpole_dqn(seed: int = 0) -> CountingDQN:
    torch.manual_seed(seed)
    env = gym.make("CartPole-v1")
    net = Net(state_shape=4, action_shape=2, hidden_sizes=[8])
    policy = DiscreteQLearningPolicy(model=net, action_space=env.action_space, eps_training=0.5)
    return CountingDQN(policy=policy, optim=AdamOptimizerFactory(lr=1e-3), target_update_freq=2)


class RecordingTrainer(compat.UpdateContextTrainer, OffPolicyTrainer):
    """Counts how often gradient updates ran inside its update context."""

    entered = 0

    @contextlib.contextmanager
    def _count(self) -> Iterator[None]:
        self.entered += 1
        yield

    def update_context(self) -> contextlib.AbstractContextManager[Any]:
        return self._count()


def cartpole_trainer(algorithm: CountingDQN, env_steps: int = 40) -> RecordingTrainer:
    envs = DummyVectorEnv([lambda: gym.make("CartPole-v1")] * 2)
    envs.seed([0, 1])
    collector = Collector(algorithm.policy, envs, VectorReplayBuffer(200, 2), True)
    params = OffPolicyTrainerParams(
        training_collector=collector,
        max_epochs=1,
        epoch_num_steps=env_steps,
        collection_step_num_env_steps=10,
        update_step_num_gradient_steps_per_sample=0.2,
        batch_size=8,
        test_collector=None,
        verbose=False,
        show_progress=False,
    )
    return RecordingTrainer(algorithm, params)


@pytest.fixture(scope="module")
def trained() -> tuple[RecordingTrainer, CountingDQN]:
    algorithm = cartpole_dqn()
    trainer = cartpole_trainer(algorithm)
    trainer.run()
    return trainer, algorithm


# --- trainer -------------------------------------------------------------------------------------


def test_trainer_counters_are_read_and_resumed(trained: tuple) -> None:
    trainer, _ = trained
    counters = compat.trainer_counters(trainer)
    # 4 collect steps of 10 env steps, 2 gradient steps after each.
    assert counters == compat.TrainerCounters(epoch=1, env_step=40, gradient_step=4)
    fresh = cartpole_trainer(cartpole_dqn())
    compat.resume_trainer_counters(fresh, counters)
    assert compat.trainer_counters(fresh) == counters


def test_trainer_statistics_survive_a_checkpoint(trained: tuple) -> None:
    trainer, _ = trained
    statistics = pickle.loads(pickle.dumps(compat.trainer_statistics(trainer)))
    assert set(statistics) == set(compat.TRAINER_STATISTICS)
    assert statistics["_policy_update_time"] > 0.0  # the updates were timed
    fresh = cartpole_trainer(cartpole_dqn())
    compat.restore_trainer_statistics(fresh, statistics)
    assert (
        compat.trainer_statistics(fresh)["_policy_update_time"]
        == (statistics["_policy_update_time"])
    )


def test_a_stopped_trainer_collects_no_more(trained: tuple) -> None:
    trainer = cartpole_trainer(cartpole_dqn())
    trainer.reset()
    compat.stop_training(trainer)
    trainer.execute_epoch()
    assert compat.trainer_counters(trainer).env_step == 0


def test_every_update_step_runs_inside_the_update_context(trained: tuple) -> None:
    trainer, algorithm = trained
    assert trainer.entered == 4  # one update step per collect step
    assert algorithm.prepared == algorithm.finished == 8  # each of its gradient steps


# --- algorithms ----------------------------------------------------------------------------------


def test_optimizer_state_and_update_count_round_trip(trained: tuple) -> None:
    _, algorithm = trained
    states = pickle.loads(pickle.dumps(compat.optimizer_states(algorithm)))
    restored = cartpole_dqn(seed=1)
    compat.load_optimizer_states(restored, states)
    saved = algorithm.optim.state_dict()["state"]
    loaded = restored.optim.state_dict()["state"]
    assert saved and all(torch.equal(saved[k]["exp_avg"], loaded[k]["exp_avg"]) for k in saved)
    assert algorithm.gradient_steps == 8 and restored.gradient_steps == 0


def test_optimizer_state_keys_are_told_from_tensors() -> None:
    keys = list(cartpole_dqn().state_dict())
    optimizer_keys = [k for k in keys if compat.is_optimizer_state_key(k)]
    assert optimizer_keys == ["_optimizers"]
    assert all(
        not compat.is_optimizer_state_key(k) for k in torch.nn.Module.state_dict(cartpole_dqn())
    )


def test_the_team_reward_is_what_returns_accrue_and_the_buffer_keeps_its_own() -> None:
    # Role b earns 2 then 4, role a nothing: the team earns 1 then 2 at b's steps.
    steps = [
        ("a", (0, 0), False, 0.0),
        ("b", (0, 2), False, 0.0),
        ("a", (0, 0), False, 0.0),
        ("b", (0, 4), True, 0.0),
    ]
    buffer = aec_buffer(steps)
    own = buffer.rew.copy()
    team = two_role_algorithm(TeamRewardOnPolicyAlgorithm)
    independent = two_role_algorithm()
    for algorithm in (team, independent):
        with policy_within_training_step(algorithm.policy):
            algorithm.update(buffer, batch_size=None, repeat=1)  # the path the trainer takes
    batch, indices = buffer.sample(0)
    # Zero values: a's first return is 1 + .45 * 2 with the team's rewards, 0 with its own.
    assert team.prepare_batch(batch, buffer, indices)["a"].returns.tolist() == pytest.approx(
        [1 + 0.45 * 2, 2]
    )
    assert independent.prepare_batch(batch, buffer, indices)["a"].returns.tolist() == [0, 0]
    assert np.array_equal(buffer.rew, own)
    assert all(role.accrued_rewards is None for role in team.roles())


# --- replay buffers ------------------------------------------------------------------------------


def _step(reward: float, terminated: bool) -> Batch:
    return Batch(
        obs=np.zeros((1, 2)),
        act=np.zeros(1, int),
        rew=np.array([reward]),
        terminated=np.array([terminated]),
        truncated=np.array([False]),
        obs_next=np.zeros((1, 2)),
        info=np.array([{}], dtype=object),
    )


def test_restarted_episode_statistics_count_from_the_next_step() -> None:
    buffer = VectorReplayBuffer(20, 2)
    for reward in (1.0, 2.0):
        buffer.add(_step(reward, False), buffer_ids=[0])
    compat.restart_episode_statistics(buffer)
    _, returns, lengths, starts = buffer.add(_step(4.0, True), buffer_ids=[0])
    assert returns[0] == 4.0 and lengths[0] == 1 and starts[0] == 2


def test_a_relinked_buffer_shares_its_storage_with_its_sub_buffers() -> None:
    buffer = VectorReplayBuffer(20, 2)
    buffer.add(_step(1.0, False), buffer_ids=[0])
    copy = compat.relink_buffer(pickle.loads(pickle.dumps(buffer)))
    copy.add(_step(7.0, True), buffer_ids=[0])
    assert copy.buffers[0].rew[1] == 7.0  # the sub-buffer sees what the vector buffer stored
    assert compat.relink_buffer(VectorReplayBuffer(4, 2)) is not None  # empty: nothing to do


# --- nothing else reaches into private attributes ------------------------------------------------


def private_accesses(source: str) -> list[str]:
    """`obj._name` where obj is not `self` or `cls` (dunders are public protocol)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        name = node.attr
        if not name.startswith("_") or (name.startswith("__") and name.endswith("__")):
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        found.append(f"{ast.unparse(node)} (line {node.lineno})")
    return found


def test_the_scan_finds_private_access() -> None:
    source = "buffer._meta.rew = team\nsuper()._preprocess_batch(b)\nself._x = o.__class__"
    assert private_accesses(source) == [
        "buffer._meta (line 1)",
        "super()._preprocess_batch (line 2)",
    ]


def test_only_the_compat_module_touches_private_attributes() -> None:
    root = Path(marlrec.__file__).parent
    offenders = {
        str(path.relative_to(root)): hits
        for path in sorted(root.rglob("*.py"))
        if path != COMPAT and (hits := private_accesses(path.read_text()))
    }
    assert offenders == {}
