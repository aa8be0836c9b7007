"""`bpr`: matrix factorisation trained with the BPR pairwise loss (Rendle et al., 2009).

Fitted in `__init__`, on the train split only, so construction pays the training time once and
`scores` is a single matrix product. Training is seeded by the run's seed through a local
torch.Generator (initialisation, shuffling and negatives), so a CPU run is reproducible.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from marlrec.baselines import Baseline, train_pairs
from marlrec.data import RecData
from marlrec.progress import progress_bar
from marlrec.registry import PluginError

# Show a progress bar only when training is expected to be long enough to watch.
PROGRESS_AFTER_S = 3.0


class BPRBaseline(Baseline):
    """User and item embeddings; score = dot product; one uniform negative per positive."""

    @dataclass(kw_only=True)
    class Config:
        dim: int = 64
        """Embedding size (RecBole's default)."""
        epochs: int = 20
        """Passes over the distinct train (user, item) pairs."""
        lr: float = 0.005
        """Adam learning rate."""
        batch_size: int = 2048
        """Positive pairs per step."""
        weight_decay: float = 0.0
        """L2 penalty on the embeddings of each batch (RecBole's BPR uses none)."""
        show_progress: bool = True
        """Show a tqdm bar when training takes more than a few seconds."""

    config: Config

    def __init__(self, config: Config, *, data: RecData, item_emb: torch.Tensor, seed: int) -> None:
        super().__init__(config, data=data, item_emb=item_emb, seed=seed)
        if min(config.dim, config.epochs, config.batch_size) < 1 or config.lr <= 0:
            raise PluginError(f"{self.where}: dim, epochs, batch_size and lr must be positive")
        self.user_emb, self.item_emb_learned = fit_bpr(data, config, seed)

    def scores(self, users: np.ndarray) -> torch.Tensor:
        index = torch.as_tensor(users, dtype=torch.long)
        return self.user_emb[index] @ self.item_emb_learned.T


def fit_bpr(data: RecData, config: BPRBaseline.Config, seed: int) -> tuple[torch.Tensor, ...]:
    """Trained (user, item) embeddings, detached."""
    generator = torch.Generator().manual_seed(seed)
    users_np, items_np = train_pairs(data)
    users, items = torch.from_numpy(users_np), torch.from_numpy(items_np)
    # A user's positives as sorted keys user * n_items + item, to reject sampled negatives.
    positives = torch.from_numpy(np.sort(users_np * data.n_items + items_np))
    user_emb = torch.nn.Parameter(xavier_normal(data.n_users, config.dim, generator))
    item_emb = torch.nn.Parameter(xavier_normal(data.n_items, config.dim, generator))
    optimizer = torch.optim.Adam([user_emb, item_emb], lr=config.lr)
    started = time.monotonic()
    bar = None
    for epoch in range(config.epochs):
        # Decide from the first epoch's time whether the whole run is worth a bar.
        expected_s = (time.monotonic() - started) * config.epochs
        if config.show_progress and epoch == 1 and expected_s > PROGRESS_AFTER_S:
            bar = progress_bar(total=config.epochs, initial=1, desc="bpr", leave=False)
        order = torch.randperm(len(users), generator=generator)
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            u, i = users[batch], items[batch]
            j = sample_negatives(u, positives, data.n_items, generator)
            loss = bpr_loss(user_emb[u], item_emb[i], item_emb[j], config.weight_decay)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
    if bar is not None:
        bar.close()
    return user_emb.detach(), item_emb.detach()


def xavier_normal(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """RecBole initialises BPR's embeddings with xavier_normal_; drawn here from `generator`."""
    std = (2.0 / (rows + cols)) ** 0.5
    return torch.randn(rows, cols, generator=generator) * std


def sample_negatives(
    users: torch.Tensor, positives: torch.Tensor, n_items: int, generator: torch.Generator
) -> torch.Tensor:
    """One uniform item per user that is not among the user's train positives (rejection)."""
    negatives = torch.randint(n_items, users.shape, generator=generator)
    clash = is_positive(users * n_items + negatives, positives)
    while bool(clash.any()):
        negatives[clash] = torch.randint(n_items, (int(clash.sum()),), generator=generator)
        clash = is_positive(users * n_items + negatives, positives)
    return negatives


def is_positive(keys: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Membership of `keys` in the sorted `positives` (binary search: far faster than isin)."""
    at = torch.searchsorted(positives, keys).clamp(max=len(positives) - 1)
    return positives[at] == keys


def bpr_loss(
    user: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, weight_decay: float
) -> torch.Tensor:
    """-log sigmoid(s_ui - s_uj), averaged, plus an optional L2 term on the batch embeddings."""
    margin = (user * pos).sum(-1) - (user * neg).sum(-1)
    loss = -torch.nn.functional.logsigmoid(margin).mean()
    if weight_decay > 0:
        squares = user.pow(2).sum() + pos.pow(2).sum() + neg.pow(2).sum()
        loss = loss + weight_decay * squares / len(user)
    return loss
