"""`content`: cosine between the user's state and the items' text embeddings.

It reaches items nobody has consumed yet: an item is retrievable as soon as its text is encoded.
Each slate's top M is a search over the unit item vectors (`index=exact`, chunked, or `faiss`,
approximate, for large catalogs; see `marlrec.retrieval.search`); ranking evaluation still
scores every item.

With a trainable encoder (`encoder.trainable=lora|full`) the run's table of embeddings is
re-encoded as the model learns. `embeddings: trained` (the default) retrieves from that table;
`embeddings: frozen` keeps retrieving from the table as it was built (the frozen model's cached
embeddings), so the pool stays what a frozen encoder offers while the agents rank it with the
trained embeddings: a model trained on the agents' losses can drift away from what finds items
without interactions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from marlrec.data import Histories, RecData
from marlrec.registry import PluginError
from marlrec.retrieval import Retriever
from marlrec.retrieval.search import IndexConfig, ItemSearch

Embeddings = Literal["trained", "frozen"]


@dataclass(kw_only=True)
class ContentConfig(IndexConfig):
    embeddings: Embeddings = "trained"
    """Which item embeddings retrieval reads when the encoder trains with the agents:
    `trained`, the run's table, re-encoded on each refresh; `frozen`, the table as it was
    built (the frozen model's), never refreshed, and each user's query is the mean of their
    history's frozen embeddings (the `mean` state over them) rather than the run's state. The
    agents still read the trained table. `frozen` keeps a copy of the table."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.embeddings not in ("trained", "frozen"):
            raise PluginError(
                f"retrieval.embeddings must be 'trained' or 'frozen', got {self.embeddings!r}"
            )


class ContentRetriever(Retriever):
    Config = ContentConfig
    config: ContentConfig
    scores_unseen_items = True

    def __init__(self, config: ContentConfig, *, data: RecData, item_emb: torch.Tensor) -> None:
        super().__init__(config, data=data, item_emb=item_emb)
        # `frozen`: a copy, since a trainable encoder rewrites `item_emb` in place.
        self.frozen_emb = item_emb.detach().clone() if config.embeddings == "frozen" else None
        self.item_unit = F.normalize(self.retrieval_emb, dim=-1)
        self.search = ItemSearch(self.item_unit, config)

    @property
    def retrieval_emb(self) -> torch.Tensor:
        """The item embeddings this retriever reads: the run's table or its frozen copy."""
        return self.item_emb if self.frozen_emb is None else self.frozen_emb

    def refresh(self) -> None:
        if self.frozen_emb is not None:
            return  # the frozen copy never changes: nothing derived from it to rebuild
        self.item_unit = F.normalize(self.item_emb, dim=-1)
        self.search = ItemSearch(self.item_unit, self.config)

    def queries(self, states: torch.Tensor, histories: Histories) -> torch.Tensor:
        """Unit query vectors: the states, or with `frozen` the mean of each history's frozen
        embeddings, so that a query and the items it is compared with share one space."""
        if self.frozen_emb is None:
            return F.normalize(states, dim=-1)
        pooled = F.embedding_bag(histories.items, self.frozen_emb, histories.offsets, mode="mean")
        return F.normalize(pooled, dim=-1)

    def scores(self, states: torch.Tensor, histories: Histories) -> torch.Tensor:
        return self.queries(states, histories) @ self.item_unit.T

    def top(
        self, states: torch.Tensor, histories: Histories, m: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.search.top(self.queries(states, histories), m, histories)
