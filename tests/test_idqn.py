"""IDQN: n-step targets along a role's own turns, prioritised replay and parameter sharing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tianshou.data import Batch, Collector, PrioritizedVectorReplayBuffer, ReplayBuffer
from tianshou.env import DummyVectorEnv
from tianshou.utils.torch_utils import policy_within_training_step
from torch.utils.tensorboard import SummaryWriter

from marlrec.agents.idqn import IDQNConfig, IndependentDQN, own_turn_returns
from marlrec.pipeline import Pipeline
from marlrec.registry import PluginError
from marlrec.settings import LoggerConfig, TrainerConfig, TrainRun
from marlrec.training.loop import fit
from marlrec.training.vector_envs import EnvCopies, tianshou_env

CPU = torch.device("cpu")


def _buffer(steps: list[tuple[str, float, bool, bool]]) -> ReplayBuffer:
    """Steps of (acting role, this role's reward column, terminated, truncated) in AEC order."""
    buffer = ReplayBuffer(size=32)
    for agent, reward, terminated, truncated in steps:
        obs = Batch(agent_id=np.array(agent, dtype=object), obs=np.zeros(2), mask=np.ones(2, bool))
        buffer.add(
            Batch(
                obs=obs,
                act=0,
                rew=reward,
                terminated=terminated,
                truncated=truncated,
                obs_next=obs,
                info={},
            )
        )
    return buffer


def _q_of_index(turns: np.ndarray) -> torch.Tensor:
    """A stand-in Q: 10 + the buffer index, so each target shows where it bootstrapped."""
    return torch.as_tensor(10.0 + turns, dtype=torch.float32)


# Two roles fill two-slot slates; each slate's reward lands on role b's completing step.
SESSIONS = [
    ("a", 0, False, False),
    ("b", 1, False, False),
    ("a", 0, False, False),
    ("b", 2, False, False),
    ("a", 0, False, False),
    ("b", 3, True, False),  # the first session ends
    ("a", 0, False, False),
    ("b", 4, False, False),
    ("a", 0, False, False),  # the newest step: its next own turn is not collected yet
]


@pytest.mark.parametrize(
    ("n_step", "expected"),
    [
        # 1 + 0.5 Q(2); 4 + 0.5 Q(8)
        (1, [1 + 0.5 * 12, 4 + 0.5 * 18]),
        # 1 + 0.5 * 2 + 0.25 Q(4); the second has no turn after index 8 yet: bootstraps there
        (2, [1 + 0.5 * 2 + 0.25 * 14, 4 + 0.5 * 18]),
        # the session ends before a third own turn: no bootstrap at all
        (3, [1 + 0.5 * 2 + 0.25 * 3, 4 + 0.5 * 18]),
    ],
)
def test_n_step_targets_follow_the_roles_own_turns(n_step: int, expected: list[float]) -> None:
    returns, has_target = own_turn_returns(
        _buffer(SESSIONS), np.array([0, 6, 8]), "a", 0.5, n_step, _q_of_index, CPU
    )
    assert returns[:2].tolist() == pytest.approx(expected)
    assert has_target.tolist() == [True, True, False]


def test_targets_stop_where_an_epoch_boundary_cut_the_session() -> None:
    cut = [
        ("a", 0, False, False),
        ("b", 1, False, False),
        ("a", 0, False, False),
        ("b", 2, False, True),  # truncated: the env copies restarted here
        ("a", 0, False, False),
        ("b", 5, True, False),
    ]
    returns, has_target = own_turn_returns(
        _buffer(cut), np.array([0, 2, 4]), "a", 0.5, 3, _q_of_index, CPU
    )
    # From 0: one hop, then the cut: bootstrap from the turn at 2. From 2: nothing to learn.
    assert returns[[0, 2]].tolist() == pytest.approx([1 + 0.5 * 12, 5.0])
    assert has_target.tolist() == [True, False, True]


def test_role_b_n_step_targets() -> None:
    returns, has_target = own_turn_returns(
        _buffer(SESSIONS), np.array([1, 3, 7]), "b", 0.5, 2, _q_of_index, CPU
    )
    # b's turns are 1, 3 and 5, where the session ends: from 1, two hops reach the turn at 5
    # and bootstrap there; from 3, the second hop ends the session.
    assert returns[:2].tolist() == pytest.approx([1 + 0.5 * 2 + 0.25 * 15, 2 + 0.5 * 3])
    assert has_target.tolist() == [True, True, False]


@pytest.mark.parametrize(
    "bad", [{"n_step": 0}, {"gamma": 1.5}, {"alpha": 0.0}, {"beta": 2.0}, {"hidden": 0}]
)
def test_config_mistakes_are_one_line_plugin_errors(bad: dict[str, float]) -> None:
    with pytest.raises(PluginError, match="agent\\."):
        IDQNConfig(**bad)  # type: ignore[arg-type]


def test_shared_network_serves_every_role(small_pipeline: Pipeline) -> None:
    env = small_pipeline.env
    agent = IndependentDQN(IDQNConfig(hidden=16, share=True), spec=env.spec, device=CPU)
    assert len(agent.nets) == 1 and agent.nets[0].role_embedding is not None
    algorithm = agent._algorithm(tianshou_env(env))
    models = {id(algorithm.get_algorithm(r).policy.model) for r in env.spec.roles}
    assert models == {id(agent.nets[0])}
    aec = env.make()
    aec.reset(seed=3)
    obs = torch.as_tensor(aec.observe(aec.agent_selection)["observation"])[None]
    first, second = agent.candidate_scores(obs, 0), agent.candidate_scores(obs, 1)
    assert first.shape == second.shape == (1, env.spec.layout.n_candidates)


def test_prioritised_replay_updates_each_roles_sampled_priorities(
    small_pipeline: Pipeline,
) -> None:
    env = small_pipeline.env
    agent = IndependentDQN(IDQNConfig(hidden=16, prioritized=True), spec=env.spec, device=CPU)
    algorithm = agent._algorithm(tianshou_env(env))
    buffer = PrioritizedVectorReplayBuffer(200, 2, alpha=0.6, beta=0.4)
    envs = DummyVectorEnv([EnvCopies(env)] * 2)
    collector = Collector(algorithm.policy, envs, buffer, exploration_noise=True)
    collector.reset()
    with policy_within_training_step(algorithm.policy):
        collector.collect(n_step=60)
        before = buffer.weight[np.arange(buffer.maxsize)].copy()
        algorithm.beta = 0.7
        algorithm.update(buffer, sample_size=32)
    after = buffer.weight[np.arange(buffer.maxsize)]
    assert buffer._beta == 0.7 and all(sub._beta == 0.7 for sub in buffer.buffers)
    assert (after != before).any()
    # The newest step of each copy has no target yet: its priority stays, to be sampled again.
    unfinished = buffer.unfinished_index()
    assert after[unfinished].tolist() == before[unfinished].tolist()


def test_prioritised_shared_n_step_agent_trains(small_pipeline: Pipeline, tmp_path: Path) -> None:
    env = small_pipeline.env
    config = IDQNConfig(hidden=16, prioritized=True, share=True, n_step=3, target_update_freq=5)
    agent = IndependentDQN(config, spec=env.spec, device=CPU)
    trainer = TrainerConfig(
        max_epochs=1,
        epoch_num_env_steps=48,
        collect_num_env_steps=16,
        batch_size=16,
        buffer_size=400,
        num_train_envs=2,
        test_episodes=1,
        show_progress=False,
    )
    writer = SummaryWriter(str(tmp_path))
    run = TrainRun(
        trainer=trainer,
        logger=LoggerConfig(interval_env_steps=16),
        seed=0,
        writer=writer,
        save_checkpoint=lambda epoch: None,
        save_best=lambda: None,
    )
    before = [p.detach().clone() for p in agent.nets.parameters()]
    summary = fit(agent, env, run)
    writer.close()
    assert summary["train_env_steps"] == 48
    changed = [not torch.equal(a, p) for a, p in zip(before, agent.nets.parameters(), strict=True)]
    assert any(changed)
    assert all(torch.isfinite(p).all() for p in agent.nets.parameters())
