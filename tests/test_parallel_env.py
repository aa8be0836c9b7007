"""The `slate_parallel` environment: PettingZoo's parallel and AEC contracts, conflicts, rewards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pettingzoo.test import api_test, parallel_api_test
from tianshou.env import PettingZooEnv

from marlrec import registry
from marlrec.data import RecData
from marlrec.envs.core import SlateConfig
from marlrec.envs.slate_parallel import SlateParallelEnvironment
from tests.test_slate_env import EvenItems, ScriptedSimulator, context, data_fixture


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> RecData:
    return data_fixture("synthetic", tmp_path_factory)


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory: pytest.TempPathFactory) -> RecData:
    return data_fixture("movielens", tmp_path_factory)


def parallel_env(data: RecData, **options: object) -> SlateParallelEnvironment:
    return SlateParallelEnvironment(SlateConfig(**options), ctx=context(data))  # type: ignore[arg-type]


def test_parallel_api_test_on_synthetic_data(synthetic: RecData) -> None:
    env = parallel_env(
        synthetic, roles=["relevance", "diversity", "exploration"], explore_share=0.3
    )
    parallel_api_test(env.make_parallel(), num_cycles=200)


def test_api_test_on_the_aec_form(synthetic: RecData) -> None:
    api_test(parallel_env(synthetic).make(), num_cycles=200)


def test_both_api_tests_on_movielens_with_replay(ml100k: RecData) -> None:
    env = SlateParallelEnvironment(SlateConfig(), ctx=context(ml100k, simulator="replay"))
    parallel_api_test(env.make_parallel(), num_cycles=100)
    api_test(env.make(), num_cycles=100)


def test_registered_and_wrapped_by_tianshou(synthetic: RecData) -> None:
    env = registry.create("env", {"name": "slate_parallel"}, ctx=context(synthetic))
    assert isinstance(env, SlateParallelEnvironment)
    wrapped = PettingZooEnv(env.make())
    obs, _ = wrapped.reset(seed=0)
    assert obs["agent_id"] == "relevance" and len(obs["mask"]) == env.spec.layout.n_candidates


def test_conflicts_go_to_the_earlier_role_and_the_later_takes_the_best_free(
    synthetic: RecData,
) -> None:
    simulator = ScriptedSimulator(synthetic)
    env = SlateParallelEnvironment(SlateConfig(), ctx=context(synthetic, simulator=simulator))
    par = env.make_parallel()
    observations, _ = par.reset(seed=1)
    candidates = par._candidates[0].tolist()
    assert observations["relevance"]["action_mask"].sum() == len(candidates)
    # Candidates are sorted by retrieval score, so index 0 is the best. Both roles pick 3:
    # relevance (earlier in role order) keeps it, diversity takes the best free one, 0.
    par.step({"relevance": 3, "diversity": 3})
    assert par._slate == [candidates[3], candidates[0]]
    mask = par._mask()
    assert not mask[0] and not mask[3]
    with pytest.raises(ValueError, match="not an available candidate"):
        par.step({"relevance": 0, "diversity": 1})
    _, rewards, terminations, _, infos = par.step({"relevance": 5, "diversity": 5})
    assert simulator.answered[-1].tolist() == [candidates[i] for i in (3, 0, 5, 1)]
    assert par.slate_number == 1 and infos["relevance"]["conflicts"] == 2
    assert set(rewards) == {"relevance", "diversity"}
    assert not any(terminations.values())


def test_slot_order_rewards_and_session_end_on_a_scripted_user(synthetic: RecData) -> None:
    simulator = ScriptedSimulator(synthetic, leave_after=2)
    click = registry.create("reward", {"name": "click"}, data=synthetic, item_emb=torch.zeros(1))
    rewards = {"click": click, "even": EvenItems(weight=0.0)}
    config = SlateConfig(role_terms={"diversity": "even"}, role_mix=2.0)
    env = SlateParallelEnvironment(
        config, ctx=context(synthetic, simulator=simulator, rewards=rewards)
    )
    par = env.make_parallel()
    par.reset(seed=4)
    candidates = par._candidates[0].tolist()
    par.step({"relevance": 0, "diversity": 1})
    _, step_rewards, _, _, infos = par.step({"relevance": 2, "diversity": 3})
    # Role order within each step: relevance, diversity, relevance, diversity.
    slate = simulator.answered[-1]
    assert slate.tolist() == candidates[:4]
    clicks, even = int((slate % 3 == 0).sum()), int((slate % 2 == 0).sum())
    assert step_rewards == {"relevance": clicks, "diversity": clicks + 2.0 * even}
    assert infos["diversity"]["reward_terms"] == {"click": clicks, "even": even}
    assert simulator.sessions == [par.user]
    for _ in range(2):
        mask = par._mask()
        free = np.flatnonzero(mask)
        _, _, terminations, _, _ = par.step({"relevance": free[0], "diversity": free[1]})
    assert all(terminations.values()) and par.agents == []
    with pytest.raises(ValueError, match="reset"):
        par.step({})
