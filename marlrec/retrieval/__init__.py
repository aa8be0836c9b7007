"""Retrieval plugins (entry-point group `marlrec.retrievers`): every item scored for many users
at once, from which each slate's top-M candidates are drawn (`top`, which a retriever over item
vectors answers by an exact chunked or an approximate FAISS search, `marlrec.retrieval.search`)."""

from __future__ import annotations

from abc import abstractmethod

import torch

from marlrec.data import Histories, RecData
from marlrec.plugin import Plugin


class Retriever(Plugin):
    """Constructed as `Retriever(config, data=..., item_emb=...)`; fits on the training split.

    `item_emb` (n_items, d) sits on the run's device. The environment masks the items each user
    has consumed and keeps the top M; the scores also reach the agents' observations, so every
    retriever gives them in [-1, 1] (the range of a cosine).
    """

    scores_unseen_items: bool = False
    """Whether items without any training interaction can reach the top M (through their
    text); the agents rank only what retrieval offers them first."""

    n_features: int = 0
    """Features per candidate beyond its score (`candidate_features`), e.g. each member's
    score and rank in a union: they reach the agents' observations."""

    def __init__(self, config: object, *, data: RecData, item_emb: torch.Tensor) -> None:
        super().__init__(config)
        self.data = data
        self.item_emb = item_emb

    def refresh(self) -> None:
        """Re-read `item_emb` after a trainable encoder changed it in place; retrievers that
        keep tensors derived from it rebuild them."""

    @abstractmethod
    def scores(self, states: torch.Tensor, histories: Histories) -> torch.Tensor:
        """Scores (B, n_items) in [-1, 1], higher is better, for users with states (B, d) and
        histories (their item ids, packed); a new tensor the caller may write into."""

    def candidate_features(
        self, states: torch.Tensor, histories: Histories, candidates: torch.Tensor
    ) -> torch.Tensor:
        """(B, M, n_features) features of the candidates (B, M) retrieved for these users."""
        return torch.zeros(*candidates.shape, 0, device=candidates.device)

    def top(
        self, states: torch.Tensor, histories: Histories, m: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The m best items (B, m) for each user, consumed ones excluded, best first, and
        their scores (-inf where fewer than m remain).

        This default scores every item (`scores`); a retriever over item vectors overrides it
        with a search that need not (`marlrec.retrieval.search`).
        """
        scores = self.scores(states, histories)
        scores[histories.rows(), histories.items] = -torch.inf
        top = scores.topk(m, dim=-1)
        return top.indices, top.values
