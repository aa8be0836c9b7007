"""A calibrated click model fitted on the training split, cached on disk, and its held-out AUC.

The model scores a user state s (the mean embedding of the user's history) against an item i
with embedding e_i:

    f(s, i) = (P s) . (Q e_i) + w (s . e_i) + v . [e_i, pop_i, rating_i] + c

a logistic factorisation over the state, the item's embedding, its log training popularity and
its smoothed mean training rating (both standardised). Fitting: every training interaction is a
positive whose state is the mean of the items before it; `negatives` items the user never
consumed in training, drawn uniformly, are negatives with that same state. Each user's last
training interaction is held out of fitting and calibrates the model: Platt scaling (a, b) so
that sigmoid(a f + b) matches the labels of those interactions, each beside
`calibration_negatives` unseen items. The probability is therefore calibrated for a mix of one
real next item per `calibration_negatives` unseen ones, which sets the overall click level.

On ML-100K with MiniLM embeddings and the default options, the held-out test item outranks
unseen items with AUC 0.835 (popularity alone: 0.794); fitting takes seconds on a CPU.

A fitted model is two arrays, `item_vec` and `item_bias`, with calibration folded in:
P(click | examined) = sigmoid(s . item_vec[i] + item_bias[i]).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from marlrec.data import RecData
from marlrec.io import write_npz

FORMAT_VERSION = 1  # bump when fitting changes, so stale cache files are not reused
RATING_PRIOR_COUNT = 5.0  # pseudo-ratings at the global mean that smooth rare items' means
NEGATIVE_DRAW_ROUNDS = 10  # redraws of negatives that hit a consumed item
SIMILARITY_CHUNK = 4096  # pairs whose item embeddings are gathered at once


@dataclass(frozen=True, kw_only=True)
class FitOptions:
    """How the click model is fitted (everything the cache key depends on besides the data)."""

    rank: int
    negatives: int
    calibration_negatives: int
    steps: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    max_positives: int
    seed: int


@dataclass(frozen=True)
class ClickModel:
    """P(click | examined) = sigmoid(state . item_vec[item] + item_bias[item])."""

    item_vec: np.ndarray  # (n_items, d) float32
    item_bias: np.ndarray  # (n_items,) float32

    def logits(self, states: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Calibrated logits of `items` (B, K) for `states` (B, d)."""
        return np.einsum("bd,bkd->bk", states, self.item_vec[items]) + self.item_bias[items]

    def probability(self, state: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Click probability of each of `items` for one user `state`, given examination."""
        return _sigmoid(self.logits(state[None], np.asarray(items)[None])[0])


@dataclass(frozen=True)
class ClickAUC:
    """How well the click model separates held-out items from unseen ones."""

    auc: float  # pooled over every (held-out item, unseen item) pair of every user
    user_auc: float  # mean over users of each user's own AUC
    n_users: int


def item_features(data: RecData) -> np.ndarray:
    """Standardised log training popularity and smoothed mean training rating, (n_items, 2)."""
    train = data.split.train
    counts = np.bincount(train.item, minlength=data.n_items).astype(np.float64)
    sums = np.bincount(train.item, weights=train.value, minlength=data.n_items)
    global_mean = float(train.value.mean()) if len(train) else 0.0
    rating = (sums + RATING_PRIOR_COUNT * global_mean) / (counts + RATING_PRIOR_COUNT)
    return np.stack([_standardise(np.log1p(counts)), _standardise(rating)], axis=1).astype(
        np.float32
    )


def load_or_fit(
    data: RecData, item_emb: np.ndarray, options: FitOptions, cache_dir: Path
) -> tuple[ClickModel, Path, bool]:
    """The cached model for this data, embedding and options, fitting it on a miss.

    Returns the model, its cache file and whether it came from the cache.
    """
    key = cache_key(data, item_emb, options)
    path = Path(cache_dir) / "simulators" / f"response_model-{key}.npz"
    cached = _read(path)
    if cached is not None and cached.item_vec.shape == item_emb.shape:
        return cached, path, True
    model = fit(data, item_emb, options)
    write_npz(path, item_vec=model.item_vec, item_bias=model.item_bias)
    return model, path, False


def cache_key(data: RecData, item_emb: np.ndarray, options: FitOptions) -> str:
    """A digest of the training split, the item embeddings and the fitting options."""
    digest = hashlib.sha256()
    header = {"version": FORMAT_VERSION, "n_users": data.n_users, "n_items": data.n_items}
    digest.update(json.dumps({**header, **asdict(options)}, sort_keys=True).encode())
    train = data.split.train
    for array in (train.user, train.item, train.time, train.value, item_emb):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:20]


def fit(data: RecData, item_emb: np.ndarray, options: FitOptions) -> ClickModel:
    """Fit the factorisation model on training interactions, then calibrate it."""
    rng = np.random.default_rng(options.seed)
    emb = np.ascontiguousarray(item_emb, dtype=np.float32)
    table = _Items(torch.from_numpy(emb), torch.from_numpy(item_features(data)))
    fit_rows, calib_rows = _fit_and_calibration_rows(data, rng, options.max_positives)
    with torch.random.fork_rng():
        torch.manual_seed(options.seed)
        net = _Factorisation(emb.shape[1], options.rank, table.features.shape[1])
    _train(net, _pairs(data, emb, fit_rows, options.negatives, rng), table, options, rng)
    calib_pairs = _pairs(data, emb, calib_rows, options.calibration_negatives, rng)
    scale, shift = _platt(net, calib_pairs, table)
    return net.export(table, scale, shift)


def click_auc(
    model: ClickModel,
    data: RecData,
    item_emb: np.ndarray,
    *,
    target: str = "test",
    negatives: int = 100,
    seed: int = 0,
) -> ClickAUC:
    """AUC of the click model: each user's `target` item against `negatives` unseen items.

    A user's state is the mean embedding of what they consumed before the target item;
    unseen items are drawn uniformly among those the user never interacted with.
    """
    targets = data.split.test_item if target == "test" else data.split.valid_item
    users = np.flatnonzero(targets >= 0)
    if len(users) == 0:
        raise ValueError(f"no user has a '{target}' item to compute a held-out AUC on")
    emb = np.asarray(item_emb, dtype=np.float32)
    states = np.stack([_mean_state(emb, data.history_before(int(u), target)) for u in users])
    seen = _interaction_keys(data.interactions.user, data.interactions.item, data.n_items)
    rng = np.random.default_rng(seed)
    neg = _draw_unseen(users, negatives, data.n_items, seen, rng)
    scores = model.logits(states, np.concatenate([targets[users, None], neg], axis=1))
    pos, neg_scores = scores[:, 0], scores[:, 1:]
    per_user = ((pos[:, None] > neg_scores) + 0.5 * (pos[:, None] == neg_scores)).mean(axis=1)
    return ClickAUC(
        auc=pooled_auc(pos, neg_scores.ravel()), user_auc=float(per_user.mean()), n_users=len(users)
    )


def pooled_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    scores = np.concatenate([positive, negative])
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # Mid-ranks of tied groups: rank of the group's first member plus half its extra members.
    first_rank = np.cumsum(counts) - counts + 1
    ranks = first_rank[inverse] + (counts[inverse] - 1) / 2.0
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


class _Factorisation(nn.Module):
    """f(s, i) = (P s).(Q e_i) + w (s.e_i) + v.[e_i, features_i] + c.

    The similarity s.e_i is precomputed per pair, so a step only projects the batch's distinct
    items and never multiplies a full (pairs x dim) tensor: fitting stays fast at any dim.
    """

    def __init__(self, dim: int, rank: int, n_features: int) -> None:
        super().__init__()
        self.user_proj = nn.Linear(dim, rank, bias=False)
        self.item_proj = nn.Linear(dim, rank, bias=False)
        self.similarity_weight = nn.Parameter(torch.ones(()))
        self.item_linear = nn.Linear(dim + n_features, 1)

    def forward(
        self, states: torch.Tensor, items: torch.Tensor, similarity: torch.Tensor, table: _Items
    ) -> torch.Tensor:
        """Logits of `items` (B, K) for `states` (B, d), given each pair's s.e_i."""
        distinct, inverse = torch.unique(items, return_inverse=True)
        emb, feats = table.emb[distinct], table.features[distinct]
        low_rank = (self.item_proj(emb)[inverse] * self.user_proj(states)[:, None]).sum(-1)
        bias = self.item_linear(torch.cat([emb, feats], -1)).squeeze(-1)[inverse]
        return low_rank + self.similarity_weight * similarity + bias

    @torch.no_grad()
    def export(self, table: _Items, scale: float, shift: float) -> ClickModel:
        """Fold the network and its calibration into per-item arrays."""
        e = table.emb
        vec = self.item_proj(e) @ self.user_proj.weight + self.similarity_weight * e
        bias = self.item_linear(torch.cat([e, table.features], -1)).squeeze(-1)
        return ClickModel(
            item_vec=(scale * vec).numpy().astype(np.float32),
            item_bias=(scale * bias + shift).numpy().astype(np.float32),
        )


@dataclass(frozen=True)
class _Items:
    """The catalog as tensors: embeddings (n_items, d) and features (n_items, F)."""

    emb: torch.Tensor
    features: torch.Tensor


@dataclass(frozen=True)
class _Pairs:
    """Scored pairs: one state per row, its positive item first, then its negatives."""

    states: np.ndarray  # (n, d)
    items: np.ndarray  # (n, 1 + negatives)
    similarity: np.ndarray  # (n, 1 + negatives) state . item embedding


def _fit_and_calibration_rows(
    data: RecData, rng: np.random.Generator, max_positives: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the training table to fit on, and each user's last row (for calibration)."""
    train = data.split.train
    bounds = np.searchsorted(train.user, np.arange(data.n_users + 1))
    calib = (bounds[1:] - 1)[np.diff(bounds) >= 2]
    fit_rows = np.setdiff1d(np.arange(len(train)), calib)
    if len(fit_rows) > max_positives:
        fit_rows = np.sort(rng.choice(fit_rows, max_positives, replace=False))
    return fit_rows, calib


def _pairs(
    data: RecData, emb: np.ndarray, rows: np.ndarray, negatives: int, rng: np.random.Generator
) -> _Pairs:
    train = data.split.train
    users = train.user[rows]
    seen = _interaction_keys(train.user, train.item, data.n_items)
    neg = _draw_unseen(users, negatives, data.n_items, seen, rng)
    items = np.concatenate([train.item[rows, None], neg], axis=1)
    states = _prefix_states(data, emb, rows)
    return _Pairs(states, items, _similarity(states, items, emb))


def _similarity(states: np.ndarray, items: np.ndarray, emb: np.ndarray) -> np.ndarray:
    """state . item embedding for every pair, in chunks that keep the gathered copy small."""
    out = np.empty(items.shape, dtype=np.float32)
    for start in range(0, len(items), SIMILARITY_CHUNK):
        part = slice(start, start + SIMILARITY_CHUNK)
        out[part] = np.einsum("nd,nkd->nk", states[part], emb[items[part]])
    return out


def _prefix_states(data: RecData, emb: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For each sorted training row, the mean embedding of the user's items before it."""
    train = data.split.train
    bounds = np.searchsorted(train.user, np.arange(data.n_users + 1))
    states = np.zeros((len(rows), emb.shape[1]), dtype=np.float32)
    users = train.user[rows]
    edges = np.searchsorted(users, np.arange(data.n_users + 1))
    for user in np.unique(users):
        sel = slice(edges[user], edges[user + 1])
        before = rows[sel] - bounds[user]  # how many of the user's items precede each row
        sums = np.cumsum(emb[train.item[bounds[user] : bounds[user + 1]]], axis=0)
        has = before > 0
        states[sel][has] = sums[before[has] - 1] / before[has, None]
    return states


def _train(
    net: _Factorisation, pairs: _Pairs, table: _Items, options: FitOptions, rng: np.random.Generator
) -> None:
    optimizer = torch.optim.Adam(
        net.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay
    )
    states, items = torch.from_numpy(pairs.states), torch.from_numpy(pairs.items)
    similarity = torch.from_numpy(pairs.similarity)
    labels = torch.zeros(items.shape[1])
    labels[0] = 1.0
    for batch in _batches(len(items), options.batch_size, options.steps, rng):
        logits = net(states[batch], items[batch], similarity[batch], table)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, labels.expand_as(logits))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _batches(n: int, size: int, steps: int, rng: np.random.Generator) -> Iterator[torch.Tensor]:
    """`steps` batches of row indices from shuffled passes over `n` rows, as many as it takes."""
    done = 0
    while done < steps and n:
        for batch in torch.from_numpy(rng.permutation(n)).split(size)[: steps - done]:
            yield batch
            done += 1


def _platt(net: _Factorisation, pairs: _Pairs, table: _Items) -> tuple[float, float]:
    """Scale and shift of the logit that minimise log-loss on the calibration pairs."""
    if len(pairs.items) == 0:
        return 1.0, 0.0
    with torch.no_grad():
        raw = net(
            torch.from_numpy(pairs.states),
            torch.from_numpy(pairs.items),
            torch.from_numpy(pairs.similarity),
            table,
        )
    labels = torch.zeros_like(raw)
    labels[:, 0] = 1.0
    params = torch.tensor([1.0, 0.0], requires_grad=True)
    optimizer = torch.optim.LBFGS([params], max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(params[0] * raw + params[1], labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    scale, shift = params.detach().tolist()
    return float(scale), float(shift)


def _interaction_keys(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """Sorted unique user * n_items + item keys, to test membership with searchsorted."""
    return np.unique(users.astype(np.int64) * n_items + items)


def _draw_unseen(
    users: np.ndarray, k: int, n_items: int, seen: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """(len(users), k) items drawn uniformly, redrawn while they hit the user's `seen` keys."""
    items = rng.integers(0, n_items, (len(users), k))
    for _ in range(NEGATIVE_DRAW_ROUNDS):
        hit = _contains(seen, users[:, None].astype(np.int64) * n_items + items)
        if not hit.any():
            break
        items[hit] = rng.integers(0, n_items, int(hit.sum()))
    return items


def _contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    at = np.searchsorted(sorted_keys, keys).clip(max=max(len(sorted_keys) - 1, 0))
    return sorted_keys[at] == keys if len(sorted_keys) else np.zeros(keys.shape, dtype=bool)


def _mean_state(emb: np.ndarray, history: np.ndarray) -> np.ndarray:
    return emb[history].mean(axis=0) if len(history) else np.zeros(emb.shape[1], np.float32)


def _standardise(x: np.ndarray) -> np.ndarray:
    std = float(x.std())
    return (x - x.mean()) / std if std > 0 else np.zeros_like(x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow warning for large |x|


def _read(path: Path) -> ClickModel | None:
    """A cached model, or None when there is none or it cannot be read."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as cached:
            return ClickModel(item_vec=cached["item_vec"], item_bias=cached["item_bias"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
