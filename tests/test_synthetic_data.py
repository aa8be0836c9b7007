from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from marlrec.data import RecData
from marlrec.datasets.synthetic import MOODS, TOPICS, SyntheticDataset
from marlrec.registry import PluginError

SMALL = SyntheticDataset.Config(n_users=80, n_items=150, n_topics=6, max_interactions=20)


def load(
    config: SyntheticDataset.Config = SMALL, seed: int = 0, tmp: Path = Path("unused")
) -> RecData:
    return SyntheticDataset(config).load(seed=seed, cache_dir=tmp)


@pytest.fixture(scope="module")
def data() -> RecData:
    return load()


def test_same_seed_gives_identical_data(data: RecData, tmp_path: Path) -> None:
    again = load(seed=0, tmp=tmp_path)
    assert again.item_text == data.item_text
    for name in ("user", "item", "time", "value"):
        np.testing.assert_array_equal(
            getattr(again.interactions, name), getattr(data.interactions, name)
        )
    np.testing.assert_array_equal(again.split.test_item, data.split.test_item)
    np.testing.assert_array_equal(again.truth.user_taste, data.truth.user_taste)


def test_different_seed_gives_different_data(data: RecData) -> None:
    other = load(seed=1)
    assert other.item_text != data.item_text
    assert not np.array_equal(other.truth.user_taste, data.truth.user_taste)


def test_sizes_follow_config(data: RecData) -> None:
    assert (data.name, data.n_users, data.n_items) == ("synthetic", 80, 150)
    assert len(data.item_text) == 150
    counts = np.bincount(data.interactions.user, minlength=80)
    assert counts.min() >= SMALL.min_interactions
    assert counts.max() <= SMALL.max_interactions
    truth = data.truth
    assert truth.user_taste.shape[0] == 80
    assert truth.item_profile.shape[0] == 150
    assert truth.user_taste.shape[1] == truth.item_profile.shape[1] == 6 + len(MOODS)
    assert truth.item_quality.shape == (150,)
    assert truth.user_taste.dtype == truth.item_profile.dtype == np.float32


def test_ids_are_dense_and_values_implicit(data: RecData) -> None:
    inter = data.interactions
    np.testing.assert_array_equal(np.unique(inter.user), np.arange(data.n_users))
    assert inter.item.min() >= 0
    assert inter.item.max() < data.n_items
    assert inter.user.dtype == inter.item.dtype == np.int64
    assert inter.value.dtype == np.float32
    assert (inter.value == 1.0).all()


def test_interactions_sorted_with_strictly_increasing_times(data: RecData) -> None:
    inter = data.interactions
    assert (np.diff(inter.user) >= 0).all()
    same_user = np.diff(inter.user) == 0
    assert (np.diff(inter.time)[same_user] > 0).all()


def test_each_user_consumes_distinct_items(data: RecData) -> None:
    for history in data.interactions.histories(data.n_users):
        assert len(np.unique(history)) == len(history)


def test_split_holds_out_each_users_last_two_items(data: RecData) -> None:
    for user, history in enumerate(data.interactions.histories(data.n_users)):
        assert data.split.valid_item[user] == history[-2]
        assert data.split.test_item[user] == history[-1]
        np.testing.assert_array_equal(data.train_histories[user], history[:-2])
    assert len(data.split.train) == len(data.interactions) - 2 * data.n_users


def test_users_with_fewer_than_three_interactions_hold_nothing_out() -> None:
    config = SyntheticDataset.Config(n_users=60, n_items=50, min_interactions=1, max_interactions=4)
    data = load(config)
    counts = np.bincount(data.interactions.user, minlength=60)
    assert (counts < 3).any()
    assert (data.split.test_item[counts < 3] == -1).all()
    assert (data.split.valid_item[counts < 3] == -1).all()
    assert (data.split.test_item[counts >= 3] >= 0).all()


def test_item_texts_use_their_topics_vocabulary(data: RecData) -> None:
    topics = data.item_attributes["topic"]
    secondary = data.item_attributes["secondary_topic"]
    assert (topics != secondary).all()
    for text, main, side in zip(data.item_text, topics, secondary, strict=True):
        assert text.strip()
        assert TOPICS[main].label in text
        assert any(title in text for title in TOPICS[main].title_words)
        assert sum(subject in text for subject in TOPICS[main].subjects) >= 2
        assert f"a touch of {TOPICS[side].touch}" in text


def test_logged_items_follow_the_true_tastes(data: RecData) -> None:
    users = np.arange(data.n_users)
    truth = data.truth
    held_out = truth.affinity(users, data.split.test_item).mean()
    random_items = truth.affinity(users[:, None], np.arange(data.n_items)[None, :]).mean()
    assert held_out > random_items + 1.0


def test_users_mostly_consume_their_favourite_topics(data: RecData) -> None:
    favourite = data.truth.user_taste[:, :6].argmax(1)
    main_topic = data.item_attributes["topic"][data.interactions.item]
    share = (main_topic == favourite[data.interactions.user]).mean()
    assert share > 2 / 6  # chance would be 1/6


@pytest.mark.parametrize(
    "bad",
    [
        {"n_topics": 1},
        {"n_topics": len(TOPICS) + 1},
        {"min_interactions": 5, "max_interactions": 4},
        {"n_items": 10, "max_interactions": 11, "min_interactions": 2},
        {"taste_concentration": 0.0},
    ],
)
def test_invalid_config_is_a_plugin_error(bad: dict[str, object]) -> None:
    with pytest.raises(PluginError):
        SyntheticDataset(SyntheticDataset.Config(**bad))
