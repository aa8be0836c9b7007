"""Encoder plugins (entry-point group `marlrec.encoders`): item text to item embeddings."""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from marlrec.encoders.tower import TextTower

from marlrec.plugin import Plugin


class Encoder(Plugin):
    """Constructed as `Encoder(config, cache_dir=..., device=...)`."""

    def __init__(self, config: object, *, cache_dir: Path, device: torch.device) -> None:
        super().__init__(config)
        self.cache_dir = cache_dir
        self.device = device

    @abstractmethod
    def encode(self, texts: list[str]) -> torch.Tensor:
        """Embed texts as a float32 CPU tensor (len(texts), dim), reusing the on-disk cache."""

    def text_tower(self, texts: list[str], table: torch.Tensor) -> TextTower | None:
        """A model over the catalog's `texts` that trains with the agents and refreshes the
        run's item embeddings `table` in place; None for a fixed encoder (the default)."""
        return None
