"""Recall of a retriever's pools: how often the held-out next item is among the candidates.

No policy can recommend an item its pool lacks, so this bounds every agent's accuracy.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from marlrec.data import Histories, RecData
from marlrec.retrieval import Retriever

# Users whose pools are scored at once (bounds memory: CHUNK x n_items scores).
CHUNK = 1024


@torch.no_grad()
def pool_recall(
    retriever: Retriever,
    data: RecData,
    states: Callable[[Histories], torch.Tensor],
    size: int,
    split: str,
) -> float:
    """Share of the `split` held-out items found in the top-`size` pool retrieved for the
    history before them (consumed items excluded); `states` gives the users' states."""
    held_out = data.split.held_out(split)
    users = [u for u in range(data.n_users) if len(held_out[u])]
    hits, total = 0, 0
    for start in range(0, len(users), CHUNK):
        chunk = users[start : start + CHUNK]
        histories = Histories.pack(
            [data.history_before(u, split) for u in chunk], retriever.item_emb.device
        )
        scores = retriever.scores(states(histories), histories)
        scores[histories.rows(), histories.items] = -torch.inf
        pools = scores.topk(min(size, data.n_items), dim=1).indices.cpu().numpy()
        for row, user in enumerate(chunk):
            hits += int(np.isin(held_out[user], pools[row]).sum())
            total += len(held_out[user])
    return hits / max(total, 1)


def pool_recalls(
    retriever: Retriever,
    data: RecData,
    states: Callable[[Histories], torch.Tensor],
    size: int,
) -> dict[str, float]:
    """`{split}/Recall@{size}` of the pools on the validation and test splits."""
    return {
        f"{split}/Recall@{size}": pool_recall(retriever, data, states, size, split)
        for split in ("valid", "test")
    }
