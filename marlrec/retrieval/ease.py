"""EASE item-item weights (Steck, 2019), fitted once per run for the baseline and retrieval."""

from __future__ import annotations

import warnings

import torch

from marlrec.data import RecData, item_user_matrix
from marlrec.fitted import fingerprint, fitted


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
    return weights.float()
