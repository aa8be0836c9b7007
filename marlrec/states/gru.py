"""`gru`: the mean of the recent history plus a learned GRU summary of it, in the item space.

A GRU runs over the last `max_len` item embeddings in time order (with `item_ids`, each joined
by its id embedding); its output at the last real
item, projected to the item space by a zero-initialised layer, is added to the masked mean (see
`marlrec.states.sequence`). It trains together with the agents.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from marlrec.states.sequence import SequenceConfig, SequenceState


class GRUState(SequenceState):
    """state = mean + W · GRU(history)[last item]; equal to `mean` until trained."""

    @dataclass(kw_only=True)
    class Config(SequenceConfig):
        pass

    def build_sequence_model(self) -> None:
        config = self.config
        # Dropout is applied by hand around the GRU, not by nn.GRU between its layers, so that
        # it follows `dropout_rate` (off whenever no gradient flows).
        # With item_ids the id embeddings join the input: the GRU's input weights over
        # [embedding, id row] add a learned projection of the id to that of the embedding.
        inputs = self.item_dim + (config.hidden if config.item_ids else 0)
        self.gru = nn.GRU(inputs, config.hidden, num_layers=config.layers, batch_first=True)

    def sequence_features(self, window: torch.Tensor, id_rows: torch.Tensor | None) -> torch.Tensor:
        rate = self.dropout_rate
        x = window if id_rows is None else torch.cat([window, id_rows], dim=-1)
        outputs, _ = self.gru(F.dropout(x, rate, training=rate > 0))
        return F.dropout(outputs, rate, training=rate > 0)
