"""`sasrec` and `sasrec_bce`: SASRec (Kang & McAuley, 2018) over item-id sequences.

`sasrec` trains with a full-softmax cross-entropy over the catalog (`loss: ce`, as RecBole's
`loss_type: CE` and "SASRec with CE loss"); `sasrec_bce` is the same model trained as the
original paper did (`loss: bce`, one sampled negative per target). Both early-stop on the
validation split's NDCG@10 and keep the best check's weights (`marlrec.models.sasrec`).

Fitted in `__init__` on the train split, on the run's device (that of the item embeddings), once
per data, settings and seed: the `sasrec` retriever with the same settings shares the fit, and a
later run loads it from the disk cache. Scoring reads the history it is given (train, plus the
validation item before test).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from marlrec.baselines import Baseline
from marlrec.data import RecData
from marlrec.models.sasrec import (
    Loss,
    SASRec,
    SASRecConfig,
    fitted_sasrec,
    pack_recent,
    training_windows,
    validate,
)

__all__ = ["SASRec", "SASRecBCEBaseline", "SASRecBaseline", "pack_recent", "training_windows"]


class SASRecBaseline(Baseline):
    """Next-item prediction by a causal transformer over the user's recent items."""

    Config = SASRecConfig

    config: SASRecConfig

    def __init__(
        self, config: SASRecConfig, *, data: RecData, item_emb: torch.Tensor, seed: int
    ) -> None:
        super().__init__(config, data=data, item_emb=item_emb, seed=seed)
        where = self.where
        validate(config, where)
        self.model, self.history = fitted_sasrec(data, config, seed, item_emb.device, where)

    def scores(self, users: np.ndarray) -> torch.Tensor:
        histories = [self.data.history_before(int(u), "test") for u in users]
        return self.rank_scores(users, histories)

    def rank_scores(self, users: np.ndarray, histories: list[np.ndarray]) -> torch.Tensor:
        return self.model.score_histories(histories, self.config.max_len, self.config.batch_size)


class SASRecBCEBaseline(SASRecBaseline):
    """SASRec trained as Kang & McAuley did: binary CE against one sampled negative."""

    @dataclass(kw_only=True)
    class Config(SASRecConfig):
        loss: Loss = "bce"
        """`bce`: binary CE against one sampled negative; `ce`: full softmax over the catalog."""
