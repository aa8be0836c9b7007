"""Evaluation metrics: a registry of small metric objects, each declaring what it needs.

Ranking metrics read users' top-K lists one chunk at a time through `RankedChunk`, whose shared
inputs (the hit matrix, target counts, list embeddings, recommendation counts) are computed once
per chunk, and only when a selected metric needs them. Every computation is a tensor operation
over the whole chunk, on the chunk's device: no Python loop runs per user.

Definitions, for a user with top-K list r_1..r_K, held-out target set T (|T| >= 1) and
hit_i = [r_i in T]:

- `hr` HR@K = 1 if any hit_i else 0.
- `recall` = sum hit_i / |T|;  `precision` = sum hit_i / K;  `f1` = 2PR / (P + R), 0 if P = R = 0.
- `ndcg` = sum hit_i / log2(i + 1) / IDCG, IDCG = sum_{i <= min(|T|, K)} 1 / log2(i + 1).
- `mrr` = 1 / (first i with hit_i), 0 without a hit.
- `map` = sum_i hit_i * precision@i / min(|T|, K)  (RecBole's MAP).
These accuracy metrics are averaged over the users who have at least one held-out item; users
without one are left out (there is nothing to hit).

Beyond accuracy, over every ranked user, targets or not:
- `coverage` = share of the catalog that appears in at least one top-K list.
- `ild` = mean pairwise cosine distance (1 - cosine of item embeddings) inside each top-K list,
  averaged over users (0 for K = 1).
- `novelty` = mean self-information -log2 p(i) of the listed items, with p(i) the item's share
  of training interactions, add-one smoothed: (count_i + 1) / (n_interactions + n_items).
- `gini` = Gini index of how often each catalog item is recommended over all top-K lists
  (0: every item equally often; near 1: a few items take every slot).

Simulated sessions: `mean_return`, `clicks_per_session`, `session_depth` (slates per session),
each a mean over sessions.

Ties inside a score vector are broken by item id (see `marlrec.evaluation.ranking.top_k`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from marlrec.evaluation.ranking import ChunkTargets

# What a metric may need; the chunk computes each at most once.
Need = Literal[
    "hits",
    "n_targets",
    "top_items",
    "list_embeddings",
    "self_information",
    "rec_counts",
    "sessions",
]


@dataclass(frozen=True)
class MetricContext:
    """Catalog-wide inputs, on the device where ranking happens."""

    n_items: int
    popularity: torch.Tensor  # (n_items,) float training counts
    item_unit: torch.Tensor | None  # (n_items, d) unit-norm item embeddings, if available

    @classmethod
    def build(
        cls, popularity: np.ndarray, item_emb: torch.Tensor | None, device: torch.device
    ) -> MetricContext:
        unit = None
        if item_emb is not None:
            unit = torch.nn.functional.normalize(item_emb.detach().float().to(device), dim=-1)
        pop = torch.as_tensor(popularity, dtype=torch.float32, device=device)
        return cls(len(popularity), pop, unit)

    @cached_property
    def squared_norms(self) -> torch.Tensor:
        """(n_items,) 1 for every item, 0 for an all-zero embedding."""
        assert self.item_unit is not None
        return torch.linalg.vector_norm(self.item_unit, dim=-1).square()

    @cached_property
    def self_information(self) -> torch.Tensor:
        share = (self.popularity + 1.0) / (self.popularity.sum() + self.n_items)
        return -torch.log2(share)


class RankedChunk:
    """A chunk of users' top-K lists and their targets; shared inputs are computed lazily."""

    def __init__(
        self, top_items: torch.Tensor, targets: ChunkTargets | torch.Tensor, ctx: MetricContext
    ) -> None:
        self.top_items = top_items  # (users, K) long, best first
        # Held-out items: as sorted keys, or a (users, n_items) bool mask.
        self.targets = (
            targets if isinstance(targets, ChunkTargets) else ChunkTargets.from_mask(targets)
        )
        self.ctx = ctx

    @cached_property
    def hits(self) -> torch.Tensor:
        """(users, K) float: 1 where the listed item is a held-out target."""
        return self.targets.hits(self.top_items)

    @property
    def n_targets(self) -> torch.Tensor:
        """(users,) float: number of held-out targets."""
        return self.targets.counts

    @cached_property
    def cumulative_hits(self) -> torch.Tensor:
        """(users, K) float: hits among the first 1, 2, ..., K listed items."""
        return self.hits.cumsum(dim=1)

    @cached_property
    def has_target(self) -> torch.Tensor:
        return self.n_targets > 0

    @cached_property
    def discounts(self) -> torch.Tensor:
        """(K,) 1 / log2(i + 1) for 1-based positions i."""
        positions = torch.arange(self.top_items.shape[1], device=self.top_items.device)
        return 1.0 / torch.log2(positions.float() + 2.0)

    def list_embeddings(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sums over each top-k list of the items' unit vectors (users, d) and of their squared
        norms (users,); pooled by `embedding_bag`, never gathered as (users, k, d)."""
        if self.ctx.item_unit is None:
            raise ValueError("no item embeddings were given to the evaluation")
        listed = self.top_items[:, :k]
        vectors = F.embedding_bag(listed, self.ctx.item_unit, mode="sum")
        return vectors, self.ctx.squared_norms[listed].sum(1)

    def rec_counts(self, k: int) -> torch.Tensor:
        """(n_items,) how many of this chunk's top-k lists contain each item."""
        listed = self.top_items[:, :k].flatten()
        return torch.bincount(listed, minlength=self.ctx.n_items).float()


@dataclass(frozen=True, kw_only=True)
class UserMetric:
    """A value per ranked user, averaged; over users with targets, or over all ranked users."""

    name: str
    label: str
    needs: frozenset[Need]
    over: Literal["targets", "all"]
    per_user: Callable[[RankedChunk, int], torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class CatalogMetric:
    """A value computed from how often each item is recommended over all top-k lists."""

    name: str
    label: str
    needs: frozenset[Need]
    from_counts: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class SessionMetric:
    """The mean over simulated sessions of one per-session statistic."""

    name: str
    statistic: Literal["return", "clicks", "depth", "diversity", "novelty"]
    needs: frozenset[Need] = frozenset({"sessions"})


Metric = UserMetric | CatalogMetric | SessionMetric
RankingMetric = UserMetric | CatalogMetric


# --- per-user accuracy -----------------------------------------------------------------------


def _hit_count(c: RankedChunk, k: int) -> torch.Tensor:
    # A list shorter than k (a catalog smaller than k) holds all its hits in its last place.
    return c.cumulative_hits[:, min(k, c.cumulative_hits.shape[1]) - 1]


def _hr(c: RankedChunk, k: int) -> torch.Tensor:
    return (_hit_count(c, k) > 0).float()


def _recall(c: RankedChunk, k: int) -> torch.Tensor:
    return _hit_count(c, k) / c.n_targets.clamp(min=1.0)


def _precision(c: RankedChunk, k: int) -> torch.Tensor:
    return _hit_count(c, k) / k


def _f1(c: RankedChunk, k: int) -> torch.Tensor:
    p, r = _precision(c, k), _recall(c, k)
    return torch.where(p + r > 0, 2 * p * r / (p + r).clamp(min=1e-12), torch.zeros_like(p))


def _ndcg(c: RankedChunk, k: int) -> torch.Tensor:
    dcg = (c.hits[:, :k] * c.discounts[:k]).sum(dim=1)
    ideal_cumulative = c.discounts[:k].cumsum(dim=0)
    ideal_count = c.n_targets.clamp(min=1.0, max=float(k)).long()
    return dcg / ideal_cumulative[ideal_count - 1]


def _mrr(c: RankedChunk, k: int) -> torch.Tensor:
    hits = c.hits[:, :k]
    first = hits.argmax(dim=1).float()  # the first maximum: the first hit when there is one
    return torch.where(hits.any(dim=1), 1.0 / (first + 1.0), torch.zeros_like(first))


def _map(c: RankedChunk, k: int) -> torch.Tensor:
    hits = c.hits[:, :k]
    positions = torch.arange(1, hits.shape[1] + 1, device=hits.device)
    precision_at = c.cumulative_hits[:, :k] / positions
    return (precision_at * hits).sum(dim=1) / c.n_targets.clamp(min=1.0, max=float(k))


# --- per-user beyond accuracy ----------------------------------------------------------------


def _ild(c: RankedChunk, k: int) -> torch.Tensor:
    return intra_list_distance(*c.list_embeddings(k), k)


def intra_list_distance(total: torch.Tensor, norms: torch.Tensor, k: int) -> torch.Tensor:
    """Mean pairwise cosine distance within each list of k items, from the sums over each list
    of the items' unit vectors `total` (lists, d) and squared norms `norms` (lists,)."""
    # Sum over ordered pairs i != j of cos(i, j) = |sum_i e_i|^2 - sum_i |e_i|^2: O(K d), not K^2.
    pair_sum = torch.linalg.vector_norm(total, dim=-1).square() - norms
    if k < 2:
        return torch.zeros_like(pair_sum)
    return 1.0 - pair_sum / (k * (k - 1))


def _novelty(c: RankedChunk, k: int) -> torch.Tensor:
    return c.ctx.self_information[c.top_items[:, :k]].mean(dim=1)


def slate_beyond_accuracy(slates: torch.Tensor, ctx: MetricContext) -> dict[str, torch.Tensor]:
    """Per shown slate (slates, slate_size): its diversity (intra-list distance; only with
    item embeddings) and its novelty (mean self-information of its items)."""
    figures = {"novelty": ctx.self_information[slates].mean(dim=1)}
    if ctx.item_unit is not None:
        total = F.embedding_bag(slates, ctx.item_unit, mode="sum")
        norms = ctx.squared_norms[slates].sum(1)
        figures["diversity"] = intra_list_distance(total, norms, slates.shape[1])
    return figures


# --- catalog-wide ----------------------------------------------------------------------------


def _coverage(counts: torch.Tensor) -> torch.Tensor:
    return (counts > 0).float().mean()


def _gini(counts: torch.Tensor) -> torch.Tensor:
    """Gini index of non-negative counts: sum_i (2i - n - 1) c_(i) / (n sum c), c sorted up."""
    n = counts.numel()
    total = counts.sum()
    if float(total) == 0.0:
        return torch.zeros((), device=counts.device)
    index = torch.arange(1, n + 1, device=counts.device, dtype=counts.dtype)
    return ((2 * index - n - 1) * counts.sort().values).sum() / (n * total)


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add a metric to the registry (a name must be unique); returns it."""
    if metric.name in METRICS:
        raise ValueError(f"a metric named '{metric.name}' is already registered")
    METRICS[metric.name] = metric
    return metric


def _accuracy(name: str, label: str, fn: Callable[[RankedChunk, int], torch.Tensor]) -> None:
    needs: frozenset[Need] = frozenset({"hits", "n_targets"})
    register(UserMetric(name=name, label=label, needs=needs, over="targets", per_user=fn))


_accuracy("hr", "HR", _hr)
_accuracy("recall", "Recall", _recall)
_accuracy("precision", "Precision", _precision)
_accuracy("f1", "F1", _f1)
_accuracy("ndcg", "NDCG", _ndcg)
_accuracy("mrr", "MRR", _mrr)
_accuracy("map", "MAP", _map)
_COUNTS: frozenset[Need] = frozenset({"rec_counts"})
register(CatalogMetric(name="coverage", label="Coverage", needs=_COUNTS, from_counts=_coverage))
_LISTS: frozenset[Need] = frozenset({"top_items", "list_embeddings"})
register(UserMetric(name="ild", label="ILD", needs=_LISTS, over="all", per_user=_ild))
_NOVELTY: frozenset[Need] = frozenset({"top_items", "self_information"})
register(UserMetric(name="novelty", label="Novelty", needs=_NOVELTY, over="all", per_user=_novelty))
register(CatalogMetric(name="gini", label="Gini", needs=_COUNTS, from_counts=_gini))
register(SessionMetric(name="mean_return", statistic="return"))
register(SessionMetric(name="clicks_per_session", statistic="clicks"))
register(SessionMetric(name="session_depth", statistic="depth"))
register(SessionMetric(name="session_diversity", statistic="diversity"))
register(SessionMetric(name="session_novelty", statistic="novelty"))

ACCURACY = tuple(m.name for m in METRICS.values() if getattr(m, "over", None) == "targets")


def select(names: Sequence[str]) -> list[Metric]:
    """The registered metrics of these names, in the given order."""
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise KeyError(f"unknown metric '{unknown[0]}'; known: {', '.join(METRICS)}")
    return [METRICS[n] for n in names]


class RankingAccumulator:
    """Sums each selected metric over chunks of users; `results()` gives the means.

    Sums stay on the device until the end, so the chunk loop never waits on the device.
    """

    def __init__(self, metrics: Sequence[RankingMetric], ks: Sequence[int]) -> None:
        self.metrics = list(metrics)
        self.ks = sorted(set(ks))
        # The per-user metrics by the users they average over, each scope summed as one stack.
        self.scopes = {
            scope: [m for m in self.metrics if isinstance(m, UserMetric) and m.over == scope]
            for scope in ("targets", "all")
        }
        self.sums: dict[tuple[str, int], torch.Tensor] = {}  # (scope, k) -> (metrics,) sums
        self.counts: dict[str, torch.Tensor] = {}
        self.rec_counts: dict[int, torch.Tensor] = {}

    @property
    def max_k(self) -> int:
        return self.ks[-1]

    def add(self, chunk: RankedChunk) -> None:
        has_target = chunk.has_target
        self.counts["targets"] = self.counts.get("targets", 0) + has_target.sum()
        ranked = torch.full((), len(has_target), device=has_target.device)
        self.counts["all"] = self.counts.get("all", 0) + ranked
        for k in self.ks:
            for scope, metrics in self.scopes.items():
                if not metrics:
                    continue
                # Users without a target count as 0 where only users with one are averaged.
                values = torch.stack([m.per_user(chunk, k) for m in metrics])
                if scope == "targets":
                    values = values.masked_fill(~has_target, 0.0)
                self.sums[(scope, k)] = self.sums.get((scope, k), 0) + values.sum(dim=1)
            if any(isinstance(m, CatalogMetric) for m in self.metrics):
                self.rec_counts[k] = self.rec_counts.get(k, 0) + chunk.rec_counts(k)

    def results(self) -> dict[str, float]:
        """`{label}@{k}` -> value, metric by metric in the selected order, k ascending."""
        values: dict[str, torch.Tensor] = {}
        for metric in self.metrics:
            for k in self.ks:
                key = f"{metric.label}@{k}"
                if isinstance(metric, UserMetric):
                    count = self.counts[metric.over]
                    at = self.scopes[metric.over].index(metric)
                    values[key] = self.sums[(metric.over, k)][at] / torch.clamp(count, min=1)
                else:
                    values[key] = metric.from_counts(self.rec_counts[k])
        if not values:
            return {}
        # One transfer for everything.
        flat = torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in values.values()])
        return dict(zip(values, flat.cpu().tolist(), strict=True))


def session_results(
    metrics: Sequence[SessionMetric], statistics: Mapping[str, Sequence[float]]
) -> dict[str, float]:
    """Each session metric's mean over sessions, keyed by the metric's name."""
    return {m.name: float(np.mean(statistics[m.statistic])) for m in metrics}


# --- direct use on a single top-k matrix (tests, notebooks) ----------------------------------


def hit_positions(topk: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0-based rank of each user's target within their top-k list, or -1 when absent."""
    hits = topk == target[:, None]
    found = hits.any(dim=1)
    return torch.where(found, hits.float().argmax(dim=1), torch.full_like(target, -1))


def ranking_metrics(
    topk: torch.Tensor,
    target: torch.Tensor,
    ks: Sequence[int],
    names: Sequence[str] = ("hr", "ndcg"),
    n_items: int | None = None,
) -> dict[str, float]:
    """Metrics of ready top-k lists with one target per user (-1: none), e.g. {"HR@10": ...}.

    Users whose target is -1 are left out of the accuracy metrics.
    """
    valid = target >= 0
    if not bool(valid.any()):
        raise ValueError("no user has a held-out item to evaluate")
    n_items = n_items or int(max(topk.max(), target.max())) + 1
    mask = torch.zeros(len(target), n_items, dtype=torch.bool, device=topk.device)
    rows = torch.nonzero(valid).flatten()
    mask[rows, target[valid]] = True
    ctx = MetricContext.build(np.zeros(n_items, dtype=np.float32), None, topk.device)
    chosen = [m for m in select(names) if not isinstance(m, SessionMetric)]
    accumulator = RankingAccumulator(chosen, ks)
    accumulator.add(RankedChunk(topk, mask, ctx))
    return accumulator.results()
