"""Dataset plugins (entry-point group `marlrec.datasets`): they produce a `RecData`."""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path

from marlrec.data import RecData
from marlrec.plugin import Plugin


class Dataset(Plugin):
    """Constructed as `Dataset(config)`."""

    @abstractmethod
    def load(self, *, seed: int, cache_dir: Path) -> RecData:
        """Read or generate the data, remap ids densely and split it, reproducibly for `seed`."""
