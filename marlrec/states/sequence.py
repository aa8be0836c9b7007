"""The shape shared by trainable sequence states (`gru`, `transformer`): mean plus a learned term.

Retrieval compares the state with the item embeddings by cosine, so a state must live in the
item space (`dim == item_dim`), and an untrained one must already retrieve well. A sequence state
is therefore residual around the masked mean:

    state = mean(window) + W · f(window),   W (and its bias) initialised to zero,

where `window` is the history's last `max_len` items and f(window) is a causal sequence model's
output at the last real position. At step 0 the state equals `mean`'s and training only adds to
it. The mean reads the same window as f: the agents' networks recompute the state from the
observation's last `env.history_len` item ids, so with `max_len <= env.history_len` the state the
environment retrieves with and the one the networks learn through are the same function.

Dropout acts only while gradients flow in training mode: retrieval in the environment, target
Q-values and evaluation run without gradients and stay deterministic, whatever train/eval mode
the trainer last left the module in.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from marlrec.data import Histories
from marlrec.encoders import Encoder
from marlrec.registry import PluginError
from marlrec.states import StateModel, last_items, masked_mean, real_positions


@dataclass(kw_only=True)
class SequenceConfig:
    max_len: int = 50
    """Most recent history items the state reads; keep it <= env.history_len."""
    hidden: int = 64
    """Width of the sequence model."""
    layers: int = 1
    """Stacked layers of the sequence model."""
    dropout: float = 0.1
    """Dropout rate while training (no-grad passes never drop)."""


class SequenceState(StateModel):
    """Subclasses give `build_sequence_model` and `sequence_features`."""

    config: SequenceConfig

    def __init__(
        self,
        config: SequenceConfig,
        *,
        item_dim: int,
        item_text: Sequence[str] | None = None,
        encoder: Encoder | None = None,
    ) -> None:
        super().__init__(config, item_dim=item_dim, item_text=item_text, encoder=encoder)
        self._check(config)
        self.build_sequence_model()
        self.output = nn.Linear(config.hidden, item_dim)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    @property
    def dim(self) -> int:
        return self.item_dim

    @property
    def dropout_rate(self) -> float:
        """The rate to apply now: the configured one while learning, zero otherwise."""
        learning = self.training and torch.is_grad_enabled()
        return self.config.dropout if learning else 0.0

    def forward(self, history: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        window, lengths = last_items(history, lengths, self.config.max_len)
        real = real_positions(window, lengths)
        # Zeroed so that padding, whatever it holds, cannot reach real positions (0 * NaN = NaN).
        window = window.masked_fill(~real.unsqueeze(-1), 0.0)
        features = window.new_zeros(window.shape[0], self.config.hidden)
        if window.shape[1] > 0:
            outputs = self.sequence_features(window)
            last = (lengths - 1).clamp(min=0)
            picked = outputs[torch.arange(last.shape[0], device=last.device), last]
            # An empty history has no last item: its learned term is the output bias alone.
            features = picked.masked_fill((lengths == 0).unsqueeze(1), 0.0)
        return masked_mean(window, lengths) + self.output(features)

    def from_histories(self, histories: Histories, item_emb: torch.Tensor) -> torch.Tensor:
        # Only the last `max_len` items are read: gather that window, never the whole history.
        ids, lengths = histories.last(self.config.max_len)
        return self(item_emb[ids.clamp(min=0)], lengths)

    @abstractmethod
    def build_sequence_model(self) -> None:
        """Create the layers of f from `self.config` and `self.item_dim`."""

    @abstractmethod
    def sequence_features(self, window: torch.Tensor) -> torch.Tensor:
        """Causal features (B, W, hidden) of right-padded windows (B, W, item_dim).

        Position i may depend on positions 0..i only, so padding after a history's last item
        never changes the features at that item.
        """

    def _check(self, config: SequenceConfig) -> None:
        for key in ("max_len", "hidden", "layers"):
            if getattr(config, key) < 1:
                raise PluginError(
                    f"{self.where}: {key} must be at least 1, got {getattr(config, key)}"
                )
        if not 0.0 <= config.dropout < 1.0:
            raise PluginError(f"{self.where}: dropout must be in [0, 1), got {config.dropout}")
