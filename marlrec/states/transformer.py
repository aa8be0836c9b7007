"""`transformer`: the mean of the recent history plus a learned SASRec-like causal summary.

The last `max_len` item embeddings are projected to `hidden`, given learned positional
embeddings (and, with `item_ids`, learned item-id embeddings) and passed through `layers`
pre-norm blocks of causal multi-head self-attention and a feed-forward layer (4 x hidden wide).
The output at the last real item, projected to the item space by a zero-initialised layer, is
added to the masked mean (see `marlrec.states.sequence`). It trains together with the agents.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from marlrec.registry import PluginError
from marlrec.states.sequence import SequenceConfig, SequenceState


class CausalBlock(nn.Module):
    """Pre-norm causal self-attention then a feed-forward layer, each residual."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.attention_norm = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.attention_out = nn.Linear(hidden, hidden)
        self.feed_forward_norm = nn.LayerNorm(hidden)
        self.feed_forward = nn.Sequential(
            nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden)
        )

    def forward(self, x: torch.Tensor, dropout: float) -> torch.Tensor:
        batch, length, hidden = x.shape
        qkv = self.qkv(self.attention_norm(x)).view(batch, length, 3, self.heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, W, hidden / heads)
        attended = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        attended = attended.transpose(1, 2).reshape(batch, length, hidden)
        x = x + F.dropout(self.attention_out(attended), dropout, training=dropout > 0)
        update = self.feed_forward(self.feed_forward_norm(x))
        return x + F.dropout(update, dropout, training=dropout > 0)


class TransformerState(SequenceState):
    """state = mean + W · CausalTransformer(history)[last item]; equal to `mean` until trained."""

    @dataclass(kw_only=True)
    class Config(SequenceConfig):
        layers: int = 2
        """Stacked attention blocks."""
        heads: int = 2
        """Attention heads per block; must divide `hidden`."""

    config: Config

    def build_sequence_model(self) -> None:
        config = self.config
        if config.heads < 1 or config.hidden % config.heads:
            raise PluginError(
                f"{self.where}: heads ({config.heads}) must be at least 1 and divide "
                f"hidden ({config.hidden})"
            )
        self.input = nn.Linear(self.item_dim, config.hidden)
        self.positions = nn.Embedding(config.max_len, config.hidden)
        self.blocks = nn.ModuleList(
            CausalBlock(config.hidden, config.heads) for _ in range(config.layers)
        )
        self.final_norm = nn.LayerNorm(config.hidden)

    def sequence_features(self, window: torch.Tensor, id_rows: torch.Tensor | None) -> torch.Tensor:
        rate = self.dropout_rate
        positions = torch.arange(window.shape[1], device=window.device)
        x = self.input(window) + self.positions(positions)
        if id_rows is not None:
            x = x + id_rows
        x = F.dropout(x, rate, training=rate > 0)
        for block in self.blocks:
            x = block(x, rate)
        return self.final_norm(x)
