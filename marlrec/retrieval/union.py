"""`union`: one pool merged from several retrievers (by default `sasrec` and `ease`).

`merge: mean` (the default) ranks the items the user has not consumed by the members' mean
score. `merge: turns` merges the members' rankings: round r offers each member's r-th best
item in turn (the first member first), skipping items already in the pool, until the pool
holds `size` items; pool items score in (0, 1] by their place in the pool and every other item
in [-1, -0.5] by the members' mean score, so the environment's top M (M <= size) is the pool's
first M items. `merge: first` ranks by the first member's score alone (the others then only
add features).

With `features: true` (the default) every candidate carries, for each member, its score and its
rank among the user's unconsumed items (log-scaled to [0, 1], 1 the best) as observation
features: the agents see each member's own judgement and can learn an ensemble of them, which
a merged score alone hides.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from marlrec import registry
from marlrec.data import Histories, RecData
from marlrec.plugin import composed_default
from marlrec.registry import PluginError
from marlrec.retrieval import Retriever


def _default_members() -> list[dict[str, Any]]:
    return [{"name": "sasrec"}, {"name": "ease"}]


class UnionRetriever(Retriever):
    """The members' pools merged by turns, without duplicates, to `size` items."""

    @dataclass(kw_only=True)
    class Config:
        members: list[dict[str, Any]] = field(default_factory=_default_members)
        """The merged retrievers, each its own section, e.g. `{name: ease, l2: 250.0}`."""
        size: int = 100
        """Items in the merged pool: the env's `n_candidates` or more."""
        seed: int = composed_default(0, "${seed}")
        """Seed given to members that take one and set none (the run's when composed)."""
        merge: Literal["turns", "mean", "first"] = "mean"
        """How the pool is ranked: the members' rankings by turns, their mean score, or the
        first member's ranking alone."""
        features: bool = False
        """Give the agents each member's score and rank of every candidate. Off by default:
        on ML-100K the agents over the mean-score pool rank better on validation without them
        (README, Agents on MovieLens-100K)."""

        def __post_init__(self) -> None:
            if self.size < 1:
                raise PluginError(f"retrieval.size must be at least 1, got {self.size}")
            if not self.members or any(not isinstance(m.get("name"), str) for m in self.members):
                raise PluginError("retrieval.members must list sections that each set a name")
            if self.merge not in ("turns", "mean", "first"):
                raise PluginError(
                    f"retrieval.merge must be turns, mean or first, got {self.merge!r}"
                )

    config: Config

    def __init__(self, config: Config, *, data: RecData, item_emb: torch.Tensor) -> None:
        super().__init__(config, data=data, item_emb=item_emb)
        self.members = [self._member(dict(section)) for section in config.members]
        self.scores_unseen_items = any(m.scores_unseen_items for m in self.members)
        self.n_features = 2 * len(self.members) if config.features else 0
        # The members' scores of the last histories scored: their candidates' features reuse
        # them rather than run every member again.
        self._last: tuple[Histories, list[torch.Tensor]] | None = None

    def _member(self, options: dict[str, Any]) -> Retriever:
        name = options.pop("name")
        cls = registry.load("retrieval", name)
        if "seed" in {f.name for f in dataclasses.fields(cls.Config)}:
            options.setdefault("seed", self.config.seed)
        config = registry.build_config("retrieval", name, cls.Config, options)
        member: Retriever = registry.instantiate(
            "retrieval", name, cls, config, data=self.data, item_emb=self.item_emb
        )
        return member

    def refresh(self) -> None:
        for member in self.members:
            member.refresh()

    def member_scores(self, states: torch.Tensor, histories: Histories) -> list[torch.Tensor]:
        """Each member's scores (B, n_items) of these users, the last histories' remembered."""
        if self._last is not None and self._last[0] is histories:
            return self._last[1]
        scores = [member.scores(states, histories) for member in self.members]
        self._last = (histories, scores) if self.n_features else None
        return scores

    def scores(self, states: torch.Tensor, histories: Histories) -> torch.Tensor:
        member_scores = self.member_scores(states, histories)
        if self.config.merge == "turns":
            return union_scores(member_scores, histories, self.config.size)
        merged = member_scores[0] if self.config.merge == "first" else mean_scores(member_scores)
        merged = merged.clone()
        merged[histories.rows(), histories.items] = -1.0
        return merged

    def candidate_features(
        self, states: torch.Tensor, histories: Histories, candidates: torch.Tensor
    ) -> torch.Tensor:
        if not self.n_features:
            return super().candidate_features(states, histories, candidates)
        member_scores = self.member_scores(states, histories)
        self._last = None
        return torch.cat([score_and_rank(s, histories, candidates) for s in member_scores], dim=-1)


def mean_scores(member_scores: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(member_scores).mean(dim=0).clamp(-1.0, 1.0)


COMPARISONS = 1 << 22  # candidate-item comparisons made at once by `score_and_rank`


def score_and_rank(
    scores: torch.Tensor, histories: Histories, candidates: torch.Tensor
) -> torch.Tensor:
    """(B, M, 2): each candidate's score and its rank r among the unconsumed items as
    1 - log(1 + r) / log(1 + n_items), 1 for the best item."""
    scores = scores.clone()
    scores[histories.rows(), histories.items] = -torch.inf
    own = scores.gather(1, candidates)
    # Items scoring above each candidate, counted rather than found in a sorted row: a few
    # comparisons per item beat a sort of the catalog. Rows go in chunks of bounded size.
    chunk = max(1, COMPARISONS // max(1, candidates.shape[1] * scores.shape[1]))
    above = torch.cat(
        [
            (rows[:, None, :] > row_own[..., None]).sum(dim=-1)
            for rows, row_own in zip(scores.split(chunk), own.split(chunk), strict=True)
        ]
    ).float()
    rank = 1.0 - torch.log1p(above) / math.log1p(scores.shape[1])
    return torch.stack([torch.nan_to_num(own, neginf=-1.0), rank], dim=-1)


def union_scores(
    member_scores: list[torch.Tensor], histories: Histories, size: int
) -> torch.Tensor:
    """Scores (B, n_items) in [-1, 1] whose top `size` is the round-robin merge of the members'
    rankings of unconsumed items, in merge order; consumed items score -1."""
    rows, items = histories.rows(), histories.items
    n_members, (batch, n_items) = len(member_scores), member_scores[0].shape
    size = min(size, n_items)
    # Merge key of each item: its best (rank * n_members + member), so turns go member by member.
    key = torch.full((batch, n_items), torch.inf, device=member_scores[0].device)
    for number, scores in enumerate(member_scores):
        scores = scores.clone()
        scores[rows, items] = -torch.inf
        top = scores.topk(size, dim=1)
        ranks = torch.arange(size, dtype=key.dtype, device=key.device) * n_members + number
        ranks = ranks.expand_as(top.values).masked_fill(top.values == -torch.inf, torch.inf)
        key = key.minimum(torch.full_like(key, torch.inf).scatter_(1, top.indices, ranks))
    pool = key.topk(size, dim=1, largest=False)
    mean = mean_scores(member_scores)
    merged = (mean - 3.0) / 4.0  # [-1, -0.5]: below every pool item
    place = 1.0 - torch.arange(size, device=key.device, dtype=merged.dtype) / size
    in_pool = pool.values.isfinite()
    merged.scatter_(1, pool.indices, torch.where(in_pool, place, merged.gather(1, pool.indices)))
    merged[rows, items] = -1.0
    return merged
