"""`sasrec`: SASRec (Kang & McAuley, 2018), causal self-attention over item-id sequences.

Trained as RecBole's SASRec with `loss_type: CE`: the hidden state after each item predicts the
next item through a full softmax over the catalog, with the output layer tied to the item
embeddings. RecBole feeds every prefix of a training sequence as its own example; here each
sequence is cut into windows of `max_len + 1` items and every position of a window is trained
at once under the causal mask, which gives each training item the same one turn as a target
per epoch at a fraction of the cost.

Fitted in `__init__` on the train split, on the run's device (that of the item embeddings),
seeded through a forked RNG so that the run's global random state is left untouched. With
`patience > 0`, the validation split's NDCG@10 (full ranking) is measured after every epoch,
training stops after `patience` epochs without improvement and the best epoch's weights are kept.
Scoring reads the history it is given (train, plus the validation item before test).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from marlrec.baselines import Baseline
from marlrec.data import RecData
from marlrec.registry import PluginError

PAD = 0  # item ids are shifted by one inside the model; 0 pads sequences


class SASRecBaseline(Baseline):
    """Next-item prediction by a causal transformer over the user's recent items."""

    @dataclass(kw_only=True)
    class Config:
        hidden: int = 64
        """Item embedding and hidden size (RecBole: hidden_size)."""
        layers: int = 2
        """Transformer layers (n_layers)."""
        heads: int = 2
        """Attention heads per layer (n_heads)."""
        inner: int = 256
        """Feed-forward size inside each layer (inner_size)."""
        max_len: int = 50
        """Most recent items read per user (MAX_ITEM_LIST_LENGTH)."""
        dropout: float = 0.2
        """Dropout on embeddings, attention and feed-forward outputs."""
        lr: float = 0.001
        """Adam learning rate."""
        weight_decay: float = 0.0
        """Adam weight decay."""
        batch_size: int = 256
        """Sequence windows per step."""
        epochs: int = 200
        """Most passes over the training windows."""
        patience: int = 10
        """Stop after this many epochs without a better validation NDCG@10; 0: no early stop."""
        show_progress: bool = True
        """Show a tqdm bar over epochs with the loss and validation NDCG@10."""

    config: Config

    def __init__(self, config: Config, *, data: RecData, item_emb: torch.Tensor, seed: int) -> None:
        super().__init__(config, data=data, item_emb=item_emb, seed=seed)
        _validate(config)
        self.device = item_emb.device
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            self.model = SASRec(data.n_items, config).to(self.device)
            self.history = fit(self.model, data, config, seed, self.device)
        self.model.eval()

    def scores(self, users: np.ndarray) -> torch.Tensor:
        histories = [self.data.history_before(int(u), "test") for u in users]
        return self.rank_scores(users, histories)

    @torch.no_grad()
    def rank_scores(self, users: np.ndarray, histories: list[np.ndarray]) -> torch.Tensor:
        self.model.eval()
        chunks = []
        for start in range(0, len(histories), self.config.batch_size):
            batch = histories[start : start + self.config.batch_size]
            sequences, lengths = pack_recent(batch, self.config.max_len)
            chunks.append(self.model.next_item_logits(sequences.to(self.device), lengths))
        return torch.cat(chunks) if chunks else torch.zeros(0, self.data.n_items)


class SASRec(nn.Module):
    def __init__(self, n_items: int, config: SASRecBaseline.Config) -> None:
        super().__init__()
        self.items = nn.Embedding(n_items + 1, config.hidden, padding_idx=PAD)
        self.positions = nn.Embedding(config.max_len, config.hidden)
        self.norm = nn.LayerNorm(config.hidden, eps=1e-12)
        self.dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(
            config.hidden,
            config.heads,
            config.inner,
            config.dropout,
            activation="gelu",
            batch_first=True,
            layer_norm_eps=1e-12,
        )
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.apply(_init_weights)

    def forward(self, sequences: torch.Tensor) -> torch.Tensor:
        """(B, L) right-padded shifted ids -> (B, L, hidden); position t sees items <= t.

        Padding sits after each sequence, so the causal mask alone keeps real positions from
        attending to it and no attention row is ever fully masked.
        """
        length = sequences.shape[1]
        positions = torch.arange(length, device=sequences.device)
        hidden = self.dropout(self.norm(self.items(sequences) + self.positions(positions)))
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=sequences.device)
        return self.encoder(hidden, mask=causal, is_causal=True)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores of every catalog item (the padding row left out) from hidden states."""
        return hidden @ self.items.weight[1:].T

    def next_item_logits(self, sequences: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, n_items) scores for the item after each sequence's last one."""
        hidden = self.forward(sequences)
        last = (lengths.to(sequences.device) - 1).clamp(min=0)
        rows = torch.arange(len(sequences), device=sequences.device)
        return self.logits(hidden[rows, last])


def _init_weights(module: nn.Module) -> None:
    """RecBole's initialisation: normal(0, 0.02) weights, zero biases, unit LayerNorm."""
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _validate(config: SASRecBaseline.Config) -> None:
    sizes = ("hidden", "layers", "heads", "inner", "max_len", "batch_size", "epochs")
    small = [name for name in sizes if getattr(config, name) < 1]
    if small:
        raise PluginError(f"baseline 'sasrec': {small[0]} must be at least 1")
    if config.hidden % config.heads:
        raise PluginError(
            f"baseline 'sasrec': hidden ({config.hidden}) must divide by heads ({config.heads})"
        )
    if not 0 <= config.dropout < 1 or config.lr <= 0 or config.patience < 0:
        raise PluginError(
            "baseline 'sasrec': dropout must be in [0, 1), lr positive, patience >= 0"
        )


def pack_recent(histories: list[np.ndarray], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The last `max_len` items of each history, shifted by one, right-padded; and lengths."""
    lengths = np.array([min(len(h), max_len) for h in histories], dtype=np.int64)
    sequences = np.zeros((len(histories), max_len), dtype=np.int64)
    rows = np.repeat(np.arange(len(histories)), lengths)
    cols = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    recent = [h[len(h) - n :] for h, n in zip(histories, lengths, strict=True)]
    if len(rows):
        sequences[rows, cols] = np.concatenate(recent) + 1
    return torch.from_numpy(sequences), torch.from_numpy(lengths)


def training_windows(histories: list[np.ndarray], max_len: int) -> torch.Tensor:
    """(windows, max_len + 1) shifted ids, right-padded: each sequence cut from its end into
    windows overlapping by one item, so that every item but the first is a target once."""
    windows = []
    for history in histories:
        for end in range(len(history), 1, -max_len):
            windows.append(history[max(0, end - max_len - 1) : end] + 1)
    packed = np.zeros((len(windows), max_len + 1), dtype=np.int64)
    for row, window in enumerate(windows):
        packed[row, : len(window)] = window
    return torch.from_numpy(packed)


def fit(
    model: SASRec, data: RecData, config: SASRecBaseline.Config, seed: int, device: torch.device
) -> list[dict[str, float]]:
    """Train in place; return per-epoch loss and validation NDCG@10, best weights restored."""
    windows = training_windows(data.train_histories, config.max_len)
    if len(windows) == 0:
        raise PluginError("baseline 'sasrec': no user has two training interactions to learn from")
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    validate = _validator(model, data, config, device) if config.patience else None
    best, best_state, since_best, history = -math.inf, None, 0, []
    bar = tqdm(range(config.epochs), desc="sasrec", disable=not config.show_progress, leave=False)
    for _epoch in bar:
        loss = train_epoch(model, optimizer, windows, config.batch_size, generator, device)
        row = {"loss": loss}
        if validate is not None:
            row["valid_ndcg@10"] = score = validate()
            if score > best:
                best, since_best = score, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                since_best += 1
        history.append(row)
        bar.set_postfix({k: f"{v:.4f}" for k, v in row.items()})
        if validate is not None and since_best >= config.patience:
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    return history


def train_epoch(
    model: SASRec,
    optimizer: torch.optim.Optimizer,
    windows: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
) -> float:
    """One pass over shuffled windows; cross-entropy over all items at every real position."""
    model.train()
    total, count = 0.0, 0
    for batch in torch.randperm(len(windows), generator=generator).split(batch_size):
        window = windows[batch].to(device)
        inputs, targets = window[:, :-1], window[:, 1:] - 1  # padding becomes -1
        real = targets >= 0
        # Scores only where a real next item exists: the full softmax is most of the cost.
        loss = nn.functional.cross_entropy(model.logits(model(inputs)[real]), targets[real])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch)
        count += len(batch)
    return total / count


def _validator(
    model: SASRec, data: RecData, config: SASRecBaseline.Config, device: torch.device
) -> Callable[[], float]:
    """NDCG@10 on the validation split through the evaluation harness (full ranking)."""
    from marlrec.evaluation.harness import EvalConfig, ScoreRanker, ranking_eval

    cfg = EvalConfig(metrics=["ndcg"], ks=[10])

    @torch.no_grad()
    def score(users: np.ndarray, histories: list[np.ndarray]) -> torch.Tensor:
        model.eval()
        sequences, lengths = pack_recent(histories, config.max_len)
        return model.next_item_logits(sequences.to(device), lengths)

    ranker = ScoreRanker(score)
    return lambda: ranking_eval(data, ranker, "valid", cfg)["NDCG@10"]
