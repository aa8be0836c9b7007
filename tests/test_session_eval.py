"""Batched session evaluation gives the per-user loop's figures for a deterministic policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from marlrec import registry
from marlrec.data import RecData
from marlrec.envs import Environment
from marlrec.envs.core import SlateConfig
from marlrec.envs.single import SingleAgentEnvironment, SingleConfig
from marlrec.envs.slate import SlateEnvironment
from marlrec.evaluation import harness
from marlrec.evaluation.harness import (
    Actor,
    baseline_actor,
    session_eval,
    session_eval_per_user,
    session_plan,
)
from marlrec.evaluation.metrics import MetricContext, slate_beyond_accuracy
from tests.test_slate_env import context, data_fixture


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> RecData:
    return data_fixture("synthetic", tmp_path_factory)


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory: pytest.TempPathFactory) -> RecData:
    return data_fixture("movielens", tmp_path_factory)


def fixed_scorer(env: Environment, seed: int) -> Actor:
    """A deterministic policy that depends on the observation: a fixed random linear score
    of every candidate's retrieval score, popularity and state similarity, one per role."""
    weights = torch.randn(len(env.spec.roles), 3, generator=torch.Generator().manual_seed(seed))
    item_emb = env.ctx.item_emb

    def act(
        obs: torch.Tensor, mask: torch.Tensor, roles: torch.Tensor, users: np.ndarray
    ) -> torch.Tensor:
        parts = env.spec.layout.split(obs)
        similarity = torch.einsum("bd,bmd->bm", parts["state"], item_emb[parts["candidates"]])
        features = torch.stack([parts["scores"], parts["popularity"], similarity], dim=1)
        scores = torch.einsum("bfm,bf->bm", features, weights[roles])
        return scores.masked_fill(~mask, -torch.inf).argmax(dim=1)

    return act


def assert_same(batched: dict[str, float], reference: dict[str, float]) -> None:
    assert batched.keys() == reference.keys()
    for key, value in reference.items():
        assert batched[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


@pytest.mark.parametrize("batch", [1024, 16])
def test_batched_sessions_equal_the_per_user_loop_on_synthetic_data(
    synthetic: RecData, batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(harness, "SESSION_BATCH", batch)
    config = SlateConfig(explore_share=0.25, role_terms={"diversity": "click"}, role_mix=0.5)
    env = SlateEnvironment(config, ctx=context(synthetic))
    n = 300
    assert len(set(session_plan(env, n, 5).tolist())) < n, "some users have two sessions"
    act = fixed_scorer(env, 0)
    assert_same(session_eval(env, act, n, 5), session_eval_per_user(env, act, n, 5))


def test_batched_sessions_equal_the_per_user_loop_with_replay_and_a_baseline(
    ml100k: RecData,
) -> None:
    # Replay keeps each user's session state: repeated users must not run at once.
    env = SlateEnvironment(SlateConfig(explore_share=0.1), ctx=context(ml100k))
    pop = registry.create(
        "baseline", {"name": "pop"}, data=ml100k, item_emb=env.ctx.item_emb, seed=0
    )
    n = 400
    assert len(set(session_plan(env, n, 1).tolist())) < n
    batched = session_eval(env, baseline_actor(env, pop), n, 1)
    assert_same(batched, session_eval_per_user(env, baseline_actor(env, pop), n, 1))
    assert batched["mean_return"] > 0


def test_single_agent_env_is_evaluated_batched_too(synthetic: RecData) -> None:
    env = SingleAgentEnvironment(SingleConfig(), ctx=context(synthetic))
    act = fixed_scorer(env, 1)
    assert_same(session_eval(env, act, 50, 3), session_eval_per_user(env, act, 50, 3))


def test_each_role_reports_its_share_of_slots_and_clicks(synthetic: RecData) -> None:
    config = SlateConfig(roles=["relevance", "diversity", "exploration"], slots_per_role=2)
    env = SlateEnvironment(config, ctx=context(synthetic))
    results = session_eval(env, fixed_scorer(env, 2), 100, 4)
    for role in config.roles:  # roles take turns, two slots each
        assert results[f"role/{role}/slot_share"] == pytest.approx(1 / 3)
    clicks = [results[f"role/{role}/click_share"] for role in config.roles]
    assert sum(clicks) == pytest.approx(1.0) and min(clicks) >= 0
    assert 0 < results["session_diversity"] <= 2 and results["session_novelty"] > 0


def test_slate_diversity_and_novelty_by_hand() -> None:
    popularity = np.array([3.0, 1.0, 0.0, 0.0])
    item_emb = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    ctx = MetricContext.build(popularity, item_emb, torch.device("cpu"))
    figures = slate_beyond_accuracy(torch.tensor([[0, 1], [0, 2], [2, 3]]), ctx)
    assert figures["diversity"].tolist() == pytest.approx([0.0, 1.0, 2.0])
    share = (popularity + 1) / (popularity.sum() + 4)  # add-one smoothed popularity
    expected = -np.log2(share)[[[0, 1], [0, 2], [2, 3]]].mean(1)
    assert figures["novelty"].tolist() == pytest.approx(expected.tolist())
