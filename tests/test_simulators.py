"""The `replay` and `response_model` simulators, alone, in the slate env, and on ML-100K."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from marlrec import registry
from marlrec.data import Interactions, RecData, leave_one_out
from marlrec.datasets.movielens import MovieLensDataset
from marlrec.datasets.synthetic import SyntheticDataset
from marlrec.pipeline import Pipeline
from marlrec.registry import PluginError
from marlrec.simulators import Simulator, examination
from marlrec.simulators.click_model import ClickModel, pooled_auc
from marlrec.simulators.replay import ReplaySimulator
from tests.conftest import ML100K
from tests.test_rewards import EMB, tiny_data

needs_ml100k = pytest.mark.skipif(
    not (ML100K / "u.data").is_file(), reason="MovieLens-100K is not beside the checkout"
)
# Small fitting options that keep a test to a few seconds.
FAST_FIT = {"steps": 150, "max_positives": 20_000, "batch_size": 1024, "learning_rate": 0.01}
RNG = np.random.default_rng(0)


def simulator(name: str, data: RecData, item_emb: torch.Tensor, **options: object) -> Simulator:
    return registry.create("simulator", {"name": name, **options}, data=data, item_emb=item_emb)


# --- the base class -------------------------------------------------------------------------


def test_examination_is_the_dcg_position_model() -> None:
    np.testing.assert_allclose(examination(3), [1.0, 1.0 / np.log2(3.0), 0.5])


def test_start_session_is_a_harmless_default_hook(small_pipeline: Pipeline) -> None:
    synthetic = small_pipeline.env.ctx.simulator
    synthetic.start_session(0)  # stateless simulators accept it and keep answering
    response = synthetic.respond(0, np.arange(4), np.random.default_rng(0))
    assert response.clicks.shape == (4,)


# --- replay ---------------------------------------------------------------------------------


def long_log() -> RecData:
    """User 0 consumed items 0..9 in order (item i rated i % 5 + 1); user 1 only item 9."""
    user = np.array([0] * 10 + [1])
    item = np.array([*range(10), 9])
    interactions = Interactions(
        user=user.astype(np.int64),
        item=item.astype(np.int64),
        time=np.arange(11, dtype=np.float64),
        value=(item % 5 + 1).astype(np.float32),
    )
    return RecData(
        name="long",
        n_users=2,
        n_items=10,
        interactions=interactions,
        item_text=[f"item {i}" for i in range(10)],
        split=leave_one_out(interactions, 2),
    )


def test_replay_cut_sessions_start_inside_training_and_click_what_came_next() -> None:
    replay = simulator("replay", long_log(), torch.zeros(10, 4), horizon=3, min_history=2)
    train = long_log().train_histories[0].tolist()  # 0..7: items 8 and 9 are held out
    cuts = set()
    for seed in range(30):
        history = replay.start_session(0, np.random.default_rng(seed))
        cut = len(history)
        cuts.add(cut)
        assert history.tolist() == train[:cut] and 2 <= cut < len(train)
        future = train[cut : cut + 3]
        assert sorted(replay.future(0)) == sorted(future)  # never a held-out item
    assert len(cuts) > 3  # the cut is drawn, not fixed
    replay.start_session(0, np.random.default_rng(0))
    nxt = sorted(replay.future(0))[0]
    response = replay.respond(0, np.array([train[0], nxt]), RNG)
    assert response.clicks.tolist() == [False, True]  # the past is not clicked again
    assert response.ratings[1] == nxt % 5 + 1 and np.isnan(response.ratings[0])


def test_replay_end_sessions_click_the_held_out_items_in_time_order() -> None:
    replay = simulator("replay", tiny_data(), EMB, start="end", horizon=1)
    assert replay.start_session(0).tolist() == [0, 1]  # the whole training history
    first = replay.respond(0, np.array([1, 2, 3]), RNG)  # valid item 2 (rated 5), test 3
    assert first.clicks.tolist() == [False, True, False]  # horizon 1: not the test item
    assert np.isnan(first.ratings[[0, 2]]).all() and first.ratings[1] == 5.0
    both = simulator("replay", tiny_data(), EMB, start="end", horizon=2)
    response = both.respond(0, np.array([3, 0, 2]), RNG)
    assert response.clicks.tolist() == [True, False, True]
    assert response.ratings[[0, 2]].tolist() == [3.0, 5.0]


def test_replay_leaves_after_patience_slates_without_a_click() -> None:
    replay = simulator("replay", tiny_data(), EMB, start="end", patience=3, horizon=2)
    answers = [replay.respond(0, np.array(slate), RNG) for slate in ([0], [1], [2], [0], [2])]
    # A miss, a miss, a click (resets the count), then item 2 again: already clicked, a miss.
    assert [a.clicks.any() for a in answers] == [False, False, True, False, False]
    assert [a.leave for a in answers] == [False] * 5
    assert replay.respond(0, np.array([1]), RNG).leave  # the third miss in a row


def test_replay_sessions_reset_on_start_session_and_after_leaving() -> None:
    replay = simulator("replay", tiny_data(), EMB, start="end", patience=1)
    assert replay.respond(0, np.array([2]), RNG).clicks.all()
    assert not replay.respond(0, np.array([2]), RNG).clicks.any()  # clicked already: leaves
    assert replay.respond(0, np.array([2]), RNG).clicks.all()  # a new session after leaving
    replay.start_session(0)
    assert replay.respond(0, np.array([2]), RNG).clicks.all()


def test_replay_user_without_a_future_never_clicks() -> None:
    replay = simulator("replay", long_log(), torch.zeros(10, 4), patience=2)
    assert replay.start_session(1, RNG).tolist() == [9]  # one item: nothing to cut
    answers = [replay.respond(1, np.arange(10), RNG) for _ in range(2)]
    assert not any(a.clicks.any() for a in answers) and answers[-1].leave


@pytest.mark.parametrize(("key", "value"), [("horizon", 0), ("patience", 0), ("min_history", -1)])
def test_replay_rejects_bad_options(key: str, value: int) -> None:
    with pytest.raises(PluginError, match=f"simulator 'replay': {key}"):
        simulator("replay", tiny_data(), EMB, **{key: value})


def test_replay_in_the_slate_env_scores_real_held_out_items(small_pipeline: Pipeline) -> None:
    base = small_pipeline.env.ctx
    replay = simulator("replay", base.data, base.item_emb, start="end", horizon=1, patience=1)
    rewards = {
        name: registry.create("reward", {"name": name}, data=base.data, item_emb=base.item_emb)
        for name in ("click", "rating", "retention")
    }
    ctx = dataclasses.replace(base, simulator=replay, rewards=rewards)
    env = registry.create("env", {"name": "slate"}, ctx=ctx).make()
    hits = 0
    for user in np.flatnonzero(base.data.split.valid_item >= 0)[:40]:
        terms = _first_slate_terms(env, int(user), int(base.data.split.valid_item[user]))
        valid_shown = terms.pop("valid_shown")
        assert terms["click"] == float(valid_shown)
        terms.pop("item")
        valid = base.data.split.held_out_interactions("valid")
        logged = float(valid.value[valid.user == user][0])
        assert terms["rating"] == (logged if valid_shown else 0.0)
        assert terms["retention"] == float(valid_shown)  # patience 1: a miss ends the session
        hits += valid_shown
    assert hits > 0  # the check above ran on clicks, not only on misses


def _first_slate_terms(env, user: int, valid_item: int) -> dict:
    """Play one slate that holds the user's validation item whenever it is a candidate."""
    env.reset(seed=0, options={"user": user})
    candidates = env.unwrapped._candidates[0].tolist()
    preferred = candidates.index(valid_item) if valid_item in candidates else None
    for _ in range(env.core.slate_size):
        mask = env.observe(env.agent_selection)["action_mask"]
        action = (
            preferred if preferred is not None and mask[preferred] else int(np.flatnonzero(mask)[0])
        )
        env.step(action)
    info = env.infos[env.possible_agents[0]]
    return {**info["reward_terms"], "valid_shown": preferred is not None, "item": valid_item}


# --- response_model -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> RecData:
    config = SyntheticDataset.Config(n_users=150, n_items=300)
    return SyntheticDataset(config).load(seed=0, cache_dir=tmp_path_factory.mktemp("data"))


def truth_embeddings(data: RecData) -> torch.Tensor:
    """The ground-truth item profiles: embeddings that carry the users' real tastes."""
    assert data.truth is not None
    return torch.as_tensor(data.truth.item_profile)


@pytest.fixture(scope="module")
def fitted(synthetic_data: RecData, tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("simulators")
    sim = simulator(
        "response_model",
        synthetic_data,
        truth_embeddings(synthetic_data),
        cache_dir=str(cache),
        **FAST_FIT,
    )
    return sim, cache


def test_response_model_ranks_held_out_items_above_unseen_ones(fitted) -> None:
    sim, _ = fitted
    auc = sim.heldout_auc(target="valid")
    assert auc.n_users == int((sim.data.split.valid_item >= 0).sum())
    assert auc.auc > 0.7 and auc.user_auc > 0.7


def test_response_model_is_calibrated_to_its_held_out_mix(fitted) -> None:
    sim, _ = fitted
    data, k = sim.data, sim.config.calibration_negatives
    rng = np.random.default_rng(1)
    predicted = []
    for user in np.flatnonzero(data.split.valid_item >= 0):
        unseen = np.setdiff1d(np.arange(data.n_items), data.train_histories[user])
        items = np.append(data.split.valid_item[user], rng.choice(unseen, k))
        predicted.append(sim.model.probability(sim.state(int(user)), items))
    predicted = np.asarray(predicted)
    # On average the model expects the real share of held-out items in the mix, 1 / (1 + k) ...
    assert predicted.mean() == pytest.approx(1.0 / (1 + k), rel=0.35)
    # ... and gives the held-out item itself a clearly higher probability than the unseen ones.
    assert predicted[:, 0].mean() > 3 * predicted[:, 1:].mean()


def test_response_model_is_cached_once_fitted(fitted, synthetic_data: RecData) -> None:
    sim, cache = fitted
    assert not sim.from_cache and sim.cache_file.parent == cache / "simulators"
    assert [p.name for p in sim.cache_file.parent.iterdir()] == [sim.cache_file.name]
    options = {"cache_dir": str(cache), **FAST_FIT}
    again = simulator("response_model", synthetic_data, truth_embeddings(synthetic_data), **options)
    assert again.from_cache and again.cache_file == sim.cache_file
    np.testing.assert_array_equal(again.model.item_vec, sim.model.item_vec)
    # Leave options do not change the fitted model; the embeddings do.
    calmer = simulator(
        "response_model",
        synthetic_data,
        truth_embeddings(synthetic_data),
        leave_bias=-5.0,
        **options,
    )
    assert calmer.from_cache
    other = truth_embeddings(synthetic_data) * 2
    assert (
        simulator("response_model", synthetic_data, other, **options).cache_file != sim.cache_file
    )


def test_an_unreadable_cache_file_is_refitted(synthetic_data: RecData, tmp_path: Path) -> None:
    options = {"cache_dir": str(tmp_path), **FAST_FIT, "steps": 20}
    emb = truth_embeddings(synthetic_data)
    first = simulator("response_model", synthetic_data, emb, **options)
    first.cache_file.write_bytes(b"not an npz file")
    second = simulator("response_model", synthetic_data, emb, **options)
    assert not second.from_cache
    # Seeded: the same fit, up to float rounding in multi-threaded sums.
    np.testing.assert_allclose(second.model.item_vec, first.model.item_vec, rtol=1e-4, atol=1e-5)
    assert simulator("response_model", synthetic_data, emb, **options).from_cache


def test_response_model_clicks_follow_position_bias_and_state(fitted) -> None:
    sim, _ = fitted
    item = 7
    sim.start_session(3)
    probs = sim.click_probability(3, np.full(4, item))
    np.testing.assert_allclose(probs, probs[0] * examination(4), rtol=1e-6)
    start_state = sim.state(3)
    np.testing.assert_allclose(start_state, sim.emb[sim.data.train_histories[3]].mean(0), rtol=1e-5)


def test_response_model_session_grows_with_clicks_and_resets(
    synthetic_data: RecData, fitted
) -> None:
    _, cache = fitted
    options = {"cache_dir": str(cache), **FAST_FIT, "leave_bias": -50.0, "leave_per_click": 0.0}
    sim = simulator("response_model", synthetic_data, truth_embeddings(synthetic_data), **options)
    assert sim.from_cache
    # A click model under which every examined item is clicked, to drive the session.
    sim.model = ClickModel(np.zeros_like(sim.model.item_vec), np.full(synthetic_data.n_items, 50.0))
    sim.start_session(5)
    history = list(synthetic_data.train_histories[5])
    response = sim.respond(5, np.array([11]), RNG)  # slot 0 is always examined: a click
    assert response.clicks.tolist() == [True] and not response.leave
    np.testing.assert_allclose(sim.state(5), sim.emb[[*history, 11]].mean(0), rtol=1e-5)
    sim.start_session(5)
    np.testing.assert_allclose(sim.state(5), sim.emb[history].mean(0), rtol=1e-5)


def test_leave_probability_is_logistic_in_step_and_clicks(synthetic_data: RecData, fitted) -> None:
    _, cache = fitted
    options = {"cache_dir": str(cache), **FAST_FIT}
    custom = simulator(
        "response_model",
        synthetic_data,
        truth_embeddings(synthetic_data),
        leave_bias=0.0,
        leave_per_step=1.0,
        leave_per_click=-1.0,
        **options,
    )
    assert custom.leave_probability(2, 1) == pytest.approx(1 / (1 + np.exp(-1.0)))
    assert custom.leave_probability(0, 0) == pytest.approx(0.5)
    assert custom.leave_probability(0, 3) == pytest.approx(1 / (1 + np.exp(3.0)))


def test_response_model_users_leave_and_come_back_fresh(fitted) -> None:
    sim, _ = fitted
    rng = np.random.default_rng(2)
    lengths = []
    for user in range(30):
        sim.start_session(user)
        slates = 1
        while not sim.respond(user, rng.choice(sim.data.n_items, 4, replace=False), rng).leave:
            slates += 1
        lengths.append(slates)
        # The next slate opens a fresh session: the state forgets the clicks of the last one.
        fresh = sim.emb[sim.data.train_histories[user]].mean(0)
        np.testing.assert_allclose(sim.state(user), fresh, rtol=1e-5)
    assert 1 < np.mean(lengths) < 30


@pytest.mark.parametrize(("key", "value"), [("rank", 0), ("steps", 0), ("learning_rate", 0.0)])
def test_response_model_rejects_bad_options(
    key: str, value: float, synthetic_data: RecData
) -> None:
    with pytest.raises(PluginError, match=f"simulator 'response_model': {key}"):
        simulator(
            "response_model", synthetic_data, truth_embeddings(synthetic_data), **{key: value}
        )


def test_pooled_auc_counts_ties_half() -> None:
    assert pooled_auc(np.array([2.0, 1.0]), np.array([1.0, 0.0])) == pytest.approx(0.875)
    assert pooled_auc(np.array([0.0]), np.array([1.0])) == 0.0


# --- ML-100K --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory: pytest.TempPathFactory) -> RecData:
    if not (ML100K / "u.data").is_file():
        pytest.skip("MovieLens-100K is not beside the checkout")
    dataset = MovieLensDataset(MovieLensDataset.Config(path=str(ML100K)))
    return dataset.load(seed=0, cache_dir=tmp_path_factory.mktemp("ml100k"))


def genre_embeddings(data: RecData) -> torch.Tensor:
    """Cheap content embeddings for a fast test: genre flags and release decade, normalised."""
    genres = np.asarray(data.item_attributes["genres"], dtype=np.float32)
    year = np.asarray(data.item_attributes["year"], dtype=np.float32)
    decade = np.eye(10, dtype=np.float32)[np.clip((year - 1920) // 10, 0, 9).astype(int)]
    emb = np.concatenate([genres, 0.5 * decade], axis=1)
    return torch.nn.functional.normalize(torch.as_tensor(emb), dim=1)


@needs_ml100k
def test_response_model_click_auc_on_ml100k(ml100k: RecData, tmp_path: Path) -> None:
    options = {"cache_dir": str(tmp_path), **FAST_FIT}
    sim = simulator("response_model", ml100k, genre_embeddings(ml100k), **options)
    auc = sim.heldout_auc(target="test")
    print(
        f"ML-100K held-out click AUC (genre embeddings): {auc.auc:.4f}, per user {auc.user_auc:.4f}"
    )
    assert auc.n_users == 943
    assert auc.auc >= 0.75


@needs_ml100k
@pytest.mark.slow
def test_response_model_click_auc_on_ml100k_with_minilm(ml100k: RecData, tmp_path: Path) -> None:
    encoder = registry.create(
        "encoder", {"name": "hf"}, cache_dir=tmp_path, device=torch.device("cpu")
    )
    emb = encoder.encode(ml100k.item_text)
    sim = simulator("response_model", ml100k, emb, cache_dir=str(tmp_path))  # the defaults
    auc = sim.heldout_auc(target="test")
    print(f"ML-100K held-out click AUC (MiniLM): {auc.auc:.4f}, per user {auc.user_auc:.4f}")
    assert auc.auc >= 0.75


def test_replay_on_ml100k_reports_real_ratings(ml100k: RecData) -> None:
    no_emb = torch.zeros(ml100k.n_items, 1)  # replay reads no embeddings
    config = ReplaySimulator.Config(start="end", horizon=2)
    replay = ReplaySimulator(config, data=ml100k, item_emb=no_emb)
    log = ml100k.interactions
    user = 0
    rows = np.flatnonzero(log.user == user)
    valid, test = ml100k.split.valid_item[user], ml100k.split.test_item[user]
    replay.start_session(user)
    assert replay.future(user) == {
        int(valid): float(log.value[rows[-2]]),
        int(test): float(log.value[rows[-1]]),
    }
