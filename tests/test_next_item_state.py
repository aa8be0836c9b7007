"""Sequence states that learn from item ids (`state.item_ids`) and from a next-item loss
(`state.next_item_weight`), trained with the agents through imitation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.tensorboard import SummaryWriter

from marlrec.data import Histories
from marlrec.pipeline import Pipeline, build
from marlrec.registry import PluginError, instantiate, load
from marlrec.settings import TrainRun
from marlrec.states.sequence import SequenceState
from marlrec.training.imitation import (
    imitate,
    imitation_losses,
    imitation_optimizer,
    logged_source,
)
from tests.conftest import SMALL, compose_config

ITEM_DIM = 6
N_ITEMS = 10
SEQUENCE_STATES = ["gru", "transformer"]
# A catalog whose users move between related items: the next item is predictable.
SEQUENTIAL = [
    *SMALL,
    "data.momentum=3.0",
    "state=transformer",
    "state.hidden=16",
    "state.item_ids=true",
    "state.next_item_weight=1.0",
    "state.dropout=0.0",
    "agent.hidden=16",
]


def make(name: str, **options: object) -> SequenceState:
    cls = load("state", name)
    config = cls.Config(**{"hidden": 8, "max_len": 5, "dropout": 0.0, **options})
    state = cls(config, item_dim=ITEM_DIM, n_items=N_ITEMS)
    with torch.no_grad():  # as training would leave the zero-initialised output layer
        state.output.weight.normal_()
    return state


@pytest.mark.parametrize("name", SEQUENCE_STATES)
def test_item_ids_tell_apart_items_with_the_same_embedding(name: str) -> None:
    torch.manual_seed(0)
    history = torch.randn(1, 3, ITEM_DIM).expand(2, -1, -1)  # the same embeddings twice
    lengths = torch.tensor([3, 3])
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    with_ids = make(name, item_ids=True)(history, lengths, ids)
    assert not torch.allclose(with_ids[0], with_ids[1])
    without = make(name)(history, lengths, ids)
    torch.testing.assert_close(without[0], without[1])


@pytest.mark.parametrize("name", SEQUENCE_STATES)
def test_items_added_after_training_read_the_unknown_row(name: str) -> None:
    """Ids beyond the table (`marlrec add-items`) give a finite state, as an unknown id does."""
    torch.manual_seed(1)
    state = make(name, item_ids=True)
    item_emb = torch.randn(N_ITEMS + 5, ITEM_DIM)  # five items joined the catalog
    added = Histories.pack([np.array([2, N_ITEMS + 1, N_ITEMS + 4])])
    out = state.from_histories(added, item_emb)
    assert torch.isfinite(out).all()
    ids = torch.tensor([[2, N_ITEMS + 1, N_ITEMS + 4]])
    unknown = state(item_emb[ids], torch.tensor([3]), torch.tensor([[2, -1, -1]]))
    torch.testing.assert_close(out, unknown)
    loss = state.next_item_loss(torch.tensor([[N_ITEMS + 1, 2, N_ITEMS + 4]]), item_emb)
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"item_ids": True}, r"^state 'gru': item_ids needs the catalog's size"),
        ({"next_item_weight": -1.0}, r"^state 'gru': next_item_weight must be >= 0, got -1.0$"),
    ],
)
def test_bad_options_are_one_clear_line(options: dict[str, object], message: str) -> None:
    cls = load("state", "gru")
    with pytest.raises(PluginError, match=message):
        instantiate("state", "gru", cls, cls.Config(**options), item_dim=ITEM_DIM)


def test_next_item_loss_is_off_by_default(small_pipeline: Pipeline) -> None:
    p = small_pipeline
    source = logged_source(p.env, p.data.train_histories, 0)
    batch = source.choices(np.arange(64), np.random.default_rng(0))
    assert imitation_losses(p.agent, batch).next_item is None


@pytest.fixture(scope="module")
def sequential(offline_cache: Path) -> Pipeline:
    return build(compose_config(SEQUENTIAL))


def state_of(p: Pipeline) -> SequenceState:
    state = p.agent.scoring_network(0).state_model
    assert isinstance(state, SequenceState) and state.item_id_emb is not None
    return state


def test_next_item_loss_falls_and_trains_the_state(sequential: Pipeline) -> None:
    p = sequential
    state = state_of(p)
    source = logged_source(p.env, p.data.train_histories, 0)
    rng = np.random.default_rng(0)
    held = source.choices(rng.integers(0, len(source), 256), rng)
    before = imitation_losses(p.agent, held)
    assert before.next_item is not None and before.next_item > 0
    optimizer = imitation_optimizer(p.agent, 0.01)
    initial = {k: v.detach().clone() for k, v in state.named_parameters()}
    for _ in range(30):
        batch = source.choices(rng.integers(0, len(source), 64), rng)
        loss = imitation_losses(p.agent, batch)
        optimizer.zero_grad()
        loss.total.backward()
        optimizer.step()
    after = imitation_losses(p.agent, held)
    assert after.next_item is not None and after.next_item < before.next_item - 0.1
    for name, value in state.named_parameters():
        assert not torch.equal(value, initial[name]), f"{name} did not learn"


def test_imitation_reports_the_next_item_loss(sequential: Pipeline, tmp_path: Path) -> None:
    p = sequential
    run = TrainRun(
        trainer=dataclasses.replace(p.trainer, imitation_steps=5),
        logger=p.logger,
        seed=0,
        writer=SummaryWriter(str(tmp_path)),
        save_checkpoint=lambda epoch: None,
        save_best=lambda: None,
    )
    summary = imitate(p.agent, p.env, run)
    assert summary["imitation_next_item_loss"] > 0
    assert np.isfinite(summary["imitation_loss"])


def test_a_checkpoint_keeps_the_id_embeddings(sequential: Pipeline) -> None:
    saved = sequential.agent.state_dict()
    fresh = build(compose_config([*SEQUENTIAL, "seed=1"]))
    before = state_of(fresh).item_id_emb.weight.detach().clone()  # type: ignore[union-attr]
    fresh.agent.load_state_dict(saved)
    loaded = state_of(fresh).item_id_emb.weight  # type: ignore[union-attr]
    expected = state_of(sequential).item_id_emb.weight  # type: ignore[union-attr]
    assert not torch.equal(before, expected)
    torch.testing.assert_close(loaded, expected)


@pytest.mark.slow
def test_items_added_to_a_trained_run_are_served(tmp_path: Path, offline_cache: Path) -> None:
    """`marlrec add-items` on a run whose state learnt item ids: the new items are beyond the
    id table, and a history holding them is still served."""
    from marlrec import cli
    from marlrec.recommend import AddedItems
    from marlrec.serve.service import Query, Service
    from tests.test_add_items import NEW_ITEMS
    from tests.test_serve import TINIEST
    from tests.test_train_e2e import marlrec

    run = tmp_path / "run"
    run.mkdir()
    options = ["state=transformer", "state.hidden=8", "state.item_ids=true"]
    marlrec("train", *TINIEST, *options, f"hydra.run.dir={run}", cache=offline_cache, cwd=run)
    items = tmp_path / "new_items.csv"
    items.write_text(NEW_ITEMS)
    assert cli.main(["add-items", f"run_dir={run}", f"file={items}"]) == 0
    service = Service.from_run(run, batching=False)
    n_items = AddedItems.load(run).base_items
    assert state_of(service.p).item_id_emb.num_embeddings == n_items  # type: ignore[union-attr]
    found = service.answer(Query(k=5, history=(n_items, n_items + 1, 0)))
    assert len(found.placements) == 5
