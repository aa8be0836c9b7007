"""`gru`: the mean of the recent history plus a learned GRU summary of it, in the item space.

A GRU runs over the last `max_len` item embeddings in time order; its output at the last real
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
        self.gru = nn.GRU(self.item_dim, config.hidden, num_layers=config.layers, batch_first=True)

    def sequence_features(self, window: torch.Tensor) -> torch.Tensor:
        rate = self.dropout_rate
        outputs, _ = self.gru(F.dropout(window, rate, training=rate > 0))
        return F.dropout(outputs, rate, training=rate > 0)
