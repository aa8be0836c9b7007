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

Two options, both off by default, let the state learn from the catalog's ids as well:
`item_ids` adds a learned embedding per item id (`hidden` wide, small at initialisation) to the
sequence model's input, so that f tells apart items whose language-model embeddings are alike
(the mean stays in the item space); items added after training read a zero row.
`next_item_weight` > 0 adds a next-item cross-entropy of the state (`next_item_loss`) to
imitation's loss: the state after every prefix of the history window scores the whole catalog
and the target is the next item, so the state learns the sequence from every position, not only
from the logged choices whose item was retrieved.

Dropout acts only while gradients flow in training mode: retrieval in the environment, target
Q-values and evaluation run without gradients and stay deterministic, whatever train/eval mode
the trainer last left the module in.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from marlrec.data import Histories
from marlrec.encoders import Encoder
from marlrec.registry import PluginError
from marlrec.states import StateModel, last_items, masked_mean, real_positions

# Standard deviation of the item-id embeddings at initialisation: small beside the projected
# language-model embeddings, so that ids refine what the text says rather than drown it.
ITEM_ID_INIT_STD = 0.01


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
    item_ids: bool = False
    """Add a learned embedding per item id to the sequence model's input (items added after
    training read a zero row)."""
    next_item_weight: float = 0.0
    """Weight of the state's next-item cross-entropy in imitation's loss; 0 leaves it out."""


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
        n_items: int | None = None,
    ) -> None:
        super().__init__(
            config, item_dim=item_dim, item_text=item_text, encoder=encoder, n_items=n_items
        )
        self._check(config, n_items)
        self.item_id_emb: nn.Embedding | None = None
        if config.item_ids:
            assert n_items is not None  # _check
            self.item_id_emb = nn.Embedding(n_items, config.hidden)
            nn.init.normal_(self.item_id_emb.weight, std=ITEM_ID_INIT_STD)
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

    def forward(
        self, history: torch.Tensor, lengths: torch.Tensor, ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """States (B, item_dim); `ids` (B, L), -1 at padding, feed `item_ids` (zero rows when
        not given)."""
        window, kept, outputs = self._read(history, lengths, ids)
        features = window.new_zeros(window.shape[0], self.config.hidden)
        if outputs.shape[1] > 0:
            last = (kept - 1).clamp(min=0)
            picked = outputs[torch.arange(last.shape[0], device=last.device), last]
            # An empty history has no last item: its learned term is the output bias alone.
            features = picked.masked_fill((kept == 0).unsqueeze(1), 0.0)
        return masked_mean(window, kept) + self.output(features)

    def forward_with_ids(
        self, history: torch.Tensor, lengths: torch.Tensor, ids: torch.Tensor
    ) -> torch.Tensor:
        return self(history, lengths, ids)

    def from_histories(self, histories: Histories, item_emb: torch.Tensor) -> torch.Tensor:
        # Only the last `max_len` items are read: gather that window, never the whole history.
        ids, lengths = histories.last(self.config.max_len)
        return self(item_emb[ids.clamp(min=0)], lengths, ids)

    def next_item_loss(self, ids: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of every next item in right-padded id histories (B, L), -1 at
        padding, over the whole catalog `item_emb` (n_items, item_dim).

        In each history's last `max_len` items, the state after the prefix up to position t
        (the prefix's mean plus the learned term at t: what `forward` gives for that prefix)
        scores every item by dot product with its embedding, plus, with `item_ids`, the sequence
        model's output at t against the item's id embedding; the target is the item at t + 1.
        Zero when no history holds two items.
        """
        lengths = (ids >= 0).sum(dim=1)
        window, kept, outputs = self._read(item_emb[ids.clamp(min=0)], lengths, ids)
        id_window, _ = last_items(ids, lengths, self.config.max_len)
        # Position t has a target when t + 1 is real too.
        has_next = real_positions(window, kept - 1)
        if not bool(has_next.any()):
            return item_emb.new_zeros(())
        prefix_sizes = torch.arange(1, window.shape[1] + 1, device=window.device)
        prefix_means = window.cumsum(dim=1) / prefix_sizes[None, :, None].to(window.dtype)
        states = (prefix_means + self.output(outputs))[has_next]  # (N, item_dim)
        logits = states @ item_emb.T
        if self.item_id_emb is not None:
            id_logits = outputs[has_next] @ self.item_id_emb.weight.T  # (N, table rows)
            # Items beyond the table (added after training) have a zero id row.
            logits = logits + F.pad(id_logits, (0, len(item_emb) - id_logits.shape[1]))
        following = F.pad(id_window[:, 1:], (0, 1), value=-1)
        return F.cross_entropy(logits, following[has_next])

    def _read(
        self, history: torch.Tensor, lengths: torch.Tensor, ids: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The last `max_len` items (B, W, item_dim), zero at padding; how many are real (B,);
        and the causal features at every position (B, W, hidden)."""
        window, kept = last_items(history, lengths, self.config.max_len)
        real = real_positions(window, kept)
        # Zeroed so that padding, whatever it holds, cannot reach real positions (0 * NaN = NaN).
        window = window.masked_fill(~real.unsqueeze(-1), 0.0)
        if window.shape[1] == 0:
            return window, kept, window.new_zeros(window.shape[0], 0, self.config.hidden)
        id_rows = None
        if self.item_id_emb is not None:
            id_window = None if ids is None else last_items(ids, lengths, self.config.max_len)[0]
            id_rows = self.id_rows(id_window, real)
        return window, kept, self.sequence_features(window, id_rows)

    def id_rows(self, ids: torch.Tensor | None, real: torch.Tensor) -> torch.Tensor:
        """The id embeddings (B, W, hidden) of a window's ids (B, W); zero at padding, for ids
        the table does not hold (items added after training), and for all when `ids` is None."""
        assert self.item_id_emb is not None
        table = self.item_id_emb.weight
        if ids is None:
            return table.new_zeros(*real.shape, table.shape[1])
        ids = ids.to(table.device)
        known = real & (ids >= 0) & (ids < table.shape[0])
        rows = F.embedding(ids.clamp(min=0, max=table.shape[0] - 1), table)
        return rows.masked_fill(~known.unsqueeze(-1), 0.0)

    @abstractmethod
    def build_sequence_model(self) -> None:
        """Create the layers of f from `self.config` and `self.item_dim`; with `item_ids`, f
        also reads `hidden`-wide id embeddings at its input."""

    @abstractmethod
    def sequence_features(self, window: torch.Tensor, id_rows: torch.Tensor | None) -> torch.Tensor:
        """Causal features (B, W, hidden) of right-padded windows (B, W, item_dim) and, with
        `item_ids`, their id embeddings (B, W, hidden).

        Position i may depend on positions 0..i only, so padding after a history's last item
        never changes the features at that item.
        """

    def _check(self, config: SequenceConfig, n_items: int | None) -> None:
        for key in ("max_len", "hidden", "layers"):
            if getattr(config, key) < 1:
                raise PluginError(
                    f"{self.where}: {key} must be at least 1, got {getattr(config, key)}"
                )
        if not 0.0 <= config.dropout < 1.0:
            raise PluginError(f"{self.where}: dropout must be in [0, 1), got {config.dropout}")
        weight = config.next_item_weight
        if not (math.isfinite(weight) and weight >= 0.0):
            raise PluginError(f"{self.where}: next_item_weight must be >= 0, got {weight}")
        if config.item_ids and (n_items is None or n_items < 1):
            raise PluginError(
                f"{self.where}: item_ids needs the catalog's size, and was built with "
                f"n_items={n_items}"
            )
