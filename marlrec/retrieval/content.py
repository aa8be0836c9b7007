"""`content`: cosine between the user's state and the items' text embeddings.

It reaches items nobody has consumed yet: an item is retrievable as soon as its text is encoded.
Each slate's top M is a search over the unit item vectors (`index=exact`, chunked, or `faiss`,
approximate, for large catalogs; see `marlrec.retrieval.search`); ranking evaluation still
scores every item.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from marlrec.data import Histories, RecData
from marlrec.retrieval import Retriever
from marlrec.retrieval.search import IndexConfig, ItemSearch


class ContentRetriever(Retriever):
    Config = IndexConfig
    config: IndexConfig
    scores_unseen_items = True

    def __init__(self, config: IndexConfig, *, data: RecData, item_emb: torch.Tensor) -> None:
        super().__init__(config, data=data, item_emb=item_emb)
        self.item_unit = F.normalize(item_emb, dim=-1)
        self.search = ItemSearch(self.item_unit, config)

    def refresh(self) -> None:
        self.item_unit = F.normalize(self.item_emb, dim=-1)
        self.search = ItemSearch(self.item_unit, self.config)

    def scores(self, states: torch.Tensor, histories: Histories) -> torch.Tensor:
        return F.normalize(states, dim=-1) @ self.item_unit.T

    def top(
        self, states: torch.Tensor, histories: Histories, m: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.search.top(F.normalize(states, dim=-1), m, histories)
