"""Metrics, ties and protocols against hand-computed rankings."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from marlrec import registry
from marlrec.data import Interactions, RecData, Split, leave_one_out
from marlrec.evaluation.harness import (
    EvalConfig,
    ScoreRanker,
    baseline_ranker,
    per_user_accuracy,
    policy_scores,
    ranking_eval,
)
from marlrec.evaluation.metrics import (
    METRICS,
    MetricContext,
    RankedChunk,
    RankingAccumulator,
    hit_positions,
    ranking_metrics,
    select,
    session_results,
)
from marlrec.evaluation.ranking import HeldOut, sample_negatives, top_k
from marlrec.registry import MarlrecError, PluginError

LOG3, LOG5 = math.log2(3), math.log2(5)


def test_top_k_breaks_ties_by_item_id() -> None:
    scores = torch.tensor(
        [
            [1.0, 3.0, 3.0, 2.0, 3.0],  # three-way tie at the top, cut inside it
            [0.0, 0.0, 0.0, 0.0, 0.0],  # all tied
            [5.0, 4.0, 3.0, 2.0, 1.0],  # no ties
        ]
    )
    assert top_k(scores, 2).tolist() == [[1, 2], [0, 1], [0, 1]]
    assert top_k(scores, 4).tolist() == [[1, 2, 4, 3], [0, 1, 2, 3], [0, 1, 2, 3]]
    assert top_k(scores, 5)[0].tolist() == [1, 2, 4, 3, 0]


def test_top_k_ties_hold_on_a_large_row() -> None:
    scores = torch.zeros(3, 1683, dtype=torch.float64)
    scores[:, [5, 50, 500, 900, 1200, 1600]] = 1.0
    expected = [5, 50, 500, 900, 1200, 1600, 0, 1, 2, 3]
    assert top_k(scores, 10).tolist() == [expected] * 3


@pytest.mark.parametrize("kind", ["distinct", "few values", "masked", "tied above the cut"])
def test_top_k_is_a_stable_sort_by_score_then_id(kind: str) -> None:
    generator = torch.Generator().manual_seed(7)
    if kind == "few values":  # ties everywhere, across the cut too
        scores = torch.randint(0, 6, (64, 300), generator=generator).float()
    else:
        scores = torch.rand(64, 300, generator=generator)
    if kind == "tied above the cut":  # each row's best three share a score, ids in any order
        best = scores.topk(3, dim=1).indices
        scores.scatter_(1, best[:, 1:], scores.gather(1, best[:, :1]).expand(-1, 2))
    if kind == "masked":  # rows with fewer finite items than k: -inf ties past the cut
        scores[::3, 5:] = -torch.inf
    for k in (1, 7, 10, 299):
        expected = scores.sort(dim=1, descending=True, stable=True).indices[:, :k]
        assert torch.equal(top_k(scores, k), expected), k


def test_score_ranker_leaves_a_scorer_s_view_untouched() -> None:
    row = torch.arange(6, dtype=torch.float32)
    ranker = ScoreRanker(lambda users, histories: row.expand(len(users), -1))
    top = ranker(np.array([0, 1]), [np.array([5])] * 2, 2)
    assert top.tolist() == [[4, 3]] * 2 and row.tolist() == [0, 1, 2, 3, 4, 5]


def test_ranking_one_user_by_popularity_leaves_the_counts_alone(tmp_path: Path) -> None:
    data = registry.create("data", {"name": "synthetic", "n_users": 30, "n_items": 50}).load(
        seed=0, cache_dir=tmp_path
    )
    counts = data.item_popularity.copy()
    pop = registry.create("baseline", {"name": "pop"}, data=data, item_emb=None, seed=0)
    for users in (np.array([0]), np.array([0, 1])):
        baseline_ranker(pop)(users, [np.arange(10)] * len(users), 5)
    np.testing.assert_array_equal(data.item_popularity, counts)


def chunk(top: list[list[int]], targets: list[list[int]], n_items: int = 10) -> RankedChunk:
    mask = torch.zeros(len(targets), n_items, dtype=torch.bool)
    for row, items in enumerate(targets):
        mask[row, items] = True
    popularity = np.array([3, 1] + [0] * (n_items - 2), dtype=np.float32)
    angles = torch.tensor([0.0, math.pi / 2, 0, 0, 0.0, 0.0, 0, 0, 0.0, math.pi])
    emb = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    return RankedChunk(torch.tensor(top), mask, MetricContext.build(popularity, emb, mask.device))


def evaluate(c: RankedChunk, names: list[str], ks: list[int]) -> dict[str, float]:
    accumulator = RankingAccumulator(select(names), ks)
    accumulator.add(c)
    return accumulator.results()


# User 0: targets {1, 3} hit at ranks 2 and 4; user 1: no target; user 2: target 5, missed.
HAND = chunk([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]], [[1, 3], [], [5]])
HAND_MASK = torch.zeros(3, 10, dtype=torch.bool)
HAND_MASK[0, [1, 3]] = HAND_MASK[2, 5] = True
ACCURACY = ["hr", "recall", "precision", "f1", "ndcg", "mrr", "map"]


def test_accuracy_metrics_by_hand_multi_target_and_no_target_user() -> None:
    got = evaluate(HAND, ACCURACY, [2, 4])
    # Averages run over users 0 and 2 (user 1 has nothing to hit); user 2 scores 0 everywhere.
    idcg2 = 1.0 + 1.0 / LOG3
    expected = {
        "HR@2": 1 / 2,
        "HR@4": 1 / 2,
        "Recall@2": (1 / 2) / 2,
        "Recall@4": 1.0 / 2,
        "Precision@2": (1 / 2) / 2,
        "Precision@4": (2 / 4) / 2,
        "F1@2": (2 * 0.5 * 0.5 / 1.0) / 2,
        "F1@4": (2 * 0.5 * 1.0 / 1.5) / 2,
        "NDCG@2": (1 / LOG3) / idcg2 / 2,
        "NDCG@4": (1 / LOG3 + 1 / LOG5) / idcg2 / 2,
        "MRR@2": (1 / 2) / 2,
        "MRR@4": (1 / 2) / 2,
        "MAP@2": (1 / 2) / 2 / 2,  # precision 1/2 at the hit, over min(|T|, K) = 2
        "MAP@4": (1 / 2 + 2 / 4) / 2 / 2,
    }
    assert got == pytest.approx(expected)
    assert list(got)[:2] == ["HR@2", "HR@4"]  # metric order first, then k


def test_ndcg_ideal_dcg_is_capped_at_k() -> None:
    # Three targets, K = 2, both listed items hit: NDCG@2 is exactly 1.
    got = evaluate(chunk([[1, 2]], [[1, 2, 3]]), ["ndcg", "map", "recall"], [2])
    assert got == pytest.approx({"NDCG@2": 1.0, "MAP@2": 1.0, "Recall@2": 2 / 3})


def test_list_metrics_by_hand_include_users_without_targets() -> None:
    got = evaluate(HAND, ["coverage", "gini", "ild", "novelty"], [2])
    # Top-2 lists {0, 1}, {4, 5}, {8, 9}: six of ten items, each recommended once.
    assert got["Coverage@2"] == pytest.approx(0.6)
    # Sorted counts 0,0,0,0,1,1,1,1,1,1: sum (2i - 11) c_i over i = 5..10 = 24, / (10 * 6).
    assert got["Gini@2"] == pytest.approx(24 / 60)
    # Cosine distances: items 0, 1 orthogonal (1); 4, 5 equal (0); 8, 9 opposite (2).
    assert got["ILD@2"] == pytest.approx((1 + 0 + 2) / 3, abs=1e-6)
    # p(i) = (count + 1) / (4 + 10): items 0 and 1 have counts 3 and 1, the others none.
    info = {0: -math.log2(4 / 14), 1: -math.log2(2 / 14), "rest": -math.log2(1 / 14)}
    per_user = [(info[0] + info[1]) / 2, info["rest"], info["rest"]]
    assert got["Novelty@2"] == pytest.approx(sum(per_user) / 3, rel=1e-6)


def test_gini_is_zero_for_equal_counts_and_high_for_one_item() -> None:
    equal = evaluate(chunk([[0], [1]], [[0], [1]], n_items=2), ["gini"], [1])
    assert equal["Gini@1"] == pytest.approx(0.0)
    concentrated = evaluate(chunk([[0]] * 4, [[0]] * 4, n_items=4), ["gini"], [1])
    assert concentrated["Gini@1"] == pytest.approx(0.75)  # (n - 1) / n


def test_accumulating_chunks_equals_one_chunk() -> None:
    whole = evaluate(HAND, [*ACCURACY, "coverage", "ild"], [2, 4])
    split = RankingAccumulator(select([*ACCURACY, "coverage", "ild"]), [2, 4])
    for rows in ([0], [1, 2]):
        split.add(RankedChunk(HAND.top_items[rows], HAND_MASK[rows], HAND.ctx))
    assert split.results() == pytest.approx(whole)


def test_legacy_single_target_helpers() -> None:
    topk = torch.tensor([[5, 1, 2], [7, 8, 9], [3, 4, 6]])
    target = torch.tensor([5, 9, 1])  # rank 0, rank 2, miss
    assert hit_positions(topk, target).tolist() == [0, 2, -1]
    result = ranking_metrics(topk, target, ks=(1, 3))
    assert result["HR@1"] == pytest.approx(1 / 3)
    assert result["HR@3"] == pytest.approx(2 / 3)
    assert result["NDCG@3"] == pytest.approx((1.0 + 1.0 / math.log2(4)) / 3)
    left_out = ranking_metrics(torch.tensor([[1, 2], [3, 4]]), torch.tensor([2, -1]), ks=(2,))
    assert left_out == pytest.approx({"HR@2": 1.0, "NDCG@2": 1 / LOG3})
    with pytest.raises(ValueError, match="no user has a held-out item"):
        ranking_metrics(torch.tensor([[1]]), torch.tensor([-1]), ks=(1,))


def test_session_metrics_are_means() -> None:
    stats = {"return": [1.0, 3.0], "clicks": [0, 2], "depth": [4, 6]}
    metrics = select(["mean_return", "session_depth"])
    assert session_results(metrics, stats)  # type: ignore[arg-type] == {"mean_return": 2.0, "session_depth": 5.0}


# --- the harness on a tiny leave-one-out dataset ---------------------------------------------

# Per user, items in time order; the last is test, the one before valid (three or more items).
SEQUENCES = [[0, 1, 2, 3], [4, 5, 6], [7, 8], [1, 2, 3, 4, 5]]
N_ITEMS = 10


def tiny_data() -> RecData:
    users = np.repeat(np.arange(len(SEQUENCES)), [len(s) for s in SEQUENCES])
    items = np.concatenate(SEQUENCES)
    log = Interactions(
        user=users.astype(np.int64),
        item=items.astype(np.int64),
        time=np.arange(len(items), dtype=np.float64),
        value=np.ones(len(items), dtype=np.float32),
    )
    return RecData(
        name="tiny",
        n_users=len(SEQUENCES),
        n_items=N_ITEMS,
        interactions=log,
        item_text=[f"item {i}" for i in range(N_ITEMS)],
        split=leave_one_out(log, len(SEQUENCES)),
    )


def fixed_ranker(scores: torch.Tensor) -> ScoreRanker:
    return ScoreRanker(lambda users, histories: scores[torch.as_tensor(users)])


def test_ranking_eval_masks_history_and_skips_users_without_target() -> None:
    data = tiny_data()
    # Everyone scores items by id descending: 9, 8, 7, ...; user 0's test item 3 sits behind
    # 9..4 (none consumed by user 0), so at rank 7; user 1's test item 6 follows 9, 8, 7.
    scores = torch.arange(N_ITEMS, dtype=torch.float32).expand(len(SEQUENCES), -1)
    cfg = EvalConfig(metrics=["hr", "mrr", "coverage"], ks=[4, 10])
    got = ranking_eval(data, fixed_ranker(scores), "test", cfg)
    # Users with a test item: 0 (item 3 after 9..4: rank 7), 1 (item 6 after 9, 8, 7: rank 4)
    # and 3 (item 5 after 9..6: rank 5; user 3 consumed 1..4). User 2 has none.
    assert got["HR@4"] == pytest.approx(1 / 3)
    assert got["MRR@10"] == pytest.approx((1 / 7 + 1 / 4 + 1 / 5) / 3)
    # Top-4 lists over all four users: 9, 8, 7, 6, except user 2 (no test item, but ranked
    # for coverage), who consumed 7 and 8: 9, 6, 5, 4. Six distinct items.
    assert got["Coverage@4"] == pytest.approx(6 / N_ITEMS)
    assert got["MRR@4"] == pytest.approx((0 + 1 / 4 + 0) / 3)


def test_chunk_size_does_not_change_results() -> None:
    data = tiny_data()
    scores = torch.rand(len(SEQUENCES), N_ITEMS, generator=torch.Generator().manual_seed(1))
    emb = torch.randn(N_ITEMS, 3, generator=torch.Generator().manual_seed(2))
    one = EvalConfig(ks=[2, 5], chunk_users=1)
    everyone = EvalConfig(ks=[2, 5], chunk_users=64)
    a = ranking_eval(data, fixed_ranker(scores), "valid", one, item_emb=emb)
    b = ranking_eval(data, fixed_ranker(scores), "valid", everyone, item_emb=emb)
    assert a == pytest.approx(b)
    assert set(a) == {
        f"{m.label}@{k}" for m in EvalConfig().ranking_metrics() for k in (2, 5)
    }  # every ranking metric by default, sessions aside


def test_per_user_accuracy_is_each_user_s_part_of_the_mean() -> None:
    data = tiny_data()
    scores = torch.arange(N_ITEMS, dtype=torch.float32).expand(len(SEQUENCES), -1)
    cfg = EvalConfig(metrics=["hr", "mrr", "coverage"], ks=[4, 10], chunk_users=1)
    per_user = per_user_accuracy(data, fixed_ranker(scores), "test", cfg)
    # Users 0, 1 and 3 hold out a test item, at ranks 7, 4 and 5 (as above); coverage is not
    # a user's figure.
    assert set(per_user) == {"HR@4", "HR@10", "MRR@4", "MRR@10"}
    assert per_user["MRR@10"] == pytest.approx([1 / 7, 1 / 4, 1 / 5])
    assert per_user["HR@4"].tolist() == [0.0, 1.0, 0.0]
    means = ranking_eval(data, fixed_ranker(scores), "test", cfg)
    assert {key: values.mean() for key, values in per_user.items()} == pytest.approx(
        {key: means[key] for key in per_user}
    )
    sampled = dataclasses.replace(cfg, protocol="sampled", num_negatives=2)
    per_user = per_user_accuracy(data, fixed_ranker(scores), "test", sampled, seed=3)
    means = ranking_eval(data, fixed_ranker(scores), "test", sampled, seed=3)
    assert {key: values.mean() for key, values in per_user.items()} == pytest.approx(means)


def test_ild_without_embeddings_is_a_clear_error() -> None:
    scores = torch.zeros(len(SEQUENCES), N_ITEMS)
    with pytest.raises(MarlrecError, match="'ild' needs item embeddings"):
        ranking_eval(tiny_data(), fixed_ranker(scores), "test", EvalConfig(metrics=["ild"]))


def test_sampled_negatives_are_seeded_and_avoid_history_and_targets() -> None:
    excluded = torch.zeros(3, 50, dtype=torch.bool)
    excluded[:, :40] = True  # only 10 items left per row
    excluded[2, :] = True  # nothing left
    first = sample_negatives(excluded, 5, torch.Generator().manual_seed(0))
    again = sample_negatives(excluded, 5, torch.Generator().manual_seed(0))
    assert torch.equal(first, again)
    assert first.sum(dim=1).tolist() == [5, 5, 0]
    assert not (first & excluded).any()
    few = sample_negatives(excluded, 30, torch.Generator().manual_seed(0))
    assert few.sum(dim=1).tolist() == [10, 10, 0]


def test_sampled_protocol_keys_say_sampled_and_rank_among_negatives() -> None:
    data = tiny_data()
    # Each user scores their own test item 1 and everything else 0.
    scores = torch.zeros(len(SEQUENCES), N_ITEMS)
    for user, sequence in enumerate(SEQUENCES):
        if len(sequence) >= 3:
            scores[user, sequence[-1]] = 1.0
    cfg = EvalConfig(metrics=["hr", "ndcg", "coverage"], ks=[1], protocol="sampled")
    got = ranking_eval(data, fixed_ranker(scores), "test", cfg, seed=3)
    assert got == {"sampled/HR@1": 1.0, "sampled/NDCG@1": 1.0}  # no list metrics when sampled
    # Reversed: the target is the worst of 1 + 2 candidates, so it ranks third.
    cfg = EvalConfig(metrics=["mrr"], ks=[3], protocol="sampled", num_negatives=2)
    worst = ranking_eval(data, fixed_ranker(-scores), "test", cfg, seed=3)
    assert worst == {"sampled/MRR@3": pytest.approx(1 / 3)}


def test_sampled_protocol_from_a_ranker_without_scores_matches_scores() -> None:
    data = tiny_data()
    scores = torch.rand(len(SEQUENCES), N_ITEMS, generator=torch.Generator().manual_seed(5))
    with_scores = fixed_ranker(scores)

    def order_only(users: np.ndarray, histories: list[np.ndarray], k: int) -> torch.Tensor:
        return with_scores(users, histories, k)

    converted = policy_scores(order_only, np.arange(4), [np.array([], dtype=np.int64)] * 4, 10)
    assert torch.equal(converted.argsort(dim=1), scores.argsort(dim=1))
    cfg = EvalConfig(metrics=["hr", "ndcg"], ks=[1, 3], protocol="sampled", num_negatives=4)
    assert ranking_eval(data, order_only, "test", cfg, seed=1) == pytest.approx(
        ranking_eval(data, with_scores, "test", cfg, seed=1)
    )


def test_held_out_mask_reads_several_items_per_user() -> None:
    if "test" not in Split.__dataclass_fields__:
        pytest.skip("this data model holds one held-out item per user")
    data = tiny_data()
    test = Interactions(
        user=np.array([0, 0, 2], dtype=np.int64),
        item=np.array([7, 9, 1], dtype=np.int64),
        time=np.zeros(3),
        value=np.ones(3, dtype=np.float32),
    )
    split = Split(
        train=data.split.train,
        valid_item=data.split.valid_item,
        test_item=np.array([7, -1, 1, -1]),
        valid=None,
        test=test,
    )
    held = HeldOut.of(dataclasses.replace(data, split=split), "test")
    assert held.counts.tolist() == [2, 0, 1, 0]
    mask = held.mask(np.array([2, 0, 1]), N_ITEMS, torch.device("cpu"))
    assert [torch.nonzero(row).flatten().tolist() for row in mask] == [[1], [7, 9], []]


def test_eval_config_rejects_unknown_metrics_and_bad_cut_offs() -> None:
    with pytest.raises(PluginError, match=r"unknown metric 'ndgc' in eval\.metrics"):
        EvalConfig(metrics=["ndgc"])
    with pytest.raises(PluginError, match=r"eval\.ks"):
        EvalConfig(ks=[0])
    assert EvalConfig(protocol="sampled").key("valid", "ndcg") == "valid/sampled/NDCG@10"
    assert EvalConfig(ks=[20, 5]).key("test", "hr") == "test/HR@20"


def test_registry_names_are_the_config_names() -> None:
    assert set(EvalConfig().metrics) == set(METRICS)
    assert {"hr", "ndcg", "coverage", "ild", "novelty", "gini", "mean_return"} <= set(METRICS)


def test_held_out_falls_back_to_one_item_per_user() -> None:
    # A split that only knows `valid_item` / `test_item` (-1: none).
    split = SimpleNamespace(valid_item=np.array([4, -1, 2]), test_item=np.array([5, 6, -1]))
    held = HeldOut.of(SimpleNamespace(split=split, n_users=3), "valid")  # type: ignore[arg-type]
    assert held.counts.tolist() == [1, 0, 1]
    assert held.items.tolist() == [4, 2]
    targets = held.targets(np.array([2, 0]), 8, torch.device("cpu"))
    assert targets.hits(torch.tensor([[2, 4], [2, 4]])).tolist() == [[1.0, 0.0], [0.0, 1.0]]
