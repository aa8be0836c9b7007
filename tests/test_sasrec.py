"""SASRec's two losses and early stop, the `sasrec` retriever, `union`, and the pools' recall."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from marlrec import fitted
from marlrec.baselines.sasrec import SASRecBaseline, SASRecBCEBaseline
from marlrec.baselines.simple import PopularityBaseline
from marlrec.data import Histories, RecData
from marlrec.datasets.synthetic import SyntheticDataset
from marlrec.evaluation.harness import EvalConfig, ScoreRanker, baseline_ranker, ranking_eval
from marlrec.models.sasrec import EarlyStop, SASRec, SASRecConfig, fit, valid_ndcg
from marlrec.pipeline import Pipeline
from marlrec.registry import PluginError
from marlrec.retrieval import union as union_module
from marlrec.retrieval.ease import EASERetriever
from marlrec.retrieval.recall import pool_recall
from marlrec.retrieval.sequential import SASRecRetriever
from marlrec.retrieval.union import UnionRetriever, union_scores
from marlrec.run import retrieval_recall

SMALL = {"hidden": 16, "inner": 32, "layers": 1, "max_len": 20, "lr": 0.01, "batch_size": 64}
VALID_NDCG = EvalConfig(metrics=["ndcg"], ks=[10])


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> RecData:
    """Users with topic tastes and a pull toward the previous item's topics."""
    config = SyntheticDataset.Config(n_users=300, n_items=150, momentum=3.0)
    return SyntheticDataset(config).load(seed=0, cache_dir=tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(autouse=True)
def fresh_fits(tmp_path: Path):
    """Each test fits anew, with its own disk cache."""
    fitted._memo.clear()
    fitted.use_cache_dir(tmp_path)
    yield
    fitted.use_cache_dir(None)
    fitted._memo.clear()


def harness_valid_ndcg(data: RecData, model: SASRec, max_len: int) -> float:
    ranker = ScoreRanker(lambda users, histories: model.score_histories(histories, max_len, 64))
    return ranking_eval(data, ranker, "valid", VALID_NDCG)["NDCG@10"]


def test_ce_sasrec_learns_above_popularity(data: RecData) -> None:
    pop = PopularityBaseline(PopularityBaseline.Config(), data=data, item_emb=None, seed=0)
    pop_ndcg = ranking_eval(data, baseline_ranker(pop), "valid", VALID_NDCG)["NDCG@10"]
    config = SASRecConfig(loss="ce", epochs=5, patience=0, show_progress=False, **SMALL)
    torch.manual_seed(0)
    model = SASRec(data.n_items, config)
    before = valid_ndcg(model, data, config)
    fit(model, data, config, seed=0)
    after = valid_ndcg(model, data, config)
    assert after > pop_ndcg > before
    # The training loop's validation figure is the evaluation harness's.
    assert after == pytest.approx(harness_valid_ndcg(data, model, config.max_len), abs=1e-6)


def test_bce_sasrec_learns(data: RecData) -> None:
    config = SASRecConfig(loss="bce", epochs=8, patience=0, show_progress=False, **SMALL)
    torch.manual_seed(0)
    model = SASRec(data.n_items, config)
    before = valid_ndcg(model, data, config)
    fit(model, data, config, seed=0)
    assert valid_ndcg(model, data, config) > 2 * before
    assert SASRecBCEBaseline.Config().loss == "bce" and SASRecBaseline.Config().loss == "ce"


def test_early_stop_keeps_the_best_check() -> None:
    model = torch.nn.Linear(1, 1)
    stop = EarlyStop(patience=2)
    for score, weight in [(0.1, 1.0), (0.3, 2.0), (0.2, 3.0), (0.25, 4.0)]:
        assert not stop.done
        torch.nn.init.constant_(model.weight, weight)
        stop.check(score, model)
    assert stop.done
    stop.restore(model)
    assert model.weight.item() == 2.0


def test_fit_stops_early_and_restores_the_best_weights(data: RecData) -> None:
    config = SASRecConfig(
        epochs=60, eval_every=2, patience=2, show_progress=False, **{**SMALL, "lr": 0.05}
    )
    torch.manual_seed(0)
    model = SASRec(data.n_items, config)
    history = fit(model, data, config, seed=0)
    checks = [row["valid_ndcg@10"] for row in history if "valid_ndcg@10" in row]
    assert len(history) < 60 and len(history) % 2 == 0  # stopped at a check, every 2 epochs
    assert max(checks) > checks[-1]  # the last checks were worse ...
    assert valid_ndcg(model, data, config) == pytest.approx(max(checks), abs=1e-9)  # ... undone


def test_next_item_logits_are_the_full_forwards_at_the_last_position() -> None:
    torch.manual_seed(0)
    model = SASRec(40, SASRecConfig(**{**SMALL, "layers": 2})).eval()
    lengths = torch.tensor([1, 7, 16, 13])  # the last 4 columns are padding only
    sequences = torch.randint(1, 41, (4, 20))
    sequences[torch.arange(20)[None, :] >= lengths[:, None]] = 0  # right padding
    with torch.no_grad():
        full = model.forward(sequences)[torch.arange(4), lengths - 1]
        torch.testing.assert_close(
            model.next_item_logits(sequences, lengths), model.logits(full), atol=1e-5, rtol=0
        )


def test_retriever_pools_are_the_models_best_unconsumed_items(data: RecData) -> None:
    config = SASRecRetriever.Config(epochs=3, patience=0, show_progress=False, **SMALL)
    retriever = SASRecRetriever(config, data=data, item_emb=torch.zeros(data.n_items, 1))
    histories = [data.train_histories[u] for u in range(6)]
    packed = Histories.pack(histories)
    scores = retriever.scores(torch.zeros(6, 1), packed)
    assert scores.shape == (6, data.n_items) and scores.abs().max() <= 1.0
    logits = retriever.model.score_histories(histories, config.max_len, 64)
    for row, history in enumerate(histories):
        logits[row, history] = -torch.inf
    pools = scores.topk(100, dim=1).indices
    torch.testing.assert_close(pools, logits.topk(100, dim=1).indices)
    for row, history in enumerate(histories):
        assert not set(pools[row].tolist()) & set(history.tolist())


def test_retriever_and_baseline_share_one_fit(
    data: RecData, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = fitted.fitted

    def counting(name: str, key: str, fit_it):
        return real(name, key, lambda: calls.append(name) or fit_it())

    monkeypatch.setattr("marlrec.models.sasrec.fitted", counting)
    options = {"epochs": 2, "patience": 0, "show_progress": False, **SMALL}
    emb = torch.zeros(data.n_items, 1)
    retriever = SASRecRetriever(SASRecRetriever.Config(seed=4, **options), data=data, item_emb=emb)
    baseline = SASRecBaseline(SASRecBaseline.Config(**options), data=data, item_emb=emb, seed=4)
    assert calls == ["sasrec"]
    for a, b in zip(retriever.model.parameters(), baseline.model.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    SASRecBaseline(SASRecBaseline.Config(**options), data=data, item_emb=emb, seed=5)
    assert calls == ["sasrec", "sasrec"]  # another seed is another fit


def test_union_takes_turns_without_duplicates() -> None:
    # Two members over 6 items; the user consumed item 0.
    first = torch.tensor([[0.9, 0.8, 0.7, 0.1, 0.0, -0.5]])
    second = torch.tensor([[1.0, 0.2, 0.9, 0.8, 0.3, 0.0]])
    consumed = Histories.pack([np.array([0])])
    merged = union_scores([first, second], consumed, size=4)
    # Round r offers each member's r-th best unconsumed item, the first member first:
    # round 0: 1 (first), 2 (second); round 1: 2 (taken), 3; round 2: 3 (taken), 4.
    assert merged.topk(4).indices[0].tolist() == [1, 2, 3, 4]
    assert merged[0, 0] == -1.0 and merged.abs().max() <= 1.0


def test_union_pool_has_the_requested_size(data: RecData) -> None:
    sections = [{"name": "ease"}, {"name": "content"}]
    emb = torch.randn(data.n_items, 8, generator=torch.Generator().manual_seed(0))
    union = UnionRetriever(
        UnionRetriever.Config(members=sections, size=120, merge="turns"), data=data, item_emb=emb
    )
    histories = [data.train_histories[u] for u in range(20)]
    packed = Histories.pack(histories)
    scores = union.scores(torch.randn(20, 8), packed)
    for row, history in enumerate(histories):
        in_pool = (scores[row] > 0).nonzero().flatten().tolist()
        expected = min(120, data.n_items - len(set(history.tolist())))
        assert len(in_pool) == len(set(in_pool)) == expected
        assert not set(in_pool) & set(history.tolist())
    with pytest.raises(PluginError, match=r"retrieval\.size must be at least 1"):
        UnionRetriever.Config(size=0)


@pytest.mark.parametrize("comparisons", [union_module.COMPARISONS, 7])  # 7: a row a chunk
def test_union_features_give_each_members_score_and_rank(
    data: RecData, comparisons: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(union_module, "COMPARISONS", comparisons)
    sections = [{"name": "ease"}, {"name": "content"}]
    emb = torch.randn(data.n_items, 8, generator=torch.Generator().manual_seed(0))
    config = UnionRetriever.Config(members=sections, size=30, merge="first", features=True)
    union = UnionRetriever(config, data=data, item_emb=emb)
    assert union.n_features == 4
    packed = Histories.pack([data.train_histories[u] for u in range(10)])
    states = torch.randn(10, 8)
    merged = union.scores(states, packed)
    candidates = merged.topk(5, dim=1).indices
    features = union.candidate_features(states, packed, candidates)
    assert features.shape == (10, 5, 4)
    for number, member in enumerate(union.members):
        own = member.scores(states, packed)
        own[packed.rows(), packed.items] = -torch.inf
        torch.testing.assert_close(features[..., 2 * number], own.gather(1, candidates))
        # Rank r among the unconsumed items, as 1 - log(1 + r) / log(1 + n_items).
        above = (own[:, None, :] > own.gather(1, candidates)[..., None]).sum(-1)
        expected = 1.0 - torch.log1p(above.float()) / np.log1p(data.n_items)
        torch.testing.assert_close(features[..., 2 * number + 1], expected)
    # `first`: the pool is the first member's (EASE's) ranking; its best items rank 1.0.
    assert torch.equal(features[:, 0, 1], torch.ones(10))
    # Features off: none, and the observation layout keeps its size.
    config = UnionRetriever.Config(members=sections, features=False)
    plain = UnionRetriever(config, data=data, item_emb=emb)
    assert plain.n_features == 0
    assert plain.candidate_features(states, packed, candidates).shape == (10, 5, 0)
    with pytest.raises(PluginError, match=r"retrieval\.merge must be turns, mean or first"):
        UnionRetriever.Config(merge="max")  # type: ignore[arg-type]


def test_union_mean_merge_ranks_by_the_members_mean_score(data: RecData) -> None:
    sections = [{"name": "ease"}, {"name": "content"}]
    emb = torch.randn(data.n_items, 8, generator=torch.Generator().manual_seed(0))
    union = UnionRetriever(
        UnionRetriever.Config(members=sections, merge="mean"), data=data, item_emb=emb
    )
    packed = Histories.pack([data.train_histories[u] for u in range(10)])
    states = torch.randn(10, 8)
    merged = union.scores(states, packed)
    mean = (union.members[0].scores(states, packed) + union.members[1].scores(states, packed)) / 2
    fresh = ~torch.zeros_like(mean, dtype=torch.bool).index_put_(
        (packed.rows(), packed.items), torch.tensor(True)
    )
    torch.testing.assert_close(merged[fresh], mean.clamp(-1, 1)[fresh])
    assert bool((merged[~fresh] == -1.0).all())


def test_pool_recall_counts_held_out_items_in_the_pools(data: RecData) -> None:
    ease = EASERetriever(EASERetriever.Config(), data=data, item_emb=torch.zeros(data.n_items, 1))
    no_states = lambda h: torch.zeros(len(h), 1)  # noqa: E731
    assert pool_recall(ease, data, no_states, data.n_items, "test") == 1.0
    recall_100 = pool_recall(ease, data, no_states, 100, "test")
    recall_10 = pool_recall(ease, data, no_states, 10, "test")
    assert 0 < recall_10 < recall_100 < 1

    # Recall at 10 of a retriever is its HR@10 as a ranker of the same scores.
    def score(users: np.ndarray, histories: list[np.ndarray]) -> torch.Tensor:
        return ease.scores(torch.zeros(len(users), 1), Histories.pack(histories))

    hr = ranking_eval(data, ScoreRanker(score), "test", EvalConfig(metrics=["hr"], ks=[10]))
    assert recall_10 == pytest.approx(hr["HR@10"], abs=1e-6)


def test_a_run_reports_its_pools_recall(small_pipeline: Pipeline) -> None:
    size = small_pipeline.env.spec.layout.n_candidates
    recalls = retrieval_recall(small_pipeline)
    assert set(recalls) == {f"valid/Recall@{size}", f"test/Recall@{size}"}
    assert all(0 <= value <= 1 for value in recalls.values())


def test_fitting_leaves_the_global_random_state_alone(data: RecData) -> None:
    config = SASRecConfig(epochs=1, patience=0, show_progress=False, **SMALL)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    SASRecBaseline(config, data=data, item_emb=torch.zeros(data.n_items, 1), seed=0)
    torch.testing.assert_close(torch.rand(3), expected)
