"""The `slate` environment: PettingZoo's API contract, exploration, rewards and role mixing,
and the policy ranking. Helpers here build small environments without a language model and are
shared by the other environment tests."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pettingzoo.test import api_test

from marlrec import registry
from marlrec.baselines.ease import EASEBaseline
from marlrec.data import RecData, fill_histories
from marlrec.datasets.movielens import MovieLensDataset
from marlrec.datasets.synthetic import SyntheticDataset
from marlrec.envs import EnvContext
from marlrec.envs.core import SlateConfig
from marlrec.envs.slate import SlateEnvironment
from marlrec.evaluation.rankers import AgentRanker
from marlrec.registry import PluginError
from marlrec.rewards import Reward, RewardConfig, SlateOutcome
from marlrec.simulators import Response, Simulator
from tests.conftest import ML100K

# --- helpers shared by the environment tests ----------------------------------------------


@cache
def load_data(name: str, cache_dir: Path) -> RecData:
    """A small synthetic dataset, or ML-100K, loaded once per test session."""
    if name == "synthetic":
        dataset: Any = SyntheticDataset(SyntheticDataset.Config(n_users=60, n_items=200))
    else:
        dataset = MovieLensDataset(MovieLensDataset.Config(path=str(ML100K)))
    return dataset.load(seed=0, cache_dir=cache_dir)


def data_fixture(name: str, tmp_path_factory: pytest.TempPathFactory) -> RecData:
    if name == "movielens" and not (ML100K / "u.data").is_file():
        pytest.skip("MovieLens-100K is not at ../shared/data/ml-100k")
    return load_data(name, tmp_path_factory.getbasetemp() / "env-test-data")


def context(
    data: RecData,
    *,
    simulator: Simulator | str | None = None,
    rewards: dict[str, Reward] | None = None,
    dim: int = 16,
    retrieval: str = "content",
) -> EnvContext:
    """Random item embeddings, the mean state, the named retrieval, and registered or given
    simulator and rewards."""
    item_emb = torch.randn(data.n_items, dim, generator=torch.Generator().manual_seed(0))
    state = registry.create("state", {"name": "mean"}, item_dim=dim)
    if simulator is None or isinstance(simulator, str):
        name = simulator or ("synthetic" if data.truth is not None else "replay")
        simulator = registry.create("simulator", {"name": name}, data=data, item_emb=item_emb)
    if rewards is None:
        rewards = {
            "click": registry.create("reward", {"name": "click"}, data=data, item_emb=item_emb)
        }
    retriever = registry.create("retrieval", {"name": retrieval}, data=data, item_emb=item_emb)
    return EnvContext(data, item_emb, state, simulator, rewards, torch.device("cpu"), retriever)


class ScriptedSimulator(Simulator):
    """Clicks every item whose id is a multiple of 3, leaves after `leave_after` slates, and
    records the sessions it was told about."""

    def __init__(self, data: RecData, leave_after: int = 1000) -> None:
        super().__init__(None, data=data, item_emb=torch.zeros(1))
        self.leave_after = leave_after
        self.sessions: list[int] = []
        self.answered: list[np.ndarray] = []
        self.slates = 0

    def start_session(self, user: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """Sessions start from the first half of the user's training history."""
        self.sessions.append(user)
        self.slates = 0
        history = self.data.train_histories[user]
        return history[: len(history) // 2]

    def respond(self, user: int, slate: np.ndarray, rng: np.random.Generator) -> Response:
        self.slates += 1
        self.answered.append(np.asarray(slate))
        return Response(clicks=slate % 3 == 0, leave=self.slates >= self.leave_after)


class EvenItems(Reward):
    """The number of items in the slate with an even id (clicked or not)."""

    def __init__(self, weight: float) -> None:
        super().__init__(RewardConfig(weight=weight), data=None, item_emb=torch.zeros(1))  # type: ignore[arg-type]

    def score(self, outcome: SlateOutcome) -> float:
        return float((outcome.items % 2 == 0).sum())


def first_available(mask: Any) -> int:
    return int(np.flatnonzero(np.asarray(mask))[0])


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> RecData:
    return data_fixture("synthetic", tmp_path_factory)


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory: pytest.TempPathFactory) -> RecData:
    return data_fixture("movielens", tmp_path_factory)


# --- the env built by the default pipeline -------------------------------------------------


def test_passes_pettingzoo_api_test(small_pipeline) -> None:
    env = small_pipeline.env.make()
    api_test(env, num_cycles=200)


def test_roles_take_turns_and_every_role_gets_the_slate_reward(small_pipeline) -> None:
    env_plugin = small_pipeline.env
    aec = env_plugin.make()
    aec.reset(seed=3)
    core = env_plugin.core
    turns, rewards_seen = [], []
    for slot in range(core.slate_size):
        agent = aec.agent_selection
        turns.append(agent)
        mask = aec.observe(agent)["action_mask"]
        aec.step(int(np.flatnonzero(mask)[0]))
        if slot < core.slate_size - 1:
            assert all(r == 0.0 for r in aec.rewards.values())
        rewards_seen = list(aec.rewards.values())
    roles = list(env_plugin.spec.roles)
    assert turns == [roles[i] for i in core.turn_order]
    clicks = aec.infos[roles[0]]["clicks"]
    assert rewards_seen == [float(clicks)] * len(roles)  # cooperative click reward, weight 1


def test_chosen_candidates_are_masked_and_history_never_retrieved(small_pipeline) -> None:
    aec = small_pipeline.env.make()
    aec.reset(seed=5, options={"user": 7})
    history = set(small_pipeline.data.train_histories[7].tolist())
    candidates = aec.unwrapped._candidates[0].tolist()
    assert not history & set(candidates)
    first = aec.agent_selection
    aec.step(0)
    mask = aec.observe(aec.agent_selection)["action_mask"]
    assert mask[0] == 0 and mask[1:].all()
    assert first != aec.agent_selection


def test_invalid_action_is_refused(small_pipeline) -> None:
    aec = small_pipeline.env.make()
    aec.reset(seed=0)
    aec.step(0)
    try:
        aec.step(0)
    except ValueError as err:
        assert "not an available candidate" in str(err)
    else:
        raise AssertionError("choosing a candidate twice must fail")


def test_rank_puts_the_policy_slate_first_and_excludes_history(small_pipeline) -> None:
    env: SlateEnvironment = small_pipeline.env
    data = small_pipeline.data
    users = np.arange(10)
    histories = [data.train_histories[u] for u in users]

    # A scorer that prefers the candidate in the last position: the slate is then predictable.
    def prefer_last(obs: torch.Tensor, role: int) -> torch.Tensor:
        m = env.spec.layout.n_candidates
        return torch.arange(m, dtype=torch.float32).expand(obs.shape[0], m)

    top = AgentRanker(env.core, prefer_last)(users, histories, k=30)
    core = env.core
    packed = core.pack(histories)
    cand, _ = core.candidates(core.retrieval_scores(core.states(packed), packed))
    expected_slate = cand.flip(-1)[:, : core.slate_size]
    assert torch.equal(top[:, : core.slate_size], expected_slate)
    rest = slice(core.slate_size, core.n_candidates)
    assert torch.equal(top[:, rest], cand.flip(-1)[:, rest])
    for row, history in zip(top.tolist(), histories, strict=True):
        assert not set(row) & set(history.tolist())
        assert len(set(row)) == len(row)


# --- small envs without a language model ---------------------------------------------------


def test_api_test_on_synthetic_data_with_exploration_and_role_mixing(synthetic: RecData) -> None:
    ctx = context(synthetic)
    config = SlateConfig(
        explore_share=0.3, role_terms={"diversity": "click"}, role_mix=0.5, max_slates=3
    )
    api_test(SlateEnvironment(config, ctx=ctx).make(), num_cycles=200)


def test_api_test_on_movielens_with_replay(ml100k: RecData) -> None:
    env = SlateEnvironment(SlateConfig(explore_share=0.2), ctx=context(ml100k, simulator="replay"))
    api_test(env.make(), num_cycles=200)


@dataclass
class Retrieval:
    scores: torch.Tensor  # (B, n_items) with -inf on consumed items
    histories: list[np.ndarray]


def retrieval(env: SlateEnvironment, users: np.ndarray) -> Retrieval:
    core = env.core
    histories = [env.ctx.data.train_histories[u] for u in users]
    packed = core.pack(histories)
    return Retrieval(core.retrieval_scores(core.states(packed), packed), histories)


@pytest.mark.parametrize("long_tail", [0.0, 0.5, 1.0])
def test_exploration_replaces_its_share_with_unconsumed_distinct_items(
    synthetic: RecData, long_tail: float
) -> None:
    config = SlateConfig(n_candidates=20, explore_share=0.4, explore_long_tail=long_tail)
    env = SlateEnvironment(config, ctx=context(synthetic))
    core = env.core
    users = np.arange(40)
    r = retrieval(env, users)
    rngs = [np.random.default_rng(int(u)) for u in users]
    candidates, cand_scores = core.retrieve(r.scores, rngs)
    assert core.n_explore == 8 and core.n_long_tail == round(8 * long_tail)
    top = r.scores.topk(12).indices
    tail_pool = set(core.long_tail_items.tolist())
    assert len(tail_pool) == synthetic.n_items // 2
    counts = synthetic.item_popularity
    assert max(counts[list(tail_pool)]) <= min(np.delete(counts, list(tail_pool)))
    for b, history in enumerate(r.histories):
        row = candidates[b].tolist()
        assert len(set(row)) == 20, "no duplicates"
        assert not set(row) & set(history.tolist()), "never a consumed item"
        assert set(top[b].tolist()) <= set(row), "the top M - E retrieved items stay"
        explored = set(row) - set(top[b].tolist())
        assert len(explored) == 8
        if long_tail == 1.0:
            assert explored <= tail_pool
        # Exploration items carry their real cosine, and candidates stay sorted by it.
        assert torch.equal(cand_scores[b], r.scores[b, candidates[b]])
        assert bool((cand_scores[b][:-1] >= cand_scores[b][1:]).all())
    again, _ = core.retrieve(r.scores, [np.random.default_rng(int(u)) for u in users])
    assert torch.equal(candidates, again), "seeded from the row's generator"


def test_ease_retrieval_offers_the_ease_baselines_top_items(synthetic: RecData) -> None:
    env = SlateEnvironment(SlateConfig(), ctx=context(synthetic, retrieval="ease"))
    users = np.arange(30)
    r = retrieval(env, users)
    ease = EASEBaseline(EASEBaseline.Config(), data=synthetic, item_emb=env.ctx.item_emb, seed=0)
    expected = fill_histories(ease.scores(users), r.histories, -torch.inf)
    candidates, _ = env.core.candidates(r.scores)
    assert torch.equal(candidates, expected.topk(env.core.n_candidates).indices)
    finite = r.scores[torch.isfinite(r.scores)]
    assert finite.abs().max() <= 1.0 and (r.scores == -torch.inf).sum() == sum(
        len(set(h.tolist())) for h in r.histories
    )


def test_exploration_without_share_is_plain_retrieval(synthetic: RecData) -> None:
    env = SlateEnvironment(SlateConfig(), ctx=context(synthetic))
    r = retrieval(env, np.arange(10))
    candidates, _ = env.core.retrieve(r.scores, [np.random.default_rng(0)] * 10)
    assert torch.equal(candidates, env.core.candidates(r.scores)[0])


def test_exploration_falls_back_when_the_long_tail_is_nearly_consumed(synthetic: RecData) -> None:
    config = SlateConfig(n_candidates=20, explore_share=0.5, explore_long_tail=1.0)
    env = SlateEnvironment(config, ctx=context(synthetic))
    core = env.core
    tail = core.long_tail_items.tolist()
    history = np.asarray(tail[3:], dtype=np.int64)  # only 3 long-tail items left unconsumed
    packed = core.pack([history])
    scores = core.retrieval_scores(core.states(packed), packed)
    candidates, cand_scores = core.retrieve(scores, [np.random.default_rng(1)])
    row = candidates[0].tolist()
    assert len(set(row)) == 20 and not set(row) & set(history.tolist())
    assert set(tail[:3]) <= set(row), "every long-tail item left is drawn"
    assert bool(torch.isfinite(cand_scores).all())


def test_a_session_never_offers_consumed_items_with_exploration(synthetic: RecData) -> None:
    config = SlateConfig(explore_share=0.5, max_slates=4)
    aec = SlateEnvironment(config, ctx=context(synthetic)).make()
    aec.reset(seed=2)
    slates = 0
    for _agent in aec.agent_iter():
        observation, _, terminated, truncated, _ = aec.last()
        if terminated or truncated:
            aec.step(None)
            continue
        if not aec._slate:  # a new slate: retrieved after the last slate's clicks
            consumed = set(aec.history)
            assert not consumed & set(aec._candidates[0].tolist())
            slates += 1
        aec.step(first_available(observation["action_mask"]))
    assert slates == aec.slate_number >= 1


def test_role_mixing_on_a_hand_computed_slate(synthetic: RecData) -> None:
    simulator = ScriptedSimulator(synthetic)
    click = registry.create("reward", {"name": "click"}, data=synthetic, item_emb=torch.zeros(1))
    rewards = {"click": click, "even": EvenItems(weight=0.25)}
    config = SlateConfig(role_terms={"diversity": "even"}, role_mix=0.5)
    env = SlateEnvironment(config, ctx=context(synthetic, simulator=simulator, rewards=rewards))
    aec = env.make()
    aec.reset(seed=0)
    for _ in range(env.core.slate_size):
        aec.step(first_available(aec.observe(aec.agent_selection)["action_mask"]))
    info = aec.infos["relevance"]
    (slate,) = simulator.answered
    clicks, even = int((slate % 3 == 0).sum()), int((slate % 2 == 0).sum())
    total = clicks + 0.25 * even
    assert info["reward_terms"] == {"click": clicks, "even": even}
    assert info["reward_global"] == total
    assert aec.rewards == {"relevance": total, "diversity": total + 0.5 * even}
    assert info["role_rewards"] == aec.rewards


def test_sessions_start_where_the_simulator_opens_them(synthetic: RecData) -> None:
    simulator = ScriptedSimulator(synthetic)
    aec = SlateEnvironment(SlateConfig(), ctx=context(synthetic, simulator=simulator)).make()
    users = []
    for seed in range(3):
        aec.reset(seed=seed)
        users.append(aec.user)
        start = synthetic.train_histories[aec.user]
        start = start[: len(start) // 2]
        assert aec.history == start.tolist()
        # Retrieval excludes the session's history only: later training items may be offered.
        assert not set(start.tolist()) & set(aec._candidates[0].tolist())
    aec.reset(options={"user": 5})
    assert simulator.sessions == [*users, 5]


class Silent(ScriptedSimulator):
    """Never clicks."""

    def respond(self, user: int, slate: np.ndarray, rng: np.random.Generator) -> Response:
        response = super().respond(user, slate, rng)
        return Response(clicks=np.zeros_like(response.clicks), leave=response.leave)


@pytest.mark.parametrize(("explore_share", "retrievals"), [(0.0, 1), (0.2, 4)])
def test_a_slate_without_clicks_reuses_the_last_retrieval(
    synthetic: RecData, explore_share: float, retrievals: int
) -> None:
    """Unchanged history, fixed state model, no exploration: the same candidates again,
    without scoring the catalog again. Exploration draws anew at every slate."""
    config = SlateConfig(explore_share=explore_share)
    env = SlateEnvironment(config, ctx=context(synthetic, simulator=Silent(synthetic)))
    calls: list[int] = []
    retrieve = env.core.slate_candidates
    env.core.slate_candidates = lambda *args: calls.append(1) or retrieve(*args)  # type: ignore[method-assign]
    aec = env.make()
    aec.reset(seed=0)
    first = aec._candidates.clone()
    for _ in range(3 * env.core.slate_size):
        aec.step(first_available(aec.observe(aec.agent_selection)["action_mask"]))
    assert aec.slate_number == 3 and len(calls) == retrievals  # the 4th slate has begun
    assert torch.equal(aec._candidates, first) == (explore_share == 0.0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"role_terms": {"novelty": "click"}}, "not in env.roles"),
        ({"role_terms": {"diversity": "novelty"}}, "not a selected reward"),
        ({"explore_share": 1.5}, "explore_share"),
        ({"explore_long_tail": -0.1}, "explore_long_tail"),
        ({"role_mix": float("nan")}, "role_mix"),
    ],
)
def test_bad_options_are_one_line_plugin_errors(
    synthetic: RecData, change: dict[str, Any], message: str
) -> None:
    with pytest.raises(PluginError, match=message) as info:
        SlateEnvironment(SlateConfig(**change), ctx=context(synthetic))
    assert "\n" not in str(info.value)


def test_yaml_options_reach_the_config_through_the_registry(synthetic: RecData) -> None:
    section = {"name": "slate", "explore_share": 0.25, "role_terms": {"diversity": "click"}}
    env = registry.create("env", {**section, "role_mix": 1}, ctx=context(synthetic))
    assert env.core.n_explore == 5 and env.core.role_mix == 1.0
    assert env.core.role_terms == [None, "click"]
