"""Exploration draws: candidates drawn at random instead of retrieved.

A share of a slate's M candidates (`explore_share`) can be exploration items, drawn at random
from the unconsumed catalog and from its least popular half (`explore_long_tail` of them), never
an item consumed, retrieved or drawn already. `SlateCore.retrieve` joins them to the top
retrieved items. Each row of a batch draws from its own numpy generator, so a row's candidates
depend only on its generator whatever the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

# Exploration draws this many items per slot to fill at once, plus a margin, before falling
# back to an exact draw: rejections (consumed, retrieved, repeated) are rare in a large catalog.
OVERSAMPLE, DRAW_MARGIN = 2, 8


def draw_distinct(
    scores: torch.Tensor,
    taken: torch.Tensor,
    pool: torch.Tensor | None,
    n: int,
    rngs: Sequence[np.random.Generator],
) -> torch.Tensor:
    """n distinct unconsumed items per row from `pool` (None: every item), not in `taken`.

    One oversampled draw per row, checked for every row at once; a row left short (rare)
    draws again exactly among its eligible items.
    """
    batch, device = scores.shape[0], scores.device
    if n == 0:
        return torch.empty(batch, 0, dtype=torch.long, device=device)
    pool_size = len(pool) if pool is not None else scores.shape[1]
    size = OVERSAMPLE * n + DRAW_MARGIN
    draws = torch.as_tensor(
        np.stack([rng.integers(pool_size, size=size) for rng in rngs]), device=device
    )
    items = pool[draws] if pool is not None else draws
    eligible = torch.isfinite(scores.gather(1, items))
    eligible &= ~(items[:, :, None] == taken[:, None, :]).any(-1)
    repeated = (items[:, :, None] == items[:, None, :]).tril(diagonal=-1).any(-1)
    eligible &= ~repeated
    position = eligible.long().cumsum(1) - 1
    keep = eligible & (position < n)
    drawn = torch.full((batch, n), -1, dtype=torch.long, device=device)
    rows, cols = torch.nonzero(keep, as_tuple=True)
    drawn[rows, position[rows, cols]] = items[rows, cols]
    for row in torch.nonzero(keep.sum(1) < n).flatten().tolist():
        drawn[row] = draw_exactly(scores[row], taken[row], drawn[row], pool, rngs[row])
    return drawn


def draw_exactly(
    scores: torch.Tensor,
    taken: torch.Tensor,
    drawn: torch.Tensor,
    pool: torch.Tensor | None,
    rng: np.random.Generator,
) -> torch.Tensor:
    """Complete one row's draw (-1 marks a free slot) over its whole eligible set."""
    used = torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
    used[taken] = True
    used[drawn[drawn >= 0]] = True
    allowed = torch.isfinite(scores) & ~used
    if pool is not None:
        in_pool = torch.zeros_like(allowed)
        in_pool[pool] = True
        allowed &= in_pool
    eligible = torch.nonzero(allowed).flatten().cpu().numpy()
    free = int((drawn < 0).sum())
    picked = rng.choice(eligible, size=min(free, len(eligible)), replace=False)
    used[torch.as_tensor(picked, dtype=torch.long, device=scores.device)] = True
    # Too few eligible items left: the best retrieved items not yet taken fill in
    # (consumed ones last: their -inf score masks them).
    rank_key = torch.nan_to_num(scores, neginf=-2.0).masked_fill(used, -torch.inf)
    filler = rank_key.topk(free - len(picked)).indices
    fill = torch.cat([torch.as_tensor(picked, dtype=torch.long, device=scores.device), filler])
    completed = drawn.clone()
    completed[drawn < 0] = fill
    return completed
