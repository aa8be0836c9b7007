"""The `single` environment: gymnasium's checker, one agent per slate, masks for Tianshou's DQN."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from pettingzoo.test import api_test
from tianshou.algorithm.modelfree.dqn import DiscreteQLearningPolicy
from tianshou.data import Collector, ReplayBuffer
from tianshou.env import DummyVectorEnv
from torch import nn

from marlrec import registry
from marlrec.data import RecData
from marlrec.envs.single import SingleAgentEnvironment, SingleConfig
from marlrec.evaluation.rankers import AgentRanker
from marlrec.registry import PluginError
from tests.test_slate_env import ScriptedSimulator, context, data_fixture


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> RecData:
    return data_fixture("synthetic", tmp_path_factory)


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory: pytest.TempPathFactory) -> RecData:
    return data_fixture("movielens", tmp_path_factory)


def single_env(data: RecData, **options: object) -> SingleAgentEnvironment:
    return SingleAgentEnvironment(SingleConfig(**options), ctx=context(data))  # type: ignore[arg-type]


def test_gymnasium_env_checker_on_synthetic_data(synthetic: RecData) -> None:
    check_env(single_env(synthetic, explore_share=0.3).make(), skip_render_check=True)


def test_gymnasium_env_checker_on_movielens_with_replay(ml100k: RecData) -> None:
    env = SingleAgentEnvironment(SingleConfig(), ctx=context(ml100k, simulator="replay"))
    check_env(env.make(), skip_render_check=True)


def test_one_agent_fills_the_slate_and_earns_its_reward(synthetic: RecData) -> None:
    simulator = ScriptedSimulator(synthetic, leave_after=2)
    env = SingleAgentEnvironment(
        SingleConfig(slate_size=3), ctx=context(synthetic, simulator=simulator)
    )
    assert env.spec.roles == ("slate",) and env.spec.layout.n_roles == 1
    gym_env = env.make()
    obs, info = gym_env.reset(seed=0)
    assert obs["obs"].shape == (env.spec.layout.size,) and obs["mask"].dtype == bool
    np.testing.assert_array_equal(info["action_mask"], obs["mask"])
    rewards, ended = [], False
    while not ended:
        action = int(np.flatnonzero(obs["mask"])[-1])
        obs, reward, ended, truncated, info = gym_env.step(action)
        assert not truncated
        np.testing.assert_array_equal(info["action_mask"], obs["mask"])
        rewards.append(reward)
        if len(rewards) % 3:
            assert reward == 0.0 and "reward_terms" not in info
        else:
            clicks = int((simulator.answered[-1] % 3 == 0).sum())
            assert reward == clicks == info["reward_terms"]["click"]
    assert len(rewards) == 6 and gym_env.slate_number == 2
    assert simulator.sessions == [gym_env.user]


def test_a_masked_action_is_refused(synthetic: RecData) -> None:
    gym_env = single_env(synthetic).make()
    gym_env.reset(seed=0)
    gym_env.step(0)
    with pytest.raises(ValueError, match="not an available candidate"):
        gym_env.step(0)


def test_its_aec_view_observes_the_same_and_passes_api_test(synthetic: RecData) -> None:
    env = single_env(synthetic, explore_share=0.2)
    gym_env, aec = env.make(), env.make_aec()
    obs, _ = gym_env.reset(seed=7)
    aec.reset(seed=7)
    np.testing.assert_array_equal(aec.observe("slate")["observation"], obs["obs"])
    api_test(env.make_aec(), num_cycles=100)


class PreferLast(nn.Module):
    """Q-values rising with the candidate index: greedy DQN wants the last candidate."""

    def __init__(self, n_candidates: int) -> None:
        super().__init__()
        self.n_candidates = n_candidates

    def forward(self, obs: object, state: object = None, info: object = None) -> tuple:
        batch = len(torch.as_tensor(obs))
        q = torch.arange(self.n_candidates, dtype=torch.float32).expand(batch, -1)
        return q, state


def test_tianshou_dqn_reads_the_mask_from_the_observation(synthetic: RecData) -> None:
    """Greedy DQN on a network that always prefers the last candidate fills each slate with
    the last, second-to-last, ... candidates: only the mask in `obs.mask` makes that so (a
    masked action would raise)."""
    env = single_env(synthetic, slate_size=4, max_slates=2)
    m = env.spec.layout.n_candidates
    policy = DiscreteQLearningPolicy(model=PreferLast(m), action_space=env.make().action_space)
    buffer = ReplayBuffer(100)
    collector = Collector(policy, DummyVectorEnv([env.make]), buffer)
    collector.reset()
    collector.collect(n_episode=2)
    per_slate = buffer.act[: len(buffer)].reshape(-1, 4)
    assert (per_slate == [m - 1, m - 2, m - 3, m - 4]).all()
    assert buffer.obs.mask.dtype == bool


def test_rank_works_with_the_single_role(synthetic: RecData) -> None:
    env = single_env(synthetic, slate_size=4)
    users = np.arange(6)
    histories = [synthetic.train_histories[u] for u in users]

    def prefer_last(obs: torch.Tensor, role: int) -> torch.Tensor:
        assert role == 0
        m = env.spec.layout.n_candidates
        return torch.arange(m, dtype=torch.float32).expand(obs.shape[0], m)

    top = AgentRanker(env.core, prefer_last)(users, histories, k=10)
    packed = env.core.pack(histories)
    cand, _ = env.core.candidates(env.core.retrieval_scores(env.core.states(packed), packed))
    assert torch.equal(top[:, :4], cand.flip(-1)[:, :4])


def test_registered_with_its_yaml_options(synthetic: RecData) -> None:
    env = registry.create("env", {"name": "single", "slate_size": 5}, ctx=context(synthetic))
    assert isinstance(env, SingleAgentEnvironment) and env.core.slate_size == 5
    with pytest.raises(PluginError, match="slate_size"):
        registry.create("env", {"name": "single", "slate_size": 0}, ctx=context(synthetic))
