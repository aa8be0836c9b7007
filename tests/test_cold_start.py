"""Cold-start protocols: the reshaped splits, their errors, and who can rank cold items."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from marlrec.app import compose_config
from marlrec.baselines.content_knn import ContentKNNBaseline
from marlrec.baselines.simple import PopularityBaseline
from marlrec.data import RecData
from marlrec.evaluation.cold import cold_items, cold_users, draw
from marlrec.evaluation.harness import EvalConfig, baseline_ranker, ranking_eval
from marlrec.pipeline import Pipeline, configure
from marlrec.registry import MarlrecError, PluginError
from tests.conftest import SMALL


def pairs(part: object) -> set[tuple[int, int]]:
    return set(zip(part.user.tolist(), part.item.tolist(), strict=True))  # type: ignore[attr-defined]


def test_cold_items_have_no_training_interaction_and_are_the_only_targets(
    small_pipeline: Pipeline,
) -> None:
    data = small_pipeline.data
    cold_data = cold_items(data, 0.1, seed=3)
    split, before = cold_data.split, data.split
    cold_set = set(np.flatnonzero(draw(data.n_items, 0.1, 3)).tolist())
    assert len(cold_set) == round(0.1 * data.n_items)
    # Every training interaction of the drawn items is gone, every other one kept.
    assert pairs(split.train) == {(u, i) for u, i in pairs(before.train) if i not in cold_set}
    assert len(split.train) < len(before.train)
    for target in ("valid", "test"):
        held = split.held_out_interactions(target)
        assert len(held) > 0
        assert set(held.item.tolist()) <= cold_set  # the targets are cold items only
        was = before.held_out_interactions(target)
        assert pairs(held) == {(u, i) for u, i in pairs(was) if i in cold_set}


def test_cold_users_keep_their_last_interactions_and_alone_are_evaluated(
    small_pipeline: Pipeline,
) -> None:
    data = small_pipeline.data
    cold_data = cold_users(data, 0.2, history=5, seed=3)
    after = cold_data.train_histories
    cold = [u for u in range(data.n_users) if len(after[u]) < len(data.train_histories[u])]
    assert len(cold) == pytest.approx(0.2 * data.n_users, abs=3)
    for user in range(data.n_users):
        if user in cold:
            assert len(after[user]) == 5
            assert after[user].tolist() == data.train_histories[user][-5:].tolist()
        else:
            assert after[user].tolist() == data.train_histories[user].tolist()
    for target in ("valid", "test"):
        held = cold_data.split.held_out_interactions(target)
        assert len(held) > 0 and set(held.user.tolist()) <= set(cold)
    # The test history is the truncated training history, then the validation item.
    user = int(cold_data.split.test.user[0])
    assert cold_data.history_before(user, "test")[:5].tolist() == after[user].tolist()


def test_protocols_are_drawn_from_the_seed(small_pipeline: Pipeline) -> None:
    data = small_pipeline.data
    same = [cold_items(data, 0.1, seed=1).split.train.item for _ in range(2)]
    assert np.array_equal(*same)
    assert not np.array_equal(same[0], cold_items(data, 0.1, seed=2).split.train.item)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("eval.cold_item_share=0", "eval.cold_item_share must be a fraction between 0 and 1"),
        ("eval.cold_item_share=1.5", "eval.cold_item_share must be a fraction between 0 and 1"),
        ("eval.cold_user_share=-0.2", "eval.cold_user_share must be a fraction between 0 and 1"),
        ("eval.cold_user_history=0", "eval.cold_user_history must be at least 1"),
        ("eval.protocol=cold", "must be one of 'full', 'sampled', 'cold_items', 'cold_users'"),
    ],
)
def test_bad_cold_start_settings_are_one_line_errors(override: str, message: str) -> None:
    with pytest.raises(MarlrecError) as error:
        configure(compose_config([*SMALL, override]))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_a_share_too_small_for_any_target_is_one_line(small_pipeline: Pipeline) -> None:
    data = small_pipeline.data
    lonely = dataclasses.replace(
        data,
        split=dataclasses.replace(
            data.split, test=data.split.test.subset(np.zeros(len(data.split.test), dtype=bool))
        ),
    )
    with pytest.raises(MarlrecError, match=r"eval\.protocol=cold_items leaves no test target"):
        cold_items(lonely, 0.1, seed=0)


def test_only_text_reaches_cold_items(small_pipeline: Pipeline) -> None:
    """content_knn ranks cold items from their text and says so; pop cannot and says so."""
    p = small_pipeline
    data: RecData = cold_items(p.data, 0.1, seed=0)
    cfg = EvalConfig(metrics=["hr"], protocol="cold_items")
    knn = ContentKNNBaseline(ContentKNNBaseline.Config(), data=data, item_emb=p.item_emb, seed=0)
    pop = PopularityBaseline(None, data=data, item_emb=p.item_emb, seed=0)
    assert knn.scores_unseen_items and not pop.scores_unseen_items
    hits = {
        name: ranking_eval(data, baseline_ranker(b), "test", cfg)["HR@10"]
        for name, b in (("knn", knn), ("pop", pop))
    }
    assert hits["pop"] == 0.0  # cold items have no count: they rank last
    assert hits["knn"] > 0.0


def test_bad_share_is_rejected_by_the_config_class() -> None:
    with pytest.raises(PluginError, match=r"eval\.cold_user_share"):
        EvalConfig(cold_user_share=1.0)
