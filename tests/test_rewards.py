"""Reward plugins against small cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from marlrec import registry
from marlrec.data import Interactions, RecData, leave_one_out
from marlrec.pipeline import sections
from marlrec.registry import PluginError
from marlrec.rewards import SlateOutcome
from tests.conftest import compose_config

# (user, item, rating); time is the row order. User 0 holds out item 2 (valid, rated 5) and
# item 3 (test, rated 3); users 1 and 2 have fewer than three ratings and keep them in training.
# Training: item 0 rated 4, 5, 3 (mean 4); item 1 rated 2; item 2 rated 1; item 3 never.
LOG = ((0, 0, 4), (0, 1, 2), (0, 2, 5), (0, 3, 3), (1, 0, 5), (1, 2, 1), (2, 0, 3))
# Unnormalised on purpose: cosines are computed on directions.
EMB = torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 2.0], [-1.0, 0.0]])


def tiny_data(**attributes: np.ndarray) -> RecData:
    user, item, value = (np.array(col) for col in zip(*LOG, strict=True))
    interactions = Interactions(
        user=user.astype(np.int64),
        item=item.astype(np.int64),
        time=np.arange(len(LOG), dtype=np.float64),
        value=value.astype(np.float32),
    )
    return RecData(
        name="tiny",
        n_users=3,
        n_items=4,
        interactions=interactions,
        item_text=[f"item {i}" for i in range(4)],
        split=leave_one_out(interactions, 3),
        item_attributes=dict(attributes),
    )


def reward(name: str, data: RecData | None = None, **options: object):
    section = {"name": name, **options}
    return registry.create("reward", section, data=data or tiny_data(), item_emb=EMB)


def outcome(items, clicks=None, leave=False, ratings=None) -> SlateOutcome:
    items = np.asarray(items, dtype=np.int64)
    return SlateOutcome(
        user=0,
        items=items,
        roles=np.zeros(len(items), dtype=np.int64),
        clicks=np.zeros(len(items), bool) if clicks is None else np.asarray(clicks, bool),
        step=0,
        leave=leave,
        ratings=None if ratings is None else np.asarray(ratings, dtype=np.float32),
    )


def test_the_tiny_split_is_as_the_hand_computations_assume() -> None:
    data = tiny_data()
    assert data.split.valid_item.tolist() == [2, -1, -1]
    assert data.split.test_item.tolist() == [3, -1, -1]
    assert sorted(data.split.train.item.tolist()) == [0, 0, 0, 1, 2]


def test_rating_sums_clicked_items_falling_back_to_mean_training_rating() -> None:
    rating = reward("rating")
    # Clicked items 0 and 3: mean training rating 4, and 3 for item 3 (never rated: global
    # mean (4 + 2 + 5 + 1 + 3) / 5); the unclicked item 1 does not count.
    assert rating.score(outcome([0, 1, 3], [1, 0, 1])) == pytest.approx(7.0)
    # A reported rating wins; NaN in a clicked slot falls back; unclicked slots are ignored.
    reported = outcome([0, 1, 3], [1, 0, 1], ratings=[5.0, 1.0, np.nan])
    assert rating.score(reported) == pytest.approx(8.0)
    assert rating.score(outcome([0, 1], [0, 0], ratings=[5.0, 5.0])) == 0.0


def test_rating_normalize_divides_by_the_highest_training_rating() -> None:
    rating = reward("rating", normalize=True)
    assert rating.score(outcome([0, 1, 3], [1, 0, 1])) == pytest.approx(7.0 / 5.0)


def test_diversity_is_the_mean_pairwise_cosine_distance() -> None:
    diversity = reward("diversity")
    assert diversity.score(outcome([0, 1])) == pytest.approx(1.0)  # orthogonal
    # Pairs (0,1): 1 - 0; (0,3): 1 - (-1); (1,3): 1 - 0; mean 4 / 3.
    assert diversity.score(outcome([0, 1, 3])) == pytest.approx(4.0 / 3.0)
    assert diversity.score(outcome([0, 2])) == pytest.approx(1.0 - 1.0 / math.sqrt(2.0))
    assert diversity.score(outcome([2])) == 0.0
    assert diversity.score(outcome([0, 1], [1, 1])) == diversity.score(outcome([0, 1]))


def test_novelty_is_the_mean_self_information_of_laplace_smoothed_popularity() -> None:
    novelty = reward("novelty")
    # p = (count + 1) / (5 training interactions + 4 items): 4/9, 2/9, 2/9, 1/9.
    assert novelty.score(outcome([3])) == pytest.approx(math.log2(9.0))
    expected = (math.log2(9.0 / 4.0) + math.log2(9.0)) / 2.0
    assert novelty.score(outcome([0, 3])) == pytest.approx(expected)
    assert novelty.score(outcome([1, 2])) == pytest.approx(math.log2(9.0 / 2.0))


def test_coverage_counts_items_never_shown_before_in_the_run() -> None:
    coverage = reward("coverage")
    assert coverage.score(outcome([0, 1])) == 2.0
    assert coverage.score(outcome([1, 2])) == 1.0
    assert coverage.score(outcome([2, 1])) == 0.0
    assert coverage.score(outcome([3, 3])) == 1.0  # twice in one slate counts once
    coverage.reset()
    assert coverage.score(outcome([0, 1])) == 2.0


def test_coverage_share_divides_by_the_slate_size() -> None:
    coverage = reward("coverage", share=True)
    assert coverage.score(outcome([0, 1])) == 1.0
    assert coverage.score(outcome([0, 1, 2, 3])) == pytest.approx(0.5)


def test_revenue_sums_the_attribute_of_clicked_items_with_nan_as_zero() -> None:
    data = tiny_data(price=np.array([1.5, np.nan, 2.0, 10.0]))
    revenue = reward("revenue", data)
    assert revenue.score(outcome([0, 1, 2], [1, 1, 0])) == pytest.approx(1.5)
    assert revenue.score(outcome([3, 2], [1, 1])) == pytest.approx(12.0)
    margin = reward("revenue", tiny_data(margin=np.array([1, 2, 3, 4])), attribute="margin")
    assert margin.score(outcome([1, 3], [1, 1])) == pytest.approx(6.0)


def test_revenue_without_the_attribute_is_one_clear_error_at_construction() -> None:
    data = tiny_data(year=np.array([1990, 1991, 1992, 1993]))
    with pytest.raises(PluginError) as err:
        reward("revenue", data)
    message = str(err.value)
    assert "'price'" in message and "'tiny'" in message and "year" in message
    assert "\n" not in message


def test_revenue_on_a_non_numeric_attribute_is_refused() -> None:
    data = tiny_data(genres=np.zeros((4, 3)), title=np.array(["a", "b", "c", "d"]))
    for attribute in ("genres", "title"):
        with pytest.raises(PluginError, match=f"item attribute '{attribute}' must be one number"):
            reward("revenue", data, attribute=attribute)


def test_retention_is_one_while_the_user_stays() -> None:
    retention = reward("retention")
    assert retention.score(outcome([0, 1], [0, 0], leave=False)) == 1.0
    assert retention.score(outcome([0, 1], [1, 1], leave=True)) == 0.0


def test_every_reward_builds_from_its_yaml_defaults() -> None:
    names = ["click", "rating", "diversity", "novelty", "coverage", "revenue", "retention"]
    cfg = compose_config([f"reward=[{','.join(names)}]"])
    data = tiny_data(price=np.ones(4))
    built = {
        s["name"]: registry.create("reward", s, data=data, item_emb=EMB)
        for s in sections(cfg, "reward")
    }
    assert list(built) == names
    assert all(r.weight == 1.0 for r in built.values())
    slate = outcome([0, 3], [1, 0])
    assert {n: r.score(slate) for n, r in built.items()} == pytest.approx(
        {
            "click": 1.0,
            "rating": 4.0,
            "diversity": 2.0,
            "novelty": (math.log2(9.0 / 4.0) + math.log2(9.0)) / 2.0,
            "coverage": 2.0,
            "revenue": 1.0,
            "retention": 1.0,
        }
    )
