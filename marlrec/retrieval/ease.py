"""`ease`: candidates from EASE item-item weights (Steck, 2019) over the user's history.

Collaborative: far stronger than `content` on logged data, blind to items nobody has consumed
(they score 0) but through the environment's exploration. The weights are fitted once per run,
shared with the `ease` baseline, and cached on disk.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from marlrec.data import Histories, RecData, item_user_matrix
from marlrec.fitted import fingerprint, fitted
from marlrec.registry import PluginError
from marlrec.retrieval import Retriever


class EASERetriever(Retriever):
    """Scores `consumed items @ B`, scaled by each row's largest magnitude: the order is EASE's,
    the range a cosine's. The consumed matrix is sparse, so the cost grows with the histories'
    lengths, not with B x n_items x n_items."""

    @dataclass(kw_only=True)
    class Config:
        l2: float = 250.0
        """L2 weight lambda of the item-item matrix (RecBole's default reg_weight)."""

        def __post_init__(self) -> None:
            if not self.l2 > 0:
                raise PluginError(f"retrieval.l2 must be positive, got {self.l2}")

    config: Config

    def __init__(self, config: Config, *, data: RecData, item_emb: torch.Tensor) -> None:
        super().__init__(config, data=data, item_emb=item_emb)
        self.item_item = ease_weights(data, config.l2).to(item_emb.device).contiguous()

    def scores(self, states: torch.Tensor, histories: Histories) -> torch.Tensor:
        rows, n_items = histories.rows(), len(self.item_item)
        index = torch.stack([rows, histories.items])
        ones = torch.ones(len(rows), device=rows.device)
        shape = (len(histories), n_items)
        consumed = torch.sparse_coo_tensor(index, ones, shape, check_invariants=False).coalesce()
        # An item consumed twice still counts once, as in a 0/1 interaction matrix.
        consumed = torch.sparse_coo_tensor(
            consumed.indices(), consumed.values().clamp(max=1.0), shape, check_invariants=False
        )
        scores = torch.sparse.mm(consumed, self.item_item)
        return scores / scores.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)


def ease_weights(data: RecData, l2: float) -> torch.Tensor:
    """The EASE item-item matrix B (n_items, n_items) float32, fitted once per data and l2."""
    train = data.split.train
    key = fingerprint(train.user, train.item, data.n_users, data.n_items, float(l2))
    return fitted("ease", key, lambda: fit_ease(data, l2))


def fit_ease(data: RecData, l2: float) -> torch.Tensor:
    """B = I - P / diag(P) with P = (X^T X + l2 I)^-1, so diag(B) = 0."""
    x_t = item_user_matrix(data)
    # float64 for the inverse: the Gram matrix's entries run into the hundreds on real data.
    with warnings.catch_warnings():
        # sparse @ sparse goes through torch's CSR kernels, which warn that CSR is in beta.
        warnings.simplefilter("ignore", UserWarning)
        gram = torch.sparse.mm(x_t, x_t.t().coalesce()).to_dense().double()
    gram.diagonal().add_(l2)
    precision = torch.linalg.inv(gram)
    weights = precision / -precision.diagonal()[None, :]  # column j divided by -P_jj
    weights.diagonal().zero_()
    # Row-major: `linalg.inv` gives a column-major matrix, over which the retriever's sparse
    # product runs about 7x slower (caches written before this keep that layout: see below).
    return weights.float().contiguous()
