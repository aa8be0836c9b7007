"""The batched env (`make_vector`) agrees with the per-user envs stepped by Tianshou one by one."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from tianshou.algorithm.random import MARLRandomDiscreteMaskedOffPolicyAlgorithm
from tianshou.data import Batch, Collector, VectorReplayBuffer
from tianshou.env import BaseVectorEnv, DummyVectorEnv

from marlrec import registry
from marlrec.data import RecData
from marlrec.envs import Environment
from marlrec.envs.batched import BatchedSlateEnv
from marlrec.envs.core import SlateConfig
from marlrec.envs.single import SingleAgentEnvironment, SingleConfig
from marlrec.envs.slate import SlateEnvironment
from tests.test_slate_env import ScriptedSimulator, context, data_fixture


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> RecData:
    return data_fixture("synthetic", tmp_path_factory)


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory: pytest.TempPathFactory) -> RecData:
    return data_fixture("movielens", tmp_path_factory)


def slate_env(data: RecData, **options: Any) -> SlateEnvironment:
    mixing = {"explore_share": 0.25, "role_terms": {"diversity": "click"}, "role_mix": 0.5}
    return SlateEnvironment(SlateConfig(**{**mixing, **options}), ctx=context(data))


def reference(env: Environment, n: int) -> DummyVectorEnv:
    """The per-user envs as Tianshou steps them by default."""
    return DummyVectorEnv([env.tianshou_env] * n)


def as_dicts(observations: Batch | np.ndarray) -> list[dict[str, Any]]:
    """Per-copy observation dicts, from a stacked Batch or as the per-user envs give them."""
    if not isinstance(observations, Batch):
        return list(observations)
    keys = list(observations.keys())
    return [dict(zip(keys, row, strict=True)) for row in zip(*observations.values(), strict=True)]


def assert_same_observations(
    batched: Batch | np.ndarray, expected: np.ndarray, env: Environment
) -> None:
    assert len(batched) == len(expected)
    split = env.spec.layout.split
    for got, want in zip(as_dicts(batched), expected, strict=True):
        assert got.keys() == want.keys()
        assert got.get("agent_id") == want.get("agent_id")
        np.testing.assert_array_equal(got["mask"], np.asarray(want["mask"], dtype=bool))
        got_obs, want_obs = torch.as_tensor(got["obs"]), torch.as_tensor(want["obs"])
        assert torch.equal(split(got_obs)["candidates"], split(want_obs)["candidates"])
        np.testing.assert_allclose(got["obs"], want["obs"], rtol=1e-5, atol=1e-6)


SLATE_KEYS = ("clicks", "user", "reward_terms", "reward_global", "role_rewards")
SLATE_ARRAYS = ("slate", "slot_roles", "slot_clicks")


def assert_same_infos(
    batched: np.ndarray, expected: np.ndarray, stacked: bool, answered: np.ndarray
) -> None:
    """Unstacked infos equal the per-user envs'; stacked ones carry the slate's info exactly
    on the step that answered it (`answered`), and are empty otherwise."""
    for got, want, fresh in zip(batched, expected, answered, strict=True):
        if stacked:
            assert got.keys() == (set(SLATE_KEYS) | set(SLATE_ARRAYS) if fresh else set())
            got = {k: v for k, v in got.items() if k in SLATE_KEYS or k in SLATE_ARRAYS}
        else:
            assert got.keys() == want.keys()
            assert got.get("env_id") == want.get("env_id")
        if not got:
            continue
        for key in SLATE_KEYS:
            assert got.get(key) == want.get(key), key
        for key in SLATE_ARRAYS:
            np.testing.assert_array_equal(got.get(key), want.get(key), err_msg=key)
        if "action_mask" in want and not stacked:
            np.testing.assert_array_equal(got["action_mask"], want["action_mask"])


def random_actions(observations: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.array([rng.choice(np.flatnonzero(np.asarray(o["mask"]))) for o in observations])


def run_in_lockstep(
    make_env: Callable[[], Environment], n: int, steps: int, seed: int, stacked: bool
) -> int:
    """Step the batched env and the reference with the same actions, resetting finished
    copies as a collector does; every output must agree. Returns the sessions finished.

    Each side gets its own plugin instances: a simulator with per-session state must not be
    shared between them.
    """
    env = make_env()
    batched, expected = env.make_vector(n, stacked=stacked), reference(make_env(), n)
    slate_size = env.core.slate_size
    batched.seed(seed)
    expected.seed(seed)
    obs_b, info_b = batched.reset()
    obs_e, info_e = expected.reset()
    assert_same_observations(obs_b, obs_e, env)
    if not stacked:
        assert_same_infos(info_b, info_e, stacked, np.zeros(n, dtype=bool))
    rng, finished, filled = np.random.default_rng(seed), 0, np.zeros(n, dtype=int)
    for _ in range(steps):
        actions = random_actions(obs_e, rng)
        obs_b, rew_b, term_b, trunc_b, info_b = batched.step(actions)
        obs_e, rew_e, term_e, trunc_e, info_e = expected.step(actions)
        filled += 1
        assert_same_observations(obs_b, obs_e, env)
        np.testing.assert_allclose(rew_b, rew_e, rtol=1e-6)
        np.testing.assert_array_equal(term_b, term_e)
        np.testing.assert_array_equal(trunc_b, trunc_e)
        assert_same_infos(info_b, info_e, stacked, filled % slate_size == 0)
        done = np.flatnonzero(term_e | trunc_e)
        if len(done):
            finished += len(done)
            filled[done] = 0
            reset_b, _ = batched.reset(done)
            reset_e, _ = expected.reset(done)
            assert_same_observations(reset_b, reset_e, env)
            obs_b[done], obs_e[done] = reset_b, reset_e
    return finished


@pytest.mark.parametrize(("stacked", "explore_share"), [(False, 0.25), (True, 0.25), (False, 0.0)])
def test_batched_slate_env_agrees_with_per_user_aec_envs(
    synthetic: RecData, stacked: bool, explore_share: float
) -> None:
    def make_env() -> SlateEnvironment:
        return slate_env(synthetic, explore_share=explore_share)

    assert run_in_lockstep(make_env, n=5, steps=120, seed=3, stacked=stacked) >= 5


def test_candidate_features_reach_the_observations_of_both_envs(synthetic: RecData) -> None:
    members = [{"name": "ease"}, {"name": "content"}]

    def make_env() -> SlateEnvironment:
        ctx = context(synthetic)
        union = registry.create(
            "retrieval",
            {"name": "union", "members": members, "features": True, "merge": "first"},
            data=synthetic,
            item_emb=ctx.item_emb,
        )
        return SlateEnvironment(SlateConfig(), ctx=dataclasses.replace(ctx, retriever=union))

    env = make_env()
    assert env.spec.layout.n_features == 4
    assert run_in_lockstep(make_env, n=4, steps=60, seed=7, stacked=False) >= 4
    # What the first role sees: each candidate's member scores and ranks, from the retriever.
    aec = env.make()
    aec.reset(seed=1)
    obs = torch.as_tensor(aec.observe(aec.agent_selection)["observation"])[None]
    parts = env.spec.layout.split(obs)
    history = env.core.pack([np.asarray(aec.history)])
    states = env.core.states(history)
    candidates = parts["candidates"]
    expected = env.ctx.retriever.candidate_features(states, history, candidates)
    torch.testing.assert_close(parts["features"], expected)
    assert float(parts["features"][0, :, 1].max()) == 1.0  # EASE's best unconsumed item


@pytest.mark.parametrize("stacked", [False, True])
def test_batched_single_env_agrees_with_per_user_gymnasium_envs(
    synthetic: RecData, stacked: bool
) -> None:
    config = SingleConfig(slate_size=3, explore_share=0.25, max_slates=3)

    def make_env() -> SingleAgentEnvironment:
        return SingleAgentEnvironment(config, ctx=context(synthetic))

    assert isinstance(make_env().make_vector(2), BatchedSlateEnv)
    assert run_in_lockstep(make_env, n=4, steps=60, seed=5, stacked=stacked) >= 4


def test_batched_env_agrees_on_movielens_with_replay(ml100k: RecData) -> None:
    def make_env() -> SlateEnvironment:
        config = SlateConfig(explore_share=0.2)
        return SlateEnvironment(config, ctx=context(ml100k, simulator="replay"))

    assert run_in_lockstep(make_env, n=4, steps=40, seed=0, stacked=False) >= 1


class LongStart(ScriptedSimulator):
    """Sessions start from 150 items, longer than any training history."""

    def start_session(self, user: int, rng: np.random.Generator | None = None) -> np.ndarray:
        super().start_session(user, rng)
        return np.arange(150, dtype=np.int64)


def test_sessions_may_start_from_longer_histories_than_training(synthetic: RecData) -> None:
    def make_env() -> SlateEnvironment:
        ctx = context(synthetic, simulator=LongStart(synthetic, leave_after=2))
        return SlateEnvironment(SlateConfig(), ctx=ctx)

    assert run_in_lockstep(make_env, n=3, steps=24, seed=1, stacked=False) >= 3


def collect_returns(envs: BaseVectorEnv, n_episode: int) -> np.ndarray:
    policy = MARLRandomDiscreteMaskedOffPolicyAlgorithm.Policy(envs.action_space[0])
    collector = Collector(policy, envs, VectorReplayBuffer(2000, len(envs)))
    envs.seed(11)
    collector.reset()
    np.random.seed(0)  # the random policy draws from numpy's global generator
    collector.collect(n_step=8 * len(envs))
    return collector.collect(n_episode=n_episode).returns


def test_tianshou_collector_gets_the_same_episodes_from_both(synthetic: RecData) -> None:
    """Collecting by steps and then by episodes (some copies idle) through the batched env
    gives the same episode returns as through the per-user envs."""
    batched = collect_returns(slate_env(synthetic, max_slates=3).make_vector(4), n_episode=6)
    expected = collect_returns(reference(slate_env(synthetic, max_slates=3), 4), n_episode=6)
    assert batched.shape == (6, 2)
    np.testing.assert_allclose(batched, expected, rtol=1e-6)


def test_vector_env_interface(synthetic: RecData) -> None:
    env = slate_env(synthetic)
    batched = env.make_vector(3)
    assert isinstance(batched, BaseVectorEnv) and len(batched) == 3
    assert batched.action_space[0].n == env.spec.layout.n_candidates
    assert batched.observation_space[1] == env.make().observation_space("relevance")
    batched.seed(0)
    pool = np.flatnonzero([len(h) for h in synthetic.train_histories])
    expected = [int(np.random.default_rng(seed).choice(pool)) for seed in range(3)]
    assert batched.get_env_attr("user") == expected
    with pytest.raises(AttributeError, match="no per-copy attribute"):
        batched.get_env_attr("nonexistent")
    obs, _ = batched.reset([1], options={"user": 7})
    assert batched.get_env_attr("user", 1) == [7]
    taken = int(np.flatnonzero(obs[0]["mask"])[0])
    obs = batched.step(np.array([taken]), [1])[0]
    with pytest.raises(ValueError, match="not an available candidate"):
        batched.step(np.array([taken]), [1])
    # The rest of the slate; training logs read the per-copy term tallies.
    assert batched.get_env_attr("scored_slates") == [0, 0, 0]
    for _ in range(env.core.slate_size - 1):
        obs, _, _, _, infos = batched.step(np.flatnonzero(obs.mask[0])[:1], [1])
    assert batched.get_env_attr("scored_slates") == [0, 1, 0]
    assert batched.get_env_attr("reward_term_totals", 1) == [infos[0]["reward_terms"]]
    batched.close()
    assert batched.is_closed
