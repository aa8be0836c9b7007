from __future__ import annotations

import torch

from marlrec.registry import build_config
from marlrec.states.mean import MeanState


def make(item_dim: int = 3) -> MeanState:
    return MeanState(MeanState.Config(), item_dim=item_dim)


def test_dim_equals_item_dim_and_no_parameters() -> None:
    state = make(item_dim=7)
    assert state.dim == 7
    assert list(state.parameters()) == []


def test_masked_mean_ignores_padding() -> None:
    history = torch.tensor(
        [
            [[1.0, 2.0, 3.0], [3.0, 4.0, 5.0], [100.0, 100.0, 100.0]],
            [[-1.0, 0.0, 6.0], [9.0, 9.0, 9.0], [9.0, 9.0, 9.0]],
            [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [6.0, 0.0, 3.0]],
        ]
    )
    lengths = torch.tensor([2, 1, 3])
    expected = torch.tensor([[2.0, 3.0, 4.0], [-1.0, 0.0, 6.0], [3.0, 1.0, 2.0]])
    out = make()(history, lengths)
    assert out.shape == (3, 3)
    torch.testing.assert_close(out, expected)


def test_empty_history_gives_zeros() -> None:
    history = torch.full((2, 4, 3), 5.0)
    out = make()(history, torch.tensor([0, 4]))
    torch.testing.assert_close(out[0], torch.zeros(3))
    torch.testing.assert_close(out[1], torch.full((3,), 5.0))
    assert torch.isfinite(out).all()


def test_zero_length_padding_dimension() -> None:
    out = make()(torch.zeros(2, 0, 3), torch.tensor([0, 0]))
    torch.testing.assert_close(out, torch.zeros(2, 3))


def test_has_no_options() -> None:
    assert build_config("state", "mean", MeanState.Config, {}) == MeanState.Config()
