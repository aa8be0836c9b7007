"""Ranking metrics over top-k lists, vectorised in torch."""

from __future__ import annotations

import torch


def hit_positions(topk: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0-based rank of each user's target within their top-k list, or -1 when absent."""
    hits = topk == target[:, None]
    found = hits.any(dim=1)
    return torch.where(found, hits.float().argmax(dim=1), torch.full_like(target, -1))


def ranking_metrics(
    topk: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...]
) -> dict[str, float]:
    """HR@k and NDCG@k with one held-out item per user, averaged over users whose target >= 0.

    With a single relevant item the ideal DCG is 1, so NDCG@k = 1 / log2(rank + 2) on a hit.
    """
    valid = target >= 0
    if not bool(valid.any()):
        raise ValueError("no user has a held-out item to evaluate")
    position = hit_positions(topk[valid], target[valid])
    results = {}
    for k in ks:
        hit = (position >= 0) & (position < k)
        gain = torch.where(
            hit, 1.0 / torch.log2(position.float() + 2.0), torch.zeros_like(hit, dtype=torch.float)
        )
        results[f"HR@{k}"] = float(hit.float().mean())
        results[f"NDCG@{k}"] = float(gain.mean())
    return results
