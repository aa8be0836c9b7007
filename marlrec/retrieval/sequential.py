"""`sasrec`: candidates from a trained SASRec's next-item scores over the user's recent items.

Sequential: the candidates follow what the user consumed last, which EASE's bag of items does
not see. The model is fitted once per data, settings and seed (`marlrec.models.sasrec`), shared
with the `sasrec` baseline of the same settings and the run's seed, and cached on disk.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from marlrec.data import Histories, RecData
from marlrec.models.sasrec import SASRecConfig, fitted_sasrec, validate
from marlrec.plugin import composed_default
from marlrec.retrieval import Retriever


class SASRecRetriever(Retriever):
    """Scores each item by SASRec's next-item logit, scaled by each row's largest magnitude
    (SASRec's order, a cosine's range); consumed items score -1, below every other."""

    @dataclass(kw_only=True)
    class Config(SASRecConfig):
        seed: int = composed_default(0, "${seed}")
        """Training seed: the run's when composed, so that the `sasrec` baseline shares the fit."""

    config: Config

    def __init__(self, config: Config, *, data: RecData, item_emb: torch.Tensor) -> None:
        super().__init__(config, data=data, item_emb=item_emb)
        validate(config, self.where)
        self.model, self.history = fitted_sasrec(
            data, config, config.seed, item_emb.device, self.where
        )

    @torch.no_grad()
    def scores(self, states: torch.Tensor, histories: Histories) -> torch.Tensor:
        ids, lengths = histories.last(self.config.max_len)
        if len(histories) == 0:
            return torch.zeros(0, self.data.n_items, device=ids.device)
        logits = torch.cat(
            [
                self.model.next_item_logits(chunk + 1, chunk_lengths)  # -1 padding -> 0
                for chunk, chunk_lengths in zip(
                    ids.split(self.config.batch_size),
                    lengths.split(self.config.batch_size),
                    strict=True,
                )
            ]
        )
        scores = logits / logits.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
        scores[histories.rows(), histories.items] = -1.0
        return scores
