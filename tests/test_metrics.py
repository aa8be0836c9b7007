"""Ranking metrics against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from marlrec.evaluation.metrics import hit_positions, ranking_metrics


def test_hits_and_ndcg_by_hand() -> None:
    topk = torch.tensor([[5, 1, 2], [7, 8, 9], [3, 4, 6]])
    target = torch.tensor([5, 9, 1])  # rank 0, rank 2, miss
    assert hit_positions(topk, target).tolist() == [0, 2, -1]
    result = ranking_metrics(topk, target, ks=(1, 3))
    assert result["HR@1"] == pytest.approx(1 / 3)
    assert result["HR@3"] == pytest.approx(2 / 3)
    assert result["NDCG@1"] == pytest.approx(1 / 3)
    assert result["NDCG@3"] == pytest.approx((1.0 + 1.0 / math.log2(4)) / 3)


def test_users_without_a_held_out_item_are_left_out() -> None:
    topk = torch.tensor([[1, 2], [3, 4]])
    result = ranking_metrics(topk, torch.tensor([2, -1]), ks=(2,))
    assert result["HR@2"] == 1.0
    assert result["NDCG@2"] == pytest.approx(1 / math.log2(3))


def test_no_evaluable_user_is_an_error() -> None:
    with pytest.raises(ValueError, match="no user has a held-out item"):
        ranking_metrics(torch.tensor([[1]]), torch.tensor([-1]), ks=(1,))
