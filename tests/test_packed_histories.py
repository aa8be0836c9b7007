"""Packed histories and states computed from them: the same values as the padded reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from marlrec.data import Histories
from marlrec.registry import load
from marlrec.states import StateModel
from marlrec.states.mean import MeanState

ITEM_DIM = 6
N_ITEMS = 40


def random_histories(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    # Lengths from empty to far past any window, some items repeated.
    return [rng.integers(0, N_ITEMS, size=int(rng.integers(0, 90))) for _ in range(n)]


def padded_reference(histories: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(1, max(len(h) for h in histories))
    ids = torch.full((len(histories), longest), -1, dtype=torch.long)
    for b, h in enumerate(histories):
        ids[b, : len(h)] = torch.as_tensor(h)
    return ids, torch.tensor([len(h) for h in histories])


def test_pack_padded_last_and_select_agree_with_the_histories() -> None:
    histories = random_histories(30)
    packed = Histories.pack(histories)
    ids, lengths = packed.padded()
    expected_ids, expected_lengths = padded_reference(histories)
    assert torch.equal(ids, expected_ids) and torch.equal(lengths, expected_lengths)
    recent, kept = packed.last(7)
    for b, h in enumerate(histories):
        tail = h[max(0, len(h) - 7) :]
        assert kept[b] == len(tail)
        assert recent[b, : len(tail)].tolist() == tail.tolist()
        assert (recent[b, len(tail) :] == -1).all()
    rows = torch.tensor([5, 0, 5, 29])
    chosen = packed.select(rows)
    assert [chosen.padded()[0][i, : len(histories[r])].tolist() for i, r in enumerate(rows)] == [
        histories[r].tolist() for r in rows
    ]
    assert torch.equal(Histories.from_padded(ids, lengths).items, packed.items)
    assert torch.equal(packed.rows(), torch.repeat_interleave(torch.arange(30), lengths))


def test_prefixes_are_the_first_items_of_the_chosen_rows() -> None:
    histories = random_histories(30, seed=2)
    packed = Histories.pack(histories)
    rows = torch.tensor([3, 3, 0, 17, 29])
    # Empty, whole, and short prefixes, a row chosen twice.
    wanted = [0, len(histories[3]), 2, 1, 0]
    lengths = torch.tensor([min(n, len(histories[r])) for r, n in zip(rows, wanted, strict=True)])
    prefixes = packed.prefixes(rows, lengths)
    expected = Histories.pack([histories[r][:n] for r, n in zip(rows, lengths, strict=True)])
    for name in ("items", "offsets", "lengths"):
        assert torch.equal(getattr(prefixes, name), getattr(expected, name))


def test_empty_batch_and_all_empty_histories() -> None:
    packed = Histories.pack([np.empty(0, dtype=np.int64)] * 3)
    ids, kept = packed.last(4)
    assert (ids == -1).all() and (kept == 0).all()
    item_emb = torch.randn(N_ITEMS, ITEM_DIM)
    state = MeanState(MeanState.Config(), item_dim=ITEM_DIM)
    torch.testing.assert_close(state.from_histories(packed, item_emb), torch.zeros(3, ITEM_DIM))


def build(name: str) -> StateModel:
    cls = load("state", name)
    if name == "mean":
        return cls(cls.Config(), item_dim=ITEM_DIM)
    config = cls.Config(hidden=8, max_len=12, dropout=0.0)
    state = cls(config, item_dim=ITEM_DIM)
    with torch.no_grad():  # a trained-like output layer, so the sequence term matters
        state.output.weight.normal_()
        state.output.bias.normal_()
    return state.eval()


@pytest.mark.parametrize("name", ["mean", "gru", "transformer"])
def test_states_from_packed_histories_equal_forward_over_padding(name: str) -> None:
    torch.manual_seed(0)
    state = build(name)
    item_emb = torch.randn(N_ITEMS, ITEM_DIM)
    histories = random_histories(150)  # more rows than one padded chunk
    ids, lengths = padded_reference(histories)
    with torch.no_grad():
        reference = state(item_emb[ids.clamp(min=0)], lengths)
        packed = state.from_histories(Histories.pack(histories), item_emb)
    torch.testing.assert_close(packed, reference, rtol=1e-5, atol=1e-5)


def test_the_padded_default_serves_states_that_do_not_override_it() -> None:
    class Last(StateModel):
        """The last item's embedding: a third-party state with only `forward`."""

        Config = MeanState.Config

        @property
        def dim(self) -> int:
            return self.item_dim

        def forward(self, history: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            last = (lengths - 1).clamp(min=0)
            picked = history[torch.arange(len(history)), last]
            return picked.masked_fill((lengths == 0)[:, None], 0.0)

    item_emb = torch.randn(N_ITEMS, ITEM_DIM)
    histories = random_histories(150, seed=1)
    out = Last(Last.Config(), item_dim=ITEM_DIM).from_histories(Histories.pack(histories), item_emb)
    for b, h in enumerate(histories):
        expected = item_emb[h[-1]] if len(h) else torch.zeros(ITEM_DIM)
        torch.testing.assert_close(out[b], expected)
