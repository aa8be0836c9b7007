"""`content`: cosine between the user's state and the items' text embeddings.

It reaches items nobody has consumed yet: an item is retrievable as soon as its text is encoded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from marlrec.data import Histories, RecData
from marlrec.plugin import NoConfig
from marlrec.retrieval import Retriever


class ContentRetriever(Retriever):
    Config = NoConfig

    def __init__(self, config: NoConfig, *, data: RecData, item_emb: torch.Tensor) -> None:
        super().__init__(config, data=data, item_emb=item_emb)
        self.item_unit = F.normalize(item_emb, dim=-1)

    def scores(self, states: torch.Tensor, histories: Histories) -> torch.Tensor:
        return F.normalize(states, dim=-1) @ self.item_unit.T
