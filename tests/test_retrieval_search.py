"""Top-M search over item vectors: exact in chunks (CPU and CUDA), approximate with FAISS."""

from __future__ import annotations

import dataclasses
import pickle
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from marlrec import registry
from marlrec.data import Histories
from marlrec.registry import PluginError
from marlrec.retrieval.search import IndexConfig, ItemSearch, exact_top, mask_consumed

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def catalog(
    n_items: int, dim: int = 16, n_users: int = 40, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, Histories]:
    """Unit item vectors around 32 cluster centres, user queries from their histories' means."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(32, dim, generator=generator)
    topic = torch.randint(0, 32, (n_items,), generator=generator)
    items = F.normalize(
        centres[topic] + 0.5 * torch.randn(n_items, dim, generator=generator), dim=1
    )
    rng = np.random.default_rng(seed)
    histories = [
        rng.choice(n_items, size=rng.integers(0, 30), replace=False) for _ in range(n_users)
    ]
    packed = Histories.pack(histories)
    queries = torch.stack(
        [items[torch.as_tensor(h)].mean(0) if len(h) else items[0] for h in histories]
    )
    return items, F.normalize(queries, dim=1), packed


@contextmanager
def no_host_sync(device: str) -> Iterator[None]:
    """On CUDA, any wait of the host on the device is an error inside this block."""
    if device != "cuda":
        yield
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("device", DEVICES)
def test_chunked_exact_search_equals_one_topk(device: str) -> None:
    items, queries, histories = catalog(1000)
    items, queries = items.to(device), queries.to(device)
    histories = Histories(
        *(t.to(device) for t in (histories.items, histories.offsets, histories.lengths))
    )
    scores = queries @ items.T
    scores[histories.rows(), histories.items] = -torch.inf
    expected = scores.topk(50, dim=1)
    for chunk in (1000, 999, 256, 37):
        with no_host_sync(device):
            ids, values = exact_top(queries, items, 50, histories, chunk)
        assert ids.device.type == device
        assert torch.equal(ids, expected.indices), chunk
        # A matrix product over a slice of the items may round its last bit differently.
        torch.testing.assert_close(values, expected.values, rtol=0, atol=1e-6)


def test_masking_a_block_sets_only_its_own_consumed_items() -> None:
    _, _, histories = catalog(300)
    whole = torch.zeros(len(histories), 300)
    mask_consumed(whole, histories)
    block = torch.zeros(len(histories), 100)
    mask_consumed(block, histories, first_item=100)
    assert torch.equal(block, whole[:, 100:200])
    assert int(torch.isinf(whole).sum()) == len(
        torch.unique(histories.rows() * 300 + histories.items)
    )


def test_faiss_finds_at_least_95_percent_of_the_exact_top_100() -> None:
    pytest.importorskip("faiss")
    items, queries, histories = catalog(20_000, dim=64, n_users=64)
    exact = exact_top(queries, items, 100, histories, chunk_items=4096)[0]
    found, scores = ItemSearch(items, IndexConfig(index="faiss")).top(queries, 100, histories)
    recall = np.mean(
        [len(set(a) & set(b)) / 100 for a, b in zip(found.tolist(), exact.tolist(), strict=True)]
    )
    assert recall >= 0.95
    assert bool(torch.all(scores[:, :-1] >= scores[:, 1:])), "best first"
    for row, history in enumerate(
        np.split(histories.items.numpy(), np.cumsum(histories.lengths.numpy())[:-1])
    ):
        assert not set(found[row].tolist()) & set(history.tolist()), "consumed items never return"


def test_faiss_rows_it_cannot_fill_are_searched_exactly() -> None:
    pytest.importorskip("faiss")
    items, queries, histories = catalog(400, n_users=8)
    # One list of 400 // 39 = 10 scanned: far fewer than the 150 asked for.
    search = ItemSearch(items, IndexConfig(index="faiss", nlist=10, nprobe=1))
    found, scores = search.top(queries, 150, histories)
    exact = exact_top(queries, items, 150, histories, chunk_items=4096)
    assert torch.equal(found, exact[0]) and torch.equal(scores, exact[1])


def test_faiss_missing_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss then raises ImportError
    with pytest.raises(PluginError, match=r"retrieval.index=faiss needs the faiss-cpu package"):
        ItemSearch(torch.randn(10, 4), IndexConfig(index="faiss"))


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"index": "hnsw"}, "retrieval.index"),
        ({"nprobe": 0}, "retrieval.nprobe"),
        ({"nlist": -1}, "retrieval.nlist"),
    ],
)
def test_index_options_are_checked(option: dict[str, object], message: str) -> None:
    with pytest.raises(PluginError, match=message):
        IndexConfig(**option)  # type: ignore[arg-type]


def test_content_retriever_top_is_the_masked_full_scores_top() -> None:
    items, queries, histories = catalog(500)
    retriever = registry.create("retrieval", {"name": "content"}, data=None, item_emb=items * 3.0)
    scores = retriever.scores(queries, histories)
    scores[histories.rows(), histories.items] = -torch.inf
    expected = scores.topk(20, dim=1)
    ids, values = retriever.top(queries, histories, 20)
    assert torch.equal(ids, expected.indices) and torch.equal(values, expected.values)


def test_an_env_on_a_faiss_index_probing_every_list_plays_as_on_the_exact_one(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    pytest.importorskip("faiss")
    from marlrec.envs.core import SlateConfig
    from marlrec.envs.slate import SlateEnvironment
    from tests.test_slate_env import context, data_fixture

    data = data_fixture("synthetic", tmp_path_factory)
    exact = context(data)
    faiss_retriever = registry.create(
        "retrieval", {"name": "content", "index": "faiss"}, data=data, item_emb=exact.item_emb
    )
    approximate = dataclasses.replace(exact, retriever=faiss_retriever)
    slates = []
    for ctx in (exact, approximate):
        vector = SlateEnvironment(SlateConfig(), ctx=ctx).make_vector(16)
        vector.reset(seed=list(range(16)))
        slates.append((vector.candidates.clone(), vector.cand_scores.clone()))
    # 1,000 items: 25 lists, every one probed by default, so the search is exhaustive.
    assert torch.equal(slates[0][0], slates[1][0])
    torch.testing.assert_close(slates[0][1], slates[1][1])


def test_a_search_with_a_built_index_pickles_and_rebuilds_it() -> None:
    pytest.importorskip("faiss")
    items, queries, histories = catalog(2000)
    search = ItemSearch(items, IndexConfig(index="faiss"))
    found = search.top(queries, 20, histories)
    copy = pickle.loads(pickle.dumps(search))  # as spawned env workers receive it
    assert copy.faiss_index is None
    again = copy.top(queries, 20, histories)
    assert torch.equal(found[0], again[0]) and torch.equal(found[1], again[1])
