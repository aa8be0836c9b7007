"""Encoder plugins (entry-point group `marlrec.encoders`): item text to item embeddings."""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path

import torch

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
