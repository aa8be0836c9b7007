"""A trainable text encoder over the catalog: the language model learns with the agents.

`TextTower` holds the catalog's table of item embeddings (the tensor every other part of the
run reads) and the model behind it, wrapped with LoRA adapters (`peft`) or trained in full.
In a training forward pass, `lookup` re-encodes a share of the batch's distinct items with
gradients, so the agents' losses reach the model, and reads the rest from the table. Every
`refresh_every` optimizer steps over the model's weights, the whole table is re-encoded in place,
so retrieval, user states and ranking follow what the model learned. Checkpoints hold the
trainable weights and the table (frozen LoRA base weights come from the model folder), so a
resumed or served run reads exactly the embeddings it was trained with.
"""

from __future__ import annotations

import functools
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from marlrec.registry import PluginError

LORA_DEFAULTS: dict[str, Any] = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": []}
# Keys the tower adds to its module's state dict.
TABLE_KEY, UPDATES_KEY = "table", "updates"

Embed = Callable[[list[str]], torch.Tensor]


@dataclass(frozen=True)
class LoraOptions:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=list)


def lora_options(options: dict[str, Any], where: str) -> LoraOptions:
    """`encoder.lora` checked key by key: one line naming the key on a bad value."""
    unknown = sorted(set(options) - set(LORA_DEFAULTS))
    if unknown:
        raise PluginError(
            f"{where}: unknown key 'lora.{unknown[0]}'; valid: {', '.join(LORA_DEFAULTS)}"
        )
    merged = {**LORA_DEFAULTS, **options}
    r, alpha, dropout, targets = (merged[k] for k in LORA_DEFAULTS)
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise PluginError(f"{where}: lora.r must be a whole number of at least 1, got {r!r}")
    if not isinstance(alpha, int) or isinstance(alpha, bool) or alpha < 1:
        raise PluginError(
            f"{where}: lora.alpha must be a whole number of at least 1, got {alpha!r}"
        )
    if not isinstance(dropout, int | float) or isinstance(dropout, bool) or not 0 <= dropout < 1:
        raise PluginError(f"{where}: lora.dropout must be in [0, 1), got {dropout!r}")
    if not isinstance(targets, list | tuple) or not all(isinstance(t, str) for t in targets):
        raise PluginError(
            f"{where}: lora.target_modules must be a list of module names, got {targets!r}"
        )
    return LoraOptions(r, alpha, float(dropout), list(targets))


def with_lora(model: nn.Module, architecture: str, options: LoraOptions, where: str) -> nn.Module:
    """`model` with LoRA adapters (only they train). Without `target_modules`, peft's own
    per-architecture choice applies (BERT: query and value; GPT-2: c_attn; Llama: q_proj
    and v_proj; ...)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=options.target_modules or None,
    )
    try:
        return get_peft_model(model, config)  # type: ignore[arg-type]
    except ValueError as exc:
        kind = getattr(getattr(model, "config", None), "model_type", architecture)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PluginError(
            f"{where}: cannot add LoRA adapters to a '{kind}' model: {first}; "
            "name its layers in encoder.lora.target_modules"
        ) from None


class TextTower(nn.Module):
    """The catalog's embeddings from a model that trains with the agents' networks.

    One tower is shared by every network of a run (it is a submodule of each, so its weights
    are in their optimizers and checkpoints once); copying a network shares it too.
    """

    def __init__(
        self,
        embed: Embed,
        model: nn.Module,
        texts: list[str],
        table: torch.Tensor,
        *,
        grad_items: int,
        refresh_every: int,
        batch_size: int,
    ) -> None:
        super().__init__()
        if table.shape[0] != len(texts):
            raise ValueError(f"{len(texts)} texts for a table of {table.shape[0]} rows")
        self.model = model
        self.embed = embed
        self.texts = list(texts)
        self.table = table  # the run's item embeddings, refreshed in place
        self.grad_items, self.refresh_every, self.batch_size = grad_items, refresh_every, batch_size
        self.updates = 0
        self.refreshes = 0
        self.refresh_seconds = 0.0
        self._listeners: list[Callable[[], None]] = []
        self._optimizers: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
        self._trainable = {id(p) for p in self.model.parameters() if p.requires_grad}
        self._saved_table: torch.Tensor | None = None
        self._saved_updates: int | None = None
        # A partial, not the bound method: torch marks the hook with an attribute.
        self.register_state_dict_post_hook(functools.partial(self._save_tower))
        self.register_load_state_dict_pre_hook(self._before_load)
        self.register_load_state_dict_post_hook(self._after_load)
        # The global hook holds the tower weakly, so a dropped run's tower can be freed.
        own = weakref.ref(self)

        def stepped(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            if (tower := own()) is not None:
                tower.after_optimizer_step(optimizer)

        handle = register_optimizer_step_post_hook(stepped)
        weakref.finalize(self, handle.remove)

    def __deepcopy__(self, memo: dict[int, Any]) -> TextTower:
        return self  # a target network reads the same tower and table

    def on_refresh(self, listener: Callable[[], None]) -> None:
        """Call `listener` after every refresh of the table (e.g. to re-read derived tensors)."""
        self._listeners.append(listener)

    @property
    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Embeddings of `texts` by the current weights, with gradients when enabled; float32."""
        device = self.table.device
        if device.type == "cuda":
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                return self.embed(texts).float()
        return self.embed(texts).float()

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows of the table for `ids` (any shape); with gradients enabled, up to `grad_items`
        of the distinct items (drawn at random) are re-encoded so that gradients reach the
        model."""
        rows = self.table[ids]
        if not torch.is_grad_enabled() or not self._trainable:
            return rows
        unique = ids.unique()
        if self.grad_items and len(unique) > self.grad_items:
            unique = unique[torch.randperm(len(unique))[: self.grad_items].to(unique.device)]
        live = self.encode([self.texts[i] for i in unique.tolist()]).to(rows.dtype)
        position = torch.full((self.table.shape[0],), -1, dtype=torch.long, device=ids.device)
        position[unique] = torch.arange(len(unique), device=ids.device)
        at = position[ids]
        return torch.where((at >= 0)[..., None], live[at.clamp(min=0)], rows)

    @torch.no_grad()
    def refresh(self, start: int = 0) -> None:
        """Re-encode the table's rows from `start` on (all by default) with the current weights."""
        began = time.perf_counter()
        was_training = self.training
        self.eval()
        try:
            for at in range(start, len(self.texts), self.batch_size):
                batch = self.texts[at : at + self.batch_size]
                self.table[at : at + len(batch)] = self.encode(batch).to(self.table.dtype)
        finally:
            self.train(was_training)
        self.refreshes += 1
        self.refresh_seconds += time.perf_counter() - began
        for listener in self._listeners:
            listener()

    def after_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Count a step of an optimizer over the tower's weights; refresh the table when due."""
        if optimizer not in self._optimizers:
            params = (p for group in optimizer.param_groups for p in group["params"])
            self._optimizers[optimizer] = any(id(p) in self._trainable for p in params)
        if self._optimizers[optimizer]:
            self.updates += 1
            if self.updates % self.refresh_every == 0:
                self.refresh()

    def _save_tower(
        self, module: nn.Module, state: dict[str, Any], prefix: str, metadata: Any
    ) -> None:
        """Keep trainable weights only (a LoRA run's base weights are the model folder's),
        plus the table and the update count."""
        for name, parameter in self.named_parameters(prefix=prefix.rstrip(".")):
            if not parameter.requires_grad:
                state.pop(name, None)
        state[prefix + TABLE_KEY] = self.table.detach().clone()
        state[prefix + UPDATES_KEY] = torch.tensor(self.updates)

    def _before_load(
        self,
        module: nn.Module,
        state: dict[str, Any],
        prefix: str,
        metadata: Any,
        strict: bool,
        missing: list[str],
        unexpected: list[str],
        errors: list[str],
    ) -> None:
        table, updates = state.pop(prefix + TABLE_KEY, None), state.pop(prefix + UPDATES_KEY, None)
        self._saved_table = table
        self._saved_updates = None if updates is None else int(updates)
        for name, parameter in self.named_parameters(prefix=prefix.rstrip(".")):
            if not parameter.requires_grad:
                state.setdefault(name, parameter.detach())

    def _after_load(self, module: nn.Module, incompatible: Any) -> None:
        """The saved table into the run's table; items added since are encoded."""
        table, self._saved_table = self._saved_table, None
        if self._saved_updates is not None:
            self.updates, self._saved_updates = self._saved_updates, None
        if table is None:
            return
        n = min(len(table), len(self.table))
        with torch.no_grad():
            self.table[:n] = table[:n].to(self.table)
        if n < len(self.table):
            self.refresh(start=n)
        else:
            for listener in self._listeners:
                listener()


def unit_rows_listener(table: torch.Tensor, unit: torch.Tensor) -> Callable[[], None]:
    """Keeps `unit` equal to `table`'s rows at unit length after each refresh."""

    def update() -> None:
        with torch.no_grad():
            unit.copy_(F.normalize(table, dim=-1))

    return update
