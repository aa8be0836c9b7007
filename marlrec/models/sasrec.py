"""SASRec (Kang & McAuley, 2018): causal self-attention over item-id sequences.

Shared by the `sasrec` baseline and the `sasrec` retriever: both fit through `fitted_sasrec`,
once per data, settings and seed, cached on disk (`marlrec.fitted`).

Two losses (`loss`):
- `ce`: the hidden state after each item predicts the next item through a full softmax over the
  catalog (RecBole's `loss_type: CE`; "SASRec with CE loss", Klenitskiy & Vasilev 2023), the
  recipe behind the strongest published SASRec results under full ranking.
- `bce`: the original paper's binary cross-entropy of the next item against one negative drawn
  uniformly from the other items of the catalog.
The output layer is tied to the item embeddings. Each training sequence is cut into windows of
`max_len + 1` items and every position of a window is trained at once under the causal mask,
so each training item is a target once per epoch.

With `patience > 0`, the validation split's NDCG@10 (full ranking, history excluded) is measured
every `eval_every` epochs; training stops after `patience` checks without improvement and the
best check's weights are restored.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from marlrec.data import RecData, fill_histories
from marlrec.fitted import fingerprint, fitted
from marlrec.progress import progress_bar
from marlrec.registry import PluginError

log = logging.getLogger(__name__)

PAD = 0  # item ids are shifted by one inside the model; 0 pads sequences
HISTORY = "history."  # prefix of the training figures stored beside the weights
Loss = Literal["ce", "bce"]


@dataclass(kw_only=True)
class SASRecConfig:
    """SASRec's options, the same for the baseline and the retriever."""

    loss: Loss = "ce"
    """`ce`: full softmax over the catalog; `bce`: binary CE against one sampled negative."""
    hidden: int = 64
    """Item embedding and hidden size (RecBole: hidden_size)."""
    layers: int = 2
    """Transformer blocks (n_layers)."""
    heads: int = 1
    """Attention heads per block (n_heads)."""
    inner: int = 256
    """Feed-forward size inside each block (inner_size)."""
    max_len: int = 200
    """Most recent items read per user (MAX_ITEM_LIST_LENGTH)."""
    dropout: float = 0.2
    """Dropout on embeddings, attention and feed-forward outputs."""
    lr: float = 0.001
    """Adam learning rate."""
    weight_decay: float = 0.0
    """Adam weight decay."""
    batch_size: int = 128
    """Sequence windows per step."""
    epochs: int = 200
    """Most passes over the training windows."""
    eval_every: int = 2
    """Epochs between two validation checks (NDCG@10, full ranking)."""
    patience: int = 5
    """Stop after this many validation checks without a better NDCG@10; 0: no early stop."""
    show_progress: bool = True
    """Show a tqdm bar over epochs and log one line per validation check."""


def validate(config: SASRecConfig, where: str) -> None:
    """One-line PluginErrors for settings a type cannot rule out; `where` names the plugin."""
    sizes = ("hidden", "layers", "heads", "inner", "max_len", "batch_size", "epochs", "eval_every")
    small = [name for name in sizes if getattr(config, name) < 1]
    if small:
        raise PluginError(f"{where}: {small[0]} must be at least 1")
    if config.hidden % config.heads:
        raise PluginError(
            f"{where}: hidden ({config.hidden}) must divide by heads ({config.heads})"
        )
    if not 0 <= config.dropout < 1 or config.lr <= 0 or config.patience < 0:
        raise PluginError(f"{where}: dropout must be in [0, 1), lr positive, patience >= 0")


class SASRec(nn.Module):
    def __init__(self, n_items: int, config: SASRecConfig) -> None:
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
        return self.encoder(self._embed(sequences), mask=self._causal(sequences), is_causal=True)

    def _embed(self, sequences: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(sequences.shape[1], device=sequences.device)
        return self.dropout(self.norm(self.items(sequences) + self.positions(positions)))

    @staticmethod
    def _causal(sequences: torch.Tensor) -> torch.Tensor:
        length = sequences.shape[1]
        return nn.Transformer.generate_square_subsequent_mask(length, device=sequences.device)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores of every catalog item (the padding row left out) from hidden states."""
        return hidden @ self.items.weight[1:].T

    def next_item_logits(self, sequences: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, n_items) scores for the item after each sequence's last one.

        As `forward` then the last position's logits, but the top layer runs for that position
        alone: it is the only one read, and the lower layers' outputs at every position are all
        its attention needs. Scoring a user then costs about half as much. Padding columns
        after the longest sequence are dropped first: no real position attends to them.
        """
        sequences = sequences[:, : max(1, int(lengths.max()))] if len(lengths) else sequences
        *lower, top = self.encoder.layers
        hidden, causal = self._embed(sequences), self._causal(sequences)
        for layer in lower:
            hidden = layer(hidden, src_mask=causal, is_causal=True)
        last = (lengths.to(sequences.device) - 1).clamp(min=0)
        rows = torch.arange(len(sequences), device=sequences.device)
        positions = torch.arange(sequences.shape[1], device=sequences.device)
        after_last = positions[None, :] > last[:, None]  # what the causal mask hides from it
        return self.logits(last_position(top, hidden, hidden[rows, last][:, None], after_last))

    @torch.no_grad()
    def score_histories(
        self, histories: list[np.ndarray], max_len: int, batch_size: int
    ) -> torch.Tensor:
        """(len(histories), n_items) next-item scores from each history's last `max_len` items."""
        self.eval()
        device = self.items.weight.device
        chunks = []
        for start in range(0, len(histories), batch_size):
            sequences, lengths = pack_recent(histories[start : start + batch_size], max_len)
            chunks.append(self.next_item_logits(sequences.to(device), lengths))
        n_items = self.items.num_embeddings - 1
        return torch.cat(chunks) if chunks else torch.zeros(0, n_items, device=device)


def last_position(
    layer: nn.TransformerEncoderLayer,
    hidden: torch.Tensor,
    query: torch.Tensor,
    hidden_mask: torch.Tensor,
) -> torch.Tensor:
    """`layer` (post-norm, as SASRec builds it) at one position per row: `query` (B, 1, d)
    attends to `hidden` (B, L, d) except where `hidden_mask` (B, L) is true; (B, d)."""
    attended = layer.self_attn(
        query, hidden, hidden, key_padding_mask=hidden_mask, need_weights=False
    )[0]
    x = layer.norm1(query + layer.dropout1(attended))
    feed_forward = layer.linear2(layer.dropout(layer.activation(layer.linear1(x))))
    return layer.norm2(x + layer.dropout2(feed_forward))[:, 0]


def _init_weights(module: nn.Module) -> None:
    """RecBole's initialisation: normal(0, 0.02) weights, zero biases, unit LayerNorm."""
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


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


def fitted_sasrec(
    data: RecData, config: SASRecConfig, seed: int, device: torch.device, where: str
) -> tuple[SASRec, list[dict[str, float]]]:
    """The trained model on `device` and its training figures, fitted once per data, SASRec
    settings and seed (whichever plugin asks first), then shared and cached on disk."""
    settings = [f"{f.name}={getattr(config, f.name)!r}" for f in dataclasses.fields(SASRecConfig)]
    valid = data.split.held_out_interactions("valid")
    train = data.split.train
    key = fingerprint(
        train.user,
        train.item,
        valid.user,
        valid.item,
        data.n_items,
        seed,
        *[s for s in settings if not s.startswith("show_progress=")],
    )
    artefact = fitted("sasrec", key, lambda: _fit_artefact(data, config, seed, device, where))
    with torch.random.fork_rng(devices=[]):  # initial weights, overwritten: RNG left untouched
        model = SASRec(data.n_items, config)
    model.load_state_dict({k: v for k, v in artefact.items() if not k.startswith(HISTORY)})
    return model.to(device).eval(), _history(artefact)


def _fit_artefact(
    data: RecData, config: SASRecConfig, seed: int, device: torch.device, where: str
) -> dict[str, torch.Tensor]:
    """Weights (on the CPU) and per-epoch figures, seeded through a forked RNG so that the
    run's global random state is left untouched."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = SASRec(data.n_items, config).to(device)
        history = fit(model, data, config, seed, where)
    artefact = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    for name in ("epoch", "loss", "valid_ndcg@10"):
        values = [row.get(name, math.nan) for row in history]
        artefact[HISTORY + name] = torch.tensor(values, dtype=torch.float64)
    return artefact


def _history(artefact: dict[str, torch.Tensor]) -> list[dict[str, float]]:
    """Per-epoch rows back from the artefact (a figure not measured that epoch left out)."""
    columns = {k[len(HISTORY) :]: v.tolist() for k, v in artefact.items() if k.startswith(HISTORY)}
    rows = zip(*columns.values(), strict=True)
    return [
        {name: v for name, v in zip(columns, row, strict=True) if not math.isnan(v)} for row in rows
    ]


def fit(
    model: SASRec, data: RecData, config: SASRecConfig, seed: int, where: str = "sasrec"
) -> list[dict[str, float]]:
    """Train in place; return per-epoch figures (validation NDCG@10 at each check), the best
    check's weights restored."""
    windows = training_windows(data.train_histories, config.max_len)
    if len(windows) == 0:
        raise PluginError(f"{where}: no user has two training interactions to learn from")
    if config.loss == "bce" and data.n_items < 2:
        raise PluginError(f"{where}: loss 'bce' needs two items or more to draw negatives")
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    stopper = EarlyStop(config.patience)
    history: list[dict[str, float]] = []
    epochs = progress_bar(range(1, config.epochs + 1), desc=where, disable=not config.show_progress)
    for epoch in epochs:
        loss = train_epoch(model, optimizer, windows, config, generator)
        row = {"epoch": float(epoch), "loss": loss}
        if config.patience and (epoch % config.eval_every == 0 or epoch == config.epochs):
            row["valid_ndcg@10"] = score = valid_ndcg(model, data, config)
            stopper.check(score, model)
            if config.show_progress:
                log.info("%s: epoch %d, loss %.4f, valid NDCG@10 %.4f", where, epoch, loss, score)
        history.append(row)
        epochs.set_postfix({k: f"{v:.4f}" for k, v in row.items() if k != "epoch"})
        if stopper.done:
            break
    epochs.close()
    stopper.restore(model)
    return history


class EarlyStop:
    """Keeps the weights of the best check; done after `patience` checks without a better one."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best = -math.inf
        self.since_best = 0
        self.state: dict[str, torch.Tensor] | None = None

    @property
    def done(self) -> bool:
        return self.patience > 0 and self.since_best >= self.patience

    def check(self, score: float, model: nn.Module) -> None:
        if score > self.best:
            self.best, self.since_best = score, 0
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.since_best += 1

    def restore(self, model: nn.Module) -> None:
        if self.state is not None:
            model.load_state_dict(self.state)


def train_epoch(
    model: SASRec,
    optimizer: torch.optim.Optimizer,
    windows: torch.Tensor,
    config: SASRecConfig,
    generator: torch.Generator,
) -> float:
    """One pass over shuffled windows; the loss at every real position, mean per window."""
    model.train()
    device = model.items.weight.device
    total, count = 0.0, 0
    for batch in torch.randperm(len(windows), generator=generator).split(config.batch_size):
        window = windows[batch].to(device)
        inputs, targets = window[:, :-1], window[:, 1:] - 1  # padding becomes -1
        real = targets >= 0
        # Hidden states only where a real next item exists: the full softmax is most of the cost.
        hidden = model(inputs)[real]
        if config.loss == "ce":
            loss = nn.functional.cross_entropy(model.logits(hidden), targets[real])
        else:
            loss = _bce_loss(model, hidden, targets[real], generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch)
        count += len(batch)
    return total / count


def _bce_loss(
    model: SASRec, hidden: torch.Tensor, targets: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Binary CE of each next item against one negative drawn uniformly from the others."""
    n_items = model.items.num_embeddings - 1
    offsets = torch.randint(1, n_items, targets.shape, generator=generator).to(targets.device)
    negatives = (targets + offsets) % n_items
    positive = (hidden * model.items(targets + 1)).sum(-1)
    negative = (hidden * model.items(negatives + 1)).sum(-1)
    return (nn.functional.softplus(-positive) + nn.functional.softplus(negative)).mean()


@torch.no_grad()
def valid_ndcg(model: SASRec, data: RecData, config: SASRecConfig, k: int = 10) -> float:
    """NDCG@k on the validation split with full ranking, the training history excluded: the
    evaluation harness's figure (hits at rank i count 1 / log2(i + 1), over the ideal DCG of
    min(held-out, k) hits), averaged over users with a validation item."""
    held_out = data.split.held_out("valid")
    users = [u for u in range(data.n_users) if len(held_out[u])]
    discounts = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64))
    total = 0.0
    for start in range(0, len(users), 1024):
        chunk = users[start : start + 1024]
        histories = [data.train_histories[u] for u in chunk]
        scores = model.score_histories(histories, config.max_len, config.batch_size).cpu()
        top = fill_histories(scores, histories, -torch.inf).topk(k, dim=1).indices.numpy()
        for row, user in enumerate(chunk):
            hits = torch.from_numpy(np.isin(top[row], held_out[user]))
            ideal = discounts[: min(len(held_out[user]), k)].sum()
            total += float((hits * discounts).sum() / ideal)
    return total / max(len(users), 1)
